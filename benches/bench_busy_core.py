"""Decode with one core held by a busy process: the 672M reference model, packed, through
``lmops.generate`` with a fixed thread count and with ``threads="auto"``, quiet and busy.

The issue's bar: with one of the two cores held by ``python -c "while True: pass"``, decode keeps at
least half of its quiet rate. The peers on this machine kind under the same load
(``../shared/research/peers-measured.md``): llama.cpp TQ2_0 0.35 and bitnet.cpp I2_S 0.36 of their
quiet rates with 2 threads, bitnet.cpp 0.64 with 1 thread.

Protocol: an 8-token prompt, 64 new tokens, greedy, the 16-bit head through lmops's GEMV
(``head_dtype="bf16"``, as the peers' f16 heads) and the int8 head; tokens/s from
``GenerationResult.decode_tokens_per_s`` (prefill excluded); medians of ROUNDS, settings interleaved;
quiet first, then the same with the busy process running. Prints one table for RESULTS.md; asserts no
speed.

    python -m pytest benches/bench_busy_core.py --benchmark-only -s      # about 3 minutes
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import pytest
import torch
from e2e_models import build_bf16, build_lmops, e2e_layers, llama_config

import lmops

pytestmark = pytest.mark.e2e

PROMPT, NEW, ROUNDS = 8, 64, 3
SETTINGS = [(2, "bf16"), (1, "bf16"), ("auto", "bf16"), (2, "int8"), (1, "int8"), ("auto", "int8")]


@pytest.fixture(scope="module")
def packed():
    torch.manual_seed(0)
    cfg = llama_config(e2e_layers())
    model = build_lmops(build_bf16(cfg))
    prompt = torch.randint(3, cfg.vocab_size, (1, PROMPT))
    return model, prompt


def _rate(model, prompt, threads, head) -> float:
    out = lmops.generate(model, prompt, max_new_tokens=NEW, eos_token_id=[], threads=threads, head_dtype=head,
                         return_dict=True)
    return out.decode_tokens_per_s


def _measure(model, prompt) -> dict:
    rates: dict = {s: [] for s in SETTINGS}
    for r in range(ROUNDS):
        order = SETTINGS[r % len(SETTINGS):] + SETTINGS[: r % len(SETTINGS)]
        for s in order:
            rates[s].append(_rate(model, prompt, *s))
    return {s: statistics.median(v) for s, v in rates.items()}


def test_busy_core(benchmark, packed, capsys):
    model, prompt = packed
    if torch.get_num_threads() < 2:
        pytest.skip("needs 2 threads")
    benchmark.group = "busy-core"
    for s in SETTINGS:  # warm-up: quantized heads made, thread pools started
        _rate(model, prompt, *s)
    quiet = _measure(model, prompt)
    busy_proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        busy = _measure(model, prompt)
        benchmark.pedantic(lambda: _rate(model, prompt, "auto", "bf16"), rounds=1, iterations=1)
    finally:
        busy_proc.kill()
        busy_proc.wait()
    lines = [f"busy core: 672M packed, {PROMPT}-token prompt, {NEW} new tokens, medians of {ROUNDS}; tok/s",
             "| head | threads | quiet | one core busy | busy / quiet 2-thread |", "|---|---|---:|---:|---:|"]
    for threads, head in SETTINGS:
        ref = quiet[(2, head)]
        lines.append(f"| {head} | {threads} | {quiet[(threads, head)]:.2f} | {busy[(threads, head)]:.2f} | "
                     f"{busy[(threads, head)] / ref:.2f} |")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
