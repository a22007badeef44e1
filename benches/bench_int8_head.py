"""The output head at decode: lmops ``int8_linear`` (int8 per-channel weights, W8A8) and lmops
``bf16_linear`` (the same bf16 weights as ``F.linear``, float32 accumulation) against ``F.linear`` in
bfloat16 and float32, and the 672M model's decode with either head.

- ``test_head_gemv``: one head GEMV, N=32000 (vocab) x K=2048 (hidden), M=1, at 1 and 2 threads; each
  provider's weight copies rotated past 4x the L3 (so every call streams its weights from memory, as in
  a model), providers interleaved (``lmops.bench.cpu.time_interleaved``). Prints the medians, the ratios
  and the GB/s of weight bytes streamed, next to the machine's copy bandwidth. The int8 output is
  checked equal to the plain-torch reference first.
- ``test_decode_int8_head`` (e2e, minutes): the 672M reference model of bench_engine_decode.py, packed,
  through ``lmops.generate`` with its bf16 head and with ``head_dtype="int8"``, interleaved rounds.

    python -m pytest benches/bench_int8_head.py --benchmark-only -s -k gemv   # about a minute
    python -m pytest benches/bench_int8_head.py --benchmark-only -s           # + the model, minutes

Nothing here asserts a speed.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

import lmops
import lmops_kernels as lk
from lmops.bench import cpu as bench
from lmops_kernels import reference as ref

VOCAB, HIDDEN = 32000, 2048
HEAD_PROVIDERS = ("bf16", "fp32", "bf16gemv", "int8")
LABELS = {"bf16": "F.linear bf16", "fp32": "F.linear fp32", "bf16gemv": "lmops bf16_linear", "int8": "lmops int8_linear"}


def _rotated(t: torch.Tensor) -> list[torch.Tensor]:
    nbytes = t.numel() * t.element_size()
    return [t] + [t.clone() for _ in range(bench._n_sets(nbytes) - 1)]


def prepare_head(provider: str, w: torch.Tensor, x: torch.Tensor) -> bench.Prepared:
    """Weight copies of the head ``w`` (float32 ``(N, K)``) in ``provider``'s format, rotated past 4x L3,
    and ``call(i)``: one M=1 GEMV on copy ``i``."""
    if provider in ("bf16", "fp32"):
        dtype = torch.bfloat16 if provider == "bf16" else torch.float32
        sets = _rotated(w.to(dtype))
        xd = x.to(dtype)
        return bench.Prepared(lambda i: F.linear(xd, sets[i % len(sets)]), len(sets), sets[0].numel() * sets[0].element_size())
    if provider == "bf16gemv":
        sets = _rotated(w.to(torch.bfloat16))
        xb = x.to(torch.bfloat16)
        return bench.Prepared(lambda i: lk.bf16_linear(xb, sets[i % len(sets)]), len(sets), 2 * w.numel())
    if provider == "int8":
        q, scale = lk.quantize_weight_int8(w)
        sets = _rotated(q)
        xb = x.to(torch.bfloat16)
        return bench.Prepared(lambda i: lk.int8_linear(xb, sets[i % len(sets)], scale), len(sets), q.numel() + 4 * scale.numel())
    raise ValueError(f"provider: expected one of {HEAD_PROVIDERS}, got {provider!r}")


def head_table(threads: int) -> dict:
    """Median seconds per head GEMV of every provider at ``threads`` torch threads, interleaved."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(VOCAB, HIDDEN, generator=gen) * 0.02
        x = torch.randn(1, HIDDEN, generator=gen)
        q, scale = lk.quantize_weight_int8(w)
        xb = x.to(torch.bfloat16)
        if not torch.equal(lk.int8_linear(xb, q, scale), ref.int8_linear(xb, q, scale)):
            raise AssertionError("int8_linear differs from the plain-torch reference at 32000x2048")
        wb = w.to(torch.bfloat16)
        got, want = lk.bf16_linear(xb, wb).float(), ref.bf16_linear(xb, wb).float()
        if not bool(((got - want).abs() <= 2.0**-7 * want.abs() + 1e-6).all()):  # within bf16 rounding
            raise AssertionError("bf16_linear differs from the plain-torch reference at 32000x2048")
        calls = {p: prepare_head(p, w, x) for p in HEAD_PROVIDERS}
        with torch.inference_mode():
            med, repeats = bench.time_interleaved(calls, quick=False)
        return {
            "threads": threads,
            "repeats": repeats,
            "median_s": med,
            "weight_bytes": {p: c.weight_bytes for p, c in calls.items()},
            "weight_sets": {p: c.n_sets for p, c in calls.items()},
        }
    finally:
        torch.set_num_threads(before)


