"""Se2's settings, one dataclass per stage, each validated on construction (``ValueError`` naming the field).

Defaults are the official code's (``microsoft/LMOps`` ``se2/``: ``get_cmds.py``, the Hydra YAMLs), except
where a field's comment says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...common.config import ConfigDict as _Dict
from ...common.config import check_int as _int
from ...common.config import check_number as _float

__all__ = ["ScoreConfig", "SelectConfig", "TrainConfig"]


@dataclass
class ScoreConfig(_Dict):
    """Building the retriever's training data: sampling and LLM scoring (``find_random_step{1,2,3}.py``,
    ``scorer.py``, ``merge_data.py``).

    Attributes:
        n_candidates: L, candidates scored per record (official: 50; 100-400 for some tasks).
        steps: sequential steps, i.e. the longest chosen prefix is ``steps - 1`` examples (official: 3).
        valid_ratio: the share of each step's records held out for validation (official: 0.1).
        split_seed: seed of each step's shuffle before the split and of the merge's shuffles (official: 42).
        chunk_size: candidates per LLM call (the options of one candidate always go together).
        max_new_tokens: generation tasks: greedy tokens per candidate, cut at "\\n" (official: 100).
        retries: extra attempts for an LLM call that fails; candidates still failing are skipped and counted.
    """

    n_candidates: int = 50
    steps: int = 3
    valid_ratio: float = 0.1
    split_seed: int = 42
    chunk_size: int = 64
    max_new_tokens: int = 100
    retries: int = 2

    def __post_init__(self) -> None:
        _int("n_candidates", self.n_candidates, 1)
        _int("steps", self.steps, 1)
        _float("valid_ratio", self.valid_ratio, 0.0, 1.0)
        if self.valid_ratio >= 1:
            raise ValueError(f"valid_ratio: expected a number in [0, 1), got {self.valid_ratio!r}")
        _int("split_seed", self.split_seed, 0)
        _int("chunk_size", self.chunk_size, 1)
        _int("max_new_tokens", self.max_new_tokens, 1)
        _int("retries", self.retries, 0)


@dataclass
class TrainConfig(_Dict):
    """Training the dual encoder (DPR's ``train_dense_encoder.py`` with ``biencoder_se2.yaml``).

    Attributes:
        lr: AdamW learning rate (official: 1e-5; 3e-5 OpenBookQA, 5e-6 AESLC).
        epochs: passes over the training records (official get_cmds default: 6).
        batch_size: records per step; every record's contexts are negatives for the others (official: 8).
        warmup_steps: linear warmup, then linear decay to 0 (DPR's ``get_schedule_linear``; official: 1000).
        max_grad_norm: gradient-norm clip (official: 2.0).
        adam_eps, weight_decay: AdamW's (official: 1e-8, 0).
        n_hard_negatives: the last candidates of a record's ranking used as hard negatives (official: 20).
        n_random_negatives: pool examples drawn with replacement as negatives (official: 20).
        seed: random negatives, batch order and dropout.
        eval_batch_size: records per validation batch.
    """

    lr: float = 1e-5
    epochs: int = 6
    batch_size: int = 8
    warmup_steps: int = 1000
    max_grad_norm: float = 2.0
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    n_hard_negatives: int = 20
    n_random_negatives: int = 20
    seed: int = 0
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        _float("lr", self.lr, 0.0, open_low=True)
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _int("warmup_steps", self.warmup_steps, 0)
        _float("max_grad_norm", self.max_grad_norm, 0.0, open_low=True)
        _float("adam_eps", self.adam_eps, 0.0, open_low=True)
        _float("weight_decay", self.weight_decay, 0.0)
        _int("n_hard_negatives", self.n_hard_negatives, 0)
        _int("n_random_negatives", self.n_random_negatives, 0)
        _int("seed", self.seed, 0)
        _int("eval_batch_size", self.eval_batch_size, 1)


@dataclass
class SelectConfig(_Dict):
    """Beam-search selection and prompt building (``dense_retriever_beam_score.py``, ``few_shot_dsr.py``).

    Attributes:
        beam_size: w, sequences kept per query (official: 3).
        shots: K, examples per sequence (official: 3).
        batch_size: query texts per encoder call.
        max_prompt_tokens: the budget shared by the examples, the query and the longest answer (official:
            2048 tokens of the scoring LLM); examples farthest from the query are dropped first. ``None``:
            no trimming.
    """

    beam_size: int = 3
    shots: int = 3
    batch_size: int = 64
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        _int("beam_size", self.beam_size, 1)
        _int("shots", self.shots, 1)
        _int("batch_size", self.batch_size, 1)
        if self.max_prompt_tokens is not None:
            _int("max_prompt_tokens", self.max_prompt_tokens, 1)
