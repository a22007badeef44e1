"""``lmops se2``: Se2's verbs.

- ``lmops se2 demo``    the whole pipeline offline on a synthetic task: accuracy of Se2, random and BM25
- ``lmops se2 score``   sample and score candidate sequences with an LLM -> a data directory (resumable)
- ``lmops se2 train``   train the dual encoder on a data directory -> a retriever directory
- ``lmops se2 select``  beam-search the examples of each query -> a JSONL file of pool ids and prompts
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ...cli.args import Fail, positive_int, require_transformers

__all__ = ["add_parser", "make_llm", "run"]

CACHE_FILE = "llm_cache.sqlite"


def make_llm(spec: str, *, model: str | None = None, cache: Path | None = None):
    """The LLM named by ``--llm``: ``scripted`` (the demo's), an ``http(s)://`` URL of an OpenAI-compatible
    server (``--model`` names the model), or a local causal-LM directory (``DIR`` or ``hf:DIR``); wrapped in
    a :class:`~lmops.llm.CachedLLM` at ``cache`` when given. Uses ``lmops.llm.llm_from_spec`` (every
    verb's one ``--llm`` parser) where this lmops has it."""
    from .demo import scripted_llm

    spec = spec.removeprefix("hf:")
    try:
        from ...llm.spec import llm_from_spec
    except ImportError:  # an lmops without the shared parser: the scripted LLM still works
        llm_from_spec = None
    if llm_from_spec is not None:
        if not spec.startswith(("http://", "https://")) and spec != "scripted" and Path(spec).expanduser().is_dir():
            require_transformers()
        try:
            return llm_from_spec(spec, model=model, scripted=scripted_llm, cache=cache)
        except ValueError as exc:
            raise Fail(str(exc)) from None
    if spec != "scripted":
        raise Fail(f"--llm {spec}: this lmops has only the scripted LLM (no lmops.llm.llm_from_spec)")
    from ...llm import CachedLLM

    return CachedLLM(scripted_llm(), cache) if cache is not None else scripted_llm()


def _examples(path: str, what: str):
    from .data import read_examples

    try:
        examples = read_examples(Path(path).expanduser())
    except FileNotFoundError:
        raise Fail(f"{what}: {path} does not exist") from None
    except ValueError as exc:
        raise Fail(f"{what}: {exc}") from None
    if not examples:
        raise Fail(f"{what}: {path} holds no example")
    return examples


def _template(args: argparse.Namespace):
    from .data import Template

    try:
        return Template(question_format=args.question_format, answer_format=args.answer_format)
    except (TypeError, ValueError) as exc:
        raise Fail(str(exc)) from None


def _demo(args: argparse.Namespace) -> int:
    require_transformers()
    import torch

    from .demo import run_demo

    torch.set_num_threads(args.threads)  # the demo's encoders are tiny: one thread is the fastest
    run_demo(args.seed, progress=args.progress)  # prints a line per stage, the accuracies last
    return 0


def _score(args: argparse.Namespace) -> int:
    from ...common.files import atomic_write
    from .config import ScoreConfig
    from .data import Pool, write_examples, write_records
    from .sampling import score_candidates

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise Fail(f"--out: {args.out} exists and is not a directory")
    template = _template(args)
    try:
        pool = Pool(_examples(args.pool, "--pool"))
        config = ScoreConfig(n_candidates=args.n_candidates, steps=args.steps, chunk_size=args.chunk_size)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    queries = _examples(args.queries, "--queries") if args.queries else list(pool.examples)
    out.mkdir(parents=True, exist_ok=True)
    llm = make_llm(args.llm, model=args.model, cache=out / CACHE_FILE)
    write_examples(out / "pool.jsonl", pool.examples)
    write_examples(out / "queries.jsonl", queries)

    def save_step(step: int, train, valid) -> None:
        write_records(out / f"step{step}_train.jsonl", train)
        write_records(out / f"step{step}_valid.jsonl", valid)

    try:
        data = score_candidates(llm, pool, queries, config=config, template=template, progress=not args.quiet,
                                on_step=save_step)
    except (ValueError, TypeError) as exc:
        raise Fail(str(exc)) from None
    except NotImplementedError as exc:
        raise Fail(f"--llm: {exc} (classification scoring needs loglikelihood)") from None
    write_records(out / "train.jsonl", data.train)
    write_records(out / "valid.jsonl", data.valid)
    meta = {"config": config.to_dict(), "template": template.to_dict(), "n_train": len(data.train),
            "n_valid": len(data.valid), "skipped_candidates": data.skipped, "llm": getattr(llm, "name", args.llm)}
    atomic_write(out / "score.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    print(f"{out}: {len(data.train)} train / {len(data.valid)} valid records"
          + (f", {data.skipped} candidates skipped after failed LLM calls" if data.skipped else ""))
    return 0


def _train(args: argparse.Namespace) -> int:
    require_transformers()
    from .config import TrainConfig
    from .data import Pool, Template, read_records
    from .retriever import DualEncoder
    from .training import train_retriever

    data = Path(args.data).expanduser()
    need = ["pool.jsonl", "queries.jsonl", "train.jsonl", "valid.jsonl"]
    missing = [n for n in need if not (data / n).is_file()]
    if missing:
        raise Fail(f"--data: {args.data} lacks {', '.join(missing)} (write it with `lmops se2 score`)")
    try:
        pool = Pool(_examples(str(data / "pool.jsonl"), "--data pool"))
        queries = _examples(str(data / "queries.jsonl"), "--data queries")
        train, valid = read_records(data / "train.jsonl"), read_records(data / "valid.jsonl")
        meta = json.loads((data / "score.json").read_text()) if (data / "score.json").is_file() else {}
        template = Template.from_dict(meta.get("template", {}))
        config = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                             warmup_steps=args.warmup_steps, n_hard_negatives=args.hard_negatives,
                             n_random_negatives=args.random_negatives, seed=args.seed)
    except (ValueError, TypeError) as exc:
        raise Fail(str(exc)) from None
    try:
        model = DualEncoder.from_encoder(args.encoder, max_query_length=args.max_query_length,
                                         max_context_length=args.max_context_length, template=template)
    except (OSError, ValueError) as exc:
        raise Fail(f"--encoder: cannot load {args.encoder}: {exc}") from None
    try:
        report = train_retriever(model, train, valid, pool, queries, config, progress=not args.quiet)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    model.save_pretrained(Path(args.out).expanduser(), extra={"train_config": config.to_dict(),
                                                              "report": dataclasses.asdict(report)})
    print(f"{args.out}: dual encoder trained on {report.n_train} records ({report.n_valid} valid), "
          f"kept epoch {report.best_epoch + 1}")
    return 0


def _select(args: argparse.Namespace) -> int:
    require_transformers()
    from ...common.jsonl import write_jsonl
    from .beam import select, token_counter
    from .config import SelectConfig
    from .data import Pool
    from .retriever import DualEncoder

    try:
        retriever = DualEncoder.from_pretrained(Path(args.retriever).expanduser())
    except (OSError, ValueError) as exc:
        raise Fail(f"--retriever: {exc}") from None
    try:
        pool = Pool(_examples(args.pool, "--pool"))
        config = SelectConfig(beam_size=args.beam_size, shots=args.shots, max_prompt_tokens=args.max_prompt_tokens)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    queries = _examples(args.queries, "--queries")
    length_fn = len
    if args.tokenizer:
        from transformers import AutoTokenizer

        try:
            length_fn = token_counter(AutoTokenizer.from_pretrained(args.tokenizer))
        except (OSError, ValueError) as exc:
            raise Fail(f"--tokenizer: cannot load {args.tokenizer}: {exc}") from None
    selections = select(retriever, pool, queries, config, length_fn=length_fn, progress=not args.quiet)
    out = Path(args.out).expanduser()
    write_jsonl(out, selections)
    print(f"{out}: examples for {len(selections)} queries")
    if args.llm:
        from .inference import evaluate

        llm = make_llm(args.llm, model=args.model)
        result = evaluate(llm, queries, [s.prompt.text for s in selections], template=retriever.template)
        kind = "accuracy" if queries[0].is_classification else "mean metric"
        print(f"{kind} {result.score:.4f} on {len(queries) - result.skipped} queries"
              + (f" ({result.skipped} skipped after failed LLM calls)" if result.skipped else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "se2_func", None)
    if action is None:
        args.se2_parser.print_help(sys.stderr)
        return 2
    return action(args)


def _template_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--question-format", default="{question}", help='query rendering (default "{question}")')
    p.add_argument("--answer-format", default=" {answer}", help='answer rendering (default " {answer}")')


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``se2`` and its sub-verbs to the ``lmops`` parser's subcommands."""
    se2 = sub.add_parser(
        "se2",
        help="Se2: sequential example selection for in-context learning (demo, score, train, select)",
        description="Se2 (arXiv 2402.13874): score example sequences with an LLM, train a dual-encoder retriever "
        "on that feedback, and select each query's examples by beam search.",
    )
    se2.set_defaults(func=run, se2_func=None, se2_parser=se2)
    verbs = se2.add_subparsers(dest="se2_command", metavar="SUBCOMMAND")

    demo = verbs.add_parser("demo", help="the whole pipeline offline on a synthetic task (about 15 s)",
                            description="Score, train, select and evaluate on an embedded synthetic task with a "
                            "scripted LLM whose feedback has a planted best sequence; prints the accuracy of Se2, "
                            "random and BM25 selection.")
    demo.add_argument("--seed", type=int, default=0, help="data, sampling and training seed (default 0)")
    demo.add_argument("--progress", action="store_true", help="show progress bars")
    demo.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    demo.set_defaults(se2_func=_demo)

    score = verbs.add_parser("score", help="sample and score candidate sequences with an LLM -> data directory",
                             description="Three-step sequential sampling scored by the LLM; writes pool.jsonl, "
                             "queries.jsonl, each step's split, the merged train.jsonl/valid.jsonl and an LLM cache "
                             "(a rerun resumes from it).")
    score.add_argument("--pool", required=True, help="prompt pool, JSONL of {id, question, answer[, options, gold]}")
    score.add_argument("--queries", default=None, help="queries to build records for (default: the pool)")
    score.add_argument("--llm", required=True,
                       help="'scripted' (the demo's), an http(s) URL of an OpenAI-compatible server, or a local "
                       "causal-LM directory (DIR or hf:DIR)")
    score.add_argument("--model", default=None, help="the served model's name (with an http --llm)")
    score.add_argument("--out", required=True, help="output directory")
    score.add_argument("--n-candidates", type=positive_int, default=50, help="L, candidates per record (default 50)")
    score.add_argument("--steps", type=positive_int, default=3, help="sequential steps (default 3)")
    score.add_argument("--chunk-size", type=positive_int, default=64, help="candidates per LLM call (default 64)")
    score.add_argument("--quiet", action="store_true", help="no progress bars")
    _template_args(score)
    score.set_defaults(se2_func=_score)

    train = verbs.add_parser("train", help="train the dual-encoder retriever on a scored data directory",
                             description="Train a query encoder and a context encoder (two copies of --encoder) on "
                             "the scored records; keeps the weights with the best validation loss.")
    train.add_argument("--data", required=True, help="directory written by `lmops se2 score`")
    train.add_argument("--encoder", required=True, help="a transformers encoder name or directory (e.g. a BERT)")
    train.add_argument("--out", required=True, help="retriever output directory")
    train.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5)")
    train.add_argument("--epochs", type=positive_int, default=6, help="epochs (default 6)")
    train.add_argument("--batch-size", type=positive_int, default=8, help="records per step (default 8)")
    train.add_argument("--warmup-steps", type=int, default=1000, help="linear warmup steps (default 1000)")
    train.add_argument("--hard-negatives", type=int, default=20, help="hard negatives per record (default 20)")
    train.add_argument("--random-negatives", type=int, default=20, help="random negatives per record (default 20)")
    train.add_argument("--max-query-length", type=positive_int, default=512, help="query tokens (default 512)")
    train.add_argument("--max-context-length", type=positive_int, default=512, help="context tokens (default 512)")
    train.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(se2_func=_train)

    sel = verbs.add_parser("select", help="beam-search each query's examples with a trained retriever",
                           description="Writes one JSON line per query: its chosen pool ids (prompt order, the "
                           "nearest to the query last), the beam score and the prompt.")
    sel.add_argument("--retriever", required=True, help="directory written by `lmops se2 train`")
    sel.add_argument("--pool", required=True, help="prompt pool JSONL (the one the retriever was trained with)")
    sel.add_argument("--queries", required=True, help="queries JSONL")
    sel.add_argument("--out", required=True, help="output JSONL file")
    sel.add_argument("--beam-size", type=positive_int, default=3, help="beam width (default 3)")
    sel.add_argument("--shots", type=positive_int, default=3, help="examples per query (default 3)")
    sel.add_argument("--max-prompt-tokens", type=positive_int, default=None,
                     help="prompt budget; the examples farthest from the query are dropped first (default: none)")
    sel.add_argument("--tokenizer", default=None,
                     help="tokenizer counting the budget (a transformers name or directory; default: characters)")
    sel.add_argument("--llm", default=None, help="also evaluate the prompts with this LLM (as in score)")
    sel.add_argument("--model", default=None, help="the served model's name (with an http --llm)")
    sel.add_argument("--quiet", action="store_true", help="no progress bars")
    sel.set_defaults(se2_func=_select)
    return se2
