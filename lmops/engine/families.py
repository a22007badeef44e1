"""Which models the engine runs, and where each one keeps the parts a decode step calls.

A model is described once per engine by a :class:`DecoderPlan`: its embedding, rotary embedding,
final norm and output head, and per decoder layer a :class:`LayerParts` (norms, the projections
behind one :class:`LayerProjections` seam, BitNet's sub-norms, the activation, the head counts and
the sliding window). The plan holds the model's own submodules, so every norm, projection and the
rotary embedding compute exactly what ``transformers`` computes; the engine only replaces what sits
between them (cache, positions, masks, attention).

Families live in :data:`FAMILIES`, one small strategy object per ``transformers`` class (the classes
the lmops converters support). Anything else raises :class:`UnsupportedModelError`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmops_kernels.ternary import ternary_linear_multi

__all__ = [
    "FAMILIES",
    "DecoderPlan",
    "Family",
    "LayerParts",
    "LayerProjections",
    "UnsupportedModelError",
    "build_plan",
    "supported_classes",
]

#: attention implementations whose numerics the engine mirrors (``config._attn_implementation``)
ATTENTION_KINDS = ("sdpa", "eager")


class UnsupportedModelError(TypeError):
    """The engine cannot run this model (architecture, attention implementation or layout)."""


def _no_window(config: Any, attn: nn.Module, layer_idx: int) -> int | None:
    return None


def _mistral_window(config: Any, attn: nn.Module, layer_idx: int) -> int | None:
    # MistralModel masks every layer with config.sliding_window when it is set
    return getattr(config, "sliding_window", None)


def _qwen2_window(config: Any, attn: nn.Module, layer_idx: int) -> int | None:
    # Qwen2Attention sets its own sliding_window for the "sliding_attention" layers only
    return getattr(attn, "sliding_window", None)


@dataclass(frozen=True)
class Family:
    """One model family: the ``transformers`` class names it covers and its per-family rules.

    Attributes:
        name: short name (``"llama"``).
        classes: ``type(model).__name__`` values of the causal LMs it covers.
        sub_norms: the layer has BitNet's ``attn_sub_norm`` (before ``o_proj``) and ``ffn_sub_norm``
            (before ``down_proj``).
        window: ``(config, attention module, layer index) -> sliding window or None``.
    """

    name: str
    classes: tuple[str, ...]
    sub_norms: bool = False
    window: Callable[[Any, nn.Module, int], int | None] = _no_window


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("LlamaForCausalLM",)),
    Family("mistral", ("MistralForCausalLM",), window=_mistral_window),
    Family("qwen2", ("Qwen2ForCausalLM",), window=_qwen2_window),
    Family("bitnet", ("BitNetForCausalLM",), sub_norms=True),
)
_BY_CLASS = {cls: fam for fam in FAMILIES for cls in fam.classes}


def supported_classes() -> tuple[str, ...]:
    """The causal-LM class names the engine runs."""
    return tuple(_BY_CLASS)


def _fusable(mods: tuple[nn.Module, ...]) -> bool:
    """True when ``mods`` are plain packed lmops ``BitLinear`` layers (no input norm, no hooks, no adapter
    around them) over one input width and one weight layout, on the CPU: then one
    :func:`~lmops_kernels.ternary.ternary_linear_multi` call gives each one's forward, bit for bit."""
    from lmops.bitnet.layer import BitLinear  # a late import: lmops.bitnet imports the engine's loader

    first = mods[0]
    for m in mods:
        if (type(m) is not BitLinear or not m.is_packed or m.rms_norm is not None or m._forward_hooks
                or m._forward_pre_hooks or m.in_features != first.in_features
                or m.weight_layout != first.weight_layout or m.weight_packed.device.type != "cpu"):
            return False
    return True


