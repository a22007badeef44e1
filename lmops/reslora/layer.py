"""``ResLoRALinear``: LoRA with residual paths between the adapters of consecutive blocks (ResLoRA,
Shi et al., arXiv 2402.18039; official code microsoft/LMOps/reslora, read at daeffce5/e676fc9d).

Layer ``n`` of a chain (the same target module, e.g. ``q_proj``, in consecutive decoder blocks; ``n = 0``
is the head here, the paper counts from 1) computes, with ``s = alpha / r``::

    none (plain LoRA)    h_n = W_n x_n + s B_n A_n x_n
    is (input shortcut)  h_n = W_n x_n + s B_n A_n (x_n + x_{n-1})          x_{-1} := x_0   (paper)
    bs (block shortcut)  h_n = W_n x_n + s (sum_{k=0..m} B_{n-k} A_{n-k}) x_n
    ms (middle shortcut) h_n = W_n x_n + s B_n (sum_{k=0..m} A_{n-k} x_{n-k})

with ``m = min(pre_num, n)`` (``pre_num=None``: all previous layers, the official code's ``-1``). ``is``
uses only ``x_{n-1}`` (as in the paper and the official code, ``pre_num`` does not apply to it). The
previous layers' inputs / A-outputs come from per-forward caches filled by those layers earlier in the
same forward, kept *with* their autograd graph, so the shortcut carries gradient like a residual
connection; ``bs`` calls the previous layers' ``lora_A``/``lora_B`` itself, so they receive gradient
from this layer too (paper, and official code). Dropout (peft's place: on the adapter input) is applied
to ``x_n + x_{n-1}`` (is), ``x_n`` (bs, once, shared by all pairs) and each layer's own ``x`` (ms).

Merging (inference, :meth:`ResLoRALinear.merge`): ``bs`` and ``none`` exactly, ``W*_n = W_n + s sum_k
B_{n-k} A_{n-k}``. ``is`` and ``ms`` approximately, assuming the previous layer's carried quantity is a
multiple ``alpha*`` of this layer's (``W*_n = W_n + (1 + alpha*) s B_n A_n``), ``alpha*`` from Frobenius
norms (paper section 3.3; the official code's ``calculate_froc``/``calculate_alpha``):

- ``"bi"`` (input-based): each layer keeps a window (``window`` most recent *training* forwards) of
  ``f = ||carried||_F`` -- the input ``x_n`` for ``is``, the A-output ``A_n x_n`` for ``ms`` -- and
  ``f_n`` is the window mean. ``is``: ``alpha* = f_{n-1} / f_n``; ``ms``: ``alpha* = sum_{k=1..m}
  f_{n-k} / f_n``.
- ``"bw"`` (weight-based): ``f*_j = ||W*_j||_F``, the norm of layer ``j``'s *merged* weight (merged
  layers keep it; unmerged predecessors are evaluated as if merged, head first, so the result does not
  depend on the merge order). Ratio of inputs ``x_{n-k} ~= r_k x_n`` with ``r_1 = f*_{n-2} / f*_{n-1}``
  (paper) and, for ``ms``, its telescoped product ``r_k = f*_{max(n-k-1, 0)} / f*_{n-1}`` (our
  generalisation); ``is``: ``alpha* = r_1``; ``ms``: ``A*_n = A_n + sum_k r_k A_{n-k}`` and ``W*_n =
  W_n + s B_n A*_n`` (the paper's weight-based ms merge). Layer 1 (no ``f*_{-1}``) uses ``r = 1``, as
  the official code does.
- The head of an ``is`` chain merges exactly with ``alpha* = 1`` (``x_{-1} := x_0``); an ``ms`` head
  or ``pre_num=0`` has no shortcut and merges exactly. A zero norm gives ratio 1 (official code).

Where the official code disagrees, this follows the paper: (a) nothing writes to the frozen base weight
during training or evaluation (the official weight-based statistic does an in-place ``+=`` on the base
weight at every evaluation); merging replaces the base ``weight`` Parameter by ``W + dW`` and keeps the
original Parameter, so :meth:`unmerge` restores it bit-identically; (b) ``merge_bi`` is the input-window
estimator and ``merge_bw`` the weight-norm one, as the README's table and the paper say (the code's
``merge_flag`` 3/4 implement them the other way round for ``is``); (c) ``lora_A`` holds A and
``lora_B`` holds B (the official ``LoraBlock.load_lora`` assigns A's tensor to B); (d) the official
evaluation path applies ``(1 + alpha) B A x`` on the fly, here evaluation is the exact training form
until :meth:`merge` is asked for.

Base layers: ``nn.Linear``, or :class:`~lmops.bitnet.BitLinear` in either mode. A *packed*
BitLinear keeps working with unmerged adapters (its forward is differentiable in the input) but
:meth:`merge` raises (ternary weights cannot absorb a LoRA). On an *unpacked* BitLinear the merge goes
into the latent float weight, which changes its ternary quantization (the merged layer is not the
unmerged one quantized).

Chains are set by :func:`lmops.reslora.apply_reslora` (block order) through :meth:`ResLoRALinear.link`;
the predecessor is a plain attribute, not a submodule, so ``state_dict``/``parameters`` do not recurse.
Caches are overwritten each forward and dropped when the chain's last layer has run. Gradient
checkpointing that re-runs single blocks is not supported for ``is``/``ms`` (the caches cross blocks).
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import nn

from ..bitnet.layer import BitLinear, PackedTernaryWeight

__all__ = ["ResLoRALinear", "STRUCTURES", "ESTIMATORS", "check_reslora_args"]

_BASE_TYPES = (nn.Linear, BitLinear)


def _fro(t: torch.Tensor) -> torch.Tensor:
    """Frobenius norm as a 0-dim tensor, accumulated in at least float32 (no host sync)."""
    return torch.linalg.vector_norm(t.detach(), dtype=torch.promote_types(t.dtype, torch.float32))


def _ratio(num: float, den: float) -> float:
    return 1.0 if num == 0 or den == 0 else num / den  # official code: a zero statistic gives 1


# ------------------------------------------------------------------------------------------------
# merge estimators: alpha* ratios r_k ~= |carried or input of layer n-k| / |... of layer n|, k=1..m
# ------------------------------------------------------------------------------------------------
class _InputWindow:
    """merge_bi: ratios of window means of the norm of the carried quantity (``x`` for is, ``A x`` for
    ms); they scale this layer's own carried quantity (``relates_to = "carried"``)."""

    name = "bi"
    relates_to = "carried"

    def ratios(self, layer: "ResLoRALinear", prevs: list, ctx: dict) -> list[float]:
        f_n = layer._window_mean()
        return [_ratio(p._window_mean(), f_n) for p in prevs]


