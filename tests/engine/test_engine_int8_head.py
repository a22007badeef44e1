"""The int8 output head: ``lmops.generate(..., head_dtype="int8")``, ``quantize_head`` / ``restore_head``.

- exactness: the engine with ``head_dtype="int8"`` gives ``model.generate``'s tokens and logits, bit for
  bit, on the model whose head :func:`quantize_head` swapped (both call the same int8 kernel);
- accuracy: against the model's own float head, every logit within the rounding bound of
  ``lmops_kernels.int8_linear``'s docstring, greedy tokens identical wherever the float head's top-2 gap
  exceeds twice that bound, and the cross-entropy within 0.01 nats;
- the API: the model is unchanged by ``head_dtype``, the int8 copy follows in-place weight changes, the
  swap is reversible, bad values raise.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine_cases import family_model, generate_with_scores as _generate, padded_batch, reference
from lmops.engine import Int8Linear, generate, quantize_head, restore_head
from tiny_models import random_ids

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 16


@pytest.mark.parametrize("arch, packed, dtype", [
    ("llama", False, torch.float32), ("llama", False, torch.bfloat16), ("bitnet", True, torch.bfloat16),
])
def test_int8_head_matches_generate_of_quantized_model(arch, packed, dtype):
    model = family_model(arch, packed=packed, dtype=dtype)
    quantized = copy.deepcopy(model)
    head = quantize_head(quantized)
    assert isinstance(quantized.lm_head, Int8Linear) and head is quantized.lm_head
    ids, mask = padded_batch(7)
    ref = reference(quantized, ids, mask, NEW)
    for m, kwargs in ((model, {"head_dtype": "int8"}), (quantized, {}), (quantized, {"head_dtype": "int8"})):
        seq, scores = _generate(m, ids, mask, NEW, **kwargs)
        assert torch.equal(seq, ref.sequences)
        assert all(torch.equal(a, b) for a, b in zip(scores, ref.logits))  # every step, bit for bit
    assert type(model.lm_head) is nn.Linear  # head_dtype does not touch the model
    seq, _ = _generate(model, ids, mask, NEW)  # and the default is the model's own head again
    assert torch.equal(seq, reference(model, ids, mask, NEW).sequences)


def _int8_bound(h: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The docstring's bound on |int8_linear(h) - F.linear(h, W)|, per (row, output)."""
    h, weight, scale = h.double(), weight.double(), scale.double()
    dx = h.abs().amax(-1, keepdim=True) / 254
    dw = scale / 2
    return dw * h.abs().sum(-1, keepdim=True) + dx * weight.abs().sum(1) + dx * dw * h.shape[-1]


@pytest.mark.parametrize("arch, packed", [("llama", False), ("bitnet", True)])
def test_int8_head_close_to_float_head(arch, packed):
    model = family_model(arch, packed=packed)
    ids = random_ids(8, 48, seed=11)
    quantized = copy.deepcopy(model)
    quantize_head(quantized)
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        float_logits = model(ids).logits.double()
        int8_logits = quantized(ids).logits.double()
    bound = _int8_bound(hidden, model.lm_head.weight, quantized.lm_head.weight_scale) * (1 + 1e-4) + 1e-6
    err = (int8_logits - float_logits).abs()
    assert bool((err <= bound).all()), f"worst error / bound: {float((err / bound).max()):.3f}"
    assert float(err.max()) > 0  # the int8 head is not the float head in disguise

    top2 = float_logits.topk(2, dim=-1)
    gap = top2.values[..., 0] - top2.values[..., 1]
    same = int8_logits.argmax(-1) == top2.indices[..., 0]
    clear = gap > 2 * bound.amax(-1)
    assert bool(same[clear].all()) and clear.float().mean() > 0.5  # guaranteed where the gap is clear
    assert same.float().mean() >= 0.95, f"greedy agreement {float(same.float().mean()):.3f}"

    target = ids[:, 1:].reshape(-1)
    vocab = float_logits.shape[-1]
    loss_float = F.cross_entropy(float_logits[:, :-1].reshape(-1, vocab), target)
    loss_int8 = F.cross_entropy(int8_logits[:, :-1].reshape(-1, vocab), target)
    assert abs(float(loss_int8 - loss_float)) <= min(0.01, 2 * float(err.max()))


