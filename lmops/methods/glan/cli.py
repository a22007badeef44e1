"""``lmops glan``: GLAN instruction data from a taxonomy, and a response-only fine-tune on it.

- ``lmops glan run --taxonomy T --out DIR --llm URL|scripted [--model NAME] ...``: the data pipeline
  (resumes whatever DIR holds; model answers cached in ``DIR/llm_cache.sqlite``).
- ``lmops glan sft --data DIR/instructions.jsonl --model MODEL_DIR --out DIR [--lora|--reslora]``.
- ``lmops glan taxonomy --example | --check FILE | --generate --llm ... [--write FILE]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...cli.args import (
    Fail,
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
    require_transformers,
)

__all__ = ["add_parser", "run"]

SCRIPTED = "scripted"


def _backend(spec: str, model: str | None, args: argparse.Namespace, *, concurrency: int):
    """``scripted`` -> the offline recipe; a URL or a model directory -> :func:`lmops.llm.llm_from_spec`."""
    from ...llm import llm_from_spec

    def scripted():
        from .scripted import scripted_llm

        return scripted_llm(model or "glan-scripted", malformed=args.scripted_malformed, delay=args.scripted_delay)

    try:
        return llm_from_spec(spec, model=model, scripted=scripted, max_concurrency=concurrency)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise Fail(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from ...llm import CachedLLM
    from .config import GlanConfig
    from .decontam import load_benchmark_texts
    from .pipeline import run_glan
    from .taxonomy import load_taxonomy

    try:
        taxonomy = load_taxonomy(args.taxonomy)
    except FileNotFoundError:
        raise Fail(f"--taxonomy: {args.taxonomy} does not exist") from None
    except ValueError as exc:
        raise Fail(f"--taxonomy: {exc}") from None
    try:
        benchmarks = load_benchmark_texts(args.benchmark or [])
    except (FileNotFoundError, ValueError) as exc:
        raise Fail(f"--benchmark: {exc}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise Fail(f"--out: {args.out} exists and is not a directory")
    # an HTTP backend parallelizes one batch itself (workers = its concurrency); the scripted one is
    # sequential, so there workers are batches in flight at once
    http = args.llm != SCRIPTED
    batch = max(args.batch_size, args.workers) if http else args.batch_size
    try:
        config = GlanConfig(
            n_subject_queries=args.subject_queries, max_subjects_per_discipline=args.max_subjects,
            questions_per_syllabus=args.questions_per_syllabus, harder_fraction=args.harder_fraction,
            concept_sampling=args.concept_sampling, seed=args.seed, batch_size=batch,
            workers=1 if http else args.workers, ngram_n=args.ngram, min_ngram=min(args.min_ngram, args.ngram),
            decontaminate_answers=args.decontaminate_answers, dedupe_subjects=args.dedupe_subjects,
        )
    except ValueError as exc:
        raise Fail(str(exc)) from None
    llm = _backend(args.llm, args.model, args, concurrency=args.workers)
    answer_spec = args.answer_llm or args.llm
    answer_model = args.answer_model or args.model
    if answer_spec == args.llm and answer_model == args.model:
        answer = llm
    else:
        answer = _backend(answer_spec, answer_model, args, concurrency=args.workers)
    cache = out / "llm_cache.sqlite"
    gen = CachedLLM(llm, cache)
    ans = gen if answer is llm else CachedLLM(answer, cache)
    try:
        summary = run_glan(taxonomy, out, gen, answer_llm=ans, config=config, benchmarks=benchmarks,
                           progress=not args.quiet)
    finally:
        gen.close()
        ans.close()
    for line in summary.lines():
        print(line)
    print(f"wrote {out / 'instructions.jsonl'} (summary: {out / 'summary.json'})")
    if summary.counts.get("llm_errors"):
        print(f"lmops glan run: {summary.counts['llm_errors']} requests failed at the backend; rerun the same "
              "command to retry them (finished work is kept)", file=sys.stderr)
        return 1
    return 0


def _taxonomy(args: argparse.Namespace) -> int:
    from .taxonomy import (
        example_taxonomy_path,
        generate_taxonomy,
        load_taxonomy,
        save_taxonomy,
    )

    if args.example:
        text = example_taxonomy_path().read_text(encoding="utf-8")
        if args.write:
            Path(args.write).parent.mkdir(parents=True, exist_ok=True)
            save_taxonomy(load_taxonomy(example_taxonomy_path()), args.write)
            print(f"wrote the example taxonomy to {args.write}; edit it, then: "
                  f"lmops glan run --taxonomy {args.write} ...")
        else:
            sys.stdout.write(text)
        return 0
    if args.check:
        try:
            tax = load_taxonomy(args.check)
        except FileNotFoundError:
            raise Fail(f"--check: {args.check} does not exist") from None
        except ValueError as exc:
            raise Fail(str(exc)) from None
        disciplines = tax.disciplines()
        for d in disciplines:
            print(d.path_str)
        print(f"{args.check}: valid, {len(disciplines)} disciplines", file=sys.stderr)
        return 0
    if not args.llm:
        raise Fail("--generate: needs --llm URL|scripted (and --model NAME with a URL)")
    llm = _backend(args.llm, args.model, args, concurrency=4)
    try:
        tax, malformed = generate_taxonomy(llm)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    if args.write:
        save_taxonomy(tax, args.write)
        print(f"wrote {len(tax.disciplines())} disciplines to {args.write} ({malformed} malformed answers skipped); "
              "review and edit it (\"keep\": false removes a node) before lmops glan run")
    else:
        print(json.dumps(tax.to_dict(), indent=2, ensure_ascii=False))
    return 0


def _sft(args: argparse.Namespace) -> int:
    require_transformers()
    from .config import SFTConfig

    data, model_dir = Path(args.data), Path(args.model)
    if not data.is_file():
        raise Fail(f"--data: {args.data} is not a file (expected DIR/instructions.jsonl of lmops glan run)")
    if not (model_dir / "config.json").is_file():
        raise Fail(f"--model: {args.model} is not a model directory with config.json")
    adapter = "lora" if args.lora else "reslora" if args.reslora else None
    try:
        config = SFTConfig(
            epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
            grad_accum=args.grad_accum, warmup_steps=args.warmup_steps, max_length=args.max_length, adapter=adapter,
            lora_r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=tuple(args.target_modules),
            save_merged=args.merge, seed=args.seed,
        )
    except ValueError as exc:
        raise Fail(str(exc)) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .sft import load_pairs, save_sft, train_sft

    pairs = load_pairs(data)
    if not pairs:
        raise Fail(f"--data: {args.data} holds no record with a question and an answer")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    try:
        model, result = train_sft(model, tokenizer, pairs, config, template=args.template, progress=not args.quiet)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    save_sft(model, tokenizer, args.out, config, result, base_model=str(model_dir))
    first, last = result.losses[0], result.losses[-1]
    print(f"trained {result.steps} steps on {result.n_examples} pairs ({result.n_skipped} skipped); "
          f"response loss {first:.4f} -> {last:.4f}; trainable params {result.trainable_params:,} of "
          f"{result.total_params:,}")
    print(f"saved to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the sub-verb (``lmops glan`` alone prints its help)."""
    if getattr(args, "glan_func", None) is None:
        args.glan_parser.print_help()
        return 2
    return args.glan_func(args)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``glan`` with its sub-verbs to the ``lmops`` parser's subcommands."""
    glan = sub.add_parser("glan", help="GLAN: instruction data generated from a taxonomy, and SFT on it",
                          description="GLAN: instruction data from a taxonomy of human knowledge, and a "
                          "response-only fine-tune on it (arXiv 2402.13064).")
    glan.set_defaults(func=run, glan_parser=glan, glan_func=None)
    verbs = glan.add_subparsers(dest="glan_command", metavar="SUBCOMMAND")

    r = verbs.add_parser("run", help="generate instruction data from a taxonomy (resumable)",
                         description="Run GLAN's pipeline: subjects per discipline, a syllabus per subject, "
                         "homework questions from sampled sessions and concepts, answers from a separate model, "
                         "n-gram decontamination. Rerun the same command to resume after an interruption.")
    r.add_argument("--taxonomy", required=True, metavar="FILE",
                   help="taxonomy JSON (see lmops glan taxonomy --example)")
    r.add_argument("--out", required=True, metavar="DIR", help="run directory (instructions.jsonl, stage files, cache)")
    r.add_argument("--llm", required=True, metavar="URL|scripted",
                   help="an OpenAI-compatible server's base URL, or 'scripted' (the offline recipe)")
    r.add_argument("--model", default=None, metavar="NAME", help="the generator model (required with a URL)")
    r.add_argument("--answer-llm", default=None, metavar="URL|scripted",
                   help="the answer model's server (default: --llm)")
    r.add_argument("--answer-model", default=None, metavar="NAME", help="the answer model (default: --model)")
    r.add_argument("--benchmark", nargs="+", action="extend", default=[], metavar="FILE",
                   help="benchmark texts to decontaminate against (.jsonl/.json: every string; else one per line)")
    r.add_argument("--workers", type=positive_int, default=4,
                   help="concurrent requests to a URL backend, or batches in flight for 'scripted' (default 4)")
    r.add_argument("--batch-size", type=positive_int, default=16, help="units per model call (default 16)")
    r.add_argument("--subject-queries", type=positive_int, default=10, help="subject lists per discipline (paper: 10)")
    r.add_argument("--max-subjects", type=positive_int, default=None, help="use the first N subjects per discipline")
    r.add_argument("--questions-per-syllabus", type=positive_int, default=10,
                   help="questions per syllabus (default 10)")
    r.add_argument("--harder-fraction", type=fraction, default=0.5,
                   help="share of two-session questions, the paper's strategy (b) (default 0.5)")
    r.add_argument("--concept-sampling", choices=("combination", "size"), default="combination",
                   help="uniform over concept combinations (default) or over their number first")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--ngram", type=positive_int, default=13, help="decontamination n-gram length in words (default 13)")
    r.add_argument("--min-ngram", type=positive_int, default=8,
                   help="benchmark texts shorter than --ngram words are matched whole from this length (default 8)")
    r.add_argument("--decontaminate-answers", action="store_true", help="also check the answers")
    r.add_argument("--dedupe-subjects", action="store_true", help="drop repeated subject names within a discipline")
    r.add_argument("--scripted-malformed", type=fraction, default=0.0,
                   help="'scripted' only: fraction of malformed structured answers (tests the skip path)")
    r.add_argument("--scripted-delay", type=non_negative_float, default=0.0,
                   help="'scripted' only: seconds to sleep per completion")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(glan_func=_run)

    s = verbs.add_parser("sft", help="fine-tune a causal LM on the pairs (loss on response tokens only)",
                         description="Fine-tune a transformers causal LM on GLAN pairs with the loss on the response "
                         "tokens only: AdamW, cosine schedule with warm-up; optionally LoRA or ResLoRA adapters.")
    s.add_argument("--data", required=True, metavar="FILE", help="instructions.jsonl of lmops glan run")
    s.add_argument("--model", required=True, metavar="MODEL_DIR", help="a Hugging Face model directory")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    adapters = s.add_mutually_exclusive_group()
    adapters.add_argument("--lora", action="store_true", help="train LoRA adapters (peft)")
    adapters.add_argument("--reslora", action="store_true", help="train ResLoRA adapters (lmops.reslora)")
    s.add_argument("--merge", action="store_true", help="save the model with the adapters merged in")
    s.add_argument("--epochs", type=positive_int, default=3)
    s.add_argument("--max-steps", type=positive_int, default=None)
    s.add_argument("--lr", type=positive_float, default=2e-5)
    s.add_argument("--batch-size", type=positive_int, default=4)
    s.add_argument("--grad-accum", type=positive_int, default=1)
    s.add_argument("--warmup-steps", type=int, default=None, help="default: 3%% of the steps")
    s.add_argument("--max-length", type=positive_int, default=1024)
    s.add_argument("--lora-r", type=positive_int, default=8)
    s.add_argument("--lora-alpha", type=positive_float, default=16.0)
    s.add_argument("--target-modules", nargs="+", default=["q_proj", "v_proj"], metavar="NAME")
    s.add_argument("--template", choices=("auto", "chat", "plain"), default="auto",
                   help="prompt format: the tokenizer's chat template if any (auto), or ### Instruction/### Response")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(glan_func=_sft)

    t = verbs.add_parser("taxonomy", help="print, check or draft a taxonomy file",
                         description="The taxonomy is a JSON tree (fields -> sub-fields -> disciplines) that people "
                         "edit; 'keep': false removes a node and its descendants.")
    what = t.add_mutually_exclusive_group(required=True)
    what.add_argument("--example", action="store_true", help="the shipped example (3 fields, 6 disciplines)")
    what.add_argument("--check", metavar="FILE", help="validate FILE and list its disciplines")
    what.add_argument("--generate", action="store_true", help="draft one with a model (review it before use)")
    t.add_argument("--write", metavar="FILE", help="write to FILE instead of printing")
    t.add_argument("--llm", default=None, metavar="URL|scripted", help="with --generate")
    t.add_argument("--model", default=None, metavar="NAME", help="with --generate and a URL")
    t.set_defaults(glan_func=_taxonomy, scripted_malformed=0.0, scripted_delay=0.0)
    return glan
