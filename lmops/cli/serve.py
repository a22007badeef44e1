"""``lmops serve``: an OpenAI-compatible server (completions, chat, logprobs, streaming) over a local
model directory, packed BitNet included (:mod:`lmops.llm.server`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import Fail, positive_int, require_transformers, threads_arg

__all__ = ["add_parser", "run"]

_DTYPES = ("float32", "bfloat16", "float16")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="serve a local model over an OpenAI-compatible HTTP API",
        description="Serve MODEL_DIR (any causal LM directory lmops loads: transformers, lmops BitNet packed "
        "or not) at http://HOST:PORT/v1 with /models, /completions and /chat/completions. Point "
        "lmops.llm.OpenAICompatible (or any OpenAI client) at it. Needs the serve extra "
        '(pip install --no-build-isolation -e ".[serve]").',
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local model directory with its tokenizer")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the directory name)")
    p.add_argument("--dtype", choices=_DTYPES, default="float32", help="dtype of the model's float tensors")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per batch (default 8)")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="torch threads, or 'auto': chosen while decoding by timing the steps (default: torch's)")
    p.add_argument("--head-dtype", choices=("model", "bf16", "int8"), default="model",
                   help="the output head the decode engine uses: the model's own (default), the same 16-bit head "
                        "through lmops's bf16 GEMV, or an int8 per-channel copy (see lmops.generate)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow first request)")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="a Jinja chat template file, for a tokenizer without one")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible sampled answers)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    require_transformers()
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise Fail('needs starlette and uvicorn, from the serve extra: pip install --no-build-isolation -e ".[serve]"') from None
    import torch

    from ..llm import HFLocal
    from ..llm.server import serve

    root = Path(args.model_dir).expanduser()
    if not (root / "config.json").is_file():
        raise Fail(f"MODEL_DIR: {args.model_dir} is not a model directory (no config.json)")
    if not 0 < args.port < 65536:
        raise Fail(f"--port: expected 1-65535, got {args.port}")
    if isinstance(args.threads, int):
        torch.set_num_threads(args.threads)
    options = {"threads": "auto"} if args.threads == "auto" else {}
    if args.head_dtype != "model":
        options["head_dtype"] = args.head_dtype
    if args.compile:
        options["compile"] = True
    try:
        llm = HFLocal.from_pretrained(root, dtype=getattr(torch, args.dtype), batch_size=args.batch_size,
                                      name=args.model_name, seed=args.seed, engine_options=options)
    except (FileNotFoundError, ValueError) as exc:
        raise Fail(f"MODEL_DIR: {exc}") from None
    if args.chat_template:
        try:
            llm.tokenizer.chat_template = Path(args.chat_template).read_text(encoding="utf-8")
        except OSError as exc:
            raise Fail(f"--chat-template: {exc}") from None
    print(f"lmops serve: {llm.name} at http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    serve(llm, host=args.host, port=args.port, batch_size=args.batch_size, log_level=args.log_level)
    return 0
