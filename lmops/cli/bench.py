"""``lmops bench``: time the lmops kernels against what users would run instead."""

from __future__ import annotations

import argparse

from .args import Fail

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise Fail("--device cuda: no CUDA device is available (this torch: " + torch.__version__ + ")")
        from ..bench import gpu as bench_gpu

        print(bench_gpu.format_gpu_table(bench_gpu.gpu_kernel_table(args.quick)))
        return 0
    from ..bench import cpu as bench

    print(bench.format_table(bench.kernel_table(args.quick)))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the verb to the ``lmops`` parser's subcommands."""
    bench = sub.add_parser("bench", help="time the lmops kernels against plain torch",
                           description="Time the lmops kernels against plain torch and print a table.")
    bench.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="cpu: native kernel vs F.linear fp32/bf16 and transformers' BitLinear; cuda: the "
                       "cuda and triton backends vs cuBLAS bf16 under CUDA graphs, with NVML joules "
                       "(default: cuda when a GPU is visible)")
    bench.set_defaults(func=run)
    return bench