class _MergedWeightNorm:
    """merge_bw: ``r_k = f*_{max(n-k-1,0)} / f*_{n-1}``, f* the Frobenius norm of the merged weight;
    these scale the previous layers' *inputs* (``relates_to = "input"``)."""

    name = "bw"
    relates_to = "input"

    def ratios(self, layer: "ResLoRALinear", prevs: list, ctx: dict) -> list[float]:
        chain = layer.chain()
        n = len(chain) - 1
        for q in chain[:-1]:  # head first, so each predecessor's own f* inputs are already known
            if id(q) not in ctx:
                ctx[id(q)] = q._merged_fro if q.merged else float(_fro(q._add_to_weight(q._delta(self, ctx))))
        f = [ctx[id(q)] for q in chain[:-1]]
        return [_ratio(f[max(n - k - 1, 0)], f[n - 1]) for k in range(1, len(prevs) + 1)]


ESTIMATORS = {e.name: e for e in (_InputWindow(), _MergedWeightNorm())}


# ------------------------------------------------------------------------------------------------
# structures: the training-form adapter output and the merge's delta weight
# ------------------------------------------------------------------------------------------------
def _ba(layer: "ResLoRALinear") -> torch.Tensor:
    return layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)


class _Plain:
    """Plain LoRA (peft's ``lora_B(lora_A(dropout(x))) * scaling``); exact merge."""

    name = "none"

    def forward(self, layer, x):
        return layer.lora_B(layer.lora_A(layer.lora_dropout(x))) * layer.scaling

    def delta(self, layer, estimator, ctx):
        return _ba(layer)


class _InputShortcut:
    """is: ``s B_n A_n (x_n + x_{n-1})``, ``x_{-1} := x_0``."""

    name = "is"

    def forward(self, layer, x):
        layer._record(x)
        layer._cache = x
        prev = layer._prev
        x_prev = x if prev is None else prev._cached(x)
        return layer.lora_B(layer.lora_A(layer.lora_dropout(x + x_prev))) * layer.scaling

    def delta(self, layer, estimator, ctx):
        if layer._prev is None:
            return 2.0 * _ba(layer)  # exact: x_{-1} := x_0
        (r,) = estimator.ratios(layer, [layer._prev], ctx)
        return (1.0 + r) * _ba(layer)


