"""GLAN's settings: :class:`GlanConfig` (the data-generation pipeline) and :class:`SFTConfig` (the
response-only fine-tune), each validated on construction with a ``ValueError`` naming the field.

Defaults follow the paper where it gives a number (10 subject queries per discipline; T=1.0, top-p
0.95 for subjects and syllabi; T=0.7, top-p 0.95 for answers; 1-5 concepts; 3 epochs, cosine to 0).
Everything else is marked "a choice" on its field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["GlanConfig", "SFTConfig"]


def _pos_int(name: str, value: object, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")


def _temperature(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


def _top_p(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")


def _fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class GlanConfig:
    """Settings of :func:`lmops.methods.glan.run_glan`.

    Attributes:
        n_subject_queries: sampled subject lists per discipline (paper: 10). Fixed for a discipline once
            its subjects are on disk (they are asked in one request).
        subject_temperature, subject_top_p: sampling of those lists (paper: 1.0, 0.95).
        syllabus_temperature, syllabus_top_p: sampling of each syllabus (paper: 1.0, 0.95).
        question_temperature, question_top_p: sampling of homework questions (the paper gives none
            for this GPT-4 call; 1.0 / 0.95 as its other generation calls is a choice).
        answer_temperature, answer_top_p: the answer model's sampling (paper: 0.7, 0.95).
        convert_temperature: the conversion/extraction turns (0.0, greedy: a choice; they only reformat).
        max_subjects_per_discipline: use the first N subjects of each discipline (None: all). Raising
            it on a rerun adds the next subjects' data.
        dedupe_subjects: drop repeated subject names within a discipline (the paper keeps duplicates
            across disciplines and does not say it removes any; default False).
        questions_per_syllabus: sampled (sessions, concepts) questions per syllabus (a choice; the
            paper's 10M pairs over ~19k syllabi is ~500). Raising it on a rerun adds samples.
        max_concepts: at most this many key concepts per question (paper: 5).
        harder_fraction: probability of strategy (b), two sessions (the paper mixes (a) and (b) without
            a ratio; 0.5 is a choice).
        concept_sampling: ``"combination"`` draws uniformly over all allowed concept combinations (the
            space the paper counts), ``"size"`` draws the number of concepts uniformly first. A choice.
        seed: seeds every sample, keyed by the record it makes (order-independent, so resumes match).
        batch_size: units per LLM call (the backend parallelizes inside a call).
        workers: batches in flight at once (threads; 1 = sequential).
        retries: extra attempts for a malformed answer before it is counted and skipped.
        max_new_tokens_*: the generation budget of each stage.
        ngram_n: word n-gram length of the decontamination (13, GPT-3's, is a choice; the paper does
            not say how it matched).
        decontaminate_answers: also drop pairs whose answer contains a benchmark n-gram (default False:
            the paper removes pairs containing benchmark questions or prompts).
        min_ngram: benchmark texts shorter than ``ngram_n`` words are matched whole when they have at
            least this many words (shorter ones are ignored: too generic to mean contamination).
    """

    n_subject_queries: int = 10
    subject_temperature: float = 1.0
    subject_top_p: float = 0.95
    syllabus_temperature: float = 1.0
    syllabus_top_p: float = 0.95
    question_temperature: float = 1.0
    question_top_p: float = 0.95
    answer_temperature: float = 0.7
    answer_top_p: float = 0.95
    convert_temperature: float = 0.0
    max_subjects_per_discipline: int | None = None
    dedupe_subjects: bool = False
    questions_per_syllabus: int = 10
    max_concepts: int = 5
    harder_fraction: float = 0.5
    concept_sampling: str = "combination"
    seed: int = 0
    batch_size: int = 16
    workers: int = 1
    retries: int = 2
    max_new_tokens_subjects: int = 2048
    max_new_tokens_convert: int = 2048
    max_new_tokens_syllabus: int = 2048
    max_new_tokens_question: int = 512
    max_new_tokens_answer: int = 1024
    ngram_n: int = 13
    decontaminate_answers: bool = False
    min_ngram: int = 8

    def __post_init__(self) -> None:
        _pos_int("n_subject_queries", self.n_subject_queries)
        _pos_int("max_subjects_per_discipline", self.max_subjects_per_discipline, allow_none=True)
        _pos_int("questions_per_syllabus", self.questions_per_syllabus, minimum=0)
        _pos_int("max_concepts", self.max_concepts)
        _pos_int("batch_size", self.batch_size)
        _pos_int("workers", self.workers)
        _pos_int("retries", self.retries, minimum=0)
        _pos_int("ngram_n", self.ngram_n)
        _pos_int("min_ngram", self.min_ngram)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an int, got {self.seed!r}")
        for stage in ("subjects", "convert", "syllabus", "question", "answer"):
            _pos_int(f"max_new_tokens_{stage}", getattr(self, f"max_new_tokens_{stage}"))
        for stage in ("subject", "syllabus", "question", "answer", "convert"):
            _temperature(f"{stage}_temperature", getattr(self, f"{stage}_temperature"))
        for stage in ("subject", "syllabus", "question", "answer"):
            _top_p(f"{stage}_top_p", getattr(self, f"{stage}_top_p"))
        _fraction("harder_fraction", self.harder_fraction)
        if self.concept_sampling not in ("combination", "size"):
            raise ValueError(f"concept_sampling: expected 'combination' or 'size', got {self.concept_sampling!r}")
        for name in ("dedupe_subjects", "decontaminate_answers"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if self.min_ngram > self.ngram_n:
            raise ValueError(f"min_ngram: expected <= ngram_n ({self.ngram_n}), got {self.min_ngram}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GlanConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GlanConfig: unknown field(s) {unknown}")
        return cls(**d)


@dataclass(frozen=True)
class SFTConfig:
    """Settings of :func:`lmops.methods.glan.sft.train_sft` (defaults: a short fine-tune; see
    :meth:`paper` for the paper's recipe).

    Attributes:
        epochs: passes over the data (paper: 3).
        max_steps: stop after this many optimizer steps (None: all epochs).
        lr: peak learning rate (paper: 3e-6 with batch 512 on 10M pairs; 2e-5 here is a choice for
            small data).
        weight_decay: AdamW's (0.0; the paper gives none).
        batch_size: examples per micro-batch.
        grad_accum: micro-batches per optimizer step (paper: 512 pairs per step).
        warmup_steps: linear warm-up steps (paper: 1000); when None, ``warmup_ratio`` of all steps.
        warmup_ratio: used when ``warmup_steps`` is None (0.03 is a choice).
        max_length: tokens per example; longer responses are cut, an example whose prompt alone does
            not fit is skipped.
        max_grad_norm: gradient clipping (1.0; None disables).
        adapter: ``None`` (full fine-tune), ``"lora"`` (peft) or ``"reslora"`` (lmops.reslora).
        lora_r, lora_alpha, lora_dropout, target_modules: the adapters' settings.
        reslora_structure: ResLoRA's structure (``"is"``, ``"bs"``, ``"ms"``, ``"none"``).
        save_merged: save the base model with the adapters merged in (default: the adapters only).
        seed: shuffling and adapter initialization.
    """

    epochs: int = 3
    max_steps: int | None = None
    lr: float = 2e-5
    weight_decay: float = 0.0
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int | None = None
    warmup_ratio: float = 0.03
    max_length: int = 1024
    max_grad_norm: float | None = 1.0
    adapter: str | None = None
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    reslora_structure: str = "is"
    save_merged: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _pos_int("epochs", self.epochs)
        _pos_int("max_steps", self.max_steps, allow_none=True)
        _pos_int("batch_size", self.batch_size)
        _pos_int("grad_accum", self.grad_accum)
        _pos_int("warmup_steps", self.warmup_steps, allow_none=True, minimum=0)
        _pos_int("max_length", self.max_length, minimum=2)
        _pos_int("lora_r", self.lora_r)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0 <= wd < float("inf"):
            raise ValueError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        _fraction("warmup_ratio", self.warmup_ratio)
        _fraction("lora_dropout", self.lora_dropout)
        if self.max_grad_norm is not None and (
            isinstance(self.max_grad_norm, bool) or not isinstance(self.max_grad_norm, (int, float))
            or not self.max_grad_norm > 0
        ):
            raise ValueError(f"max_grad_norm: expected a positive number or None, got {self.max_grad_norm!r}")
        if self.adapter not in (None, "lora", "reslora"):
            raise ValueError(f"adapter: expected None, 'lora' or 'reslora', got {self.adapter!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha: expected a positive number, got {self.lora_alpha!r}")
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"target_modules: expected a non-empty list of module names, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", targets)
        if self.reslora_structure not in ("is", "bs", "ms", "none"):
            raise ValueError(f"reslora_structure: expected 'is', 'bs', 'ms' or 'none', got {self.reslora_structure!r}")
        if not isinstance(self.save_merged, bool):
            raise ValueError(f"save_merged: expected a bool, got {self.save_merged!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an int, got {self.seed!r}")

    @classmethod
    def paper(cls, **overrides) -> SFTConfig:
        """The paper's recipe (Mistral-7B): 3 epochs, lr 3e-6, 512 pairs per step, cosine schedule with
        1000 warm-up steps to a final lr of 0. ``batch_size * grad_accum`` makes the 512."""
        base = dict(epochs=3, lr=3e-6, batch_size=8, grad_accum=64, warmup_steps=1000, max_length=2048)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d
