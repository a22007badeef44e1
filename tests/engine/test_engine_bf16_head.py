"""The 16-bit output head through lmops's GEMV: ``lmops.generate(..., head_dtype="bf16")``.

- accuracy: every step's logits within the tolerance of ``lmops_kernels.bf16_linear``'s docstring of the
  model's own bf16 head (the same bf16 products, summed in float32 in another order, rounded to bf16),
  and greedy tokens equal to ``model.generate``'s (on these models no step's top-2 gap is that small);
- a float32 model gets a bf16 copy of its head (tokens agree wherever the top-2 gap is clear);
- the API: a bf16 head is used without a copy, the head follows in-place weight changes, the model is
  not changed, the compiled step gives the eager step's tokens.
"""

import pytest
import torch
from torch import nn

from engine_cases import family_model, generate_with_scores as _generate, padded_batch, reference
from lmops.engine import engine_for, generate
from lmops.engine.head import Bf16Head
from tiny_models import random_ids

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 16


def _bound(hidden: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """|ours - model's own|: each within 1e-5 sum|h w| + float32 rounding of the exact logit, then
    each rounded to bf16 (2^-8 relative): twice the kernel's bound plus two bf16 steps."""
    mag = hidden.double().abs() @ weight.double().abs().t()
    return 2 * (1e-5 * mag + 2.0**-23 * logits.abs()) + 2 * 2.0**-8 * logits.abs() + 1e-30


@pytest.mark.parametrize("arch, packed", [("llama", False), ("qwen2", False), ("bitnet", True)])
def test_bf16_head_matches_models_own_head(arch, packed):
    model = family_model(arch, packed=packed, dtype=torch.bfloat16)
    ids, mask = padded_batch(7)
    ref = reference(model, ids, mask, NEW)
    seq, scores = _generate(model, ids, mask, NEW, head_dtype="bf16")
    assert torch.equal(seq, ref.sequences)
    assert isinstance(engine_for(model).lm_head, Bf16Head)
    assert engine_for(model).lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()  # no copy
    assert type(model.lm_head) is nn.Linear
    for ours, theirs in zip(scores, ref.logits):
        ours, theirs = ours.double(), theirs.double()
        # per step, within two bf16 steps of the row's largest logit (test_bf16_head_logits_within_kernel_bound
        # checks the kernel's own, tighter bound with the hidden states at hand)
        tol = 2 * 2.0**-8 * theirs.abs().amax(-1, keepdim=True) + 1e-6
        assert bool(((ours - theirs).abs() <= tol).all())
    # the default is the model's own head again
    seq2, _ = _generate(model, ids, mask, NEW)
    assert torch.equal(seq2, ref.sequences)


def test_bf16_head_logits_within_kernel_bound():
    model = family_model("llama", dtype=torch.bfloat16)
    ids = random_ids(4, 24, seed=5)
    head = Bf16Head(model.lm_head)
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        own = model.lm_head(hidden)
        ours = head(hidden)
    assert ours.dtype == torch.bfloat16
    err = (ours.double() - own.double()).abs()
    assert bool((err <= _bound(hidden, model.lm_head.weight, own.double())).all())


def test_float32_model_gets_bf16_copy():
    model = family_model("llama", dtype=torch.float32)
    ids = random_ids(3, 8, seed=6)
    seq, scores = _generate(model, ids, None, 8, head_dtype="bf16")
    head = engine_for(model).lm_head
    assert head.weight.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.float32
    assert scores[0].dtype == torch.float32
    ref = reference(model, ids, None, 8)
    # the first step's logits: bf16 weights change each logit by at most 2^-9 * sum|h w|
    with torch.no_grad():
        top2 = ref.logits[0].double().topk(2, dim=-1)
    gap = top2.values[:, 0] - top2.values[:, 1]
    clear = gap > 0.05
    assert bool((scores[0].argmax(-1) == top2.indices[:, 0])[clear].all())


def test_bf16_head_follows_in_place_weight_changes():
    model = family_model("llama", dtype=torch.float32)
    ids = random_ids(2, 6, seed=12)
    generate(model, ids, max_new_tokens=2, pad_token_id=0, head_dtype="bf16")
    first = engine_for(model).lm_head
    with torch.no_grad():
        model.lm_head.weight.mul_(-3.0)
    generate(model, ids, max_new_tokens=2, pad_token_id=0, head_dtype="bf16")
    second = engine_for(model).lm_head
    assert second is not first
    assert torch.equal(second.weight, model.lm_head.weight.to(torch.bfloat16))


def test_bf16_head_errors():
    with pytest.raises(TypeError, match=r"^linear: expected an nn.Linear, got Embedding"):
        Bf16Head(nn.Embedding(3, 4))
    head = Bf16Head(nn.Linear(5, 3))
    with pytest.raises(RuntimeError, match=r"inference-only"):
        head(torch.randn(2, 5, requires_grad=True))


@pytest.mark.slow
def test_bf16_head_compiled_step_matches_eager():
    # float32 (a bf16 copy of the head): in a bf16 model inductor's fused norms round differently from
    # eager, which is not the head's doing
    model = family_model("bitnet", packed=True)
    ids, mask = padded_batch(8)
    eager, _ = _generate(model, ids, mask, NEW, head_dtype="bf16")
    compiled, _ = _generate(model, ids, mask, NEW, head_dtype="bf16", compile=True)
    assert torch.equal(compiled, eager)
