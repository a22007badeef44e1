"""``lmops se2 demo``: the whole Se2 pipeline offline, on a synthetic task with a scripted LLM whose
feedback has a planted best sequence.

The task: each question is six words, three *topic* words and three *filler* words in random order, with
four answer options ``A``-``D``. A question's topic (one of four) is the consonant set its topic words are
spelt with; every topic word occurs once in the whole data set and the filler words are shared by all
topics, so word overlap (BM25) carries no topic signal, while the spelling does, for an encoder that learns
it from the LLM's feedback.

The scripted LLM (:func:`scripted_llm`) "knows" every answer but uses that knowledge only as far as the
prompt's demonstrations share the query's topic, with the most credit for the one next to the query:
credit = 1.0, 0.3, 0.1 for a same-topic example at distance 1, 2, 3 from the query. The gold option's
mean NLL is ``1.3 - 0.5 * credit``; every other option's is ``1.0 + 0.4 * h`` with ``h`` a fixed hash in
[0, 1). So the best sequence puts same-topic examples next to the query; random examples help in about a
third of the queries, BM25's no more often.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from ...llm import FunctionLLM
from .baselines import bm25_selection, random_selection
from .beam import build_prompts, select
from .config import ScoreConfig, SelectConfig, TrainConfig
from .data import SEPARATOR, Example, Pool, Template, read_examples
from .inference import evaluate
from .retriever import DualEncoder
from .sampling import score_candidates
from .training import train_retriever

__all__ = [
    "DEMO_SCORE",
    "DEMO_TRAIN",
    "DemoResult",
    "demo_task",
    "load_demo_task",
    "run_demo",
    "scripted_llm",
    "tiny_dual_encoder",
]

TOPIC_CONSONANTS = ("bdfg", "klmn", "prst", "vwxz")
VOWELS = "aeiou"
FILLER_CONSONANTS = "chjy"
OPTIONS = ["A", "B", "C", "D"]
CREDIT = (1.0, 0.3, 0.1)  # a same-topic demonstration at distance 1, 2, 3 from the query

# the demo's settings: a small pool, L = 12, and a tiny encoder trained fast (not the official values)
DEMO_SCORE = ScoreConfig(n_candidates=12)
DEMO_TRAIN = TrainConfig(lr=3e-3, epochs=8, batch_size=16, warmup_steps=20, n_hard_negatives=5,
                         n_random_negatives=5)


def _hash01(text: str) -> float:
    return zlib.crc32(text.encode("utf-8")) / 2**32


def gold_of(question: str) -> int:
    """The answer the scripted LLM knows for ``question``."""
    return zlib.crc32(question.encode("utf-8")) % len(OPTIONS)


def topic_of(text: str) -> int | None:
    """The topic whose consonants occur most in ``text`` (lowercase letters only), ``None`` if none does."""
    counts = [sum(text.count(ch) for ch in letters) for letters in TOPIC_CONSONANTS]
    best = max(range(len(counts)), key=counts.__getitem__)
    return best if counts[best] > 0 else None


def demo_task(seed: int = 0, *, n_pool: int = 160, n_test: int = 80) -> tuple[list[Example], list[Example]]:
    """The synthetic task: ``(pool, test)``, topics balanced; pool ids ``0..n_pool-1``, test ids from 1000.
    Deterministic in ``seed`` (seed 0 is the data shipped in ``examples/``)."""
    rng = random.Random(seed)
    fillers = sorted({"".join(rng.choice(s) for s in (FILLER_CONSONANTS, VOWELS, FILLER_CONSONANTS, VOWELS))
                      for _ in range(40)})[:10]
    used: set[str] = set()

    def topic_word(topic: int) -> str:
        cons = TOPIC_CONSONANTS[topic]
        while True:
            word = "".join(rng.choice(s) for s in (cons, VOWELS, cons, VOWELS, cons))
            if word not in used:
                used.add(word)
                return word

    def example(ex_id: int, topic: int) -> Example:
        words = [topic_word(topic) for _ in range(3)] + rng.sample(fillers, 3)
        rng.shuffle(words)
        question = " ".join(words)
        return Example(ex_id, question, options=list(OPTIONS), gold=gold_of(question))

    pool = [example(i, i % len(TOPIC_CONSONANTS)) for i in range(n_pool)]
    test = [example(1000 + i, i % len(TOPIC_CONSONANTS)) for i in range(n_test)]
    return pool, test


def load_demo_task() -> tuple[list[Example], list[Example]]:
    """The shipped demo data (``examples/pool.jsonl``, ``examples/test.jsonl``): ``demo_task(0)``."""
    root = resources.files("lmops.methods.se2") / "examples"
    with resources.as_file(root / "pool.jsonl") as p, resources.as_file(root / "test.jsonl") as t:
        return read_examples(p), read_examples(t)


def scripted_loglikelihood(context: str, continuation: str) -> tuple[float, int]:
    """The scripted LLM's ``(logprob, n_tokens)`` (one token per byte) for an option after a prompt."""
    parts = context.split(SEPARATOR)
    question, demos = parts[-1], parts[:-1]
    topic = topic_of(question)
    credit = sum(w for w, demo in zip(CREDIT, reversed(demos)) if topic is not None and topic_of(demo) == topic)
    option = continuation.strip()
    if option in OPTIONS and OPTIONS.index(option) == gold_of(question):
        nll = 1.3 - 0.5 * credit
    else:
        nll = 1.0 + 0.4 * _hash01(f"{question}|{option}")
    n = max(1, len(continuation.encode("utf-8")))
    return -nll * n, n


