"""The embedded offline task: arithmetic word problems, a scripted teacher and a tiny character-level
student, so that the whole loop runs on a CPU in minutes with nothing downloaded.

- :func:`arithmetic_problems`: deterministic one-step problems, ``"Tom has 3 apples and buys 4 more. How
  many apples does Tom have?"`` (``a + b``, ``a`` in 2..9, ``b`` in 1..9) and ``"... gives away 2. How many ... are
  left?"`` (``a - b``, ``a > b``), with disjoint training and held-out question sets (the held-out
  questions are new texts; their sums may appear in training with other names and objects).
- :data:`ARITHMETIC_TASK`: the math :class:`~lmops.methods.reason_distill.ReasoningTask` with one
  demonstration. Its answer extractor is the official math one (:func:`extract_numeric_answer`): the
  first number after ``"\\nAnswer"`` / ``"The answer is"``, else the last number of the rationale.
- :func:`scripted_teacher`: a :class:`lmops.llm.FunctionLLM` that solves the last ``Question:`` of its
  prompt and writes ``"3 + 4 = 7. The answer is 7."`` in one of three phrasings (by sample index), with a
  configurable share of malformed answers (no final answer: exercises retry and skip) and of wrong
  answers (exercises the teacher-answer filter), decided by a hash of prompt and sample.
- :func:`tiny_student`: a 3-layer Llama on :func:`lmops.common.offline_tokenizer.byte_level_tokenizer`.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from ...llm import FunctionLLM
from .data import Question
from .tasks import Demo, ReasoningTask

__all__ = ["ARITHMETIC_DEMOS", "ARITHMETIC_TASK", "arithmetic_problems", "scripted_teacher", "tiny_student"]

NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Eva", "Max", "Zoe")
ITEMS = ("apple", "pen", "book", "ball", "coin", "card", "cup", "egg")

ARITHMETIC_DEMOS = (
    Demo("Kim has 5 stamps and buys 2 more. How many stamps does Kim have?",
         "5 + 2 = 7. The answer is 7.", "7"),
)
ARITHMETIC_TASK = ReasoningTask("arithmetic", ())

_ADD = re.compile(r"(\w+) has (\d+) (\w+?)s and buys (\d+) more")
_SUB = re.compile(r"(\w+) has (\d+) (\w+?)s and gives away (\d+)")


def _problem(kind: str, name: str, item: str, a: int, b: int) -> tuple[str, int]:
    if kind == "add":
        return f"{name} has {a} {item}s and buys {b} more. How many {item}s does {name} have?", a + b
    return f"{name} has {a} {item}s and gives away {b}. How many {item}s are left?", a - b


def arithmetic_problems(n_train: int = 64, n_heldout: int = 32, *, seed: int = 0) -> tuple[list[Question], list[Question]]:
    """``(train, heldout)`` question lists, drawn without repetition from all (kind, name, item, a, b)
    combinations by ``random.Random(seed)``; ids ``arith-train-0000`` and ``arith-heldout-0000``."""
    for label, v in (("n_train", n_train), ("n_heldout", n_heldout)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{label}: expected an int >= 0, got {v!r}")
    rng = random.Random(seed)
    combos = [("add", a, b) for a in range(2, 10) for b in range(1, 10)]
    combos += [("sub", a, b) for a in range(2, 10) for b in range(1, a)]
    chosen: list[tuple[str, int]] = []
    seen: set[str] = set()
    while len(chosen) < n_train + n_heldout:
        if len(seen) > 20 * (n_train + n_heldout) + 1000:
            raise ValueError("n_train + n_heldout: more questions than the generator can make distinct")
        kind, a, b = rng.choice(combos)
        text, answer = _problem(kind, rng.choice(NAMES), rng.choice(ITEMS), a, b)
        if text in seen:
            continue
        seen.add(text)
        chosen.append((text, answer))
    train = [Question(f"arith-train-{i:04d}", t, str(v)) for i, (t, v) in enumerate(chosen[:n_train])]
    heldout = [Question(f"arith-heldout-{i:04d}", t, str(v)) for i, (t, v) in enumerate(chosen[n_train:])]
    return train, heldout


def _solve(question: str) -> tuple[str, int, int, int, str] | None:
    """``(op, a, b, result, name)`` of a generated problem, ``None`` for any other text."""
    m = _ADD.search(question)
    if m:
        a, b = int(m.group(2)), int(m.group(4))
        return "+", a, b, a + b, m.group(1)
    m = _SUB.search(question)
    if m:
        a, b = int(m.group(2)), int(m.group(4))
        return "-", a, b, a - b, m.group(1)
    return None


def _unit(*parts: Any) -> float:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def scripted_teacher(*, malformed: float = 0.0, wrong: float = 0.0, seed: int = 0) -> FunctionLLM:
    """The offline teacher: a correct rationale for the last ``Question:`` line of the prompt.

    Args:
        malformed: share of answers with no final-answer statement (unparsable).
        wrong: share of answers whose arithmetic is off by one (parsable, then filtered as wrong).
        seed: mixes into the per-(prompt, sample) draws.
    """
    for label, v in (("malformed", malformed), ("wrong", wrong)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{label}: expected a number in [0, 1], got {v!r}")

    def answer(prompt: str, *, sample: int = 0, **_: Any) -> str:
        questions = [line[len("Question: "):] for line in prompt.splitlines() if line.startswith("Question: ")]
        solved = _solve(questions[-1]) if questions else None
        draw = _unit(seed, prompt, sample)
        if solved is None or draw < malformed:
            return "Let me think about it step by step. I am not sure how to finish this one."
        op, a, b, c, name = solved
        if _unit(seed, "wrong", prompt, sample) < wrong:
            c += 1
        style = sample % 3
        if style == 0:
            body = f"{a} {op} {b} = {c}."
        elif style == 1:
            verb = "gets" if op == "+" else "gives away"
            body = f"{name} has {a} and {verb} {b}, so {a} {op} {b} = {c}."
        else:
            body = f"{'Add' if op == '+' else 'Take'} {b} {'to' if op == '+' else 'from'} {a}: {a} {op} {b} = {c}."
        return f"{body} The answer is {c}."

    return FunctionLLM(answer, name=f"scripted-arithmetic-teacher(malformed={malformed},wrong={wrong},seed={seed})")


def tiny_student(*, seed: int = 0, hidden_size: int = 64, num_layers: int = 3, num_heads: int = 4,
                 max_positions: int = 512) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a randomly initialised Llama (``hidden_size``, ``num_layers``, tied
    embeddings, float32, seeded) over the offline byte-level tokenizer (one token per character)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ...common.offline_tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer(padding_side="left", model_max_length=max_positions)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), tok