class _BlockShortcut:
    """bs: ``s sum_{k=0..m} B_{n-k} A_{n-k} x_n`` through the previous layers' own adapters; exact merge."""

    name = "bs"

    def forward(self, layer, x):
        dx = layer.lora_dropout(x)
        out = layer.lora_B(layer.lora_A(dx)) * layer.scaling
        for p in layer.previous():
            out = out + p.lora_B(p.lora_A(dx)) * p.scaling
        return out

    def delta(self, layer, estimator, ctx):
        out = _ba(layer)
        for p in layer.previous():
            out = out + _ba(p)
        return out


class _MiddleShortcut:
    """ms: ``s B_n (sum_{k=0..m} A_{n-k} x_{n-k})`` from the previous layers' cached A-outputs."""

    name = "ms"

    def forward(self, layer, x):
        a = layer.lora_A(layer.lora_dropout(x))
        layer._record(a)
        layer._cache = a
        total = a
        for p in layer.previous():
            total = total + p._cached(a)
        return layer.lora_B(total) * layer.scaling

    def delta(self, layer, estimator, ctx):
        prevs = layer.previous()
        if not prevs:
            return _ba(layer)
        ratios = estimator.ratios(layer, prevs, ctx)
        if estimator.relates_to == "carried":  # A_{n-k} x_{n-k} ~= r_k A_n x_n
            return (1.0 + sum(ratios)) * _ba(layer)
        a_star = layer.lora_A.weight  # x_{n-k} ~= r_k x_n  =>  A*_n = A_n + sum_k r_k A_{n-k}
        for r, p in zip(ratios, prevs):
            a_star = a_star + r * p.lora_A.weight
        return layer.scaling * (layer.lora_B.weight @ a_star)


STRUCTURES = {s.name: s for s in (_Plain(), _InputShortcut(), _BlockShortcut(), _MiddleShortcut())}


