"""Plain-torch reference of the MoLE gate: the specification every ``mole_gate`` backend is tested against.

MoLE, Mixture of LoRA Experts (Wu, Huang, Wei; ICLR 2024; arXiv 2404.13628), Sec. 3.2, Eq. 6-13:
every trained LoRA is an expert; their outputs are concatenated, normalized, projected to one logit
per expert, turned into gate weights by a softmax with a learnable temperature, and mixed.

This function materializes every expert output ``E_i`` (a ``(T, N, O)`` tensor) on purpose: it is
written to be read, not to be fast. The backends compute the same thing in rank space without it.

Shapes (``T`` tokens, ``K`` in features, ``O`` out features, ``N`` experts, ``r`` rank):

- ``x``: ``(T, K)``
- ``lora_A``: ``(N, r, K)``, ``lora_B``: ``(N, O, r)``: the experts stacked; an expert of smaller
  rank is zero-padded to ``r`` (rows of ``A`` / columns of ``B``), which changes nothing
- ``scaling``: ``(N,)``, each expert's LoRA scaling ``alpha / r``
- ``gate_weight``: ``(N, N*O)``; ``norm_weight``, ``norm_bias``: ``(N*O,)`` or None
- ``temperature``: one-element tensor ``tau > 0``; ``expert_mask``: ``(N,)`` bool or None

Formula, per token:

    E_i    = s_i * (x @ A_i^T) @ B_i^T                      (O,)       expert output   (Eq. 7-8)
    C      = [E_0 | E_1 | ... | E_{N-1}]                    (N*O,)     concatenation   (Eq. 9)
    h      = Normalization(C) * norm_weight + norm_bias     (N*O,)                     (Eq. 9)
    logits = h @ gate_weight^T                              (N,)                       (Eq. 10)
    gates  = softmax(logits / tau)                          (N,)                       (Eq. 11)
    gates  = gates * m / sum(gates * m)     (only with expert_mask m)
    y      = sum_i gates_i * E_i                            (O,)                       (Eq. 12)

``y`` is the LoRA part only: the layer adds it to its base output (Eq. 13).

Choices that are lmops', not the paper's:

- **Per-token gate.** The paper flattens a whole ``(L, d)`` block output into the gate (``e`` has
  ``N*L*d*N`` entries, tied to one sequence length); here the gate sees one token's ``N*O``
  features, so it works for any length. (The official code gates per sample on the block input.)
- **Normalization.** The paper asks for a normalization "for training stability" and does not say
  which. ``norm`` picks one of three, all over the ``N*O`` features of a token:

  - ``"layernorm"``: ``(C - mean) / sqrt(var + eps)``, biased variance;
  - ``"rmsnorm"``: ``C / sqrt(mean(C^2) + eps)``;
  - ``"l2"``: ``C / max(||C||_2, eps)`` (as ``F.normalize``).

  ``norm_weight`` and ``norm_bias`` apply after any of them, each only if given.
- **Masking.** The paper's second inference mode masks unwanted LoRAs and redistributes their gate
  weight proportionally; it gives no formula. lmops renormalizes the kept gates to sum to one
  (written out above). The logits still see every expert's output.

Dtypes: all arithmetic is float32 (float64 if ``x`` is float64, so that the tests can gradcheck
this function); ``y`` is returned in ``x``'s dtype, ``gates`` in float32 (float64 for float64 ``x``).
This function is differentiable in every input through ordinary autograd.
"""

from __future__ import annotations

import torch

NORMS = ("layernorm", "rmsnorm", "l2")


def mole_gate(
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: torch.Tensor,
    gate_weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    temperature: torch.Tensor,
    expert_mask: torch.Tensor | None = None,
    norm: str = "layernorm",
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoLE gating and mixing of ``N`` LoRA experts, materializing every expert output.

    Args: see the module docstring. Returns ``(y, gates)``: ``y`` ``(T, O)`` in ``x``'s dtype,
    ``gates`` ``(T, N)`` float32 (float64 for float64 ``x``).
    """
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_experts = lora_A.shape[0]
    xf = x.to(dt)

    # expert outputs E_i = s_i (x A_i^T) B_i^T, stacked: (T, N, O)
    experts = [scaling[i].to(dt) * ((xf @ lora_A[i].to(dt).T) @ lora_B[i].to(dt).T) for i in range(n_experts)]
    E = torch.stack(experts, dim=1)
    C = E.reshape(E.shape[0], n_experts * E.shape[2])  # (T, N*O), expert-major

    if norm == "layernorm":
        mean = C.mean(dim=-1, keepdim=True)
        var = ((C - mean) ** 2).mean(dim=-1, keepdim=True)
        h = (C - mean) / torch.sqrt(var + eps)
    elif norm == "rmsnorm":
        h = C / torch.sqrt((C**2).mean(dim=-1, keepdim=True) + eps)
    else:  # "l2"
        h = C / torch.linalg.vector_norm(C, dim=-1, keepdim=True).clamp_min(eps)
    if norm_weight is not None:
        h = h * norm_weight.to(dt)
    if norm_bias is not None:
        h = h + norm_bias.to(dt)

    logits = h @ gate_weight.to(dt).T  # (T, N)
    gates = torch.softmax(logits / temperature.to(dt).reshape(()), dim=-1)
    if expert_mask is not None:
        kept = gates * expert_mask.to(dt)
        gates = kept / kept.sum(dim=-1, keepdim=True)

    y = (gates.unsqueeze(-1) * E).sum(dim=1)  # (T, O)
    return y.to(x.dtype), gates
