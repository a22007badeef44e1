"""JSONL helpers: malformed lines reported, atomic writes, and an appender that survives a kill mid-line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmops.common.jsonl import JsonlAppender, read_jsonl, write_jsonl


def test_read_reports_and_skips_malformed_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n[1, 2]\n{"b": 2}\n{"a": 3}\n', encoding="utf-8")
    result = read_jsonl(path, required=["a"])
    assert result.records == [{"a": 1}, {"a": 3}]
    assert [n for n, _ in result.malformed] == [3, 4, 5]
    assert "JSON" in result.malformed[0][1] and "object" in result.malformed[1][1] and "'a'" in result.malformed[2][1]
    with pytest.raises(ValueError, match=r"d.jsonl:3"):
        read_jsonl(path, strict=True)


def test_write_is_atomic(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(path, [{"x": 1}, {"x": "é"}]) == 2
    assert read_jsonl(path).records == [{"x": 1}, {"x": "é"}]

    def bad():
        yield {"x": 2}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_jsonl(path, bad())
    assert read_jsonl(path).records == [{"x": 1}, {"x": "é"}]  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]  # no temporary left behind


def test_appender_drops_a_cut_off_last_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2, "tex')
    with JsonlAppender(path) as out:
        out.append({"i": 2})
    assert [r["i"] for r in read_jsonl(path)] == [0, 1, 2] and not read_jsonl(path).malformed
    path.write_bytes(b'{"i": 0, "no newline at all')
    with JsonlAppender(path) as out:
        out.append({"i": 9})
    assert read_jsonl(path).records == [{"i": 9}]


_WRITER = """
import sys, time
from lmops.common.jsonl import JsonlAppender
with JsonlAppender(sys.argv[1], fsync=False) as out:
    for i in range(100000):
        out.append({"i": i, "pad": "x" * 2000})
        if i == 20:
            print("started", flush=True)
"""


def test_appender_after_a_kill_resumes_without_loss_or_duplicates(tmp_path):
    path = tmp_path / "k.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with JsonlAppender(path) as out:  # what a resuming run does: open, read what exists, continue
        done = read_jsonl(path)
        assert not done.malformed
        n = len(done.records)
        assert n > 20 and [r["i"] for r in done.records] == list(range(n))
        for i in range(n, n + 5):
            out.append({"i": i, "pad": ""})
    assert [r["i"] for r in read_jsonl(path)] == list(range(n + 5))
    assert all(json.loads(line) for line in path.read_text().splitlines())
