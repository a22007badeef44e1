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

__all__ = ["CudaGraphStep", "DecodeEngine", "StaticKVCache", "engine_for"]


class StaticKVCache:
    """Keys and values of every layer, allocated once: ``(B, kv_heads, max_len, head_dim)`` each, in
    the model's float dtype. Slot ``s`` holds the token at column ``s`` of the (left-padded) ids, so
    all rows share slot numbers and padding is handled by the masks."""

    def __init__(self, n_layers: int, batch: int, n_kv: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, zeros: bool = False) -> None:
        # zeros: for steps that attend over the whole cache under a mask (CudaGraphStep): a masked
        # attention weight is 0, and 0 times an uninitialized NaN is still NaN
        shape = (batch, n_kv, max_len, head_dim)
        make = torch.zeros if zeros else torch.empty
        self.keys = [make(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [make(shape, dtype=dtype, device=device) for _ in range(n_layers)]
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
    def new_cache(self, batch: int, max_len: int, zeros: bool = False) -> StaticKVCache:
        p = self.plan
        return StaticKVCache(len(p.layers), batch, p.n_kv, max_len, p.head_dim, self.dtype, self.device, zeros)

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
    def _qkv(self, p: LayerParts, h: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's input norm, q/k/v projections and rotary embedding: ``(B, heads|kv_heads, T, D)``."""
        b, t, _ = h.shape
        q, k, v = p.proj.qkv(p.input_norm(h))
        q = q.view(b, t, -1, p.head_dim).transpose(1, 2)
        k = k.view(b, t, -1, p.head_dim).transpose(1, 2)
        v = v.view(b, t, -1, p.head_dim).transpose(1, 2)
        q, k = self.plan.apply_rope(q, k, cos, sin)
        return q, k, v

    def _attend(self, p: LayerParts, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        if self.eager:
            return eager_attention(q, k, v, mask, p.n_rep, p.scaling)
        return sdpa_attention(q, k, v, mask, p.n_rep, p.scaling, self._gqa)

    @staticmethod
    def _rest(p: LayerParts, residual: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """From the attention output ``a`` ``(B, T, heads * D)`` to the layer's output: sub-norm, o_proj,
        residual, post norm, gated MLP, residual."""
        if p.attn_sub_norm is not None:
            a = p.attn_sub_norm(a)
        h = residual + p.proj.out(a)
        gate, up = p.proj.gate_up(p.post_norm(h))
        x = p.act(gate) * up
        if p.ffn_sub_norm is not None:
            x = p.ffn_sub_norm(x)
        return h + p.proj.mlp_down(x)

    def _layer(self, p: LayerParts, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor, start: int, mask: torch.Tensor | None) -> torch.Tensor:
        end = start + h.shape[1]
        q, k, v = self._qkv(p, h, cos, sin)
        keys[:, :, start:end].copy_(k)
        values[:, :, start:end].copy_(v)
        if start > 0:  # decode: attend over the cache
            k, v = keys[:, :, :end], values[:, :, :end]
        return self._rest(p, h, self._attend(p, q, k, v, mask))

    def _layer_at_slot(self, p: LayerParts, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """:meth:`_layer` for one token at the cache slot held by the tensor ``slot`` ``(1,)``: the cache
        write is an ``index_copy_`` and attention covers the whole cache under ``mask``, so no shape or
        Python number depends on the step (what a CUDA graph needs)."""
        q, k, v = self._qkv(p, h, cos, sin)
        keys.index_copy_(2, slot, k)
        values.index_copy_(2, slot, v)
        return self._rest(p, h, self._attend(p, q, keys, values, mask))

    def forward_at_slot(self, keys: list[torch.Tensor], values: list[torch.Tensor], ids: torch.Tensor,
                        positions: torch.Tensor, slot: torch.Tensor, padding: torch.Tensor,
                        slots: torch.Tensor) -> torch.Tensor:
        """One decode step with every step-dependent input a tensor (see :class:`CudaGraphStep`).

        ``ids``, ``positions``: ``(B, 1)`` int64; ``slot``: ``(1,)`` int64, the cache slot written and
        the last one attended; ``padding``: ``(B, max_len)`` bool (True = a real token); ``slots``:
        ``arange(max_len)``. Returns the logits ``(B, 1, vocab)``."""
        p = self.plan
        h = p.embed(ids)
        cos, sin = p.rotary(h, positions)
        allowed = padding & (slots <= slot)
        masks = []
        for window in self.windows:
            m = allowed if window is None else allowed & (slots > slot - window)
            m = m[:, None, None, :]
            masks.append(additive(m, self.dtype) if self.eager else m)
        for i, layer in enumerate(p.layers):
            h = self._layer_at_slot(layer, h, cos, sin, keys[i], values[i], slot, masks[self._mask_slot[i]])
        return self.lm_head(p.norm(h))

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


class CudaGraphStep:
    """The decode step of one :func:`~lmops.engine.loop.generate` call on a CUDA device, captured once in
    a CUDA graph and replayed per token, so a step costs one graph launch instead of a kernel launch per
    op from Python (on a GPU a small model's eager decode is bound by those launches).

    The captured function is :meth:`DecodeEngine.forward_at_slot`: the token, its position and its cache
    slot are copied into static tensors before each replay; attention covers the whole cache under a
    mask (slots past the current one and padding masked), which gives what attention over the filled
    slots gives, up to the summation order of the attention kernel. Capture needs every op of the step
    to be capturable (no host synchronization): lmops's CUDA/Triton kernels, cuBLAS and SDPA are.

    Args:
        engine: the model's :class:`DecodeEngine`.
        cache: the call's :class:`StaticKVCache`, made with ``zeros=True`` (its prompt slots filled by
            the prefill).
        padding: ``(B, >= max_len)`` bool slot padding, or None (no padding).
    """

    def __init__(self, engine: DecodeEngine, cache: StaticKVCache, padding: torch.Tensor | None) -> None:
        device = engine.device
        batch, length = cache.keys[0].shape[0], cache.max_len
        self.engine, self.cache = engine, cache
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((batch, 1), dtype=torch.long, device=device)
        # warm-up and capture write their (garbage) keys at the last slot, which the last decode step
        # overwrites before any step attends it
        self.slot = torch.full((1,), length - 1, dtype=torch.long, device=device)
        self.padding = (padding[:, :length].clone() if padding is not None
                        else torch.ones((batch, length), dtype=torch.bool, device=device))
        self.slots = torch.arange(length, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up: lazy inits, cuBLAS workspaces, Triton autotuning
            for _ in range(2):
                self._run()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._run()

    def _run(self) -> torch.Tensor:
        return self.engine.forward_at_slot(self.cache.keys, self.cache.values, self.ids, self.positions, self.slot,
                                           self.padding, self.slots)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """Logits ``(B, 1, vocab)`` of ``ids`` ``(B, 1)`` at ``positions`` ``(B, 1)`` written at cache slot
        ``slot``. The tensor is the graph's output buffer: the next call overwrites it."""
        self.ids.copy_(ids)
        self.positions.copy_(positions)
        self.slot.fill_(slot)
        self.graph.replay()
        return self.logits


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
