"""TREC's settings: the model, the diffusion process, training and sampling, each a dataclass validated on
construction (``ValueError``/``TypeError`` naming the field).

Defaults are small enough for the shipped synthetic task on a CPU. Where the paper's setting is known from
its lineage (DiffuSeq: 2000 diffusion steps, the sqrt schedule, self-conditioning on 50% of steps), the
field's comment says so; everything else is a choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...common.config import ConfigDict as _Dict
from ...common.config import check_choice as _choice
from ...common.config import check_int as _int
from ...common.config import check_number as _float

__all__ = ["AblationConfig", "DiffusionConfig", "ModelConfig", "SampleConfig", "TrainConfig", "SCHEDULES", "LINEARS", "RC_ACTIONS"]

SCHEDULES = ("sqrt", "cosine", "linear")
LINEARS = ("linear", "bitlinear")
RC_ACTIONS = ("argmax", "sample")


@dataclass
class ModelConfig(_Dict):
    """The denoiser (:class:`~lmops.methods.trec.model.TRECModel`).

    Attributes:
        vocab_size: tokens of the (shared) source/target vocabulary, specials included.
        embed_dim: d, the dimension of the continuous token embeddings the diffusion runs in (DiffuSeq: 128;
            Diffusion-LM: 16-128).
        hidden_dim: width of the transformers (source encoder and denoiser).
        num_heads: attention heads (must divide ``hidden_dim``).
        ffn_dim: feed-forward width.
        encoder_layers, denoiser_layers: transformer blocks of the source encoder and of the denoiser.
        max_source_len: longest source, in tokens (positional embeddings).
        target_len: the fixed target length; targets are padded with ``pad_id`` (DiffuSeq's length handling).
        pad_id: the padding token id.
        dropout: dropout in attention and feed-forward blocks.
        self_condition: the denoiser takes the previous x0 estimate as an extra input (Analog Bits); needed by
            self-conditioning and by Reinforced Conditioning.
        linear: ``"linear"`` (``nn.Linear``) or ``"bitlinear"`` (``lmops.BitLinear``, BitNet b1.58 QAT): the
            class of every linear of the transformers, recorded so that a checkpoint rebuilds the same model.
    """

    vocab_size: int
    embed_dim: int = 16
    hidden_dim: int = 64
    num_heads: int = 4
    ffn_dim: int = 128
    encoder_layers: int = 1
    denoiser_layers: int = 2
    max_source_len: int = 16
    target_len: int = 16
    pad_id: int = 0
    dropout: float = 0.0
    self_condition: bool = True
    linear: str = "linear"

    def __post_init__(self) -> None:
        _int("vocab_size", self.vocab_size, 2)
        for name in ("embed_dim", "hidden_dim", "num_heads", "ffn_dim", "max_source_len", "target_len"):
            _int(name, getattr(self, name), 1)
        _int("encoder_layers", self.encoder_layers, 0)
        _int("denoiser_layers", self.denoiser_layers, 1)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"num_heads: expected a divisor of hidden_dim={self.hidden_dim}, got {self.num_heads}")
        _int("pad_id", self.pad_id, 0)
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id: expected an id < vocab_size={self.vocab_size}, got {self.pad_id}")
        _float("dropout", self.dropout, 0.0, 1.0)
        if self.dropout >= 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.self_condition, bool):
            raise TypeError(f"self_condition: expected a bool, got {self.self_condition!r}")
        _choice("linear", self.linear, LINEARS)


@dataclass
class DiffusionConfig(_Dict):
    """The forward process.

    Attributes:
        num_timesteps: T (DiffuSeq and, per its lineage, TREC: 2000).
        schedule: ``"sqrt"`` (Diffusion-LM's ``1 - sqrt(t/T + 1e-4)``, DiffuSeq's default), ``"cosine"``
            (Nichol & Dhariwal) or ``"linear"`` (DDPM's betas, rescaled to T).
    """

    num_timesteps: int = 2000
    schedule: str = "sqrt"

    def __post_init__(self) -> None:
        _int("num_timesteps", self.num_timesteps, 2)
        _choice("schedule", self.schedule, SCHEDULES)


@dataclass
class TrainConfig(_Dict):
    """Training (:func:`~lmops.methods.trec.training.train`).

    Attributes:
        steps: optimizer steps.
        batch_size: examples per step.
        lr, weight_decay: AdamW's.
        warmup_steps: linear warm-up, then constant (a choice; DiffuSeq decays linearly).
        grad_clip: gradient-norm clip (0 = none).
        seed: seeds the initialisation, the data order, t, the noise and the self-conditioning coin.
        self_cond_prob: share of steps trained with self-conditioning (Analog Bits, DiffuSeq-v2, TREC: 0.5).
        rounding_weight: weight of Diffusion-LM's rounding loss, the cross-entropy of the target tokens
            under the tied-embedding softmax of the x0 *sample* (1.0 in Diffusion-LM/DiffuSeq).
        anchor_weight: weight of the cross-entropy under the softmax of the *predicted* x0 (Difformer's
            anchor loss; 0 = Diffusion-LM's objective exactly). A choice: it makes argmax rounding of a tiny
            model's predictions reliable.
        rc_weight: weight of Reinforced Conditioning's REINFORCE term (0 = plain self-conditioning, bitwise).
        rc_clip: epsilon of the advantage clip ``clip(R_sc - R_hat, -eps, eps)`` on the reward's scale
            (sentence BLEU / 100 by default). The paper's value is unconfirmed: a choice.
        rc_action: the y of ``log p(y | z0_sc)``: ``"argmax"`` (the rounded self-conditioned prediction whose
            reward is R_sc) or ``"sample"`` (a token sequence sampled from its rounding softmax, rewarded
            itself: an unbiased REINFORCE estimate with the first pass as baseline). A choice.
        tavs_gamma: Time-Aware Variance Scaling's strength (0 = the plain schedule, bitwise); see
            :class:`~lmops.methods.trec.schedule.TimeAwareVarianceScaling`.
        checkpoint_every: write a resumable checkpoint every this many steps (0 = only at the end).
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    self_cond_prob: float = 0.5
    rounding_weight: float = 1.0
    anchor_weight: float = 1.0
    rc_weight: float = 0.0
    rc_clip: float = 0.5
    rc_action: str = "argmax"
    tavs_gamma: float = 0.0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        _int("steps", self.steps, 1)
        _int("batch_size", self.batch_size, 1)
        _float("lr", self.lr, 0.0, open_low=True)
        _float("weight_decay", self.weight_decay, 0.0)
        _int("warmup_steps", self.warmup_steps, 0)
        _float("grad_clip", self.grad_clip, 0.0)
        _int("seed", self.seed, 0)
        _float("self_cond_prob", self.self_cond_prob, 0.0, 1.0)
        _float("rounding_weight", self.rounding_weight, 0.0)
        _float("anchor_weight", self.anchor_weight, 0.0)
        _float("rc_weight", self.rc_weight, 0.0)
        if self.rc_weight > 0 and self.self_cond_prob == 0:
            raise ValueError("rc_weight: Reinforced Conditioning acts on self-conditioned batches; it needs "
                             "self_cond_prob > 0")
        _float("rc_clip", self.rc_clip, 0.0, open_low=True)
        _choice("rc_action", self.rc_action, RC_ACTIONS)
        _float("tavs_gamma", self.tavs_gamma, 0.0)
        _int("checkpoint_every", self.checkpoint_every, 0)


@dataclass
class SampleConfig(_Dict):
    """Sampling (:func:`~lmops.methods.trec.sampling.sample`).

    Attributes:
        steps: denoising steps, a subset of the T timesteps spaced evenly (DDIM skipping; T = all of them).
        eta: DDIM's eta: 0 = deterministic DDIM, 1 with ``steps == T`` = DDPM's ancestral sampler.
        clamp: replace each x0 estimate with its nearest token embedding (DiffuSeq's clamping trick).
        self_condition: feed each step's x0 estimate to the next step.
        batch_size: sources per forward pass.
        seed: seeds the starting noise (and eta's noise).
    """

    steps: int = 20
    eta: float = 0.0
    clamp: bool = False
    self_condition: bool = True
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        _int("steps", self.steps, 1)
        _float("eta", self.eta, 0.0)
        for name in ("clamp", "self_condition"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        _int("batch_size", self.batch_size, 1)
        _int("seed", self.seed, 0)


@dataclass
class AblationConfig(_Dict):
    """``lmops trec ablate``: plain, +RC, +TAVS and +both on the synthetic task, several seeds each.

    Defaults are sized to finish in a few minutes on one CPU thread; the budget is short enough that the
    tiny model is not yet at the task's ceiling (so settings can differ), which also means the comparison
    is one of sample efficiency at that budget, not of converged quality.

    Attributes:
        seeds: seeds per setting (each seed: the same initialisation, data order and noise in every setting).
        train_steps, batch_size: training budget per run.
        rc_weight, tavs_gamma: the values the +RC / +TAVS / +both settings use.
        n_train, n_test: synthetic train/test pairs; ``min_len``/``max_len``: words per source;
            ``n_words``: size of the synthetic vocabulary (<= 32).
        sample_steps: DDIM steps at evaluation.
        num_timesteps: T.
    """

    seeds: int = 3
    train_steps: int = 400
    batch_size: int = 64
    rc_weight: float = 1.0
    tavs_gamma: float = 0.5
    n_train: int = 4000
    n_test: int = 200
    min_len: int = 8
    max_len: int = 16
    n_words: int = 32
    sample_steps: int = 20
    num_timesteps: int = 2000

    def __post_init__(self) -> None:
        for name in ("seeds", "train_steps", "batch_size", "n_train", "n_test", "min_len", "sample_steps"):
            _int(name, getattr(self, name), 1)
        _int("max_len", self.max_len, self.min_len)
        _int("n_words", self.n_words, 2)
        if self.n_words > 32:
            raise ValueError(f"n_words: expected at most 32 (the synthetic vocabulary), got {self.n_words}")
        _int("num_timesteps", self.num_timesteps, 2)
        _float("rc_weight", self.rc_weight, 0.0, open_low=True)
        _float("tavs_gamma", self.tavs_gamma, 0.0, open_low=True)
