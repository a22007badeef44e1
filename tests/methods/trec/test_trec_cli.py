"""``lmops trec train|sample|ablate`` on tiny settings, and the ablation's table and JSON."""

from __future__ import annotations

import json

import pytest

from lmops.cli import main
from lmops.methods.trec import AblationConfig, format_table, run_ablation

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--hidden-dim", "32", "--embed-dim", "8", "--heads", "2", "--timesteps", "50", "--n-train", "300",
        "--min-len", "2", "--max-len", "4", "--quiet"]


def test_train_then_sample(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["trec", "train", "--out", str(out), "--steps", "20", "--rc-weight", "0.5", "--tavs-gamma", "0.2",
                 "--sample-steps", "3", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "step 20" in printed and "test BLEU" in printed
    assert {"config.json", "model.safetensors", "trainer_state.safetensors", "eval.json"} <= {
        p.name for p in out.iterdir()}
    assert json.loads((out / "eval.json").read_text())["n_test"] == 200

    assert main(["trec", "sample", "--model", str(out), "--source", "ant bee cat", "--source", "dog eel",
                 "--steps", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    data = tmp_path / "in.jsonl"
    data.write_text('{"source": "ant bee", "target": "eel dog"}\n{"source": "cat", "target": "fox"}\n')
    assert main(["trec", "sample", "--model", str(out), "--input", str(data), "--output",
                 str(tmp_path / "o.jsonl"), "--steps", "3"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["ant bee", "cat"]
    assert "BLEU" in capsys.readouterr().out

    # resume to more steps
    assert main(["trec", "train", "--out", str(out), "--steps", "25", "--rc-weight", "0.5", "--tavs-gamma", "0.2",
                 "--sample-steps", "3", "--resume", *TINY]) == 0
    assert json.loads((out / "config.json").read_text())["step"] == 25


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["trec", "sample", "--model", str(tmp_path), "--source", "a"]) == 2
    assert "not a TREC checkpoint" in capsys.readouterr().err
    assert main(["trec", "train", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "none.jsonl")]) == 2
    assert main(["trec", "ablate", "--min-len", "5", "--max-len", "3", "--out", str(tmp_path / "a.json")]) == 2
    assert main(["trec"]) == 2
    with pytest.raises(SystemExit):
        main(["trec", "train", "--out", str(tmp_path), "--rc-weight", "-1"])


def test_ablation_runs_every_setting(tmp_path, capsys):
    cfg = AblationConfig(seeds=2, train_steps=3, batch_size=8, n_train=200, n_test=20, min_len=2, max_len=4,
                         n_words=8, sample_steps=2, num_timesteps=50)
    result = run_ablation(cfg, model_config=dict(embed_dim=8, hidden_dim=32, num_heads=2, ffn_dim=64))
    assert [s.name for s in result.settings] == ["plain", "+RC", "+TAVS", "+both"]
    assert [(s.rc_weight, s.tavs_gamma) for s in result.settings] == [(0, 0), (1.0, 0), (0, 0.5), (1.0, 0.5)]
    assert all(len(s.bleu) == 2 for s in result.settings)
    table = format_table(result)
    assert "BLEU mean ± std" in table and "+both" in table
    d = result.to_dict()
    assert d["settings"][0]["bleu_std"] >= 0 and len(d["settings"]) == 4

    out = tmp_path / "abl.json"
    assert main(["trec", "ablate", "--seeds", "1", "--train-steps", "1", "--min-len", "2", "--max-len", "3",
                 "--sample-steps", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "plain" in printed and "+RC" in printed and str(out) in printed
    assert len(json.loads(out.read_text())["settings"]) == 4
