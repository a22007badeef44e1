"""Triton kernels of the BitNet b1.58 W2A8 ops: ``quantize_activation_absmax``,
``ternary_matmul_int`` and ``ternary_linear`` (backend ``triton``; registered in ``__init__.py``).

- ``_absmax_quant_kernel``: one program per row; pass 1 over ``K`` in blocks finds ``max |x|`` and
  whether the row holds NaN/Inf, pass 2 writes ``q = clamp(rint(x * s))`` (round half to even) and,
  when asked, zeros up to the row stride (``K`` padded to 16 for the matmul).
- ``_w2a8_gemv_kernel`` (decode, ``M <= 16``): one program per block of output columns and k-split;
  each byte of the packed weights is loaded once, its four 2-bit codes decoded with shift/mask in
  registers and multiplied with the matching int8 activations; exact int32 sums. Split-K
  (``SPLIT_K > 1``, grid ``(cdiv(N, BLOCK_N), SPLIT_K)``): k-split ``s`` covers a contiguous range
  of whole ``BLOCK_KB`` tiles and ``tl.atomic_add``s its int32 partial sums into a zeroed int32
  ``(M, N)`` buffer (integer sums: exact, and the same whatever order the atomics land in), then
  ``_splitk_epilogue_kernel`` applies the float epilogue; with ``SPLIT_K == 1`` the epilogue is
  fused. Decode is bandwidth-bound and ``cdiv(N, BLOCK_N)`` programs alone leave most SMs idle
  (64 programs for ``N = 4096`` on a 132-SM H100): see :func:`_gemv_split_k` for the choice.
- ``_w2a8_gemm_kernel`` (prefill): one program per ``(BLOCK_M, BLOCK_N)`` tile; the weight tile is
  decoded to int8 in registers and fed to ``tl.dot(..., out_dtype=tl.int32)``.

Both matmul kernels read two packed layouts (:mod:`lmops_kernels.layouts`), chosen by the
``LAYOUT`` constexpr; a tile is ``4 * BLOCK_KB`` bytes per column either way.

- ``LAYOUT == 1`` (``"planes"``, preferred): byte ``b`` of column ``n`` is at ``n * 4 KB + b`` and
  its bit pair ``j`` holds ``k = j * 4 KB + b``. The byte tile ``b0 .. b0 + 4 BLOCK_KB - 1`` is a
  plain 2-D block, and bit pair ``j`` of it needs the contiguous activations
  ``x[:, j * 4 KB + b0 ...]``: both operands are block loads.
- ``LAYOUT == 0`` (canonical ``"tiled"``, :mod:`lmops_kernels.reference.packing`): for ``n`` in
  n-block ``nb = n // 8`` of width ``w = min(8, N - 8 nb)``, the bytes ``c * 4 + kk``
  (``c = n % 8``) of k-block ``kb`` start at ``nb * KB * 32 + kb * 4 * w``, bit pair ``j`` holding
  ``k = 16 kb + 4 j + kk``: a tile of ``BLOCK_KB`` k-blocks (column ``4 kb' + kk``) is loaded from
  4-byte runs, and the activations of bit pair ``j`` are gathered at ``16 kb + 4 j + kk``.

In both, the four bit-pair slices are summed (integer sums: the order does not matter).

Epilogue (fused, or ``_splitk_epilogue_kernel`` after a split GEMV; float32, same order as the
reference): ``y = float(acc) * (gamma / s) (+ bias)``, cast to ``x``'s dtype. The division is
``div_rn`` (IEEE) and FMA contraction is disabled (``enable_fp_fusion=False``) so GPU outputs equal
the reference bit for bit in float32.

Kernels are decorated with ``triton.jit`` / ``triton.autotune`` on first use, once per mode
(interpreted or compiled), as in :mod:`.mole`; under the interpreter each autotuner has one config.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import interpreting

GEMV_MAX_M = 16


def _absmax_quant_kernel(
    x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, K_STORE, QP: tl.constexpr, QN: tl.constexpr, BLOCK_K: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    bad = tl.zeros((BLOCK_K,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs
        v = tl.load(x_row + ks, mask=ks < K, other=0.0).to(tl.float32)
        a = tl.abs(v)
        bad += ((v != v) | (a == float("inf"))).to(tl.int32)
        amax = tl.maximum(amax, tl.where(a == a, a, 0.0))
    absmax = tl.maximum(tl.max(amax, axis=0), 1e-5)
    finite = tl.sum(bad, axis=0) == 0
    # reciprocal, then multiply: the reference's (and torch's ``127 / absmax``) float32 steps
    scale = tl.math.div_rn(tl.full((), 1.0, tl.float32), absmax) * QP
    tl.store(s_ptr + row, tl.where(finite, scale, float("nan")))
    q_row = q_ptr + row * stride_q
    for k0 in range(0, K_STORE, BLOCK_K):
        ks = k0 + offs
        v = tl.load(x_row + ks, mask=ks < K, other=0.0).to(tl.float32) * scale
        # round half to even, exactly: r = floor(v), d = v - r is exact for |v| < 2^23
        r = tl.floor(v)
        d = v - r
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        r = tl.where((d > 0.5) | ((d == 0.5) & odd), r + 1.0, r)
        r = tl.minimum(tl.maximum(r, QN), QP)
        r = tl.where(finite & (ks < K), r, 0.0)  # NaN rows and the padding hold 0
        tl.store(q_row + ks, r.to(tl.int8), mask=ks < K_STORE)


def _w2a8_gemv_kernel(
    x_ptr, w_ptr, out_ptr, s_ptr, gamma_ptr, bias_ptr,
    M, N, K, KB, stride_x, M_BUCKET,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, LAYOUT: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
):
    # SPLIT_K > 1: out_ptr is a zeroed int32 (M, N) buffer that the k-splits add into
    tl.static_assert(SPLIT_K == 1 or not EPILOGUE, "a split GEMV leaves the epilogue to _splitk_epilogue_kernel")
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_rows = x_ptr + rows[:, None] * stride_x
    KP = KB * 4  # bytes per column
    if LAYOUT == 1:
        col_base = cols.to(tl.int64) * KP
    else:
        nb = cols // 8
        width = tl.minimum(N - nb * 8, 8)
        col_base = nb.to(tl.int64) * KB * 32 + (cols % 8) * 4  # byte of (column, k-block 0, kk 0)
    # this program's k-split: whole tiles of BLOCK_KB k-blocks, the last split possibly shorter or empty
    kb_split = tl.cdiv(tl.cdiv(KB, BLOCK_KB), SPLIT_K) * BLOCK_KB
    kb_lo = tl.program_id(1) * kb_split
    kb_hi = tl.minimum(kb_lo + kb_split, KB)
    t = tl.arange(0, 4 * BLOCK_KB)  # 4 kb' + kk (tiled) or b - b0 (planes)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kb0 in range(kb_lo, kb_hi, BLOCK_KB):
        if LAYOUT == 1:
            b = kb0 * 4 + t
            byte = tl.load(
                w_ptr + col_base[:, None] + b[None, :], mask=col_ok[:, None] & (b < KP)[None, :], other=0x55
            ).to(tl.int32)
        else:
            kb = kb0 + t // 4
            kk = t % 4
            w_off = col_base[:, None] + kb[None, :] * (4 * width[:, None]) + kk[None, :]
            byte = tl.load(w_ptr + w_off, mask=col_ok[:, None] & (kb < KB)[None, :], other=0x55).to(tl.int32)
        for j in tl.static_range(4):
            wj = ((byte >> (2 * j)) & 3) - 1  # (BLOCK_N, 4 BLOCK_KB)
            if LAYOUT == 1:
                ks = j * KP + b  # contiguous
            else:
                ks = kb * 16 + 4 * j + kk
            xj = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & (ks < K)[None, :], other=0).to(tl.int32)
            acc += tl.sum(xj[:, None, :] * wj[None, :, :], axis=2)
    out_mask = row_ok[:, None] & col_ok[None, :]
    out_off = rows[:, None] * N + cols[None, :]
    if SPLIT_K > 1:
        # integer atomics: exact and order-independent; the kernel boundary orders them before the epilogue
        tl.atomic_add(out_ptr + out_off, acc, mask=out_mask, sem="relaxed")
    elif EPILOGUE:
        # y = float(acc) * (gamma / s) (+ bias), float32, the reference's order
        s = tl.load(s_ptr + rows, mask=row_ok, other=1.0)
        r = tl.math.div_rn(tl.load(gamma_ptr).to(tl.float32) + tl.zeros_like(s), s)
        y = acc.to(tl.float32) * r[:, None]
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(out_ptr + out_off, acc, mask=out_mask)


def _splitk_epilogue_kernel(
    acc_ptr, out_ptr, s_ptr, gamma_ptr, bias_ptr, M, N,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # the fused epilogue of the matmul kernels, same operations in the same order, on the int32 sums
    # of a split GEMV (M <= 16: one program holds every row)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    out_mask = row_ok[:, None] & col_ok[None, :]
    out_off = rows[:, None] * N + cols[None, :]
    acc = tl.load(acc_ptr + out_off, mask=out_mask, other=0)
    s = tl.load(s_ptr + rows, mask=row_ok, other=1.0)
    r = tl.math.div_rn(tl.load(gamma_ptr).to(tl.float32) + tl.zeros_like(s), s)
    y = acc.to(tl.float32) * r[:, None]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=out_mask)


def _w2a8_gemm_kernel(
    x_ptr, w_ptr, out_ptr, s_ptr, gamma_ptr, bias_ptr,
    M, N, K, KB, stride_x, M_BUCKET,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, LAYOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    KP = KB * 4  # bytes per column
    if LAYOUT == 1:
        col_base = cols.to(tl.int64) * KP
    else:
        nb = cols // 8
        width = tl.minimum(N - nb * 8, 8)
        col_base = nb.to(tl.int64) * KB * 32 + (cols % 8) * 4
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    t = tl.arange(0, 4 * BLOCK_KB)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kb0 in range(0, KB, BLOCK_KB):
        # (4 BLOCK_KB, BLOCK_N): the transposed byte tile, ready as the right operand of tl.dot
        if LAYOUT == 1:
            b = kb0 * 4 + t
            byte = tl.load(w_ptr + col_base[None, :] + b[:, None], mask=(b < KP)[:, None] & col_ok[None, :], other=0x55)
        else:
            kb = kb0 + t // 4
            kk = t % 4
            w_off = col_base[None, :] + kb[:, None] * (4 * width[None, :]) + kk[:, None]
            byte = tl.load(w_ptr + w_off, mask=(kb < KB)[:, None] & col_ok[None, :], other=0x55)
        for j in tl.static_range(4):
            wj = (((byte >> (2 * j)) & 3).to(tl.int8) - 1).to(tl.int8)
            if LAYOUT == 1:
                ks = j * KP + b  # contiguous: a plain 2-D block of x
            else:
                ks = kb * 16 + 4 * j + kk
            xj = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & (ks < K)[None, :], other=0)
            acc += tl.dot(xj, wj, out_dtype=tl.int32)
    out_mask = row_ok[:, None] & col_ok[None, :]
    if EPILOGUE:
        # y = float(acc) * (gamma / s) (+ bias), float32, the reference's order
        s = tl.load(s_ptr + rows, mask=row_ok, other=1.0)
        r = tl.math.div_rn(tl.load(gamma_ptr).to(tl.float32) + tl.zeros_like(s), s)
        y = acc.to(tl.float32) * r[:, None]
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None] * N + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc, mask=out_mask)


# ----------------------------------------------------------------------------------------------
# autotune configs (keyed on the M bucket, N and K, and the GEMV's split); one config under the
# interpreter
# ----------------------------------------------------------------------------------------------

_KEY = ["M_BUCKET", "N", "K"]
_GEMV_KEY = _KEY + ["SPLIT_K"]


def _gemv_configs(interp: bool) -> list:
    # SPLIT_K is not a tuning parameter: the launcher picks it (_gemv_split_k) and passes it in
    if interp:
        return [triton.Config({"BLOCK_N": 16, "BLOCK_KB": 2}, num_warps=1)]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_KB": bkb}, num_warps=nw, num_stages=ns)
        for bn, bkb, nw, ns in (
            (16, 8, 4, 3), (32, 4, 4, 3), (32, 8, 4, 3), (64, 4, 4, 3), (64, 2, 4, 4), (16, 16, 8, 2), (128, 2, 4, 3)
        )
    ]


def _gemm_configs(interp: bool) -> list:
    # each tl.dot has K = 4 * BLOCK_KB; int8 dots on NVIDIA need K >= 32, so BLOCK_KB >= 8 there
    if interp:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_KB": 8}, num_warps=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_KB": bkb}, num_warps=nw, num_stages=ns)
        # tiles above 64x64 (and BLOCK_KB 16) get 8 warps: with 4 their weight decode spills registers
        # on sm_90 (ptxas -v; tests/kernels/test_triton_compile.py holds them to it)
        for bm, bn, bkb, nw, ns in (
            (64, 64, 8, 4, 3), (64, 128, 8, 8, 3), (128, 64, 8, 8, 3), (128, 128, 8, 8, 3),
            (64, 64, 16, 8, 3), (32, 64, 8, 4, 4),
        )
    ]


_KERNELS: dict[bool, tuple] = {}


def _kernels() -> tuple:
    mode = interpreting()
    k = _KERNELS.get(mode)
    if k is None:
        quant = triton.jit(_absmax_quant_kernel)
        # a split GEMV adds into out_ptr: the autotuner zeroes it before every benchmark run (and before
        # the real run after tuning), else the timing runs' sums would pile up in the result
        gemv = triton.autotune(configs=_gemv_configs(mode), key=_GEMV_KEY, reset_to_zero=["out_ptr"])(
            triton.jit(_w2a8_gemv_kernel)
        )
        gemm = triton.autotune(configs=_gemm_configs(mode), key=_KEY)(triton.jit(_w2a8_gemm_kernel))
        k = _KERNELS[mode] = (quant, gemv, gemm, triton.jit(_splitk_epilogue_kernel))
    return k


# Split-K of the decode GEMV. Chosen here by a rule, not by the autotuner: the launcher must know
# the split before the launch (a split needs a zeroed int32 buffer and the separate epilogue kernel,
# an unsplit GEMV neither), and an autotuned split would also be timed without that epilogue launch
# and memset. The rule aims at >= 4 programs per SM counting column blocks of 64 (the widest
# common BLOCK_N: a narrower autotuned one only adds programs), doubling the split up to 8 while
# every k-split keeps >= max(32, 4 M) k-blocks (>= 512 inputs): enough loop iterations to pipeline,
# and the int32 atomics (4 M N SPLIT_K bytes) stay small next to the weights (N K / 4 bytes). So
# K < 1024 stays unsplit; N = K = 4096 on a 132-SM H100 gets SPLIT_K = 8 at M = 1, 4 at M = 16.
# Not measured on a GPU yet: the constants are a starting point for the benchmarks.
_SPLIT_K_MAX = 8
_SPLIT_K_BLOCK_N = 64
_PROGRAMS_PER_SM = 4


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _gemv_split_k(m: int, n: int, kb: int, device: torch.device) -> int:
    """``SPLIT_K`` of the decode GEMV for ``M = m`` rows, ``N = n`` columns and ``KB = kb`` k-blocks
    (host-only arithmetic: no sync, safe under CUDA-graph capture). Under the interpreter always 2,
    so CPU tests run the split path."""
    if interpreting():
        return 2
    index = device.index if device.index is not None else torch.cuda.current_device()
    target = _PROGRAMS_PER_SM * _sm_count(index)
    blocks = triton.cdiv(n, _SPLIT_K_BLOCK_N)
    split = 1
    while split < _SPLIT_K_MAX and blocks * split < target and kb // (2 * split) >= max(32, 4 * m):
        split *= 2
    return split


def _m_bucket(m: int) -> int:
    return 1 << max(0, (m - 1).bit_length()) if m <= 128 else 256 if m <= 256 else 512 if m <= 512 else 1024


def _fast_options() -> dict:
    # float32 equality with the reference: no FMA contraction of ``acc * r + bias`` on the GPU
    return {} if interpreting() else {"enable_fp_fusion": False}


# ----------------------------------------------------------------------------------------------
# host launchers (the implementations registered with the dispatcher)
# ----------------------------------------------------------------------------------------------


def _quantize_rows(x2: torch.Tensor, k_store: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x2 (M, K)`` (unit stride in K) -> ``q int8 (M, k_store)`` (zeros past K), ``s float32 (M,)``."""
    quant = _kernels()[0]
    m, k = x2.shape
    q = torch.empty((m, k_store), dtype=torch.int8, device=x2.device)
    s = torch.empty((m,), dtype=torch.float32, device=x2.device)
    if m:
        block_k = min(1024, triton.next_power_of_2(max(k_store, 16)))
        if interpreting():
            block_k = min(block_k, 128)
        quant[(m,)](
            x2, q, s, k, x2.stride(0), k_store, k_store,
            QP=float(2 ** (bits - 1) - 1), QN=float(-(2 ** (bits - 1))), BLOCK_K=block_k,
            **_fast_options(),
        )
    return q, s


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def quantize_activation_absmax(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`lmops_kernels.quantize_activation_absmax`: ``(q int8 x.shape, scale float32 (..., 1))``."""
    q, s = _quantize_rows(_rows(x), x.shape[-1], bits)
    return q.view(x.shape), s.view(*x.shape[:-1], 1)


_LAYOUT_IDS = {"tiled": 0, "planes": 1}  # the kernels' LAYOUT constexpr


def _matmul(x_q, packed, out, s, gamma, bias, k, layout: str) -> None:
    _, gemv, gemm, splitk_epilogue = _kernels()
    m = x_q.shape[0]
    n = packed.shape[0]
    if m == 0:
        return
    kb = packed.shape[1] // 4
    epilogue = s is not None
    has_bias = bias is not None
    dummy = out
    opts = _fast_options()
    opts["LAYOUT"] = _LAYOUT_IDS[layout]
    if m <= GEMV_MAX_M:
        block_m = max(1, triton.next_power_of_2(m))
        split = _gemv_split_k(m, n, kb, x_q.device)
        if split == 1:
            target = out
        elif epilogue:
            target = torch.zeros((m, n), dtype=torch.int32, device=out.device)  # the k-splits add into it
        else:
            target = out.zero_()  # int32 sums: add straight into the result
        gemv[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])](
            x_q, packed, target,
            s if epilogue else dummy, gamma if epilogue else dummy, bias if has_bias else dummy,
            m, n, k, kb, x_q.stride(0), _m_bucket(m),
            EPILOGUE=epilogue and split == 1, HAS_BIAS=has_bias and split == 1, SPLIT_K=split, BLOCK_M=block_m,
            **opts,
        )
        if epilogue and split > 1:
            block_n = 64 if interpreting() else 256
            splitk_epilogue[(triton.cdiv(n, block_n),)](
                target, out, s, gamma, bias if has_bias else dummy, m, n,
                HAS_BIAS=has_bias, BLOCK_M=block_m, BLOCK_N=block_n, **_fast_options(),
            )
    else:
        gemm[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))](
            x_q, packed, out,
            s if epilogue else dummy, gamma if epilogue else dummy, bias if has_bias else dummy,
            m, n, k, kb, x_q.stride(0), _m_bucket(m),
            EPILOGUE=epilogue, HAS_BIAS=has_bias, **opts,
        )


def ternary_matmul_int(x_q: torch.Tensor, packed: torch.Tensor, layout: str = "tiled") -> torch.Tensor:
    """As :func:`lmops_kernels.ternary_matmul_int`: ``x_q (M, K) int8`` -> ``(M, N) int32``, exact;
    ``packed`` in layout ``"planes"`` or ``"tiled"``."""
    x_q = x_q if x_q.stride(-1) == 1 else x_q.contiguous()
    packed = packed.contiguous()
    out = torch.empty((x_q.shape[0], packed.shape[0]), dtype=torch.int32, device=x_q.device)
    _matmul(x_q, packed, out, None, None, None, x_q.shape[1], layout)
    return out


def ternary_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    layout: str = "tiled",
) -> torch.Tensor:
    """As :func:`lmops_kernels.ternary_linear`: ``(..., K)`` -> ``(..., N)`` in ``x``'s dtype;
    ``packed`` in layout ``"planes"`` or ``"tiled"``."""
    x2 = _rows(x)
    k = x2.shape[1]
    packed = packed.contiguous()
    n = packed.shape[0]
    q, s = _quantize_rows(x2, 16 * ((k + 15) // 16), 8)  # K padded to 16 with zeros
    y = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
    gamma = weight_scale.reshape(1)
    if bias is not None:
        bias = bias.contiguous()
    _matmul(q, packed, y, s, gamma, bias, q.shape[1], layout)
    return y.view(*x.shape[:-1], n)
