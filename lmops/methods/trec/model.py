"""TREC's network: a continuous embedding-space seq2seq denoiser (Diffusion-LM / DiffuSeq lineage).

Architecture (an encoder-decoder, as SeqDiffuSeq and Difformer; DiffuSeq concatenates source and target in
one encoder instead -- which backbone TREC uses is unconfirmed, so this is a choice):

- ``embed``: the token embedding ``(V, d)`` the diffusion runs in. It is learned jointly (Diffusion-LM) and
  tied to the output: logits of a latent ``x`` are ``x @ embed.weight.T`` (the rounding softmax).
- ``encoder``: a transformer encoder over the source tokens (its own ``(V, H)`` embedding).
- ``denoiser``: ``in_proj`` of ``[z_t ; x0_prev]`` (``2d -> H``; ``x0_prev`` is the self-conditioning input,
  zeros when absent), plus positional and timestep embeddings, then pre-LN blocks of self-attention,
  cross-attention to the source and a feed-forward layer, then ``out_proj`` (``H -> d``): the x0 estimate.

Every linear of the transformers is made by one factory (``linear_cls``, default ``nn.Linear``), and all are
exact ``nn.Linear`` instances named ``q_proj``/``k_proj``/``v_proj``/``o_proj``/``fc1``/``fc2``/
``in_proj``/``out_proj``/``time_fc1``/``time_fc2``, so lmops' converters apply after construction too:
``lmops.bitnet.convert(model)`` (BitNet b1.58 QAT) and ``lmops.reslora.apply_reslora(model,
target_modules=("q_proj", "v_proj"))`` (ResLoRA adapters; the ``layers.<i>`` names chain them by block).
No ``nn.MultiheadAttention`` (its fused weights are read directly and would escape the swap).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

__all__ = ["LinearFactory", "TRECModel", "linear_factory", "timestep_embedding"]

#: ``(in_features, out_features, bias=True) -> nn.Module``: how the model makes each linear layer.
LinearFactory = Callable[..., nn.Module]


def linear_factory(name: str) -> LinearFactory:
    """The factory named in :attr:`ModelConfig.linear`: ``"linear"`` -> ``nn.Linear``, ``"bitlinear"`` ->
    :class:`lmops.BitLinear` (training mode, BitNet b1.58 quantization-aware)."""
    if name == "linear":
        return nn.Linear
    if name == "bitlinear":
        from ...bitnet.layer import BitLinear

        return BitLinear
    raise ValueError(f"linear: expected 'linear' or 'bitlinear', got {name!r}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embeddings of integer timesteps: ``t`` int64 ``(B,)`` -> float32 ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class Attention(nn.Module):
    """Multi-head attention from four factory linears; ``kv`` defaults to ``x`` (self-attention)."""

    def __init__(self, dim: int, heads: int, linear: LinearFactory, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj = linear(dim, dim), linear(dim, dim)
        self.v_proj, self.o_proj = linear(dim, dim), linear(dim, dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, L, H)``, ``kv`` ``(B, S, H)``, ``mask`` bool ``(B, S)`` True where a key may be attended."""
        kv = x if kv is None else kv
        B, L, H = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(B, y.shape[1], self.heads, H // self.heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(kv)), heads(self.v_proj(kv))
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, L, H))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, linear: LinearFactory, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = linear(dim, hidden), linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """A pre-LN transformer block; with ``cross=True`` it also attends to the encoder's output."""

    def __init__(self, cfg: ModelConfig, linear: LinearFactory, cross: bool) -> None:
        super().__init__()
        H = cfg.hidden_dim
        self.norm1, self.self_attn = nn.LayerNorm(H), Attention(H, cfg.num_heads, linear, cfg.dropout)
        self.norm2 = nn.LayerNorm(H) if cross else None
        self.cross_attn = Attention(H, cfg.num_heads, linear, cfg.dropout) if cross else None
        self.norm3, self.mlp = nn.LayerNorm(H), FeedForward(H, cfg.ffn_dim, linear, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, self_mask=None, memory=None, memory_mask=None) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.norm1(x), mask=self_mask))
        if self.cross_attn is not None:
            x = x + self.drop(self.cross_attn(self.norm2(x), memory, mask=memory_mask))
        return x + self.drop(self.mlp(self.norm3(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden_dim)
        self.pos = nn.Embedding(cfg.max_source_len, cfg.hidden_dim)
        self.layers = nn.ModuleList([Block(cfg, linear, cross=False) for _ in range(cfg.encoder_layers)])
        self.norm = nn.LayerNorm(cfg.hidden_dim)

    def forward(self, src: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.tok(src) + self.pos(torch.arange(src.shape[1], device=src.device))[None]
        for layer in self.layers:
            h = layer(h, self_mask=mask)
        return self.norm(h)


class Denoiser(nn.Module):
    def __init__(self, cfg: ModelConfig, linear: LinearFactory) -> None:
        super().__init__()
        H, d = cfg.hidden_dim, cfg.embed_dim
        self.in_proj = linear(2 * d if cfg.self_condition else d, H)
        self.time_fc1, self.time_fc2 = linear(H, H), linear(H, H)
        self.pos = nn.Embedding(cfg.target_len, H)
        self.layers = nn.ModuleList([Block(cfg, linear, cross=True) for _ in range(cfg.denoiser_layers)])
        self.norm = nn.LayerNorm(H)
        self.out_proj = linear(H, d)


class TRECModel(nn.Module):
    """The x0-predicting denoiser ``f(z_t, x0_prev, t, source) -> x0_hat`` with a tied rounding head.

    Args:
        config: the sizes (:class:`ModelConfig`).
        linear_cls: the factory of every transformer linear, ``(in, out, bias=True) -> nn.Module``; default
            the one named by ``config.linear``.
    """

    def __init__(self, config: ModelConfig, linear_cls: LinearFactory | None = None) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
        if linear_cls is not None and not callable(linear_cls):
            raise TypeError(f"linear_cls: expected a callable (in, out, bias=True) -> module, got {linear_cls!r}")
        self.config = config
        linear = linear_cls if linear_cls is not None else linear_factory(config.linear)
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        nn.init.normal_(self.embed.weight)  # N(0, 1) as Diffusion-LM
        self.encoder = Encoder(config, linear)
        self.denoiser = Denoiser(config, linear)

    # ----------------------------------------------------------------------------------------------
    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """Bool ``(B, S)``: True at real (non-pad) source tokens; an all-pad row keeps position 0."""
        mask = src != self.config.pad_id
        mask[:, 0] |= ~mask.any(dim=1)  # an all-masked row would make attention NaN
        return mask

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ids int64 ``(B, S)`` -> ``(memory (B, S, H), mask (B, S))``."""
        if src.dim() != 2 or src.shape[1] > self.config.max_source_len:
            raise ValueError(f"src: expected (B, S<={self.config.max_source_len}) ids, got {tuple(src.shape)}")
        mask = self.source_mask(src)
        return self.encoder(src, mask), mask

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Target ids int64 ``(B, L)`` -> their embeddings ``(B, L, d)`` (the diffusion's x0)."""
        return self.embed(ids)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The rounding logits of latents ``(B, L, d)``: ``x @ embed.weight.T`` -> ``(B, L, V)``."""
        return x @ self.embed.weight.t()

    def denoise(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        x0_prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The x0 estimate: ``z_t`` float ``(B, L, d)``, ``t`` int64 ``(B,)``, the encoder's output, and the
        self-conditioning input ``x0_prev`` ``(B, L, d)`` (None: zeros). Returns ``(B, L, d)``."""
        cfg, den = self.config, self.denoiser
        if z_t.dim() != 3 or z_t.shape[1] > cfg.target_len or z_t.shape[2] != cfg.embed_dim:
            raise ValueError(f"z_t: expected (B, L<={cfg.target_len}, {cfg.embed_dim}), got {tuple(z_t.shape)}")
        if cfg.self_condition:
            prev = torch.zeros_like(z_t) if x0_prev is None else x0_prev
            z_t = torch.cat([z_t, prev], dim=-1)
        elif x0_prev is not None:
            raise ValueError("x0_prev: this model was built with self_condition=False")
        temb = den.time_fc2(F.silu(den.time_fc1(timestep_embedding(t, cfg.hidden_dim))))
        h = den.in_proj(z_t) + den.pos(torch.arange(z_t.shape[1], device=z_t.device))[None] + temb[:, None]
        for layer in den.layers:
            h = layer(h, memory=memory, memory_mask=memory_mask)
        return den.out_proj(den.norm(h))

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, src: torch.Tensor, x0_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`encode` then :meth:`denoise`: the x0 estimate ``(B, L, d)``."""
        memory, mask = self.encode(src)
        return self.denoise(z_t, t, memory, mask, x0_prev)
