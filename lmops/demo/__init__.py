"""``lmops demo``: train a small BitNet b1.58 language model with QAT on this machine, pack it, use it.

The whole loop a user follows with a real model, at a size that runs in a few minutes on two CPU cores:

1. build a tiny Llama (``transformers.LlamaConfig``) with random weights and a byte tokenizer (vocab 256);
2. ``lmops.bitnet.convert``: every ``nn.Linear`` but ``lm_head`` becomes a ``BitLinear`` (ternary weights,
   int8 activations, straight-through estimator);
3. train it with AdamW on random windows of CPython's reference documentation (``pydoc_data``), the
   last 5% held out;
4. ``lmops.bitnet.pack``: 2-bit weights, the native W2A8 kernel; generate a sample;
5. compare weight bytes, decode speed and validation loss against the unpacked / bf16 forms, and save it
   with ``lmops.bitnet.save_pretrained``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import ByteTokenizer, load_demo_corpus
from ..bitnet.layer import BitLinear
from ..common.progress import progress_bar

__all__ = ["DemoConfig", "run_demo"]


def kernel_at_scale() -> dict[str, float]:
    """Median ms of one 4096x4096 decode GEMV (M=1): bf16 and float32 ``F.linear`` vs packed lmops,
    interleaved, weight sets rotated past 4x L3 (the harness of :mod:`lmops.bench`, quick budget)."""
    from ..bench import cpu as bench

    gen = torch.Generator().manual_seed(0)
    q, packed = bench.random_packed(4096, 4096, gen)
    calls = {p: bench.prepare_provider(p, 4096, 4096, 1, q, packed, gen) for p in ("lmops", "bf16", "fp32")}
    med, _ = bench.time_interleaved(calls, quick=True)
    return {f"{p}_ms": v * 1e3 for p, v in med.items()}


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budget of the demo. The defaults fit well under 5 minutes on 2 CPU cores.

    At this budget (a few hundred thousand tokens) a small model trained for more steps reaches a lower
    loss than a wider one trained for fewer; hence hidden 128 and batch 8.

    ``threads``: torch threads; None keeps torch's default unless one thread trains faster (measured on
    the first steps: on a busy machine, OpenMP threads waiting on each other can be several times slower).

    Training stops at ``steps`` steps or after ``seconds`` seconds, whichever comes first; the learning
    rate schedule (linear warm-up, cosine decay to 10%) follows whichever is further along, so a run cut
    short by the clock still ends at a low learning rate.
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 344
    context: int = 128
    batch_size: int = 8
    steps: int = 1000
    seconds: float = 140.0
    threads: int | None = None
    kernel_at_scale: bool = True
    lr: float = 4e-3
    warmup: float = 0.05
    weight_decay: float = 0.05
    seed: int = 0
    holdout: float = 0.05
    eval_tokens: int = 16384
    prompt: str = "The return statement"
    sample_bytes: int = 200
    sample_top_k: int = 20
    sample_temperature: float = 0.7
    decode_tokens: int = 64
    decode_repeats: int = 3
    out: str = "./lmops-demo-model"

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "context", "batch_size",
                     "steps", "eval_tokens", "sample_bytes", "decode_tokens", "decode_repeats"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size: expected a multiple of num_heads={self.num_heads}, got {self.hidden_size}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads: expected a positive int or None, got {self.threads!r}")
        if not self.seconds > 0:
            raise ValueError(f"seconds: expected a positive number, got {self.seconds!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup: expected a fraction in [0, 1), got {self.warmup!r}")
        if not self.prompt:
            raise ValueError("prompt: expected a non-empty string")

    @classmethod
    def tiny(cls, **overrides) -> "DemoConfig":
        """A very small model and budget, one thread: the whole demo in a few seconds (smoke tests)."""
        base = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, context=32, batch_size=4,
                    steps=3, seconds=30.0, threads=1, eval_tokens=256, sample_bytes=16, decode_tokens=8,
                    decode_repeats=1, kernel_at_scale=False)
        base.update(overrides)
        return cls(**base)


# --------------------------------------------------------------------------------------------------
# model


def build_model(cfg: DemoConfig) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` over bytes, converted to BitLinear for QAT (lm_head kept)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .. import bitnet

    config = LlamaConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.context,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    bitnet.convert(model, exclude=("lm_head",))
    return model


def bitlinear_layers(model: nn.Module) -> list[BitLinear]:
    return [m for m in model.modules() if isinstance(m, BitLinear)]


def dense_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A plain-transformers copy of a packed model in ``dtype``: each BitLinear becomes an ``nn.Linear``
    holding ``q * gamma`` (``lmops.bitnet.unconvert``), the baseline a user would otherwise run."""
    from .. import bitnet

    return bitnet.unconvert(copy.deepcopy(model), dtype).to(dtype).eval()