def test_int8_copy_follows_in_place_weight_changes():
    model = family_model("llama")
    ids = random_ids(2, 6, seed=12)
    generate(model, ids, max_new_tokens=4, pad_token_id=0, head_dtype="int8")
    with torch.no_grad():
        model.lm_head.weight.mul_(-3.0)  # an in-place write: the cached int8 copy must be made again
    quantized = copy.deepcopy(model)
    quantize_head(quantized)
    got, got_scores = _generate(model, ids, None, 8, head_dtype="int8")
    want, want_scores = _generate(quantized, ids, None, 8)
    assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(got_scores, want_scores))


def test_quantize_and_restore_head():
    model = family_model("llama", dtype=torch.bfloat16)
    original = model.lm_head
    head = quantize_head(model)
    assert head.base_layer is original and quantize_head(model) is head  # idempotent
    assert head.weight_int8.dtype == torch.int8 and head.weight_scale.dtype == torch.float32
    assert "int8 per-channel" in repr(head) and "from torch.bfloat16" in repr(head)
    model.to(torch.float32).to(torch.bfloat16)  # a dtype round trip keeps the float32 scales exact
    assert head.weight_scale.dtype == torch.float32
    assert torch.equal(head.weight_scale, quantize_head(family_model("llama", dtype=torch.bfloat16)).weight_scale)
    assert restore_head(model) is original and model.lm_head is original

    head = quantize_head(model, keep_original=False)
    assert head.base_layer is None
    restored = restore_head(model)
    assert type(restored) is nn.Linear and restored.weight.dtype == torch.bfloat16
    w = original.weight.float()
    step = w.abs().amax(1, keepdim=True) / 127
    assert bool(((restored.weight.float() - w).abs() <= step / 2 + 0.01 * w.abs()).all())  # + bf16 rounding
    assert not torch.equal(restored.weight, original.weight)


def test_head_errors():
    model = family_model("llama")
    ids = random_ids(1, 4, seed=13)
    for bad in ("fp8", "int4", 8):
        with pytest.raises(ValueError, match=r"^head_dtype: expected None \(the model's own head\), 'bf16' or 'int8'"):
            generate(model, ids, max_new_tokens=2, head_dtype=bad)
    with pytest.raises(ValueError, match=r"^head_dtype: expected 'int8', got 'int4'"):
        quantize_head(model, "int4")
    with pytest.raises(ValueError, match=r"^model.lm_head: expected an Int8Linear \(from quantize_head\), got Linear"):
        restore_head(model)
    with pytest.raises(TypeError, match=r"^model: expected a causal LM with an lm_head module, got Linear"):
        quantize_head(nn.Linear(3, 4))
    with pytest.raises(TypeError, match=r"^linear: expected an nn.Linear, got Embedding"):
        Int8Linear.from_linear(nn.Embedding(3, 4))
    with pytest.raises(ValueError, match=r"^in_features: expected a positive int, got 0"):
        Int8Linear(0, 4)
    head = quantize_head(model)
    with pytest.raises(RuntimeError, match=r"inference-only"):
        head(torch.randn(2, head.in_features, requires_grad=True))


@pytest.mark.slow
def test_int8_head_compiled_step_matches_eager():
    model = family_model("bitnet", packed=True)
    ids, mask = padded_batch(8)
    eager, _ = _generate(model, ids, mask, NEW, head_dtype="int8")
    compiled, _ = _generate(model, ids, mask, NEW, head_dtype="int8", compile=True)
    assert torch.equal(compiled, eager)
