"""``lmops reason-distill run|exam``: the embedded task end to end, resume, user errors, and a run killed
with SIGKILL mid-round (slow)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmops.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = Path(__file__).resolve().parents[3] / "lmops" / "methods" / "reason_distill" / "examples"
TINY = ["--n-train", "5", "--n-heldout", "3", "--k", "2", "--max-new-tokens", "16", "--epochs", "1",
        "--batch-size", "4", "--save-steps", "2", "--quiet", "--threads", "1"]


def _stage_keys(out):
    return [(json.loads(line)["round"], json.loads(line)["stage"]) for line in
            (out / "stages.jsonl").read_text().splitlines()]


def test_run_then_rerun_then_exam(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reason-distill", "run", "--out", str(out), "--rounds", "2", *TINY]) == 0
    text = capsys.readouterr().out
    assert "greedy acc heldout" in text and (out / "round_2" / "checkpoint" / "config.json").is_file()
    assert (out / "student_init" / "config.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["round"] for row in metrics["rounds"]] == [0, 1, 2]
    keys = _stage_keys(out)
    # a rerun finds everything done and redoes nothing
    assert main(["reason-distill", "run", "--out", str(out), "--rounds", "2", *TINY]) == 0
    assert "resuming" in capsys.readouterr().out and _stage_keys(out) == keys
    # exam: greedy on the shipped held-out file, then sampled
    ckpt = str(out / "round_2" / "checkpoint")
    assert main(["reason-distill", "exam", "--student", ckpt, "--data", str(EXAMPLES / "arithmetic_heldout.jsonl"),
                 "--max-new-tokens", "16", "--json", "--out", str(tmp_path / "o.jsonl"), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("greedy accuracy") and json.loads(lines[-1])["total"] == 32
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 32
    assert main(["reason-distill", "exam", "--student", ckpt, "--data", "synthetic-heldout", "--n-heldout", "4",
                 "--k", "3", "--temperature", "1", "--max-new-tokens", "8", "--threads", "1"]) == 0
    assert "sample accuracy" in capsys.readouterr().out


def test_user_data_with_a_local_model_teacher(tmp_path, capsys):
    """--train FILE with a teacher that is a local model directory: its answers do not parse, every
    question is counted as failed, and the round goes on (training skipped)."""
    out = tmp_path / "run"
    assert main(["reason-distill", "run", "--out", str(out / "a"), "--rounds", "1", *TINY]) == 0
    student = out / "a" / "student_init"
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "Kim has 2 pens and buys 1 more. How many pens?", "answer": 3}\nbroken line\n')
    capsys.readouterr()
    assert main(["reason-distill", "run", "--out", str(out / "b"), "--rounds", "1", "--train", str(data),
                 "--student", str(student), "--teacher", str(student), "--demos", str(EXAMPLES / "demos.jsonl"),
                 "--teacher-samples", "1", "--retries", "1", "--k", "1", "--max-new-tokens", "8", "--quiet",
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "1 malformed line(s) skipped" in captured.err
    metrics = json.loads((out / "b" / "metrics.json").read_text())
    assert metrics["rounds"][1]["teacher"]["failed"] == 1 and metrics["rounds"][1]["train"]["total_steps"] == 0


@pytest.mark.parametrize("argv, message", [
    (["run", "--out", "{d}/x", "--train", "{d}/missing.jsonl", "--teacher", "scripted", "--student", "{d}"],
     "--train"),
    (["run", "--out", "{d}/x", "--train", "{d}/t.jsonl", "--student", "{d}"], "--teacher"),
    (["run", "--out", "{d}/x", "--train", "{d}/t.jsonl", "--teacher", "scripted"], "--student"),
    (["run", "--out", "{d}/x", "--train", "{d}/t.jsonl", "--teacher", "http://localhost:9/v1", "--student", "{d}"],
     "--student"),
    (["run", "--out", "{d}/x", "--train", "{d}/t.jsonl", "--teacher", "http://localhost:9/v1", "--student",
      "{d}/m"], "--model"),
    (["run", "--out", "{d}/x", "--student", "{d}/nothing"], "--student"),
    (["exam", "--student", "{d}/nothing", "--data", "{d}/t.jsonl"], "--student"),
    (["exam", "--student", "{d}", "--data", "{d}/empty.jsonl"], "--data"),
])
def test_user_errors_exit_2_with_a_message(tmp_path, capsys, argv, message):
    (tmp_path / "t.jsonl").write_text('{"question": "q?", "answer": "1"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")  # looks like a model directory to the argument check
    args = [a.replace("{d}", str(tmp_path)) for a in argv]
    assert main(["reason-distill", *args]) == 2
    assert message in capsys.readouterr().err


def test_bare_verb_prints_help(capsys):
    assert main(["reason-distill"]) == 2
    assert "run" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_killed_mid_round_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmops", "reason-distill", "run", "--out", str(out), "--rounds", "2",
           "--n-train", "8", "--n-heldout", "2", "--k", "2", "--max-new-tokens", "16", "--epochs", "15",
           "--batch-size", "4", "--save-steps", "5", "--quiet", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = out / "run_state.json"
    deadline = time.time() + 300
    killed_at = None
    try:
        while time.time() < deadline and proc.poll() is None:
            if state_path.exists():
                try:
                    state = json.loads(state_path.read_text())
                except ValueError:
                    state = {}
                if state.get("round") == 1 and state.get("stage") == "train" and (state.get("step") or 0) >= 10:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = state["step"]
                    break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=60)
    assert killed_at is not None, "the run never reached round 1's training"
    assert not (out / "round_1" / "checkpoint").exists()
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "round 1 train: resuming at step" in done.stdout
    keys = _stage_keys(out)
    assert len(keys) == len(set(keys)) == 11  # no stage ran twice; the same round structure
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    train1 = next(s["summary"] for s in stages if (s["round"], s["stage"]) == (1, "train"))
    assert train1["start_step"] >= killed_at and train1["start_step"] % 5 == 0
    steps = [json.loads(line)["step"] for line in (out / "round_1" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(train1["total_steps"]))
