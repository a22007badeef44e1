"""MoLE at the model level: wrap a model's linears in :class:`~lmops.mole.MoLELinear`, train
the gates with the balancing loss, mask experts at inference, and undo it.

Mixture of LoRA Experts (Wu, Huang, Wei, ICLR 2024, arXiv 2404.13628). Typical use::

    model = apply_mole(model, {"sql": {...}, "poem": {...}}, granularity="block")   # or mole_from_peft
    opt = torch.optim.AdamW(gate_parameters(model), lr=1e-4)
    loss = model(**batch).loss + 0.5 * balancing_loss(model)                       # paper: alpha = 0.5
    mask_experts(model, keep=["sql"])                                               # no retraining

Gate granularity (the paper's Table 9 ablation; the strategies of :data:`GRANULARITIES`):
``"matrix"`` one gate per adapted linear; ``"layer"`` one per sub-layer (the attention's linears share
one, the MLP's another); ``"block"`` one per decoder block (the paper's best, the default);
``"network"`` one for the whole model. In a shared group, the first member in module order (its
*leader*: ``q_proj`` in a Llama block) computes the gates from its own input/experts; the others
reuse them in the same forward. This is lmops's choice: the paper's block-level expert output would
need N full block evaluations. A forward pre-hook on the model clears every group's gates, so the
reuse is keyed to one forward call (batching, variable lengths and ``generate`` with a KV cache work:
gates are per token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..common.params import freeze, restore_requires_grad
from ..common.targets import match_target
from .layer import GATE_INPUTS, NORMS, GateGroup, MoLEGate, MoLELinear, check_expert, linear_features

__all__ = [
    "GRANULARITIES",
    "apply_mole",
    "balancing_loss",
    "gate_parameters",
    "mask_experts",
    "mole_layers",
    "unload_mole",
]

ExpertSpec = tuple  # (A (r, in), B (out, r), scaling)


# ----------------------------------------------------------------------------------------------
# granularities (one table)
# ----------------------------------------------------------------------------------------------


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _block_of(model: nn.Module, name: str) -> str | None:
    """The outermost ``<ModuleList>.<index>`` prefix of ``name`` (``model.layers.3``), or None."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if parts[i].isdigit():
            parent = model.get_submodule(".".join(parts[:i]))
            if isinstance(parent, (nn.ModuleList, nn.Sequential)):
                return ".".join(parts[: i + 1])
    return None


@dataclass(frozen=True)
class Granularity:
    """How adapted linears are grouped under one gate: ``key(model, module_name) -> group key``."""

    name: str
    key: Callable[[nn.Module, str], str]
    doc: str


GRANULARITIES: dict[str, Granularity] = {
    g.name: g
    for g in (
        Granularity("matrix", lambda m, n: n, "one gate per adapted linear (m-MoLE)"),
        Granularity("layer", lambda m, n: _parent(n) or n,
                    "one gate per sub-layer: the linears of one parent module (self_attn, mlp) share it (l-MoLE)"),
        Granularity("block", lambda m, n: _block_of(m, n) or _parent(n) or n,
                    "one gate per decoder block, the outermost ModuleList entry (b-MoLE, the paper's best)"),
        Granularity("network", lambda m, n: "", "one gate for the whole model (n-MoLE)"),
    )
}


# ----------------------------------------------------------------------------------------------
# apply / unload
# ----------------------------------------------------------------------------------------------


class _MoLEState:
    """What :func:`apply_mole` leaves on the model (``model._lmops_mole``): the groups, the reset hook,
    the parameters' original ``requires_grad``."""

    def __init__(self, groups: list[GateGroup], requires_grad: dict[str, bool]) -> None:
        self.groups = groups
        self.requires_grad = requires_grad
        self.hook = None

    def __call__(self, module, args):  # forward pre-hook: a new forward, new gates
        for g in self.groups:
            g.reset()


def _normalize_experts(experts) -> dict[str, dict[str, ExpertSpec]]:
    if isinstance(experts, Mapping):
        out = dict(experts)
    elif isinstance(experts, (list, tuple)):
        out = {f"expert_{i}": e for i, e in enumerate(experts)}
    else:
        raise TypeError(f"experts: expected {{name: {{module: (A, B, scaling)}}}} or a list, got {type(experts).__name__}")
    if not out:
        raise ValueError("experts: expected at least one expert, got none")
    for name, modules in out.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"experts: expert names must be non-empty strings, got {name!r}")
        if not isinstance(modules, Mapping) or not modules:
            raise ValueError(f"expert {name!r}: expected a non-empty mapping module name -> (A, B, scaling)")
    return out


