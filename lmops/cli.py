"""The ``lmops`` command: one verb per job.

- ``lmops demo``     train a small BitNet b1.58 model with QAT here, pack it, generate, compare, save it
- ``lmops bench``    time the kernels against plain torch
- ``lmops convert``  turn a Hugging Face model directory into a BitNet (BitLinear) one, optionally packed
- ``lmops info``     versions, the native extension, CPU features, and the backend of every op

Heavy imports (transformers, the model code) happen inside the verbs, so ``lmops info`` and
``lmops --help`` stay quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2

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


class _Fail(Exception):
    """A user error: printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# --------------------------------------------------------------------------------------------------
# demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import config_from_args, run_demo

    try:
        cfg = config_from_args(args.tiny, steps=args.steps, seconds=args.seconds, out=args.out, seed=args.seed,
                               prompt=args.prompt, threads=args.threads)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():  # say so now, not after minutes of training
        raise _Fail(f"--out: {cfg.out} exists and is not a directory")
    run_demo(cfg)
    return 0


# --------------------------------------------------------------------------------------------------
# bench


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise _Fail("--device cuda: no CUDA device is available (this torch: " + torch.__version__ + ")")
        from . import bench_gpu

        print(bench_gpu.format_gpu_table(bench_gpu.gpu_kernel_table(args.quick)))
        return 0
    from . import bench

    print(bench.format_table(bench.kernel_table(args.quick)))
    return 0


# --------------------------------------------------------------------------------------------------
# convert


def _check_model_dir(src: str) -> Path:
    path = Path(src).expanduser()
    if not path.exists():
        raise _Fail(f"SRC: {src} does not exist")
    if not path.is_dir():
        raise _Fail(f"SRC: {src} is not a directory (expected a model directory holding config.json)")
    if not (path / "config.json").is_file():
        raise _Fail(f"SRC: {src} has no config.json (expected a Hugging Face model directory)")
    return path


def _is_bitnet_config(src: Path) -> bool:
    """True when SRC's config.json describes a BitNet model already (lmops or transformers format)."""
    try:
        cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Fail(f"SRC: cannot read {src / 'config.json'}: {exc}") from None
    if not isinstance(cfg, dict):
        raise _Fail(f"SRC: {src / 'config.json'} does not hold a JSON object")
    quant = cfg.get("quantization_config")
    return (
        (cfg.get("lmops") or {}).get("bitnet") is not None
        or (isinstance(quant, dict) and quant.get("quant_method") == "bitnet")
        or cfg.get("model_type") == "bitnet"
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    import warnings

    src = _check_model_dir(args.src)
    dst = Path(args.dst).expanduser()
    if dst.exists() and dst.resolve() == src.resolve():
        raise _Fail(f"DST: {args.dst} is the source directory; choose another directory")
    if dst.exists() and not dst.is_dir():
        raise _Fail(f"DST: {args.dst} exists and is not a directory")
    already_bitnet = _is_bitnet_config(src)

    import torch

    from . import bitnet

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
        raise _Fail(f"convert: {exc}") from None
    if args.pack:
        print(f"{src} -> {dst}: converted and packed (2-bit ternary weights, native kernel)")
    else:
        print(f"{src} -> {dst}: converted for QAT (BitLinear layers with latent float weights)")
        print(f"Train it with its usual loop, then pack it: lmops convert {dst} PACKED_DIR --pack "
              "(or lmops.bitnet.pack(model))")
    return 0


# --------------------------------------------------------------------------------------------------
# info


def _info_lines() -> list[str]:
    import torch

    import lmops
    from lmops_kernels import _native, dispatch

    lines = [f"lmops {lmops.__version__}", f"torch {torch.__version__} (threads: {torch.get_num_threads()}, "
             f"CUDA: {'available' if torch.cuda.is_available() else 'not available'})"]
    try:
        import transformers

        lines.append(f"transformers {transformers.__version__}")
    except ImportError:
        lines.append("transformers: not installed (needed by lmops demo and convert: pip install 'lmops[hf]')")

    if _native.available():
        with_cuda = bool(getattr(_native.module(), "with_cuda", False))
        lines.append(
            f"native extension: built ({Path(_native.module().__file__).name}; CUDA kernels "
            f"{'included' if with_cuda else 'not included: built where torch has CUDA and nvcc is on PATH'})"
        )
    else:
        lines.append(f"native extension: missing: {_native.missing_reason()}")
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

    try:
        forced = dispatch.forced_backend()
        forced_error = None
    except ValueError as exc:
        forced, forced_error = None, str(exc)
    raw = os.environ.get(dispatch.ENV_VAR)
    if forced_error:
        lines.append(f"{dispatch.ENV_VAR}: invalid: {forced_error}")
    elif forced:
        lines.append(f"{dispatch.ENV_VAR}={forced}: every op with a {forced} backend must use it")
    else:
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


def _cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(_info_lines()))
    return 0


# --------------------------------------------------------------------------------------------------
# parser


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmops",
        description="Fast, drop-in PyTorch layers and kernels for efficient LMs (BitNet b1.58, ResLoRA, MoLE).",
    )
    parser.add_argument("--version", action="version", version=f"lmops {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a small BitNet b1.58 LM with QAT here (no download), pack it, generate, compare, save",
        description="Train a small BitNet b1.58 language model with quantization-aware training on CPython's "
        "own documentation (no download), pack it to 2-bit weights, generate a sample with the native kernel, "
        "compare size, decode speed and validation loss, and save it. A few minutes on 2 CPU cores.",
    )
    demo.add_argument("--steps", type=_positive_int, default=None, help="training steps (default 1000)")
    demo.add_argument("--seconds", type=_positive_float, default=None,
                      help="stop training after this many seconds (default 140)")
    demo.add_argument("--out", default=None, help="where to save the packed model (default ./lmops-demo-model)")
    demo.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    demo.add_argument("--prompt", default=None, help='prompt of the sample (default "The return statement")')
    demo.add_argument("--threads", type=_positive_int, default=None,
                      help="torch threads (default: torch's, or 1 if a first few steps show it trains faster)")
    demo.add_argument("--tiny", action="store_true",
                      help="a very small model and budget (a smoke test in seconds; the output is noise)")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="time the lmops kernels against plain torch",
                           description="Time the lmops kernels against plain torch and print a table.")
    bench.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="cpu: native kernel vs F.linear fp32/bf16 and transformers' BitLinear; cuda: the "
                       "cuda and triton backends vs cuBLAS bf16 under CUDA graphs, with NVML joules "
                       "(default: cuda when a GPU is visible)")
    bench.set_defaults(func=_cmd_bench)

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
    convert.set_defaults(func=_cmd_convert)

    info = sub.add_parser("info", help="versions, native extension, CPU features, backends per op",
                          description="Print versions, the native extension status, CPU features, the ISA "
                          "chosen, and the backends registered for every op.")
    info.set_defaults(func=_cmd_info)
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
    except _Fail as exc:
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
