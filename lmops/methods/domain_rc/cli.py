"""``lmops domain-rc``: ETRC's stages on a data directory, and the offline demo.

- ``lmops domain-rc qa --corpus docs.jsonl --domain biomedicine --llm URL|MODEL_DIR|scripted --out DATA``
- ``lmops domain-rc cluster --data DATA --encoder NAME_OR_DIR [--tokenizer MODEL_DIR] --l-max 2048 --d-max 8``
- ``lmops domain-rc pack --data DATA --tokenizer MODEL_DIR --context-length 2048 --general general.jsonl``
- ``lmops domain-rc train --data DATA --model MODEL_DIR --adapter lora --out ADAPTER_DIR`` (under
  ``torchrun --nproc_per_node N`` too: it joins the process group from the environment)
- ``lmops domain-rc demo [--out DIR]``: all four offline on the embedded example
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...cli.args import (
    Fail,
    non_negative_float,
    positive_float,
    positive_int,
    require_transformers,
)

__all__ = ["add_parser", "add_train_arguments", "run", "run_train"]


def _similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [-1, 1], got {text!r}") from None
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [-1, 1], got {text!r}")
    return value


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The ``train`` verb's arguments (shared with ``python -m lmops.methods.domain_rc.train_ddp``)."""
    p.add_argument("--data", required=True, help="the data directory (holds packed.jsonl)")
    p.add_argument("--model", required=True, help="the base model directory (a packed BitNet model included)")
    p.add_argument("--out", required=True, help="where the adapter (or the model, with --adapter none) is saved")
    p.add_argument("--adapter", choices=("lora", "reslora", "none"), default="lora")
    p.add_argument("--rank", type=positive_int, default=256, help="LoRA rank (the paper's 256)")
    p.add_argument("--alpha", type=positive_float, default=None, help="LoRA alpha (default 2 * rank)")
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--epochs", type=positive_int, default=1)
    p.add_argument("--batch-size", type=positive_int, default=1, help="sequences per process per step")
    p.add_argument("--grad-accum", type=positive_int, default=1)
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--evaluate", action="store_true", help="measure the loss on the packed data before and after")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("domain-rc", help="ETRC domain adaptation: QA generation, clustering, packing, training",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=_help(parser))
    verbs = parser.add_subparsers(dest="domain_rc_command", metavar="STAGE")

    p = verbs.add_parser("qa", help="ask a teacher LLM for QA pairs about each document (resumable)")
    p.add_argument("--corpus", required=True, help='JSONL of {"id": ..., "text": ...}')
    p.add_argument("--domain", required=True, help="the {DOMAIN} of the prompt, e.g. biomedicine")
    p.add_argument("--llm", required=True, help="an http(s) base URL, a local model directory, or 'scripted'")
    p.add_argument("--model", default=None, help="the model name to ask for (with a URL)")
    p.add_argument("--out", required=True, help="the data directory (qa.jsonl, qa_report.json, llm_cache.sqlite)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-new-tokens", type=positive_int, default=512)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--completion", action="store_true", help="send a plain prompt instead of a chat message")
    p.add_argument("--retry-failed", action="store_true", help="ask again about documents recorded as failed")
    p.add_argument("--no-cache", action="store_true", help="do not cache the teacher's answers")
    p.add_argument("--scripted-malformed-rate", type=non_negative_float, default=0.0,
                   help="with --llm scripted: the share of documents answered without JSON (for trying the reports)")
    p.set_defaults(func=_run_qa)

    p = verbs.add_parser("cluster", help="embed the documents and cluster them (Algorithm 1)")
    p.add_argument("--data", required=True)
    p.add_argument("--encoder", required=True, help="a transformers encoder: a directory or a Hub name")
    p.add_argument("--tokenizer", default=None,
                   help="the training tokenizer lengths are counted in (default: the encoder's; use the model's)")
    p.add_argument("--l-max", type=positive_int, default=2048, help="most tokens per cluster (documents + QA)")
    p.add_argument("--d-max", type=positive_int, default=8, help="most documents per cluster")
    p.add_argument("--threshold", type=_similarity, default=0.7, help="cosine similarity below which growth stops")
    p.add_argument("--anchor", choices=("seed", "centroid"), default="seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--brute-force-max", type=positive_int, default=20000)
    p.add_argument("--faiss", choices=("flat", "hnsw"), default="flat", help="faiss index above --brute-force-max")
    p.add_argument("--batch-size", type=positive_int, default=32, help="encoder batch size")
    p.add_argument("--drop-failed", action="store_true", help="leave out documents whose QA failed")
    p.set_defaults(func=_run_cluster)

    p = verbs.add_parser("pack", help="format clusters, mix general instructions, knapsack-pack into contexts")
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True, help="the training model's tokenizer (a directory or a Hub name)")
    p.add_argument("--context-length", type=positive_int, default=2048)
    p.add_argument("--general", default=None, help='JSONL of {"instruction", "response"} or {"text"}')
    p.add_argument("--ratio", type=non_negative_float, default=1.0, help="general tokens per domain token")
    p.add_argument("--allow-repeat", action="store_true", help="repeat general examples to reach --ratio")
    p.add_argument("--overlong", choices=("split", "truncate", "drop"), default="split")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_pack)

    p = verbs.add_parser("train", help="continued training with LoRA on all linear layers (DDP under torchrun)")
    add_train_arguments(p)
    p.set_defaults(func=run_train)

    p = verbs.add_parser("demo", help="all four stages offline on the embedded example, with tiny models")
    p.add_argument("--out", default=None, help="output directory (default: a new temporary directory)")
    p.set_defaults(func=_run_demo)
    return parser


