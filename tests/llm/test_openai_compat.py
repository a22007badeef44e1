"""OpenAICompatible against a scripted local HTTP server (tests/llm/fault_server.py): the wire format,
retries (429 with Retry-After, 5xx, timeouts, malformed bodies), the errors that are not retried, the
concurrency limit, result order, stop strings, chat, echo-logprob loglikelihood, the API key, caching."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fault_server, under any pytest import mode

from fault_server import FaultServer, error, json_reply, ok, raw

from lmops.llm import LLM, CachedLLM, LLMError, OpenAICompatible
from lmops.llm.openai_compat import retry_after_seconds

MODEL = "fake-model"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def client(server: FaultServer, **kw) -> OpenAICompatible:
    options = dict(api_key_env=None, timeout=5.0, backoff_base=0.01, backoff_cap=0.05, progress=False)
    return OpenAICompatible(server.base_url, MODEL, **{**options, **kw})


# -- the wire format, order, concurrency -----------------------------------------------------------
def test_generate_groups_n_samples_per_prompt_in_input_order():
    prompts = [f"prompt {i}" for i in range(12)]
    latency = {p: 0.02 * ((7 * i) % 5) for i, p in enumerate(prompts)}  # later prompts often finish first
    with FaultServer(delay_fn=lambda body: latency[body["prompt"]], shuffle_choices=True) as server, \
            client(server, max_concurrency=4) as llm:
        assert isinstance(llm, LLM) and llm.name == f"openai:{MODEL}@{server.base_url}"
        out = llm.generate(prompts, n=3, max_new_tokens=9, temperature=0.7, top_p=0.9)
        assert out == [[f"echo:{p}#{j}" for j in range(3)] for p in prompts]
        arrival = [r.body["prompt"] for r in server.requests]
        assert sorted(arrival) == sorted(prompts)  # one request per prompt
        body = server.requests[0].body
        assert {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p", "n")} == \
            dict(model=MODEL, max_tokens=9, temperature=0.7, top_p=0.9, n=3)
        assert "stop" not in body and {r.path for r in server.requests} == {"/v1/completions"}


def test_batch_prompts_sends_lists_and_regroups_by_choice_index():
    prompts = [f"p{i}" for i in range(10)]
    with FaultServer(shuffle_choices=True) as server, client(server, batch_prompts=4) as llm:
        assert llm.generate(prompts, n=2) == [[f"echo:{p}#0", f"echo:{p}#1"] for p in prompts]
        assert sorted(len(r.body["prompt"]) for r in server.requests) == [2, 4, 4]


def test_at_most_max_concurrency_requests_are_in_flight():
    with FaultServer(default=ok(delay=0.2)) as server, client(server, max_concurrency=3) as llm:
        start = time.monotonic()
        out = llm.generate([f"q{i}" for i in range(9)])
        elapsed = time.monotonic() - start
        assert out == [[f"echo:q{i}#0"] for i in range(9)]
        assert server.max_in_flight == 3  # reached, never exceeded
        assert 0.55 < elapsed < 3.0  # three waves of 0.2 s
        server.max_in_flight = 0
        results = {}

        def caller(k):
            results[k] = llm.generate([f"t{k}-{i}" for i in range(4)])

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]  # they share one limit
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.max_in_flight == 3
        assert results == {k: [[f"echo:t{k}-{i}#0"] for i in range(4)] for k in range(3)}


def test_stop_strings_cut_client_side_when_the_server_ignores_them():
    with FaultServer(text_fn=lambda prompt, j: f"answer {j}. more\nlines") as server, client(server) as llm:
        assert llm.generate(["x"], stop=["\n", "."], n=2) == [["answer 0", "answer 1"]]
        assert server.requests[0].body["stop"] == ["\n", "."]
        assert llm.generate(["x"], stop="\n") == [["answer 0. more"]]


def test_chat_posts_messages_to_chat_completions():
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with FaultServer() as server, client(server) as llm:
        assert llm.chat([conv, conv[1:]], n=2, max_new_tokens=5) == [["chat:hi#0", "chat:hi#1"]] * 2
        assert [r.path for r in server.requests] == ["/v1/chat/completions"] * 2
        sent = sorted((r.body for r in server.requests), key=lambda b: len(b["messages"]))  # sent concurrently
        assert [b["messages"] for b in sent] == [conv[1:], conv] and sent[0]["max_tokens"] == 5


# -- retries ---------------------------------------------------------------------------------------
def test_429_waits_as_retry_after_says_then_succeeds():
    with FaultServer() as server, client(server) as llm:
        server.script(error(429, retry_after=1), ok())
        start = time.monotonic()
        assert llm.generate(["a"]) == [["echo:a#0"]]
        assert time.monotonic() - start >= 0.95
        first, second = server.requests
        assert second.at - first.at >= 0.95  # the backoff alone would be <= 0.01 s


def test_retry_after_is_capped_by_max_wait():
    with FaultServer() as server, client(server, max_wait=0.1) as llm:
        server.script(error(503, retry_after=100), ok())
        start = time.monotonic()
        assert llm.generate(["a"]) == [["echo:a#0"]]
        assert time.monotonic() - start < 2.0


def test_retry_after_seconds_and_http_dates():
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds("-3") == 0.0
    assert 3.0 < retry_after_seconds(formatdate(time.time() + 5, usegmt=True)) <= 5.0
    assert retry_after_seconds(formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_then_success(status):
    with FaultServer() as server, client(server) as llm:
        server.script(error(status))
        assert llm.generate(["a"]) == [["echo:a#0"]]
        assert len(server.requests) == 2


def test_a_reply_slower_than_the_timeout_is_retried():
    with FaultServer() as server, client(server, timeout=0.3) as llm:
        server.script(ok(delay=2.0), ok())
        start = time.monotonic()
        assert llm.generate(["a"]) == [["echo:a#0"]]
        assert time.monotonic() - start < 1.5  # it did not wait for the slow reply
        assert len(server.requests) == 2


def test_a_malformed_body_is_retried():
    with FaultServer() as server, client(server) as llm:
        server.script(raw('{"choices": [ oops'), json_reply({"choices": [{"index": 0}]}), ok())
        assert llm.generate(["a"]) == [["echo:a#0"]]
        assert len(server.requests) == 3


def test_always_malformed_is_an_llm_error_after_max_retries():
    with FaultServer(default=raw("<html>bad gateway</html>")) as server, client(server, max_retries=2) as llm:
        with pytest.raises(LLMError, match=r"failed after 2 retries.*not JSON.*bad gateway") as info:
            llm.generate(["a"])
        assert info.value.endpoint == f"{server.base_url}/completions"
        assert str(info.value).startswith(f"{server.base_url}/completions: ")
        assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_fail_at_once_with_the_body(status):
    with FaultServer(default=error(status, body='{"error": "prompt too long"}')) as server, client(server) as llm:
        with pytest.raises(LLMError, match=rf"HTTP {status}, not retried.*prompt too long"):
            llm.generate(["a"])
        assert len(server.requests) == 1


def test_empty_choices_is_an_llm_error():
    with FaultServer(default=json_reply({"choices": []})) as server, client(server, max_retries=1) as llm:
        with pytest.raises(LLMError, match="expected 1 choices, got 0"):
            llm.generate(["a"])
        assert len(server.requests) == 2


def test_a_server_that_ignores_n_is_named():
    with FaultServer(default=json_reply({"choices": [{"index": 0, "text": "x"}]})) as server, \
            client(server, max_retries=0) as llm:
        with pytest.raises(LLMError, match=r"expected 2 choices, got 1 \(does the server support n > 1\?\)"):
            llm.generate(["a"], n=2)


def test_a_refused_connection_is_retried_then_an_llm_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = OpenAICompatible(f"http://127.0.0.1:{port}/v1", MODEL, api_key_env=None, max_retries=2,
                           backoff_base=0.01, progress=False)
    with llm, pytest.raises(LLMError, match="failed after 2 retries.*connection failed"):
        llm.generate(["a"])


def test_a_request_that_fails_for_good_stops_the_batch():
    with FaultServer(default=ok(delay=0.05)) as server, client(server, max_concurrency=2) as llm:
        server.script(error(400))
        with pytest.raises(LLMError, match="HTTP 400"):
            llm.generate([f"q{i}" for i in range(20)])
        time.sleep(0.5)  # all 20 would have been sent by now (10 waves of 0.05 s)
        assert len(server.requests) <= 4  # the rest were never sent
        assert llm.generate(["again"]) == [["echo:again#0"]]  # the instance still works


# -- loglikelihood ---------------------------------------------------------------------------------
CONTEXTS = ["The cat", "A dog"]
CONTINUATIONS = [" sat down", " ran"]
EXPECTED = [(-0.25 * (4 + 5), 2), (-0.25 * 4, 1)]  # the server's logprob: -0.25 per character of a token


@pytest.mark.parametrize("options", [{}, {"bos": "<s>"}], ids=["plain", "bos-counted-in-offsets"])
def test_loglikelihood_sums_the_echoed_continuation_tokens(options):
    with FaultServer(**options) as server, client(server) as llm:
        assert llm.loglikelihood(CONTEXTS, CONTINUATIONS) == EXPECTED
        body = server.requests[0].body
        assert body["prompt"] in ("The cat sat down", "A dog ran")
        assert (body["echo"], body["logprobs"], body["max_tokens"]) == (True, 1, 0)


def test_loglikelihood_falls_back_to_max_tokens_1_and_ignores_the_generated_token():
    with FaultServer(reject_max_tokens_zero=True) as server, client(server, max_concurrency=1) as llm:
        assert llm.loglikelihood(CONTEXTS[:1], CONTINUATIONS[:1]) == EXPECTED[:1]
        assert [r.body["max_tokens"] for r in server.requests] == [0, 1]
        assert llm.loglikelihood(CONTEXTS, CONTINUATIONS) == EXPECTED
        assert [r.body["max_tokens"] for r in server.requests] == [0, 1, 1, 1]  # remembered


def test_loglikelihood_with_batched_prompts():
    with FaultServer(shuffle_choices=True) as server, client(server, batch_prompts=2) as llm:
        assert llm.loglikelihood(CONTEXTS * 2, CONTINUATIONS * 2) == EXPECTED * 2
        assert len(server.requests) == 2


def test_a_token_straddling_the_context_end_is_an_error():
    with FaultServer() as server, client(server) as llm:
        with pytest.raises(LLMError, match=r"tokenization is not aligned: the token ' cat'.*start the continuation "
                                           r"with a space"):
            llm.loglikelihood(["The ca"], ["t sat"])
        assert len(server.requests) == 1  # not retried: the answer would not change


def test_a_server_without_echo_logprobs_is_named():
    with FaultServer(echo_logprobs=False) as server, client(server) as llm:
        with pytest.raises(LLMError, match="does not support echo logprobs"):
            llm.loglikelihood(CONTEXTS, CONTINUATIONS)
    with FaultServer(default=error(400, body='{"error": "echo is not supported"}')) as server, client(server) as llm:
        with pytest.raises(LLMError, match="max_tokens=0 and with max_tokens=1.*echo is not supported.*may not "
                                           "support echo logprobs"):
            llm.loglikelihood(CONTEXTS[:1], CONTINUATIONS[:1])
        assert len(server.requests) == 2


def test_loglikelihood_needs_a_context():
    with FaultServer() as server, client(server) as llm:
        with pytest.raises(ValueError, match=r"contexts\[1\]: expected a non-empty string"):
            llm.loglikelihood(["a", ""], ["b", "c"])
        assert not server.requests


# -- the client itself -----------------------------------------------------------------------------
def test_the_api_key_comes_from_the_named_environment_variable(monkeypatch):
    with FaultServer() as server:
        monkeypatch.setenv("LMOPS_TEST_KEY", "sk-secret")
        with client(server, api_key_env="LMOPS_TEST_KEY") as llm:
            llm.generate(["a"])
            assert "sk-secret" not in repr(llm) and "sk-secret" not in llm.name
        monkeypatch.delenv("LMOPS_TEST_KEY")
        with client(server, api_key_env="LMOPS_TEST_KEY") as llm:
            llm.generate(["b"])
        assert server.requests[0].headers["authorization"] == "Bearer sk-secret"
        assert "authorization" not in server.requests[1].headers


def test_a_cached_rerun_makes_no_request(tmp_path):
    with FaultServer() as server, client(server) as llm:
        cached = CachedLLM(llm, tmp_path / "cache.sqlite")
        first = cached.generate(["a", "b", "c"], n=2, temperature=0.5)
        ll = cached.loglikelihood(CONTEXTS, CONTINUATIONS)
        sent = len(server.requests)
        assert sent == 5
        assert cached.generate(["c", "a", "b"], n=2, temperature=0.5) == [first[2], first[0], first[1]]
        assert cached.loglikelihood(CONTEXTS, CONTINUATIONS) == ll == EXPECTED
        assert len(server.requests) == sent


def test_base_url_trailing_slash_and_no_added_v1():
    with FaultServer() as server:
        with OpenAICompatible(server.base_url + "/", MODEL, api_key_env=None) as llm:
            assert llm.name == f"openai:{MODEL}@{server.base_url}"
            assert llm.generate(["a"]) == [["echo:a#0"]]
        root = server.base_url[: -len("/v1")]
        with OpenAICompatible(root, MODEL, api_key_env=None) as llm, \
                pytest.raises(LLMError, match=rf"^{root}/completions: HTTP 404"):
            llm.generate(["a"])


def test_works_inside_a_running_event_loop():
    async def notebook_cell(llm):
        return llm.generate(["a"])

    with FaultServer() as server, client(server) as llm:
        assert asyncio.run(notebook_cell(llm)) == [["echo:a#0"]]


def test_close_releases_and_a_later_call_reopens():
    with FaultServer() as server:
        llm = client(server)
        with llm:
            llm.generate(["a"])
            assert llm._client is not None
        assert llm._client is None and llm._pool is None
        assert llm.generate(["b"]) == [["echo:b#0"]]
        llm.close()


def test_a_progress_bar_for_large_batches_only(capsys):
    with FaultServer() as server, client(server, progress=True) as llm:
        llm.generate([f"q{i}" for i in range(5)])
        assert capsys.readouterr().err == ""
        llm.generate([f"q{i}" for i in range(25)])
        assert f"{MODEL} completions" in capsys.readouterr().err
    with FaultServer() as server, client(server, progress=False) as llm:
        llm.generate([f"q{i}" for i in range(25)])
        assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(base_url="127.0.0.1:8000/v1"), "base_url: expected an http:// or https:// URL"),
        (dict(model=""), "model: expected a non-empty string"),
        (dict(max_concurrency=0), "max_concurrency: expected a positive int"),
        (dict(batch_prompts=0), "batch_prompts: expected a positive int"),
        (dict(max_retries=-1), "max_retries: expected an int >= 0"),
        (dict(timeout=0), "timeout: expected a finite number > 0"),
        (dict(backoff_base=-1.0), "backoff_base: expected a finite number >= 0"),
        (dict(api_key_env=""), "api_key_env: expected an environment variable name or None"),
    ],
)
def test_constructor_checks(kwargs, match):
    args = dict(base_url="http://127.0.0.1:8000/v1", model=MODEL)
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(ValueError, match=match):
        OpenAICompatible(args["base_url"], args["model"], **kwargs)
