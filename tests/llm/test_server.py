"""lmops serve: the OpenAI wire format (completions, chat, logprobs, echo, streaming, errors) over a tiny
local model, answers equal to HFLocal's, and concurrent requests batched."""

import json
import math
import subprocess
import sys
import threading
import time

import httpx
import pytest

from lmops.llm import HFLocal
from lmops.llm.server import BatchingWorker, _held_back, create_app
from llm_models import reference_greedy, reference_loglikelihood, save_tiny_lm, tiny_lm
from serve_util import running

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=5)


@pytest.fixture(scope="module")
def base_url(lm):
    model, tok = lm
    with running(create_app(HFLocal(model, tok, name="tiny"))) as url:
        yield url


def post(url, path, body, **kw):
    return httpx.post(url + path, json=body, timeout=60, **kw)


def test_models_and_health(base_url):
    r = httpx.get(base_url + "/models")
    assert r.status_code == 200
    (entry,) = r.json()["data"]
    assert entry["id"] == "tiny" and entry["object"] == "model"
    assert httpx.get(base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_completions_match_the_model(base_url, lm):
    model, tok = lm
    r = post(base_url, "/completions", {"model": "tiny", "prompt": ["The cat", "Hello"], "max_tokens": 6,
                                        "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["text"] for c in body["choices"]] == [reference_greedy(model, tok, p, 6) for p in ("The cat", "Hello")]
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 12, "total_tokens": 24}
    assert all(c["finish_reason"] == "length" for c in body["choices"])


def test_n_samples_are_indexed_per_prompt(base_url):
    r = post(base_url, "/completions", {"prompt": ["ab", "cd"], "max_tokens": 4, "temperature": 1.0, "n": 3})
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))


