"""Se2 candidate scoring: the prompt order (candidates prepended), the L1-normalised option losses, the
generation metric, and failed LLM calls skipped and counted."""

import math
import zlib

import pytest

from lmops.llm import FunctionLLM, LLMError
from lmops.methods.se2 import (
    SEPARATOR,
    ClassificationScorer,
    Example,
    GenerationScorer,
    Pool,
    ScoreConfig,
    Template,
    score_candidates,
    scoring_prompt,
)
from lmops.methods.se2.sampling import score_items

OPTS = ["yes", "no", "maybe"]


def _pool(n=12):
    return Pool([Example(i, f"question {i} about t{i % 3}", options=list(OPTS), gold=i % 3) for i in range(n)])


class Recorder:
    """A loglikelihood_fn that records every context and gives each option a fixed per-token NLL."""

    def __init__(self, nll=None):
        self.contexts = []
        self.nll = nll or (lambda ctx, option: 1.0 + 0.1 * OPTS.index(option))

    def __call__(self, context, continuation):
        self.contexts.append(context)
        n = len(continuation)
        return -self.nll(context, continuation.strip()) * n, n


def test_candidate_is_prepended_before_the_chosen_examples_and_the_query():
    pool, t = _pool(), Template()
    rec = Recorder()
    llm = FunctionLLM(lambda p, **k: "", loglikelihood_fn=rec)
    e1, e2, cand, query = 3, 7, 5, pool[0]
    records, skipped = score_items(llm, ClassificationScorer(t), pool, {0: query}, [(0, [e2, e1], [cand])],
                                   template=t, step=3, progress=False)
    expected = (t.demonstration(pool[cand]) + " \n " + t.demonstration(pool[e2]) + " \n "
                + t.demonstration(pool[e1]) + " \n " + t.question(query))
    assert rec.contexts == [expected] * len(OPTS)  # one loglikelihood request per option, same context
    assert scoring_prompt(pool, t, cand, [e2, e1], query) == expected
    assert skipped == 0 and records[0].chosen == [e2, e1] and [c.id for c in records[0].ctxs] == [cand]


def test_three_steps_prepend_each_pick_and_score_cand_e2_e1_x():
    pool, t = _pool(15), Template()
    rec = Recorder(nll=lambda ctx, option: 1.0 + 0.3 * OPTS.index(option) + 0.01 * (zlib.crc32(ctx.encode()) % 7))
    llm = FunctionLLM(lambda p, **k: "", loglikelihood_fn=rec)
    data = score_candidates(llm, pool, config=ScoreConfig(n_candidates=5, steps=3), progress=False)
    seen = set(rec.contexts)
    step2 = {r.query_id: r for part in data.steps[1] for r in part}
    step1 = {r.query_id: r for part in data.steps[0] for r in part}
    step3 = [r for part in data.steps[2] for r in part]
    assert len(step3) == len(pool)
    for r in step3:
        e2, e1 = r.chosen
        assert e1 == step2[r.query_id].chosen[0] and e1 in {c.id for c in step1[r.query_id].ctxs}
        assert e2 in {c.id for c in step2[r.query_id].ctxs}
        for c in r.ctxs:
            assert SEPARATOR.join([t.demonstration(pool[c.id]), t.demonstration(pool[e2]),
                                   t.demonstration(pool[e1]), t.question(pool[r.query_id])]) in seen


def test_option_losses_are_mean_token_nlls_l1_normalised_and_gold_share_is_the_loss():
    pool = _pool(3)
    nlls = {"yes": 0.5, "no": 1.5, "maybe": 2.0}

    def ll(ctx, cont):
        n = {"yes": 1, "no": 4, "maybe": 2}[cont.strip()]  # different token counts: the mean matters
        return -nlls[cont.strip()] * n, n

    llm = FunctionLLM(lambda p, **k: "", loglikelihood_fn=ll)
    scorer = ClassificationScorer()
    q_gold_no = Example(50, "q", options=list(OPTS), gold=1)
    q_gold_yes = Example(51, "q", options=list(OPTS), gold=0)
    (loss, acc, pred), (loss2, acc2, pred2) = scorer(llm, ["ctx", "ctx"], [q_gold_no, q_gold_yes])
    assert loss == pytest.approx(1.5 / 4.0) and acc == 0.0 and pred == 0
    assert loss2 == pytest.approx(0.5 / 4.0) and acc2 == 1.0 and pred2 == 0
    assert pool  # the pool is not needed by the scorer itself


