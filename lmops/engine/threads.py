"""Choosing the decode thread count by measurement, while decoding.

Why: a decode step is a chain of small GEMVs, each split across the intra-op threads and joined at a
barrier. When another process holds a core, every barrier waits for the thread that lost its core, and a
2-thread decode falls far below a 1-thread one (measured on the 672M model, 2 cores, one held by a busy
process: 2 threads 16.6 tok/s, 1 thread 34.9 tok/s; quiet: 47.0 and 34.1). The right count depends on
the load, which changes while a long generation runs, so :class:`ThreadTuner` keeps measuring: it times
every decode step, keeps a per-candidate step time (a moving average that takes a faster step at once),
decodes with the fastest, and spends one step in every ``probe_every`` on another candidate so a change
of load is seen
(a choice: bitnet.cpp and llama.cpp take a fixed ``-t``; the policy here is ours).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

__all__ = ["ThreadTuner", "thread_candidates"]


def thread_candidates(max_threads: int) -> list[int]:
    """The counts tried: all of them up to 4 threads, else 1, 2, half and all (largest first)."""
    if max_threads <= 4:
        return list(range(max_threads, 0, -1))
    return sorted({max_threads, max(1, max_threads // 2), 2, 1}, reverse=True)


class ThreadTuner:
    """Per-step thread-count choice from measured step times.

    Use: ``tuner.begin()`` before a step (sets torch's intra-op thread count), ``tuner.end()`` after it;
    ``tuner.close()`` restores the count found at construction.

    Args:
        candidates: thread counts to choose among (default: :func:`thread_candidates` of torch's count).
        probe_every: one step in this many runs on the least recently measured other candidate.
        alpha: weight of the newest step time in each candidate's moving average (0 < alpha <= 1).
        set_threads, get_threads, clock: torch's setters and ``time.perf_counter`` (replaceable in tests).
    """

    def __init__(
        self,
        candidates: Sequence[int] | None = None,
        *,
        probe_every: int = 16,
        alpha: float = 0.3,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        get_threads: Callable[[], int] = torch.get_num_threads,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._set, self._clock = set_threads, clock
        self.original = get_threads()
        counts = list(candidates) if candidates is not None else thread_candidates(self.original)
        if not counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise ValueError(f"candidates: expected positive thread counts, got {candidates!r}")
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 2:
            raise ValueError(f"probe_every: expected an int >= 2, got {probe_every!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: expected a number in (0, 1], got {alpha!r}")
        self.candidates = list(dict.fromkeys(counts))
        self.probe_every, self.alpha = probe_every, alpha
        self.mean: dict[int, float] = {}
        self.last_seen: dict[int, int] = {}
        self.steps = 0
        self.current = self.candidates[0]
        self._running: int | None = None
        self._t0 = 0.0
        self.history: list[int] = []  # the count each step ran with

    @property
    def best(self) -> int:
        """The candidate with the lowest average step time so far (the first untried one before that)."""
        for c in self.candidates:
            if c not in self.mean:
                return c
        return min(self.candidates, key=lambda c: self.mean[c])

    def _choose(self) -> int:
        untried = [c for c in self.candidates if c not in self.mean]
        if untried:
            return untried[0]
        if len(self.candidates) > 1 and self.steps % self.probe_every == self.probe_every - 1:
            others = [c for c in self.candidates if c != self.best]
            return min(others, key=lambda c: self.last_seen.get(c, -1))
        return self.best

    def begin(self) -> int:
        """Set the thread count for the next step; returns it."""
        count = self._choose()
        if count != self.current:
            self._set(count)
            self.current = count
        self._running = count
        self._t0 = self._clock()
        return count

    def end(self) -> None:
        """Record the step that :meth:`begin` started."""
        if self._running is None:
            raise RuntimeError("ThreadTuner.end() without begin()")
        seconds = self._clock() - self._t0
        c = self._running
        if c not in self.mean or seconds < self.mean[c]:
            # a faster step is believed at once (a freed core shows in one probe); slower ones are averaged,
            # and the count in use is timed every step, so a newly busy core shows within a few steps
            self.mean[c] = seconds
        else:
            self.mean[c] = (1 - self.alpha) * self.mean[c] + self.alpha * seconds
        self.last_seen[c] = self.steps
        self.history.append(c)
        self.steps += 1
        self._running = None

    def close(self) -> None:
        """Restore the thread count found at construction."""
        if self.current != self.original:
            self._set(self.original)
            self.current = self.original
