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


@pytest.fixture
def count_graphs(monkeypatch):
    import lmops.engine.loop as loop

    made = []
    real = loop.CudaGraphStep

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "CudaGraphStep", counting)
    return made


@pytest.mark.parametrize("arch, packed", [("llama", False), ("llama", True), ("qwen2", True), ("mistral", True)])
def test_cuda_graph_step_matches_generate(count_graphs, arch, packed):
    """float32: the graph-replayed step (attention over the whole cache under a mask) gives
    model.generate's greedy tokens, with padding; one capture per call."""
    model = family_model(arch, packed=packed).cuda()
    ids, mask = padded_batch(9)
    ids, mask = ids.cuda(), mask.cuda()
    ref = reference(model, ids, mask, NEW)
    eager = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0, cuda_graph=False)
    assert count_graphs == []
    graphed = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0, cuda_graph=True)
    assert len(count_graphs) == 1
    assert torch.equal(eager, ref.sequences)
    assert torch.equal(graphed, ref.sequences)


def test_cuda_graph_bf16_agrees(count_graphs):
    """bfloat16 packed BitNet: the graph step's logits within bf16 rounding of the eager step's (SDPA
    with a mask may sum in another order than without), and greedy tokens agree at >= 90% of positions."""
    model = family_model("bitnet", packed=True, dtype=torch.bfloat16).cuda()
    ids, mask = padded_batch(10)
    ids, mask = ids.cuda(), mask.cuda()
    scores = {}
    seqs = {}
    for graph in (False, True):
        scores[graph] = []
        seqs[graph] = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0, cuda_graph=graph,
                               on_step=lambda step, s, t, g=graph: scores[g].append(s))
    assert len(count_graphs) == 1
    first = (scores[True][1] - scores[False][1]).abs().max().item()
    assert first <= 0.05 * scores[False][1].abs().max().item(), first
    agree = (seqs[True] == seqs[False]).float().mean().item()
    print(f"bf16 graph vs eager token agreement {agree:.3f}, step-2 max logit diff {first:.4g}")
    assert agree >= 0.9
