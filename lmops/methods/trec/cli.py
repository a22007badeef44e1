"""``lmops trec``: TREC's verbs.

- ``lmops trec train``   train a denoiser (the shipped synthetic task, or ``--data`` JSONL) -> a checkpoint directory
- ``lmops trec sample``  generate from a checkpoint for ``--source`` texts or an ``--input`` JSONL (BLEU when it has targets)
- ``lmops trec ablate``  plain / +RC / +TAVS / +both on the synthetic task with several seeds: BLEU mean ± std
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...cli.args import (
    Fail,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

__all__ = ["add_parser", "run"]

EVAL_NAME = "eval.json"


def _read(path: str, what: str):
    from .data import read_examples

    try:
        examples, bad = read_examples(Path(path).expanduser())
    except FileNotFoundError:
        raise Fail(f"{what}: {path} does not exist") from None
    if bad:
        print(f"{what}: skipped {len(bad)} malformed line(s), e.g. line {bad[0][0]}: {bad[0][1]}", file=sys.stderr)
    if not examples:
        raise Fail(f"{what}: {path} holds no {{'source', 'target'}} example")
    return examples


def _device(name: str):
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Fail(f"--device {name}: CUDA is not available here")
    return torch.device(name)


def _train(args: argparse.Namespace) -> int:
    import torch

    from ...common.files import atomic_write
    from .config import DiffusionConfig, ModelConfig, SampleConfig, TrainConfig
    from .data import Vocab, synthetic_splits
    from .schedule import NoiseSchedule
    from .training import build_model, evaluate, train

    torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise Fail(f"--out: {args.out} exists and is not a directory")
    if args.data:
        train_set = _read(args.data, "--data")
        test_set = _read(args.test, "--test") if args.test else []
    else:
        if args.test:
            raise Fail("--test: needs --data (the synthetic task makes its own test set)")
        try:
            train_set, test_set = synthetic_splits(args.n_train, 200, seed=0, min_len=args.min_len, max_len=args.max_len)
        except ValueError as exc:
            raise Fail(str(exc)) from None
    vocab = Vocab.build(list(train_set) + list(test_set))
    src_len = max(len(e.source.split()) for e in list(train_set) + list(test_set))
    tgt_len = max(len(e.target.split()) for e in list(train_set) + list(test_set))
    try:
        mcfg = ModelConfig(vocab_size=len(vocab), embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                           num_heads=args.heads, ffn_dim=2 * args.hidden_dim, encoder_layers=args.encoder_layers,
                           denoiser_layers=args.denoiser_layers, max_source_len=src_len,
                           target_len=args.target_len or tgt_len, dropout=args.dropout,
                           linear="bitlinear" if args.bitlinear else "linear")
        dcfg = DiffusionConfig(num_timesteps=args.timesteps, schedule=args.schedule)
        tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           rc_weight=args.rc_weight, rc_clip=args.rc_clip, rc_action=args.rc_action,
                           tavs_gamma=args.tavs_gamma, checkpoint_every=args.checkpoint_every)
        if mcfg.target_len < tgt_len:
            raise ValueError(f"--target-len: {mcfg.target_len} is shorter than the longest target ({tgt_len} words)")
    except (TypeError, ValueError) as exc:
        raise Fail(str(exc)) from None
    model = build_model(mcfg, seed=args.seed).to(_device(args.device))
    schedule = NoiseSchedule(dcfg.schedule, dcfg.num_timesteps)
    try:
        result = train(model, schedule, vocab, train_set, tcfg, out=out, resume=args.resume, progress=not args.quiet)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    last = result.history[-1] if result.history else {}
    print(f"{out}: step {result.step}" + (f", loss {last['loss']:.4f}" if "loss" in last else ""))
    if test_set:
        ev = evaluate(model, schedule, vocab, test_set, SampleConfig(steps=args.sample_steps))
        report = {"step": result.step, "bleu": ev.bleu, "exact": ev.exact, "n_test": len(test_set),
                  "sample_steps": args.sample_steps}
        atomic_write(out / EVAL_NAME, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
        print(f"test BLEU {ev.bleu:.2f}, exact match {ev.exact:.3f} ({len(test_set)} pairs, {args.sample_steps} steps)")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from ...common.jsonl import write_jsonl
    from .config import SampleConfig
    from .sampling import corpus_bleu, generate
    from .training import load_model

    torch.set_num_threads(args.threads)
    if not args.source and not args.input:
        raise Fail("give --source TEXT (repeatable) or --input JSONL")
    try:
        loaded = load_model(Path(args.model).expanduser(), device=_device(args.device))
    except (FileNotFoundError, ValueError) as exc:
        raise Fail(f"--model: {exc}") from None
    examples = _read(args.input, "--input") if args.input else []
    sources = list(args.source or []) + [e.source for e in examples]
    try:
        cfg = SampleConfig(steps=args.steps, eta=args.eta, clamp=args.clamp, seed=args.seed)
        outputs = generate(loaded.model, loaded.schedule, loaded.vocab, sources, cfg)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    if args.output:
        write_jsonl(Path(args.output).expanduser(),
                    [{"source": s, "output": o} for s, o in zip(sources, outputs)])
    else:
        for o in outputs:
            print(o)
    with_targets = [(o, e.target) for o, e in zip(outputs[len(args.source or []):], examples) if e.target.strip()]
    if with_targets:
        bleu = corpus_bleu([o for o, _ in with_targets], [" ".join(t.split()) for _, t in with_targets])
        print(f"BLEU {bleu:.2f} on {len(with_targets)} pairs of {args.input}", file=sys.stderr if not args.output else sys.stdout)
    return 0


def _ablate(args: argparse.Namespace) -> int:
    import torch

    from ...common.files import atomic_write
    from .ablation import format_table, run_ablation
    from .config import AblationConfig

    torch.set_num_threads(args.threads)
    try:
        cfg = AblationConfig(seeds=args.seeds, train_steps=args.train_steps, rc_weight=args.rc_weight,
                             tavs_gamma=args.tavs_gamma, min_len=args.min_len, max_len=args.max_len,
                             sample_steps=args.sample_steps)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise Fail(f"--out: {args.out} is a directory (expected a JSON file path)")
    result = run_ablation(cfg, progress=False, log=None if args.quiet else (lambda line: print(line, file=sys.stderr)))
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result.to_dict(), indent=2) + "\n"))
    print(format_table(result))
    print(f"results: {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``trec`` and its sub-verbs to the ``lmops`` parser's subcommands."""
    parser = sub.add_parser("trec", help="TREC: text diffusion with Reinforced Conditioning (train, sample, ablate)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=run, trec_func=None, trec_parser=parser)
    verbs = parser.add_subparsers(dest="trec_command", metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1: tiny models)")

    p = verbs.add_parser("train", help="train a denoiser -> a checkpoint directory")
    p.add_argument("--out", required=True, help="checkpoint directory (written atomically)")
    p.add_argument("--data", help="training JSONL of {'source', 'target'} (default: the synthetic task)")
    p.add_argument("--test", help="test JSONL (with --data): BLEU after training")
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="examples per step (default 64)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of weights, data order and noise")
    p.add_argument("--rc-weight", type=non_negative_float, default=0.0, help="Reinforced Conditioning weight (0 = off)")
    p.add_argument("--rc-clip", type=positive_float, default=0.5, help="advantage clip eps (reward scale 0-1)")
    p.add_argument("--rc-action", choices=("argmax", "sample"), default="argmax")
    p.add_argument("--tavs-gamma", type=non_negative_float, default=0.0, help="Time-Aware Variance Scaling (0 = off)")
    p.add_argument("--timesteps", type=positive_int, default=2000, help="T")
    p.add_argument("--schedule", choices=("sqrt", "cosine", "linear"), default="sqrt")
    p.add_argument("--embed-dim", type=positive_int, default=16)
    p.add_argument("--hidden-dim", type=positive_int, default=64)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--encoder-layers", type=non_negative_int, default=1)
    p.add_argument("--denoiser-layers", type=positive_int, default=2)
    p.add_argument("--target-len", type=positive_int, help="fixed target length (default: the longest target)")
    p.add_argument("--dropout", type=non_negative_float, default=0.0)
    p.add_argument("--bitlinear", action="store_true", help="BitNet b1.58 linears (lmops.BitLinear, QAT)")
    p.add_argument("--n-train", type=positive_int, default=4000, help="synthetic task: training pairs")
    p.add_argument("--min-len", type=positive_int, default=3, help="synthetic task: shortest source")
    p.add_argument("--max-len", type=positive_int, default=8, help="synthetic task: longest source")
    p.add_argument("--sample-steps", type=positive_int, default=20, help="DDIM steps of the final evaluation")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    common(p)
    p.set_defaults(trec_func=_train)

    p = verbs.add_parser("sample", help="generate with a trained checkpoint")
    p.add_argument("--model", required=True, help="checkpoint directory from `lmops trec train`")
    p.add_argument("--source", action="append", help="a source text (repeatable)")
    p.add_argument("--input", help="JSONL of {'source', 'target'} (BLEU is printed when targets are non-empty)")
    p.add_argument("--output", help="write {'source', 'output'} JSONL here instead of printing")
    p.add_argument("--steps", type=positive_int, default=20, help="DDIM steps (T = all)")
    p.add_argument("--eta", type=non_negative_float, default=0.0)
    p.add_argument("--clamp", action="store_true", help="snap each x0 estimate to the nearest embedding")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default="cpu")
    common(p)
    p.set_defaults(trec_func=_sample)

    p = verbs.add_parser("ablate", help="plain / +RC / +TAVS / +both with several seeds on the synthetic task")
    p.add_argument("--seeds", type=positive_int, default=3, help="training seeds per setting (default 3)")
    p.add_argument("--train-steps", type=positive_int, default=400, help="training steps per run (default 400)")
    p.add_argument("--rc-weight", type=positive_float, default=1.0, help="RC weight of the +RC settings (default 1)")
    p.add_argument("--tavs-gamma", type=positive_float, default=0.5, help="TAVS gamma of the +TAVS settings (default 0.5)")
    p.add_argument("--min-len", type=positive_int, default=8, help="synthetic task: shortest source (default 8)")
    p.add_argument("--max-len", type=positive_int, default=16, help="synthetic task: longest source (default 16)")
    p.add_argument("--sample-steps", type=positive_int, default=20, help="DDIM steps of each evaluation (default 20)")
    p.add_argument("--out", default="trec_ablation.json", help="JSON result file (default ./trec_ablation.json)")
    p.add_argument("--quiet", action="store_true", help="no per-run lines")
    common(p)
    p.set_defaults(trec_func=_ablate)

    return parser


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "trec_func", None)
    if action is None:
        args.trec_parser.print_help(sys.stderr)
        return 2
    return int(action(args) or 0)
