"""``python -m lmops.methods.domain_rc.train_ddp``: the ``lmops domain-rc train`` verb as a module, for
launchers that start a module per process::

    torchrun --nproc_per_node 2 -m lmops.methods.domain_rc.train_ddp --data DATA --model MODEL --out OUT
    accelerate launch --num_processes 2 -m lmops.methods.domain_rc.train_ddp --data DATA --model MODEL --out OUT

Each process joins the group the launcher describes (gloo on CPU, NCCL on CUDA), trains its shard of the
packed data under DistributedDataParallel, and rank 0 saves. Same arguments as the verb.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ...cli.args import EXIT_USAGE, Fail
from .cli import add_train_arguments, run_train

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmops.methods.domain_rc.train_ddp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except Fail as exc:
        print(f"domain-rc train: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
