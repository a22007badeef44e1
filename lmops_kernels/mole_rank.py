"""The MoLE gate in rank space: the algebra behind every fast ``mole_gate`` backend, and its backward.

The specification (:mod:`lmops_kernels.reference.mole`) materializes the expert outputs
``E_i = s_i z_i B_i^T`` with ``z_i = x A_i^T`` (``(T, r)``), ``(T, N, O)`` floats in all. Everything
the gate needs of them is a small contraction in rank space (``u_i = s_i z_i``, per token):

    S1  = sum_f C_f     = sum_i u_i . b1_i,          b1_i = B_i^T 1                        (r,)
    S2  = sum_f C_f^2   = sum_i u_i^T Gram_i u_i,    Gram_i = B_i^T B_i                    (r, r)
    Q_j = sum_f C_f w_f W_jf = sum_i u_i . P_ij,     P_ij = B_i^T (w_i * W_{j,i})          (r,)
    c_j = sum_f w_f W_jf,   d_j = sum_f b_f W_jf                                          (N,)

with ``W`` the gate weight, ``w``/``b`` the norm weight/bias (1/0 when absent). Then, with
``D = N*O``:

- layernorm: ``mu = S1/D``, ``sigma = sqrt(S2/D - mu^2 + eps)``, ``logits = (Q - mu c)/sigma + d``
- rmsnorm:   ``mu = 0``,    ``sigma = sqrt(S2/D + eps)``,         ``logits = Q/sigma + d``
- l2:        ``mu = 0``,    ``sigma = max(sqrt(S2), eps)``,       ``logits = Q/sigma + d``

and ``y = sum_i g_i E_i = [g_0 u_0 | ... | g_{N-1} u_{N-1}] @ Wy`` with ``Wy`` ``(N*r, O)`` the
experts' ``B_i^T`` stacked. ``P``, ``Gram``, ``b1``, ``c``, ``d``, ``Wy`` depend on weights only;
:func:`cached_tensors` gives them, computed once per weight set. The masked renormalization equals a softmax over
the kept experts alone (masked logits set to -inf), which is how the backends compute it.

Caveat (float32): ``S2/D - mu^2`` cancels when ``|mu| >> sigma`` (features far from zero-mean);
LoRA outputs are close to zero-mean, and the native kernel accumulates the statistics in float64.

:func:`backward` is the hand-derived gradient in the same rank space (derivation in its body); it is
plain torch, so it runs on every device and under ``torch.compile``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORMS = ("layernorm", "rmsnorm", "l2")


@dataclass(frozen=True)
class ExpertTensors:
    """Weight-only tensors from ``lora_A``/``lora_B``, float32 (or float64), contiguous."""

    a: torch.Tensor  # (N*r, K): A_i stacked, for z = x @ a^T
    wy: torch.Tensor  # (N*r, O): B_i^T stacked, for y = v @ wy
    b1: torch.Tensor  # (N*r,): B_i^T 1
    gram: torch.Tensor  # (N, r, r): B_i^T B_i


@dataclass(frozen=True)
class GateTensors:
    """Weight-only tensors from ``lora_B``, the gate and the norm affine, float32 (or float64)."""

    p: torch.Tensor  # (N*r, N): P[(i, a), j] = sum_o B_i[o, a] w[i, o] W[j, (i, o)]
    c: torch.Tensor  # (N,): W @ w
    d: torch.Tensor  # (N,): W @ b (zeros without a bias)


def expert_tensors(lora_A: torch.Tensor, lora_B: torch.Tensor, dtype: torch.dtype = torch.float32) -> ExpertTensors:
    n, r, k = lora_A.shape
    o = lora_B.shape[1]
    a = lora_A.to(dtype).reshape(n * r, k).contiguous()
    b = lora_B.to(dtype)
    bt = b.transpose(1, 2)  # (N, r, O)
    return ExpertTensors(
        a=a,
        wy=bt.reshape(n * r, o).contiguous(),
        b1=b.sum(dim=1).reshape(n * r).contiguous(),
        gram=torch.bmm(bt, b).contiguous(),
    )


def gate_tensors(
    lora_B: torch.Tensor,
    gate_weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    dtype: torch.dtype = torch.float32,
) -> GateTensors:
    n, o, r = lora_B.shape
    b = lora_B.to(dtype)
    gw = gate_weight.to(dtype)
    if norm_weight is not None:
        w = norm_weight.to(dtype)
        b = b * w.view(n, o, 1)
        c = gw @ w
    else:
        c = gw.sum(dim=1)
    # (N_i, r, O) @ (N_i, O, N_j) -> (N_i, r, N_j)
    p = torch.bmm(b.transpose(1, 2), gw.view(n, n, o).permute(1, 2, 0))
    d = gw @ norm_bias.to(dtype) if norm_bias is not None else torch.zeros(n, dtype=dtype, device=gw.device)
    return GateTensors(p=p.reshape(n * r, n).contiguous(), c=c.contiguous(), d=d.contiguous())


# ---------------------------------------------------------------------------------------------
# the weight-only tensors of a call: from the native extension's cache (csrc/mole_weights.cpp, shared
# with the CPU kernel), or computed on the spot where the extension is missing
# ---------------------------------------------------------------------------------------------


def cached_tensors(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    gate_weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
) -> tuple[ExpertTensors, GateTensors]:
    """:func:`expert_tensors` and :func:`gate_tensors` in float32. With the native extension they are
    computed once per weight set (the op ``lmops::mole_gate_weights``: valid while the tensors are alive
    and their version counters unchanged; writes through ``.data`` are not seen; inference tensors are
    not cached); without it, on every call."""
    from . import _native

    if _native.available():
        wy, b1, gram, p, c, d = torch.ops.lmops.mole_gate_weights(lora_A, lora_B, gate_weight, norm_weight, norm_bias)
        n, r, k = lora_A.shape
        a = lora_A.detach().to(torch.float32).reshape(n * r, k).contiguous()  # a view for float32 experts
        return ExpertTensors(a, wy, b1, gram), GateTensors(p, c, d)
    with torch.no_grad():
        return (
            expert_tensors(lora_A.detach(), lora_B.detach()),
            gate_tensors(
                lora_B.detach(),
                gate_weight.detach(),
                None if norm_weight is None else norm_weight.detach(),
                None if norm_bias is None else norm_bias.detach(),
            ),
        )


# ---------------------------------------------------------------------------------------------
# forward and backward in rank space, plain torch
# ---------------------------------------------------------------------------------------------


@dataclass
class _Stats:
    u: torch.Tensor  # (T, N, r)  s_i z_i
    mu: torch.Tensor  # (T,)
    sigma: torch.Tensor  # (T,)
    logits: torch.Tensor  # (T, N), before the temperature
    rms: torch.Tensor  # (T,) sqrt(S2) (only l2 uses it)


def _stats(z, scaling, ex: ExpertTensors, gt: GateTensors, norm: str, eps: float, n_features: int) -> _Stats:
    t = z.shape[0]
    n = scaling.shape[0]
    u = z.view(t, n, -1) * scaling.to(z.dtype).view(1, n, 1)
    uf = u.reshape(t, -1)
    s1 = uf @ ex.b1
    ut = u.transpose(0, 1)  # (N, T, r)
    s2 = (torch.bmm(ut, ex.gram) * ut).sum(dim=(0, 2))
    q = uf @ gt.p  # (T, N)
    rms = torch.sqrt(s2.clamp_min(0))
    if norm == "layernorm":
        mu = s1 / n_features
        sigma = torch.sqrt((s2 / n_features - mu * mu).clamp_min(0) + eps)
        logits = (q - mu[:, None] * gt.c) / sigma[:, None] + gt.d
    else:
        mu = torch.zeros_like(s1)
        sigma = torch.sqrt(s2 / n_features + eps) if norm == "rmsnorm" else rms.clamp_min(eps)
        logits = q / sigma[:, None] + gt.d
    return _Stats(u, mu, sigma, logits, rms)


def _gates(logits, temperature, expert_mask):
    a = logits / temperature.to(logits.dtype).reshape(())
    if expert_mask is not None:
        a = a.masked_fill(~expert_mask.to(torch.bool), float("-inf"))
    return torch.softmax(a, dim=-1)


def forward(
    x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask=None,
    norm: str = "layernorm", eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole gate in rank space with torch ops (same contract as the reference; float64 for
    float64 ``x``). Differentiable by autograd; used to check the algebra and as a readable model
    of the native and Triton kernels."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, o = lora_B.shape[0], lora_B.shape[1]
    ex = expert_tensors(lora_A, lora_B, dt)
    gt = gate_tensors(lora_B, gate_weight, norm_weight, norm_bias, dt)
    z = x.to(dt) @ ex.a.T
    st = _stats(z, scaling.to(dt), ex, gt, norm, eps, n * o)
    gates = _gates(st.logits, temperature, expert_mask)
    y = (gates.unsqueeze(-1) * st.u).reshape(x.shape[0], -1) @ ex.wy
    return y.to(x.dtype), gates


def backward(
    grad_y: torch.Tensor | None,
    grad_gates: torch.Tensor | None,
    gates: torch.Tensor,
    x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask,
    norm: str, eps: float, needs: tuple[bool, ...],
):
    """Gradients of :func:`forward` with respect to ``(x, gate_weight, norm_weight, norm_bias,
    temperature)`` (``needs`` says which), in rank space; never forms ``(T, N, O)``.

    Recomputes ``z = x A^T`` (one GEMM) and the per-token statistics from the inputs.
    Derivation, per token (``g`` gates, ``l`` logits before the temperature, ``h_i = B_i^T dy``):

    - ``y = sum_i g_i u_i B_i^T``: ``dg_i += u_i . h_i``, ``du_i += g_i h_i``
    - softmax over kept experts: ``da = g * (dg - sum(g dg))``; ``dl = da / tau``;
      ``dtau = -sum(dl * l) / tau``
    - ``d = W b``: ``dd = sum_t dl``, so ``db = dd @ W`` and ``dW += dd (x) b``
    - with ``n = (C - mu) / sigma`` and ``lt = dl / sigma``: ``sum_t dl_j n_f = X_jf - m_j``,
      ``X_{j,(i,o)} = (B_i (u_i^T lt))_{o,j}``, ``m_j = sum_t lt_j mu``; then ``dW = w * (X - m)``
      and ``dw = sum_j W * (X - m)``
    - norm backward: ``dC = (g_n - alpha' 1 - beta' n) / sigma`` with ``g_n = sum_j dl_j w W_j``;
      ``B_i^T g_n = (P dl)_i``, ``mean(g_n) = c.dl / D``, ``mean(g_n n) = dl.(l - d) / D``,
      ``B_i^T n_i = (Gram_i u_i - mu b1_i) / sigma``; the l2 norm sums instead of averaging and
      passes no gradient through its norm where ``||C|| <= eps``
    - ``dz_i = s_i du_i``, ``dx = dz @ A``.
    """
    need_x, need_w, need_nw, need_nb, need_tau = needs
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    t, n, o = x.shape[0], lora_B.shape[0], lora_B.shape[1]
    r = lora_A.shape[1]
    n_features = n * o
    ex = expert_tensors(lora_A, lora_B, dt)
    gt = gate_tensors(lora_B, gate_weight, norm_weight, norm_bias, dt)
    z = x.to(dt) @ ex.a.T
    st = _stats(z, scaling.to(dt), ex, gt, norm, eps, n_features)
    g = gates.to(dt)
    tau = temperature.to(dt).reshape(())
    uf = st.u.reshape(t, n * r)

    dg = torch.zeros_like(g) if grad_gates is None else grad_gates.to(dt)
    h = None
    if grad_y is not None:
        h = grad_y.to(dt) @ ex.wy.T  # (T, N*r): h_i = B_i^T dy
        dg = dg + (uf * h).view(t, n, r).sum(-1)
    da = g * (dg - (g * dg).sum(-1, keepdim=True))
    dl = da / tau

    grad_x = grad_w = grad_nw = grad_nb = grad_tau = None
    if need_tau:
        grad_tau = (-(dl * st.logits).sum() / tau).to(temperature.dtype).reshape(temperature.shape)
    dd = dl.sum(0)
    gw = gate_weight.to(dt)
    if need_nb and norm_bias is not None:
        grad_nb = (dd @ gw).to(norm_bias.dtype)
    if need_w or (need_nw and norm_weight is not None):
        lt = dl / st.sigma[:, None]
        rt = (lt.T @ uf).view(n, n, r).transpose(0, 1)  # (N_i, N_j, r) = u_i^T lt
        xm = torch.bmm(rt, lora_B.to(dt).transpose(1, 2))  # (N_i, N_j, O)
        xm = xm.transpose(0, 1).reshape(n, n_features)  # (N_j, N*O)
        if norm == "layernorm":
            xm = xm - (lt * st.mu[:, None]).sum(0)[:, None]
        if need_w:
            gw_grad = xm * norm_weight.to(dt) if norm_weight is not None else xm
            if norm_bias is not None:
                gw_grad = gw_grad + dd[:, None] * norm_bias.to(dt)
            grad_w = gw_grad.to(gate_weight.dtype)
        if need_nw and norm_weight is not None:
            grad_nw = (gw * xm).sum(0).to(norm_weight.dtype)
    if need_x:
        dn_dot = (dl * (st.logits - gt.d)).sum(-1)  # sum_j dl_j (l_j - d_j) = sum_f g_n,f n_f
        if norm == "layernorm":
            m_gn = (dl @ gt.c) / n_features
            m_gnn = dn_dot / n_features
            alpha = m_gn - m_gnn * st.mu / st.sigma
            beta = m_gnn / st.sigma
        elif norm == "rmsnorm":
            alpha = None
            beta = dn_dot / (n_features * st.sigma)
        else:
            alpha = None
            beta = torch.where(st.rms > eps, dn_dot / st.sigma, torch.zeros_like(dn_dot))
        gu = torch.bmm(st.u.transpose(0, 1), ex.gram).transpose(0, 1).reshape(t, n * r)  # Gram_i u_i
        du = dl @ gt.p.T - beta[:, None] * gu
        if alpha is not None:
            du = du - alpha[:, None] * ex.b1
        du = du / st.sigma[:, None]
        if h is not None:
            du = du + (g.unsqueeze(-1) * h.view(t, n, r)).reshape(t, n * r)
        dz = (du.view(t, n, r) * scaling.to(dt).view(1, n, 1)).reshape(t, n * r)
        grad_x = (dz @ ex.a).to(x.dtype)
    return grad_x, grad_w, grad_nw, grad_nb, grad_tau
