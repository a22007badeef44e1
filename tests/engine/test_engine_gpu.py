"""The decode engine on a CUDA GPU (skipped without one): ``lmops.generate`` gives ``model.generate``'s
greedy tokens for float and packed models of each family, with left padding, and every output head
runs there (the bf16 and int8 heads through their reference backend on CUDA)."""

import pytest
import torch

from engine_cases import family_model, padded_batch, reference
from lmops.engine import generate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

NEW = 12


@pytest.mark.parametrize("arch, packed, dtype", [
    ("llama", False, torch.float32), ("llama", True, torch.float32), ("qwen2", True, torch.float32),
    ("mistral", True, torch.float32), ("bitnet", True, torch.bfloat16),
])
def test_engine_matches_generate_on_cuda(arch, packed, dtype):
    model = family_model(arch, packed=packed, dtype=dtype).cuda()
    ids, mask = padded_batch(7)
    ids, mask = ids.cuda(), mask.cuda()
    ref = reference(model, ids, mask, NEW)
    seq = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0)
    assert seq.device.type == "cuda"
    assert torch.equal(seq, ref.sequences)


@pytest.mark.parametrize("head_dtype", ["bf16", "int8"])
def test_engine_heads_on_cuda(head_dtype):
    model = family_model("bitnet", packed=True, dtype=torch.bfloat16).cuda()
    ids, mask = padded_batch(8)
    out = generate(model, ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=NEW, pad_token_id=0,
                   head_dtype=head_dtype, return_dict=True)
    assert out.sequences.shape == (ids.shape[0], ids.shape[1] + NEW) and out.sequences.device.type == "cuda"