def apply_mole(
    model: nn.Module,
    experts,
    granularity: str = "block",
    gate_input: str = "experts",
    norm: str = "layernorm",
    target_modules: Sequence[str] | None = None,
    *,
    temperature_init: float = 1.0,
) -> nn.Module:
    """Wrap ``model``'s adapted linears in :class:`MoLELinear`, in place, and freeze all but the gates.

    Args:
        model: any ``nn.Module`` (a transformers causal LM, a stack of ``BitLinear``...).
        experts: ``{expert: {module_name: (A (r, in), B (out, r), scaling)}}``, or a list of
            ``{module_name: (A, B, scaling)}`` (named ``expert_0``, ...). An expert may target any
            subset of modules; a module gets only the experts that target it.
        granularity: ``"matrix" | "layer" | "block" | "network"`` (:data:`GRANULARITIES`).
        gate_input: ``"experts"`` (paper) | ``"hidden"`` (official code).
        norm: ``"layernorm" | "rmsnorm" | "l2"``.
        target_modules: restrict to these modules, matched on whole dotted name components
            (:func:`lmops.common.targets.match_target`: ``"q_proj"``, ``"self_attn"``, ``"layers.0"``,
            full names; not regular expressions); an entry that matches no adapted module is an error.
        temperature_init: initial softmax temperature.
    Returns:
        ``model``, with only gate weights, gate norms and temperatures trainable (see
        :func:`gate_parameters`). Undo with :func:`unload_mole`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: expected one of {list(GRANULARITIES)}, got {granularity!r}")
    if gate_input not in GATE_INPUTS:
        raise ValueError(f"gate_input: expected one of {list(GATE_INPUTS)}, got {gate_input!r}")
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {list(NORMS)}, got {norm!r}")
    if getattr(model, "_lmops_mole", None) is not None or any(isinstance(m, MoLELinear) for m in model.modules()):
        raise ValueError("model: already holds MoLE layers; call lmops.mole.unload_mole(model) first")
    experts = _normalize_experts(experts)

    # validate everything before touching the model
    modules = dict(model.named_modules())
    per_module: dict[str, dict[str, ExpertSpec]] = {}
    for ename, specs in experts.items():
        for mname, spec in specs.items():
            mod = modules.get(mname)
            if mod is None or mname == "":
                raise ValueError(
                    f"expert {ename!r}: unknown target module {mname!r}: the model has no such submodule "
                    f"(linears it has, e.g.: {[n for n, m in modules.items() if hasattr(m, 'in_features')][:4]})"
                )
            try:
                k, o = linear_features(mod)
            except TypeError as e:
                raise ValueError(f"expert {ename!r}: target module {mname!r} is not a linear layer: {e}") from None
            per_module.setdefault(mname, {})[ename] = check_expert(ename, spec, k, o, module=mname)
    if target_modules is not None:
        targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        # each entry on its own: ["q_proj", "self_attn"] uses both even though q_proj matches first
        unused = [t for t in targets if not any(match_target(n, t, argument="target_modules") for n in per_module)]
        if unused:
            raise ValueError(
                f"target_modules: {unused} match none of the adapted modules {sorted(per_module)} "
                "(entries are dotted module names or runs of their components, not regular expressions)"
            )
        per_module = {n: e for n, e in per_module.items() if match_target(n, targets) is not None}

    # groups, in module order (the first member of a group is its leader)
    order = [n for n in modules if n in per_module]
    strategy = GRANULARITIES[granularity]
    keys = {n: strategy.key(model, n) for n in order}
    expert_order = list(experts)
    groups: dict[str, GateGroup] = {}
    for key in dict.fromkeys(keys.values()):
        present = {e for n in order if keys[n] == key for e in per_module[n]}
        groups[key] = GateGroup(key, [e for e in expert_order if e in present], granularity)

    requires_grad = freeze(model)
    for n in order:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        ordered = {e: per_module[n][e] for e in expert_order if e in per_module[n]}
        layer = MoLELinear(
            base, ordered, gate_input=gate_input, norm=norm, temperature_init=temperature_init, gate_group=groups[keys[n]]
        )
        setattr(parent, child, layer)
    state = _MoLEState(list(groups.values()), requires_grad)
    state.hook = model.register_forward_pre_hook(state)
    model._lmops_mole = state
    for p in gate_parameters(model):
        p.requires_grad_(True)
    return model


def unload_mole(model: nn.Module) -> nn.Module:
    """Put every :class:`MoLELinear`'s ``base_layer`` back, remove the reset hook and restore the
    parameters' ``requires_grad`` as they were before :func:`apply_mole`. Returns ``model``.
    (No merge: MoLE's gates depend on the input; :meth:`MoLELinear.get_delta_weight` takes fixed gates.)"""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MoLELinear)]
    if isinstance(model, MoLELinear):
        raise TypeError("model: is a MoLELinear itself; use its .base_layer")
    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    state = getattr(model, "_lmops_mole", None)
    if state is not None:
        state.hook.remove()
        restore_requires_grad(model, state.requires_grad)
        del model._lmops_mole
    return model


# ----------------------------------------------------------------------------------------------
# training and inference helpers
# ----------------------------------------------------------------------------------------------


def mole_layers(model: nn.Module) -> list[MoLELinear]:
    """Every :class:`MoLELinear` in ``model`` (``model`` itself included), in module order."""
    return [m for m in model.modules() if isinstance(m, MoLELinear)]


def _layers_or_error(model: nn.Module) -> list[MoLELinear]:
    layers = mole_layers(model)
    if not layers:
        raise ValueError("model: holds no MoLE layers; call lmops.mole.apply_mole (or mole_from_peft) first")
    return layers


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable MoLE parameters: every gate's ``weight``, ``norm_weight``, ``norm_bias`` and
    ``log_temperature`` (the paper trains only these; experts and base stay frozen)."""
    return [p for m in model.modules() if isinstance(m, MoLEGate) for p in m.parameters()]


def expert_names(model: nn.Module) -> list[str]:
    """All expert names of the model's MoLE layers, in first-seen order."""
    return list(dict.fromkeys(n for m in _layers_or_error(model) for n in m._own_names()))


def mask_experts(model: nn.Module, keep: Iterable[str] | None = None) -> nn.Module:
    """Inference with a subset of the experts (paper Fig. 8): the others get gate 0 and the kept
    gates are renormalized, ``g_i m_i / sum_j g_j m_j``, with no retraining. ``keep=None`` restores
    all. A group none of whose experts is kept adds nothing (the base output). Returns ``model``.

    Raises ``ValueError`` when ``keep`` is empty or names an unknown expert (the message lists them).
    """
    layers = _layers_or_error(model)
    known = expert_names(model)
    if keep is not None:
        keep = [keep] if isinstance(keep, str) else list(keep)
        if not keep:
            raise ValueError(f"keep: masking every expert leaves nothing to mix; keep at least one of {known}")
        unknown = [k for k in keep if k not in known]
        if unknown:
            raise ValueError(f"keep: unknown experts {unknown}; the model's experts are {known}")
        keep = set(keep)
    for layer in layers:
        layer.set_expert_mask(keep)
    return model


def balancing_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The gating balancing loss of the paper (§3.3, Eq. 14-16), on the last forward's gates:

        L_balance = -log prod_i q_i = -sum_i log q_i,   q_i = mean over gated groups and tokens of g_i

    Per expert, the mean runs over the groups that hold it (a module adapted by only some experts).
    Masked experts (gate 0) are left out. Minimal (N log N) when the mean gates are uniform. It is
    differentiable in the gate parameters; the official code builds it from ``.detach()``ed,
    ``.tolist()``ed gate records, so there it trains nothing (a bug this version does not copy).

    Args:
        attention_mask: ``(batch, seq)``; padding tokens (0) are left out of the token mean for
            groups whose gates have that leading shape.
    Returns:
        A scalar float32 tensor. Use ``loss = task_loss + 0.5 * balancing_loss(model)`` (paper alpha).
    """
    sums: dict[str, list[torch.Tensor]] = {}
    for layer in _layers_or_error(model):
        g = layer.gate_group.gates if layer.is_leader and layer.gate is not None else None
        if g is None:
            continue
        flat = g.reshape(-1, g.shape[-1])
        if attention_mask is not None and tuple(attention_mask.shape) == tuple(g.shape[:-1]):
            w = attention_mask.reshape(-1, 1).to(flat.dtype)
            q = (flat * w).sum(0) / w.sum().clamp_min(1)
        else:
            q = flat.mean(0)
        for i, (name, kept) in enumerate(zip(layer.gate_group.expert_names, layer.expert_mask.tolist())):
            if kept:
                sums.setdefault(name, []).append(q[i])
    if not sums:
        raise RuntimeError("balancing_loss: no gates recorded; run a forward pass (with more than one expert) first")
    q = torch.stack([torch.stack(v).mean() for v in sums.values()])
    return -torch.log(q.clamp_min(torch.finfo(q.dtype).tiny)).sum()
