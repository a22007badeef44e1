"""``lmops reason-distill``: tailored reasoning distillation (arXiv 2310.13332).

- ``lmops reason-distill run --out DIR [--rounds 2] [--student DIR] [--teacher scripted|URL|MODEL_DIR]
  [--model NAME] [--train FILE] [--eval FILE] ...``: the multi-round loop; rerun the same command to
  resume. Without ``--train`` it runs the embedded arithmetic task with the scripted teacher and a tiny
  character-level student (built in ``DIR/student_init``), with settings sized for a CPU.
- ``lmops reason-distill exam --student DIR --data FILE [--k 1]``: the student's accuracy on a question
  file (greedy by default; ``--k 4 --temperature 1`` samples as the exam does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...cli.args import (
    Fail,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    report_skipped,
    require_transformers,
)

__all__ = ["add_parser", "run"]

SCRIPTED = "scripted"
# the embedded task's settings (the official ones are for GPT-J-6B on 8 GPUs)
DEMO_DEFAULTS = {"learning_rate": 3e-3, "epochs": 20, "batch_size": 8, "warmup_steps": 20, "save_steps": 50,
                 "max_new_tokens": 96}
OFFICIAL_DEFAULTS = {"learning_rate": 7e-6, "epochs": 10, "batch_size": 2, "warmup_steps": 100, "save_steps": 100,
                     "max_new_tokens": 128}


def _read_questions(path: str, flag: str):
    from .data import read_questions

    if not Path(path).is_file():
        raise Fail(f"{flag}: {path} is not a file")
    try:
        questions, bad = read_questions(path)
    except (OSError, ValueError) as exc:
        raise Fail(f"{flag}: {exc}") from None
    report_skipped(path, bad)
    if not questions:
        raise Fail(f"{flag}: {path} holds no valid question (expected JSONL with 'question' and 'answer')")
    return questions


def _task(demos_path: str | None, synthetic: bool):
    """The embedded arithmetic task, or a math task with the demonstrations of ``--demos`` (none by
    default); both use the official math answer extraction."""
    from ...common.jsonl import read_jsonl
    from .synthetic import ARITHMETIC_TASK
    from .tasks import Demo, ReasoningTask

    if demos_path is None:
        return ARITHMETIC_TASK if synthetic else ReasoningTask("math")
    try:
        result = read_jsonl(demos_path, required=["question", "reasoning", "answer"])
    except (OSError, ValueError) as exc:
        raise Fail(f"--demos: {exc}") from None
    if result.malformed:
        raise Fail(f"--demos: {demos_path}: line {result.malformed[0][0]}: {result.malformed[0][1]}")
    demos = [Demo(str(r["question"]), str(r["reasoning"]), str(r["answer"])) for r in result.records]
    return ReasoningTask("math", demos)


def _threads(threads: int | None, tiny: bool) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    elif tiny:
        torch.set_num_threads(1)  # the tiny student's matrices are fastest on one thread, above all on a busy machine


def _run(args: argparse.Namespace) -> int:
    require_transformers()
    import transformers

    from ...common.files import atomic_directory
    from ...llm import llm_from_spec
    from .config import (
        DistillConfig,
        ExamConfig,
        LossConfig,
        TeacherConfig,
        TrainConfig,
    )
    from .loop import run_distillation
    from .synthetic import arithmetic_problems, scripted_teacher, tiny_student

    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    synthetic = args.train is None
    _threads(args.threads, synthetic)
    defaults = DEMO_DEFAULTS if synthetic else OFFICIAL_DEFAULTS
    pick = lambda name, key: getattr(args, name) if getattr(args, name) is not None else defaults[key]
    if synthetic:
        train_qs, eval_qs = arithmetic_problems(args.n_train, args.n_heldout, seed=args.seed)
    else:
        train_qs = _read_questions(args.train, "--train")
        eval_qs = _read_questions(args.eval, "--eval") if args.eval else []
    teacher_spec = args.teacher or (SCRIPTED if synthetic else None)
    if teacher_spec is None:
        raise Fail("--teacher: required with --train (a URL, a model directory, or 'scripted')")
    if args.student is not None:
        student = Path(args.student)
        if not (student / "config.json").is_file():
            raise Fail(f"--student: {args.student} is not a model directory (no config.json)")
    elif synthetic:
        student = out / "student_init"
        if not (student / "config.json").is_file():
            model, tok = tiny_student(seed=args.seed)
            with atomic_directory(student) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
    else:
        raise Fail("--student: required with --train (a Hugging Face model directory)")
    try:
        config = DistillConfig(
            rounds=args.rounds,
            exam=ExamConfig(k=args.k, temperature=args.temperature, max_new_tokens=pick("max_new_tokens", "max_new_tokens"),
                            batch_size=args.gen_batch_size, seed=args.seed),
            teacher=TeacherConfig(samples=args.teacher_samples, temperature=args.teacher_temperature,
                                  retries=args.retries, chat=args.teacher_chat),
            loss=LossConfig(contrastive=not args.no_contrastive, prefix_cache=not args.full_forward),
            train=TrainConfig(learning_rate=pick("lr", "learning_rate"), epochs=pick("epochs", "epochs"),
                              batch_size=pick("batch_size", "batch_size"), warmup_steps=pick("warmup_steps", "warmup_steps"),
                              save_steps=pick("save_steps", "save_steps"), max_steps=args.max_steps, seed=args.seed),
            round_data=args.round_data,
            eval_max_new_tokens=pick("max_new_tokens", "max_new_tokens"),
        )
        cache = None if teacher_spec == SCRIPTED else out / "teacher_cache.sqlite"
        out.mkdir(parents=True, exist_ok=True)
        teacher = llm_from_spec(teacher_spec, model=args.model, cache=cache,
                                scripted=lambda: scripted_teacher(malformed=args.scripted_malformed,
                                                                  wrong=args.scripted_wrong, seed=args.seed))
        metrics = run_distillation(out, student=student, teacher=teacher, task=_task(args.demos, synthetic),
                                   train_questions=train_qs, eval_questions=eval_qs, config=config,
                                   device=args.device, progress=not args.quiet)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    _print_table(metrics)
    print(f"metrics: {out / 'metrics.json'}; final student: {out / f'round_{args.rounds}' / 'checkpoint'}")
    return 0


def _print_table(metrics: dict) -> None:
    print(f"{'round':>5}  {'exam acc (sampled)':>18}  {'teacher kept/asked':>18}  {'train loss':>15}  "
          f"{'greedy acc train':>16}  {'greedy acc heldout':>18}")
    for row in metrics["rounds"]:
        exam = row.get("exam", {})
        teacher = row.get("teacher", {})
        train = row.get("train", {})
        ev = row.get("eval", {})
        ex = f"{exam['sample_accuracy']:.3f}" if exam else "-"
        te = f"{teacher['with_rationale']}/{teacher['asked']}" if teacher else "-"
        lo = (f"{train['loss_first']:.3f}->{train['loss_last']:.3f}" if train.get("loss_first") is not None else "-")
        tr = f"{ev['train']['accuracy']:.3f}" if "train" in ev else "-"
        ho = f"{ev['heldout']['accuracy']:.3f}" if "heldout" in ev else "-"
        print(f"{row['round']:>5}  {ex:>18}  {te:>18}  {lo:>15}  {tr:>16}  {ho:>18}")


def _exam(args: argparse.Namespace) -> int:
    require_transformers()
    import transformers

    from ...common.jsonl import write_jsonl
    from ...llm import HFLocal, load_local_model
    from .config import ExamConfig
    from .exam import evaluate, take_exam
    from .synthetic import arithmetic_problems

    transformers.utils.logging.disable_progress_bar()
    _threads(args.threads, args.data.startswith("synthetic-"))
    if args.data in ("synthetic-train", "synthetic-heldout"):
        train_qs, held = arithmetic_problems(args.n_train, args.n_heldout, seed=args.seed)
        questions = train_qs if args.data == "synthetic-train" else held
    else:
        questions = _read_questions(args.data, "--data")
    try:
        model, tok = load_local_model(args.student, device=args.device)
    except FileNotFoundError as exc:
        raise Fail(f"--student: {exc}") from None
    task = _task(args.demos, args.data.startswith("synthetic-"))
    llm = HFLocal(model, tok, batch_size=args.gen_batch_size, seed=args.seed)
    try:
        if args.k == 1 and args.temperature == 0:
            res = evaluate(llm, task, questions, max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size)
            print(f"greedy accuracy {res.accuracy:.4f} ({res.correct}/{res.total}) on {args.data}")
            records = res.outputs
            summary = res.summary()
        else:
            cfg = ExamConfig(k=args.k, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                             batch_size=args.gen_batch_size, seed=args.seed)
            ex = take_exam(llm, task, questions, cfg, round=0)
            print(f"sample accuracy {ex.sample_accuracy:.4f}, questions with a correct sample "
                  f"{ex.question_accuracy:.4f} ({len(ex.records)} questions x {args.k} samples) on {args.data}")
            records = [r.to_dict() for r in ex.records]
            summary = ex.summary()
    except ValueError as exc:
        raise Fail(str(exc)) from None
    if args.out:
        write_jsonl(args.out, records)
        print(f"outputs: {args.out}")
    if args.json:
        print(json.dumps(summary))
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the sub-verb (``lmops reason-distill`` alone prints its help)."""
    if getattr(args, "rd_func", None) is None:
        args.rd_parser.print_help()
        return 2
    return args.rd_func(args)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``reason-distill`` with its sub-verbs to the ``lmops`` parser's subcommands."""
    rd = sub.add_parser("reason-distill", help="tailored reasoning distillation from a teacher LLM (multi-round)",
                        description="Tailored reasoning distillation (arXiv 2310.13332): the student takes an "
                        "exam, the teacher supplies rationales and corrections of its mistakes, the student "
                        "retrains with a weighted MLE and a triplet self-reflection loss; several rounds.")
    rd.set_defaults(func=run, rd_parser=rd, rd_func=None)
    verbs = rd.add_subparsers(dest="rd_command", metavar="SUBCOMMAND")

    r = verbs.add_parser("run", help="run or resume the multi-round loop",
                         description="Run the loop in DIR (rerun the same command to resume). Without --train: the "
                         "embedded arithmetic task, a scripted teacher and a tiny character-level student.")
    r.add_argument("--out", required=True, metavar="DIR", help="run directory (round_N/ folders, metrics.json)")
    r.add_argument("--rounds", type=positive_int, default=2)
    r.add_argument("--student", default=None, metavar="DIR", help="initial student model directory "
                   "(default with the embedded task: a tiny Llama built in DIR/student_init)")
    r.add_argument("--teacher", default=None, metavar="scripted|URL|MODEL_DIR",
                   help="teacher: 'scripted' (embedded task, the default there), an OpenAI-compatible base URL, "
                   "or a local model directory")
    r.add_argument("--model", default=None, metavar="NAME", help="the teacher model's name (required with a URL)")
    r.add_argument("--teacher-chat", action="store_true", help="ask the teacher through chat (one user message)")
    r.add_argument("--teacher-samples", type=positive_int, default=2, help="rationales per question asked (default 2)")
    r.add_argument("--teacher-temperature", type=non_negative_float, default=0.7)
    r.add_argument("--retries", type=non_negative_int, default=2, help="extra attempts for unparsable teacher answers (default 2)")
    r.add_argument("--train", default=None, metavar="FILE", help="training questions, JSONL {id?, question, answer}")
    r.add_argument("--eval", default=None, metavar="FILE", help="held-out questions for the greedy evaluations")
    r.add_argument("--demos", default=None, metavar="FILE",
                   help="few-shot CoT demonstrations, JSONL {question, reasoning, answer} (default: none)")
    r.add_argument("--n-train", type=positive_int, default=64, help="embedded task: training questions (default 64)")
    r.add_argument("--n-heldout", type=non_negative_int, default=32, help="embedded task: held-out questions (default 32)")
    r.add_argument("--k", type=positive_int, default=4, help="exam samples per question (official 4)")
    r.add_argument("--temperature", type=non_negative_float, default=1.0, help="exam sampling temperature (official 1.0)")
    r.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="exam and evaluation answer length (official 128; embedded task 96)")
    r.add_argument("--gen-batch-size", type=positive_int, default=16, help="prompts per generation batch")
    r.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (official 7e-6; embedded 3e-3)")
    r.add_argument("--epochs", type=positive_int, default=None, help="epochs per round (official 10; embedded 20)")
    r.add_argument("--batch-size", type=positive_int, default=None, help="items per step (official 2; embedded 8)")
    r.add_argument("--warmup-steps", type=non_negative_int, default=None, help="official 100; embedded 20")
    r.add_argument("--save-steps", type=positive_int, default=None, help="checkpoint interval (steps)")
    r.add_argument("--max-steps", type=positive_int, default=None, help="cap on steps per round")
    r.add_argument("--no-contrastive", action="store_true", help="weighted MLE only (no triplet loss)")
    r.add_argument("--full-forward", action="store_true",
                   help="encode rationales with a full forward (gradient through the prefix) instead of the "
                   "no-grad prefix KV cache")
    r.add_argument("--round-data", choices=("new", "cumulative"), default="new",
                   help="rounds >= 2 train on their corrections only (new) or on all teacher data so far")
    r.add_argument("--scripted-malformed", type=fraction, default=0.1,
                   help="scripted teacher: share of answers without a final answer (default 0.1)")
    r.add_argument("--scripted-wrong", type=fraction, default=0.05,
                   help="scripted teacher: share of wrong answers (default 0.05)")
    r.add_argument("--seed", type=non_negative_int, default=0)
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: 1 for the embedded task's tiny student, else torch's default)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(rd_func=_run)

    e = verbs.add_parser("exam", help="a student's accuracy on a question file",
                         description="Greedy accuracy of a student model on questions (or, with --k > 1 and a "
                         "temperature, the exam's sampled accuracy).")
    e.add_argument("--student", required=True, metavar="DIR", help="model directory (e.g. DIR/round_2/checkpoint)")
    e.add_argument("--data", required=True, metavar="FILE",
                   help="JSONL {id?, question, answer}, or synthetic-train / synthetic-heldout (the embedded task)")
    e.add_argument("--demos", default=None, metavar="FILE", help="few-shot demonstrations (as for run)")
    e.add_argument("--k", type=positive_int, default=1, help="samples per question (default 1: greedy)")
    e.add_argument("--temperature", type=non_negative_float, default=0.0)
    e.add_argument("--max-new-tokens", type=positive_int, default=128)
    e.add_argument("--gen-batch-size", type=positive_int, default=16)
    e.add_argument("--n-train", type=positive_int, default=64, help="synthetic data: as for run")
    e.add_argument("--n-heldout", type=non_negative_int, default=32, help="synthetic data: as for run")
    e.add_argument("--seed", type=non_negative_int, default=0)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (as for run)")
    e.add_argument("--out", default=None, metavar="FILE", help="write each question's output(s) as JSONL")
    e.add_argument("--json", action="store_true", help="also print the summary as JSON")
    e.set_defaults(rd_func=_exam)
    return rd
