"""The step that CUDA graphs capture (``DecodeEngine.forward_at_slot``: the cache slot a tensor, attention
over the whole cache under a mask) gives the eager step's logits, on the CPU so CI checks its math
without a GPU: each family, padding, a sliding window shorter than the sequence, eager and SDPA
attention. ``CudaGraphStep`` itself (capture and replay) is tested on a GPU in test_engine_gpu.py."""

import pytest
import torch

from engine_cases import family_model, padded_batch
from lmops.engine import engine_for, generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch, packed, attention", [
    ("llama", False, "sdpa"), ("llama", True, "eager"), ("qwen2", True, "sdpa"), ("bitnet", True, "sdpa"),
    ("mistral", False, "sdpa"),
])
@pytest.mark.parametrize("padded", [False, True])
@torch.inference_mode()
def test_forward_at_slot_equals_forward(arch, packed, attention, padded):
    overrides = {"sliding_window": 6} if arch == "mistral" else {}
    model = family_model(arch, packed=packed, attention=attention, **overrides)
    engine = engine_for(model)
    ids, mask = padded_batch(5)
    if not padded:
        mask = torch.ones_like(mask)
    batch, width = ids.shape
    steps = 8
    total = width + steps
    padding = torch.ones((batch, total), dtype=torch.bool)
    padding[:, :width] = mask.bool()
    positions = (padding[:, :width].long().cumsum(-1) - 1).clamp(min=0)
    a, b = engine.new_cache(batch, total - 1), engine.new_cache(batch, total - 1, zeros=True)
    pad_arg = None if not padded else padding
    logits = engine.forward(a.keys, a.values, ids, positions, 0, engine.masks(pad_arg, 0, width))
    engine.forward(b.keys, b.values, ids, positions, 0, engine.masks(pad_arg, 0, width))
    slots = torch.arange(total - 1)
    pos = positions[:, -1:] + 1
    token = logits[:, -1].argmax(-1, keepdim=True)
    for cur in range(width, total - 1):
        want = engine.forward(a.keys, a.values, token, pos, cur, engine.masks(pad_arg, cur, 1))
        got = engine.forward_at_slot(b.keys, b.values, token, pos, torch.tensor([cur]), padding[:, :total - 1], slots)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        token, pos = want[:, -1].argmax(-1, keepdim=True), pos + 1


def test_cuda_graph_argument_errors():
    model = family_model("llama")
    ids = padded_batch(1)[0]
    with pytest.raises(ValueError, match=r"^cuda_graph=True: the model is on cpu, CUDA graphs need a CUDA device"):
        generate(model, ids, max_new_tokens=2, pad_token_id=0, cuda_graph=True)
    with pytest.raises(ValueError, match=r"^cuda_graph: expected None, True or False, got 'yes'"):
        generate(model, ids, max_new_tokens=2, pad_token_id=0, cuda_graph="yes")
    assert generate(model, ids, max_new_tokens=2, pad_token_id=0, cuda_graph=False).shape[1] == ids.shape[1] + 2
