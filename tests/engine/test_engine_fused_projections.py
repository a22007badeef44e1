"""The engine's grouped projections: a layer's q/k/v and gate/up, when they are plain packed lmops
``BitLinear`` layers on the CPU, run as one ``ternary_linear_multi`` call each (x quantized once), with
the outputs of the separate calls; anything else (float layers, a hook, an adapter) is called as is."""

import pytest
import torch

import lmops.engine.families as families
from engine_cases import family_model, padded_batch, reference
from lmops.engine import generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def count_multi(monkeypatch):
    calls = []
    real = families.ternary_linear_multi

    def spy(x, packed, *args, **kwargs):
        calls.append(len(packed))
        return real(x, packed, *args, **kwargs)

    monkeypatch.setattr(families, "ternary_linear_multi", spy)
    return calls


@pytest.mark.parametrize("arch, dtype", [("llama", torch.float32), ("bitnet", torch.bfloat16), ("qwen2", torch.float32)])
def test_packed_groups_fuse_and_match_generate(count_multi, arch, dtype):
    model = family_model(arch, packed=True, dtype=dtype)
    ids, mask = padded_batch(3)
    ref = reference(model, ids, mask, 6)
    count_multi.clear()
    seq = generate(model, ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    assert torch.equal(seq, ref.sequences)
    layers = model.config.num_hidden_layers
    steps = 6  # the prefill and 5 decode steps
    assert sorted(set(count_multi)) == [2, 3]  # gate/up and q/k/v
    assert len(count_multi) == 2 * layers * steps


def test_float_and_hooked_layers_are_not_fused(count_multi):
    model = family_model("llama")  # float nn.Linear layers
    ids = padded_batch(4)[0]
    generate(model, ids, max_new_tokens=3, pad_token_id=0)
    assert count_multi == []

    model = family_model("llama", packed=True)
    seen = []
    model.model.layers[0].self_attn.k_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    ref = reference(model, ids, None, 3)
    count_multi.clear()
    seq = generate(model, ids, max_new_tokens=3, pad_token_id=0)
    assert torch.equal(seq, ref.sequences)
    assert len(seen) > 0  # the hook ran: layer 0's q/k/v were called one by one
    layers = model.config.num_hidden_layers
    assert count_multi.count(3) == (layers - 1) * 3 and count_multi.count(2) == layers * 3
