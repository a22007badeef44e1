"""``lmops.common.progress.progress_bar``: a bar redrawn in place on a terminal, a few plain lines in a
log. tqdm's clock is replaced by a counter the tests advance, so the timing is exact and instant."""

from __future__ import annotations

import io
import re
import sys

import pytest
import tqdm.std

from lmops.common.progress import LOG_INTERVAL_S, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(tqdm.std, "time", fake)  # tqdm reads its clock through this name
    return fake


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(bar, clock, steps: int, seconds_per_step: float) -> None:
    for i in range(steps):
        clock.now += seconds_per_step
        bar.set_postfix(loss=f"{5 - i / 200:.3f}", refresh=False)
        bar.update(1)
    bar.close()


def _elapsed_s(line: str) -> int:
    m, s = re.search(r"\[(\d+):(\d+)", line).groups()
    return 60 * int(m) + int(s)


def test_log_gets_a_line_now_and_then_not_carriage_returns(clock):
    # the demo's case: 550 steps, a quarter second each (137.5 s), written to a log file
    log = io.StringIO()
    run(progress_bar(550, desc="QAT training", unit="step", file=log), clock, 550, 0.25)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # the start, one per 30 s of progress (30, 60, 90, 120 s), the end
    assert LOG_INTERVAL_S == 30 and len(lines) == 6
    assert lines[0] == "QAT training:   0% 0/550 [00:00<?, ?step/s]"
    assert lines[-1] == "QAT training: 100% 550/550 [02:17<00:00,  4.00step/s, loss=2.255]"
    elapsed = [_elapsed_s(ln) for ln in lines]
    assert elapsed == [0, 30, 60, 90, 120, 137]
    assert all(b - a >= LOG_INTERVAL_S for a, b in zip(elapsed[:-2], elapsed[1:-1]))


def test_log_interval_is_honoured_and_bounded(clock):
    log = io.StringIO()
    run(progress_bar(1000, desc="x", file=log, log_interval_s=5), clock, 1000, 0.1)  # 100 s
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 + 100 // 5 - 1  # start, every 5 s up to 95 s, end at 100 s
    assert all(ln.startswith("x: ") and "%" in ln for ln in lines)


def test_terminal_renders_in_place(clock):
    tty = FakeTTY()
    run(progress_bar(550, desc="QAT training", unit="step", file=tty), clock, 550, 0.25)
    text = tty.getvalue()
    assert text.count("\r") >= 550  # redrawn at every step (each 0.25 s > tqdm's 0.1 s mininterval)
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, kept at the end
    assert "550/550" in text.rsplit("\r", 1)[-1]


def test_unknown_total_leave_false_and_disable(clock):
    log = io.StringIO()
    run(progress_bar(None, desc="reading {shards}", file=log, log_interval_s=10), clock, 10, 4.0)
    lines = log.getvalue().splitlines()
    assert lines[0] == "reading {shards}: 0 [00:00, ?it/s]"  # braces in desc are text
    assert lines[-1].startswith("reading {shards}: 10 [00:40") and len(lines) == 5  # 0, 12, 24, 36 s, end

    log = io.StringIO()
    run(progress_bar(5, desc="x", file=log, leave=False), clock, 5, 1.0)
    assert log.getvalue() == "x:   0% 0/5 [00:00<?, ?it/s]\n"  # no final line, no clearing junk

    log = io.StringIO()
    run(progress_bar(5, file=log, disable=True), clock, 5, 100.0)
    assert log.getvalue() == ""


def test_default_file_is_stderr_at_call_time(clock, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    run(progress_bar(3, desc="x"), clock, 3, 1.0)
    assert err.getvalue().splitlines() == ["x:   0% 0/3 [00:00<?, ?it/s]", "x: 100% 3/3 [00:03<00:00,  1.00it/s, loss=4.990]"]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "30", None])
def test_bad_interval(bad):
    with pytest.raises(ValueError, match="log_interval_s: expected a positive number of seconds"):
        progress_bar(3, file=io.StringIO(), log_interval_s=bad)


def test_demo_training_logs_lines(capsys):
    # the demo's own loop, stderr captured (not a terminal): a start and an end line, no \r
    import torch

    from lmops.demo import DemoConfig, build_model, train

    cfg = DemoConfig.tiny(steps=4)
    data = torch.randint(0, 256, (4096,), dtype=torch.uint8)
    threads = torch.get_num_threads()
    try:
        stats = train(build_model(cfg), data, cfg)
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert stats["steps"] == 4 and "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("QAT training:")]
    assert len(lines) == 2 and lines[-1].startswith("QAT training: 100% 4/4")
