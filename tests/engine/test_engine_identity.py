"""lmops.generate against model.generate: greedy tokens identical (and the logits of every step bit for
bit) on every family, dense and packed, SDPA and eager attention, float32 and bfloat16, with and without
left padding; EOS, pad, stopping criteria, streamer and callback behave as transformers' do."""

import pytest
import torch

import lmops
from engine_cases import RecordingStreamer, family_model, padded_batch, reference
from lmops.engine import generate
from tiny_models import ARCHS, random_ids

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 24


def _steps(model, ids, mask, n, **kwargs):
    scores = []
    seq = generate(model, ids, attention_mask=mask, max_new_tokens=n, pad_token_id=0,
                   on_step=lambda step, s, t: scores.append(s), **kwargs)
    return seq, scores


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_generate_token_for_token(arch, packed):
    model = family_model(arch, packed=packed)
    for seed in (1, 2):
        ids, mask = padded_batch(seed)
        ref = reference(model, ids, mask, NEW)
        seq, scores = _steps(model, ids, mask, NEW)
        assert seq.shape == (3, 11 + NEW)
        assert torch.equal(seq, ref.sequences)
        assert len(scores) == len(ref.logits) == NEW
        assert all(torch.equal(a, b) for a, b in zip(scores, ref.logits))  # every step, bit for bit
    # no padding: the mask is dropped (SDPA runs causal, GQA without a mask), as model.generate does
    ids = random_ids(2, 7, seed=3)
    ref = reference(model, ids, None, NEW)
    assert torch.equal(generate(model, ids, max_new_tokens=NEW, pad_token_id=0), ref.sequences)
    assert torch.equal(generate(model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                pad_token_id=0), ref.sequences)


@pytest.mark.parametrize("arch", ["llama", "bitnet"])
@pytest.mark.parametrize("case", ["eager-attention", "bfloat16"])
def test_eager_attention_and_bfloat16(arch, case):
    kwargs = {"attention": "eager"} if case == "eager-attention" else {"dtype": torch.bfloat16}
    model = family_model(arch, packed=arch == "bitnet", **kwargs)
    ids, mask = padded_batch(4)
    ref = reference(model, ids, mask, 20)
    seq, scores = _steps(model, ids, mask, 20)
    assert torch.equal(seq, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(scores, ref.logits))
    ids = random_ids(1, 5, seed=6)  # batch 1, no padding
    assert torch.equal(generate(model, ids, max_new_tokens=20, pad_token_id=0),
                       reference(model, ids, None, 20).sequences)


@pytest.mark.parametrize("arch, overrides", [
    ("mistral", {"sliding_window": 6}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1}),
])
def test_sliding_windows(arch, overrides):
    """A window shorter than the sequence: the mask keeps what transformers' cache keeps (tokens equal;
    past the window transformers drops keys where the engine masks them, so logits agree to ~1e-7)."""
    model = family_model(arch, **overrides)
    ids, mask = padded_batch(1)
    ref = reference(model, ids, mask, 20)
    seq, scores = _steps(model, ids, mask, 20)
    assert torch.equal(seq, ref.sequences)
    worst = max(float((a - b).abs().max()) for a, b in zip(scores, ref.logits))
    assert worst < 1e-5
    # and the window does matter: without it the logits move
    plain = family_model(arch)
    _, free = _steps(plain, ids, mask, 20)
    assert max(float((a - b).abs().max()) for a, b in zip(scores, free)) > 1e-3


def test_eos_pads_finished_rows_as_generate_does():
    model = family_model("qwen2", packed=True)
    ids, mask = padded_batch(2)
    free = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[])
    eos = int(free[0, 11 + 3])  # row 0 ends at its 4th new token
    ref = reference(model, ids, mask, NEW, eos_token_id=eos)
    seq = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(seq, ref.sequences)
    row = seq[0, 11:].tolist()
    first = row.index(eos)
    assert first <= 3 and all(t == 0 for t in row[first + 1:])
    # every row finished: generation stops early, with fewer than max_new_tokens columns
    one = generate(model, ids[:1], attention_mask=mask[:1], max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    assert one.shape[1] == 11 + first + 1 and int(one[0, -1]) == eos
    assert torch.equal(one, reference(model, ids[:1], mask[:1], NEW, eos_token_id=eos).sequences)
    # the default EOS is the model's generation_config's, and the pad id falls back to it
    model.generation_config.eos_token_id = eos
    seq2 = generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(seq2[:, : 11 + first + 1], seq[:, : 11 + first + 1])
    assert int(seq2[0, -1]) == eos


def test_stopping_criteria_and_streamer_follow_transformers():
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAfter(StoppingCriteria):  # row r stops once it has generated r + 2 tokens
        def __init__(self, width):
            self.width = width

        def __call__(self, input_ids, scores, **kwargs):
            done = torch.arange(input_ids.shape[0]) + 2 <= input_ids.shape[1] - self.width
            return done.to(input_ids.device)

    model = family_model("llama", packed=True)
    model.generation_config.eos_token_id = 2
    ids, mask = padded_batch(3)
    criteria = StoppingCriteriaList([StopAfter(11)])
    hf_stream, our_stream = RecordingStreamer(), RecordingStreamer()
    ref = reference(model, ids, mask, NEW, stopping_criteria=criteria, streamer=hf_stream)
    seq = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0, stopping_criteria=criteria,
                   streamer=our_stream)
    assert seq.shape[1] == 11 + 4  # the last row (r=2) needs 4 tokens
    assert torch.equal(seq, ref.sequences)
    assert our_stream.calls == hf_stream.calls
    assert our_stream.calls[0] == ("put", ids.tolist()) and our_stream.calls[-1] == ("end",)


def test_on_step_sees_raw_logits_and_chosen_tokens():
    model = family_model("bitnet", packed=True)
    ids = random_ids(2, 6, seed=2)
    seen = []
    seq = generate(model, ids, max_new_tokens=5, temperature=0.5, on_step=lambda s, sc, t: seen.append((s, sc, t)))
    assert [s for s, _, _ in seen] == list(range(5))
    for step, scores, tokens in seen:
        assert scores.dtype == torch.float32 and scores.shape == (2, 128)
        assert torch.equal(tokens, seq[:, 6 + step]) and torch.equal(tokens, scores.argmax(-1))
    with torch.no_grad():  # the raw logits of the full sequence, position by position
        full = model(seq).logits
    for step, scores, _ in seen:
        assert torch.allclose(scores, full[:, 6 + step - 1], atol=1e-4)


def test_zero_new_tokens_and_result_with_timings():
    model = family_model("mistral")
    ids, mask = padded_batch(1)
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=0), ids)
    res = generate(model, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=[], return_dict=True)
    assert isinstance(res, lmops.engine.GenerationResult)
    assert res.sequences.shape == (3, 17) and res.new_tokens == 6 and res.prompt_tokens == 11
    assert res.prefill_seconds > 0 and res.decode_seconds > 0 and res.decode_tokens_per_s > 0


def test_exported_from_lmops():
    assert lmops.generate is generate