def _scripted_generate(prompt: str, **_: object) -> str:
    """Greedy answer of the scripted LLM: the option with the lowest NLL."""
    return min(OPTIONS, key=lambda o: -scripted_loglikelihood(prompt, " " + o)[0])


def scripted_llm() -> FunctionLLM:
    """The demo's scripted LLM (:func:`scripted_loglikelihood`; ``generate`` answers the best option)."""
    return FunctionLLM(_scripted_generate, name="se2-demo-scripted", loglikelihood_fn=scripted_loglikelihood)


def tiny_dual_encoder(seed: int = 0, *, hidden_size: int = 32) -> DualEncoder:
    """Two 1-layer BERT encoders from a config (random weights, no dropout), with the offline byte-level
    tokenizer (right padding)."""
    import torch
    from transformers import BertConfig, BertModel

    from ...common.offline_tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer(padding_side="right", model_max_length=256)
    # no dropout and a wider init: a 1-layer encoder this small learns the spelling in a few epochs that way
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden_size, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.1)
    torch.manual_seed(seed)
    return DualEncoder(BertModel(config), BertModel(config), tok, max_query_length=192, max_context_length=64,
                       template=Template())


@dataclass
class DemoResult:
    """Accuracies on the demo's test queries and the wall time (seconds)."""

    se2: float
    random: float
    bm25: float
    seconds: float
    n_train: int = 0


def run_demo(seed: int = 0, *, progress: bool = False, log: Callable[[str], None] | None = print) -> DemoResult:
    """Score, train, select and evaluate on the synthetic task; ``log`` gets one line per stage."""
    import torch

    say = log or (lambda _msg: None)
    start = time.perf_counter()
    pool_examples, test = demo_task(seed)
    pool = Pool(pool_examples)
    llm = scripted_llm()
    say(f"se2 demo: pool {len(pool)} examples, {len(test)} test queries, 4 hidden topics, scripted LLM")
    data = score_candidates(llm, pool, config=DEMO_SCORE, progress=progress)
    say(f"scored {sum(len(r.ctxs) for s in data.steps for part in s for r in part)} candidates in "
        f"{DEMO_SCORE.steps} steps: {len(data.train)} train / {len(data.valid)} valid records")
    torch.manual_seed(seed)
    retriever = tiny_dual_encoder(seed)
    config = TrainConfig(**{**DEMO_TRAIN.to_dict(), "seed": seed})
    report = train_retriever(retriever, data.train, data.valid, pool, pool.examples, config, progress=progress)
    say(f"trained the dual encoder: loss {report.train_loss[0]:.3f} -> {report.train_loss[-1]:.3f}, "
        f"best valid loss {min(report.valid_loss):.3f} (epoch {report.best_epoch + 1})")
    se2 = select(retriever, pool, test, SelectConfig(), progress=progress)
    prompts = {
        "Se2": [s.prompt.text for s in se2],
        "random": [p.text for p in build_prompts(pool, random_selection(pool, test, seed=seed), test)],
        "BM25": [p.text for p in build_prompts(pool, bm25_selection(pool, test), test)],
    }
    acc = {name: evaluate(llm, test, texts).score for name, texts in prompts.items()}
    seconds = time.perf_counter() - start
    say(f"accuracy on {len(test)} test queries (3 shots): Se2 {acc['Se2']:.3f}  random {acc['random']:.3f}  "
        f"BM25 {acc['BM25']:.3f}   ({seconds:.1f} s)")
    return DemoResult(acc["Se2"], acc["random"], acc["BM25"], seconds, report.n_train)
