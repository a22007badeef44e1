"""``lmops glan``: taxonomy sub-verb, run with the scripted model, user errors, and the URL backend path
(with a stand-in for lmops.llm.OpenAICompatible)."""

import json

import lmops.llm
from lmops.cli import main
from lmops.methods.glan import load_taxonomy, scripted_llm

RUN = ["--llm", "scripted", "--subject-queries", "1", "--questions-per-syllabus", "2", "--quiet"]


def test_taxonomy_example_write_and_check(tmp_path, capsys):
    assert main(["glan", "taxonomy", "--example"]) == 0
    printed = json.loads(capsys.readouterr().out)
    fields = [f["name"] for f in printed["fields"]]
    assert fields == ["Natural Sciences", "Humanities", "Services and Vocational Skills"]
    t = tmp_path / "t.json"
    assert main(["glan", "taxonomy", "--example", "--write", str(t)]) == 0
    assert len(load_taxonomy(t).disciplines()) == 6
    capsys.readouterr()
    assert main(["glan", "taxonomy", "--check", str(t)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "Natural Sciences / Physical Sciences / Physics"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [{"name": "A", "parent": "B"}, {"name": "B", "parent": "A"}]}))
    assert main(["glan", "taxonomy", "--check", str(bad)]) == 2
    assert "cycle" in capsys.readouterr().err
    g = tmp_path / "g.json"
    assert main(["glan", "taxonomy", "--generate", "--llm", "scripted", "--write", str(g)]) == 0
    assert "Physics" in [d.name for d in load_taxonomy(g).disciplines()]


def test_run_scripted_and_rerun(tmp_path, capsys):
    t = tmp_path / "t.json"
    main(["glan", "taxonomy", "--example", "--write", str(t)])
    out = tmp_path / "run"
    assert main(["glan", "run", "--taxonomy", str(t), "--out", str(out), *RUN]) == 0
    text = capsys.readouterr().out
    assert "instructions: 36 (of 36 pairs" in text  # 6 disciplines x 3 subjects x 2 questions
    assert (out / "llm_cache.sqlite").is_file() and (out / "summary.json").is_file()
    first = (out / "instructions.jsonl").read_bytes()
    assert main(["glan", "run", "--taxonomy", str(t), "--out", str(out), *RUN]) == 0
    assert "this run: 0 new pairs" in capsys.readouterr().out
    assert (out / "instructions.jsonl").read_bytes() == first
    rec = json.loads(first.splitlines()[0])
    assert rec["provenance"]["models"] == {"generator": "scripted:glan-scripted", "answerer": "scripted:glan-scripted"}


def test_user_errors(tmp_path, capsys):
    t = tmp_path / "t.json"
    t.write_text(json.dumps({"fields": [{"name": "A", "children": ["X"]}, {"name": "B", "children": ["x"]}]}))
    assert main(["glan", "run", "--taxonomy", str(t), "--out", str(tmp_path / "o"), *RUN]) == 2
    assert "duplicate name" in capsys.readouterr().err
    assert main(["glan", "run", "--taxonomy", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o"), *RUN]) == 2
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"fields": ["Physics"]}))
    assert main(["glan", "run", "--taxonomy", str(good), "--out", str(tmp_path / "o"), "--llm", "gpt"]) == 2
    assert "neither an http(s) URL" in capsys.readouterr().err
    assert main(["glan", "run", "--taxonomy", str(good), "--out", str(tmp_path / "o"), "--llm", "http://x"]) == 2
    assert "--model: required" in capsys.readouterr().err
    assert main(["glan", "run", "--taxonomy", str(good), "--out", str(tmp_path / "o"), *RUN,
                 "--benchmark", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["glan"]) == 2


def test_url_backend_is_openai_compatible(tmp_path, monkeypatch, capsys):
    made = []

    class FakeOpenAICompatible:
        def __init__(self, base_url, model, max_concurrency=8):
            made.append((base_url, model, max_concurrency))
            inner = scripted_llm(model)
            self.name, self.chat, self.generate = f"openai:{model}", inner.chat, inner.generate

        def loglikelihood(self, contexts, continuations):
            raise NotImplementedError

    monkeypatch.setattr(lmops.llm.openai_compat, "OpenAICompatible", FakeOpenAICompatible)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"fields": ["Physics"]}))
    out = tmp_path / "o"
    rc = main(["glan", "run", "--taxonomy", str(good), "--out", str(out), "--llm", "http://localhost:8000/v1",
               "--model", "gen", "--answer-model", "ans", "--workers", "6", "--subject-queries", "1",
               "--questions-per-syllabus", "1", "--quiet"])
    assert rc == 0
    assert made == [("http://localhost:8000/v1", "gen", 6), ("http://localhost:8000/v1", "ans", 6)]
    rec = json.loads((out / "instructions.jsonl").read_text().splitlines()[0])
    assert rec["provenance"]["models"] == {"generator": "openai:gen", "answerer": "openai:ans"}
