"""HFLocal: batched, left-padded generation identical to unpadded model.generate; exact token-aligned
log-likelihoods; stop strings on the generated text only; reproducible sampling; loading directories."""

import math

import pytest
import torch

from lmops.llm import CachedLLM, HFLocal, LLM, load_local_model
from llm_models import reference_greedy, reference_loglikelihood, save_tiny_lm, tiny_lm

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["The cat", "a much longer prompt, with several words in it", "xyz", "Hello there, friend"]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=3)


def test_is_an_llm(lm):
    assert isinstance(HFLocal(*lm), LLM)


def test_greedy_batches_match_unpadded_generate(lm):
    model, tok = lm
    llm = HFLocal(model, tok, batch_size=3)  # 4 prompts: a batch of 3 (left-padded) and one of 1
    out = llm.generate(PROMPTS, max_new_tokens=7)
    assert [len(x) for x in out] == [1] * 4
    for prompt, (text,) in zip(PROMPTS, out):
        assert text == reference_greedy(model, tok, prompt, 7)
    # greedy with n > 1 returns n equal completions
    twice = llm.generate(PROMPTS[:2], max_new_tokens=4, n=2)
    assert [len(x) for x in twice] == [2, 2] and twice[0][0] == twice[0][1]


def test_loglikelihood_is_exact_and_token_aligned(lm):
    model, tok = lm
    llm = HFLocal(model, tok, batch_size=2)
    contexts = ["The cat", "Hello", "Question: 2+2? Answer:", "x"]
    continuations = [" sat down", " world!", " 4", "yz and more"]
    got = llm.loglikelihood(contexts, continuations)
    for (lp, count), c, t in zip(got, contexts, continuations):
        ref_lp, ref_count = reference_loglikelihood(model, tok, c, t)
        assert count == ref_count == len(t.encode())  # one byte per token
        assert lp < 0 and math.isclose(lp, ref_lp, rel_tol=1e-5, abs_tol=1e-4)
    # a trailing space of the context moves to the continuation (lm-evaluation-harness's rule)
    (a, na), (b, nb) = llm.loglikelihood(["The cat ", "The cat"], ["sat", " sat"])
    assert na == nb == 4 and math.isclose(a, b, rel_tol=1e-6)


def test_stop_strings_only_match_generated_text(lm):
    model, tok = lm
    llm = HFLocal(model, tok)
    free = llm.generate(["The cat"], max_new_tokens=12)[0][0]
    assert len(free) >= 4
    stop = free[2:4]
    cut = llm.generate(["The cat"], max_new_tokens=12, stop=stop)[0][0]
    assert cut == free[: free.find(stop)]
    # a stop string that spans the prompt's end and the first generated character must not fire
    span = "t" + free[0]
    if span not in free:
        assert llm.generate(["The cat"], max_new_tokens=12, stop=span)[0][0] == free
    c = llm.complete([llm.encode("The cat")], max_new_tokens=12, stop=[stop])[0][0]
    assert c.finish_reason == "stop" and tok.decode(c.token_ids) == cut


def test_sampling_is_seeded_and_varied(lm):
    model, tok = lm
    a = HFLocal(model, tok, seed=11).generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, n=3)
    b = HFLocal(model, tok, seed=11, batch_size=1).generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, n=3)
    c = HFLocal(model, tok, seed=12).generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, n=3)
    assert a[0] == HFLocal(model, tok, seed=11).generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, n=3)[0]
    assert len(set(a[0])) > 1  # three different samples of a random model
    assert a != c
    assert [len(x) for x in b] == [3, 3]


