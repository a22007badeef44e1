"""VisionPrefer's settings, one dataclass per stage, each validated on construction (``ValueError``
naming the field).

Defaults marked "a choice" are ours: the paper's values (annotation prompt, VP-Score head and training
hyper-parameters, PPO/DPO hyper-parameters) are unconfirmed (see the package docstring).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ...common.config import check_int as _int
from ...common.config import check_number as _float

__all__ = [
    "ASPECTS",
    "AnnotateConfig",
    "DPOConfig",
    "PPOConfig",
    "ReFLConfig",
    "SamplerConfig",
    "TrainScoreConfig",
    "VPScoreConfig",
    "default_weights",
]

# The paper's four annotation aspects (abstract), in the order the records keep them.
ASPECTS: tuple[str, ...] = ("prompt_following", "aesthetic", "fidelity", "harmlessness")
BACKBONE_KINDS = ("clip", "blip")
FINETUNE_MODES = ("head", "full", "lora", "reslora")
ANNOTATE_MODES = ("per_image", "per_prompt")
ADVANTAGE_MODES = ("batch", "prompt")


def default_weights() -> dict[str, float]:
    """Equal weights over :data:`ASPECTS` for the aggregated preference (a choice: how the paper combines
    the four aspect scores into one label is unconfirmed)."""
    return {a: 1.0 for a in ASPECTS}


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")


def check_aspects(name: str, aspects: object) -> tuple[str, ...]:
    """``aspects`` as a tuple of known, distinct aspect names (``ValueError`` naming ``name`` otherwise)."""
    items = (aspects,) if isinstance(aspects, str) else aspects
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{name}: expected a non-empty list of aspects from {ASPECTS}, got {aspects!r}")
    for a in items:
        if a not in ASPECTS:
            raise ValueError(f"{name}: unknown aspect {a!r}; expected one of {ASPECTS}")
    if len(set(items)) != len(items):
        raise ValueError(f"{name}: repeated aspect in {list(items)!r}")
    return tuple(items)


def check_weights(name: str, weights: object) -> dict[str, float]:
    """``weights`` as ``{aspect: weight >= 0}`` with a positive sum (``ValueError`` naming ``name``)."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{name}: expected a non-empty dict aspect -> weight, got {weights!r}")
    out = {}
    for a, w in weights.items():
        if a not in ASPECTS:
            raise ValueError(f"{name}: unknown aspect {a!r}; expected keys from {ASPECTS}")
        _float(f"{name}[{a!r}]", w, 0.0)
        out[a] = float(w)
    if sum(out.values()) <= 0:
        raise ValueError(f"{name}: the weights sum to 0; give at least one positive weight")
    return out


