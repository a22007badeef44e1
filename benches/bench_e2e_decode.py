"""End to end: greedy decode and prefill tokens/s of a Llama-shaped 672M model, lmops packed vs bf16.

Run: ``python -m pytest benches/bench_e2e_decode.py --benchmark-only -s`` (about 4 minutes on 2 cores;
``LMOPS_E2E_LAYERS=2`` for a quick look). The summary test prints the medians and ratios that go to
benches/RESULTS.md. The shape is in e2e_models.py; the peers' numbers are in
../shared/research/peers-measured.md, per machine kind (:data:`BITNET_CPP_I2S`).
"""

from __future__ import annotations

import statistics

import pytest
import torch
from e2e_models import (
    build_bf16,
    build_hf_bitlinear,
    build_lmops,
    decode_tokens_per_s,
    e2e_layers,
    llama_config,
    peak_rss_bytes,
    prefill_tokens_per_s,
    weight_bytes,
)

from lmops_kernels import _native

# bitnet.cpp I2_S with its default f16 head, 2 threads, tokens/s (decode, prefill of 128), from
# ../shared/research/peers-measured.md: the AVX2-only Zen 3 kind (2026-11-29) and the AVX-512 VNNI/BF16
# kind (2026-11-25). The machine this runs on picks the row.
BITNET_CPP_I2S = {"avx2": (42.4, 134.9), "avx512vnni": (112.5, 354.9)}

pytestmark = pytest.mark.e2e

NEW_TOKENS = 32
PROMPT = 128
ROUNDS = 3


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = llama_config(e2e_layers())
    bf16 = build_bf16(cfg)
    lmops = build_lmops(bf16)
    prompt = torch.randint(0, cfg.vocab_size, (1, PROMPT))
    with torch.inference_mode():
        # same ternary weights => greedy tokens of lmops must be those of its own float twin
        ref = lmops(prompt[:, :16]).logits
        assert torch.isfinite(ref).all()
    return {"cfg": cfg, "bf16": bf16, "lmops": lmops, "prompt": prompt}


def _interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            out[k].append(fn())
    return out


@pytest.mark.parametrize("provider", ["bf16", "lmops"])
def test_decode(benchmark, models, provider):
    benchmark.group = "e2e-decode"
    prompt = models["prompt"][:, :8]
    model = models[provider]
    decode_tokens_per_s(model, prompt, 2)  # warm-up
    benchmark.pedantic(lambda: decode_tokens_per_s(model, prompt, NEW_TOKENS), rounds=ROUNDS, iterations=1)


def test_summary(benchmark, models, capsys):
    """Interleaved medians and ratios for RESULTS.md (no speed assertion: targets live in RESULTS.md).
    pytest-benchmark times one lmops prefill here; the table comes from the interleaved runs below."""
    benchmark.group = "e2e-prefill"
    prompt8 = models["prompt"][:, :8]
    prompt = models["prompt"]
    benchmark.pedantic(lambda: prefill_tokens_per_s(models["lmops"], prompt), rounds=2, iterations=1)
    for k in ("bf16", "lmops"):
        decode_tokens_per_s(models[k], prompt8, 2)
        prefill_tokens_per_s(models[k], prompt)
    dec = _interleaved({k: (lambda k=k: decode_tokens_per_s(models[k], prompt8, NEW_TOKENS)) for k in ("bf16", "lmops")}, ROUNDS)
    pre = _interleaved({k: (lambda k=k: prefill_tokens_per_s(models[k], prompt)) for k in ("bf16", "lmops")}, ROUNDS)
    hf = build_hf_bitlinear(models["bf16"])
    decode_tokens_per_s(hf, prompt8, 1)  # compiles transformers' unpack kernels
    hf_dec = statistics.median(decode_tokens_per_s(hf, prompt8, 2) for _ in range(2))
    del hf
    med = {k: statistics.median(v) for k, v in dec.items()}
    pmed = {k: statistics.median(v) for k, v in pre.items()}
    wb = {k: weight_bytes(models[k]) for k in ("bf16", "lmops")}
    pb = {k: weight_bytes(models[k], projections_only=True) for k in ("bf16", "lmops")}
    kind = "avx512vnni" if _native.cpu_features().get("avx512vnni") else "avx2"
    peer_dec, peer_pre = BITNET_CPP_I2S[kind]
    lines = [
        f"e2e layers={models['cfg'].num_hidden_layers} threads={torch.get_num_threads()}",
        f"decode tok/s (median of {ROUNDS}, {NEW_TOKENS} new tokens): bf16 {med['bf16']:.2f}  lmops {med['lmops']:.2f}  "
        f"ratio {med['lmops'] / med['bf16']:.2f}x  | transformers packed BitLinear {hf_dec:.3f} "
        f"(lmops/that {med['lmops'] / hf_dec:.1f}x)",
        f"prefill tok/s ({PROMPT}-token prompt): bf16 {pmed['bf16']:.1f}  lmops {pmed['lmops']:.1f}  "
        f"ratio {pmed['lmops'] / pmed['bf16']:.2f}x",
        f"weight bytes: whole model bf16 {wb['bf16'] / 2**20:.0f} MiB, lmops {wb['lmops'] / 2**20:.0f} MiB "
        f"({wb['lmops'] / wb['bf16']:.3f}); projections bf16 {pb['bf16'] / 2**20:.0f} MiB, lmops "
        f"{pb['lmops'] / 2**20:.1f} MiB ({pb['lmops'] / pb['bf16']:.4f} = 1/{pb['bf16'] / pb['lmops']:.2f})",
        f"peak RSS of the process (all three models built): {peak_rss_bytes() / 2**30:.2f} GiB",
        f"vs bitnet.cpp I2_S on this machine kind ({kind}: {peer_dec} decode, {peer_pre} prefill): decode "
        f"{med['lmops'] / peer_dec:.2f}x, prefill {pmed['lmops'] / peer_pre:.2f}x",
    ]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
