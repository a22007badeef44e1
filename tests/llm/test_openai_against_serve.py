"""OpenAICompatible pointed at lmops serve: the HTTP path gives the same answers as the model in-process
(greedy text, chat, exact log-likelihoods), including a packed BitNet model."""

import math

import pytest

from lmops.llm import CachedLLM, HFLocal, OpenAICompatible, load_local_model
from lmops.llm.server import create_app
from llm_models import save_tiny_lm, tiny_lm
from serve_util import running

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def local_and_url():
    model, tok = tiny_lm(seed=7)
    local = HFLocal(model, tok, name="tiny")
    with running(create_app(local)) as url:
        yield local, url


def test_generate_chat_and_loglikelihood_match_in_process(local_and_url, tmp_path):
    local, url = local_and_url
    prompts = ["The cat", "Hello there", "xyz", "Question: 1+1? Answer:"]
    with OpenAICompatible(url, "tiny", max_concurrency=4) as remote:
        assert remote.generate(prompts, max_new_tokens=6) == local.generate(prompts, max_new_tokens=6)
        assert remote.generate(prompts[:2], max_new_tokens=12, stop=["e", "a"]) == local.generate(
            prompts[:2], max_new_tokens=12, stop=["e", "a"])
        conv = [[{"role": "user", "content": "hi"}], [{"role": "system", "content": "s"},
                                                      {"role": "user", "content": "yo"}]]
        assert remote.chat(conv, max_new_tokens=5) == local.chat(conv, max_new_tokens=5)
        contexts = ["The cat", "Question: 1+1? Answer:", "Hello"]
        continuations = [" sat", " 2", " world, again"]
        for (a, na), (b, nb) in zip(remote.loglikelihood(contexts, continuations),
                                    local.loglikelihood(contexts, continuations)):
            assert na == nb and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
        sampled = remote.generate(["The cat"], max_new_tokens=6, temperature=1.0, n=3)
        assert len(sampled) == 1 and len(sampled[0]) == 3
        cached = CachedLLM(remote, tmp_path / "c.sqlite")
        first = cached.generate(prompts, max_new_tokens=4)
    again = CachedLLM(OpenAICompatible("http://127.0.0.1:9/v1", "tiny"), tmp_path / "c.sqlite")
    # a different server URL is a different backend name, so nothing is shared by accident
    assert again.name != cached.name and first == local.generate(prompts, max_new_tokens=4)


def test_a_packed_bitnet_model_over_http(tmp_path):
    path = save_tiny_lm(tmp_path / "packed", packed=True)
    local = HFLocal.from_pretrained(path)
    with running(create_app(local)) as url, OpenAICompatible(url, "packed") as remote:
        assert remote.generate(["The cat", "ab"], max_new_tokens=5) == local.generate(["The cat", "ab"],
                                                                                      max_new_tokens=5)
        (lp, n), = remote.loglikelihood(["The cat"], [" sat"])
        (ref, m), = local.loglikelihood(["The cat"], [" sat"])
        assert n == m == 4 and math.isclose(lp, ref, rel_tol=1e-5)
    model, _ = load_local_model(path)
    from lmops import BitLinear

    assert any(isinstance(mod, BitLinear) and mod.is_packed for mod in model.modules())