def test_complete_reports_raw_logprobs(lm):
    model, tok = lm
    llm = HFLocal(model, tok)
    (c,), = llm.complete([llm.encode("The cat")], max_new_tokens=5, top_logprobs=3)
    assert len(c.token_ids) == len(c.logprobs) == len(c.top_logprobs) == 5 and c.finish_reason == "length"
    ids = llm.encode("The cat")
    with torch.no_grad():
        logits = model(torch.tensor([ids + c.token_ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    for k, t in enumerate(c.token_ids):
        assert math.isclose(c.logprobs[k], float(logp[len(ids) - 1 + k, t]), abs_tol=1e-4)
        assert c.top_logprobs[k][0][0] == t  # greedy: the chosen token is the most likely one
        assert [lp for _, lp in c.top_logprobs[k]] == sorted([lp for _, lp in c.top_logprobs[k]], reverse=True)


def test_chat_uses_the_template(lm):
    model, tok = lm
    llm = HFLocal(model, tok)
    conv = [{"role": "user", "content": "hi"}]
    assert llm.render_chat(conv) == "user: hi\nassistant:"
    assert llm.chat([conv], max_new_tokens=5) == llm.generate(["user: hi\nassistant:"], max_new_tokens=5)
    bare = HFLocal(model, tok)  # a tokenizer without a template: a clear error
    bare.tokenizer = tok.__class__(tokenizer_object=tok.backend_tokenizer, pad_token="<pad>")
    with pytest.raises(NotImplementedError, match="chat template"):
        bare.chat([conv])


def test_bad_arguments(lm):
    model, tok = lm
    with pytest.raises(TypeError, match="model"):
        HFLocal(object(), tok)
    with pytest.raises(ValueError, match="batch_size"):
        HFLocal(model, tok, batch_size=0)
    llm = HFLocal(model, tok, max_length=16)
    with pytest.raises(ValueError, match="exceed"):
        llm.generate(["a prompt that is too long"], max_new_tokens=8)
    with pytest.raises(ValueError, match="continuations"):
        llm.loglikelihood(["a"], [""])


def test_loads_plain_and_packed_directories(tmp_path):
    plain = save_tiny_lm(tmp_path / "plain")
    packed = save_tiny_lm(tmp_path / "packed", packed=True)
    for path in (plain, packed):
        llm = HFLocal.from_pretrained(path)
        assert llm.name == path.name
        text = llm.generate(["The cat"], max_new_tokens=6)[0][0]
        model, tok = load_local_model(path)
        assert text == reference_greedy(model, tok, "The cat", 6)
    from lmops import BitLinear

    assert any(isinstance(m, BitLinear) and m.is_packed for m in HFLocal.from_pretrained(packed).model.modules())
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_local_model(tmp_path)


def test_cached_local_model_answers_reruns_from_the_cache(lm, tmp_path):
    model, tok = lm
    cached = CachedLLM(HFLocal(model, tok), tmp_path / "c.sqlite")
    first = cached.generate(PROMPTS, max_new_tokens=4)
    again = CachedLLM(HFLocal(model, tok), tmp_path / "c.sqlite")
    assert again.generate(PROMPTS, max_new_tokens=4) == first and again.misses == 0 and again.hits == 4


def test_a_reslora_adapted_model_is_served_as_is():
    from lmops.reslora import apply_reslora

    model, tok = tiny_lm(seed=4)
    apply_reslora(model, target_modules=("q_proj", "v_proj", "down_proj"), r=4)
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero B, so the adapters change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    llm = HFLocal(model, tok, batch_size=2)
    out = llm.generate(PROMPTS[:3], max_new_tokens=6)
    assert [o[0] for o in out] == [reference_greedy(model, tok, p, 6) for p in PROMPTS[:3]]
    (lp, n), = llm.loglikelihood(["The cat"], [" sat"])
    ref, m = reference_loglikelihood(model, tok, "The cat", " sat")
    assert n == m and math.isclose(lp, ref, rel_tol=1e-5)


def test_engine_options_reach_the_engine(lm, monkeypatch):
    """engine_options go to lmops.generate as they are: an int8 head gives the engine's own int8-head
    tokens (not model.generate's float-head ones, where the two differ), and bad options are refused."""
    import lmops.engine as engine_pkg
    from lmops.engine import supports

    model, tok = lm
    if not supports(model):
        pytest.skip("the tiny model is not an engine family")
    seen = []
    real = engine_pkg.generate

    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in HFLocal.ENGINE_OPTIONS if k in kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_pkg, "generate", spy)
    llm = HFLocal(model, tok, engine_options={"head_dtype": "int8", "threads": 1})
    (text,), = llm.generate(["The cat"], max_new_tokens=6)
    assert seen == [{"head_dtype": "int8", "threads": 1}]
    ids = torch.tensor([llm.encode("The cat")])
    want = real(model, ids, max_new_tokens=6, head_dtype="int8", eos_token_id=llm.eos_ids, pad_token_id=llm.pad_id)
    assert text == tok.decode(want[0, ids.shape[1]:], skip_special_tokens=True)
    with pytest.raises(ValueError, match=r"^engine_options: unknown option\(s\) \['temperature'\]"):
        HFLocal(model, tok, engine_options={"temperature": 0.5})
    with pytest.raises(TypeError, match=r"^engine_options: expected a dict or None, got list"):
        HFLocal(model, tok, engine_options=["compile"])
