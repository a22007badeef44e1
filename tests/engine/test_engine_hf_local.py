"""HFLocal generates on the engine wherever it runs the model, with the same completions (text, token ids,
log-probabilities, finish reasons, streamed tokens) as its model.generate path, which stays the fallback."""

import pytest
import torch

from engine_cases import RecordingStreamer
from lmops import bitnet
from lmops.common.offline_tokenizer import byte_level_tokenizer
from lmops.llm import HFLocal
from tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["The cat", "a longer prompt, with words", "xyz"]


def _lm(arch="llama", packed=True):
    tok = byte_level_tokenizer()
    model = tiny_model(arch, seed=3, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    if packed:
        bitnet.pack(bitnet.convert(model))
    return model, tok


def _both(llm, monkeypatch, call):
    """``call(llm)`` on the engine, then on model.generate (HFLocal's fallback)."""
    on_engine = call(llm)
    with monkeypatch.context() as m:
        m.setattr(HFLocal, "_use_engine", lambda self: False)
        on_transformers = call(llm)
    return on_engine, on_transformers


def _spy(monkeypatch):
    import lmops.engine

    calls = []
    real = lmops.engine.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lmops.engine, "generate", spy)
    return calls


@pytest.mark.parametrize("arch", ["llama", "qwen2", "bitnet"])
def test_same_completions_on_the_engine_as_on_generate(arch, monkeypatch):
    model, tok = _lm(arch)
    llm = HFLocal(model, tok, batch_size=3, seed=5)
    calls = _spy(monkeypatch)
    for kwargs in ({"max_new_tokens": 12, "top_logprobs": 2}, {"max_new_tokens": 12, "stop": ["e", "a b"]},
                   {"max_new_tokens": 8, "temperature": 0.9, "top_p": 0.8, "n": 2}):
        ids = [llm.encode(p) for p in PROMPTS]
        engine, transformers = _both(llm, monkeypatch, lambda lm, ids=ids, kw=kwargs: lm.complete(ids, **kw))
        assert engine == transformers, kwargs  # dataclasses: text, ids, logprobs, tops, finish reason
    assert len(calls) == 3  # every batch went through the engine (and none of the fallback's)


def test_streaming_on_the_engine(monkeypatch):
    model, tok = _lm("qwen2")
    llm = HFLocal(model, tok)
    ids = [llm.encode("Hello")]
    streams = []

    def call(lm):
        streamer = RecordingStreamer()
        lm.complete(ids, max_new_tokens=6, streamer=streamer)
        streams.append(streamer.calls)

    calls = _spy(monkeypatch)
    _both(llm, monkeypatch, call)
    assert len(calls) == 1 and streams[0] == streams[1]
    assert streams[0][0] == ("put", [ids[0]]) and streams[0][-1] == ("end",) and len(streams[0]) == 8


def test_falls_back_to_generate_where_the_engine_does_not_apply(monkeypatch):
    model, tok = _lm("mistral", packed=False)
    model.generation_config.repetition_penalty = 1.5  # a processor the engine does not apply
    llm = HFLocal(model, tok)
    calls = _spy(monkeypatch)
    text = llm.generate(["The cat"], max_new_tokens=6)[0][0]
    assert calls == []
    with torch.no_grad():
        ids = torch.tensor([llm.encode("The cat")])
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, repetition_penalty=1.5,
                             pad_token_id=tok.pad_token_id)
    new = ref[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    assert text == tok.decode(new, skip_special_tokens=True)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    assert len(HFLocal(gpt2, tok).generate(["ab"], max_new_tokens=3)[0][0]) <= 3 * 4 and calls == []