def _help(parser: argparse.ArgumentParser):
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen stage (``args.func`` is set by the stage's subparser)."""
    return int(args.func(args) or 0)


def _config(cls, **kwargs):
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise Fail(str(exc)) from None


def _run_qa(args: argparse.Namespace) -> int:
    from ...llm import llm_from_spec
    from .config import QAConfig
    from .scripted import scripted_teacher
    from .stages import qa_stage

    if args.llm != "scripted" and not args.llm.startswith(("http://", "https://")):
        require_transformers()  # a local model directory
    cfg = _config(QAConfig, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, retries=args.retries,
                  chat=not args.completion)
    out = Path(args.out)
    if not Path(args.corpus).is_file():
        raise Fail(f"--corpus: {args.corpus} is not a file")
    out.mkdir(parents=True, exist_ok=True)
    rate = args.scripted_malformed_rate
    try:
        llm = llm_from_spec(args.llm, model=args.model, scripted=lambda: scripted_teacher(malformed_rate=min(rate, 1.0)),
                            cache=None if args.no_cache else out / "llm_cache.sqlite")
        report = qa_stage(args.corpus, args.domain, llm, out, config=cfg, retry_failed=args.retry_failed)
    except (ValueError, FileNotFoundError) as exc:
        raise Fail(str(exc)) from None
    print(f"qa: {report.documents} documents ({report.skipped_existing} already done), {report.ok} answered "
          f"with {report.pairs} QA pairs, {report.failed} without a parsable answer (skipped, see "
          f"{out / 'qa_report.json'}), {report.dropped_items} malformed items dropped")
    return 0


def _run_cluster(args: argparse.Namespace) -> int:
    require_transformers()
    from .config import ClusterConfig
    from .embed import load_encoder
    from .stages import cluster_stage

    cfg = _config(ClusterConfig, l_max=args.l_max, d_max=args.d_max, threshold=args.threshold, seed=args.seed,
                  anchor=args.anchor, brute_force_max=args.brute_force_max, faiss_kind=args.faiss,
                  encoder_batch_size=args.batch_size)
    import torch

    try:
        encoder, enc_tok = load_encoder(args.encoder, device="cuda" if torch.cuda.is_available() else "cpu")
        if args.tokenizer is None:
            print("cluster: lengths are counted in the encoder's tokens; pass --tokenizer MODEL_DIR to count them in "
                  "the training model's", file=sys.stderr)
            length_tok = enc_tok
        else:
            from transformers import AutoTokenizer

            length_tok = AutoTokenizer.from_pretrained(args.tokenizer)
        report, _ = cluster_stage(args.data, encoder, enc_tok, length_tok, config=cfg,
                                      keep_failed=not args.drop_failed)
    except (ValueError, OSError) as exc:
        raise Fail(str(exc)) from None
    print(f"cluster: {report.documents} documents -> {report.clusters} clusters (mean {report.mean_documents:.2f} "
          f"documents, {report.singletons} singletons), stops {report.stops}, {len(report.overlong)} documents "
          f"longer than --l-max {args.l_max} (own clusters), index {report.index or '-'}")
    return 0


def _run_pack(args: argparse.Namespace) -> int:
    require_transformers()
    from transformers import AutoTokenizer

    from .config import PackConfig
    from .stages import pack_stage

    cfg = _config(PackConfig, context_length=args.context_length, ratio=args.ratio, overlong=args.overlong,
                  allow_repeat=args.allow_repeat, seed=args.seed)
    if args.general is not None and not Path(args.general).is_file():
        raise Fail(f"--general: {args.general} is not a file")
    try:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        report = pack_stage(args.data, tok, config=cfg, general=args.general)
    except (ValueError, OSError) as exc:
        raise Fail(str(exc)) from None
    mix, pack = report["mix"], report["pack"]
    print(f"pack: {mix['domain_examples']} domain examples ({mix['domain_tokens']} tokens) + {mix['general_examples']} "
          f"general ({mix['general_tokens']} tokens; ratio {mix['achieved_ratio']:.2f}, asked {mix['asked_ratio']}) -> "
          f"{pack['sequences']} sequences of <= {args.context_length} tokens (fill {pack['fill']:.1%}; "
          f"{pack['overlong']} examples over the context, {pack['overlong_policy']})")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """The ``train`` verb (also ``python -m lmops.methods.domain_rc.train_ddp``): one process, or one
    rank of a ``torchrun`` job (detected from ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``)."""
    require_transformers()
    import torch

    from ...llm import load_local_model
    from .config import TrainConfig
    from .stages import train_stage
    from .training import init_distributed

    cfg = _config(TrainConfig, adapter=args.adapter, rank=args.rank, alpha=args.alpha, lr=args.lr, epochs=args.epochs,
                  batch_size=args.batch_size, grad_accum=args.grad_accum, max_steps=args.max_steps,
                  warmup_steps=args.warmup_steps, seed=args.seed)
    rank, world, local = init_distributed()
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    try:
        model, tok = load_local_model(args.model, dtype=dtype, device=device)
        result, extra = train_stage(args.data, model, tok, args.out, config=cfg, evaluate=args.evaluate and world == 1)
    except (ValueError, OSError) as exc:
        raise Fail(str(exc)) from None
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0:
        first = result.step_losses[0] if result.step_losses else float("nan")
        last = result.step_losses[-1] if result.step_losses else float("nan")
        line = f"train: {result.steps} steps on {world} process(es), loss {first:.4f} -> {last:.4f}"
        if "loss_before" in extra:
            line += f"; packed-data loss {extra['loss_before']:.4f} -> {extra['loss_after']:.4f}"
        print(line + f"; saved to {args.out}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    require_transformers()
    import tempfile

    from .demo import run_demo

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lmops-domain-rc-"))
    summary = run_demo(out)
    print(f"demo: outputs in {out} (data/, trained/, and the tiny encoder/ and model/ directories); try e.g.\n"
          f"  lmops domain-rc cluster --data {out / 'data'} --encoder {out / 'encoder'} --tokenizer {out / 'model'} "
          f"--l-max 1600 --d-max 3")
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0