def test_logprobs_and_echo_give_the_exact_loglikelihood(base_url, lm):
    model, tok = lm
    context, continuation = "Question: 2+2? Answer:", " 4 and more"
    r = post(base_url, "/completions", {"prompt": context + continuation, "max_tokens": 0, "echo": True,
                                        "logprobs": 1, "temperature": 0})
    (choice,) = r.json()["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == context + continuation
    assert lp["token_logprobs"][0] is None and len(lp["tokens"]) == len(lp["text_offset"]) == len(context + continuation)
    total = sum(v for v, off in zip(lp["token_logprobs"], lp["text_offset"]) if off >= len(context))
    ref, count = reference_loglikelihood(model, tok, context, continuation)
    assert math.isclose(total, ref, rel_tol=1e-5)
    assert all(len(t) == 1 for t in lp["top_logprobs"][1:])
    # generated tokens: offsets run through the text, logprobs are the model's
    r = post(base_url, "/completions", {"prompt": "The cat", "max_tokens": 5, "logprobs": 2, "temperature": 0})
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 5 and lp["text_offset"] == [0, 1, 2, 3, 4]
    assert all(list(top.values())[0] == v for top, v in zip(lp["top_logprobs"], lp["token_logprobs"]))


def test_chat_completions(base_url, lm):
    model, tok = lm
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = post(base_url, "/chat/completions", {"messages": messages, "max_tokens": 5, "temperature": 0,
                                             "logprobs": True, "top_logprobs": 2})
    body = r.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == reference_greedy(model, tok, "system: be brief\nuser: hi\nassistant:", 5)
    content = choice["logprobs"]["content"]
    assert len(content) == 5 and all(len(c["top_logprobs"]) == 2 for c in content)


def _events(response) -> list:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_streaming_sends_the_same_text_in_pieces(base_url, lm):
    model, tok = lm
    with httpx.stream("POST", base_url + "/completions", json={"prompt": "The cat", "max_tokens": 8,
                                                               "temperature": 0, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    pieces = [e["choices"][0]["text"] for e in events[:-1]]
    assert len([p for p in pieces if p]) >= 2  # streamed, not one block
    assert "".join(pieces) == reference_greedy(model, tok, "The cat", 8)
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    with httpx.stream("POST", base_url + "/chat/completions",
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
                            "stream": True}, timeout=60) as r:
        events = _events(r)
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant"}
    assert "".join(d.get("content", "") for d in deltas) == reference_greedy(model, tok, "user: hi\nassistant:", 6)


def test_streaming_honours_stop_strings(base_url, lm):
    model, tok = lm
    free = reference_greedy(model, tok, "Hello", 12)
    stop = free[3:5]
    with httpx.stream("POST", base_url + "/completions", json={"prompt": "Hello", "max_tokens": 12,
                                                               "temperature": 0, "stream": True, "stop": stop},
                      timeout=60) as r:
        events = _events(r)
    text = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert text == free[: free.find(stop)] and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert _held_back("abc<", ["<|end|>"]) == 1 and _held_back("abc", ["<|end|>"]) == 0


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "x", "temperature": 3}, 400, "temperature"),
        ({"prompt": 7}, 400, "prompt"),
        ({"prompt": "x", "model": "other"}, 404, "model"),
        ({"prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"prompt": "x", "stop": [""]}, 400, "stop"),
        ({"prompt": "x" * 300, "max_tokens": 8}, 400, None),  # longer than the model's positions
    ],
)
def test_bad_requests_get_openai_errors(base_url, body, status, param):
    r = post(base_url, "/completions", body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_unknown_route_and_bad_json(base_url):
    assert httpx.get(base_url + "/nothing").status_code == 404
    r = httpx.post(base_url + "/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = post(base_url, "/chat/completions", {"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_concurrent_requests_share_batches(lm):
    model, tok = lm
    llm = HFLocal(model, tok, name="tiny", batch_size=8)
    calls = []
    original = llm.complete

    def counting(ids, **kw):
        calls.append(len(ids))
        time.sleep(0.05)  # long enough for the other requests to queue behind the first
        return original(ids, **kw)

    llm.complete = counting
    prompts = [f"prompt number {i}" for i in range(8)]
    with running(create_app(llm)) as url:
        results = [None] * 8

        def one(i):
            results[i] = post(url, "/completions", {"prompt": prompts[i], "max_tokens": 3, "temperature": 0}).json()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(calls) == 8 and len(calls) < 8  # some requests ran together
    for p, r in zip(prompts, results):
        assert r["choices"][0]["text"] == reference_greedy(model, tok, p, 3)


def test_worker_hands_errors_to_the_request(lm):
    model, tok = lm
    worker = BatchingWorker(HFLocal(model, tok, max_length=8))
    try:
        with pytest.raises(ValueError, match="exceed"):
            worker.submit("generate", [[5] * 6], dict(max_new_tokens=4)).result(timeout=30)
        assert worker.submit("generate", [[5, 6]], dict(max_new_tokens=2)).result(timeout=30)[0][0].prompt_tokens == 2
    finally:
        worker.close()


def test_lmops_serve_command_serves_a_packed_model(tmp_path):
    """The CLI end to end: `lmops serve` on a packed BitNet directory in a subprocess."""
    import socket

    path = save_tiny_lm(tmp_path / "packed", packed=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lmops", "serve", str(path), "--port", str(port),
                             "--threads", "1", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"lmops serve did not come up: {proc.stdout.read()}")
            time.sleep(0.2)
        assert httpx.get(url + "/models").json()["data"][0]["id"] == "packed"
        r = post(url, "/completions", {"prompt": "The cat", "max_tokens": 5, "temperature": 0})
        from lmops.llm import load_local_model

        model, tok = load_local_model(path)
        assert r.json()["choices"][0]["text"] == reference_greedy(model, tok, "The cat", 5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_rejects_a_missing_directory(tmp_path, capsys):
    from lmops.cli import main

    assert main(["serve", str(tmp_path / "none")]) == 2
    assert "MODEL_DIR" in capsys.readouterr().err


def test_serve_engine_flags_reach_the_backend(tmp_path, monkeypatch):
    """--threads auto, --head-dtype and --compile become HFLocal's engine_options (the server itself is
    not started here)."""
    import lmops.llm.server as server
    from lmops.cli import main

    path = save_tiny_lm(tmp_path / "plain")
    got = {}
    monkeypatch.setattr(server, "serve", lambda llm, **kwargs: got.setdefault("llm", llm))
    assert main(["serve", str(path), "--threads", "auto", "--head-dtype", "int8", "--compile"]) == 0
    assert got["llm"].engine_options == {"threads": "auto", "head_dtype": "int8", "compile": True}
    got.clear()
    assert main(["serve", str(path)]) == 0
    assert got["llm"].engine_options == {}
