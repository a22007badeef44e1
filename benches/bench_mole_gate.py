"""MoLE gate: fused ``lmops_kernels.mole_gate`` vs the per-expert loop users write today and peft's
multi-adapter LoRA; the whole layer (base linear + MoLE) over the base linear alone; peak memory.

Run: ``python -m pytest benches/bench_mole_gate.py --benchmark-only -s`` (about 3 minutes on 2 cores).
``test_mole_gate_ratio_table`` prints interleaved medians and ratios for RESULTS.md.

Shape: N=8 experts of rank r=16 on a 4096 x 4096 float32 linear; M (tokens) in {1, 128, 512}.

- ``fused``: ``mole_gate`` with the automatic backend (``cpu``: native kernel, rank space).
- ``loop``: E_i = s_i B_i(A_i x) per expert, ``torch.cat``, ``layer_norm``, a linear to N logits,
  softmax / tau, the weighted sum; same math as ``fused`` (checked below).
- ``peft``: a peft ``LoraConfig`` model on one ``nn.Linear`` with 8 adapters all active through
  ``base_model.set_adapter([...])``: it sums the adapters with fixed weights (no gate, so less work
  than MoLE). Its LoRA part is reported as (peft layer - base linear), a difference of medians.

Cache: the weights rotate so they are read from memory, not L3 (harness of :mod:`lmops.bench`:
sets totalling >= 4x L3): 24 MoLE weight sets of 5.3 MiB (127 MiB), and 3 base matrices of 64 MiB
(192 MiB) for the whole layer. ``hot`` rows use one MoLE set (L3-resident). Inference mode.

Memory: peak bytes allocated during one call at M=512, from the torch profiler's allocation events
(``profile_memory=True``; running sum of the ``[memory]`` events' ``nbytes`` in time order, after a
warm-up call so the fused path's per-weight-set cache already exists; the cache itself is reported apart).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmops_kernels as lk
from lmops.bench import cpu as bench
from lmops_kernels import dispatch, mole_rank

N, R, K, O = 8, 16, 4096, 4096
MS = (1, 128, 512)
PART = ("fused", "loop", "fused-hot", "loop-hot")
LAYER = ("base", "base+fused", "base+loop", "peft")
LABELS = {
    "fused": "mole_gate (fused, cpu backend)",
    "loop": "per-expert Python loop",
    "fused-hot": "mole_gate, one weight set (L3-hot)",
    "loop-hot": "loop, one weight set (L3-hot)",
    "base": "base F.linear fp32",
    "base+fused": "base + mole_gate",
    "base+loop": "base + loop",
    "peft": "peft LoRA, 8 adapters active (no gate)",
}


class MoleWeights:
    def __init__(self, gen: torch.Generator):
        self.A = torch.randn(N, R, K, generator=gen) / K**0.5
        self.B = torch.randn(N, O, R, generator=gen) / R**0.5 * 0.1
        self.scaling = torch.full((N,), 2.0)
        self.gate_weight = torch.randn(N, N * O, generator=gen) / (N * O) ** 0.5
        self.norm_weight = torch.ones(N * O)
        self.norm_bias = torch.zeros(N * O)
        self.temperature = torch.tensor(1.0)
        self.nbytes = sum(t.numel() * 4 for t in (self.A, self.B, self.gate_weight, self.norm_weight, self.norm_bias))

    def args(self):
        return (self.A, self.B, self.scaling, self.gate_weight, self.norm_weight, self.norm_bias, self.temperature)


def mole_fused(x, w: MoleWeights):
    return lk.mole_gate(x, *w.args())


def mole_loop(x, w: MoleWeights):
    """What users write today: one expert at a time, then concatenate, normalize, gate, mix."""
    experts = [w.scaling[i] * F.linear(F.linear(x, w.A[i]), w.B[i]) for i in range(N)]
    h = F.layer_norm(torch.cat(experts, dim=-1), (N * O,), w.norm_weight, w.norm_bias, 1e-5)
    gates = torch.softmax(F.linear(h, w.gate_weight) / w.temperature, dim=-1)
    y = gates[:, :1] * experts[0]
    for i in range(1, N):
        y += gates[:, i : i + 1] * experts[i]
    return y, gates


def build_peft(base: torch.nn.Linear, mole: MoleWeights):
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = base

        def forward(self, x):
            return self.lin(x)

    cfg = LoraConfig(r=R, lora_alpha=2 * R, target_modules=["lin"], lora_dropout=0.0)
    model = get_peft_model(One(), cfg, adapter_name="e0")
    for i in range(1, N):
        model.add_adapter(f"e{i}", cfg)
    model.base_model.set_adapter([f"e{i}" for i in range(N)])
    layer = model.base_model.model.lin
    with torch.no_grad():
        for i in range(N):
            layer.lora_A[f"e{i}"].weight.copy_(mole.A[i])
            layer.lora_B[f"e{i}"].weight.copy_(mole.B[i])
    model.requires_grad_(False)
    return model


class _Sets:
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        l3 = bench.l3_bytes()
        first = MoleWeights(gen)
        n_mole = max(2, math.ceil(bench.ROTATION_FACTOR * l3 / first.nbytes))
        self.moles = [first] + [MoleWeights(gen) for _ in range(n_mole - 1)]
        n_base = max(3, math.ceil(bench.ROTATION_FACTOR * l3 / (K * O * 4)))
        self.bases = []
        for _ in range(n_base):
            lin = torch.nn.Linear(K, O, bias=False).requires_grad_(False)
            torch.nn.init.normal_(lin.weight, std=K**-0.5, generator=gen)
            self.bases.append(lin)
        try:
            self.peft = [build_peft(b, self.moles[i]) for i, b in enumerate(self.bases)]
        except ImportError as exc:
            self.peft, self.peft_error = None, str(exc)
        self.check()

    def check(self) -> None:
        x = torch.randn(17, K, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            for w in self.moles[:2]:
                y1, g1 = mole_fused(x, w)
                y2, g2 = mole_loop(x, w)
                torch.testing.assert_close(y1, y2, rtol=1e-3, atol=1e-4 * y2.abs().max().item())
                torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-5)

    def prepared(self, provider: str, m: int) -> bench.Prepared:
        x = torch.randn(m, K, generator=torch.Generator().manual_seed(m))
        moles, bases, peft = self.moles, self.bases, self.peft
        if provider in PART:
            fn = mole_fused if provider.startswith("fused") else mole_loop
            # hot: every "set" is the first one (same sample sizes as the rotated providers)
            sets = moles if not provider.endswith("hot") else [moles[0]] * len(moles)

            def call(i: int):
                with torch.inference_mode():
                    return fn(x, sets[i % len(sets)])

            return bench.Prepared(call, len(sets), moles[0].nbytes)
        if provider == "peft":
            if peft is None:
                pytest.skip(f"peft unavailable: {self.peft_error}")
            n = len(peft)

            def call(i: int):
                with torch.inference_mode():
                    return peft[i % n](x)

            return bench.Prepared(call, n, K * O * 4 + 2 * N * R * K * 4)
        extra = {"base": None, "base+fused": mole_fused, "base+loop": mole_loop}[provider]
        n = len(bases)

        def call(i: int):
            with torch.inference_mode():
                y = F.linear(x, bases[i % n].weight)
                if extra is not None:
                    y.add_(extra(x, moles[i % len(moles)])[0])
                return y

        return bench.Prepared(call, n, K * O * 4 + (0 if extra is None else moles[0].nbytes))


@pytest.fixture(scope="module")
def mole_sets():
    return _Sets()


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("provider", ["fused", "loop", "base", "base+fused"])
def test_mole_gate(benchmark, mole_sets, timed, provider, m):
    benchmark.group = f"mole_gate N={N} r={R} {K}x{O} M={m}"
    benchmark.extra_info.update({"provider": LABELS[provider], "m": m})
    timed(benchmark, mole_sets.prepared(provider, m), budget_s=1.0)


def peak_alloc_bytes(fn) -> int:
    """Peak of the running sum of allocated bytes during ``fn()`` (torch profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _table(sets: _Sets) -> str:
    load_before = bench.machine_info()["loadavg_1min"]
    rows = {}
    for m in MS:
        names = PART + tuple(p for p in LAYER if p != "peft" or sets.peft is not None)
        rows[m] = bench.time_interleaved({p: sets.prepared(p, m) for p in names}, quick=False)
    w = sets.moles[0]
    x = torch.randn(512, K)
    with torch.inference_mode():
        mole_fused(x, w)
        mem_fused = peak_alloc_bytes(lambda: mole_fused(x, w))
        mem_loop = peak_alloc_bytes(lambda: mole_loop(x, w))
    ex, gt = mole_rank.cached_tensors(w.A, w.B, w.gate_weight, w.norm_weight, w.norm_bias)
    owned = [ex.wy, ex.b1, ex.gram, gt.p, gt.c, gt.d] + ([] if ex.a.data_ptr() == w.A.data_ptr() else [ex.a])
    cache_bytes = sum(t.numel() * t.element_size() for t in owned)
    gbps = bench.copy_bandwidth(256 << 20, repeats=3)
    info = bench.machine_info()
    ms = lambda s: f"{s * 1e3:.3f}"  # noqa: E731
    out = [
        f"mole_gate N={N} r={R} K=O={K} fp32, backend={dispatch.select('mole_gate', 'cpu').backend}, "
        f"{len(sets.moles)} MoLE sets x {w.nbytes / 2**20:.1f} MiB and {len(sets.bases)} base matrices x 64 MiB rotated, "
        f"threads={info['threads']}, cpu={info['cpu']}, load avg (1 min) before/after {load_before}/{info['loadavg_1min']}, "
        f"copy bandwidth {gbps:.1f} GB/s",
        "",
        "| M | fused ms | loop ms | loop/fused | hot fused ms | hot loop ms | hot loop/fused | peft LoRA part ms (peft - base) | repeats |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, (med, rep) in rows.items():
        peft_part = med["peft"] - med["base"] if "peft" in med else float("nan")
        out.append(
            f"| {m} | {ms(med['fused'])} | {ms(med['loop'])} | {med['loop'] / med['fused']:.2f} | {ms(med['fused-hot'])} | "
            f"{ms(med['loop-hot'])} | {med['loop-hot'] / med['fused-hot']:.2f} | {ms(peft_part)} | {rep} |"
        )
    out += [
        "",
        "| M | base ms | base+fused ms | (base+fused)/base | base+loop ms | (base+loop)/base | peft ms | peft/base | fused A+B GB/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, (med, _) in rows.items():
        b = med["base"]
        pf = med.get("peft", float("nan"))
        lora_bytes = 2 * N * R * K * 4  # A and B^T in float32, read once per call
        out.append(
            f"| {m} | {ms(b)} | {ms(med['base+fused'])} | {med['base+fused'] / b:.3f} | {ms(med['base+loop'])} | "
            f"{med['base+loop'] / b:.3f} | {ms(pf)} | {pf / b:.3f} | {lora_bytes / med['fused'] / 1e9:.1f} |"
        )
    out.append(
        f"\npeak bytes allocated during one call at M=512 (torch profiler memory events): fused {mem_fused / 2**20:.1f} MiB, "
        f"loop {mem_loop / 2**20:.1f} MiB ({mem_loop / mem_fused:.0f}x); fused keeps a per-weight-set cache of "
        f"{cache_bytes / 2**20:.2f} MiB (B^T stacked, Gram, P, ...)"
    )
    return "\n".join(out)


def test_mole_gate_ratio_table(benchmark, mole_sets, capsys):
    """Interleaved medians and ratios (no speed assertion: the targets live in RESULTS.md)."""
    table = benchmark.pedantic(_table, args=(mole_sets,), rounds=1, iterations=1)
    with capsys.disabled():
        print("\n" + table)
