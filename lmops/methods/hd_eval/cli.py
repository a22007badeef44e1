"""``lmops hd-eval``: fit an HD-Eval evaluator on JSONL, predict with it, or run the offline demo.

- ``lmops hd-eval demo``     fit on the bundled examples with a scripted judge (no model, no network)
- ``lmops hd-eval fit``      ``--data train.jsonl --task "..." --criteria a,b,c --llm SPEC --out model.json``
- ``lmops hd-eval predict``  ``--model model.json --data test.jsonl --out preds.jsonl``

JSONL lines: ``{"sample": str, "score": float | null, "system": str (optional)}``. ``--llm`` is
``scripted`` (the demo's judge), an ``http(s)://`` base URL of an OpenAI-compatible server (with
``--llm-model NAME``), or a local Hugging Face model directory (``DIR`` or ``hf:DIR``). Every answer is
cached in an SQLite file next to ``--out`` (``--cache`` to move it), so a rerun costs nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...cli.args import Fail, fraction_below_one, positive_int, report_skipped

__all__ = ["add_parser", "run"]

EXAMPLES = Path(__file__).resolve().parent / "examples"


def _open_llm(spec: str, model_name: str | None, cache: Path | None):
    """The backend ``--llm`` names (:func:`lmops.llm.llm_from_spec`), cached when ``cache`` is given."""
    from ...llm import llm_from_spec

    def scripted():
        from .scripted import demo_judge

        return demo_judge().llm

    if not spec.startswith(("http://", "https://", "scripted")):
        from ...cli.args import require_transformers

        require_transformers()
    try:
        return llm_from_spec(spec.removeprefix("hf:"), model=model_name, scripted=scripted, cache=cache)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise Fail(str(exc)) from None


def _records(path: str):
    from .data import read_records

    try:
        records, bad = read_records(path)
    except FileNotFoundError:
        raise Fail(f"--data: {path} does not exist") from None
    report_skipped(path, bad)
    if not records:
        raise Fail(f"--data: {path} holds no record with a 'sample'")
    return records


def _systems(records) -> list[str] | None:
    if all(r.system is None for r in records):
        return None
    return [r.system if r.system is not None else "(none)" for r in records]


def _criteria(text: str) -> list[str]:
    if text.startswith("@"):
        try:
            lines = Path(text[1:]).expanduser().read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise Fail(f"--criteria: cannot read {text[1:]}: {exc}") from None
        items = [line.strip() for line in lines if line.strip()]
    else:
        items = [c.strip() for c in text.split(",") if c.strip()]
    if not items:
        raise Fail("--criteria: expected 'a,b,c' or @FILE with one 'name: description' per line")
    return items


def summary(report: dict) -> str:
    """The report as a few readable lines."""
    lines = [f"task: {report['task']}", f"aggregator: {report['aggregator']} ({report['mode']}), "
             f"scores by {report['scoring']}, outputs rounded: {report['outputs_rounded']}",
             f"samples: {report['n_train']} train, {report['n_valid']} held out, "
             f"{report['nan_human_skipped']} without a human score skipped, "
             f"{report['missing_total']} criterion scores missing (imputed)", "criteria:"]
    for c in report["criteria"]:
        indent = "  " * c["depth"]
        if c["role"] == "input":
            w = "n/a" if c["weight"] is None else f"{c['weight']:+.3f}"
            lines.append(f"{indent}{c['path']}: weight {w}, attribution {c['attribution']:.1%}")
        elif c["role"] == "pruned":
            lines.append(f"{indent}{c['path']}: PRUNED: {c['prune_reason']}")
        else:
            lines.append(f"{indent}{c['path']}: {c['role']}" + (f" ({c['note']})" if c["note"] else ""))
    for split in ("train", "heldout"):
        got = report.get(split)
        if not got:
            continue
        for level in ("sample", "system"):
            m = got.get(level)
            if not m:
                continue
            vals = ", ".join(f"{k} {m[k]:.3f}" if m[k] is not None else f"{k} n/a"
                             for k in ("pearson", "spearman", "kendall"))
            count = m.get("n", m.get("n_systems"))
            lines.append(f"{split} {level}-level (n={count}): {vals}")
    return "\n".join(lines)


def _fit_options(args: argparse.Namespace) -> dict:
    return dict(aggregator=args.aggregator, mode=args.mode, max_depth=args.max_depth, rounds=args.rounds,
                prune=args.prune, prune_threshold=args.threshold, valid_fraction=args.valid_fraction,
                seed=args.seed, round_outputs=args.round_outputs, progress=not args.quiet)


def _fit(args: argparse.Namespace, records, llm, task: str, criteria: list[str]):
    from .hd_eval import HDEval

    try:
        model = HDEval(llm, task, criteria, **_fit_options(args))
        model.fit([r.sample for r in records], [r.score for r in records], systems=_systems(records))
    except ValueError as exc:
        raise Fail(str(exc)) from None
    return model


def run_fit(args: argparse.Namespace) -> int:
    records = _records(args.data)
    out = Path(args.out).expanduser()
    cache = None if args.no_cache else Path(args.cache or f"{out}.llm-cache.sqlite").expanduser()
    llm = _open_llm(args.llm, args.llm_model, cache)
    model = _fit(args, records, llm, args.task, _criteria(args.criteria))
    model.save(out, extra={"llm": {"spec": args.llm, "model": args.llm_model}})  # predict reuses it
    print(summary(model.report()))
    print(f"model written to {out}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .data import write_predictions
    from .hd_eval import HDEval
    from .metrics import correlations, system_correlations

    path = Path(args.model).expanduser()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Fail(f"--model: cannot read {args.model}: {exc}") from None
    spec = args.llm or (saved.get("llm") or {}).get("spec")
    if not spec:
        raise Fail("--llm: the model file does not say which LLM fit it; give --llm")
    name = args.llm_model or (saved.get("llm") or {}).get("model")
    records = _records(args.data)
    out = Path(args.out).expanduser()
    cache = None if args.no_cache else Path(args.cache or f"{out}.llm-cache.sqlite").expanduser()
    try:
        model = HDEval.from_dict(saved, _open_llm(spec, name, cache))
    except (ValueError, KeyError, TypeError) as exc:
        raise Fail(f"--model: {args.model} is not a saved HD-Eval model: {exc}") from None
    if args.quiet:
        model.config.progress = False
    preds = model.predict([r.sample for r in records])
    write_predictions(out, records, preds)
    print(f"{len(preds)} predictions written to {out}")
    labelled = [(p, r) for p, r in zip(preds, records) if r.has_score]
    if len(labelled) >= 3:
        sample = correlations([p for p, _ in labelled], [r.score for _, r in labelled])
        print("sample-level vs the file's scores: " + json.dumps(sample))
        systems = _systems([r for _, r in labelled])
        if systems is not None:
            print("system-level: " + json.dumps(system_correlations(
                [p for p, _ in labelled], [r.score for _, r in labelled], systems)))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .scripted import DEMO_CRITERIA, DEMO_TASK

    records = _records(str(EXAMPLES / "summaries.jsonl"))
    llm = _open_llm("scripted", None, None)
    model = _fit(args, records, llm, DEMO_TASK, DEMO_CRITERIA)
    report = model.report()
    print(json.dumps(report, indent=1) if args.json else summary(report))
    if args.out:
        out = Path(args.out).expanduser()
        model.save(out)
        print(f"model written to {out}")
    return 0


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aggregator", default="linear", help="linear (default) or mlp")
    p.add_argument("--mode", choices=("horizontal", "vertical"), default="horizontal",
                   help="one aggregator over all leaves (default), or each criterion from its children")
    p.add_argument("--max-depth", type=positive_int, default=2, help="deepest criteria level (default 2)")
    p.add_argument("--rounds", type=positive_int, default=2, help="fit-and-prune passes (default 2)")
    p.add_argument("--prune", choices=("attribution", "permutation", "none"), default="attribution")
    p.add_argument("--threshold", type=fraction_below_one, default=0.05,
                   help="prune below this share of an aggregator's attribution (default 0.05)")
    p.add_argument("--valid-fraction", type=fraction_below_one, default=0.2, help="held out for the report (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-outputs", action="store_true", help="round predictions to integers")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_llm_options(p: argparse.ArgumentParser, *, required: bool, model_alias: bool = False) -> None:
    p.add_argument("--llm", required=required, default=None,
                   help="scripted | http(s)://base-url | a Hugging Face model directory (or hf:DIR)")
    names = ("--llm-model", "--model") if model_alias else ("--llm-model",)
    p.add_argument(*names, dest="llm_model", default=None,
                   help="the model name an OpenAI-compatible server serves" + (" (--model: the same)" if model_alias else ""))
    p.add_argument("--cache", default=None, help="the LLM answer cache (default: next to --out)")
    p.add_argument("--no-cache", action="store_true", help="do not cache LLM answers")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``hd-eval`` and its sub-verbs to the ``lmops`` parser."""
    parser = sub.add_parser("hd-eval", help="HD-Eval: LLM evaluators aligned by hierarchical criteria decomposition",
                            description="Fit an HD-Eval evaluator on JSONL (LLM criterion scores, hierarchical "
                            "decomposition, a white-box aggregator fit to human scores, attribution pruning), "
                            "predict with it, or run the offline demo.")
    parser.set_defaults(func=run, hd_eval_func=None, hd_eval_parser=parser)
    verbs = parser.add_subparsers(dest="hd_eval_command", metavar="SUBCOMMAND")

    demo = verbs.add_parser("demo", help="fit on the bundled examples with a scripted judge and print the report")
    _add_fit_options(demo)
    demo.add_argument("--json", action="store_true", help="print the whole report as JSON")
    demo.add_argument("--out", default=None, help="also save the fitted model here (JSON)")
    demo.set_defaults(hd_eval_func=run_demo)

    fit = verbs.add_parser("fit", help="fit on a JSONL file of samples and human scores")
    fit.add_argument("--data", required=True, help="JSONL: sample, score (null/NaN skipped), system (optional)")
    fit.add_argument("--task", required=True, help="what is evaluated, in words")
    fit.add_argument("--criteria", required=True, help="'a,b,c' or @FILE ('name: description' per line)")
    fit.add_argument("--out", required=True, help="the fitted model (JSON)")
    _add_llm_options(fit, required=True, model_alias=True)
    _add_fit_options(fit)
    fit.set_defaults(hd_eval_func=run_fit)

    predict = verbs.add_parser("predict", help="score a JSONL file with a fitted model")
    predict.add_argument("--model", required=True, help="a model written by `lmops hd-eval fit`")
    predict.add_argument("--data", required=True, help="JSONL with a 'sample' per line")
    predict.add_argument("--out", required=True, help="JSONL: each record with its 'prediction'")
    _add_llm_options(predict, required=False)
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(hd_eval_func=run_predict)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.hd_eval_func is None:  # `lmops hd-eval` alone
        args.hd_eval_parser.print_help()
        return 2
    return int(args.hd_eval_func(args) or 0)
