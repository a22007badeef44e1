"""``lmops visionprefer``: annotate images with a multimodal judge, train VP-Score, align a generator, or
run the offline demo.

- ``lmops visionprefer demo``         synthetic preference set -> scripted judge -> VP-Score -> held-out accuracy
- ``lmops visionprefer annotate``     ``--data prompts.jsonl --judge URL|scripted [--model NAME] --out DIR``
- ``lmops visionprefer train-score``  ``--data annotated.jsonl --backbone clip|blip|DIR --out DIR [--lora|--reslora]``
- ``lmops visionprefer align``        ``--method refl|dpo|ppo --reward DIR|planted --out DIR``

Dataset lines: ``{"prompt_id", "prompt", "images": [{"image_id", "path", "generator", "scores",
"rationales"}]}`` (paths relative to the file). ``--backbone clip``/``blip`` build tiny random backbones
from configs (for trying the pipeline offline); give a model directory (or a hub id with ``--kind``)
for a real one, loaded with ``from_pretrained``. ``--data example`` is the bundled synthetic set
(3 prompts x 4 images, unannotated).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...cli.args import Fail, fraction_below_one, positive_float, positive_int, report_skipped

__all__ = ["EXAMPLES", "add_parser", "run"]

EXAMPLES = Path(__file__).resolve().parent / "examples"


def _records(path: str):
    from .data import read_records

    if path == "example":  # the bundled synthetic prompts and images
        path = str(EXAMPLES / "prompts.jsonl")
    try:
        records, bad = read_records(path)
    except FileNotFoundError:
        raise Fail(f"--data: {path} does not exist") from None
    report_skipped(path, bad)
    if not records:
        raise Fail(f"--data: {path} holds no valid prompt record")
    return records


# -- annotate -----------------------------------------------------------------------------------------
def _judge(args: argparse.Namespace):
    if args.judge == "scripted":
        from .scripted import ScriptedJudge

        return ScriptedJudge(args.malformed, seed=args.seed)
    if args.judge.startswith(("http://", "https://")):
        if not args.model:
            raise Fail(f"--model: required with --judge {args.judge} (the model name the server serves)")
        from .judge import OpenAIVisionJudge

        return OpenAIVisionJudge(
            args.judge, args.model, max_concurrency=args.concurrency, score_min=args.score_min, score_max=args.score_max
        )
    raise Fail(f"--judge: expected an http(s):// base URL of an OpenAI-compatible vision server or 'scripted', "
               f"got {args.judge!r}")


def run_annotate(args: argparse.Namespace) -> int:
    from .annotate import annotate, merge_annotations
    from .config import AnnotateConfig
    from .data import write_records

    records = _records(args.data)
    try:
        config = AnnotateConfig(
            aspects=tuple(a.strip() for a in args.aspects.split(",")),
            mode=args.mode,
            score_min=args.score_min,
            score_max=args.score_max,
            retries=args.retries,
        )
    except ValueError as exc:
        raise Fail(str(exc)) from None
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "annotations.jsonl"
    report = annotate(records, _judge(args), log, config, progress=not args.quiet)
    report_skipped(log, report.malformed_log_lines)
    annotated = merge_annotations(records, log)
    write_records(out / "annotated.jsonl", annotated)
    print(json.dumps(report.to_dict(), indent=1))
    print(f"annotation log: {log}\nannotated records: {out / 'annotated.jsonl'}")
    return 0


# -- train-score --------------------------------------------------------------------------------------
def _backbone(args: argparse.Namespace):
    from .backbones import backbone_kind_of, load_backbone, tiny_blip, tiny_clip

    spec = args.backbone
    if spec == "clip":
        return tiny_clip(seed=args.seed)
    if spec == "blip":
        return tiny_blip(seed=args.seed)
    path = Path(spec).expanduser()
    try:
        kind = args.kind or (backbone_kind_of(path) if path.is_dir() else None)
        if kind is None:
            raise Fail(
                f"--backbone: {spec!r} is not 'clip', 'blip' or a model directory; for a hub id give --kind clip|blip"
            )
        return load_backbone(kind, path if path.is_dir() else spec)
    except (OSError, ValueError) as exc:
        raise Fail(f"--backbone: {exc}") from None


def run_train_score(args: argparse.Namespace) -> int:
    from .config import TrainScoreConfig, VPScoreConfig
    from .data import AGGREGATE, make_pairs
    from .train_score import split_by_prompt, train_vp_score
    from .vp_score import VPScore

    records = _records(args.data)
    weights = None
    if args.weights:
        try:
            weights = {k.strip(): float(v) for k, v in (item.split("=") for item in args.weights.split(","))}
        except ValueError:
            raise Fail(f"--weights: expected 'aspect=w,aspect=w', got {args.weights!r}") from None
    try:
        pairs, stats = make_pairs(records, args.aspect, weights=weights)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    print(f"pairs: {json.dumps(stats.to_dict())}")
    if not pairs:
        raise Fail(f"--data: no preference pair (annotate the images first; aspect {args.aspect!r})")
    train, valid = split_by_prompt(pairs, args.valid_fraction, args.seed)
    if not train:
        raise Fail("--valid-fraction: no training pair is left")
    finetune = "lora" if args.lora else "reslora" if args.reslora else "head" if args.freeze else "full"
    try:
        dims = tuple(int(d) for d in args.head_dims.split(",")) if args.head_dims else VPScoreConfig.head_dims
        # ImageReward's dropouts (0.2, 0.2, 0.1, 0), cut to the number of hidden layers
        score_cfg = VPScoreConfig(
            finetune=finetune, lora_r=args.lora_r, head_dims=dims, head_dropout=VPScoreConfig.head_dropout[: len(dims)]
        )
        train_cfg = TrainScoreConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=not args.quiet
        )
    except ValueError as exc:
        raise Fail(str(exc)) from None
    model = VPScore(_backbone(args), score_cfg)
    report = train_vp_score(model, train, train_cfg, valid_pairs=valid)
    out = model.save(Path(args.out).expanduser())
    print(
        json.dumps({"aspect": args.aspect if args.aspect != AGGREGATE else "aggregate", **report.to_dict()}, indent=1)
    )
    print(f"VP-Score written to {out}")
    return 0


# -- align --------------------------------------------------------------------------------------------
def run_align(args: argparse.Namespace) -> int:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise Fail(
            'align needs diffusers, from the diffusers extra: pip install --no-build-isolation -e ".[diffusers]"'
        ) from None
    from .config import DPOConfig, PPOConfig, ReFLConfig, SamplerConfig
    from .data import make_pairs
    from .diffusion import T2IPipeline, tiny_pipeline
    from .refl import mean_reward

    if args.reward == "planted":
        from .synthetic import color_reward as reward_fn
    else:
        from .vp_score import VPScore

        try:
            reward_fn = VPScore.load(Path(args.reward).expanduser()).reward_fn()
        except (OSError, ValueError) as exc:
            raise Fail(f"--reward: {exc}") from None
    records = _records(args.data) if args.data else None
    if records is not None:
        prompts = sorted({r.prompt for r in records})
    elif args.prompts:
        prompts = [
            p.strip() for p in Path(args.prompts).expanduser().read_text(encoding="utf-8").splitlines() if p.strip()
        ]
    else:
        from .synthetic import COLORS, SHAPES, prompt_for

        prompts = [prompt_for(c, s) for c in COLORS for s in SHAPES]
    if not prompts:
        raise Fail("--prompts: no prompt")
    try:
        pipe = (
            tiny_pipeline(seed=args.seed) if args.generator == "tiny" else T2IPipeline.from_pretrained(args.generator)
        )
    except (OSError, ValueError) as exc:
        raise Fail(f"--generator: {exc}") from None
    sampler = SamplerConfig(
        num_steps=args.sample_steps, eta=0.0 if args.method == "refl" else 1.0, guidance_scale=args.guidance
    )
    eval_sampler = SamplerConfig(num_steps=args.sample_steps, eta=0.0, guidance_scale=args.guidance)
    eval_prompts = (prompts * (16 // len(prompts) + 1))[:16]
    before = mean_reward(pipe, eval_prompts, reward_fn, eval_sampler, seed=args.seed + 1)
    if args.method == "refl":
        from .refl import train_refl

        report = train_refl(
            pipe,
            prompts,
            reward_fn,
            ReFLConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                grad_steps=min(2, args.sample_steps),
                sampler=sampler,
                seed=args.seed,
            ),
        )
    elif args.method == "ppo":
        from .ppo import train_ppo

        report = train_ppo(
            pipe,
            prompts,
            reward_fn,
            PPOConfig(
                epochs=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                clip_range=args.clip_range,
                sampler=sampler,
                seed=args.seed,
            ),
        )
    else:
        from .dpo import train_dpo

        if records is None:
            raise Fail("--data: Diffusion-DPO needs an annotated dataset (its preference pairs)")
        pairs, _ = make_pairs(records, args.aspect)
        if not pairs:
            raise Fail("--data: no preference pair in the dataset")
        report = train_dpo(
            pipe,
            pairs,
            DPOConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, beta=args.beta, seed=args.seed),
        )
    after = mean_reward(pipe, eval_prompts, reward_fn, eval_sampler, seed=args.seed + 1)
    out = Path(args.out).expanduser()
    pipe.save_pretrained(out)
    summary = {
        "method": args.method,
        "mean_reward_before": before,
        "mean_reward_after": after,
        "train": report.to_dict(),
    }
    (out / "align_report.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"mean reward of fixed-seed samples: {before:.4f} before, {after:.4f} after ({args.method})")
    print(f"generator written to {out}")
    return 0


# -- demo ---------------------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    summary = demo(
        args.out,
        n_prompts=args.prompts,
        backbone=args.backbone,
        malformed=args.malformed,
        seed=args.seed,
        align=args.align,
    )
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    a = summary["annotation"]
    print(
        f"synthetic set: {summary['prompts']} prompts, {summary['images']} images; scripted judge: "
        f"{a['annotated']} annotations, {a['retries']} retries, {a['skipped']} skipped"
    )
    print(
        f"pairs: {summary['pairs']['pairs']} ({summary['pairs']['ties']} ties dropped); "
        f"{summary['train_pairs']} train, {summary['valid_pairs']} held out (by prompt)"
    )
    print(
        f"VP-Score ({summary['backbone']}): held-out pairwise accuracy {summary['valid_accuracy']:.3f} "
        f"(before training {summary['valid_accuracy_before']:.3f}; train {summary['train_accuracy']:.3f}; "
        f"{summary['train_seconds']:.1f}s)"
    )
    print(
        "held-out accuracy per aspect: "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary["per_aspect_valid_accuracy"].items() if v is not None)
    )
    if "alignment" in summary:
        al = summary["alignment"]
        print(
            f"alignment ({al['method']}, tiny UNet): mean VP-Score of fixed-seed samples "
            f"{al['mean_reward_before']:.3f} -> {al['mean_reward_after']:.3f}"
        )
    if args.out:
        print(f"files written under {args.out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``visionprefer`` and its sub-verbs to the ``lmops`` parser."""
    parser = sub.add_parser(
        "visionprefer",
        help="VisionPrefer: MLLM-annotated image preferences, VP-Score, generator alignment",
        description="Annotate images with a multimodal judge, train the VP-Score reward model, align a "
        "text-to-image generator with it (ReFL, Diffusion-DPO, PPO), or run the offline demo.",
    )
    parser.set_defaults(func=run, vp_func=None, vp_parser=parser)
    verbs = parser.add_subparsers(dest="vp_command", metavar="SUBCOMMAND")

    demo = verbs.add_parser("demo", help="synthetic preference set -> VP-Score -> held-out pairwise accuracy (offline)")
    demo.add_argument("--out", default=None, help="keep the files here (default: a temporary folder)")
    demo.add_argument(
        "--prompts", type=positive_int, default=320, help="synthetic prompts, 4 images each (default 320)"
    )
    demo.add_argument("--backbone", choices=("clip", "blip"), default="clip", help="tiny backbone built from a config")
    demo.add_argument("--malformed", type=fraction_below_one, default=0.1, help="share of malformed judge answers (default 0.1)")
    demo.add_argument(
        "--align", choices=("refl", "dpo", "ppo"), default=None, help="also run a tiny alignment with the reward"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(vp_func=run_demo)

    ann = verbs.add_parser("annotate", help="score every image on each aspect with a multimodal judge (resumable)")
    ann.add_argument(
        "--data", required=True, help="JSONL of prompt records with image paths ('example': the bundled ones)"
    )
    ann.add_argument(
        "--judge", required=True, help="http(s)://base-url of an OpenAI-compatible vision server, or 'scripted'"
    )
    ann.add_argument("--model", default=None, help="the model name the server serves")
    ann.add_argument("--out", required=True, help="folder: annotations.jsonl (the resumable log) and annotated.jsonl")
    ann.add_argument("--aspects", default="prompt_following,aesthetic,fidelity,harmlessness")
    ann.add_argument(
        "--mode",
        choices=("per_image", "per_prompt"),
        default="per_image",
        help="one request per image (default) or all images of a prompt in one request",
    )
    ann.add_argument("--score-min", type=int, default=1)
    ann.add_argument("--score-max", type=int, default=5)
    ann.add_argument("--retries", type=int, default=2, help="extra attempts for a malformed answer (default 2)")
    ann.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight (HTTP judge)")
    ann.add_argument("--malformed", type=fraction_below_one, default=0.0, help="scripted judge: share of malformed answers")
    ann.add_argument("--seed", type=int, default=0)
    ann.add_argument("--quiet", action="store_true", help="no progress bar")
    ann.set_defaults(vp_func=run_annotate)

    tr = verbs.add_parser("train-score", help="train VP-Score on annotated data (Bradley-Terry loss)")
    tr.add_argument("--data", required=True, help="annotated JSONL (from `annotate`)")
    tr.add_argument(
        "--backbone", required=True, help="clip | blip (tiny, from a config) | a model directory | a hub id with --kind"
    )
    tr.add_argument("--kind", choices=("clip", "blip"), default=None, help="the backbone kind of a hub id")
    tr.add_argument("--out", required=True, help="folder for the trained VP-Score")
    group = tr.add_mutually_exclusive_group()
    group.add_argument("--lora", action="store_true", help="train LoRA adapters on the backbone (peft)")
    group.add_argument("--reslora", action="store_true", help="train ResLoRA adapters on the backbone (lmops.reslora)")
    group.add_argument("--freeze", action="store_true", help="train the head only")
    tr.add_argument("--lora-r", type=positive_int, default=8)
    tr.add_argument("--aspect", default="aggregate", help="aggregate (default) or one aspect")
    tr.add_argument("--weights", default=None, help="aggregate weights 'aspect=w,...' (default: equal)")
    tr.add_argument("--head-dims", default=None, help="MLP hidden sizes, e.g. 64,16 (default 1024,128,64,16)")
    tr.add_argument("--epochs", type=positive_int, default=10)
    tr.add_argument("--batch-size", type=positive_int, default=32)
    tr.add_argument("--lr", type=positive_float, default=1e-5)
    tr.add_argument("--valid-fraction", type=fraction_below_one, default=0.1, help="prompts held out for accuracy (default 0.1)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(vp_func=run_train_score)

    al = verbs.add_parser("align", help="fine-tune a generator with the reward (refl, ppo) or preference pairs (dpo)")
    al.add_argument("--method", choices=("refl", "dpo", "ppo"), required=True)
    al.add_argument(
        "--reward", required=True, help="a VP-Score folder (from train-score), or 'planted' (the demo's colour reward)"
    )
    al.add_argument(
        "--out", required=True, help="folder for the aligned generator (diffusers layout) and align_report.json"
    )
    al.add_argument(
        "--generator", default="tiny", help="'tiny' (a 16x16 UNet from a config) or a Stable Diffusion folder/hub id"
    )
    al.add_argument("--data", default=None, help="annotated JSONL: prompts, and the pairs for dpo")
    al.add_argument("--prompts", default=None, help="a text file, one prompt per line (without --data)")
    al.add_argument("--aspect", default="aggregate", help="dpo: the preference aspect (default aggregate)")
    al.add_argument("--steps", type=positive_int, default=20, help="optimizer steps (ppo: sampling rounds)")
    al.add_argument("--batch-size", type=positive_int, default=8)
    al.add_argument("--lr", type=positive_float, default=1e-3)
    al.add_argument(
        "--beta", type=positive_float, default=5000.0, help="dpo: beta (default 5000, the official SD1.5 value)"
    )
    al.add_argument("--clip-range", type=positive_float, default=1e-4, help="ppo: ratio clip (default 1e-4, DDPO's)")
    al.add_argument("--sample-steps", type=positive_int, default=10, help="DDIM steps per sample")
    al.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    al.add_argument("--seed", type=int, default=0)
    al.set_defaults(vp_func=run_align)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.vp_func is None:  # `lmops visionprefer` alone
        args.vp_parser.print_help()
        return 2
    return int(args.vp_func(args) or 0)
