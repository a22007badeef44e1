"""compile=True: the decode step compiles whole (fullgraph, dynamic shapes, lmops ops opaque) and gives
the eager engine's tokens. The default run traces with dynamo's eager backend (the capture and
the plumbing, seconds); the inductor build is slow (about a minute on 2 busy cores)."""

import pytest
import torch

from engine_cases import family_model, padded_batch
from lmops.engine import engine_for, generate
from tiny_models import random_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fullgraph_capture_gives_eager_tokens():
    torch._dynamo.reset()
    model = family_model("bitnet", packed=True)
    ids, mask = padded_batch(2)
    eager = generate(model, ids, attention_mask=mask, max_new_tokens=16, eos_token_id=[])
    options = {"backend": "eager"}
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=16, eos_token_id=[],
                                compile=options), eager)
    # the compiled step is kept with the model and reused (dynamic shapes: another length, no retrace)
    fn = engine_for(model).decode_fn(options)
    longer = generate(model, ids, attention_mask=mask, max_new_tokens=21, eos_token_id=[], compile=options)
    assert engine_for(model).decode_fn(options) is fn
    assert torch.equal(longer[:, : eager.shape[1]], eager)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "bitnet"])
def test_inductor_gives_eager_tokens(arch):
    torch._dynamo.reset()
    model = family_model(arch, packed=True)
    ids, mask = padded_batch(1)
    eager = generate(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[], compile=True),
                       eager)
    one = random_ids(1, 7, seed=5)  # batch 1, no padding: another graph
    assert torch.equal(generate(model, one, max_new_tokens=20, eos_token_id=[], compile=True),
                       generate(model, one, max_new_tokens=20, eos_token_id=[]))