class LayerProjections:
    """The projection calls of one decoder layer, in one place. Each call takes ``x: (B, T, in_features)``
    and returns ``(B, T, out_features)`` in the model's float dtype; the modules are the model's own
    (``nn.Linear``, lmops ``BitLinear`` packed or not, or an adapter wrapping either).

    Where q/k/v (and gate/up) are plain packed ``BitLinear`` layers on the CPU, each group is one
    :func:`~lmops_kernels.ternary.ternary_linear_multi` call: the input is quantized once and one
    parallel region streams the group's weights (the per-call costs of three GEMVs paid once; outputs
    identical to the separate calls). Whether a group fuses is checked on every call (cheap attribute
    reads), so layers packed, wrapped or hooked after the engine was built are called as they are now.
    """

    __slots__ = ("down", "gate", "k", "o", "q", "up", "v")

    def __init__(self, attn: nn.Module, mlp: nn.Module) -> None:
        self.q, self.k, self.v, self.o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.gate, self.up, self.down = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    @staticmethod
    def _multi(mods: tuple[nn.Module, ...], x: torch.Tensor) -> list[torch.Tensor]:
        return ternary_linear_multi(x, [m.weight_packed for m in mods], [m.weight_scale for m in mods],
                                    [m.bias for m in mods], layout=mods[0].weight_layout)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mods = (self.q, self.k, self.v)
        if _fusable(mods) and x.shape[-1] == self.q.in_features and not torch.is_grad_enabled():
            q, k, v = self._multi(mods, x)
            return q, k, v
        return self.q(x), self.k(x), self.v(x)

    def out(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(x)

    def gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mods = (self.gate, self.up)
        if _fusable(mods) and x.shape[-1] == self.gate.in_features and not torch.is_grad_enabled():
            gate, up = self._multi(mods, x)
            return gate, up
        return self.gate(x), self.up(x)

    def mlp_down(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)

    def modules(self) -> tuple[nn.Module, ...]:
        return (self.q, self.k, self.v, self.o, self.gate, self.up, self.down)


class LayerParts:
    """One decoder layer as the engine calls it (the model's own submodules plus shapes)."""

    __slots__ = ("act", "attn_sub_norm", "ffn_sub_norm", "head_dim", "input_norm", "n_heads", "n_kv", "n_rep",
                 "post_norm", "proj", "scaling", "window")

    def __init__(self, layer: nn.Module, family: Family, config: Any, index: int) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm = layer.input_layernorm
        self.post_norm = layer.post_attention_layernorm
        self.proj = LayerProjections(attn, mlp)
        self.attn_sub_norm = attn.attn_sub_norm if family.sub_norms else None
        self.ffn_sub_norm = mlp.ffn_sub_norm if family.sub_norms else None
        self.act = mlp.act_fn
        self.head_dim = int(attn.head_dim)
        self.n_rep = int(attn.num_key_value_groups)
        self.n_kv = int(config.num_key_value_heads)
        self.n_heads = self.n_kv * self.n_rep
        self.scaling = float(attn.scaling)
        self.window = family.window(config, attn, index)

    def modules(self) -> tuple[nn.Module, ...]:
        extra = tuple(m for m in (self.attn_sub_norm, self.ffn_sub_norm) if m is not None)
        return (self.input_norm, self.post_norm, *self.proj.modules(), *extra)


class DecoderPlan:
    """A causal LM laid out for the engine.

    Attributes:
        family: the :class:`Family`.
        embed: ``nn.Embedding`` (ids -> ``(B, T, hidden)``).
        rotary: the model's rotary embedding module, ``rotary(x, position_ids) -> (cos, sin)``, each
            ``(B, T, head_dim)`` in ``x``'s dtype.
        apply_rope: the family's ``apply_rotary_pos_emb(q, k, cos, sin)``.
        layers: one :class:`LayerParts` per decoder layer, in order.
        norm: the final norm; ``lm_head``: the output head.
        attention: ``"sdpa"`` or ``"eager"`` (the model's ``config._attn_implementation``).
        n_kv, head_dim: the KV cache's head count and head size (the same in every layer).
    """

    def __init__(self, model: nn.Module) -> None:
        cls = type(model).__name__
        family = _BY_CLASS.get(cls)
        if family is None:
            raise UnsupportedModelError(
                f"model: lmops.generate does not run {cls}; it runs {', '.join(supported_classes())} "
                "(dense or with lmops BitLinear layers, packed or not). Use model.generate for other models."
            )
        config = getattr(model, "config", None)
        attention = getattr(config, "_attn_implementation", None) or "eager"
        if attention not in ATTENTION_KINDS:
            raise UnsupportedModelError(
                f"model: {cls} uses attn_implementation={attention!r}; lmops.generate mirrors "
                f"{' and '.join(repr(k) for k in ATTENTION_KINDS)} (load the model with one of those)"
            )
        if not getattr(config, "is_causal", True):
            raise UnsupportedModelError(f"model: {cls} is configured bidirectional (config.is_causal=False)")
        try:
            base = model.model
            self.embed: nn.Module = base.embed_tokens
            self.rotary: nn.Module = base.rotary_emb
            self.norm: nn.Module = base.norm
            self.lm_head: nn.Module = model.lm_head
            decoder_layers = list(base.layers[: config.num_hidden_layers])
            self.layers = [LayerParts(layer, family, config, i) for i, layer in enumerate(decoder_layers)]
            module = sys.modules[type(decoder_layers[0].self_attn).__module__]
            self.apply_rope: Callable = module.apply_rotary_pos_emb
        except (AttributeError, IndexError, KeyError) as exc:
            raise UnsupportedModelError(
                f"model: {cls} does not have the layout of transformers' {cls} ({exc}); lmops.generate needs "
                "model.model.{embed_tokens, rotary_emb, layers, norm} and model.lm_head"
            ) from None
        shapes = {(p.n_kv, p.head_dim) for p in self.layers}
        if len(shapes) != 1:
            raise UnsupportedModelError(f"model: {cls} has layers with different KV head shapes {sorted(shapes)}")
        (self.n_kv, self.head_dim), = shapes
        self.family = family
        self.config = config
        self.attention = attention
        self.class_name = cls

    def modules(self) -> tuple[nn.Module, ...]:
        """Every module the plan calls (to tell when the model changed under a cached plan)."""
        out: list[nn.Module] = [self.embed, self.rotary, self.norm, self.lm_head]
        for layer in self.layers:
            out.extend(layer.modules())
        return tuple(out)


def build_plan(model: nn.Module) -> DecoderPlan:
    """The :class:`DecoderPlan` of ``model``; raises :class:`UnsupportedModelError` (a ``TypeError``)
    naming the class and the supported ones."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"model: expected a transformers causal LM (nn.Module), got {type(model).__name__}")
    return DecoderPlan(model)
