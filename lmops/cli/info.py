"""``lmops info``: versions, the native extension, CPU features, and the backend of every op."""

from __future__ import annotations

import argparse
import importlib.metadata
import os

__all__ = ["add_parser", "run"]


def info_lines() -> list[str]:
    import torch

    import lmops
    from lmops_kernels import _native, dispatch

    lines = []
    if not _native.available():  # first, so that nobody misses it: everything runs ~100x slower
        lines += [
            "!! WARNING: the native extension lmops_kernels._C did not load, so every op runs the plain-torch "
            "reference (about 100x slower).",
            f"!! why: {_native.load_error()}",
            f"!! fix: {_native.REBUILD_COMMAND}   (in the lmops source checkout)",
            "",
        ]
    lines += [f"lmops {lmops.__version__}", f"torch {torch.__version__} (threads: {torch.get_num_threads()}, "
              f"CUDA: {'available' if torch.cuda.is_available() else 'not available'})"]
    for name, needed_for in (("transformers", "lmops demo, lmops convert and lmops.bitnet model checkpoints"),
                             ("peft", "training peft's LoRA adapters over lmops layers")):
        try:  # the installed distribution, without importing it (info stays quick)
            lines.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name}: not installed (needed for {needed_for}; the hf extra brings it: "
                         "pip install --no-build-isolation -e \".[hf]\")")

    if _native.available():
        with_cuda = _native.with_cuda()
        lines.append(
            f"native extension: built ({_native.library_path().name}; CUDA kernels "
            f"{'included' if with_cuda else 'not included: built where torch has CUDA and nvcc is on PATH'})"
        )
    else:
        lines.append(f"native extension: MISSING (ops run the plain-torch reference): {_native.missing_reason()}")
    features = _native.cpu_features()
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in features.items() if isinstance(v, bool))
    lines.append(f"CPU features: {flags or 'unknown (native extension missing)'}")
    best = features.get("best_isa")
    forced_isa = _native.cpu_isa()
    if best is None:
        lines.append("CPU ISA: none (the cpu backend needs the native extension)")
    elif forced_isa == "auto":
        lines.append(f"CPU ISA: {best} (auto; LMOPS_CPU_ISA=scalar|avx2|avx512vnni overrides)")
    else:
        lines.append(f"CPU ISA: {forced_isa} (forced by LMOPS_CPU_ISA; detected best {best})")

    forced = dispatch.forced_backend()  # LMOPS_BACKEND at import (an invalid name fails the import), or force()
    if forced:
        lines.append(f"{dispatch.ENV_VAR}={forced}: every op with a {forced} backend must use it")
    else:
        raw = os.environ.get(dispatch.ENV_VAR)
        lines.append(f"{dispatch.ENV_VAR}: {'auto' if raw else 'not set'} (order: {' > '.join(dispatch.BACKENDS)})")

    gpu = torch.cuda.is_available()
    if gpu:
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        try:
            linear = dispatch.select("ternary_linear", "cuda")
            use = f"ternary_linear uses {linear.backend}, weights kept in the {linear.layouts[0]!r} layout"
        except RuntimeError as exc:
            use = f"ternary_linear cannot run: {exc}"
        lines.append(f"GPU: {torch.cuda.get_device_name(index)} (sm_{major}{minor}); {use}")
    lines.append("ops (backend used for CPU tensors marked *" + (", for CUDA tensors +):" if gpu else "):"))
    width = max((len(op) for op in dispatch.ops()), default=0)
    for op in dispatch.ops():
        try:
            chosen = dispatch.select(op, "cpu").backend
            problem = None
        except (RuntimeError, ValueError, KeyError) as exc:
            chosen, problem = None, str(exc)
        try:
            chosen_gpu = dispatch.select(op, "cuda").backend if gpu else None
        except (RuntimeError, ValueError, KeyError):
            chosen_gpu = None
        parts = []
        found = dispatch.backends_for(op)
        for name in sorted(found, key=dispatch.BACKENDS.index):
            reason = found[name]
            mark = ("*" if name == chosen else "") + ("+" if name == chosen_gpu else "")
            parts.append(f"{name}{mark}" if reason is None else f"{name} (unavailable: {reason})")
        lines.append(f"  {op:<{width}}  {', '.join(parts)}")
        if problem:
            lines.append(f"  {'':<{width}}  error: {problem}")
    return lines


def run(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the verb to the ``lmops`` parser's subcommands."""
    info = sub.add_parser("info", help="versions, native extension, CPU features, backends per op",
                          description="Print versions, the native extension status, CPU features, the ISA "
                          "chosen, and the backends registered for every op.")
    info.set_defaults(func=run)
    return info
