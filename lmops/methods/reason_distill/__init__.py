"""Tailored reasoning distillation: "Democratizing Reasoning Ability: Tailored Learning from Large Language
Model" (Wang et al., EMNLP 2023, arXiv 2310.13332; official code ``Raibows/Learn-to-Reason``).

A small student learns to reason from a large teacher over several rounds. Each round the student takes
an *exam* (``k`` sampled rationales per training question, answers extracted and checked, wrong ones
kept); the teacher, through :mod:`lmops.llm`, supplies rationales (round 1: for the whole training set)
or customised corrections of the student's mistakes (rounds >= 2); the student retrains from its
previous checkpoint on a weighted MLE plus a triplet "self-reflection" loss that pulls its
representation of a teacher rationale towards another teacher rationale and away from its own wrong one.

Public API:

- :func:`run_distillation`: the resumable multi-round loop (:mod:`.loop`), :class:`DistillConfig` and the
  stage configs (:mod:`.config`).
- :func:`take_exam`, :func:`evaluate` (:mod:`.exam`); :func:`collect_rationales` (:mod:`.teacher`).
- :func:`weighted_mle_loss`, :func:`triplet_cosine_loss`, :func:`rationale_representations`
  (:mod:`.losses`); :class:`UniqueQuestionSampler` (:mod:`.sampler`); :func:`train_round` (:mod:`.training`).
- :class:`ReasoningTask` and its pluggable pieces (:mod:`.tasks`); records (:mod:`.data`).
- The offline task: :func:`arithmetic_problems`, :func:`scripted_teacher`, :func:`tiny_student`
  (:mod:`.synthetic`). CLI: ``lmops reason-distill run|exam``.

Faithful to the official code: the exam (``k = 4`` samples at temperature 1, 128 new tokens, stop at a
blank line, wrong ones kept as negatives); the math answer extraction; the prompt and target format;
the weighted MLE (``mle_w = 0.1`` on prefix targets, indexed in the shifted frame as the official code
does, normalised by the number of valid targets); the triplet loss (last-layer state of the last token,
prefix KV cache under ``no_grad``, ``-cos`` distance, margin 1, masked items, ``cl_ratio = 0.5``, up to
10 positives and 4 negatives per question, positive != anchor); one question per batch at most;
round 1 over the whole training set (issue Raibows/Learn-to-Reason#2), later rounds on the mistakes,
each round from the previous checkpoint; AdamW with linear warm-up and decay.

Choices (the paper or the code leaves them open): the teacher and feedback prompts (the paper's
feedback prompt is not in the code) and the teacher-answer parser (:mod:`.tasks`); several teacher
samples per question so positives exist; filtered wrong teacher rationales; the sampler's exact
batching (no padding of the last batch); numeric answer comparison; rationale attention masks that
hide the prefix's padding (the official forward passes none); negatives kept as the student wrote them
(the official code appends the gold answer line); what later rounds train on (``round_data``); a plain
resumable torch loop instead of a ``Seq2SeqTrainer`` subclass.
"""

from .config import DistillConfig, ExamConfig, LossConfig, TeacherConfig, TrainConfig
from .data import (
    ExamRecord,
    Question,
    TeacherRecord,
    TrainItem,
    read_questions,
    read_records,
    write_questions,
)
from .exam import EvalResult, ExamResult, evaluate, take_exam
from .loop import param_fingerprint, run_distillation
from .losses import (
    last_token_states,
    rationale_representations,
    triplet_cosine_loss,
    weighted_mle_loss,
)
from .sampler import UniqueQuestionSampler
from .synthetic import (
    ARITHMETIC_TASK,
    arithmetic_problems,
    scripted_teacher,
    tiny_student,
)
from .tasks import (
    Demo,
    ReasoningTask,
    TeacherAnswer,
    default_feedback_prompt,
    default_teacher_prompt,
    extract_numeric_answer,
    numbers_match,
    parse_teacher_answer,
)
from .teacher import TeacherResult, collect_rationales
from .training import (
    Batch,
    DistillCollator,
    TrainResult,
    batch_losses,
    load_weights,
    train_round,
)

__all__ = [
    "ARITHMETIC_TASK",
    "Batch",
    "Demo",
    "DistillCollator",
    "DistillConfig",
    "EvalResult",
    "ExamConfig",
    "ExamRecord",
    "ExamResult",
    "LossConfig",
    "Question",
    "ReasoningTask",
    "TeacherAnswer",
    "TeacherConfig",
    "TeacherRecord",
    "TeacherResult",
    "TrainConfig",
    "TrainItem",
    "TrainResult",
    "UniqueQuestionSampler",
    "arithmetic_problems",
    "batch_losses",
    "collect_rationales",
    "default_feedback_prompt",
    "default_teacher_prompt",
    "evaluate",
    "extract_numeric_answer",
    "last_token_states",
    "load_weights",
    "numbers_match",
    "param_fingerprint",
    "parse_teacher_answer",
    "rationale_representations",
    "read_questions",
    "read_records",
    "run_distillation",
    "scripted_teacher",
    "take_exam",
    "tiny_student",
    "train_round",
    "triplet_cosine_loss",
    "weighted_mle_loss",
    "write_questions",
]
