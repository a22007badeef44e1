"""GLAN's pipeline end to end on the scripted model: the stages' requests (paper hyper-parameters, the
separate conversion turn), records and provenance, malformed answers counted and skipped, n-gram
decontamination, taxonomy edits on rerun, and exact resumes (in-process crash, and SIGKILL of a
``lmops glan run`` subprocess)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmops.common.jsonl import read_jsonl
from lmops.llm import FunctionLLM
from lmops.methods.glan import (
    GlanConfig,
    Syllabus,
    load_taxonomy,
    parse_taxonomy,
    prompts,
    record_id,
    run_glan,
    scripted_llm,
    subjects_stage,
    syllabus_stage,
)
from lmops.methods.glan.decontam import words
from lmops.methods.glan.sampling import QuestionSample
from lmops.methods.glan.scripted import ScriptedGlan
from lmops.methods.glan.stages import QuestionUnit, answer_stage, question_stage

REPO = Path(__file__).resolve().parents[3]
TAX2 = {"fields": [{"name": "Natural Sciences", "children": [{"name": "Physical Sciences", "children": ["Physics"]},
                                                             {"name": "Life Sciences", "children": ["Biology"]}]}]}
SMALL = dict(n_subject_queries=2, questions_per_syllabus=3, batch_size=4, workers=1)


class Recording:
    """Wraps a backend and records every chat call (conversations and sampling arguments)."""

    def __init__(self, llm):
        self.llm, self.name, self.calls = llm, llm.name, []

    def chat(self, conversations, **kw):
        self.calls.append((conversations, kw))
        return self.llm.chat(conversations, **kw)

    def generate(self, prompts_, **kw):
        raise AssertionError("GLAN's stages use chat")

    def loglikelihood(self, *a):
        raise NotImplementedError


def _records(path):
    res = read_jsonl(path)
    assert not res.malformed
    return res.records


def _run(out, tax=TAX2, llm=None, **kw):
    cfg = GlanConfig(**{**SMALL, **kw.pop("config", {})})
    return run_glan(parse_taxonomy(tax), out, llm or scripted_llm(), config=cfg, progress=False, **kw)


def test_subject_and_syllabus_stages_follow_the_paper():
    llm = Recording(scripted_llm())
    tax = load_taxonomy(REPO / "lmops/methods/glan/examples/taxonomy.json")
    ds = tax.disciplines()[:2]
    out, counts = subjects_stage(llm, ds, GlanConfig())
    assert len(llm.calls) == 2  # one batched call per turn
    (first, kw1), (second, kw2) = llm.calls
    assert len(first) == 2 and kw1["n"] == 10 and kw1["temperature"] == 1.0 and kw1["top_p"] == 0.95
    assert "json" not in first[0][0]["content"].lower()  # no format instruction in the first prompt
    assert len(second) == 20 and kw2["n"] == 1 and kw2["temperature"] == 0.0
    assert [m["role"] for m in second[0]] == ["user", "assistant", "user"]
    assert second[0][2]["content"] == prompts.convert_subjects() and "JSONL" in second[0][2]["content"]
    assert counts["subject_queries"] == 20 and counts["subjects"] == 60 and not counts["subjects_malformed"]
    physics = out[0]
    assert physics.discipline == "Physics" and len(physics.subjects) == 30
    assert {s.name for s in physics.subjects} >= {"Foundations of Physics", "Applied Physics"}
    assert all(s.subtopics and s.level for s in physics.subjects)

    llm.calls.clear()
    syl, counts = syllabus_stage(llm, physics.subjects[:3], GlanConfig())
    assert len(llm.calls) == 2 and llm.calls[0][1]["temperature"] == 1.0 and llm.calls[0][1]["top_p"] == 0.95
    assert counts["syllabi"] == 3
    assert all(3 <= len(s.sessions) <= 5 and all(2 <= len(x.concepts) <= 5 for x in s.sessions) for s in syl)
    assert syl[0].sessions[1].title.lower() == physics.subjects[0].subtopics[0]

    llm.calls.clear()
    unit = QuestionUnit(ds[0], syl[0], 0, QuestionSample("harder", (0, 2), ((0, 1), (2, 0))))
    qs, _ = question_stage(llm, [unit], GlanConfig())
    text = llm.calls[0][0][0][0]["content"]
    assert syl[0].text.strip() in text and "learned up to the class session(s)" in text
    assert syl[0].sessions[0].concepts[1] in text and syl[0].sessions[2].concepts[0] in text
    answer_llm = Recording(scripted_llm("answerer"))
    ans, _ = answer_stage(answer_llm, qs, GlanConfig())
    assert answer_llm.calls[0][1]["temperature"] == 0.7 and answer_llm.calls[0][1]["top_p"] == 0.95
    assert answer_llm.calls[0][0][0][0]["content"] == qs[0] and ans[0]


def test_run_writes_records_with_provenance(tmp_path):
    s = _run(tmp_path / "run", answer_llm=scripted_llm("answerer"), config={"harder_fraction": 0.5})
    recs = _records(tmp_path / "run" / "instructions.jsonl")
    syllabi = {r["subject_id"]: Syllabus.from_dict(r) for r in _records(tmp_path / "run" / "syllabi.jsonl")}
    assert len(recs) == s.totals["instructions"] == 2 * 6 * 3 and len({r["id"] for r in recs}) == len(recs)
    assert {r["strategy"] for r in recs} == {"basic", "harder"}
    for r in recs:
        p = r["provenance"]
        assert r["id"] == record_id(p["subject_id"], p["sample_index"])
        assert p["models"] == {"generator": "scripted:glan-scripted", "answerer": "scripted:answerer"}
        assert p["prompts"] == prompts.prompt_hashes() and p["seed"] == 0
        assert p["taxonomy_path"][-1] == r["discipline"] and p["taxonomy_path"][0] == "Natural Sciences"
        syl = syllabi[p["subject_id"]]
        assert r["sessions"] == [syl.sessions[i].title for i in p["session_indices"]]
        owners = [i for i in p["session_indices"] for c in r["concepts"] if c in syl.sessions[i].concepts]
        assert len(owners) == len(r["concepts"])  # every concept belongs to a sampled session
        if r["strategy"] == "harder":
            assert len(p["session_indices"]) == 2 and set(owners) == set(p["session_indices"])
        assert all(c in r["question"] for c in r["concepts"]) and r["answer"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["totals"]["pairs"] == len(recs) and summary["counts"]["pairs"] == len(recs)
    # workers > 1 (threads) makes the same output
    _run(tmp_path / "threads", answer_llm=scripted_llm("answerer"), config={"workers": 3, "batch_size": 2})
    assert (tmp_path / "threads/instructions.jsonl").read_bytes() == (tmp_path / "run/instructions.jsonl").read_bytes()


def test_malformed_answers_are_counted_and_skipped(tmp_path):
    base = ScriptedGlan()

    def answers(prompt, **kw):  # every sample for a "Compare ..." question is unusable
        return "" if json.loads(prompt)[-1]["content"].startswith("Compare") else base(prompt, **kw)

    ref = _run(tmp_path / "ref", answer_llm=scripted_llm("answerer"))
    bad = FunctionLLM(answers, name="scripted:answerer", chat_template=json.dumps)
    s = _run(tmp_path / "bad", answer_llm=bad)
    ref_recs = {r["id"]: r for r in _records(tmp_path / "ref/instructions.jsonl")}
    got = {r["id"]: r for r in _records(tmp_path / "bad/instructions.jsonl")}
    compare = {i for i, r in ref_recs.items() if r["question"].startswith("Compare")}
    assert 0 < len(compare) < len(ref_recs)
    assert s.counts["answers_malformed"] == len(compare)
    assert got == {i: r for i, r in ref_recs.items() if i not in compare}
    assert s.totals["instructions"] == ref.totals["instructions"] - len(compare)

    # structured answers that never parse: every conversion fails, nothing is written, nothing crashes
    s = _run(tmp_path / "broken", llm=scripted_llm(malformed=1.0))
    assert s.counts["subjects_malformed"] == 2 * 2 and s.totals["subjects"] == 0 and s.totals["instructions"] == 0
    # a fraction of malformed answers: retried (most then parse), the rest counted
    s = _run(tmp_path / "some", llm=scripted_llm(malformed=0.4), config={"retries": 0})
    assert s.counts.get("syllabi_malformed", 0) + s.counts.get("questions_malformed", 0) > 0
    assert s.totals["instructions"] == s.counts["pairs"] > 0


def test_decontamination_removes_matching_questions_only(tmp_path):
    out = tmp_path / "run"
    _run(out)
    recs = _records(out / "instructions.jsonl")
    target = recs[5]["question"]
    gram = words(target)[2:15]
    bench = "Benchmark item: " + " ".join(gram).upper() + " ?"
    s = _run(out, benchmarks=[bench])
    expect_removed = {r["id"] for r in recs if " ".join(gram) in " ".join(words(r["question"]))}
    assert recs[5]["id"] in expect_removed and len(expect_removed) < len(recs)
    kept = _records(out / "instructions.jsonl")
    removed = _records(out / "decontaminated.jsonl")
    assert {r["id"] for r in removed} == expect_removed and s.totals["decontaminated"] == len(expect_removed)
    assert all(r["matched_ngram"] == " ".join(gram) for r in removed)
    assert [r["id"] for r in kept] == [r["id"] for r in recs if r["id"] not in expect_removed]
    assert s.counts.get("pairs", 0) == 0  # nothing regenerated
    _run(out)  # without the benchmark, every pair is back
    assert _records(out / "instructions.jsonl") == recs


def test_adding_a_node_adds_its_data_and_keeps_the_rest(tmp_path):
    out = tmp_path / "run"
    _run(out)
    before = _records(out / "instructions.jsonl")
    tax3 = json.loads(json.dumps(TAX2))
    tax3["fields"][0]["children"][0]["children"].append("Chemistry")
    llm = Recording(scripted_llm())
    s = _run(out, tax=tax3, llm=llm)
    sent = json.dumps([c for c, _ in llm.calls])
    assert llm.calls and "Chemistry" in sent and "Physics" not in sent and "Biology" not in sent
    after = _records(out / "instructions.jsonl")
    assert [r for r in after if r["discipline"] != "Chemistry"] == before
    assert sum(r["discipline"] == "Chemistry" for r in after) == 6 * 3 == s.counts["pairs"]
    # removing it (the paper's vote) drops its data from the output; putting it back costs no call
    s = _run(out)
    assert _records(out / "instructions.jsonl") == before and s.totals["excluded"] == 18
    llm = Recording(scripted_llm())
    s = _run(out, tax=tax3, llm=llm)
    assert not llm.calls and _records(out / "instructions.jsonl") == after and s.totals["excluded"] == 0


class Crash(BaseException):
    pass


def test_resume_after_a_crash_in_process(tmp_path):
    ref_dir, out = tmp_path / "ref", tmp_path / "run"
    base = ScriptedGlan(malformed=0.2)
    calls = {"n": 0, "crash_at": None}

    def flaky(prompt, **kw):
        calls["n"] += 1
        if calls["n"] == calls["crash_at"]:
            raise Crash()
        return base(prompt, **kw)

    _run(ref_dir, llm=FunctionLLM(flaky, name="scripted:glan-scripted", chat_template=json.dumps))
    reference = (ref_dir / "instructions.jsonl").read_bytes()
    calls.update(n=0, crash_at=calls["n"] * 3 // 4)  # in the question stage

    with pytest.raises(Crash):
        _run(out, llm=FunctionLLM(flaky, name="scripted:glan-scripted", chat_template=json.dumps),
             config={"workers": 2, "batch_size": 2})
    partial = _records(out / "pairs.jsonl")
    assert 0 < len(partial) < len(_records(ref_dir / "pairs.jsonl"))
    _run(out, llm=scripted_llm(malformed=0.2))
    assert (out / "instructions.jsonl").read_bytes() == reference
    ids = [r["id"] for r in _records(out / "pairs.jsonl")]
    assert len(ids) == len(set(ids))


def test_resume_after_sigkill_of_the_cli(tmp_path):
    tax = tmp_path / "tax.json"
    tax.write_text(json.dumps(TAX2))
    args = ["glan", "run", "--taxonomy", str(tax), "--llm", "scripted", "--subject-queries", "2",
            "--questions-per-syllabus", "4", "--batch-size", "2", "--workers", "2", "--scripted-malformed", "0.1",
            "--quiet"]
    from lmops.cli import main

    ref = tmp_path / "ref"
    assert main(args + ["--out", str(ref)]) == 0
    reference = {r["id"]: r for r in _records(ref / "instructions.jsonl")}
    total = len(_records(ref / "pairs.jsonl"))
    assert total > 30

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "lmops", *args, "--out", str(out), "--scripted-delay", "0.03"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pairs = out / "pairs.jsonl"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if pairs.exists() and pairs.read_bytes().count(b"\n") >= 6:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    written = pairs.read_bytes().count(b"\n")
    assert 6 <= written < total and not (out / "instructions.jsonl").exists()
    with open(pairs, "ab") as f:  # and a record cut mid-write, as a kill inside write() would leave
        f.write(b'{"id": "0123456789abcdef", "discipline": "Phys')

    assert main(args + ["--out", str(out)]) == 0
    got = _records(out / "instructions.jsonl")
    assert len(got) == len({r["id"] for r in got})  # no duplicate
    assert {r["id"]: r for r in got} == reference  # none lost, none extra, same content
    ids = [r["id"] for r in _records(out / "pairs.jsonl")]
    assert len(ids) == len(set(ids)) == total