def format_head_table(row: dict) -> str:
    med, nbytes = row["median_s"], row["weight_bytes"]
    lines = [f"head GEMV M=1 {VOCAB}x{HIDDEN}, {row['threads']} thread(s), medians of {row['repeats']} interleaved repeats:"]
    for p in HEAD_PROVIDERS:
        lines.append(
            f"  {LABELS[p]:<18} {med[p] * 1e3:7.3f} ms  {nbytes[p] / med[p] / 1e9:6.1f} GB/s of weights "
            f"({nbytes[p] / 2**20:.1f} MiB, {row['weight_sets'][p]} copies)  "
            f"bf16/this {med['bf16'] / med[p]:.2f}x"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("threads", [1, 2])
def test_head_gemv(benchmark, capsys, threads):
    row = benchmark.pedantic(head_table, args=(threads,), rounds=1, iterations=1)
    benchmark.extra_info.update({"machine": bench.machine_info(), **row})
    with capsys.disabled():
        print(f"\n{bench.machine_info()}\n{format_head_table(row)}")


def test_copy_bandwidth(benchmark, capsys):
    """The machine's memory bandwidth (``Tensor.copy_`` of 256 MiB, read + write), for the GB/s above."""
    gbps = benchmark.pedantic(bench.copy_bandwidth, args=(256 << 20, 5), rounds=1, iterations=1)
    benchmark.extra_info["copy_gbps"] = gbps
    with capsys.disabled():
        print(f"\ncopy bandwidth (read + write) at {torch.get_num_threads()} threads: {gbps:.1f} GB/s")


# ----------------------------------------------------------------------------------------------
# the 672M model: decode with either head
# ----------------------------------------------------------------------------------------------

DECODE_PROMPT = 8
NEW_TOKENS = 32
ROUNDS = 5


def _decode_rate(model, prompt, head_dtype, n: int = NEW_TOKENS) -> float:
    def seconds(k: int) -> float:
        t0 = time.perf_counter()
        lmops.generate(model, prompt, max_new_tokens=k, eos_token_id=[], head_dtype=head_dtype)
        return time.perf_counter() - t0

    full = seconds(n + 1)
    return n / max(full - seconds(1), 1e-9)


@pytest.mark.e2e
def test_decode_int8_head(benchmark, capsys):
    from e2e_models import build_bf16, build_lmops, e2e_layers, llama_config

    torch.manual_seed(0)
    cfg = llama_config(e2e_layers())
    packed = build_lmops(build_bf16(cfg))
    prompt = torch.randint(3, cfg.vocab_size, (1, DECODE_PROMPT))
    with torch.inference_mode():
        bf16_ids = lmops.generate(packed, prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])
        int8_ids = lmops.generate(packed, prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[], head_dtype="int8")
        for hd in (None, "int8"):
            _decode_rate(packed, prompt, hd, 2)  # warm-up (the int8 copy is made here)

        def run():
            rates = {None: [], "int8": []}
            for r in range(ROUNDS):
                for hd in (None, "int8") if r % 2 == 0 else ("int8", None):
                    rates[hd].append(_decode_rate(packed, prompt, hd))
            return rates

        rates = benchmark.pedantic(run, rounds=1, iterations=1)
    med = {k: statistics.median(v) for k, v in rates.items()}
    agree = float((bf16_ids[:, DECODE_PROMPT:] == int8_ids[:, DECODE_PROMPT:]).float().mean())
    benchmark.extra_info.update({"bf16_head_tok_s": med[None], "int8_head_tok_s": med["int8"], "agreement": agree,
                                 "loadavg": os.getloadavg()[0]})
    with capsys.disabled():
        print(
            f"\n672M model ({cfg.num_hidden_layers} layers), packed, lmops.generate greedy, {NEW_TOKENS} new tokens, "
            f"{torch.get_num_threads()} threads, medians of {ROUNDS} interleaved rounds: bf16 head {med[None]:.2f} tok/s, "
            f"int8 head {med['int8']:.2f} tok/s ({med['int8'] / med[None]:.2f}x); greedy tokens equal at "
            f"{agree:.0%} of positions (random weights: near-tied logits); load average {os.getloadavg()[0]:.2f}"
        )
