"""ThreadTuner: the decode thread count chosen by measured step times (a planted clock), and
lmops.generate(threads=...) giving the same tokens and restoring torch's setting."""

import pytest
import torch

import lmops
from lmops.engine.threads import ThreadTuner, thread_candidates


class FakeMachine:
    """A clock whose step time depends on the thread count, and a load that can change."""

    def __init__(self, seconds_per_count):
        self.seconds = dict(seconds_per_count)
        self.now = 0.0
        self.threads = 2
        self.set_calls = []

    def set_threads(self, n):
        self.threads = n
        self.set_calls.append(n)

    def get_threads(self):
        return self.threads

    def clock(self):
        return self.now

    def run_step(self, tuner):
        used = tuner.begin()
        assert used == self.threads
        self.now += self.seconds[used]
        tuner.end()
        return used


def _tuner(machine, **kw):
    return ThreadTuner([2, 1], set_threads=machine.set_threads, get_threads=machine.get_threads,
                       clock=machine.clock, **kw)


def test_picks_the_faster_count_and_probes_the_other():
    m = FakeMachine({2: 0.010, 1: 0.016})  # quiet: 2 threads faster
    t = _tuner(m, probe_every=8)
    used = [m.run_step(t) for _ in range(64)]
    assert used[:2] == [2, 1]  # each candidate measured once
    assert used.count(1) <= 2 + 64 // 8  # then only probes
    assert t.best == 2


def test_switches_when_a_core_gets_busy_and_back_when_it_frees():
    m = FakeMachine({2: 0.010, 1: 0.016})
    t = _tuner(m, probe_every=8)
    for _ in range(20):
        m.run_step(t)
    assert t.best == 2
    m.seconds[2] = 0.060  # another process takes a core: every 2-thread barrier waits
    used = [m.run_step(t) for _ in range(20)]
    assert t.best == 1 and used[-8:].count(1) >= 7
    m.seconds[2] = 0.010  # the core is free again: a probe finds it
    used = [m.run_step(t) for _ in range(40)]
    assert t.best == 2 and used[-8:].count(2) >= 7
    t.close()
    assert m.threads == 2  # restored


def test_bad_arguments():
    with pytest.raises(ValueError, match="candidates"):
        ThreadTuner([0])
    with pytest.raises(ValueError, match="probe_every"):
        ThreadTuner([1], probe_every=1)
    with pytest.raises(RuntimeError, match="begin"):
        ThreadTuner([1]).end()
    assert thread_candidates(2) == [2, 1] and thread_candidates(16) == [16, 8, 2, 1]


def test_generate_with_threads_gives_the_same_tokens_and_restores_torch():
    from engine_cases import family_model

    model = family_model("llama", packed=True)
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    ref = lmops.generate(model, ids, max_new_tokens=12, eos_token_id=[])
    for threads in ("auto", 1):
        got = lmops.generate(model, ids, max_new_tokens=12, eos_token_id=[], threads=threads)
        assert torch.equal(got, ref)
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        lmops.generate(model, ids, max_new_tokens=2, threads=0)
