"""The decode step: a static KV cache and one forward over the model's own submodules.

:class:`DecodeEngine` runs a :class:`~lmops.engine.families.DecoderPlan`: per layer the model's
norms, projections (through the :class:`~lmops.engine.families.LayerProjections` seam) and rotary
embedding, with the cache writes, masks and attention done here (:mod:`lmops.engine.attention`). No
``transformers`` Cache object, mask builder, output dataclass or logits processor is involved, and
only the last position reaches the output head.

The same :meth:`DecodeEngine.forward` serves prefill (``T`` prompt tokens written at cache slots
``0..T-1``) and decode (one token at slot ``start``). For decode it can be wrapped in
``torch.compile`` (``fullgraph=True``, dynamic shapes: one graph for every cache length); the lmops
ops are custom ops with fake kernels, so a packed model compiles whole.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .attention import additive, causal_mask, eager_attention, sdpa_attention, sdpa_gqa_without_mask
from .families import DecoderPlan, LayerParts, UnsupportedModelError, build_plan
from .head import head_for

__all__ = ["DecodeEngine", "StaticKVCache", "engine_for"]


class StaticKVCache:
    """Keys and values of every layer, allocated once: ``(B, kv_heads, max_len, head_dim)`` each, in
    the model's float dtype. Slot ``s`` holds the token at column ``s`` of the (left-padded) ids, so
    all rows share slot numbers and padding is handled by the masks."""

    def __init__(self, n_layers: int, batch: int, n_kv: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, n_kv, max_len, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class DecodeEngine:
    """The engine of one model (see the module docstring). Build it with :func:`engine_for`, which
    keeps one per model and rebuilds it when the model's modules change.

    Attributes:
        plan: the :class:`~lmops.engine.families.DecoderPlan`.
        dtype, device: of the embedding weight: the dtype of hidden states, logits and the cache.
    """

    def __init__(self, model: nn.Module) -> None:
        self.plan: DecoderPlan = build_plan(model)
        weight = self.plan.embed.weight
        self.dtype: torch.dtype = weight.dtype
        self.device: torch.device = weight.device
        self.eager = self.plan.attention == "eager"
        self._gqa = sdpa_gqa_without_mask(self.plan.head_dim)
        # layers share masks by sliding window: masks[k] serves the layers whose window is windows[k]
        self.windows: list[int | None] = sorted({p.window for p in self.plan.layers}, key=lambda w: (w is not None, w))
        self._mask_slot = [self.windows.index(p.window) for p in self.plan.layers]
        self._signature = _signature(model, self.plan)
        self._compiled: dict[str, Callable] = {}
        self._heads: dict = {}
        self.lm_head: nn.Module = self.plan.lm_head  # what forward calls: select_head

    def select_head(self, head_dtype: str | None) -> None:
        """Make :meth:`forward` call the model's own output head (``None``) or an int8 per-channel copy
        of it (``"int8"``: :func:`lmops.engine.head.head_for`; quantized on first use, again when the
        head's weights change). ``ValueError`` for another value."""
        self.lm_head = head_for(self.plan.lm_head, head_dtype, self._heads)

    # ------------------------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int) -> StaticKVCache:
        p = self.plan
        return StaticKVCache(len(p.layers), batch, p.n_kv, max_len, p.head_dim, self.dtype, self.device)

    def masks(self, padding: torch.Tensor | None, start: int, length: int) -> list[torch.Tensor | None]:
        """The masks of a forward over cache slots ``start .. start + length - 1`` (one per distinct
        window), as ``transformers`` builds them for that call.

        ``padding``: ``(B, >= start + length)`` bool (True = real token) or None (no padding)."""
        end = start + length
        out: list[torch.Tensor | None] = []
        for window in self.windows:
            mask = causal_mask(padding, start, length, end, window, always=self.eager, device=self.device)
            out.append(additive(mask, self.dtype) if self.eager and mask is not None else mask)
        return out

    # ------------------------------------------------------------------------------------------
    def _layer(self, p: LayerParts, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor, start: int, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = h.shape
        end = start + t
        residual = h
        x = p.input_norm(h)
        q, k, v = p.proj.qkv(x)
        q = q.view(b, t, -1, p.head_dim).transpose(1, 2)
        k = k.view(b, t, -1, p.head_dim).transpose(1, 2)
        v = v.view(b, t, -1, p.head_dim).transpose(1, 2)
        q, k = self.plan.apply_rope(q, k, cos, sin)
        keys[:, :, start:end].copy_(k)
        values[:, :, start:end].copy_(v)
        if start > 0:  # decode: attend over the cache
            k, v = keys[:, :, :end], values[:, :, :end]
        if self.eager:
            a = eager_attention(q, k, v, mask, p.n_rep, p.scaling)
        else:
            a = sdpa_attention(q, k, v, mask, p.n_rep, p.scaling, self._gqa)
        if p.attn_sub_norm is not None:
            a = p.attn_sub_norm(a)
        h = residual + p.proj.out(a)
        residual = h
        x = p.post_norm(h)
        gate, up = p.proj.gate_up(x)
        x = p.act(gate) * up
        if p.ffn_sub_norm is not None:
            x = p.ffn_sub_norm(x)
        return residual + p.proj.mlp_down(x)

    def forward(self, keys: list[torch.Tensor], values: list[torch.Tensor], ids: torch.Tensor,
                positions: torch.Tensor, start: int, masks: list[torch.Tensor | None]) -> torch.Tensor:
        """Run ``ids`` ``(B, T)`` at cache slots ``start .. start + T - 1``, writing their keys and
        values; ``positions`` ``(B, T)`` int64 are the rotary positions; ``masks`` from :meth:`masks`.
        Returns the logits of the last position, ``(B, 1, vocab)`` in the head's dtype."""
        p = self.plan
        h = p.embed(ids)
        cos, sin = p.rotary(h, positions)
        slots = self._mask_slot
        for i, layer in enumerate(p.layers):
            h = self._layer(layer, h, cos, sin, keys[i], values[i], start, masks[slots[i]])
        return self.lm_head(p.norm(h[:, -1:, :]))

    def decode_fn(self, compile: bool | dict[str, Any] = False) -> Callable:
        """:meth:`forward`, or a ``torch.compile`` of it (``compile=True``: inductor, ``fullgraph=True``,
        dynamic shapes; a dict: ``torch.compile`` keyword arguments over those defaults). Compiled
        functions are kept per options, so later calls reuse the graph. (Dynamo keeps one cache of
        graphs for this method's code across engines: past ``torch._dynamo.config.recompile_limit``
        graphs (models x batch-size-1-or-not x padded-or-not) it runs the step eagerly, with a warning.)"""
        if not compile:
            return self.forward
        options = {"fullgraph": True, "dynamic": True, **(compile if isinstance(compile, dict) else {})}
        key = repr(sorted(options.items()))
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = torch.compile(self.forward, **options)
        return fn


def _signature(model: nn.Module, plan: DecoderPlan) -> tuple:
    return (id(model), getattr(model.config, "_attn_implementation", None), *map(id, plan.modules()))


_ENGINES: weakref.WeakKeyDictionary[nn.Module, DecodeEngine] = weakref.WeakKeyDictionary()


def engine_for(model: nn.Module) -> DecodeEngine:
    """The :class:`DecodeEngine` of ``model``: kept between calls (with its compiled step), rebuilt
    when a module it calls was swapped (e.g. after ``lmops.bitnet.pack`` or a conversion), or when
    the model moved to another device or dtype. Raises
    :class:`~lmops.engine.families.UnsupportedModelError` for models it cannot run."""
    engine = _ENGINES.get(model)
    if engine is not None:
        try:
            plan = DecoderPlan(model)
        except UnsupportedModelError:  # the model changed into something unsupported: say so below
            plan = None
        weight = getattr(getattr(plan, "embed", None), "weight", None)
        if (plan is not None and _signature(model, plan) == engine._signature and weight is not None
                and weight.dtype == engine.dtype and weight.device == engine.device):
            return engine
    engine = DecodeEngine(model)
    _ENGINES[model] = engine
    return engine
