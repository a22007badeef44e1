"""MoLELinear (layer level) vs its base linear alone and vs the per-expert Python loop users write.

Shape: N=8 experts of rank 16 over a float32 4096x4096 ``nn.Linear``; M in {1, 128, 512} tokens;
inference (``torch.inference_mode``). Providers (one weight set each rotated past 4x L3, interleaved,
medians; the harness of :mod:`lmops.bench`):

- ``base``: the base ``nn.Linear`` alone (F.linear fp32).
- ``mole``: ``MoLELinear(gate_input="experts")``, the paper's gate (fused ``lmops_kernels.mole_gate``).
- ``mole-hidden``: ``MoLELinear(gate_input="hidden")``, the official code's gate on the layer input.
- ``mole-shared``: a member of a shared gate group (block/layer/network granularity) reusing the
  leader's gates: the mixing only (what 6 of the 7 linears of a Llama block run at block granularity).
- ``loop``: the naive MoLE layer: one ``nn.Linear`` pair per expert, ``torch.cat`` of the expert
  outputs, LayerNorm, gate, softmax, weighted sum (the paper's formula written directly).

Targets: ``mole``/``base`` <= 1.1 at every M. Nothing here asserts a speed (shared machines).

    python -m pytest benches/bench_mole_layer.py --benchmark-only -s            # about a minute
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmops.bench import cpu as bench
from lmops.mole import MoLELinear
from lmops.mole.layer import GateGroup

N, R, K, O = 8, 16, 4096, 4096
MS = (1, 128, 512)
PROVIDERS = ("base", "mole", "mole-hidden", "mole-shared", "loop")
LABELS = {
    "base": "base nn.Linear fp32",
    "mole": "MoLELinear experts gate (paper)",
    "mole-hidden": "MoLELinear hidden gate (official code)",
    "mole-shared": "MoLELinear shared-gate member",
    "loop": "per-expert Python loop MoLE",
}


class LoopMoLE(nn.Module):
    """The MoLE layer as users write it: per-expert modules (like peft's lora_A/lora_B ModuleDicts)."""

    def __init__(self, base: nn.Linear, experts: dict, gate: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.ModuleDict({n: nn.Linear(K, a.shape[0], bias=False) for n, (a, b, s) in experts.items()})
        self.lora_B = nn.ModuleDict({n: nn.Linear(b.shape[1], O, bias=False) for n, (a, b, s) in experts.items()})
        self.scaling = {n: s for n, (a, b, s) in experts.items()}
        with torch.no_grad():
            for n, (a, b, s) in experts.items():
                self.lora_A[n].weight.copy_(a)
                self.lora_B[n].weight.copy_(b)
        self.gate = gate  # the MoLEGate of a MoLELinear: same parameters, same output

    def forward(self, x):
        y = self.base(x)
        outs = [self.lora_B[n](self.lora_A[n](x)) * self.scaling[n] for n in self.lora_A]
        c = torch.cat(outs, -1)
        g = self.gate
        logits = F.linear(F.layer_norm(c, (c.shape[-1],), g.norm_weight, g.norm_bias, g.eps), g.weight)
        gates = torch.softmax(logits / g.temperature, -1)
        for i, e in enumerate(outs):
            y = y + gates[..., i : i + 1] * e
        return y


def _experts(gen: torch.Generator) -> dict:
    return {
        f"e{i}": (torch.randn(R, K, generator=gen) / math.sqrt(K), torch.randn(O, R, generator=gen) * 0.01, 2.0)
        for i in range(N)
    }


class _Sets:
    """Weight sets for all providers; each set: base 64 MiB + experts 4 MiB (+ caches)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        set_bytes = (K * O + 2 * N * R * (K + O)) * 4
        n_sets = max(2, math.ceil(bench.ROTATION_FACTOR * bench.l3_bytes() / set_bytes))
        self.sets = []
        for _ in range(n_sets):
            base = nn.Linear(K, O, bias=False)
            nn.init.normal_(base.weight, std=K**-0.5)
            experts = _experts(gen)
            mole = MoLELinear(base, experts, gate_input="experts")
            hidden = MoLELinear(base, experts, gate_input="hidden")
            group = GateGroup("bench", list(experts), granularity="block")
            MoLELinear(nn.Linear(16, 16), {n: (torch.zeros(1, 16), torch.zeros(16, 1), 1.0) for n in experts},
                       gate_group=group, gate_input="hidden")  # the group's leader (not timed)
            shared = MoLELinear(base, experts, gate_group=group)
            loop = LoopMoLE(base, experts, mole.gate)
            for m in (mole, hidden, shared, loop):
                m.requires_grad_(False)
            self.sets.append({"base": base, "mole": mole, "mole-hidden": hidden, "mole-shared": shared,
                              "loop": loop, "group": group})
        self.set_bytes = set_bytes
        self.check()

    def check(self) -> None:
        s = self.sets[0]
        x = torch.randn(3, K, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            torch.testing.assert_close(s["mole"](x), s["loop"](x), atol=1e-4, rtol=1e-4)

    def prepared(self, provider: str, m: int) -> bench.Prepared:
        x = torch.randn(m, K, generator=torch.Generator().manual_seed(m))
        gates = torch.softmax(torch.randn(m, N), -1)
        sets = self.sets

        def call(i: int):
            s = sets[i % len(sets)]
            if provider == "mole-shared":
                s["group"].gates = gates
            with torch.inference_mode():
                return s[provider](x)

        return bench.Prepared(call, len(sets), self.set_bytes)


@pytest.fixture(scope="module")
def mole_sets():
    return _Sets()


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_mole_layer(benchmark, mole_sets, timed, provider, m):
    benchmark.group = f"mole layer N={N} r={R} {K}x{O} M={m}"
    benchmark.extra_info.update({"provider": LABELS[provider], "m": m})
    timed(benchmark, mole_sets.prepared(provider, m), budget_s=1.0)


def test_mole_ratio_table(mole_sets, capsys):
    """Interleaved medians of every provider, and the ratios over the base linear and over the loop."""
    lines = [
        f"MoLELinear N={N} r={R} K=O={K} fp32, {len(mole_sets.sets)} weight sets x "
        f"{mole_sets.set_bytes / 2**20:.0f} MiB rotated, threads={torch.get_num_threads()}, "
        f"cpu={bench.cpu_model()}",
        f"{'M':>4} {'provider':<40} {'median ms':>10} {'/ base':>8} {'loop /':>8}",
    ]
    for m in MS:
        med, repeats = bench.time_interleaved({p: mole_sets.prepared(p, m) for p in PROVIDERS}, quick=False)
        for p in PROVIDERS:
            lines.append(
                f"{m:>4} {LABELS[p]:<40} {med[p] * 1e3:>10.3f} {med[p] / med['base']:>8.3f} "
                f"{med['loop'] / med[p]:>8.2f}"
            )
        lines.append(f"     ({repeats} interleaved repeats)")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
