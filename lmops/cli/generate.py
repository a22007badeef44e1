"""``lmops generate``: generate text from a local model directory with the lmops decode engine and print
its prefill and decode speed."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import Fail, positive_float, positive_int, require_transformers, threads_arg

__all__ = ["add_parser", "run"]

_DTYPES = ("bfloat16", "float32", "float16")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate",
        help="generate text from a local model directory with the lmops decode engine, with tokens/s",
        description="Load MODEL_DIR (a packed lmops BitNet directory without ever materializing float weights; "
        "any other Llama, Mistral, Qwen2 or BitNet directory lmops reads), generate a continuation of --prompt "
        "with lmops.generate (greedy unless --sample) and print it, then the prefill and decode speed.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local model directory with its tokenizer")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate at most (default 64)")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="torch threads, or 'auto': chosen while decoding by timing the steps (default: torch's)")
    p.add_argument("--head-dtype", choices=("model", "bf16", "int8"), default="model",
                   help="the output head: the model's own through torch (default), the same 16-bit head through "
                        "lmops's bf16 GEMV (faster), or an int8 per-channel copy (fastest)")
    p.add_argument("--dtype", choices=_DTYPES, default="bfloat16",
                   help="dtype of the float tensors (embeddings, norms, head; default bfloat16)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-p", type=positive_float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible samples)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow first call)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    require_transformers()
    import torch

    from ..engine import UnsupportedModelError, generate

    root = Path(args.model_dir).expanduser()
    if not (root / "config.json").is_file():
        raise Fail(f"MODEL_DIR: {args.model_dir} is not a model directory (no config.json)")
    if args.top_p is not None and args.top_p > 1:
        raise Fail(f"--top-p: expected a number in (0, 1], got {args.top_p}")
    if not args.prompt:
        raise Fail("--prompt: expected a non-empty text")
    if isinstance(args.threads, int):
        torch.set_num_threads(args.threads)
    from ..llm.hf_local import load_local_model

    try:
        # packed lmops directories load through lmops.engine.load_packed: no float projection weights
        model, tokenizer = load_local_model(root, dtype=getattr(torch, args.dtype))
    except (OSError, ValueError, TypeError) as exc:
        raise Fail(f"MODEL_DIR: {exc}") from None
    ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(args.seed)
    try:
        result = generate(model, ids, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator,
                          compile=args.compile, head_dtype=None if args.head_dtype == "model" else args.head_dtype,
                          threads="auto" if args.threads == "auto" else None, return_dict=True)
    except UnsupportedModelError as exc:
        raise Fail(str(exc)) from None
    new = result.sequences[0, ids.shape[1]:].tolist()
    print(args.prompt + tokenizer.decode(new, skip_special_tokens=True))
    print()
    print(f"prefill: {result.prompt_tokens} tokens in {result.prefill_seconds:.3f} s "
          f"({result.prefill_tokens_per_s:.1f} tok/s, first token included)")
    decoded = max(result.new_tokens - 1, 0)
    print(f"decode: {decoded} tokens in {result.decode_seconds:.3f} s ({result.decode_tokens_per_s:.1f} tok/s), "
          f"threads={args.threads if args.threads == 'auto' else torch.get_num_threads()}, dtype={args.dtype}, "
          f"head={args.head_dtype}")
    return 0
