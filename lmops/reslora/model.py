"""ResLoRA on a whole model (Shi et al., arXiv 2402.18039): wrap, count, save/load, merge, unload.

The layer and its formulas are :class:`lmops.reslora.ResLoRALinear`. Here a model's target
linears are swapped in place for ``ResLoRALinear`` (no transformers class is patched) and the same
target module of consecutive blocks is chained in block order: ``model.layers.0.self_attn.q_proj`` ->
``model.layers.1.self_attn.q_proj`` -> ... (the chain key is the module name with its first integer
component -- the block index -- replaced by ``*``; T5-like encoder and decoder stacks make separate
chains). Every conversion has an inverse: :func:`unload` gives back the original model (weights
bit-identical, ``requires_grad`` flags restored), :func:`merge_and_unload` gives back plain base linears
holding the merged weights (peft's semantics: nothing extra is left at inference).

Follows peft's conventions (``tuners/lora/layer.py``, ``tuners_utils.py``, ``peft_model.py``):
``target_modules`` names match a module's full name or its dotted suffix (and, beyond peft, any run of
whole name components: ``"self_attn"``, ``"layers.0"``; :func:`lmops.common.targets.match_target`);
adapters are ``lora_A``/``lora_B``; ``print_trainable_parameters`` prints the same line as peft.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

from torch import nn

from ..bitnet.layer import BitLinear
from ..common.params import freeze, restore_requires_grad
from ..common.targets import match_target
from .layer import ResLoRALinear, check_reslora_args

__all__ = [
    "ResLoRAConfig",
    "apply_reslora",
    "reslora_layers",
    "trainable_parameters",
    "print_trainable_parameters",
    "merge_and_unload",
    "unload",
]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "lmops-reslora"
_STATE = "_lmops_reslora"  # attribute on the model: config, chains, requires_grad flags before apply
_MUST_MATCH = ("structure", "r", "alpha", "pre_num", "target_modules")


@dataclass(frozen=True)
class ResLoRAConfig:
    """ResLoRA hyper-parameters (validated on construction); see :func:`apply_reslora`."""

    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    structure: str = "is"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    pre_num: int | None = 1
    merge_estimator: str = "bi"
    window: int = 100

    def __post_init__(self) -> None:
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else self.target_modules
        targets = tuple(targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"target_modules: expected a non-empty list of module names, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", targets)
        check_reslora_args(
            self.r, self.alpha, self.dropout, self.structure, self.pre_num, self.merge_estimator, self.window
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ResLoRAConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: (tuple(v) if k == "target_modules" else v) for k, v in d.items() if k in known})


@dataclass
class _State:
    config: ResLoRAConfig
    chains: list[list[str]]
    requires_grad: dict[str, bool] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
def _chain_key(name: str) -> tuple[str, int]:
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i] + ["*"] + parts[i + 1 :]), int(p)
    return name, 0


def _checkpointing(model: nn.Module) -> bool:
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # the first is transformers 5
        if isinstance(getattr(type(model), attr, None), property):
            return bool(getattr(model, attr))
    return False


def _state(model: nn.Module) -> _State:
    st = model.__dict__.get(_STATE)
    if st is None:
        raise ValueError("model: no ResLoRA adapters on it (call lmops.reslora.apply_reslora first)")
    return st


def reslora_layers(model: nn.Module) -> dict[str, ResLoRALinear]:
    """``{module name: ResLoRALinear}`` in chain order (head of each chain first)."""
    st = _state(model)
    return {n: model.get_submodule(n) for chain in st.chains for n in chain}


def apply_reslora(
    model: nn.Module,
    target_modules: Iterable[str] | str = ("q_proj", "v_proj"),
    structure: str = "is",
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    pre_num: int | None = 1,
    merge_estimator: str = "bi",
    window: int = 100,
) -> nn.Module:
    """Wrap ``model``'s target linears in ResLoRA adapters, in place; returns ``model``.

    Every parameter of the model is frozen (the flags are remembered for :func:`unload`) and only
    ``lora_A``/``lora_B`` train. ``target_modules`` are names of ``nn.Linear``/``BitLinear`` modules,
    matched on whole dotted name components (:func:`lmops.common.targets.match_target`): the full name
    or a dotted suffix as in peft (``"q_proj"``, ``"self_attn.q_proj"``), or any run of components
    (``"self_attn"``: every attention linear; ``"layers.0"``: layer 0's, not layer 10's). The
    same target in consecutive blocks is chained in block order (see the module docstring).

    Raises ``ValueError`` for a target that matches no linear (listing the available names), bad
    hyper-parameters (``r <= 0``, ``pre_num < 0``, unknown structure/estimator), a model that already
    has ResLoRA adapters, or gradient checkpointing with is/ms.
    """
    cfg = ResLoRAConfig(tuple([target_modules] if isinstance(target_modules, str) else target_modules),
                        structure, r, alpha, dropout, pre_num, merge_estimator, window)
    if _STATE in model.__dict__ or any(isinstance(m, ResLoRALinear) for m in model.modules()):
        raise ValueError("model: ResLoRA adapters are already applied; unload() or merge_and_unload() first")
    if structure in ("is", "ms") and _checkpointing(model):
        raise ValueError(
            f"structure={structure!r}: gradient checkpointing re-runs single blocks, which breaks the "
            "cross-block shortcut caches; disable it (or use 'bs' / 'none')"
        )
    linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, BitLinear)) and n]
    chosen: list[str] = []
    for t in cfg.target_modules:
        hits = [n for n in linears if match_target(n, t, argument="target_modules") is not None]
        if not hits:
            short = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ValueError(
                f"target_modules: {t!r} matches no nn.Linear/BitLinear of the model; available linear names: {short}"
            )
        chosen += [n for n in hits if n not in chosen]

    groups: dict[str, list[tuple[int, str]]] = {}
    for n in chosen:
        key, idx = _chain_key(n)
        groups.setdefault(key, []).append((idx, n))
    chains = [[n for _, n in sorted(g)] for g in groups.values()]

    st = _State(cfg, chains, freeze(model))
    for chain in chains:
        prev = None
        for n in chain:
            base = model.get_submodule(n)
            layer = ResLoRALinear(base, r, alpha, dropout, structure, pre_num, merge_estimator, window)
            layer.train(base.training)  # a model in eval mode stays in eval mode
            model.set_submodule(n, layer)
            layer.link(prev)
            prev = layer
    model.__dict__[_STATE] = st  # a plain attribute: not a module, not in state_dict
    return model


# --------------------------------------------------------------------------------------------------
def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, as peft's ``get_nb_trainable_parameters``; a packed
    BitLinear's ternary weights (a buffer) count as ``out * in`` parameters."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    for m in model.modules():
        if isinstance(m, BitLinear) and m.is_packed:
            total += m.in_features * m.out_features
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    """Print ``trainable params: X || all params: Y || trainable%: Z`` (peft's line)."""
    trainable, total = trainable_parameters(model)
    pct = 100 * trainable / total if total else 0.0
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}")


