"""Plain-torch reference for the 2-bit ternary layouts.

Two layouts exist:

**lmops tiled layout** (the layout every lmops kernel reads; the canonical packed ``state_dict`` form).
For a ternary matrix ``q`` of shape ``(N, K)`` (``N = out_features``, ``K = in_features``):

- ``KB = ceil(K / 16)`` k-blocks of 16 input features; ``NB = ceil(N / 8)`` n-blocks of 8 outputs,
  the last one holding ``w = N - 8 * (NB - 1)`` columns (1..8).
- Each n-block is stored contiguously, k-block after k-block; a k-block of an n-block with ``w``
  columns takes ``4 * w`` bytes.  Byte ``c * 4 + kk`` (``c < w`` the column in the block, ``kk < 4``)
  holds, in bit pair ``j`` (bits ``2j..2j+1``, ``j < 4``), the code of weight
  ``(n = 8 * nb + c, k = 16 * kb + 4 * j + kk)``.
- Codes are ``q + 1`` (0 -> -1, 1 -> 0, 2 -> +1); positions ``k >= K`` hold code 1 (a zero weight).
- The result is a ``uint8`` tensor of shape ``(N, 4 * KB)``: exactly ``N * KB * 4`` bytes, 2 bits per
  weight plus the K padding to a multiple of 16.  The row index of that shape is *not* an output row;
  only the byte order above is meaningful.

Why this order: decoding bit pair ``j`` of 32 bytes yields, for 8 output columns, 4 consecutive
input features each, which is exactly the operand of one ``vpmaddubsw``/``vpdpbusd`` against a
broadcast group of 4 int8 activations.  Per-column sums then stay in their own int32 lane, so no
horizontal reduction is needed, for GEMV and GEMM alike.

**transformers BitNet layout** (``transformers.integrations.bitnet.pack_weights``): ``uint8`` of shape
``(ceil(N / 4), K)``; code ``q + 1``; bit pair ``i`` of packed row ``r`` holds original row
``i * ceil(N / 4) + r`` (four contiguous row blocks along ``out_features``).
"""

from __future__ import annotations

import torch

# The one Python definition of the packed format's numbers (C++: csrc/packing.h).
K_BLOCK = 16  # inputs per k-block: 4 bytes of 4 bit pairs
N_BLOCK = 8  # columns per n-block of the tiled layout


def packed_cols(in_features: int) -> int:
    """Bytes per row of every packed layout: ``4 * ceil(in_features / 16)``."""
    return 4 * ((in_features + K_BLOCK - 1) // K_BLOCK)


def packed_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Shape of the lmops packing (every layout) of an ``(out_features, in_features)`` ternary matrix."""
    return out_features, packed_cols(in_features)


def _tile_codes(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 -> (NB, KB, 8, 4, 4) uint8 codes, indexed [nb, kb, c, kk, j]; padding = code 1."""
    n, k = q.shape
    nb = (n + N_BLOCK - 1) // N_BLOCK
    kb = (k + K_BLOCK - 1) // K_BLOCK
    codes = torch.ones(nb * N_BLOCK, kb * K_BLOCK, dtype=torch.uint8, device=q.device)
    codes[:n, :k] = (q + 1).to(torch.uint8)
    # k = 16 kb + 4 j + kk  ->  [nb, c, kb, j, kk] -> [nb, kb, c, kk, j]
    return codes.view(nb, N_BLOCK, kb, 4, 4).permute(0, 2, 1, 4, 3)


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """Pack a ternary matrix into the lmops tiled 2-bit layout.

    Args:
        q: ``(N, K)`` integer tensor with values in {-1, 0, 1}.
    Returns:
        ``(N, 4 * ceil(K / 16))`` uint8, on ``q``'s device.
    """
    n, k = q.shape
    tiles = _tile_codes(q)  # [nb, kb, c, kk, j]
    shifts = torch.arange(4, device=q.device, dtype=torch.uint8) * 2
    bytes_ = (tiles << shifts).sum(dim=-1, dtype=torch.uint8)  # [nb, kb, c, kk]; disjoint bits, sum == or
    full = n // N_BLOCK
    parts = [bytes_[:full].reshape(-1)]
    tail = n - full * N_BLOCK
    if tail:
        parts.append(bytes_[full, :, :tail].reshape(-1))
    return torch.cat(parts).view(packed_shape(n, k))


def unpack_ternary(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`.

    Args:
        packed: ``(out_features, 4 * ceil(in_features / 16))`` uint8.
    Returns:
        ``(out_features, in_features)`` int8 in {-1, 0, 1}.
    """
    n, k = out_features, in_features
    kb = (k + K_BLOCK - 1) // K_BLOCK
    flat = packed.reshape(-1)
    full = n // N_BLOCK
    tail = n - full * N_BLOCK
    head = flat[: full * kb * 32].view(full, kb, N_BLOCK, 4)
    if tail:
        last = flat[full * kb * 32:].view(1, kb, tail, 4)
        pad = torch.full((1, kb, N_BLOCK - tail, 4), 0x55, dtype=torch.uint8, device=packed.device)
        head = torch.cat([head, torch.cat([last, pad], dim=2)], dim=0)
    shifts = torch.arange(4, device=packed.device, dtype=torch.uint8) * 2
    codes = (head.unsqueeze(-1) >> shifts) & 3  # [nb, kb, c, kk, j]
    dense = codes.permute(0, 2, 1, 4, 3).reshape(-1, kb * K_BLOCK)  # [nb*8, kb*16]
    return (dense[:n, :k].to(torch.int8) - 1).contiguous()


def to_hf_bitnet(q: torch.Tensor) -> torch.Tensor:
    """Ternary ``(N, K)`` -> the transformers BitNet packed ``uint8 (ceil(N / 4), K)``."""
    n = q.shape[0]
    rows = (n + 3) // 4
    codes = torch.ones((rows * 4,) + tuple(q.shape[1:]), dtype=torch.uint8, device=q.device)
    codes[:n] = (q + 1).to(torch.uint8)
    codes = codes.view((4, rows) + tuple(q.shape[1:]))
    out = torch.zeros((rows,) + tuple(q.shape[1:]), dtype=torch.uint8, device=q.device)
    for i in range(4):
        out |= codes[i] << (2 * i)
    return out


def from_hf_bitnet(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The transformers BitNet packed ``uint8 (ceil(N / 4), K)`` -> ternary int8 ``(N, K)``."""
    parts = [((packed >> (2 * i)) & 3) for i in range(4)]
    dense = torch.cat(parts, dim=0)[:out_features]
    return dense.to(torch.int8) - 1
