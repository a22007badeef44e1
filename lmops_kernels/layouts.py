"""Packed ternary weight layouts: their names, and exact conversions between them.

Every layout is a ``uint8`` tensor of shape ``(N, 4 * KB)`` (``KB = ceil(K / 16)``) holding the
same bytes in a different order; a byte always packs four 2-bit codes ``q + 1`` of one output
column ``n``, bit pair ``j`` (bits ``2j..2j+1``) holding input ``k = 16 kb + 4 j + kk``, where
``(kb, kk)`` says which k-block and which of its four bytes the byte is. The layouts differ only in
where that byte of column ``n``, k-block ``kb``, byte ``kk`` sits:

- ``"tiled"`` (canonical: the ``state_dict`` form, what :func:`lmops_kernels.pack_ternary` returns
  and every backend can read; specified in :mod:`lmops_kernels.reference.packing`): n-blocks of 8
  columns (the last of width ``w = N - 8 nb`` when ``N`` is not a multiple of 8); flat byte
  ``nb * KB * 32 + kb * 4 * w + c * 4 + kk`` for ``n = 8 nb + c``. Per k-block, the 4-byte words
  of 8 columns are adjacent: what a SIMD CPU kernel broadcasting 4 activations wants.
- ``"rows"``: byte ``[n, 4 * kb + kk]``, i.e. flat byte ``n * 4 * KB + 4 * kb + kk``: each output
  column's words for k-blocks 0, 1, 2, ... contiguous in its own row. A GPU kernel then loads a
  ``(BLOCK_N, 4 * BLOCK_KB)`` weight tile as a plain 2-D block, 16 contiguous bytes per column and
  k-block, instead of 4-byte runs at a stride that depends on the n-block's width.

A layer keeps one copy in the layout its backend reads best (``dispatch.preferred_layout``) and
converts to ``"tiled"`` for its ``state_dict``, so checkpoints stay backend-neutral.
"""

from __future__ import annotations

import torch

LAYOUTS: tuple[str, ...] = ("tiled", "rows")
CANONICAL = "tiled"

_N_BLOCK = 8


def check_layout(name: object, arg: str = "layout") -> str:
    """``name`` if it is a known layout, else ``ValueError`` naming the argument ``arg``."""
    if name not in LAYOUTS:
        raise ValueError(f"{arg}: expected one of {LAYOUTS}, got {name!r}")
    return name  # type: ignore[return-value]


def require(layout: str, readable: tuple[str, ...], backend: str) -> None:
    """Raise ``ValueError`` unless ``backend`` reads ``layout`` (one of ``readable``). The ops convert
    to a layout the chosen backend lists before calling it, so failing here is a dispatcher bug."""
    if layout not in readable:
        raise ValueError(f"layout: the {backend} backend reads {readable} packed weights, got {layout!r}")


def _tiled_to_rows(packed: torch.Tensor) -> torch.Tensor:
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
    return torch.cat(parts).view(n, cols)


def _rows_to_tiled(packed: torch.Tensor) -> torch.Tensor:
    n, cols = packed.shape
    kb = cols // 4
    full = n // _N_BLOCK
    parts = [packed[: full * _N_BLOCK].reshape(full, _N_BLOCK, kb, 4).permute(0, 2, 1, 3).reshape(-1)]
    tail = n - full * _N_BLOCK
    if tail:
        parts.append(packed[full * _N_BLOCK:].reshape(tail, kb, 4).permute(1, 0, 2).reshape(-1))
    return torch.cat(parts).view(n, cols)


def convert(packed: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Reorder packed ternary weights from layout ``src`` to layout ``dst`` (exact, a byte permutation).

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
    tiled = packed if src == CANONICAL else _rows_to_tiled(packed)
    return tiled if dst == CANONICAL else _tiled_to_rows(tiled)