def test_candidates_are_ranked_by_loss_ascending():
    pool, t = _pool(10), Template()
    # candidate k's gold NLL is lower the larger k is: the ranking must put the largest id first
    def ll(ctx, cont):
        cand = int(ctx.split(" ")[1])
        gold = OPTS[0]
        v = 2.0 - 0.1 * cand if cont.strip() == gold else 1.0
        return -v, 1

    llm = FunctionLLM(lambda p, **k: "", loglikelihood_fn=ll)
    q = Example(100, "the query", options=list(OPTS), gold=0)
    records, _ = score_items(llm, ClassificationScorer(t), pool, {100: q}, [(100, [], [2, 9, 4, 7])],
                             template=t, step=1, progress=False)
    assert [c.id for c in records[0].ctxs] == [9, 7, 4, 2]
    assert [c.one_shot_acc for c in records[0].ctxs] == [0.0] * 4  # gold NLL >= 1.1 > 1.0 of the others
    losses = [c.loss for c in records[0].ctxs]
    assert losses == sorted(losses)


def test_generation_scorer_greedy_with_newline_stop_and_metric():
    calls = []

    def gen(prompt, **kw):
        calls.append(kw)
        return "the cat sat\nextra" if "good" in prompt else "zzz"

    llm = FunctionLLM(gen)
    q = Example(1, "q", answer="the cat sat")
    exact = lambda pred, ref: float(pred.strip() == ref.strip())
    out = GenerationScorer(exact)(llm, ["good ctx", "bad ctx"], [q, q])
    assert out[0] == (0.0, 1.0, "the cat sat") and out[1] == (1.0, 0.0, "zzz")
    assert all(k["max_new_tokens"] == 100 and k["stop"] == ["\n"] and k["temperature"] == 0.0 for k in calls)
    default = GenerationScorer()(llm, ["good ctx", "bad ctx"], [q, q])  # chrF in [0, 1]
    assert default[0][1] == pytest.approx(1.0) and 0.0 <= default[1][1] < 0.2


def test_failed_llm_calls_are_retried_then_skipped_and_counted():
    pool, t = _pool(8), Template()
    attempts = {"n": 0}

    def ll(ctx, cont):
        attempts["n"] += 1
        if ctx.startswith(t.demonstration(pool[3])):
            raise LLMError("scripted", "always fails for candidate 3")
        return -1.0, 1

    llm = FunctionLLM(lambda p, **k: "", loglikelihood_fn=ll)
    q = pool[0]
    records, skipped = score_items(llm, ClassificationScorer(t), pool, {0: q}, [(0, [], [1, 2, 3, 4])],
                                   template=t, step=1, retries=1, progress=False)
    assert skipped == 1
    assert sorted(c.id for c in records[0].ctxs) == [1, 2, 4]
    assert all(math.isfinite(c.loss) for c in records[0].ctxs)


def test_classification_scoring_needs_loglikelihood_and_options():
    pool = _pool(5)
    with pytest.raises(NotImplementedError):
        score_candidates(FunctionLLM(lambda p, **k: ""), pool, config=ScoreConfig(n_candidates=2, steps=1),
                         progress=False)
    with pytest.raises(ValueError, match="queries"):
        score_candidates(FunctionLLM(lambda p, **k: "", loglikelihood_fn=Recorder()), pool,
                         [Example(1, "a"), Example(1, "b")], progress=False)
