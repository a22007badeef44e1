"""``lmops domain-rc``: the offline demo end to end, each verb on directories written with
``save_pretrained`` (the ``from_pretrained`` path users take), and bad inputs reported, never a crash."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from lmops.cli import main  # noqa: E402
from lmops.common.jsonl import read_jsonl  # noqa: E402
from lmops.methods.domain_rc.demo import example_path  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def lmops(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["domain-rc", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    code, stdout, _ = lmops("demo", "--out", str(out))
    assert code == 0
    return out, stdout


def test_demo_runs_every_stage_and_learns(demo):
    out, stdout = demo
    for stage in ("qa:", "cluster:", "pack:", "train:"):
        assert stage in stdout
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["qa"]["documents"] == 12 and summary["qa"]["failed"] >= 1  # the planted malformed answers
    assert summary["qa"]["ok"] + summary["qa"]["failed"] == 12
    assert summary["cluster"]["documents"] == 12 and summary["cluster"]["clusters"] < 12
    assert summary["pack"]["pack"]["sequences"] >= 1 and summary["pack"]["pack"]["fill"] > 0.8
    assert summary["loss_after"] < summary["loss_before"] - 0.2
    packed = read_jsonl(out / "data" / "packed.jsonl").records
    assert all(len(p["input_ids"]) <= 1024 for p in packed)
    sources = [s for p in packed for s in p["sources"]]
    assert len([s for s in sources if s.startswith("cluster-")]) >= summary["cluster"]["clusters"]
    assert any(s.startswith("general-") for s in sources)
    assert (out / "trained" / "adapter_model.safetensors").is_file()


def test_each_verb_on_saved_models(demo, tmp_path: Path):
    models, _ = demo
    data = tmp_path / "data"
    code, stdout, _ = lmops("qa", "--corpus", str(example_path("corpus.jsonl")), "--domain", "biomedicine",
                            "--llm", "scripted", "--out", str(data), "--batch-size", "5")
    assert code == 0 and "12 documents (0 already done), 12 answered with 36 QA pairs" in stdout
    assert (data / "llm_cache.sqlite").is_file() and len(read_jsonl(data / "qa.jsonl")) == 12
    code, stdout, _ = lmops("qa", "--corpus", str(example_path("corpus.jsonl")), "--domain", "biomedicine",
                            "--llm", "scripted", "--out", str(data))
    assert code == 0 and "(12 already done)" in stdout and len(read_jsonl(data / "qa.jsonl")) == 12

    code, stdout, _ = lmops("cluster", "--data", str(data), "--encoder", str(models / "encoder"), "--tokenizer",
                            str(models / "model"), "--l-max", "1400", "--d-max", "2", "--threshold", "0.0")
    assert code == 0 and "12 documents -> 6 clusters" in stdout  # d_max 2, threshold 0: all pairs
    clusters = read_jsonl(data / "clusters.jsonl").records
    assert sorted(len(c["doc_ids"]) for c in clusters) == [2] * 6

    code, stdout, _ = lmops("pack", "--data", str(data), "--tokenizer", str(models / "model"), "--context-length",
                            "700", "--general", str(example_path("general.jsonl")), "--ratio", "0.05")
    assert code == 0 and "sequences of <= 700 tokens" in stdout
    report = json.loads((data / "pack_report.json").read_text())
    assert report["pack"]["overlong"] >= 1 and report["pack"]["pieces"] >= 2  # clusters over 700 tokens split
    assert 0.05 <= report["mix"]["achieved_ratio"] < 0.1

    code, stdout, _ = lmops("train", "--data", str(data), "--model", str(models / "model"), "--out",
                            str(tmp_path / "lora"), "--rank", "4", "--lr", "1e-2", "--max-steps", "3", "--evaluate")
    assert code == 0 and "train: 3 steps on 1 process(es)" in stdout and "packed-data loss" in stdout
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    code, stdout, _ = lmops("train", "--data", str(data), "--model", str(models / "model"), "--out",
                            str(tmp_path / "res"), "--adapter", "reslora", "--rank", "4", "--max-steps", "2")
    assert code == 0 and (tmp_path / "res" / "adapter_config.json").is_file()


def test_bad_inputs_are_reported_not_crashes(demo, tmp_path: Path):
    models, _ = demo
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    data = tmp_path / "empty"
    code, stdout, _ = lmops("qa", "--corpus", str(empty), "--domain", "x", "--llm", "scripted", "--out", str(data))
    assert code == 0 and "0 documents" in stdout
    code, stdout, _ = lmops("cluster", "--data", str(data), "--encoder", str(models / "encoder"), "--tokenizer",
                            str(models / "model"))
    assert code == 0 and "0 documents -> 0 clusters" in stdout
    code, stdout, _ = lmops("pack", "--data", str(data), "--tokenizer", str(models / "model"), "--general",
                            str(example_path("general.jsonl")))
    assert code == 0 and "-> 0 sequences" in stdout
    code, _, err = lmops("train", "--data", str(data), "--model", str(models / "model"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no packed sequences" in err and not (tmp_path / "o").exists()

    code, _, err = lmops("cluster", "--data", str(tmp_path / "nothing"), "--encoder", str(models / "encoder"))
    assert code == 2 and "run `lmops domain-rc qa`" in err
    code, _, err = lmops("qa", "--corpus", str(tmp_path / "missing.jsonl"), "--domain", "x", "--llm", "scripted",
                         "--out", str(tmp_path / "d"))
    assert code == 2 and "--corpus" in err
    code, _, err = lmops("qa", "--corpus", str(empty), "--domain", "x", "--llm", "nowhere", "--out", str(tmp_path / "d"))
    assert code == 2 and "--llm" in err

    # a teacher that never answers with JSON: every document counted as failed, the run completes
    bad = tmp_path / "bad"
    code, stdout, _ = lmops("qa", "--corpus", str(example_path("corpus.jsonl")), "--domain", "x", "--llm", "scripted",
                            "--scripted-malformed-rate", "1", "--out", str(bad), "--no-cache")
    assert code == 0 and "0 answered with 0 QA pairs, 12 without a parsable answer" in stdout
    # a document longer than l_max: its own cluster, reported
    code, stdout, _ = lmops("cluster", "--data", str(bad), "--encoder", str(models / "encoder"), "--tokenizer",
                            str(models / "model"), "--l-max", "215")
    assert code == 0 and "documents longer than --l-max 215 (own clusters)" in stdout
    report = json.loads((bad / "cluster_report.json").read_text())
    assert report["overlong_count"] >= 1 and report["failed_qa"] == 12
    with pytest.raises(SystemExit):
        lmops("cluster", "--data", str(bad), "--encoder", "x", "--threshold", "2")


def test_help_without_a_stage():
    code, stdout, _ = lmops()
    assert code == 2 and "qa" in stdout and "cluster" in stdout and "demo" in stdout


@pytest.mark.slow
def test_torchrun_launches_two_gloo_ranks(demo, tmp_path: Path):
    """``torchrun --nproc_per_node 2 -m lmops.methods.domain_rc.train_ddp``: each rank joins the group
    from the environment, rank 0 saves once."""
    models, _ = demo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmops.methods.domain_rc.train_ddp", "--data", str(models / "data"), "--model",
           str(models / "model"), "--out", str(tmp_path / "ddp"), "--rank", "4", "--max-steps", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train: 2 steps on 2 process(es)" in done.stdout
    log = json.loads((tmp_path / "ddp" / "domain_rc_train.json").read_text())
    assert log["world_size"] == 2 and log["steps"] == 2
