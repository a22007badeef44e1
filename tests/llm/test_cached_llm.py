"""CachedLLM: a rerun costs nothing, an interrupted run resumes, nothing malformed is cached, and the
cache is safe across threads and processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import pytest

from lmops.llm import CachedLLM, FunctionLLM, LLMError


class Counting:
    """A FunctionLLM-like backend that counts what reaches it and can fail on its k-th call."""

    def __init__(self, name="counting", fail_on_call=None):
        self.name = name
        self.calls = 0
        self.prompts = []
        self.fail_on_call = fail_on_call
        self.inner = FunctionLLM(lambda p, *, sample, temperature, **kw: f"{p}#{sample}@{temperature}",
                                 name=name, loglikelihood_fn=lambda c, t: (-0.5 * len(t), len(t)))

    def _tick(self, items):
        self.calls += 1
        self.prompts.extend(items)
        if self.fail_on_call == self.calls:
            raise ConnectionError("backend went away")

    def generate(self, prompts, **kw):
        self._tick(prompts)
        return self.inner.generate(prompts, **kw)

    def chat(self, conversations, **kw):
        self._tick([c[-1]["content"] for c in conversations])
        return self.inner.chat(conversations, **kw)

    def loglikelihood(self, contexts, continuations):
        self._tick(list(zip(contexts, continuations)))
        return self.inner.loglikelihood(contexts, continuations)


PROMPTS = [f"q{i}" for i in range(10)]


def test_a_rerun_costs_nothing_and_survives_reopening(tmp_path):
    backend = Counting()
    cached = CachedLLM(backend, tmp_path / "c.sqlite", chunk_size=4)
    first = cached.generate(PROMPTS, n=2, temperature=0.7)
    assert first == [[f"{p}#0@0.7", f"{p}#1@0.7"] for p in PROMPTS]
    assert backend.calls == 3 and cached.misses == 10  # chunks of 4, 4, 2
    assert cached.generate(PROMPTS, n=2, temperature=0.7) == first and backend.calls == 3 and cached.hits == 10
    cached.close()
    again = CachedLLM(Counting(), tmp_path / "c.sqlite")  # a new process would see the same file
    assert again.generate(PROMPTS[::-1], n=2, temperature=0.7) == first[::-1]
    assert again.llm.calls == 0


@pytest.mark.parametrize(
    "change",
    [dict(n=3), dict(temperature=0.0), dict(top_p=0.5), dict(stop=["#"]), dict(max_new_tokens=9)],
)
def test_every_request_argument_is_part_of_the_key(tmp_path, change):
    backend = Counting()
    cached = CachedLLM(backend, tmp_path / "c.sqlite")
    base = dict(n=2, temperature=0.7, top_p=1.0, stop=None, max_new_tokens=256)
    cached.generate(PROMPTS[:3], **base)
    calls = backend.calls
    cached.generate(PROMPTS[:3], **{**base, **change})
    assert backend.calls == calls + 1  # a different request: nothing answered from the cache
    cached.generate(PROMPTS[:3], **base)
    assert backend.calls == calls + 1


def test_the_model_name_is_part_of_the_key(tmp_path):
    path = tmp_path / "c.sqlite"
    CachedLLM(Counting(name="model-a"), path).generate(PROMPTS[:2])
    other = Counting(name="model-b")
    CachedLLM(other, path).generate(PROMPTS[:2])
    assert other.calls == 1


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "c.sqlite"
    crashing = Counting(fail_on_call=2)
    with pytest.raises(ConnectionError):
        CachedLLM(crashing, path, chunk_size=4).generate(PROMPTS)
    assert crashing.prompts[:4] == PROMPTS[:4]  # the first chunk came back before the crash
    resumed = Counting()
    out = CachedLLM(resumed, path, chunk_size=4).generate(PROMPTS)
    assert resumed.prompts == PROMPTS[4:]  # only what was not written
    assert out == [[f"{p}#0@0.0"] for p in PROMPTS]


def test_malformed_answers_are_never_cached(tmp_path):
    class WrongShape(Counting):
        def generate(self, prompts, **kw):
            self._tick(prompts)
            return [["only one"] for _ in prompts]  # n=2 was asked

    path = tmp_path / "c.sqlite"
    bad = WrongShape()
    with pytest.raises(LLMError, match="expected 2 completion strings per request"):
        CachedLLM(bad, path).generate(PROMPTS[:2], n=2)
    good = Counting()
    assert CachedLLM(good, path).generate(PROMPTS[:2], n=2)[0] == ["q0#0@0.0", "q0#1@0.0"]
    assert good.calls == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0] == 2


def test_chat_and_loglikelihood_are_cached(tmp_path):
    backend = Counting()
    cached = CachedLLM(backend, tmp_path / "c.sqlite")
    convs = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    assert cached.chat(convs) == cached.chat(convs) == [[f"user: {p}\nassistant:#0@0.0"] for p in PROMPTS[:3]]
    ll = cached.loglikelihood(["c", "c"], ["ab", "abcd"])
    assert ll == cached.loglikelihood(["c", "c"], ["ab", "abcd"]) == [(-1.0, 2), (-2.0, 4)]
    assert backend.calls == 2

    class PositiveLogprob(Counting):
        def loglikelihood(self, contexts, continuations):
            return [(0.5, 1) for _ in contexts]

    with pytest.raises(LLMError, match="log-probability <= 0"):
        CachedLLM(PositiveLogprob(), tmp_path / "c.sqlite").loglikelihood(["x"], ["y"])


def test_threads_share_one_cache(tmp_path):
    backend = Counting()
    cached = CachedLLM(backend, tmp_path / "c.sqlite", chunk_size=3)
    results, errors = {}, []

    def worker(k):
        try:
            results[k] = cached.generate(PROMPTS[k % 3 :], n=1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, out in results.items():
        assert out == [[f"{p}#0@0.0"] for p in PROMPTS[k % 3 :]]


def _process_worker(path, offset):
    cached = CachedLLM(Counting(), path, chunk_size=2)
    prompts = [f"p{i}" for i in range(offset, offset + 40)]
    assert cached.generate(prompts) == [[f"{p}#0@0.0"] for p in prompts]


def test_processes_share_one_cache_file(tmp_path):
    path = tmp_path / "c.sqlite"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_worker, args=(path, off)) for off in (0, 20, 10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    after = Counting()
    CachedLLM(after, path).generate([f"p{i}" for i in range(60)])
    assert after.calls == 0  # every prompt of the three overlapping runs was written once


def test_constructor_checks(tmp_path):
    with pytest.raises(TypeError, match="llm: expected an lmops.llm backend with generate"):
        CachedLLM(object(), tmp_path / "c.sqlite")
    with pytest.raises(ValueError, match="chunk_size: expected a positive int"):
        CachedLLM(Counting(), tmp_path / "c.sqlite", chunk_size=0)
