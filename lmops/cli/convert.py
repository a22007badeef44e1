"""``lmops convert``: a Hugging Face model directory -> BitNet (BitLinear) layers, optionally packed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .args import Fail, require_transformers

__all__ = ["add_parser", "run"]


QAT_NOTE = """\
NOTE: packing a model that was never trained with quantization-aware training (QAT) destroys its quality.
Rounding ordinary weights to {-1, 0, +1} times one scale per matrix leaves a model that produces noise;
BitNet b1.58 models get their quality from being trained with ternary weights. To get a good packed model:
  1. convert it for QAT:       lmops convert SRC QAT_DIR          (or lmops.bitnet.convert(model) in Python)
  2. train or fine-tune it with the model's usual training loop (the BitLinear layers train with a
     straight-through estimator; BitNet likes a larger learning rate than full precision)
  3. pack the trained model:   lmops convert QAT_DIR DST --pack   (or lmops.bitnet.pack(model))
`lmops demo` shows the whole loop on a small model. Models published already trained as BitNet b1.58
(e.g. microsoft/bitnet-b1.58-2B-4T-bf16) can be packed directly."""



def _check_model_dir(src: str) -> Path:
    path = Path(src).expanduser()
    if not path.exists():
        raise Fail(f"SRC: {src} does not exist")
    if not path.is_dir():
        raise Fail(f"SRC: {src} is not a directory (expected a model directory holding config.json)")
    if not (path / "config.json").is_file():
        raise Fail(f"SRC: {src} has no config.json (expected a Hugging Face model directory)")
    return path


def _is_bitnet_config(src: Path) -> bool:
    """True when SRC's config.json describes a BitNet model already (lmops or transformers format)."""
    try:
        cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Fail(f"SRC: cannot read {src / 'config.json'}: {exc}") from None
    if not isinstance(cfg, dict):
        raise Fail(f"SRC: {src / 'config.json'} does not hold a JSON object")
    quant = cfg.get("quantization_config")
    return (
        (cfg.get("lmops") or {}).get("bitnet") is not None
        or (isinstance(quant, dict) and quant.get("quant_method") == "bitnet")
        or cfg.get("model_type") == "bitnet"
    )


def run(args: argparse.Namespace) -> int:
    require_transformers()
    import warnings

    src = _check_model_dir(args.src)
    dst = Path(args.dst).expanduser()
    if dst.exists() and dst.resolve() == src.resolve():
        raise Fail(f"DST: {args.dst} is the source directory; choose another directory")
    if dst.exists() and not dst.is_dir():
        raise Fail(f"DST: {args.dst} exists and is not a directory")
    already_bitnet = _is_bitnet_config(src)

    import torch

    from .. import bitnet

    kwargs: dict = {"pack": args.pack}
    if args.dtype is not None:
        kwargs["dtype"] = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    if args.pack and not already_bitnet:
        print(QAT_NOTE, file=sys.stderr)
        print(file=sys.stderr)
    elif args.pack:
        print(f"{src} holds a BitNet model: packing it keeps its quality only if it was trained with QAT "
              "(after `lmops convert`, train it before packing).", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            # the note above already says it, more prominently
            warnings.filterwarnings("ignore", message="packing a model that was never trained", category=UserWarning)
            bitnet.convert_directory(src, dst, **kwargs)
    except (ValueError, TypeError, OSError) as exc:
        raise Fail(f"convert: {exc}") from None
    if args.pack:
        print(f"{src} -> {dst}: converted and packed (2-bit ternary weights, native kernel)")
    else:
        print(f"{src} -> {dst}: converted for QAT (BitLinear layers with latent float weights)")
        print(f"Train it with its usual loop, then pack it: lmops convert {dst} PACKED_DIR --pack "
              "(or lmops.bitnet.pack(model))")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the verb to the ``lmops`` parser's subcommands."""
    convert = sub.add_parser(
        "convert",
        help="convert a Hugging Face model directory to BitNet (BitLinear) layers, optionally packed",
        description="Replace the nn.Linear layers of a Hugging Face model (all but lm_head) with BitLinear and "
        "save it to DST: ready for quantization-aware training, or with --pack ready for inference with the "
        "native 2-bit kernel (only for models trained with QAT).",
    )
    convert.add_argument("src", metavar="SRC", help="model directory (with config.json)")
    convert.add_argument("dst", metavar="DST", help="output directory")
    convert.add_argument("--pack", action="store_true",
                         help="pack the ternary weights to 2 bits (only sensible after QAT)")
    convert.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                         help="dtype of the float weights (latent weights, embeddings, norms; default float32)")
    convert.set_defaults(func=run)
    return convert
