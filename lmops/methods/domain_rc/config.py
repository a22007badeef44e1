"""ETRC's settings, one dataclass per stage, each validated on construction (``ValueError`` naming the
field). Where the paper gives a value it is the default; the others are marked "a choice"."""

from __future__ import annotations

from dataclasses import dataclass

from ...common.config import ConfigDict as _Dict
from ...common.config import check_choice as _choice
from ...common.config import check_int as _int
from ...common.config import check_number as _number

__all__ = ["ClusterConfig", "PackConfig", "QAConfig", "TrainConfig"]


@dataclass
class QAConfig(_Dict):
    """QA generation by the teacher (paper, section 3.1).

    Attributes:
        batch_size: documents per :func:`lmops.llm.ask` call (each batch is appended to the output as
            soon as it returns, so a killed run loses at most one batch).
        max_new_tokens: the teacher's answer budget.
        temperature: 0 is greedy (the paper does not give its sampling settings: a choice).
        retries: extra attempts for an answer without a parsable QA list (then counted and skipped).
        chat: send the prompt as one user message (the paper used ChatGPT); ``False`` sends it as a
            plain completion prompt (a base model distilled on the teacher's output).
        max_document_chars: documents are cut to this many characters in the prompt (``None``: never);
            the training text keeps the whole document.
    """

    batch_size: int = 16
    max_new_tokens: int = 512
    temperature: float = 0.0
    retries: int = 2
    chat: bool = True
    max_document_chars: int | None = None

    def __post_init__(self) -> None:
        _int("batch_size", self.batch_size, 1)
        _int("max_new_tokens", self.max_new_tokens, 1)
        _number("temperature", self.temperature, 0.0)
        _int("retries", self.retries, 0)
        if not isinstance(self.chat, bool):
            raise ValueError(f"chat: expected a bool, got {self.chat!r}")
        if self.max_document_chars is not None:
            _int("max_document_chars", self.max_document_chars, 1)


@dataclass
class ClusterConfig(_Dict):
    """Length-based clustering (paper, Algorithm 1).

    Attributes:
        l_max: the most tokens a cluster holds (documents plus their QA, in the training tokenizer's
            tokens). The paper does not give its value: a choice (default: a 2048-token context).
        d_max: the most documents a cluster holds (not given in the paper: a choice).
        threshold: growth stops at the first nearest document whose cosine similarity is below it
            (the paper's 0.7).
        seed: the RNG seed of the random seed documents.
        anchor: what "nearest" is measured from: ``"seed"`` (the cluster's seed document, as Algorithm 1
            reads) or ``"centroid"`` (the normalized mean of the cluster's documents). A choice.
        brute_force_max: corpora up to this many documents use exact torch matmul search; larger ones
            use faiss when it is installed, else chunked exact search (with a warning).
        faiss_kind: ``"flat"`` (exact inner product) or ``"hnsw"`` (approximate, for millions of documents).
        encoder_batch_size, encoder_max_length: the embedding pass.
    """

    l_max: int = 2048
    d_max: int = 8
    threshold: float = 0.7
    seed: int = 0
    anchor: str = "seed"
    brute_force_max: int = 20000
    faiss_kind: str = "flat"
    encoder_batch_size: int = 32
    encoder_max_length: int = 512

    def __post_init__(self) -> None:
        _int("l_max", self.l_max, 1)
        _int("d_max", self.d_max, 1)
        _number("threshold", self.threshold, -1.0, 1.0)
        _int("seed", self.seed, 0)
        _choice("anchor", self.anchor, ("seed", "centroid"))
        _int("brute_force_max", self.brute_force_max, 1)
        _choice("faiss_kind", self.faiss_kind, ("flat", "hnsw"))
        _int("encoder_batch_size", self.encoder_batch_size, 1)
        _int("encoder_max_length", self.encoder_max_length, 1)


@dataclass
class PackConfig(_Dict):
    """Formatting, mixing with general instructions, and knapsack packing (paper, section 3.2).

    Attributes:
        context_length: tokens per packed sequence (the model's maximum context in the paper).
        ratio: general-instruction tokens per domain token. AdaptLLM's maintainer mixes 1:1 by tokens
            (issue #258); the ETRC paper says "AdaptLLM's ratio": the default 1.0 is that reading.
        overlong: an example longer than ``context_length``: ``"split"`` it into context-sized pieces
            (no token is lost; the default, a choice), ``"truncate"`` it, or ``"drop"`` it. Counted either way.
        allow_repeat: repeat general examples when the file has fewer tokens than the ratio asks
            (default: use each once and report the ratio reached).
        seed: the shuffles (QA order in a cluster, general sampling, example order).
    """

    context_length: int = 2048
    ratio: float = 1.0
    overlong: str = "split"
    allow_repeat: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _int("context_length", self.context_length, 2)
        _number("ratio", self.ratio, 0.0)
        _choice("overlong", self.overlong, ("split", "truncate", "drop"))
        if not isinstance(self.allow_repeat, bool):
            raise ValueError(f"allow_repeat: expected a bool, got {self.allow_repeat!r}")
        _int("seed", self.seed, 0)


@dataclass
class TrainConfig(_Dict):
    """Continued training with the LM loss on every token (paper, section 3.3; AdaptLLM issue #149).

    Attributes:
        adapter: ``"lora"`` (peft LoRA on all linear layers, the paper's), ``"reslora"`` (lmops ResLoRA
            on all linear layers) or ``"none"`` (full fine-tuning, the paper's ablation).
        rank: the LoRA rank (the paper's 256; lower ranks and Q/V-only LoRA underperform in its ablation).
        alpha: the LoRA alpha; ``None`` means ``2 * rank`` (not given in the paper: a choice).
        dropout: LoRA dropout (a choice).
        reslora_structure: ResLoRA's residual structure (``"is"``, ``"bs"``, ``"ms"``, ``"none"``).
        lr, weight_decay, warmup_steps, max_grad_norm: AdamW with linear warmup then linear decay
            (the paper gives none of them: choices).
        epochs, batch_size, grad_accum: per process; the global batch is ``batch_size * grad_accum *
            world_size``.
        max_steps: stop after this many optimizer steps (``None``: all epochs).
        seed: the data order and LoRA initialisation.
        log_every: optimizer steps between two logged losses.
    """

    adapter: str = "lora"
    rank: int = 256
    alpha: float | None = None
    dropout: float = 0.0
    reslora_structure: str = "is"
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    epochs: int = 1
    batch_size: int = 1
    grad_accum: int = 1
    max_steps: int | None = None
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        _choice("adapter", self.adapter, ("lora", "reslora", "none"))
        _int("rank", self.rank, 1)
        if self.alpha is not None:
            _number("alpha", self.alpha, 0.0, open_low=True)
        _number("dropout", self.dropout, 0.0, 1.0)
        if self.dropout >= 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        _choice("reslora_structure", self.reslora_structure, ("is", "bs", "ms", "none"))
        _number("lr", self.lr, 0.0, open_low=True)
        _number("weight_decay", self.weight_decay, 0.0)
        _int("warmup_steps", self.warmup_steps, 0)
        if self.max_grad_norm is not None:
            _number("max_grad_norm", self.max_grad_norm, 0.0, open_low=True)
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _int("grad_accum", self.grad_accum, 1)
        if self.max_steps is not None:
            _int("max_steps", self.max_steps, 1)
        _int("seed", self.seed, 0)
        _int("log_every", self.log_every, 1)

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank
