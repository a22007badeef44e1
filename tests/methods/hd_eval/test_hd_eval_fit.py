"""HDEval end to end on the planted task (hd_eval_planted.py): what is pruned, the weights, held-out
correlation, vertical vs horizontal, NaN labels, missing scores, rounding, the report, save/load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hd_eval_planted import CRITERIA, TASK, data, judge

from lmops.llm import CachedLLM, FunctionLLM
from lmops.methods.hd_eval import HDEval, HDEvalConfig, correlations, system_correlations, system_means

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(j=None, n=150, n_nan=0, seed=1, **options):
    j = j or judge()
    samples, scores, systems, _ = data(n, seed=seed, n_nan=n_nan)
    options.setdefault("progress", False)
    return HDEval(j.llm, TASK, CRITERIA, **options).fit(samples, scores, systems=systems), j


@pytest.fixture(scope="module")
def planted():
    return _fit(n_nan=6)


def test_planted_structure_is_recovered(planted):
    model, j = planted
    rep = model.report()
    assert set(rep["weights"]) == {"coherence/logic", "fluency/grammar"}
    assert rep["weights"]["coherence/logic"] == pytest.approx(2.0, abs=0.08)
    assert rep["weights"]["fluency/grammar"] == pytest.approx(1.0, abs=0.08)
    assert {p["criterion"] for p in rep["pruned"]} == {"relevance", "coherence/flow", "fluency/spelling"}
    assert rep["heldout"]["sample"]["pearson"] > 0.95
    assert rep["heldout"]["sample"]["n"] == 29  # round(0.2 * 144)
    # relevance went in the first round, before anyone asked to decompose it
    assert rep["rounds"][0]["pruned"] == ["relevance"]
    assert set(rep["rounds"][0]["decomposed"]) == {"coherence", "fluency"}
    assert j.calls["decompose"] == 2
    assert rep["scoring"] == "logprob"


def test_predictions_track_the_planted_score(planted):
    model, _ = planted
    samples, scores, _, feats = data(40, seed=7)
    pred = model.predict(samples)
    assert np.corrcoef(pred, 2 * feats[:, 0] + feats[:, 2])[0, 1] > 0.99
    assert np.allclose(pred, scores, atol=1.0)
    assert model.last_missing == {"coherence/logic": 0, "fluency/grammar": 0}


def test_nan_human_scores_are_skipped_and_counted(planted):
    model, j = planted
    rep = model.report()
    assert rep["nan_human_skipped"] == 6
    assert rep["n_train"] + rep["n_valid"] == 144
    assert "Item 149:" not in json.dumps(rep)  # an unlabelled sample was never scored
    with pytest.raises(ValueError, match="human_scores"):
        HDEval(j.llm, TASK, CRITERIA).fit(["a", "b", "c", "d"], [1.0, None, math.nan, 2.0], valid_fraction=0.0)


def test_report_contents(planted):
    model, _ = planted
    rep = model.report()
    for key in ("weights", "intercepts", "attribution", "criteria", "pruned", "missing", "missing_total",
                "nan_human_skipped", "outputs_rounded", "heldout", "train", "rounds", "config", "scoring"):
        assert key in rep, key
    assert [c["path"] for c in rep["criteria"]] == [p for p, _, _ in model.tree.walk()]
    roles = {c["path"]: c["role"] for c in rep["criteria"]}
    assert roles == {"coherence": "inner", "coherence/logic": "input", "coherence/flow": "pruned",
                     "fluency": "inner", "fluency/grammar": "input", "fluency/spelling": "pruned",
                     "relevance": "pruned"}
    assert all("threshold 0.05" in p["reason"] for p in rep["pruned"])
    assert sum(rep["attribution"].values()) == pytest.approx(1.0)
    assert rep["outputs_rounded"] is False and "heldout_unrounded" not in rep
    assert rep["missing_total"] == 0 and set(rep["missing"]) == {p for p, _, _ in model.tree.walk()}
    assert rep["heldout"]["system"]["n_systems"] == 5
    json.dumps(rep, allow_nan=False)  # JSON-ready
    rep["weights"].clear()
    assert model.report()["weights"]  # a copy


def test_tree_is_serializable_and_annotated(planted):
    model, _ = planted
    tree = json.loads(model.tree.to_json())
    coherence = tree["criteria"][0]
    assert coherence["name"] == "coherence" and [c["name"] for c in coherence["children"]] == ["logic", "flow"]
    assert coherence["children"][0]["weight"] == pytest.approx(2.0, abs=0.08)
    assert coherence["children"][1]["pruned"] and "round 2" in coherence["children"][1]["prune_reason"]


def test_save_and_load_json_only(planted, tmp_path):
    model, _ = planted
    path = tmp_path / "model.json"
    model.save(path, extra={"llm": {"spec": "scripted"}})
    text = path.read_text(encoding="utf-8")
    data_ = json.loads(text)  # the whole model is one JSON document
    assert data_["format"] == "lmops.hd_eval.model" and data_["llm"] == {"spec": "scripted"}
    back = HDEval.load(path, judge().llm)
    assert back.tree == model.tree and back.report() == model.report()
    samples = data(12, seed=9)[0]
    assert back.predict(samples) == model.predict(samples)
    offline = HDEval.load(path)  # no LLM: the aggregator alone still works
    scores = {"coherence/logic": [2.0, np.nan], "fluency/grammar": [4.0, 1.0]}
    assert offline.aggregate(scores)[0] == pytest.approx(model.aggregate(scores)[0])
    fill = offline.tree.node("coherence/logic").fill
    assert offline.aggregate(scores)[1] == pytest.approx(offline.aggregate({**scores, "coherence/logic": [0, fill]})[1])
    with pytest.raises(ValueError, match="llm"):
        offline.predict(["x"])
    with pytest.raises(ValueError, match="format"):
        HDEval.from_dict({"format": "other"})
    with pytest.raises(ValueError, match="extra"):
        model.save(tmp_path / "x.json", extra={"tree": 1})


def test_permutation_pruning_finds_the_same_structure():
    model, _ = _fit(prune="permutation")
    rep = model.report()
    assert set(rep["weights"]) == {"coherence/logic", "fluency/grammar"}
    assert "permutation importance" in rep["pruned"][0]["reason"]


def test_vertical_aggregation_fits_each_criterion_from_its_children():
    model, _ = _fit(mode="vertical")
    groups = {g.key: g.features for g in model.groups}
    assert set(groups) == {"coherence", "fluency", ""} and groups[""] == ["coherence", "fluency"]
    assert groups["coherence"][0] == "coherence/logic" and groups["fluency"][0] == "fluency/grammar"
    rep = model.report()
    # each inner aggregator sees the other branch's signal as noise, so an irrelevant sibling may survive
    # (see hierarchy.py); a relevant criterion is never pruned
    pruned = {p["criterion"] for p in rep["pruned"]}
    assert "relevance" in pruned and pruned <= {"relevance", "coherence/flow", "fluency/spelling"}
    assert rep["attribution"]["coherence/logic"] > 0.9 and rep["attribution"]["fluency/grammar"] > 0.9
    # each inner aggregator maps its children to the human scale; the root then adds them with weight ~1
    assert rep["weights"]["coherence/logic"] == pytest.approx(2.0, abs=0.15)
    assert rep["weights"]["coherence"] == pytest.approx(1.0, abs=0.15)
    assert rep["weights"]["fluency"] == pytest.approx(1.0, abs=0.15)
    assert rep["heldout"]["sample"]["pearson"] > 0.95
    # the prediction is the root aggregator over the inner aggregators' predictions
    leaves = {p: np.array([1.0, 3.0, 5.0]) + k for k, p in enumerate(model.tree.effective_leaves())}
    g = {k.key: k.aggregator for k in model.groups}
    coh = g["coherence"].predict(np.stack([leaves[p] for p in groups["coherence"]], axis=1))
    flu = g["fluency"].predict(np.stack([leaves[p] for p in groups["fluency"]], axis=1))
    expected = g[""].predict(np.stack([coh, flu], axis=1))
    got = model.aggregate(leaves)
    np.testing.assert_allclose(got, expected)


def test_horizontal_uses_one_aggregator_over_the_leaves(planted):
    model, _ = planted
    assert [(g.key, g.features) for g in model.groups] == [("", ["coherence/logic", "fluency/grammar"])]


def test_mlp_aggregator_fits_and_saves(tmp_path):
    model, _ = _fit(aggregator="mlp", n=120)
    rep = model.report()
    assert rep["aggregator"] == "mlp" and set(rep["weights"].values()) == {None}
    assert "relevance" in {p["criterion"] for p in rep["pruned"]}
    assert rep["heldout"]["sample"]["pearson"] > 0.9
    model.save(tmp_path / "m.json")
    samples = data(5, seed=4)[0]
    assert HDEval.load(tmp_path / "m.json", judge().llm).predict(samples) == pytest.approx(model.predict(samples))


def test_rounding_switch():
    model, _ = _fit(round_outputs=True, rounds=1)
    rep = model.report()
    assert rep["outputs_rounded"] is True and rep["heldout_unrounded"]["sample"]["pearson"] is not None
    pred = model.predict(data(20, seed=5)[0])
    assert all(p == int(p) for p in pred)
    model.config.round_outputs = False
    assert not all(p == int(p) for p in model.predict(data(20, seed=5)[0]))


def test_parsed_scores_and_missing_ones_are_imputed():
    base = judge(logprobs=False)

    def fn(prompt, **kw):  # fluency never parses for items whose id ends in 7
        if "criterion: fluency\n" in prompt and "7: a sturdy" in prompt:
            return "It is fine."
        return base.generate_one(prompt, **kw)

    j = judge(logprobs=False)
    j.llm = FunctionLLM(fn, name="scripted:flaky")
    model, _ = _fit(j, rounds=1, valid_fraction=0.0, retries=1)
    rep = model.report()
    assert rep["scoring"] == "parsed"
    assert rep["missing"]["fluency"] == 15 and rep["missing"]["coherence"] == 0 and rep["missing_total"] == 15
    fill = model.tree.node("fluency").fill
    assert 1 < fill < 5 and fill != round(fill)  # the mean of the parsed training scores
    samples = data(20, seed=3)[0]
    model.predict(samples)
    assert model.last_missing["fluency"] == 2  # items 7 and 17
    assert rep["heldout"] is None and rep["train"]["sample"]["pearson"] > 0.6  # integers, flow mixed in


def test_stops_early_when_nothing_changes():
    model, j = _fit(rounds=3, max_depth=1, prune="none")
    rep = model.report()
    assert len(rep["rounds"]) == 1 and "stopped" in rep["rounds"][0] and not rep["pruned"]
    assert j.calls["decompose"] == 0


def test_input_validation():
    j = judge()
    with pytest.raises(ValueError, match="mode"):
        HDEval(j.llm, TASK, CRITERIA, mode="diagonal")
    with pytest.raises(ValueError, match="aggregator"):
        HDEval(j.llm, TASK, CRITERIA, aggregator="forest")
    with pytest.raises(ValueError, match="prune_threshold"):
        HDEvalConfig(prune_threshold=1.5)
    with pytest.raises(TypeError):
        HDEval(j.llm, TASK, CRITERIA, no_such_option=1)
    with pytest.raises(TypeError, match="llm"):
        HDEval(object(), TASK, CRITERIA)
    model = HDEval(j.llm, TASK, CRITERIA)
    with pytest.raises(RuntimeError):
        model.predict(["x"])
    with pytest.raises(RuntimeError):
        model.report()
    with pytest.raises(ValueError, match="human_scores"):
        model.fit(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="systems"):
        model.fit(["a", "b", "c"], [1.0, 2.0, 3.0], systems=["x"])
    with pytest.raises(TypeError, match="samples"):
        model.fit("abc", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="valid_fraction"):
        model.fit(["a", "b", "c"], [1.0, 2.0, 3.0], valid_fraction=1.0)


def test_system_level_correlation_helpers():
    systems = ["a", "a", "b", "b", "c", "c"]
    assert system_means([1, 3, 2, 2, 10, 20], systems) == {"a": 2.0, "b": 2.0, "c": 15.0}
    got = system_correlations([1, 2, 3, 4, 5, 6], [0, 1, 5, 5, 9, 9], systems)
    assert got == {"n_systems": 3, "pearson": pytest.approx(np.corrcoef([1.5, 3.5, 5.5], [0.5, 5, 9])[0, 1]), "spearman": pytest.approx(1.0),
                   "kendall": pytest.approx(1.0)}
    assert system_correlations([1, 2, 3, 4], [1, 2, 3, 5], ["a", "a", "b", "b"])["pearson"] is None
    assert correlations([1, 1, 1], [1, 2, 3])["pearson"] is None
    assert correlations([1, 2, 3, 4], [1, 3, 2, 4])["kendall"] == pytest.approx(4 / 6)


def test_evaluate_and_system_scores(planted):
    model, _ = planted
    samples, scores, systems, _ = data(50, seed=11)
    got = model.evaluate(samples, scores, systems=systems)
    assert got["sample"]["pearson"] > 0.95 and got["system"]["n_systems"] == 5
    means = model.system_scores(samples, systems)
    assert set(means) == set(systems)
    assert means["alpha"] == pytest.approx(np.mean([p for p, s in zip(got["predictions"], systems) if s == "alpha"]))


def test_a_cached_rerun_asks_the_llm_nothing(tmp_path):
    j = judge()
    llm = CachedLLM(j.llm, tmp_path / "cache.sqlite")
    samples, scores, systems, _ = data(60, seed=2)
    first = HDEval(llm, TASK, CRITERIA, progress=False).fit(samples, scores, systems=systems).report()
    asked = dict(j.calls)
    assert asked["loglikelihood"] > 0 and asked["decompose"] > 0
    second = HDEval(llm, TASK, CRITERIA, progress=False).fit(samples, scores, systems=systems).report()
    assert j.calls == asked and second == first


def test_config_and_options_are_exclusive():
    with pytest.raises(TypeError, match="config"):
        HDEval(judge().llm, TASK, CRITERIA, config=HDEvalConfig(), rounds=3)
    model = HDEval(judge().llm, TASK, CRITERIA, config=HDEvalConfig(mode="vertical"))
    assert model.config.mode == "vertical"