class _Dict:
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise TypeError(f"data: expected a dict of {cls.__name__} fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"data: unknown {cls.__name__} field(s) {unknown}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


@dataclass
class AnnotateConfig(_Dict):
    """Annotation by a multimodal judge (:func:`~lmops.methods.visionprefer.annotate`).

    Attributes:
        aspects: the aspects asked for (default: all four of the paper).
        mode: ``"per_image"`` (one request per image and aspect) or ``"per_prompt"`` (all images of a
            prompt in one request per aspect, the answer scoring each; the paper's GPT-4V saw several
            images and also returned rankings [secondary source]). Default per_image: a choice.
        score_min, score_max: the integer score scale (1-5: the paper's, per secondary sources).
        retries: extra attempts for an answer that does not parse (then counted and skipped).
        temperature: the first attempt's temperature (greedy by default).
        retry_temperature: the temperature of retries of a greedy request (as :func:`lmops.llm.ask`).
        max_new_tokens: the longest answer asked for.
        chunk_size: requests per judge batch; results are appended after each batch.
    """

    aspects: tuple[str, ...] = ASPECTS
    mode: str = "per_image"
    score_min: int = 1
    score_max: int = 5
    retries: int = 2
    temperature: float = 0.0
    retry_temperature: float = 0.7
    max_new_tokens: int = 512
    chunk_size: int = 32

    def __post_init__(self) -> None:
        self.aspects = check_aspects("aspects", self.aspects)
        if self.mode not in ANNOTATE_MODES:
            raise ValueError(f"mode: expected one of {ANNOTATE_MODES}, got {self.mode!r}")
        _int("score_min", self.score_min, -(10**6))
        _int("score_max", self.score_max, -(10**6))
        if self.score_max <= self.score_min:
            raise ValueError(f"score_max: expected > score_min ({self.score_min}), got {self.score_max}")
        _int("retries", self.retries, 0)
        _float("temperature", self.temperature, 0.0)
        _float("retry_temperature", self.retry_temperature, 0.0)
        _int("max_new_tokens", self.max_new_tokens, 1)
        _int("chunk_size", self.chunk_size, 1)


@dataclass
class VPScoreConfig(_Dict):
    """The VP-Score reward model (:class:`~lmops.methods.visionprefer.VPScore`).

    Attributes:
        head_dims: hidden sizes of the MLP head. ImageReward's head (BLIP-large, 768 features) is
            ``(1024, 128, 64, 16)`` then 1; tiny models use smaller sizes.
        head_dropout: dropout after each hidden layer (ImageReward: 0.2, 0.2, 0.1, then none); a
            shorter tuple is padded with 0.
        head_activation: ``None`` (ImageReward's head has no activation between its linears: a linear
            map, faithful to that lineage) or ``"relu"``/``"gelu"`` (a choice for frozen backbones).
        clip_features: the CLIP score input (a choice): ``"concat"`` = [image, text, image * text] of the
            L2-normalized projected embeddings, ``"product"`` = image * text, ``"image"`` = image only.
        finetune: ``"head"`` (frozen backbone), ``"full"``, ``"lora"`` (peft LoRA on the backbone's
            linears) or ``"reslora"`` (:func:`lmops.reslora.apply_reslora`).
        lora_r, lora_alpha, lora_dropout: adapter hyper-parameters.
        lora_targets: module names adapted; empty means the backbone kind's default (attention
            projections: CLIP ``q_proj``/``v_proj``, BLIP ``qkv``/``query``/``value``).
        max_text_length: longest prompt in tokens (truncated beyond).
    """

    head_dims: tuple[int, ...] = (1024, 128, 64, 16)
    head_dropout: tuple[float, ...] = (0.2, 0.2, 0.1, 0.0)
    head_activation: str | None = None
    clip_features: str = "concat"
    finetune: str = "full"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    max_text_length: int = 77

    def __post_init__(self) -> None:
        self.head_dims = tuple(self.head_dims)
        self.head_dropout = tuple(self.head_dropout)
        self.lora_targets = tuple(self.lora_targets)
        for i, d in enumerate(self.head_dims):
            _int(f"head_dims[{i}]", d, 1)
        if len(self.head_dropout) > len(self.head_dims):
            raise ValueError(
                f"head_dropout: expected at most {len(self.head_dims)} values (one per hidden layer), "
                f"got {len(self.head_dropout)}"
            )
        for i, p in enumerate(self.head_dropout):
            _float(f"head_dropout[{i}]", p, 0.0, 1.0, open_high=True)
        if self.head_activation not in (None, "relu", "gelu"):
            raise ValueError(f"head_activation: expected None, 'relu' or 'gelu', got {self.head_activation!r}")
        if self.clip_features not in ("concat", "product", "image"):
            raise ValueError(f"clip_features: expected 'concat', 'product' or 'image', got {self.clip_features!r}")
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune: expected one of {FINETUNE_MODES}, got {self.finetune!r}")
        _int("lora_r", self.lora_r, 1)
        _float("lora_alpha", self.lora_alpha, 0.0, open_low=True)
        _float("lora_dropout", self.lora_dropout, 0.0, 1.0, open_high=True)
        if not all(isinstance(t, str) and t for t in self.lora_targets):
            raise ValueError(f"lora_targets: expected module names, got {self.lora_targets!r}")
        _int("max_text_length", self.max_text_length, 1)


@dataclass
class TrainScoreConfig(_Dict):
    """Training VP-Score with the pairwise Bradley-Terry loss (:func:`~lmops.methods.visionprefer.train_vp_score`).

    Attributes:
        epochs: passes over the training pairs.
        batch_size: pairs per optimizer step.
        lr: AdamW learning rate of the backbone's trainable parameters (full fine-tuning or adapters).
        head_lr: learning rate of the MLP head (``None``: ``lr``).
        weight_decay: AdamW weight decay.
        grad_clip: clip the gradient norm to this (0: no clipping).
        schedule: ``"constant"`` or ``"cosine"`` (decay to 0 over training after ``warmup`` steps' linear
            warm-up; ImageReward's recipe uses a cosine schedule).
        warmup: the share of the steps spent warming up (cosine only).
        seed: pair shuffling, dropout and the held-out split.
        calibrate: after training, standardize scores to mean 0 and std 1 over the training images
            (ImageReward's habit).
        progress: show a progress bar.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-5
    head_lr: float | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: str = "constant"
    warmup: float = 0.05
    seed: int = 0
    calibrate: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _float("lr", self.lr, 0.0, open_low=True)
        if self.head_lr is not None:
            _float("head_lr", self.head_lr, 0.0, open_low=True)
        _float("weight_decay", self.weight_decay, 0.0)
        _float("grad_clip", self.grad_clip, 0.0)
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        _float("warmup", self.warmup, 0.0, 1.0, open_high=True)
        _int("seed", self.seed, 0)
        _bool("calibrate", self.calibrate)
        _bool("progress", self.progress)


@dataclass
class SamplerConfig(_Dict):
    """The DDIM sampler used by the alignment methods (:func:`~lmops.methods.visionprefer.sample`).

    Attributes:
        num_steps: DDIM steps per image.
        eta: DDIM stochasticity (0: deterministic DDIM; 1: DDPM-like). PPO needs ``eta > 0`` (the
            transitions must be Gaussians with a density); DDPO uses 1.0.
        guidance_scale: classifier-free guidance (1.0: none, the unconditional pass is skipped).
    """

    num_steps: int = 10
    eta: float = 1.0
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        _int("num_steps", self.num_steps, 1)
        _float("eta", self.eta, 0.0)
        _float("guidance_scale", self.guidance_scale, 0.0)


@dataclass
class ReFLConfig(_Dict):
    """ReFL-style reward-gradient fine-tuning (ImageReward, Xu et al. 2023).

    Attributes:
        steps: optimizer steps.
        batch_size: prompts (one image each) per step.
        lr: AdamW learning rate.
        grad_steps: the step with gradient is drawn uniformly from the last ``grad_steps`` of the
            ``sampler.num_steps`` (ImageReward: a step in [30, 40) of 40 for SD, i.e. the last quarter).
        reward_scale: the loss is ``-reward_scale * mean(reward)`` (ImageReward: ``ReLU(2 - r) * 1e-3``;
            the plain negative reward is the issue's form, a choice).
        pretrain_weight: weight of the denoising (pretraining) loss on given images, a regularizer
            (ReFL alternates it with the reward loss; here they are summed: a choice).
        grad_clip: clip the gradient norm (0: none).
        seed: sampling and the step draws.
    """

    steps: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    grad_steps: int = 3
    reward_scale: float = 1.0
    pretrain_weight: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(eta=0.0))

    def __post_init__(self) -> None:
        _int("steps", self.steps, 1)
        _int("batch_size", self.batch_size, 1)
        _float("lr", self.lr, 0.0, open_low=True)
        _int("grad_steps", self.grad_steps, 1)
        _float("reward_scale", self.reward_scale, 0.0, open_low=True)
        _float("pretrain_weight", self.pretrain_weight, 0.0)
        _float("grad_clip", self.grad_clip, 0.0)
        _int("seed", self.seed, 0)
        if isinstance(self.sampler, dict):
            self.sampler = SamplerConfig.from_dict(self.sampler)
        if self.grad_steps > self.sampler.num_steps:
            raise ValueError(
                f"grad_steps: expected <= sampler.num_steps ({self.sampler.num_steps}), got {self.grad_steps}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["sampler"] = self.sampler.to_dict()
        return out


@dataclass
class DPOConfig(_Dict):
    """Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908) on preference pairs.

    Attributes:
        steps: optimizer steps.
        batch_size: pairs per step.
        lr: AdamW learning rate (official SD1.5 run: 1e-8 with 2048 pairs/step; tiny models need far more).
        beta: the KL strength ``beta_dpo`` (official SD1.5 default: 5000). The loss is
            ``-log sigmoid(-beta/2 * (model_diff - ref_diff))`` as in the official code, whose ``beta/2``
            absorbs the paper's ``T * omega(lambda_t)``.
        grad_clip: clip the gradient norm (0: none).
        seed: timesteps and noise.
    """

    steps: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    beta: float = 5000.0
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _int("steps", self.steps, 1)
        _int("batch_size", self.batch_size, 1)
        _float("lr", self.lr, 0.0, open_low=True)
        _float("beta", self.beta, 0.0, open_low=True)
        _float("grad_clip", self.grad_clip, 0.0)
        _int("seed", self.seed, 0)


@dataclass
class PPOConfig(_Dict):
    """PPO-style policy-gradient fine-tuning (DDPO, Black et al. 2023, arXiv 2305.13301).

    Attributes:
        epochs: sampling rounds (each samples ``batch_size * batches_per_epoch`` trajectories).
        batch_size: trajectories per sampling batch and per training minibatch.
        batches_per_epoch: sampling batches per round.
        inner_epochs: passes over a round's samples (DDPO: 1).
        lr: AdamW learning rate (DDPO: 3e-4 with LoRA).
        clip_range: PPO ratio clip (DDPO: 1e-4).
        adv_clip_max: advantages are clipped to ``[-adv_clip_max, adv_clip_max]`` (DDPO: 5).
        advantages: ``"batch"`` (reward normalized over the round's samples, the issue's rule) or
            ``"prompt"`` (per prompt, DDPO's per-prompt stat tracking, falling back to the round's
            statistics for a prompt seen fewer than ``min_prompt_count`` times).
        min_prompt_count: see ``advantages``.
        timestep_fraction: share of the sampler's steps trained on per trajectory (DDPO: 1.0).
        grad_clip: clip the gradient norm (0: none).
        seed: sampling and shuffles.
    """

    epochs: int = 4
    batch_size: int = 8
    batches_per_epoch: int = 1
    inner_epochs: int = 1
    lr: float = 3e-4
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    advantages: str = "batch"
    min_prompt_count: int = 4
    timestep_fraction: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "batches_per_epoch", "inner_epochs", "min_prompt_count"):
            _int(name, getattr(self, name), 1)
        _float("lr", self.lr, 0.0, open_low=True)
        _float("clip_range", self.clip_range, 0.0, open_low=True)
        _float("adv_clip_max", self.adv_clip_max, 0.0, open_low=True)
        if self.advantages not in ADVANTAGE_MODES:
            raise ValueError(f"advantages: expected one of {ADVANTAGE_MODES}, got {self.advantages!r}")
        _float("timestep_fraction", self.timestep_fraction, 0.0, 1.0, open_low=True)
        _float("grad_clip", self.grad_clip, 0.0)
        _int("seed", self.seed, 0)
        if isinstance(self.sampler, dict):
            self.sampler = SamplerConfig.from_dict(self.sampler)
        if self.sampler.eta <= 0:
            raise ValueError(f"sampler.eta: PPO needs stochastic transitions (eta > 0), got {self.sampler.eta!r}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["sampler"] = self.sampler.to_dict()
        return out
