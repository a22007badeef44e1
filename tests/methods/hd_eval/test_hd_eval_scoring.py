"""Per-criterion scores: probability weighting, the parsed fallback, retries and missing scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmops.llm import CachedLLM, FunctionLLM, LLMError
from lmops.methods.hd_eval import CriterionScorer, expected_score, parse_score, score_prompt

PROBS = {" 1": 0.1, " 2": 0.2, " 3": 0.3, " 4": 0.3, " 5": 0.1}  # expected score 3.1


def _never(prompt, **_):
    raise AssertionError("generate must not be called when log-probabilities exist")


def test_probability_weighted_score_is_the_expected_value():
    seen = []

    def loglik(context, continuation):
        seen.append((context, continuation))
        # half the mass on other tokens: only the score tokens' relative probabilities count
        return math.log(PROBS[continuation] * 0.5), 1

    scorer = CriterionScorer(FunctionLLM(_never, loglikelihood_fn=loglik), "Rate it.", progress=False)
    got = scorer.score(["a text", "another"], [("clarity", "is it clear")])
    assert got.values.shape == (2, 1)
    np.testing.assert_allclose(got.values[:, 0], [3.1, 3.1], rtol=0, atol=1e-12)
    assert got.by_logprob == 2 and got.by_parsing == 0 and not got.failures
    assert [c for _, c in seen[:5]] == [" 1", " 2", " 3", " 4", " 5"]
    assert seen[0][0] == score_prompt("Rate it.", "clarity", "is it clear", "a text")
    assert seen[0][0].endswith("Score from 1 to 5:")


def test_expected_score_on_a_different_scale_and_with_impossible_scores():
    assert expected_score([math.log(0.5), math.log(0.5), -math.inf], [0, 1, 2]) == pytest.approx(0.5)
    assert expected_score([0.0, -math.inf], [1, 10]) == 1.0
    with pytest.raises(ValueError):
        expected_score([-math.inf, -math.inf], [1, 2])


def test_parsed_fallback_when_loglikelihood_is_not_implemented():
    calls = []

    def fn(prompt, **kw):
        calls.append(kw["temperature"])
        return "The score is 4, because it reads well." if "good" in prompt else "Score: 2"

    scorer = CriterionScorer(FunctionLLM(fn), "Rate it.", progress=False)  # no loglikelihood_fn
    got = scorer.score(["good text", "bad text"], [("clarity", "clarity"), ("style", "style")])
    np.testing.assert_array_equal(got.values, [[4, 4], [2, 2]])
    assert got.by_parsing == 4 and got.by_logprob == 0
    assert scorer.use_logprobs is False  # switched off for good after NotImplementedError
    assert calls == [0.0] * 4  # greedy


def test_fallback_through_a_cache_too(tmp_path):
    llm = CachedLLM(FunctionLLM(lambda p, **_: "3"), tmp_path / "c.sqlite")
    got = CriterionScorer(llm, "Rate it.", progress=False).score(["x"], [("c", "c")])
    assert got.values[0, 0] == 3


def test_unparsable_answers_are_retried_then_missing():
    attempts: dict[str, int] = {}

    def fn(prompt, **kw):
        key = "late" if "late" in prompt else "never" if "never" in prompt else "ok"
        attempts[key] = attempts.get(key, 0) + 1
        if key == "ok" or (key == "late" and kw["sample"] == 1):  # the second sample of a retry parses
            return "5"
        return "I would rather not say."

    scorer = CriterionScorer(FunctionLLM(fn), "Rate it.", retries=2, progress=False)
    got = scorer.score(["ok text", "late text", "never text"], [("c", "c")])
    assert got.values[0, 0] == 5 and got.values[1, 0] == 5
    assert math.isnan(got.values[2, 0])
    assert got.missing_per_criterion() == [1]
    assert [(i, j) for i, j, _ in got.failures] == [(2, 0)]
    assert attempts["ok"] == 1
    assert attempts["late"] == 1 + 2  # the first try, then n=2 on the first retry
    assert attempts["never"] == 1 + 2 + 3  # every retry (n = 2, then 3), then given up


def test_backend_error_in_loglikelihood_falls_back_to_parsing():
    def loglik(context, continuation):
        raise LLMError("test", "server down")

    got = CriterionScorer(FunctionLLM(lambda p, **_: "Score: 1", loglikelihood_fn=loglik), "t",
                          progress=False).score(["x", "y"], [("c", "c")])
    np.testing.assert_array_equal(got.values[:, 0], [1, 1])
    assert got.by_parsing == 2


def test_chunking_batches_all_cells():
    batches = []

    class Counting(FunctionLLM):
        def loglikelihood(self, contexts, continuations):
            batches.append(len(contexts))
            return super().loglikelihood(contexts, continuations)

    llm = Counting(_never, loglikelihood_fn=lambda c, t: (-float(t), 1))
    got = CriterionScorer(llm, "t", chunk_size=4, progress=False).score([f"s{i}" for i in range(5)],
                                                                        [("a", "a"), ("b", "b")])
    assert batches == [20, 20, 10]  # 10 cells x 5 scores, 4 cells per call
    p = np.exp(-np.arange(1, 6))
    assert np.allclose(got.values, float(p @ np.arange(1, 6) / p.sum()))


@pytest.mark.parametrize("text, expected", [
    ("4", 4.0), ("Score: 3", 3.0), ("**Score:** 5/5", 5.0), ("On a scale of 1 to 5, the score is 2.", 2.0),
    ("I'd give it 3.5 overall", 3.5), ("9, no wait, 4", 4.0),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text", ["", "excellent", "7", "0 out of 10"])
def test_parse_score_rejects(text):
    with pytest.raises(ValueError):
        parse_score(text)
