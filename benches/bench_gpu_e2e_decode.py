"""GPU end to end: greedy decode tokens/s and joules per token of a packed ~1.1B Llama-shaped model
(lmops ``BitLinear`` projections on the GPU backend the dispatcher picks) vs the same model in bf16.

Shape (TinyLlama-1.1B's): hidden 2048, FFN 5632, 22 layers, 32 heads / 4 KV heads, vocab 32000,
untied head, random N(0, 0.02) weights; embeddings, norms and the head stay bf16 in both providers.
Both decode through ``transformers``' own ``generate`` (greedy, batch 1), in two modes:

- ``eager``: the default dynamic KV cache, every kernel launched from Python;
- ``static``: ``cache_implementation="static"``, which transformers compiles (CUDA graphs) on GPU;
- ``engine``: ``lmops.generate`` (the lmops decode engine, eager step) on both models;
- ``engine-graph``: ``lmops.generate`` with its decode step captured in a CUDA graph (its default on GPU).

Decode speed = new tokens / (time of generate(n + 1) - time of generate(1)), so prefill and the first
token are excluded; providers interleaved, median of ROUNDS. Energy per token: NVML's total-energy
counter (:mod:`lmops.bench.nvml`) over the same difference. Skipped without CUDA. No speed assertion.

    python -m pytest benches/bench_gpu_e2e_decode.py --benchmark-only -s
"""

from __future__ import annotations

import statistics

import pytest
import torch

import time

from e2e_models import build_bf16, build_lmops, generate_seconds, llama_config, weight_bytes

import lmops
from lmops.bench import nvml
from lmops_kernels import dispatch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# the CPU benchmark's shape (e2e_models.E2E_SHAPE) with TinyLlama-1.1B's depth and heads
SHAPE_1B = dict(num_hidden_layers=22, num_attention_heads=32, max_position_embeddings=2048)
NEW_TOKENS = 64
PROMPT = 16
ROUNDS = 3
MODES = {"eager": {}, "static": {"cache_implementation": "static"}, "engine": {"engine": True, "cuda_graph": False},
         "engine-graph": {"engine": True, "cuda_graph": True}}


@pytest.fixture(scope="module")
def models():
    cfg = llama_config(**SHAPE_1B)
    bf16 = build_bf16(cfg).cuda()
    lmops = build_lmops(bf16).cuda()
    prompt = torch.randint(0, cfg.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0)).cuda()
    return {"cfg": cfg, "bf16": bf16, "lmops": lmops, "prompt": prompt}


@torch.inference_mode()
def _seconds(model, prompt, n: int, gen_kwargs: dict) -> float:
    if not gen_kwargs.get("engine"):
        return generate_seconds(model, prompt, n, **gen_kwargs)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    lmops.generate(model, prompt, max_new_tokens=n, eos_token_id=[], cuda_graph=gen_kwargs["cuda_graph"])
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def _decode(model, prompt, gen_kwargs: dict) -> tuple[float, float | None]:
    """(tokens/s, joules/token or None) of NEW_TOKENS decode steps."""
    meter = nvml.EnergyMeter() if nvml.unavailable() is None else None
    runs = {}
    for n in (1, NEW_TOKENS + 1):
        if meter is not None:
            meter.start()
        seconds = _seconds(model, prompt, n, gen_kwargs)
        runs[n] = (seconds, meter.stop() if meter is not None else None)
    dt = max(runs[NEW_TOKENS + 1][0] - runs[1][0], 1e-9)
    joules = None if meter is None else (runs[NEW_TOKENS + 1][1] - runs[1][1]) / NEW_TOKENS
    return NEW_TOKENS / dt, joules


@pytest.mark.parametrize("mode", list(MODES))
def test_gpu_decode(benchmark, models, mode):
    kwargs = MODES[mode]
    prompt = models["prompt"]
    for p in ("bf16", "lmops"):  # warm-up: compilation, autotuning, cuBLAS heuristics
        _decode(models[p], prompt, kwargs)
    samples: dict[str, list[tuple[float, float | None]]] = {"bf16": [], "lmops": []}
    for _ in range(ROUNDS):
        for p in samples:
            samples[p].append(_decode(models[p], prompt, kwargs))
    tok_s = {p: statistics.median(s[0] for s in v) for p, v in samples.items()}
    joules = {p: (statistics.median(s[1] for s in v) if v[0][1] is not None else None) for p, v in samples.items()}
    backend = dispatch.select("ternary_linear", "cuda").backend
    wb = {p: weight_bytes(models[p]) for p in ("bf16", "lmops")}
    benchmark.group = f"gpu e2e decode ({mode})"
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name(), "mode": mode, "lmops_backend": backend,
            **{f"tok_s_{p}": v for p, v in tok_s.items()},
            "speedup_vs_bf16": tok_s["lmops"] / tok_s["bf16"],
            **{f"J_per_token_{p}": v for p, v in joules.items()},
            **{f"weight_bytes_{p}": v for p, v in wb.items()},
        }
    )
    energy = (
        f"J/token bf16 {joules['bf16']:.4f}, lmops {joules['lmops']:.4f} ({joules['bf16'] / joules['lmops']:.2f}x less)"
        if joules["lmops"] is not None
        else f"energy not measured: {nvml.unavailable()}"
    )
    print(
        f"\n[{torch.cuda.get_device_name()}] 1.1B decode ({mode}, lmops backend {backend}): bf16 {tok_s['bf16']:.1f} "
        f"tok/s, lmops {tok_s['lmops']:.1f} tok/s = {tok_s['lmops'] / tok_s['bf16']:.2f}x; {energy}; weights "
        f"{wb['bf16'] / 2**20:.0f} vs {wb['lmops'] / 2**20:.0f} MiB"
    )
    benchmark.pedantic(lambda: _decode(models["lmops"], prompt, kwargs), rounds=1, iterations=1)
