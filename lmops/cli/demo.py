"""``lmops demo``: train a small BitNet b1.58 LM with QAT here, pack it, generate, compare, save."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import Fail, positive_float, positive_int, require_transformers

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    require_transformers()
    from ..demo import config_from_args, run_demo

    try:
        cfg = config_from_args(args.tiny, steps=args.steps, seconds=args.seconds, out=args.out, seed=args.seed,
                               prompt=args.prompt, threads=args.threads)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():  # say so now, not after minutes of training
        raise Fail(f"--out: {cfg.out} exists and is not a directory")
    run_demo(cfg)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the verb to the ``lmops`` parser's subcommands."""
    demo = sub.add_parser(
        "demo",
        help="train a small BitNet b1.58 LM with QAT here (no download), pack it, generate, compare, save",
        description="Train a small BitNet b1.58 language model with quantization-aware training on CPython's "
        "own documentation (no download), pack it to 2-bit weights, generate a sample with the native kernel, "
        "compare size, decode speed and validation loss, and save it. A few minutes on 2 CPU cores.",
    )
    demo.add_argument("--steps", type=positive_int, default=None, help="training steps (default 1000)")
    demo.add_argument("--seconds", type=positive_float, default=None,
                      help="stop training after this many seconds (default 140)")
    demo.add_argument("--out", default=None, help="where to save the packed model (default ./lmops-demo-model)")
    demo.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    demo.add_argument("--prompt", default=None, help='prompt of the sample (default "The return statement")')
    demo.add_argument("--threads", type=positive_int, default=None,
                      help="torch threads (default: torch's, or 1 if a first few steps show it trains faster)")
    demo.add_argument("--tiny", action="store_true",
                      help="a very small model and budget (a smoke test in seconds; the output is noise)")
    demo.set_defaults(func=run)
    return demo
