"""End to end: the lmops decode engine (``lmops.generate``) against ``transformers``' ``generate`` on the
672M reference model (e2e_models.py), decode tokens/s and prefill of a 128-token prompt.

Providers, all greedy on the same weights:
- ``bf16``: the plain transformers model in bfloat16 through ``model.generate`` (the baseline);
- ``lmops-hf``: every projection a packed lmops ``BitLinear``, through ``model.generate``;
- ``lmops-engine``: the same packed model through ``lmops.generate`` (eager decode step);
- ``lmops-compiled``: the same with ``compile=True`` (the decode step under ``torch.compile``);
- ``lmops-bf16gemv``: compiled, the same bf16 head through lmops's bf16 GEMV (``head_dtype="bf16"``:
  still a 16-bit head, as bitnet.cpp's f16 head);
- ``lmops-int8head``: compiled, an int8 per-channel head (``head_dtype="int8"``).

Run: ``python -m pytest benches/bench_engine_decode.py --benchmark-only -s`` (several minutes on 2 cores,
the compiled provider's first call compiles; ``LMOPS_E2E_LAYERS=2`` for a quick look). The summary
test prints interleaved medians, ratios against ``bf16`` measured in the same run, and the per-token
time split (projections, output head, attention, everything else) of each provider, for
benches/RESULTS.md. Decode tokens/s = n / (time of n + 1 new tokens - time of 1), as
bench_e2e_decode.py measures it; no EOS stops a run.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from e2e_models import (
    build_bf16,
    build_lmops,
    decode_tokens_per_s,
    e2e_layers,
    llama_config,
    peak_rss_bytes,
    prefill_tokens_per_s,
)

import lmops
from lmops.engine import engine_for
from lmops.engine.attention import sdpa_attention

pytestmark = pytest.mark.e2e

NEW_TOKENS = 32
PROMPT = 128
DECODE_PROMPT = 8
ROUNDS = 3
PROVIDERS = ("bf16", "lmops-hf", "lmops-engine", "lmops-compiled", "lmops-bf16gemv", "lmops-int8head")
# engine providers: (compile, head_dtype)
_ENGINE = {"lmops-engine": (False, None), "lmops-compiled": (True, None), "lmops-bf16gemv": (True, "bf16"),
           "lmops-int8head": (True, "int8")}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = llama_config(e2e_layers())
    bf16 = build_bf16(cfg)
    packed = build_lmops(bf16)
    prompt = torch.randint(3, cfg.vocab_size, (1, PROMPT))
    with torch.inference_mode():  # the engine gives the tokens model.generate gives, on this model too
        ref = packed.generate(prompt[:, :DECODE_PROMPT], max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(lmops.generate(packed, prompt[:, :DECODE_PROMPT], max_new_tokens=8, eos_token_id=[]), ref)
    return {"cfg": cfg, "bf16": bf16, "packed": packed, "prompt": prompt}


def _engine_seconds(model, prompt, n: int, compile: bool, head_dtype: str | None) -> float:
    t0 = time.perf_counter()
    lmops.generate(model, prompt, max_new_tokens=n, eos_token_id=[], compile=compile, head_dtype=head_dtype)
    return time.perf_counter() - t0


def decode_rate(models, provider: str, n: int = NEW_TOKENS) -> float:
    prompt = models["prompt"][:, :DECODE_PROMPT]
    if provider in ("bf16", "lmops-hf"):
        return decode_tokens_per_s(models["bf16" if provider == "bf16" else "packed"], prompt, n)
    compile, head = _ENGINE[provider]
    full = _engine_seconds(models["packed"], prompt, n + 1, compile, head)
    return n / max(full - _engine_seconds(models["packed"], prompt, 1, compile, head), 1e-9)


def prefill_rate(models, provider: str) -> float:
    prompt = models["prompt"]
    if provider in ("bf16", "lmops-hf"):
        return prefill_tokens_per_s(models["bf16" if provider == "bf16" else "packed"], prompt)
    # the engine's prefill is never compiled: both engine providers run this
    result = lmops.generate(models["packed"], prompt, max_new_tokens=1, eos_token_id=[], return_dict=True)
    return result.prefill_tokens_per_s


def _interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotate the order between rounds
            out[k].append(fns[k]())
    return out


@torch.inference_mode()
def token_split(models, reps: int = 7) -> dict[str, float]:
    """Seconds per decoded token of the packed model, median of ``reps`` interleaved rounds: the 7
    projections of every layer, the final norm and output head, attention over a cache of
    DECODE_PROMPT + NEW_TOKENS / 2 slots, each timed alone in the shapes of one decode step (M = 1,
    the model's float dtype), and ``step``: one whole eager engine decode step at that cache length."""
    model = models["packed"]
    engine = engine_for(model)
    plan = engine.plan
    dtype = engine.dtype
    g = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    x = rand(1, 1, models["cfg"].hidden_size)
    attn_out = [rand(1, 1, p.proj.o.in_features) for p in plan.layers]
    mlp_mid = [rand(1, 1, p.proj.down.in_features) for p in plan.layers]
    length = DECODE_PROMPT + NEW_TOKENS // 2
    first = plan.layers[0]
    q = rand(1, first.n_heads, 1, first.head_dim)
    cache = engine.new_cache(1, length + 1)
    for t in cache.keys + cache.values:
        t.copy_(torch.randn(t.shape, generator=g))
    token = torch.tensor([[5]])
    position = torch.tensor([[length - 1]])

    def projections():
        for i, p in enumerate(plan.layers):
            p.proj.qkv(x)
            p.proj.out(attn_out[i])
            p.proj.gate_up(x)
            p.proj.mlp_down(mlp_mid[i])

    def head():
        plan.lm_head(plan.norm(x))

    engine.select_head("bf16")
    bf16_head = engine.lm_head
    engine.select_head("int8")
    int8_head = engine.lm_head
    engine.select_head(None)

    def head_bf16gemv():
        bf16_head(plan.norm(x))

    def head_int8():
        int8_head(plan.norm(x))

    def attention():
        for i, p in enumerate(plan.layers):
            sdpa_attention(q, cache.keys[i][:, :, :length], cache.values[i][:, :, :length], None, p.n_rep,
                           p.scaling, True)

    def step():
        engine.forward(cache.keys, cache.values, token, position, length - 1, [None] * len(engine.windows))

    parts = {"projections": projections, "head": head, "attention": attention, "step": step,
             "head_bf16gemv": head_bf16gemv, "head_int8": head_int8}
    times: dict[str, list[float]] = {k: [] for k in parts}
    for fn in parts.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in parts.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_decode(benchmark, models, provider):
    benchmark.group = "engine-decode"
    decode_rate(models, provider, 2)  # warm-up (compiles the compiled provider's step)
    benchmark.pedantic(lambda: decode_rate(models, provider), rounds=ROUNDS, iterations=1)


def test_summary(benchmark, models, capsys):
    """Interleaved medians, ratios against bf16 and the per-token split, for RESULTS.md (no speed
    assertion: the targets live in RESULTS.md). pytest-benchmark times one engine prefill here."""
    benchmark.group = "engine-prefill"
    benchmark.pedantic(lambda: prefill_rate(models, "lmops-engine"), rounds=2, iterations=1)
    for p in PROVIDERS:  # warm-ups
        decode_rate(models, p, 2)
    pre_providers = ("bf16", "lmops-hf", "lmops-engine")
    for p in pre_providers:
        prefill_rate(models, p)
    dec = _interleaved({p: (lambda p=p: decode_rate(models, p)) for p in PROVIDERS}, ROUNDS)
    pre = _interleaved({p: (lambda p=p: prefill_rate(models, p)) for p in pre_providers}, ROUNDS)
    split = token_split(models)
    med = {k: statistics.median(v) for k, v in dec.items()}
    pmed = {k: statistics.median(v) for k, v in pre.items()}
    cfg = models["cfg"]
    lines = [
        (f"engine e2e: layers={cfg.num_hidden_layers} threads={torch.get_num_threads()} "
         f"(decode: {DECODE_PROMPT}-token prompt, {NEW_TOKENS} new tokens; medians of {ROUNDS} interleaved rounds)"),
        "decode tok/s: " + "  ".join(f"{p} {med[p]:.2f} ({med[p] / med['bf16']:.2f}x)" for p in PROVIDERS),
        f"prefill tok/s ({PROMPT}-token prompt): "
        + "  ".join(f"{p} {pmed[p]:.1f} ({pmed[p] / pmed['bf16']:.2f}x)" for p in pre_providers)
        + "  (lmops-compiled prefills as lmops-engine: only decode is compiled)",
    ]
    step = split.pop("step")
    alt_heads = {k: split.pop(k) for k in ("head_bf16gemv", "head_int8")}
    measured = sum(split.values())
    parts = "  ".join(f"{k} {v * 1e3:.2f}" for k, v in split.items())
    lines.append(f"per-token split, ms (each part timed alone, median of 7; rest = total - parts): {parts}")
    lines.append(f"  other heads: bf16 GEMV {alt_heads['head_bf16gemv'] * 1e3:.2f}, int8 {alt_heads['head_int8'] * 1e3:.2f}")
    lines.append(f"  one eager engine step timed alone: {step * 1e3:.2f}, rest {(step - measured) * 1e3:.2f}")
    head_of = {"lmops-bf16gemv": "head_bf16gemv", "lmops-int8head": "head_int8"}
    for p in PROVIDERS:
        total = 1.0 / med[p]
        parts_p = measured - split["head"] + alt_heads[head_of[p]] if p in head_of else measured
        note = "  (its projections and head are bf16 F.linear, not these)" if p == "bf16" else ""
        lines.append(f"  {p}: total {total * 1e3:.2f}  rest {(total - parts_p) * 1e3:.2f}{note}")
    lines.append(f"peak RSS of the process (both models built): {peak_rss_bytes() / 2**30:.2f} GiB")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
