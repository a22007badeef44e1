"""``MoLELinear``: a Mixture of LoRA Experts over a frozen base linear.

MoLE (Wu, Huang, Wei, "Mixture of LoRA Experts", ICLR 2024, arXiv 2404.13628): N trained LoRAs stay
frozen and a learnable gate mixes their outputs:

    E_i(x) = s_i * (x @ A_i^T) @ B_i^T                       (expert output, s_i = alpha_i / r_i)
    logits = norm(E_0(x) ++ ... ++ E_{N-1}(x)) @ W_g^T         (paper Eq. 9-10, "experts" gate input)
    g      = softmax(logits / tau)                              (Eq. 11, learnable tau > 0)
    y      = base(x) + sum_i g_i E_i(x)                         (Eq. 12-13)

Choices of lmops (differences from the paper and from its official code):

- **Per-token gates.** The paper flattens the L x d block output before the projection, so its
  gate matrix has N * L * d * N entries and depends on the sequence length. lmops gates every token
  on its own: the gate matrix is ``(N, N * out_features)`` (or ``(N, in_features)``), batches of
  any length and left padding work, and ``generate`` with a KV cache gives the same tokens as a
  full recomputation (each token's gate depends only on that token). The official code gates per
  sample; X-LoRA gates per token but cannot use a KV cache.
- **Gate input** (the table :data:`GATE_INPUTS`): ``"experts"`` is the paper (concatenated expert
  outputs, through the fused op :func:`lmops_kernels.mole_gate`); ``"hidden"`` is the official code
  (``gate(norm(x))`` on the layer input, which is cheaper: one ``(N, in_features)`` projection).
- **Normalization** (:data:`NORMS`): the paper does not name it; ``"layernorm"`` (default, with a
  learnable weight and bias), ``"rmsnorm"`` or ``"l2"`` (the official code's L2 normalization).
- **Shared gates.** Several layers can share one gate (:class:`GateGroup`; the granularities of
  the paper's ablation are built by :func:`lmops.mole.apply_mole`). The group's *leader* (the first
  layer constructed with the group, which must also be the first of the group to run in a forward)
  owns the gate and computes the gates from its own input/experts; the other members reuse them in
  the same forward. The paper's block-level gate would need N full block evaluations per block.
- **Masking** (paper Fig. 8, "second inference mode"): masked experts get gate 0 and the kept gates
  are renormalized, ``g_i m_i / sum_j g_j m_j``, without retraining.

Storage (``state_dict`` keys): ``base_layer.*``; the frozen experts as stacked buffers, in the layout
the fused op takes, ``lora_A`` ``(N, r, in_features)``, ``lora_B`` ``(N, out_features, r)`` (smaller
ranks zero-padded to the largest ``r``), ``lora_scaling`` ``(N,)`` float32; the gate (leader of a
group with more than one expert) as ``gate.weight`` ``(N_group, D)``, ``gate.norm_weight``,
``gate.norm_bias`` ``(D,)`` and ``gate.log_temperature`` (tau = exp(log_temperature) > 0). Expert
names and ranks are attributes (``expert_names``, ``expert_ranks``); the mask is a non-persistent
buffer. Stacked buffers rather than peft's per-adapter ``lora_A.<name>.weight`` modules, because
the op consumes one stack; :meth:`MoLELinear.expert` gives one expert back. Layers that mix with
given gates (``"hidden"`` gate input, shared-gate members) keep a cached ``(N * r, out)`` copy of
``s_i B_i^T`` (not in the ``state_dict``; rebuilt when ``lora_B`` changes): at decode that layout
streams twice as fast as ``(out, N * r)``.

Cost (float32, 2-core CPU, N=8, r=16, 4096x4096; ``benches/bench_mole_layer.py``): the layer runs
in 1.07-1.09x the base linear's time at 128-512 tokens and 1.08-1.16x at one token (the experts add
6.25% to the bytes and flops of the base), against 1.3-1.9x for a per-expert Python loop. Without
autograd the mixing is added into the base output in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

import lmops_kernels as lk

from ..bitnet.layer import PackedTernaryWeight

__all__ = ["GATE_INPUTS", "NORMS", "GateGroup", "MoLEGate", "MoLELinear", "lora_mix"]

# initial gate logits have about this standard deviation: gates start within ~10% of uniform
_INIT_LOGIT_STD = 0.1


# ----------------------------------------------------------------------------------------------
# normalizations of the gate input (one table)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateNorm:
    """A normalization of the gate input over its last dimension ``D``.

    ``unit_rms``: the normalized vector has entries of rms 1 (so the gate's init scales by 1/sqrt(D));
    otherwise it has norm 1.
    """

    name: str
    has_weight: bool
    has_bias: bool
    unit_rms: bool
    fn: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float], torch.Tensor]

    def __call__(self, z, weight, bias, eps):
        return self.fn(z, weight, bias, eps)


def _layernorm(z, w, b, eps):
    return F.layer_norm(z, (z.shape[-1],), w, b, eps)


def _rmsnorm(z, w, b, eps):
    return F.rms_norm(z, (z.shape[-1],), w, eps)


def _l2(z, w, b, eps):
    return F.normalize(z, dim=-1, eps=eps)


NORMS: dict[str, GateNorm] = {
    n.name: n
    for n in (
        GateNorm("layernorm", True, True, True, _layernorm),  # lmops default: learnable weight and bias
        GateNorm("rmsnorm", True, False, True, _rmsnorm),
        GateNorm("l2", False, False, False, _l2),  # the official code (no learnable parameters)
    )
}


# ----------------------------------------------------------------------------------------------
# the gate, the gate group, the mixing
# ----------------------------------------------------------------------------------------------


class MoLEGate(nn.Module):
    """The learnable gate: ``softmax(norm(z) @ weight^T / tau)`` over ``num_experts``.

    Parameters: ``weight`` ``(num_experts, in_features)`` (normal, std chosen so that the initial
    logits have std ~0.1, i.e. near-uniform gates), ``norm_weight``/``norm_bias`` ``(in_features,)``
    per the norm, ``log_temperature`` (scalar; ``temperature = exp(log_temperature)`` stays > 0).
    """

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        *,
        norm: str = "layernorm",
        temperature_init: float = 1.0,
        eps: float = 1e-5,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {sorted(NORMS)}, got {norm!r}")
        if not isinstance(temperature_init, (int, float)) or not math.isfinite(temperature_init) or temperature_init <= 0:
            raise ValueError(f"temperature_init: expected a finite number > 0, got {temperature_init!r}")
        factory = {"device": device, "dtype": dtype}
        self.norm = NORMS[norm]
        self.in_features, self.num_experts, self.eps = in_features, num_experts, eps
        self.weight = nn.Parameter(torch.empty(num_experts, in_features, **factory))
        self.norm_weight = nn.Parameter(torch.ones(in_features, **factory)) if self.norm.has_weight else None
        self.norm_bias = nn.Parameter(torch.zeros(in_features, **factory)) if self.norm.has_bias else None
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature_init), device=device, dtype=torch.float32))
        std = _INIT_LOGIT_STD / (math.sqrt(in_features) if self.norm.unit_rms else 1.0)
        nn.init.normal_(self.weight, std=std)

    @property
    def temperature(self) -> torch.Tensor:
        """tau > 0, a scalar tensor (differentiable)."""
        return self.log_temperature.exp()

    def forward(self, z: torch.Tensor, expert_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` ``(..., in_features)`` -> gates ``(..., num_experts)`` float32 (masked and renormalized)."""
        logits = F.linear(self.norm(z, self.norm_weight, self.norm_bias, self.eps), self.weight)
        gates = torch.softmax(logits.float() / self.temperature.float(), dim=-1)
        if expert_mask is not None:
            gates = gates * expert_mask
            gates = gates / gates.sum(-1, keepdim=True)
        return gates

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_experts={self.num_experts}, norm={self.norm.name!r}"


class GateGroup:
    """Layers that share one gate (the gates of one forward are computed once, by the leader).

    Not an ``nn.Module``: it holds no parameters (the leader does) and is shared by reference.
    ``gates`` holds the last forward's gates ``(..., N)`` float32 with their graph (for
    :func:`lmops.mole.balancing_loss`); :meth:`reset` clears them (``apply_mole`` calls it from a
    forward pre-hook on the model, so a member that runs before its leader is an error, never a
    silent reuse of the previous forward's gates).
    """

    def __init__(self, key: str, expert_names, granularity: str = "matrix") -> None:
        names = tuple(expert_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"expert_names: expected distinct names, got {names!r}")
        self.key, self.expert_names, self.granularity = key, names, granularity
        self.gates: torch.Tensor | None = None
        self.any_kept = True
        self.has_leader = False

    @property
    def gated(self) -> bool:
        """False for a single-expert group (its gate is 1)."""
        return len(self.expert_names) > 1

    def reset(self) -> None:
        self.gates = None

    def gates_for(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gates
        if g is None:
            raise RuntimeError(
                f"MoLE gate group {self.key!r} ({self.granularity}): no gates were computed in this forward; "
                "the group's leader (its first layer in module order) must run before the other members"
            )
        if g.shape[:-1] != x.shape[:-1]:
            raise RuntimeError(
                f"MoLE gate group {self.key!r}: the leader's gates are for tokens {tuple(g.shape[:-1])} but this "
                f"layer's input is {tuple(x.shape)}; all members of a group must see the same tokens"
            )
        return g

    def __repr__(self) -> str:
        return f"GateGroup(key={self.key!r}, granularity={self.granularity!r}, experts={list(self.expert_names)})"


def lora_mix(
    x: torch.Tensor, a_flat: torch.Tensor, wy: torch.Tensor, coef: torch.Tensor | None, rank: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_i coef_i * (x @ A_i^T) @ B_i^T`` as two GEMMs over the stacked experts.

    Args:
        x: ``(..., K)``; a_flat: ``(N * r, K)`` (the ``A_i`` stacked); wy: ``(N * r, O)`` (the
            ``B_i^T`` stacked: this layout streams twice as fast as ``(O, N * r)`` at decode);
        coef: ``(N,)`` or ``(..., N)`` (the gates, times anything not folded into ``wy``), or None
            (all 1); rank: r.
        out: ``(..., O)`` contiguous, or None; when given the result is added to it in place (not
            for autograd).
    Returns:
        ``(..., O)`` in x's dtype (``out`` when given).
    """
    h = F.linear(x, a_flat)
    if coef is not None:
        h = (h.unflatten(-1, (-1, rank)) * coef.to(h.dtype).unsqueeze(-1)).flatten(-2)
    if out is None:
        return h @ wy
    out.view(-1, out.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), wy)
    return out


def _writable(y: torch.Tensor, *others: torch.Tensor) -> bool:
    """May ``y`` (a fresh base output) be updated in place? Only where autograd is not involved."""
    needs_grad = torch.is_grad_enabled() and (y.requires_grad or any(t.requires_grad for t in others))
    return not needs_grad and y.is_contiguous() and all(t.dtype == y.dtype for t in others)


# ----------------------------------------------------------------------------------------------
# gate inputs (one table)
# ----------------------------------------------------------------------------------------------


def _mole_gate_op():
    op = getattr(lk, "mole_gate", None)
    if op is None:
        raise RuntimeError(
            "MoLELinear(gate_input='experts') needs lmops_kernels.mole_gate, which this lmops_kernels lacks; "
            "use gate_input='hidden' or update lmops"
        )
    return op


def _experts_gate(layer: "MoLELinear", x: torch.Tensor, mask: torch.Tensor | None):
    gate = layer.gate
    lead = x.shape[:-1]
    y, gates = _mole_gate_op()(
        x.reshape(-1, x.shape[-1]),
        layer.lora_A,
        layer.lora_B,
        layer.lora_scaling.float(),
        gate.weight,
        gate.norm_weight,
        gate.norm_bias,
        gate.temperature,
        mask,
        norm=gate.norm.name,
        eps=gate.eps,
    )
    return y.reshape(*lead, y.shape[-1]), gates.reshape(*lead, gates.shape[-1])


def _hidden_gate(layer: "MoLELinear", x: torch.Tensor, mask: torch.Tensor | None):
    gates = layer.gate(x, mask)
    return layer.mix(x, gates), gates


@dataclass(frozen=True)
class GateInput:
    """What the gate looks at. ``features(in, out, n)``: the gate's input width; ``covers_group``:
    the leader's expert stack must hold every expert of its group (absent ones zero-padded);
    ``compute(layer, x, mask) -> (delta, gates)``."""

    name: str
    features: Callable[[int, int, int], int]
    covers_group: bool
    compute: Callable
    doc: str


GATE_INPUTS: dict[str, GateInput] = {
    g.name: g
    for g in (
        GateInput("experts", lambda k, o, n: n * o, True, _experts_gate,
                  "the paper: norm(concat_i E_i(x)) @ W_g^T, fused in lmops_kernels.mole_gate"),
        GateInput("hidden", lambda k, o, n: k, False, _hidden_gate,
                  "the official code: norm(x) @ W_g^T on the layer input"),
    )
}


# ----------------------------------------------------------------------------------------------
# the layer
# ----------------------------------------------------------------------------------------------


def linear_features(base_layer: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear-like module, else ``TypeError``."""
    k, o = getattr(base_layer, "in_features", None), getattr(base_layer, "out_features", None)
    if not isinstance(base_layer, nn.Module) or not isinstance(k, int) or not isinstance(o, int):
        raise TypeError(
            f"base_layer: expected a linear module with int in_features/out_features (nn.Linear, BitLinear), "
            f"got {type(base_layer).__name__}"
        )
    return k, o


def _base_factory(base_layer: nn.Module, fallback: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    w = getattr(base_layer, "weight", None)
    if isinstance(w, PackedTernaryWeight):  # packed BitLinear: 2-bit weights; the experts keep A's dtype
        return w.device, fallback.dtype
    if isinstance(w, torch.Tensor) and w.dtype.is_floating_point:
        return w.device, w.dtype
    for t in base_layer.buffers():  # a base without a weight
        return t.device, fallback.dtype
    return fallback.device, fallback.dtype


def check_expert(
    name: str, spec, in_features: int, out_features: int, module: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Validate one expert ``(A (r, in), B (out, r), scaling)``; returns it with ``scaling`` a float."""
    where = f"expert {name!r}" + (f", module {module!r}" if module else "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"expert names: expected non-empty strings, got {name!r}")
    if not isinstance(spec, (tuple, list)) or len(spec) != 3:
        raise TypeError(f"{where}: expected a tuple (lora_A, lora_B, scaling), got {type(spec).__name__}")
    a, b, s = spec
    for n, t in (("lora_A", a), ("lora_B", b)):
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point or t.dim() != 2:
            raise TypeError(f"{where}: {n} must be a 2-D floating tensor, got {getattr(t, 'shape', type(t).__name__)}")
    r = a.shape[0]
    if r < 1 or b.shape[1] < 1:
        raise ValueError(f"{where}: rank 0 expert (lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}); drop it instead")
    if a.shape[1] != in_features or b.shape != (out_features, r):
        raise ValueError(
            f"{where}: shapes lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} do not fit the layer: expected "
            f"lora_A (r, {in_features}) and lora_B ({out_features}, r)"
        )
    s = float(s.item() if isinstance(s, torch.Tensor) else s)
    if not math.isfinite(s):
        raise ValueError(f"{where}: scaling must be finite, got {s}")
    return a, b, s


class MoLELinear(nn.Module):
    """A frozen base linear plus N frozen LoRA experts mixed by a learnable, per-token gate.

    Args:
        base_layer: ``nn.Linear`` or ``BitLinear`` (packed or not), or any module with
            ``in_features``/``out_features`` that maps ``(..., in) -> (..., out)``.
        experts: ``{name: (A (r_i, in), B (out, r_i), scaling_i)}``, ranks may differ (zero-padded).
        gate_input: ``"experts"`` (the paper) or ``"hidden"`` (the official code), see :data:`GATE_INPUTS`.
        norm: ``"layernorm"`` | ``"rmsnorm"`` | ``"l2"`` (:data:`NORMS`).
        temperature_init: initial softmax temperature (> 0).
        gate_group: a :class:`GateGroup` to share a gate with other layers; None: a gate of its own.
            Its ``expert_names`` must include every name of ``experts`` and set the gate's order.
        eps: normalization epsilon.

    Shapes: ``x`` ``(..., in_features)`` -> ``(..., out_features)``; ``last_gates`` ``(..., N_group)``.
    The experts take ``x``'s device; their dtype is the base weight's (else ``A``'s).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        experts: Mapping[str, tuple],
        *,
        gate_input: str = "experts",
        norm: str = "layernorm",
        temperature_init: float = 1.0,
        gate_group: GateGroup | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        k, o = linear_features(base_layer)
        if gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input: expected one of {sorted(GATE_INPUTS)}, got {gate_input!r}")
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {sorted(NORMS)}, got {norm!r}")
        if not isinstance(experts, Mapping) or not experts:
            raise ValueError(f"experts: expected a non-empty mapping name -> (A, B, scaling), got {experts!r:.80}")
        checked = {n: check_expert(n, spec, k, o) for n, spec in experts.items()}
        group = gate_group if gate_group is not None else GateGroup("", checked)
        unknown = [n for n in checked if n not in group.expert_names]
        if unknown:
            raise ValueError(f"experts {unknown} are not in gate_group.expert_names {list(group.expert_names)}")
        self.base_layer = base_layer
        self.in_features, self.out_features = k, o
        self.gate_group = group
        self.gate_input = GATE_INPUTS[gate_input]
        self.is_leader = not group.has_leader
        group.has_leader = True

        # expert order: the group's; the leader of an "experts" gate holds every expert of the group
        pad = self.is_leader and group.gated and self.gate_input.covers_group
        names = [n for n in group.expert_names if pad or n in checked]
        device, dtype = _base_factory(base_layer, next(iter(checked.values()))[0])
        r = max(a.shape[0] for a, _, _ in checked.values())
        a_stack = torch.zeros(len(names), r, k, device=device, dtype=dtype)
        b_stack = torch.zeros(len(names), o, r, device=device, dtype=dtype)
        scaling = torch.zeros(len(names), device=device, dtype=torch.float32)
        ranks = []
        for i, n in enumerate(names):
            if n not in checked:
                ranks.append(0)  # absent from this layer: E_n = 0 here
                continue
            a, b, s = checked[n]
            a_stack[i, : a.shape[0]] = a.detach()
            b_stack[i, :, : a.shape[0]] = b.detach()
            scaling[i] = s
            ranks.append(a.shape[0])
        self.expert_names, self.expert_ranks, self.rank = tuple(names), tuple(ranks), r
        self.register_buffer("lora_A", a_stack)
        self.register_buffer("lora_B", b_stack)
        self.register_buffer("lora_scaling", scaling)
        slots = [group.expert_names.index(n) for n in names]
        self._identity_slots = slots == list(range(len(group.expert_names)))
        self.register_buffer("gate_slots", torch.tensor(slots, device=device), persistent=False)
        self._any_kept = self._all_kept = True
        self._wy_cache: tuple | None = None
        if self.is_leader and group.gated:
            n_g = len(group.expert_names)
            self.gate = MoLEGate(
                self.gate_input.features(k, o, n_g), n_g, norm=norm, temperature_init=temperature_init,
                eps=eps, device=device, dtype=dtype,
            )
            self.register_buffer("expert_mask", torch.ones(n_g, dtype=torch.bool, device=device), persistent=False)
        else:
            self.gate = None
            self.register_buffer("expert_mask", None, persistent=False)
        self.norm_name = norm

    # ------------------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (for code that reads ``module.weight``, as with peft's layers): an
        ``nn.Parameter``, or a read-only :class:`~lmops.bitnet.layer.PackedTernaryWeight` over a packed
        BitLinear."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    @property
    def last_gates(self) -> torch.Tensor | None:
        """The gates of the group's last forward, ``(..., N_group)`` float32 (graph kept), or None."""
        return self.gate_group.gates

    def expert(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(A (r, in), B (out, r), scaling)`` of one expert (views of the stacks)."""
        i = self.expert_names.index(name) if name in self.expert_names else -1
        if i < 0 or self.expert_ranks[i] == 0:
            raise KeyError(f"expert {name!r} is not in this layer (it has {list(self._own_names())})")
        r = self.expert_ranks[i]
        return self.lora_A[i, :r], self.lora_B[i, :, :r], float(self.lora_scaling[i])

    def _own_names(self):
        return [n for n, r in zip(self.expert_names, self.expert_ranks) if r > 0]

    def get_delta_weight(self, gates: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i g_i s_i B_i A_i`` ``(out, in)`` for fixed gates ``(N_group,)`` (default: 1 each).
        MoLE's gates depend on the input, so a merge is exact only for constant gates."""
        coef = self.lora_scaling.to(self.lora_A.dtype)
        if gates is not None:
            coef = coef * gates.to(coef)[self.gate_slots]
        return torch.einsum("n,nor,nrk->ok", coef, self.lora_B, self.lora_A)

    def set_expert_mask(self, keep: set[str] | None) -> None:
        """Keep only the experts named in ``keep`` (None: all); the model-level
        :func:`lmops.mole.mask_experts` validates names. A group with none kept adds nothing."""
        own = self._own_names()
        self._any_kept = keep is None or any(n in keep for n in own)
        if self.is_leader:
            names = self.gate_group.expert_names
            self.gate_group.any_kept = keep is None or any(n in keep for n in names)
            if self.expert_mask is not None:
                flags = [keep is None or n in keep for n in names]
                self._all_kept = all(flags)
                self.expert_mask.copy_(torch.tensor(flags))

    # ------------------------------------------------------------------------------------------
    def _wy(self) -> torch.Tensor:
        """``s_i B_i^T`` stacked, ``(N * r, out)``, cached while ``lora_B``/``lora_scaling`` are unchanged."""
        b, s = self.lora_B, self.lora_scaling
        key = (b.data_ptr(), b._version, s.data_ptr(), s._version, b.device, b.dtype)
        if self._wy_cache is None or self._wy_cache[0] != key:
            with torch.no_grad():
                scaled = b * s.to(b.dtype).view(-1, 1, 1)
                self._wy_cache = (key, scaled.transpose(1, 2).reshape(-1, self.out_features).contiguous())
        return self._wy_cache[1]

    def _a_flat(self) -> torch.Tensor:
        a = self.lora_A
        return a.view(-1, a.shape[-1]) if a.is_contiguous() else a.flatten(0, 1)

    def mix(self, x: torch.Tensor, gates: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i g_i E_i(x)`` over this layer's experts; ``gates`` ``(..., N_group)`` or None (all 1).
        With ``out``, the sum is added to it in place (see :func:`lora_mix`)."""
        if gates is not None and not self._identity_slots:
            gates = gates.index_select(-1, self.gate_slots)
        return lora_mix(x, self._a_flat(), self._wy(), gates, self.rank, out=out)

    def _add_mix(self, y: torch.Tensor, x: torch.Tensor, gates: torch.Tensor | None) -> torch.Tensor:
        if _writable(y, x) and (gates is None or not gates.requires_grad):
            return self.mix(x, gates, out=y)
        return y + self.mix(x, gates).to(y.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x: dtype {x.dtype} differs from the experts' {self.lora_A.dtype}; convert the model "
                f"(model.to({x.dtype})) or the input"
            )
        y = self.base_layer(x)
        group = self.gate_group
        if self.is_leader:
            group.gates = None
            if not group.any_kept:
                return y
            if self.gate is None:  # one expert: gate = 1
                return self._add_mix(y, x, None)
            mask = None if self._all_kept else self.expert_mask
            delta, gates = self.gate_input.compute(self, x, mask)
            group.gates = gates
            return y.add_(delta) if _writable(y, delta) else y + delta.to(y.dtype)
        if not self._any_kept:
            return y
        return self._add_mix(y, x, group.gates_for(x) if group.gated else None)

    def extra_repr(self) -> str:
        own = self._own_names()
        ranks = {n: r for n, r in zip(self.expert_names, self.expert_ranks) if r > 0}
        rank = f"rank={self.rank}" if len(set(ranks.values())) == 1 else f"ranks={ranks}"
        g = self.gate_group
        role = "leader" if self.is_leader else "follower"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, experts={own}, {rank}, "
            f"gate_input={self.gate_input.name!r}, norm={self.norm_name!r}, granularity={g.granularity!r}, "
            f"group={g.key!r} ({role})"
        )
