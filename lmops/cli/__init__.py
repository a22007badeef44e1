"""The ``lmops`` command: one verb per job.

- ``lmops demo``     train a small BitNet b1.58 model with QAT here, pack it, generate, compare, save it
- ``lmops bench``    time the kernels against plain torch
- ``lmops convert``  turn a Hugging Face model directory into a BitNet (BitLinear) one, optionally packed
- ``lmops info``     versions, the native extension, CPU features, and the backend of every op
- ``lmops serve``    an OpenAI-compatible HTTP server over a local model
- ``lmops generate`` generate text from a local model with the lmops decode engine, with tokens/s

Each verb is one module of this package with ``add_parser(sub)`` and ``run(args)``; :data:`VERBS`
lists them, so a method package adds its verb with one line there. Heavy imports (transformers, the
model code) happen inside ``run``, so ``lmops info`` and ``lmops --help`` stay quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from .args import EXIT_USAGE, Fail

__all__ = ["VERBS", "build_parser", "main"]

# The verbs, in the order ``lmops --help`` lists them: module paths, each module with
# ``add_parser(sub) -> ArgumentParser`` and ``run(args) -> int``.
VERBS: tuple[str, ...] = (
    "lmops.cli.demo",
    "lmops.cli.bench",
    "lmops.cli.convert",
    "lmops.cli.info",
    "lmops.cli.serve",
    "lmops.cli.generate",
    "lmops.methods.glan.cli",
    "lmops.methods.hd_eval.cli",
    "lmops.methods.se2.cli",
    "lmops.methods.domain_rc.cli",
    "lmops.methods.reason_distill.cli",
    "lmops.methods.trec.cli",
    "lmops.methods.visionprefer.cli",
)


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmops",
        description="Fast, drop-in PyTorch layers and kernels for efficient LMs (BitNet b1.58, ResLoRA, MoLE).",
    )
    parser.add_argument("--version", action="version", version=f"lmops {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in VERBS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lmops`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except Fail as exc:
        print(f"lmops {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `lmops info | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"lmops {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
