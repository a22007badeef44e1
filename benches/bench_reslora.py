"""ResLoRA (arXiv 2402.18039) measured on CPU: merge cost, training-step cost, and the paper's "faster
loss decrease" claim on a small task.

Run: ``python -m pytest benches/bench_reslora.py --benchmark-only -s`` (about 4 minutes on 2 cores; every
test runs on one thread, see ``_one_thread``).

(a) ``test_merged_forward``: a Llama-shaped model (hidden 512, 4 layers) after ``merge_and_unload`` vs
    the base model, prefill forward (1 x 128 tokens), interleaved medians; target ratio <= 1.02 (the
    merged model holds plain ``nn.Linear`` modules). The unmerged ResLoRA-is forward is shown beside it.
(b) ``test_training_step``: one unmerged training step (forward, backward, AdamW) of is/bs/ms vs plain
    LoRA (``structure="none"``), same model and adapters (q,v and all linears), interleaved medians.
(c) ``test_loss_after_fixed_budget``: a small Llama (byte vocabulary, hidden 128, 4 layers) from a fixed
    random init (frozen), LoRA r=8 alpha=16 on all seven linears of every block, AdamW lr 2e-3 (near the
    best of {1e-3, 2e-3, 5e-3, 1e-2} for plain LoRA in a sweep made while writing this), the same seed,
    A init and batches for every structure, 150 steps of 8x64 bytes of ``pydoc_data.topics``; the final
    training loss (mean of the last 10 steps) and a held-out loss, unmerged and merged (bi, bw, and
    alpha*=0, i.e. the plain LoRA merge that drops the shortcuts), over 3 seeds. A plain-LoRA row with
    twice the scaling (alpha=32) controls for the larger effective step of is/bs. Which structure wins
    is measured, not assumed.
"""

