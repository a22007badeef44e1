"""Settings of tailored reasoning distillation, one dataclass per stage, each validated on construction
(``ValueError`` naming the field).

Defaults are the official code's (``Raibows/Learn-to-Reason``: ``infer_student_wrong.py``, ``args.py``,
the README's command lines) unless a field's comment says "a choice". The README's optimiser settings
(lr 7e-6, batch 2 per device on 8 GPUs, 10 epochs) are for GPT-J-6B; the offline demo overrides them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ...common.config import ConfigDict as _Dict
from ...common.config import check_int as _int
from ...common.config import check_number as _float

__all__ = ["DistillConfig", "ExamConfig", "LossConfig", "TeacherConfig", "TrainConfig"]


@dataclass
class ExamConfig(_Dict):
    """The student's exam on the training questions (``infer_student_wrong.py``).

    Attributes:
        k: rationales sampled per question (official: ``num_return_sequences=4``).
        temperature: sampling temperature (official: ``do_sample=True`` at the default 1.0).
        top_p: nucleus sampling (official: none, 1.0).
        max_new_tokens: official 128.
        stop: the student's answer ends at the first of these (official: ``"\\n\\n"`` or end of sequence).
        batch_size: prompts per generation batch (each with its ``k`` samples).
        seed: sampling seed; round ``r``'s exam uses ``seed + r`` so a rerun samples the same rationales.
    """

    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ("\n\n",)
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        _int("k", self.k, 1)
        _float("temperature", self.temperature, 0.0)
        _float("top_p", self.top_p, 0.0, 1.0, open_low=True)
        _int("max_new_tokens", self.max_new_tokens, 1)
        if isinstance(self.stop, list):
            self.stop = tuple(self.stop)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop: expected a tuple of non-empty strings, got {self.stop!r}")
        _int("batch_size", self.batch_size, 1)
        _int("seed", self.seed, 0)


@dataclass
class TeacherConfig(_Dict):
    """Asking the teacher LLM for rationales (round 1) and customised corrections (rounds >= 2).

    Attributes:
        samples: rationales asked per question in one request (``n``). The contrastive positive is a
            *different* teacher rationale for the same question, so it needs >= 2 (a choice: the
            official data holds several ChatGPT rationales per question; how many is not stated).
        temperature: sampling temperature for those samples (a choice).
        max_new_tokens: per answer.
        retries: extra attempts for a question whose answers all fail to parse (``lmops.llm.ask``);
            a question still failing is counted and skipped.
        chat: send each prompt as one user message through ``llm.chat`` (chat-only APIs).
        batch_size: questions per request batch; results are appended to disk after each batch.
    """

    samples: int = 2
    temperature: float = 0.7
    max_new_tokens: int = 256
    retries: int = 2
    chat: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        _int("samples", self.samples, 1)
        _float("temperature", self.temperature, 0.0)
        _int("max_new_tokens", self.max_new_tokens, 1)
        _int("retries", self.retries, 0)
        if not isinstance(self.chat, bool):
            raise TypeError(f"chat: expected a bool, got {self.chat!r}")
        _int("batch_size", self.batch_size, 1)


@dataclass
class LossConfig(_Dict):
    """The official trainer's losses (``trainer.py``; ``args.py`` defaults as in the README).

    Attributes:
        prefix_weight: ``mle_w``, the weight of the prompt-prefix targets in the weighted MLE (0.1).
        contrastive: add the self-reflection triplet loss (``--contrastive_loss``).
        cl_ratio: ``cl_ratio``, its factor in the total (0.5).
        margin: ``cl_p``, the triplet margin (1.0).
        cl_pos_num: ``cl_pos_num``, teacher rationales kept per question as positives (10).
        cl_neg_num: ``cl_neg_num``, wrong student rationales kept per question as negatives (4).
        prefix_cache: encode each rationale on top of the prompt prefix's KV cache computed without
            gradient (the official path); ``False`` runs one full forward of prefix + rationale with
            gradient through both (same representation, more gradient, more memory).
    """

    prefix_weight: float = 0.1
    contrastive: bool = True
    cl_ratio: float = 0.5
    margin: float = 1.0
    cl_pos_num: int = 10
    cl_neg_num: int = 4
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        _float("prefix_weight", self.prefix_weight, 0.0)
        if not isinstance(self.contrastive, bool):
            raise TypeError(f"contrastive: expected a bool, got {self.contrastive!r}")
        _float("cl_ratio", self.cl_ratio, 0.0)
        _float("margin", self.margin, 0.0)
        _int("cl_pos_num", self.cl_pos_num, 1)
        _int("cl_neg_num", self.cl_neg_num, 1)
        if not isinstance(self.prefix_cache, bool):
            raise TypeError(f"prefix_cache: expected a bool, got {self.prefix_cache!r}")


@dataclass
class TrainConfig(_Dict):
    """One round's fine-tuning (the README's ``run_trainer.py`` command for GPT-J-6B).

    Attributes:
        learning_rate: peak AdamW learning rate (README: 7e-6).
        epochs: passes over the round's data (README: 10).
        batch_size: items per step (README: 2 per device x 8 devices).
        weight_decay: AdamW weight decay on matrices, none on biases and norms (README: 0.01).
        warmup_steps: linear warm-up, then linear decay to 0 (the HF Trainer's default schedule; 100).
        max_grad_norm: gradient clipping (the HF Trainer's default 1.0).
        save_steps: a resumable checkpoint every this many steps (and at the end of the round).
        max_steps: stop a round after this many steps (``None``: ``epochs`` full passes).
        max_length: sequences (prefix + rationale) longer than this are cut on the left of the prefix.
        seed: batch order, positive/negative draws and model-side randomness.
    """

    learning_rate: float = 7e-6
    epochs: int = 10
    batch_size: int = 2
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    save_steps: int = 100
    max_steps: int | None = None
    max_length: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        _float("learning_rate", self.learning_rate, 0.0, open_low=True)
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _float("weight_decay", self.weight_decay, 0.0)
        _int("warmup_steps", self.warmup_steps, 0)
        _float("max_grad_norm", self.max_grad_norm, 0.0, open_low=True)
        _int("save_steps", self.save_steps, 1)
        if self.max_steps is not None:
            _int("max_steps", self.max_steps, 1)
        _int("max_length", self.max_length, 8)
        _int("seed", self.seed, 0)


_ROUND_DATA = ("new", "cumulative")


@dataclass
class DistillConfig(_Dict):
    """The multi-round loop.

    Attributes:
        rounds: rounds of exam -> teacher -> train (the paper's Algorithm 1 with its round count).
        exam, teacher, loss, train: the stages' settings.
        round_data: what round ``r >= 2`` trains on: ``"new"``, only that round's customised
            corrections (the official command lines train round ``r`` on ``round{r}`` teacher data from
            round ``r-1``'s checkpoint), or ``"cumulative"``, every round's teacher rationales so far
            (a choice, against forgetting). Round 1 always covers the whole training set.
        evaluate: greedy accuracy on the training and held-out questions before round 1 and after
            every round (``eval.json``).
        eval_max_new_tokens: tokens per greedy answer in those evaluations.
    """

    rounds: int = 2
    exam: ExamConfig = field(default_factory=ExamConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    round_data: str = "new"
    evaluate: bool = True
    eval_max_new_tokens: int = 128

    def __post_init__(self) -> None:
        _int("rounds", self.rounds, 1)
        for name, cls in (("exam", ExamConfig), ("teacher", TeacherConfig), ("loss", LossConfig),
                          ("train", TrainConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls.from_dict(value))
            elif not isinstance(value, cls):
                raise TypeError(f"{name}: expected a {cls.__name__}, got {type(value).__name__}")
        if self.round_data not in _ROUND_DATA:
            raise ValueError(f"round_data: expected one of {_ROUND_DATA}, got {self.round_data!r}")
        if not isinstance(self.evaluate, bool):
            raise TypeError(f"evaluate: expected a bool, got {self.evaluate!r}")
        _int("eval_max_new_tokens", self.eval_max_new_tokens, 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exam"]["stop"] = list(self.exam.stop)
        return data
