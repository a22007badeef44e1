"""Progress bars that suit where they are written: redrawn in place on a terminal, a line now and then
in a log.

tqdm redraws its bar with a carriage return about ten times a second whatever the stream; written to a
file or a pipe (CI, ``nohup``, ``lmops demo > log``) that leaves hundreds of ``\\r`` updates on one
line. :func:`progress_bar` gives tqdm's usual bar on a terminal and, anywhere else, a plain line (no
``\\r``, no terminal codes) at the start, at most once every ``log_interval_s`` seconds, and at the
end. It uses only tqdm's own options (``file``, ``mininterval``, ``miniters``, ``bar_format``) and a
tqdm subclass without the monitor thread.
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm.std import tqdm as _std_tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

LOG_INTERVAL_S = 30.0  # seconds between two logged lines when the output is not a terminal


class _LogTqdm(_std_tqdm):
    # the monitor thread would force a redraw whenever updates slow down; a log wants only the timed lines
    monitor_interval = 0


class _LineWriter:
    """A file for tqdm that turns each in-place redraw (``"\\r" + status + padding``) into one line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        text = s.replace("\r", "").rstrip()
        if text:  # the bare "\n" after the final status, and the clearing writes, carry nothing
            self.stream.write(text + "\n")
        return len(s)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()

    def isatty(self) -> bool:
        return False


def _is_tty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def progress_bar(
    total: int | None = None,
    *,
    desc: str | None = None,
    unit: str = "it",
    file: IO[str] | None = None,
    log_interval_s: float = LOG_INTERVAL_S,
    leave: bool = True,
    disable: bool = False,
) -> _std_tqdm:
    """A tqdm bar for a long loop (``update``/``set_postfix``/``close`` as usual, or a ``with`` block).

    Args:
        total: the number of steps, or None when unknown.
        desc, unit: tqdm's label and step unit.
        file: where it writes; default ``sys.stderr`` (at call time). On a terminal (``file.isatty()``)
            the bar is tqdm's, redrawn in place; in a notebook tqdm's widget (``tqdm.auto``), when
            ``file`` is not given. Anywhere else each redraw is one plain line, written at the start,
            then at most once every ``log_interval_s`` seconds, and at the end (with ``leave``).
        log_interval_s: seconds between two lines when ``file`` is not a terminal (> 0).
        leave: keep the final state of the bar when it closes.
        disable: no output at all.
    Raises:
        ValueError: ``log_interval_s`` is not a positive number.
    """
    if isinstance(log_interval_s, bool) or not isinstance(log_interval_s, (int, float)) or not log_interval_s > 0:
        raise ValueError(f"log_interval_s: expected a positive number of seconds, got {log_interval_s!r}")
    stream = sys.stderr if file is None else file
    if _is_tty(stream):
        return _std_tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave, disable=disable,
                         dynamic_ncols=True)
    if file is None:
        from tqdm.auto import notebook_tqdm, tqdm as auto_tqdm

        if notebook_tqdm is not _std_tqdm:  # a Jupyter kernel with ipywidgets: tqdm's widget, not lines
            return auto_tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=disable)
    if stream is None:  # pythonw and friends: no stderr at all
        disable = True
    label = f"{desc}: " if desc else ""
    counts = "{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}" if total else "{n_fmt} [{elapsed}"
    return _LogTqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=_LineWriter(stream) if stream is not None else None,
        leave=leave,
        disable=disable,
        mininterval=float(log_interval_s),
        miniters=1,  # fixed: tqdm's dynamic miniters would stretch the interval when steps speed up
        bar_format=label.replace("{", "{{").replace("}", "}}") + counts + ", {rate_fmt}{postfix}]",
        ascii=True,
    )