# --------------------------------------------------------------------------------------------------
def _remove(model: nn.Module, st: _State) -> nn.Module:
    for chain in st.chains:
        for name in chain:
            layer = model.get_submodule(name)
            layer._clear_chain_caches()
            layer.link(None)
            model.set_submodule(name, layer.base_layer)
    restore_requires_grad(model, st.requires_grad)
    del model.__dict__[_STATE]
    return model


def merge_and_unload(model: nn.Module, estimator: str | None = None, *, safe_merge: bool = False) -> nn.Module:
    """Merge every ResLoRA layer (head of each chain first, so ``"bw"`` sees the merged predecessors)
    into its base weight and put the plain base linears back; returns ``model`` (as peft's
    ``merge_and_unload``: no wrapper, hook or extra parameter is left, so inference costs nothing extra).
    ``estimator`` (``"bi"``/``"bw"``) overrides the configured one for is/ms."""
    st = _state(model)
    layers = reslora_layers(model)
    for layer in layers.values():  # fail before changing anything (packed bases, missing norm windows)
        if not layer.merged:
            layer.check_mergeable(estimator)
    ctx: dict = {}  # merged-weight norms, computed once per layer for "bw"
    for layer in layers.values():  # chain order
        layer.merge(estimator, safe_merge, keep_original=False, ctx=ctx)
    return _remove(model, st)


def unload(model: nn.Module) -> nn.Module:
    """Drop the adapters without merging (merged layers are unmerged first): the original model back."""
    st = _state(model)
    for layer in reslora_layers(model).values():
        layer.unmerge()
    return _remove(model, st)