# --------------------------------------------------------------------------------------------------
# training and evaluation


def _lr_at(cfg: DemoConfig, progress: float) -> float:
    if progress < cfg.warmup:
        return cfg.lr * (progress / cfg.warmup)
    t = min(1.0, (progress - cfg.warmup) / (1.0 - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _ThreadChooser:
    """Times training steps at torch's thread count and at one thread, and keeps the faster.

    Step 0 is a warm-up; steps 1-2 run at the default count, steps 3-4 at one thread. On an idle
    machine more threads win; on a loaded one, threads that wait on each other at every OpenMP barrier
    can make two threads several times slower than one.
    """

    def __init__(self, enabled: bool) -> None:
        self.default = torch.get_num_threads()
        self.active = enabled and self.default > 1
        self.times: dict[int, list[float]] = {self.default: [], 1: []}
        self.note = ""

    def after_step(self, step: int, seconds: float) -> None:
        if not self.active:
            return
        if step in (1, 2):
            self.times[self.default].append(seconds)
        elif step in (3, 4):
            self.times[1].append(seconds)
        if step == 2:
            torch.set_num_threads(1)
        elif step == 4:
            many, one = min(self.times[self.default]), min(self.times[1])
            chosen = 1 if one < 0.9 * many else self.default
            torch.set_num_threads(chosen)
            self.note = (
                f"{chosen} (a step took {one:.2f} s on 1 thread vs {many:.2f} s on {self.default}"
                + ("; the machine is busy)" if chosen == 1 else ")")
            )
            self.active = False

    def finish(self) -> None:
        """Training ended before the probe did: back to the default count."""
        if self.active:
            torch.set_num_threads(self.default)
            self.active = False


def train(model: nn.Module, data: torch.Tensor, cfg: DemoConfig) -> dict:
    """QAT with AdamW on random windows of ``data`` (uint8 byte tensor).

    Returns steps, tokens, seconds, final (smoothed) loss and the torch threads used. Progress goes
    to stderr: a bar on a terminal, a line every 30 s in a log (:func:`lmops.common.progress.progress_bar`)."""
    if data.numel() < cfg.context + 2:
        raise ValueError(f"data: expected more than {cfg.context + 1} training bytes, got {data.numel()}")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    chooser = _ThreadChooser(enabled=cfg.threads is None)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    offsets = torch.arange(cfg.context + 1)
    model.train()
    ema = None
    tokens = 0
    step = 0
    start = time.perf_counter()
    bar = progress_bar(cfg.steps, desc="QAT training", unit="step")
    try:
        while step < cfg.steps:
            elapsed = time.perf_counter() - start
            if elapsed >= cfg.seconds:
                break
            lr = _lr_at(cfg, max(step / cfg.steps, elapsed / cfg.seconds))
            for group in opt.param_groups:
                group["lr"] = lr
            starts = torch.randint(0, data.numel() - cfg.context - 1, (cfg.batch_size, 1), generator=gen)
            t_step = time.perf_counter()
            batch = data[starts + offsets].long()
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            tokens += cfg.batch_size * cfg.context
            value = loss.item()
            chooser.after_step(step - 1, time.perf_counter() - t_step)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            rate = tokens / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.1e}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        chooser.finish()
    model.eval()
    threads = chooser.note or str(torch.get_num_threads())
    return {"steps": step, "tokens": tokens, "seconds": time.perf_counter() - start, "loss": ema, "threads": threads}


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, cfg: DemoConfig) -> tuple[float, int]:
    """Mean cross-entropy (nats per byte) over non-overlapping windows of ``data``; and the bytes scored."""
    n = min((data.numel() - 1) // cfg.context, max(1, cfg.eval_tokens // cfg.context))
    if n < 1:
        raise ValueError(f"data: expected more than {cfg.context} validation bytes, got {data.numel()}")
    windows = torch.stack([data[i * cfg.context : i * cfg.context + cfg.context + 1] for i in range(n)]).long()
    model.eval()
    total, count = 0.0, 0
    for chunk in windows.split(2 * cfg.batch_size):
        logits = model(input_ids=chunk[:, :-1], use_cache=False).logits.float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum").item()
        count += chunk[:, 1:].numel()
    return total / count, count


@torch.no_grad()
def sample(model: nn.Module, tok: ByteTokenizer, cfg: DemoConfig) -> str:
    """The prompt and ``cfg.sample_bytes`` bytes continuing it (top-k sampling, seeded).

    Generated in pieces of at most half the context, each from the last bytes that fit, so no position
    goes beyond the trained context.
    """
    from ..engine import generate

    ids = torch.tensor([tok.encode(cfg.prompt)])
    out = ids
    chunk = max(1, cfg.context // 2)
    rng = torch.Generator().manual_seed(cfg.seed)
    while out.shape[1] - ids.shape[1] < cfg.sample_bytes:
        want = min(chunk, cfg.sample_bytes - (out.shape[1] - ids.shape[1]))
        window = out[:, -(cfg.context - want):]
        new = generate(
            model,
            window,
            max_new_tokens=want,
            do_sample=True,
            top_k=cfg.sample_top_k,
            temperature=cfg.sample_temperature,
            eos_token_id=[],  # exactly `want` bytes
            generator=rng,
        )[:, window.shape[1]:]
        out = torch.cat([out, new], dim=1)
    return tok.decode(out[0].tolist())


@torch.no_grad()
def decode_speed(model: nn.Module, prompt_ids: torch.Tensor, cfg: DemoConfig) -> float:
    """Greedy decode tokens/s of :func:`lmops.generate`, the lmops decode engine (``decode_tokens`` new
    tokens; best of ``decode_repeats`` after one warm-up)."""
    from ..engine import generate

    generate(model, prompt_ids, max_new_tokens=min(8, cfg.decode_tokens), eos_token_id=[])
    best = float("inf")
    for _ in range(cfg.decode_repeats):
        t0 = time.perf_counter()
        generate(model, prompt_ids, max_new_tokens=cfg.decode_tokens, eos_token_id=[])
        best = min(best, time.perf_counter() - t0)
    return cfg.decode_tokens / best


# --------------------------------------------------------------------------------------------------
# report


def kernel_description() -> tuple[str, str]:
    """``(backend of ternary_linear on CPU tensors, CPU ISA the native kernels use)``."""
    from lmops_kernels import _native, dispatch

    backend = dispatch.select("ternary_linear", "cpu").backend
    if not _native.available():
        return backend, f"none (native extension missing: {_native.missing_reason()})"
    best = str(_native.cpu_features().get("best_isa", "unknown"))
    forced = _native.cpu_isa()
    return backend, best if forced == "auto" else f"{forced} (LMOPS_CPU_ISA; detected best {best})"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_report(r: dict) -> str:
    w = 34
    decode_label = f"decode tokens/s (lmops.generate, {r['decode_tokens']} new)"
    lines = [
        f"{'':{w}}{'float32':>14}{'bfloat16':>14}{'packed (lmops)':>16}",
        f"{'weights of ' + str(r['n_linear']) + ' BitLinear layers':{w}}"
        f"{_mib(r['bytes_fp32']):>14}{_mib(r['bytes_bf16']):>14}{_mib(r['bytes_packed']):>16}",
        f"{'  smaller than bfloat16 by':{w}}{'':>14}{'1.0x':>14}{r['bytes_bf16'] / r['bytes_packed']:>15.1f}x",
        f"{decode_label:{w}}"
        f"{r['decode_fp32']:>14.1f}{r['decode_bf16']:>14.1f}{r['decode_packed']:>16.1f}",
        "",
        f"{'validation (' + format(r['val_bytes'], ',') + ' held-out bytes)':{w}}{'latent QAT':>14}{'packed':>14}",
        f"{'  cross-entropy (nats/byte)':{w}}{r['val_latent']:>14.4f}{r['val_packed']:>14.4f}",
        f"{'  bits per byte':{w}}{r['val_latent'] / math.log(2):>14.4f}{r['val_packed'] / math.log(2):>14.4f}",
    ]
    return "\n".join(lines)


class _Clock:
    """Wall time per phase, for the closing line."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.last))
        self.last = now

    def summary(self) -> str:
        parts = ", ".join(f"{name} {sec:.0f} s" for name, sec in self.laps)
        return f"{time.perf_counter() - self.start:.0f} s ({parts})"


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] | None = None) -> dict:
    """Run the demo end to end, printing as it goes through ``echo`` (default: print); return the
    measured numbers. torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        return _run_demo(cfg, echo or functools.partial(print, flush=True))
    finally:
        torch.set_num_threads(threads)


def _run_demo(cfg: DemoConfig, echo: Callable[[str], None]) -> dict:
    from .. import bitnet

    clock = _Clock()
    tok = ByteTokenizer()
    corpus = load_demo_corpus()
    train_bytes, val_bytes = corpus.split(cfg.holdout)
    train_data = torch.frombuffer(bytearray(train_bytes), dtype=torch.uint8)
    val_data = torch.frombuffer(bytearray(val_bytes), dtype=torch.uint8)
    backend, isa = kernel_description()
    echo(f"lmops demo: BitNet b1.58 QAT on {corpus.source}")
    echo(f"  corpus {len(corpus.data):,} bytes: train {len(train_bytes):,}, validation {len(val_bytes):,} (last {cfg.holdout:.0%})")
    echo(f"  ternary_linear backend: {backend}; CPU ISA: {isa}")

    model = build_model(cfg)
    layers = bitlinear_layers(model)
    n_params = sum(p.numel() for p in model.parameters())
    n_ternary = sum(m.weight.numel() for m in layers)
    echo(
        f"  model: Llama, hidden {cfg.hidden_size}, {cfg.num_layers} layer{'s' * (cfg.num_layers != 1)}, {cfg.num_heads} heads, ffn "
        f"{cfg.intermediate_size}, context {cfg.context}, vocab 256 (bytes); {n_params / 1e6:.2f}M parameters, "
        f"{n_ternary / 1e6:.2f}M in {len(layers)} BitLinear layers (lm_head and embeddings stay float)"
    )
    echo(f"  training: AdamW lr {cfg.lr:g} (warm-up, cosine), batch {cfg.batch_size}x{cfg.context}, "
         f"up to {cfg.steps} steps or {cfg.seconds:g} s")
    clock.lap("setup")
    stats = train(model, train_data, cfg)
    clock.lap("training")
    echo(
        f"  trained {stats['steps']} steps, {stats['tokens']:,} tokens in {stats['seconds']:.1f} s "
        f"({stats['tokens'] / max(stats['seconds'], 1e-9):,.0f} tokens/s), train loss {stats['loss']:.3f}"
        + (" (stopped by the time budget)" if stats["steps"] < cfg.steps else "")
    )
    echo(f"  torch threads: {stats['threads']}")

    val_latent, val_count = evaluate(model, val_data, cfg)
    bytes_fp32 = sum(m.weight.numel() * 4 for m in layers)
    bytes_bf16 = sum(m.weight.numel() * 2 for m in layers)

    bitnet.pack(model)
    model.eval()
    bytes_packed = sum(m.weight_packed.nbytes + m.weight_scale.nbytes for m in layers)
    val_packed, _ = evaluate(model, val_data, cfg)
    dense_bf16 = dense_copy(model, torch.bfloat16)
    dense_fp32 = dense_copy(model, torch.float32)
    clock.lap("evaluation")

    text = sample(model, tok, cfg)
    echo(f"\nSample from the packed model (native {backend} kernel, top-k {cfg.sample_top_k}, "
         f"temperature {cfg.sample_temperature:g}, seed {cfg.seed}):")
    echo("-" * 72)
    echo(text)
    echo("-" * 72)
    clock.lap("sample")

    prompt_ids = torch.tensor([tok.encode(cfg.prompt)])
    decode_packed = decode_speed(model, prompt_ids, cfg)
    decode_bf16 = decode_speed(dense_bf16, prompt_ids, cfg)
    decode_fp32 = decode_speed(dense_fp32, prompt_ids, cfg)
    del dense_bf16, dense_fp32
    clock.lap("decode timing")

    report = {
        "n_linear": len(layers),
        "bytes_fp32": bytes_fp32,
        "bytes_bf16": bytes_bf16,
        "bytes_packed": bytes_packed,
        "decode_tokens": cfg.decode_tokens,
        "decode_fp32": decode_fp32,
        "decode_bf16": decode_bf16,
        "decode_packed": decode_packed,
        "val_bytes": val_count,
        "val_latent": val_latent,
        "val_packed": val_packed,
    }
    echo("")
    echo(format_report(report))
    echo(
        f"(float32 / bfloat16: the same ternary weights as dense nn.Linear; decode: best of {cfg.decode_repeats} "
        "after a warm-up, batch 1, greedy. At this tiny size decode time is mostly Python and framework "
        "overhead, not the matmuls; `lmops bench` times the kernels alone.)"
    )
    if cfg.kernel_at_scale:
        report["kernel_at_scale"] = kernel_at_scale()
        k = report["kernel_at_scale"]
        echo(
            f"At LLM scale, one 4096x4096 projection at decode (M=1, weights rotated past the L3 cache): "
            f"bf16 F.linear {k['bf16_ms']:.3f} ms, float32 {k['fp32_ms']:.3f} ms, packed lmops {k['lmops_ms']:.3f} ms "
            f"({k['bf16_ms'] / k['lmops_ms']:.1f}x bf16, {k['fp32_ms'] / k['lmops_ms']:.1f}x float32)."
        )

    out = Path(cfg.out).expanduser().resolve()
    meta = {"tokenizer": "utf-8 bytes, token id = byte value (vocab 256)", "corpus": corpus.source,
            "config": asdict(cfg), "training": stats, "results": report}
    with tempfile.TemporaryDirectory() as scratch:
        # the report goes into the model directory, which save_pretrained renames into place as a whole:
        # after a kill there is either the old directory or the new one with its report, never half of it
        report_file = Path(scratch) / "lmops_demo.json"
        report_file.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        bitnet.save_pretrained(model, out, extra_files=[report_file])
    echo(f"\nSaved the packed model to {out}")
    echo(f"  load it with: lmops.bitnet.from_pretrained({str(out)!r}); tokens are UTF-8 bytes (see lmops_demo.json)")
    clock.lap("save")
    total = time.perf_counter() - clock.start
    echo(f"Done in {clock.summary()}.")
    return {**report, "training": stats, "sample": text, "out": str(out), "seconds": total,
            "backend": backend, "isa": isa}


def config_from_args(tiny: bool, **overrides) -> DemoConfig:
    """``DemoConfig`` (or its tiny variant) with the given fields replaced (None values ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return DemoConfig.tiny(**overrides) if tiny else replace(DemoConfig(), **overrides)

