"""ask(): parse, retry malformed answers with fresh requests (never a cached replay), count and skip."""

import pytest

from lmops.llm import CachedLLM, FunctionLLM, LLMError, ask, extract_json


@pytest.mark.parametrize(
    "text, expect, value",
    [
        ('{"a": 1}', dict, {"a": 1}),
        ('Sure! Here it is:\n```json\n[1, 2]\n```\nDone.', list, [1, 2]),
        ('The answer is {"q": "x", "a": [1]} as asked.', dict, {"q": "x", "a": [1]}),
        ('noise [1, 2] then {"k": 2}', dict, {"k": 2}),
        ('[{"question": "q"}]', None, [{"question": "q"}]),
    ],
)
def test_extract_json(text, expect, value):
    assert extract_json(text, expect=expect) == value


def test_extract_json_fails_clearly():
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("no json here {oops")
    with pytest.raises(ValueError):
        extract_json("[1, 2]", expect=dict)


def test_ask_retries_then_counts_and_skips(tmp_path):
    calls = []

    def fn(prompt, temperature, sample, **kw):
        calls.append((prompt, temperature, sample))
        if prompt == "good":
            return "7"
        if prompt == "late":  # parses only as the second sample of a retry
            return "8" if sample == 1 else "eight"
        return "never a number"

    llm = CachedLLM(FunctionLLM(fn, name="scripted"), tmp_path / "c.sqlite")
    result = ask(llm, ["good", "late", "bad"], lambda s: int(s.strip()), retries=2)
    assert result.values == [7, 8, None]
    assert result.raw == ["7", "8", None]
    assert [i for i, _ in result.failures] == [2] and "ValueError" in result.failures[0][1]
    assert result.backend_failed == set() and result.n_malformed == 1
    assert result.retries == 3  # attempt 1: late and bad; attempt 2: bad
    # retries are new requests at the retry temperature (a cache cannot replay the failed answer)
    assert {(p, t) for p, t, _ in calls if p == "bad"} == {("bad", 0.0), ("bad", 0.7)}
    assert len([c for c in calls if c[0] == "bad"]) == 1 + 2 + 3
    # a rerun is answered from the cache with the same outcome
    before = len(calls)
    again = ask(llm, ["good", "late", "bad"], lambda s: int(s.strip()), retries=2)
    assert again.values == result.values and len(calls) == before


def test_ask_counts_backend_errors():
    def fn(prompt, **kw):
        raise LLMError("http://x", "503 after retries")

    result = ask(FunctionLLM(fn), ["a", "b"], str, retries=1)
    assert result.values == [None, None] and result.n_failed == 2 and "503" in result.failures[0][1]
    assert result.backend_failed == {0, 1} and result.n_malformed == 0


def test_ask_checks_its_arguments():
    llm = FunctionLLM(lambda p, **k: p)
    with pytest.raises(ValueError, match="retries"):
        ask(llm, ["a"], str, retries=-1)
    with pytest.raises(TypeError, match="parse"):
        ask(llm, ["a"], "not callable")
    # chat requests go through chat()
    assert ask(llm, [[{"role": "user", "content": "hi"}]], str, chat=True).values == ["user: hi\nassistant:"]
