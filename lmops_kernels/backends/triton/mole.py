"""Triton forward of ``lmops::mole_gate`` in rank space (algebra: :mod:`lmops_kernels.mole_rank`).

- ``z = x @ A^T`` with torch (cuBLAS on GPU; one GEMM of ``(T, K) x (K, N*r)``).
- ``_gate_kernel``: one program per block of tokens; for each expert, tiles of ``u_i = s_i z_i``
  against the expert's Gram matrix and gate projection (``tl.dot``) give the statistics and logits;
  then the masked softmax, the gates, and the mixing weights ``v_i = g_i u_i``. Nothing of size
  ``(T, N, O)`` exists.
- ``_mix_kernel``: ``y = v @ Wy`` (``(T, N*r) x (N*r, O)``), tiled ``tl.dot``, written in ``x``'s dtype.

Both dot products use ``input_precision="ieee"`` (float32), so GPU results match the CPU ones to
float32 rounding. The backward is the backend-independent one of :mod:`lmops_kernels.mole_rank`.
The kernels are decorated with ``triton.jit`` on first use, once per mode (interpreted or
compiled), because triton picks the mode when a function is decorated.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import mole_rank
from . import interpreting

_NORM_CODE = {"layernorm": 0, "rmsnorm": 1, "l2": 2}


def _gate_kernel(
    z_ptr, s_ptr, b1_ptr, gram_ptr, p_ptr, c_ptr, d_ptr, tau_ptr, keep_ptr, gates_ptr, v_ptr,
    T, N, R, n_features, eps,
    NORM: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    ra = tl.arange(0, BLOCK_R)
    ra_ok = ra < R
    nj = tl.arange(0, BLOCK_N)
    nj_ok = nj < N
    nr = N * R
    u_mask = row_ok[:, None] & ra_ok[None, :]

    s1 = tl.zeros((BLOCK_T,), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_T,), dtype=tl.float32)
    q = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for i in range(0, N):
        si = tl.load(s_ptr + i)
        u = tl.load(z_ptr + rows[:, None] * nr + i * R + ra[None, :], mask=u_mask, other=0.0) * si
        b1 = tl.load(b1_ptr + i * R + ra, mask=ra_ok, other=0.0)
        s1 += tl.sum(u * b1[None, :], axis=1)
        gram = tl.load(gram_ptr + i * R * R + ra[:, None] * R + ra[None, :], mask=ra_ok[:, None] & ra_ok[None, :], other=0.0)
        s2 += tl.sum(tl.dot(u, gram, input_precision="ieee") * u, axis=1)
        p = tl.load(p_ptr + (i * R + ra[:, None]) * N + nj[None, :], mask=ra_ok[:, None] & nj_ok[None, :], other=0.0)
        q += tl.dot(u, p, input_precision="ieee")

    if NORM == 0:  # layernorm
        mu = s1 / n_features
        sigma = tl.sqrt(tl.maximum(s2 / n_features - mu * mu, 0.0) + eps)
    elif NORM == 1:  # rmsnorm
        mu = s1 * 0.0
        sigma = tl.sqrt(s2 / n_features + eps)
    else:  # l2
        mu = s1 * 0.0
        sigma = tl.maximum(tl.sqrt(tl.maximum(s2, 0.0)), eps)
    c = tl.load(c_ptr + nj, mask=nj_ok, other=0.0)
    d = tl.load(d_ptr + nj, mask=nj_ok, other=0.0)
    tau = tl.load(tau_ptr)
    logits = (q - mu[:, None] * c[None, :]) / sigma[:, None] + d[None, :]
    keep = nj_ok
    if HAS_MASK:
        keep = keep & (tl.load(keep_ptr + nj, mask=nj_ok, other=0) != 0)
    a = tl.where(keep[None, :], logits / tau, float("-inf"))
    e = tl.exp(a - tl.max(a, axis=1)[:, None])
    e = tl.where(keep[None, :], e, 0.0)
    gates = e / tl.sum(e, axis=1)[:, None]
    tl.store(gates_ptr + rows[:, None] * N + nj[None, :], gates, mask=row_ok[:, None] & nj_ok[None, :])

    for i in range(0, N):
        gi = tl.sum(tl.where(nj[None, :] == i, gates, 0.0), axis=1)
        si = tl.load(s_ptr + i)
        u = tl.load(z_ptr + rows[:, None] * nr + i * R + ra[None, :], mask=u_mask, other=0.0) * si
        tl.store(v_ptr + rows[:, None] * nr + i * R + ra[None, :], gi[:, None] * u, mask=u_mask)


def _mix_kernel(v_ptr, w_ptr, y_ptr, T, KR, O, BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok = rows < T
    col_ok = cols < O
    acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
    for k0 in range(0, KR, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < KR
        v = tl.load(v_ptr + rows[:, None] * KR + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + ks[:, None] * O + cols[None, :], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.dot(v, w, input_precision="ieee")
    tl.store(y_ptr + rows[:, None] * O + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_KERNELS: dict[bool, tuple] = {}


def _kernels() -> tuple:
    mode = interpreting()
    k = _KERNELS.get(mode)
    if k is None:
        k = _KERNELS[mode] = (triton.jit(_gate_kernel), triton.jit(_mix_kernel))
    return k


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def mole_gate(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps):
    """``(y (T, O) x.dtype, gates (T, N) float32)``; arguments as :func:`lmops_kernels.mole_gate` with ``x`` 2-D."""
    gate_k, mix_k = _kernels()
    ex, gt = mole_rank.cached_tensors(lora_A, lora_B, gate_weight, norm_weight, norm_bias)
    t = x.shape[0]
    n, r = lora_A.shape[0], lora_A.shape[1]
    o = lora_B.shape[1]
    gates = torch.empty((t, n), dtype=torch.float32, device=x.device)
    y = torch.empty((t, o), dtype=x.dtype, device=x.device)
    if t == 0:
        return y, gates
    z = torch.mm(x.to(torch.float32), ex.a.T)  # (T, N*r), contiguous
    v = torch.empty_like(z)
    s32 = scaling.to(torch.float32).contiguous()
    tau = temperature.to(torch.float32).reshape(1)
    keep = expert_mask.to(torch.int8) if expert_mask is not None else gates
    block_t = 16
    gate_k[(triton.cdiv(t, block_t),)](
        z, s32, ex.b1, ex.gram, gt.p, gt.c, gt.d, tau, keep, gates, v,
        t, n, r, float(n * o), float(eps),
        NORM=_NORM_CODE[norm], HAS_MASK=expert_mask is not None,
        BLOCK_T=block_t, BLOCK_R=_block(r), BLOCK_N=_block(n),
    )
    block_t, block_o, block_k = (16, 32, 16) if x.device.type == "cpu" else (64, 64, 32)
    mix_k[(triton.cdiv(t, block_t), triton.cdiv(o, block_o))](
        v, ex.wy, y, t, n * r, o, BLOCK_T=block_t, BLOCK_O=block_o, BLOCK_K=block_k
    )
    return y, gates
