"""Se2: sequential example selection for in-context learning.

Paper: "Se2: Sequential Example Selection for In-Context Learning" (arXiv 2402.13874; ACL 2024 per a
secondary source). Official code: ``microsoft/LMOps``, folder ``se2/`` (UPRISE-derived, with a DPR fork).

Pipeline (each step a function here, and a sub-verb of ``lmops se2``):

1. :func:`score_candidates` (``lmops se2 score``): for every query, L random pool candidates are scored
   by the frozen LLM in front of the query; then two more steps each draw one example from the previous
   ranking with p(rank r) ∝ e^(-r), prepend it to the chosen prefix and score L fresh candidates in front
   of it (``cand ⊕ " \\n " ⊕ e2 ⊕ " \\n " ⊕ e1 ⊕ " \\n " ⊕ x``). Classification: the gold option's share
   of the L1-normalised option NLLs; generation: 1 - a task metric.
2. :func:`train_retriever` (``lmops se2 train``): a :class:`DualEncoder` (two ``transformers`` encoders,
   [CLS] pooling, dot product) trained with softmax cross-entropy over the positive (best-ranked right
   candidate), hard negatives (the ranking's tail), random negatives and in-batch contexts.
3. :func:`select` (``lmops se2 select``): beam search (width 3, 3 shots, cumulative dot-product scores, no
   repeated example) and the prompt built from the best beam's pool ids within a budget.

Faithful to the official code: the prompt order (new examples prepended), the L1-normalised option losses,
greedy generation with at most 100 new tokens cut at "\\n", the e^(-r) rank sampling with per-record
reseeding, per-step 90/10 splits (seed 42) merged by query id, positives with ``one_shot_acc > 0`` (records
without one dropped), the last 20 candidates as hard negatives, 20 random negatives drawn with replacement,
DPR's loss and schedule (AdamW, linear warmup and decay, gradient clip 2.0, best validation checkpoint),
beam width 3 with cumulative scores and top-1 beam inference, the farthest examples dropped first.

Fixed official bugs (research notes, 2026-11-29): selections are pool ids, never text split again on
"\\n"; a query with no example that fits the budget gets none (not all of them); the query is excluded by
pool id only when it is a pool member; the random baseline draws per query; the positive is never also a
hard negative.

Choices (the official code differs or the detail is open): one demonstration :class:`Template` instead of
FLAN templates drawn per example; chrF (sacrebleu) as the default generation metric instead of each
task's ROUGE (pluggable ``metric``); validation loss as the ``best_valid`` criterion; a too-long query
keeps its end; brute-force ``torch`` retrieval instead of FAISS; BM25 lowercases its whitespace tokens.

``lmops se2 demo`` (:func:`run_demo`) runs all of it offline on a synthetic task with a scripted LLM whose
feedback has a planted best sequence, and prints the accuracy of Se2, random and BM25 selection.
"""

from .baselines import bm25_selection, random_selection
from .beam import (
    Beam,
    Prompt,
    Selection,
    beam_search,
    build_prompt,
    build_prompts,
    select,
    token_counter,
)
from .config import ScoreConfig, SelectConfig, TrainConfig
from .data import (
    SEPARATOR,
    Candidate,
    Example,
    Pool,
    ScoredRecord,
    Template,
    read_examples,
    read_records,
    write_examples,
    write_records,
)
from .demo import (
    DemoResult,
    demo_task,
    load_demo_task,
    run_demo,
    scripted_llm,
    tiny_dual_encoder,
)
from .inference import EvalResult, evaluate
from .retriever import DualEncoder, query_text
from .sampling import (
    ScoredData,
    merge_steps,
    next_step_items,
    rank_probabilities,
    sample_rank,
    score_candidates,
    split_records,
    step1_items,
)
from .scoring import ClassificationScorer, GenerationScorer, chrf_metric, scoring_prompt
from .training import (
    TrainingSample,
    TrainReport,
    biencoder_loss,
    make_training_samples,
    train_retriever,
)

__all__ = [
    "SEPARATOR",
    "Beam",
    "Candidate",
    "ClassificationScorer",
    "DemoResult",
    "DualEncoder",
    "EvalResult",
    "Example",
    "GenerationScorer",
    "Pool",
    "Prompt",
    "ScoreConfig",
    "ScoredData",
    "ScoredRecord",
    "SelectConfig",
    "Selection",
    "Template",
    "TrainConfig",
    "TrainReport",
    "TrainingSample",
    "beam_search",
    "biencoder_loss",
    "bm25_selection",
    "build_prompt",
    "build_prompts",
    "chrf_metric",
    "demo_task",
    "evaluate",
    "load_demo_task",
    "make_training_samples",
    "merge_steps",
    "next_step_items",
    "query_text",
    "random_selection",
    "rank_probabilities",
    "read_examples",
    "read_records",
    "run_demo",
    "sample_rank",
    "score_candidates",
    "scoring_prompt",
    "scripted_llm",
    "select",
    "split_records",
    "step1_items",
    "tiny_dual_encoder",
    "token_counter",
    "train_retriever",
    "write_examples",
    "write_records",
]
