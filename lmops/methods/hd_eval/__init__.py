"""HD-Eval: aligning LLM evaluators through hierarchical criteria decomposition.

Paper: "HD-Eval: Aligning Large Language Model Evaluators Through Hierarchical
Criteria Decomposition", arXiv 2402.15754, ACL 2024 (long). No official code exists; only the abstract
and secondary summaries could be read, so much below is a choice, and says so.

    >>> model = HDEval(llm, "Rate a news summary", ["coherence", "fluency", "relevance"])
    >>> model.fit(samples, human_scores, systems=systems)      # decompose, aggregate, prune, repeat
    >>> model.predict(new_samples)                             # one float per sample
    >>> model.report()["heldout"]["sample"]["spearman"]; model.tree.to_json(); model.save("hd.json")

Faithful to the abstract: the LLM scores each criterion; the LLM decomposes criteria into finer
sub-criteria; a white-box aggregator, trained on human labels and independent of the LLM's weights,
combines criterion scores into the target score (regression with MSE, per a secondary summary);
insignificant criteria are pruned by attribution and significant ones decomposed further, iteratively,
building a multi-level criteria tree that also explains the score.

A choice (unconfirmed in the paper; each is pluggable or configurable, :class:`HDEvalConfig`):

- probability-weighted criterion scores (G-Eval style: softmax over the score tokens' log-likelihoods,
  expected score), with a parsed greedy answer when the backend has no log-probabilities; an
  unparsable answer is retried, then missing, imputed with the criterion's training mean;
- the prompts (:func:`score_prompt`, :func:`decomposition_request`);
- the aggregator family: :class:`LinearAggregator` by default, :class:`MLPAggregator`, or any class
  registered with :func:`register_aggregator`;
- the attribution: |coefficient| x feature std for linear, :func:`permutation_importance` otherwise;
  pruning below 5% of an aggregator's total attribution, the top input always kept, and a criterion
  whose sub-criteria were all pruned pruned with them;
- horizontal (one aggregator over all leaves) vs vertical (each criterion from its children, every
  aggregator fit to the one human score) aggregation, both from a 2026 third-party reproduction;
- rounds, depth, how many criteria are decomposed per round, the held-out split, and the optional
  rounding of outputs (reported: float outputs can inflate rank correlations).
"""

from .aggregators import (
    AGGREGATORS,
    Aggregator,
    LinearAggregator,
    MLPAggregator,
    aggregator_from_dict,
    make_aggregator,
    permutation_importance,
    register_aggregator,
)
from .config import HDEvalConfig
from .data import EvalRecord, read_records, write_predictions
from .decompose import decompose, decomposition_request, parse_subcriteria
from .hd_eval import HDEval
from .hierarchy import Group
from .metrics import correlations, system_correlations, system_means
from .scoring import CriterionScorer, ScoreResult, expected_score, parse_score, score_prompt
from .scripted import ScriptedJudge, demo_judge
from .tree import CriteriaTree, CriterionNode

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "CriteriaTree",
    "CriterionNode",
    "CriterionScorer",
    "EvalRecord",
    "Group",
    "HDEval",
    "HDEvalConfig",
    "LinearAggregator",
    "MLPAggregator",
    "ScoreResult",
    "ScriptedJudge",
    "aggregator_from_dict",
    "correlations",
    "decompose",
    "decomposition_request",
    "demo_judge",
    "expected_score",
    "make_aggregator",
    "parse_score",
    "parse_subcriteria",
    "permutation_importance",
    "read_records",
    "register_aggregator",
    "score_prompt",
    "system_correlations",
    "system_means",
    "write_predictions",
]
