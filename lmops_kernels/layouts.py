"""Packed ternary weight layouts: their names, and exact conversions between them.

Every layout is a ``uint8`` tensor of shape ``(N, 4 * KB)`` (``KB = ceil(K / 16)``) holding the
same 2-bit codes ``q + 1`` (0 -> -1, 1 -> 0, 2 -> +1), four per byte, bit pair ``j`` being bits
``2j..2j+1``; the ``16 * KB - K`` positions ``k >= K`` hold code 1 (a zero weight). A byte always
packs four weights of one output column ``n``; the layouts differ in which four ``k`` and where
the byte sits:

- ``"tiled"`` (canonical: the ``state_dict`` form, what :func:`lmops_kernels.pack_ternary` returns
  and every backend can read; specified in :mod:`lmops_kernels.reference.packing`): bit pair ``j``
  of byte ``kk`` of k-block ``kb`` holds ``k = 16 kb + 4 j + kk``; n-blocks of 8 columns (the last
  of width ``w = N - 8 nb`` when ``N`` is not a multiple of 8); flat byte
  ``nb * KB * 32 + kb * 4 * w + c * 4 + kk`` for ``n = 8 nb + c``. Per k-block, the 4-byte words
  of 8 columns are adjacent: what a SIMD CPU kernel broadcasting 4 activations wants.
- ``"planes"``: byte ``[n, b]`` (``b < 4 KB``), i.e. flat byte ``n * 4 KB + b``, holds in bit pair
  ``j`` the weight ``(n, k = j * 4 KB + b)``: the ``16 KB`` inputs split into four contiguous
  "planes" of ``4 KB``, plane ``j`` in bit pair ``j`` (the padding ``k >= K`` sits at the end of
  plane 3, and of lower planes when ``K <= 12 KB``). A GPU kernel loads a ``(BLOCK_N, BLOCK_B)``
  weight tile at bytes ``b0 .. b0 + BLOCK_B - 1`` as a plain 2-D block (contiguous per column),
  and the activations of bit pair ``j`` are the contiguous range ``x[:, j * 4 KB + b0 ...]``: both
  operands are block loads, not the 4-byte gathers every 16 bytes that the tiled ``k`` order needs.

Conversions go through the codes ``(N, 16 KB)`` (unpack every bit pair, repack in the other
order): not a byte permutation, since bit pairs move between bytes, but a bijection on the bytes,
so ``convert`` is exact in both directions whatever the bytes hold (padding included).

A layer keeps one copy in the layout its backend reads best (``dispatch.preferred_layout``) and
converts to ``"tiled"`` for its ``state_dict``, so checkpoints stay backend-neutral.
"""

from __future__ import annotations

import torch

from .reference.packing import N_BLOCK as _N_BLOCK

LAYOUTS: tuple[str, ...] = ("tiled", "planes")
CANONICAL = "tiled"


def check_layout(name: object, arg: str = "layout") -> str:
    """``name`` if it is a known layout, else ``ValueError`` naming the argument ``arg``."""
    if name not in LAYOUTS:
        raise ValueError(f"{arg}: expected one of {LAYOUTS}, got {name!r}")
    return name  # type: ignore[return-value]


def _tiled_to_columns(packed: torch.Tensor) -> torch.Tensor:
    """Tiled bytes -> ``(N, KB, 4)``: byte ``[n, kb, kk]`` of the tiled layout (a byte permutation)."""
    n, cols = packed.shape
    kb = cols // 4
    full = n // _N_BLOCK
    flat = packed.reshape(-1)
    # full n-blocks: [nb, kb, c, kk] -> [nb, c, kb, kk]
    parts = [flat[: full * kb * 32].reshape(full, kb, _N_BLOCK, 4).permute(0, 2, 1, 3).reshape(-1)]
    tail = n - full * _N_BLOCK
    if tail:
        # the narrow last n-block: [kb, c, kk] -> [c, kb, kk]
        parts.append(flat[full * kb * 32:].reshape(kb, tail, 4).permute(1, 0, 2).reshape(-1))
    return torch.cat(parts).view(n, kb, 4)


def _columns_to_tiled(columns: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_tiled_to_columns`: ``(N, KB, 4)`` -> tiled ``(N, 4 KB)``."""
    n, kb, _ = columns.shape
    full = n // _N_BLOCK
    parts = [columns[: full * _N_BLOCK].reshape(full, _N_BLOCK, kb, 4).permute(0, 2, 1, 3).reshape(-1)]
    tail = n - full * _N_BLOCK
    if tail:
        parts.append(columns[full * _N_BLOCK:].permute(1, 0, 2).reshape(-1))
    return torch.cat(parts).view(n, 4 * kb)


def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(4, dtype=torch.uint8, device=device) * 2  # bit pair j at bits 2j..2j+1


def _tiled_to_planes(packed: torch.Tensor) -> torch.Tensor:
    n, cols = packed.shape
    columns = _tiled_to_columns(packed)  # [n, kb, kk]
    codes = (columns.unsqueeze(-1) >> _shifts(packed.device)) & 3  # [n, kb, kk, j]: k = 16 kb + 4 j + kk
    codes = codes.permute(0, 1, 3, 2).reshape(n, 4, cols)  # [n, k] viewed as [n, j', b]: k = j' * 4 KB + b
    # disjoint bit pairs: the sum is the bitwise or
    return (codes << _shifts(packed.device).view(4, 1)).sum(dim=1, dtype=torch.uint8)


def _planes_to_tiled(packed: torch.Tensor) -> torch.Tensor:
    n, cols = packed.shape
    kb = cols // 4
    codes = (packed.unsqueeze(1) >> _shifts(packed.device).view(4, 1)) & 3  # [n, j', b]: k = j' * 4 KB + b
    codes = codes.reshape(n, kb, 4, 4).permute(0, 1, 3, 2)  # [n, k] viewed as [n, kb, j, kk] -> [n, kb, kk, j]
    columns = (codes << _shifts(packed.device)).sum(dim=-1, dtype=torch.uint8)  # [n, kb, kk]
    return _columns_to_tiled(columns)


def convert(packed: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Rewrite packed ternary weights from layout ``src`` to layout ``dst`` (exact; a bijection on bytes).

    Args:
        packed: ``(N, 4 * KB)`` uint8 in layout ``src``, on any device.
        src, dst: names in :data:`LAYOUTS`.
    Returns:
        ``packed`` itself when ``src == dst``; else a new contiguous ``(N, 4 * KB)`` uint8 tensor on
        ``packed``'s device, in layout ``dst``.
    """
    check_layout(src, "src")
    check_layout(dst, "dst")
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed: expected a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] % 4:
        raise ValueError(
            f"packed: expected a uint8 tensor of shape (N, 4 * KB), got {packed.dtype} {tuple(packed.shape)}"
        )
    if src == dst:
        return packed
    # every non-canonical layout is defined relative to the canonical one: go through it
    tiled = packed if src == CANONICAL else _planes_to_tiled(packed)
    return tiled if dst == CANONICAL else _tiled_to_planes(tiled)