from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmops.reslora import apply_reslora, merge_and_unload, reslora_layers, unload  # noqa: E402

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STRUCTURES = ["none", "is", "bs", "ms"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared 2-core box a second thread turns any other process into 10x outliers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def llama(vocab, hidden, layers, inter, heads, seed):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def interleaved_medians(fns: dict, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def randomize_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in reslora_layers(model).values():
            layer.lora_B.weight.copy_(0.01 * torch.randn(layer.lora_B.weight.shape, generator=g))


# ------------------------------------------------------------------------------------------------
# (a) merged forward vs base forward
# ------------------------------------------------------------------------------------------------
@pytest.mark.quick
def test_merged_forward(benchmark, capsys):
    base = llama(1024, 512, 4, 1376, 8, seed=0)
    unmerged = apply_reslora(copy.deepcopy(base), ["q_proj", "v_proj"], structure="is", r=8, alpha=16)
    randomize_adapters(unmerged)
    unmerged.train()
    with torch.no_grad():  # record the merge_bi norm windows
        unmerged(torch.randint(0, 1024, (2, 64)))
    unmerged.eval()
    merged = merge_and_unload(copy.deepcopy(unmerged))
    ids = torch.randint(0, 1024, (1, 128), generator=torch.Generator().manual_seed(1))

    def fwd(m):
        return lambda: m(ids, use_cache=False)

    with torch.inference_mode():
        for m in (base, merged, unmerged):
            fwd(m)()
        med = interleaved_medians({"base": fwd(base), "merged": fwd(merged), "unmerged_is": fwd(unmerged)}, rounds=60)
        benchmark.pedantic(fwd(merged), rounds=10, iterations=1)
    ratio = med["merged"] / med["base"]
    with capsys.disabled():
        print(
            f"\n[reslora a] prefill 1x128, hidden 512, 4 layers, threads={torch.get_num_threads()}: "
            f"base {med['base'] * 1e3:.2f} ms, merged {med['merged'] * 1e3:.2f} ms "
            f"(ratio {ratio:.3f}, target <= 1.02), "
            f"unmerged is {med['unmerged_is'] * 1e3:.2f} ms (ratio {med['unmerged_is'] / med['base']:.3f})"
        )
    assert ratio < 1.10  # structurally identical models; the 1.02 target is reported, noise is not failed on


# ------------------------------------------------------------------------------------------------
# (b) unmerged training step: is/bs/ms vs plain LoRA
# ------------------------------------------------------------------------------------------------
def test_training_step(benchmark, capsys):
    base = llama(1024, 512, 4, 1376, 8, seed=0)
    ids = torch.randint(0, 1024, (2, 128), generator=torch.Generator().manual_seed(2))
    lines = []
    for targets, label in ((["q_proj", "v_proj"], "q,v"), (ALL_LINEARS, "all linears")):
        steps = {}
        for structure in STRUCTURES:
            model = apply_reslora(copy.deepcopy(base), targets, structure=structure, r=8, alpha=16, pre_num=1)
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

            def step(model=model, opt=opt):
                loss = model(ids, labels=ids, use_cache=False).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step()
            steps[structure] = step
        med = interleaved_medians(steps, rounds=12)
        lines.append(
            f"[reslora b] train step 2x128 ({label}, r=8, pre_num=1): none {med['none'] * 1e3:.0f} ms; "
            + ", ".join(f"{s} {med[s] * 1e3:.0f} ms ({med[s] / med['none']:.3f}x)" for s in ("is", "bs", "ms"))
        )
        if label == "q,v":
            benchmark.pedantic(steps["is"], rounds=3, iterations=1)
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------------------
# (c) loss after a fixed budget of steps
# ------------------------------------------------------------------------------------------------
STEPS, BATCH, SEQ, LR, SEEDS = 150, 8, 64, 2e-3, (0, 1, 2)


def topics_bytes() -> torch.Tensor:
    from pydoc_data.topics import topics

    data = "".join(topics[k] for k in sorted(topics)).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def batches(data: torch.Tensor, seed: int, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    starts = torch.randint(0, len(data) - SEQ, (n, BATCH), generator=g)
    return [torch.stack([data[s : s + SEQ] for s in row.tolist()]) for row in starts]


def heldout_loss(model, batches_):
    with torch.no_grad():
        return statistics.mean(model(b, labels=b, use_cache=False).loss.item() for b in batches_)


def plain_merge(model):
    """alpha* = 0: each layer keeps only its own s B A (the shortcuts are dropped)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer in reslora_layers(m).values():
            w = layer.base_layer.weight
            layer.base_layer.weight = torch.nn.Parameter(w + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight,
                                                         requires_grad=False)
    return unload(m)


# (label, structure, alpha): "none a=32" is plain LoRA with twice the scaling, a control for the larger
# effective step of is (its adapter sees x_n + x_{n-1} ~= 2 x_n) and bs (two adapters per layer)
VARIANTS = [("none", "none", 16), ("is", "is", 16), ("bs", "bs", 16), ("ms", "ms", 16), ("none a=32", "none", 32)]


def run_budget(structure: str, seed: int, data: torch.Tensor, held: list[torch.Tensor], alpha: float = 16) -> dict:
    model = llama(256, 128, 4, 344, 4, seed=seed)
    torch.manual_seed(seed)  # same A init for every structure
    apply_reslora(model, ALL_LINEARS, structure=structure, r=8, alpha=alpha, pre_num=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    losses = []
    for b in batches(data, seed, STEPS):
        loss = model(b, labels=b, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    out = {"train": statistics.mean(losses[-10:]), "first": losses[0], "held": heldout_loss(model, held)}
    if structure in ("is", "ms"):
        out["bi"] = heldout_loss(merge_and_unload(copy.deepcopy(model), "bi"), held)
        out["bw"] = heldout_loss(merge_and_unload(copy.deepcopy(model), "bw"), held)
        out["a0"] = heldout_loss(plain_merge(model), held)
    else:
        out["merged"] = heldout_loss(merge_and_unload(copy.deepcopy(model)), held)
    return out


def test_loss_after_fixed_budget(benchmark, capsys):
    torch.manual_seed(0)
    data = topics_bytes()
    cut = int(0.9 * len(data))
    train_data, held = data[:cut], batches(data[cut:], 99, 4)
    results: dict[str, list[dict]] = {v[0]: [] for v in VARIANTS}
    elapsed = 0.0

    def experiment():
        nonlocal elapsed
        t0 = time.perf_counter()
        for seed in SEEDS:
            for label, structure, alpha in VARIANTS:
                results[label].append(run_budget(structure, seed, train_data, held, alpha))
        elapsed = time.perf_counter() - t0

    benchmark.pedantic(experiment, rounds=1, iterations=1)
    lines = [
        f"[reslora c] byte-level Llama (hidden 128, 4 layers, random frozen base), LoRA r=8 alpha=16 on all linears, "
        f"pre_num=1, AdamW lr {LR}, {STEPS} steps of {BATCH}x{SEQ} bytes of pydoc_data.topics, seeds {list(SEEDS)}, "
        f"threads={torch.get_num_threads()}, {elapsed:.0f} s",
        f"{'variant':<10} {'first':>6} {'train(last10) per seed':>26} {'mean':>7} {'vs none':>8} "
        f"{'held':>6}  held-out loss after merge",
    ]
    base_mean = statistics.mean(r["train"] for r in results["none"])
    for s, structure, _ in VARIANTS:
        rs = results[s]
        train = [r["train"] for r in rs]
        mean = statistics.mean(train)
        merged = (
            "bi {:.4f}  bw {:.4f}  alpha*=0 {:.4f}".format(
                *(statistics.mean(r[k] for r in rs) for k in ("bi", "bw", "a0"))
            )
            if structure in ("is", "ms")
            else "exact {:.4f}".format(statistics.mean(r["merged"] for r in rs))
        )
        lines.append(
            f"{s:<10} {statistics.mean(r['first'] for r in rs):>6.3f} {' '.join(f'{t:.4f}' for t in train):>26} "
            f"{mean:>7.4f} {mean - base_mean:>+8.4f} {statistics.mean(r['held'] for r in rs):>6.4f}  {merged}"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert all(r["train"] < r["first"] for rs in results.values() for r in rs)  # every run learned something
