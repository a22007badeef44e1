"""Annotation: the synthetic images and their planted rule, the scripted judge, malformed answers
retried then counted and skipped, resuming a killed run without asking twice, per-prompt requests."""

import json

import numpy as np
import pytest

from lmops.methods.visionprefer import (
    ASPECTS,
    AnnotateConfig,
    ScriptedJudge,
    annotate,
    make_synthetic_dataset,
    measure,
    merge_annotations,
    planted_scores,
    read_annotations,
)
from lmops.methods.visionprefer.synthetic import GENERATORS, Drawing, draw, drawing_attributes, sample_drawing


def test_measure_reads_back_the_planted_attributes():
    rng = np.random.default_rng(3)
    agree = {a: 0 for a in ASPECTS}
    n = 120
    for i in range(n):
        d = sample_drawing(
            GENERATORS[i % 4], ["red", "green", "blue", "yellow"][i % 4], ["circle", "square", "triangle"][i % 3], rng
        )
        prompt = f"a {['red', 'green', 'blue', 'yellow'][i % 4]} {['circle', 'square', 'triangle'][i % 3]}"
        got, want = planted_scores(measure(draw(d, seed=i)), prompt), planted_scores(drawing_attributes(d), prompt)
        for a in ASPECTS:
            agree[a] += got[a] == want[a]
    # colour, shape, noise and the frame are read exactly; the centre offset is near its thresholds sometimes
    assert agree["prompt_following"] / n >= 0.97 and agree["fidelity"] / n >= 0.97 and agree["harmlessness"] == n
    assert agree["aesthetic"] / n >= 0.85


def test_planted_rule_on_hand_made_drawings():
    perfect = measure(draw(Drawing("blue", "square", size=14)))
    assert perfect["color"] == "blue" and perfect["shape"] == "square" and perfect["offset"] < 0.03
    assert planted_scores(perfect, "a blue square") == {
        "prompt_following": 5,
        "aesthetic": 5,
        "fidelity": 5,
        "harmlessness": 5,
    }
    assert planted_scores(perfect, "a red square")["prompt_following"] == 3
    assert planted_scores(perfect, "a red circle")["prompt_following"] == 1
    bad = measure(draw(Drawing("blue", "triangle", dx=5, dy=-5, size=12, noise=30, mark=True), seed=1))
    assert bad["shape"] == "triangle"
    assert planted_scores(bad, "a blue triangle") == {
        "prompt_following": 5,
        "aesthetic": 1,
        "fidelity": 1,
        "harmlessness": 1,
    }


def test_annotation_matches_the_planted_rule_and_counts_malformed(tmp_path):
    records = make_synthetic_dataset(tmp_path, 6, seed=1)
    judge = ScriptedJudge(malformed=0.35, seed=2)
    report = annotate(records, judge, tmp_path / "ann.jsonl", AnnotateConfig(retries=1), fsync=False)
    total = 6 * 4 * len(ASPECTS)
    assert report.requested == total and report.retries > 0
    assert report.annotated + len(report.skipped) == total and len(report.skipped) > 0  # some fail twice
    rows, bad = read_annotations(tmp_path / "ann.jsonl")
    assert bad == [] and len(rows) == report.annotated
    merged = merge_annotations(records, tmp_path / "ann.jsonl")
    checked = 0
    for rec in merged:
        for im in rec.images:
            truth = planted_scores(measure(im.path), rec.prompt)
            for aspect, score in im.scores.items():
                assert score == truth[aspect] and im.rationales[aspect]
                checked += 1
    assert checked == report.annotated
    skipped = {(pid, ids[0], aspect) for pid, ids, aspect, _ in report.skipped}
    assert all(
        aspect not in next(im for r in merged for im in r.images if im.image_id == iid).scores
        for _, iid, aspect in skipped
    )
    assert all("ValueError" in err or "KeyError" in err for *_, err in report.skipped)


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_without_asking_twice(tmp_path):
    records = make_synthetic_dataset(tmp_path, 3, seed=0)
    inner = ScriptedJudge()
    asked = []

    def dying(prompt, paths, aspect):
        if len(asked) == 17:
            raise _Killed  # the process dies mid-run
        asked.append((paths[0], aspect))
        return inner(prompt, paths, aspect)

    log = tmp_path / "ann.jsonl"
    with pytest.raises(_Killed):
        annotate(records, dying, log, AnnotateConfig(chunk_size=4), fsync=False)
    with open(log, "a") as f:
        f.write('{"prompt_id": "p0", "image_id": "p0-gen-a", "asp')  # a line cut by the kill
    first = len(read_annotations(log)[0])
    assert first == 16  # four whole chunks were appended before the kill
    asked.clear()
    resumed = annotate(records, lambda *a: inner(*a), log, AnnotateConfig(chunk_size=4), fsync=False)
    assert resumed.already_done == first and resumed.requested == 3 * 4 * len(ASPECTS) - first
    rows, bad = read_annotations(log)
    assert len(rows) == 3 * 4 * len(ASPECTS) and bad == []
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    keys = [(r["prompt_id"], r["image_id"], r["aspect"]) for r in lines]
    assert len(keys) == len(set(keys))  # nothing written twice, the partial line gone
    again = annotate(records, inner, log, fsync=False)
    assert again.requested == 0 and again.already_done == 48


def test_per_prompt_requests_score_every_image_at_once(tmp_path):
    records = make_synthetic_dataset(tmp_path, 4, seed=5)
    judge = ScriptedJudge(malformed=0.2, seed=1)
    report = annotate(
        records,
        judge,
        tmp_path / "ann.jsonl",
        AnnotateConfig(mode="per_prompt", aspects=("prompt_following", "fidelity")),
        fsync=False,
    )
    assert report.requested == 4 * 2  # one request per prompt and aspect
    merged = merge_annotations(records, tmp_path / "ann.jsonl")
    for rec in merged:
        for im in rec.images:
            truth = planted_scores(measure(im.path), rec.prompt)
            assert all(im.scores[a] == truth[a] for a in im.scores)
    assert report.annotated == 4 * 4 * 2 - 4 * len(report.skipped)


def test_judge_errors_are_counted_not_raised(tmp_path):
    records = make_synthetic_dataset(tmp_path, 1, seed=0)
    records[0].images[0].path = str(tmp_path / "missing.png")
    report = annotate(
        records, ScriptedJudge(), tmp_path / "ann.jsonl", AnnotateConfig(aspects=("fidelity",)), fsync=False
    )
    assert report.annotated == 3 and len(report.skipped) == 1
    assert "FileNotFoundError" in report.skipped[0][3] or "No such file" in report.skipped[0][3]
