"""``lmops hd-eval demo|fit|predict`` end to end on the bundled example (the scripted judge, offline)."""

from __future__ import annotations

import json
import math

import pytest

from lmops.cli import main
from lmops.common.jsonl import read_jsonl
from lmops.methods.hd_eval.cli import EXAMPLES
from lmops.methods.hd_eval.scripted import make_demo_records

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = str(EXAMPLES / "summaries.jsonl")


def test_bundled_example_is_the_generated_one():
    assert read_jsonl(DATA, strict=True).records == make_demo_records()


def test_demo_recovers_the_planted_criteria(capsys, tmp_path):
    assert main(["hd-eval", "demo", "--quiet", "--json", "--out", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[: out.rindex("}") + 1])
    assert set(report["weights"]) == {"coherence/logic", "fluency/grammar"}
    assert report["weights"]["coherence/logic"] == pytest.approx(2 / 3, abs=0.05)
    assert report["weights"]["fluency/grammar"] == pytest.approx(1 / 3, abs=0.05)
    assert "relevance" in {p["criterion"] for p in report["pruned"]}
    assert report["heldout"]["sample"]["pearson"] > 0.95
    assert report["heldout"]["system"]["n_systems"] == 6
    assert report["nan_human_skipped"] == 4
    assert (tmp_path / "m.json").is_file()


def test_demo_text_report(capsys):
    assert main(["hd-eval", "demo", "--quiet", "--mode", "vertical"]) == 0
    out = capsys.readouterr().out
    assert "aggregator: linear (vertical)" in out and "heldout sample-level (n=47)" in out
    assert "relevance: PRUNED" in out and "coherence/logic: weight" in out


def test_fit_then_predict(tmp_path, capsys):
    model = tmp_path / "model.json"
    criteria = "coherence: the summary is well structured and logically organized,fluency,relevance"
    argv = ["hd-eval", "fit", "--data", DATA, "--task", "Rate a summary", "--criteria", criteria,
            "--llm", "scripted", "--out", str(model), "--quiet", "--round-outputs"]
    assert main(argv) == 0
    assert "outputs rounded: True" in capsys.readouterr().out
    saved = json.loads(model.read_text())
    assert saved["llm"] == {"spec": "scripted", "model": None} and saved["config"]["round_outputs"] is True
    assert (tmp_path / "model.json.llm-cache.sqlite").is_file()

    test = tmp_path / "test.jsonl"
    rows = [{"sample": r["sample"], "score": r["score"], "system": r["system"]} for r in make_demo_records(30, seed=5)]
    rows[0]["score"] = math.nan
    test.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    preds = tmp_path / "preds.jsonl"
    assert main(["hd-eval", "predict", "--model", str(model), "--data", str(test), "--out", str(preds), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "30 predictions" in captured.out and "sample-level" in captured.out
    assert "skipped" in captured.err  # the malformed line
    got = read_jsonl(preds, strict=True).records
    assert len(got) == 30 and got[0]["score"] is None
    assert all(r["prediction"] == int(r["prediction"]) for r in got)  # rounded, as fit was told
    sample_level = json.loads(captured.out.split("sample-level vs the file's scores: ")[1].splitlines()[0])
    assert sample_level["n"] == 30 - 4 - 1 and sample_level["spearman"] > 0.8  # 4 unlabelled, 1 NaN


@pytest.mark.parametrize("argv, message", [
    (["--llm", "no/such/dir"], "--llm"),
    (["--llm", "http://localhost:1"], "--llm"),
    (["--llm", "scripted", "--criteria", " , "], "--criteria"),
    (["--llm", "scripted", "--data", "missing.jsonl"], "--data"),
])
def test_fit_user_errors(tmp_path, capsys, argv, message):
    base = {"--data": DATA, "--task": "t", "--criteria": "a,b", "--out": str(tmp_path / "m.json")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["hd-eval", "fit", "--quiet"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_predict_needs_a_model(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    argv = ["hd-eval", "predict", "--model", str(bad), "--data", DATA, "--out", str(tmp_path / "p.jsonl"),
            "--llm", "scripted"]
    assert main(argv) == 2
    assert "not a saved HD-Eval model" in capsys.readouterr().err


def test_hd_eval_alone_prints_help(capsys):
    assert main(["hd-eval"]) == 2
    assert "predict" in capsys.readouterr().out


def test_read_records_names_bad_lines(tmp_path):
    from lmops.methods.hd_eval import read_records

    path = tmp_path / "d.jsonl"
    path.write_text('{"sample": "a", "score": 1}\n\nnot json\n{"sample": 3}\n{"sample": "b", "score": NaN, '
                    '"system": 5}\n{"other": 1}\n{"sample": "c", "score": "x"}\n')
    records, bad = read_records(path)
    assert [(r.sample, r.system, r.has_score) for r in records] == [("a", None, True), ("b", "5", False)]
    assert [line for line, _ in bad] == [3, 4, 6, 7]


def test_fit_with_a_local_hf_model_directory(tmp_path, capsys):
    """The ``--llm DIR`` path on a tiny random Llama saved with save_pretrained (nothing downloaded):
    real log-likelihood scores, one round (no decomposition), a model file that predicts."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("lmops.llm.hf_local")
    from lmops.common.offline_tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer(padding_side="left")
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=1024)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    rows = [{"sample": f"summary {i}: " + "good " * (i % 4), "score": float(i % 4)} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.json"
    argv = ["hd-eval", "fit", "--data", str(data), "--task", "Rate it", "--criteria", "quality,length",
            "--llm", f"hf:{model_dir}", "--out", str(out), "--rounds", "1", "--valid-fraction", "0", "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())["report"]
    assert report["scoring"] == "logprob" and report["scored_by_logprob"] == 16 and report["missing_total"] == 0
    preds = tmp_path / "p.jsonl"
    assert main(["hd-eval", "predict", "--model", str(out), "--data", str(data), "--out", str(preds), "--quiet"]) == 0
    got = read_jsonl(preds, strict=True).records
    assert len(got) == 8 and all(math.isfinite(r["prediction"]) for r in got)