def check_reslora_args(r, alpha, dropout, structure, pre_num, merge_estimator, window) -> None:
    """Validate the ResLoRA hyper-parameters (shared by the layer and :func:`lmops.reslora.apply_reslora`)."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r: expected a positive int (the LoRA rank), got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha: expected a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure: expected one of {sorted(STRUCTURES)}, got {structure!r}")
    if pre_num is not None and (not isinstance(pre_num, int) or isinstance(pre_num, bool) or pre_num < 0):
        raise ValueError(f"pre_num: expected an int >= 0 (or None for all previous layers), got {pre_num!r}")
    if merge_estimator not in ESTIMATORS:
        raise ValueError(f"merge_estimator: expected one of {sorted(ESTIMATORS)}, got {merge_estimator!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window: expected a positive int, got {window!r}")


class ResLoRALinear(nn.Module):
    """A ResLoRA adapter around ``base_layer`` (``nn.Linear`` or ``BitLinear``), peft-style.

    Args:
        base_layer: the wrapped linear (kept as ``base_layer``; its parameters are frozen by
            :func:`lmops.reslora.apply_reslora`, not here).
        r, alpha: rank and ``lora_alpha``; ``scaling = alpha / r``.
        dropout: dropout probability on the adapter input.
        structure: ``"is"``, ``"bs"``, ``"ms"`` or ``"none"`` (plain LoRA).
        pre_num: previous layers used by bs/ms (``None``: all); ignored by is and none.
        merge_estimator: default alpha* estimator of :meth:`merge`, ``"bi"`` or ``"bw"``.
        window: number of recent training forwards whose norms ``"bi"`` averages.

    Parameters: ``lora_A`` ``nn.Linear(in, r, bias=False)`` (kaiming-uniform, a=sqrt(5)) and ``lora_B``
    ``nn.Linear(r, out, bias=False)`` (zeros), as peft; float dtype of the base weight (float32 for a
    packed BitLinear).

    Shapes: ``x: (..., in_features)`` -> ``(..., out_features)`` in the base layer's output dtype.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        structure: str = "is",
        pre_num: int | None = 1,
        merge_estimator: str = "bi",
        window: int = 100,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, _BASE_TYPES):
            raise TypeError(f"base_layer: expected nn.Linear or BitLinear, got {type(base_layer).__name__}")
        check_reslora_args(r, alpha, dropout, structure, pre_num, merge_estimator, window)
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.lora_alpha, self.scaling = r, alpha, alpha / r
        self.structure, self.pre_num, self.merge_estimator, self.window = structure, pre_num, merge_estimator, window
        self._strategy = STRUCTURES[structure]
        w = getattr(base_layer, "weight", None)
        packed = isinstance(w, PackedTernaryWeight)  # a packed BitLinear: adapters in float32 on its device
        is_float = w is not None and not packed and w.dtype.is_floating_point and w.device.type != "meta"
        factory = {"device": w.device if is_float else None, "dtype": w.dtype if is_float else torch.float32}
        if packed:
            factory["device"] = w.device
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        self.reset_lora_parameters()
        self.merged = False
        self._merged_fro: float | None = None
        self._unmerged_weight: tuple = ()  # (original Parameter,) while merged
        self._norms: deque = deque(maxlen=window)
        self._cache: torch.Tensor | None = None
        object.__setattr__(self, "_prev", None)  # plain attributes, not submodules
        object.__setattr__(self, "_next", None)

    def reset_lora_parameters(self) -> None:
        """peft's default init: A kaiming-uniform (a=sqrt(5)), B zeros (the adapter starts as the identity)."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # -- passthrough ------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight: an ``nn.Parameter``, or a read-only
        :class:`~lmops.bitnet.layer.PackedTernaryWeight` over a packed BitLinear."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def is_packed_base(self) -> bool:
        return isinstance(self.base_layer, BitLinear) and self.base_layer.is_packed

    # -- chain ------------------------------------------------------------------------------------
    def link(self, prev: "ResLoRALinear | None") -> None:
        """Make ``prev`` this layer's predecessor (the same module in the previous block); ``None`` unlinks."""
        if self._prev is not None:
            object.__setattr__(self._prev, "_next", None)
        if prev is not None:
            if not isinstance(prev, ResLoRALinear):
                raise TypeError(f"prev: expected a ResLoRALinear or None, got {type(prev).__name__}")
            mine = (self.structure, self.in_features, self.out_features, self.r)
            theirs = (prev.structure, prev.in_features, prev.out_features, prev.r)
            if mine != theirs:
                raise ValueError(
                    f"prev: (structure, in_features, out_features, r) must match this layer's {mine}, got {theirs}"
                )
            if prev is self or self in prev.chain():
                raise ValueError("prev: linking would make a cycle")
            if prev._next is not None:
                object.__setattr__(prev._next, "_prev", None)
            object.__setattr__(prev, "_next", self)
        object.__setattr__(self, "_prev", prev)

    def chain(self) -> list["ResLoRALinear"]:
        """This layer and its predecessors, head first."""
        out, p = [], self
        while p is not None:
            out.append(p)
            p = p._prev
        return out[::-1]

    def previous(self) -> list["ResLoRALinear"]:
        """The ``m = min(pre_num, n)`` previous layers, nearest first (all of them if ``pre_num`` is None)."""
        out, p = [], self._prev
        while p is not None and (self.pre_num is None or len(out) < self.pre_num):
            out.append(p)
            p = p._prev
        return out

    def _cached(self, like: torch.Tensor) -> torch.Tensor:
        c = self._cache
        if c is None:
            raise RuntimeError(
                f"ResLoRA {self.structure}: the previous layer of the chain did not run unmerged earlier in this "
                "forward (merge or unmerge a whole chain together; gradient checkpointing is not supported)"
            )
        if c.shape != like.shape:
            raise RuntimeError(
                f"ResLoRA {self.structure}: the previous layer saw shape {tuple(c.shape)}, this one "
                f"{tuple(like.shape)}; consecutive layers of a chain must see the same tokens in one forward"
            )
        return c

    def _clear_chain_caches(self) -> None:
        p = self
        while p is not None:
            p._cache = None
            p = p._prev

    # -- statistics for merge_bi ------------------------------------------------------------------
    def _record(self, t: torch.Tensor) -> None:
        if self.training:
            self._norms.append(_fro(t))

    def _window_mean(self) -> float:
        if not self._norms:
            raise ValueError(
                f"merge estimator 'bi': no norms recorded for this {self.structure} layer; run training-mode "
                "forwards first (or load an adapter saved with its windows), or use estimator='bw'"
            )
        return float(torch.stack(list(self._norms)).mean())

    def norm_window(self) -> torch.Tensor:
        """The recorded norms (oldest first), ``(k,)`` with ``k <= window``, on the CPU (float32 or wider)."""
        if not self._norms:
            return torch.zeros(0)
        return torch.stack(list(self._norms)).cpu()

    def load_norm_window(self, norms: torch.Tensor) -> None:
        """Replace the recorded norms (e.g. from a saved adapter); keeps the last ``window`` values."""
        self._norms = deque((v.reshape(()) for v in norms.reshape(-1)), maxlen=self.window)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if not self.merged:
            lora = self._strategy.forward(self, x.to(self.lora_A.weight.dtype))
            result = result + lora.to(result.dtype)
        if self._next is None:  # last layer of the chain: the caches of this forward are spent
            self._clear_chain_caches()
        return result

    # -- merge ------------------------------------------------------------------------------------
    def _dense_weight(self) -> torch.Tensor:
        if self.is_packed_base:
            q, gamma = self.base_layer.ternary_weight()
            return q.to(torch.float32) * gamma
        return self.base_layer.weight

    def _add_to_weight(self, delta: torch.Tensor) -> torch.Tensor:
        """``W + dW`` computed in the wider dtype, returned in W's dtype (W dequantized if packed)."""
        w = self._dense_weight()
        wide = torch.promote_types(w.dtype, delta.dtype)
        return (w.to(wide) + delta.to(device=w.device, dtype=wide)).to(w.dtype)

    def _delta(self, estimator, ctx: dict) -> torch.Tensor:
        return self._strategy.delta(self, estimator, ctx)

    def _estimator(self, estimator: str | None):
        name = self.merge_estimator if estimator is None else estimator
        if name not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {sorted(ESTIMATORS)} or None, got {name!r}")
        return ESTIMATORS[name]

    @torch.no_grad()
    def get_delta_weight(self, estimator: str | None = None, *, ctx: dict | None = None) -> torch.Tensor:
        """``W* - W``, ``(out_features, in_features)`` in the adapter dtype (see the module docstring for
        the formula per structure); ``estimator`` defaults to ``merge_estimator``. ``ctx``: a memo of
        merged-weight norms shared by the layers of one merge pass (``"bw"``), or None."""
        return self._delta(self._estimator(estimator), {} if ctx is None else ctx).detach()

    def check_mergeable(self, estimator: str | None = None) -> None:
        """Raise (changing nothing) if :meth:`merge` with ``estimator`` would fail: a packed BitLinear
        base, or ``"bi"`` without recorded norms where an alpha* is needed."""
        if self.is_packed_base:
            raise RuntimeError(
                "merge: the base layer is a packed BitLinear; ternary weights cannot absorb a LoRA. Keep the "
                "adapters unmerged (they still work), or unpack() the base first (the merge then changes the "
                "ternary quantization)"
            )
        est = self._estimator(estimator)
        uses = [self._prev] if self.structure == "is" else self.previous() if self.structure == "ms" else []
        if est.name == "bi" and any(p is not None for p in uses):
            for layer in [self, *uses]:
                layer._window_mean()

    @torch.no_grad()
    def merge(
        self,
        estimator: str | None = None,
        safe_merge: bool = False,
        *,
        keep_original: bool = True,
        ctx: dict | None = None,
    ) -> None:
        """Fold the adapter paths into the base weight (exact for bs/none, alpha* estimate for is/ms).

        The base ``weight`` Parameter is replaced by a new one holding ``W + dW`` (computed in the wider
        of the two dtypes, stored in W's); the original is kept for :meth:`unmerge` unless
        ``keep_original=False`` (what :func:`lmops.reslora.merge_and_unload` uses). ``safe_merge`` checks the
        result for NaN/inf first (peft's flag). Merging twice is a no-op. ``ctx``: see
        :meth:`get_delta_weight`.
        """
        if self.merged:
            return
        self.check_mergeable(estimator)
        w = self.base_layer.weight
        merged = self._add_to_weight(self.get_delta_weight(estimator, ctx=ctx))
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError("merge: NaN or inf in the merged weight; the adapter seems to be broken")
        self._unmerged_weight = (w,) if keep_original else ()
        self._merged_fro = float(_fro(merged))
        self.base_layer.weight = nn.Parameter(merged, requires_grad=w.requires_grad)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Back to the training form: the original base weight Parameter is put back (bit-identical)."""
        if not self.merged:
            return
        if not self._unmerged_weight:
            raise RuntimeError("unmerge: this layer was merged with keep_original=False; the original weight is gone")
        self.base_layer.weight = self._unmerged_weight[0]
        self._unmerged_weight, self._merged_fro, self.merged = (), None, False

    def extra_repr(self) -> str:
        pre = "all" if self.pre_num is None else self.pre_num
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.lora_alpha}, structure={self.structure}, pre_num={pre}, "
            f"estimator={self.merge_estimator}, chain_position={len(self.chain()) - 1}, merged={self.merged}"
        )
