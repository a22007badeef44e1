"""A scripted judge for the offline demo and tests: an :class:`~lmops.llm.FunctionLLM` whose criterion
scores are known functions of hidden qualities written into each sample, and whose decompositions are
given in advance, so HD-Eval's answer (what to keep, what to prune, which weights) is known.

A sample carries its qualities in a tag, ``"... [qualities: logic=3.20 flow=1.50]"``. For a scoring
prompt the judge reads the criterion path and the tag, computes the criterion's value ``v`` (clipped to
the scale), and puts probability ``1 - (v - floor v)`` on ``floor v`` and the rest on ``ceil v``, so
the probability-weighted score is ``v`` (up to a 1e-9 floor on the other scores). Without
log-probabilities it answers ``"Score: round(v)"``. A criterion it has no reader for gets a uniform
distribution, or an unparsable generated answer.
"""

from __future__ import annotations

import json
import math
import re
from typing import Callable, Mapping, Sequence, Union

import numpy as np

from ...llm import FunctionLLM
from .decompose import DECOMPOSE_MARK
from .scoring import CRITERION_MARK

__all__ = [
    "DEMO_CRITERIA", "DEMO_TASK", "ScriptedJudge", "demo_judge", "encode_qualities", "make_demo_records",
    "parse_qualities",
]

_TAG = re.compile(r"\[qualities:([^\]]*)\]")
_PAIR = re.compile(r"([A-Za-z_][\w-]*)=(-?\d+(?:\.\d+)?)")

Reader = Union[str, Callable[[Mapping[str, float]], float]]


def encode_qualities(text: str, qualities: Mapping[str, float]) -> str:
    """``text`` with its hidden qualities appended as a tag."""
    pairs = " ".join(f"{k}={v:.2f}" for k, v in qualities.items())
    return f"{text} [qualities: {pairs}]"


def parse_qualities(text: str) -> dict[str, float]:
    """The qualities tagged in ``text`` (``{}`` when there is no tag)."""
    match = _TAG.search(text)
    return {} if match is None else {k: float(v) for k, v in _PAIR.findall(match.group(1))}


class ScriptedJudge:
    """The judge (see the module docstring).

    Args:
        readers: criterion path (``"coherence"``, ``"coherence/logic"``) -> a quality name, or a
            callable from the qualities to the criterion's value.
        decompositions: criterion path -> its sub-criteria ``[(name, description), ...]``; a criterion
            not listed gets an answer that is not a list (a failed decomposition).
        low, high: the score scale.
        logprobs: give ``loglikelihood`` (else the backend raises ``NotImplementedError``).
        name: the model name (what a cache keys on).
    Attributes:
        llm: the :class:`~lmops.llm.FunctionLLM`.
        calls: counts of ``"score"``, ``"loglikelihood"`` and ``"decompose"`` requests answered.
    """

    def __init__(self, readers: Mapping[str, Reader], decompositions: Mapping[str, Sequence[tuple[str, str]]] = (),
                 *, low: int = 1, high: int = 5, logprobs: bool = True, name: str = "scripted:hd-eval") -> None:
        self.readers = dict(readers)
        self.decompositions = dict(decompositions)
        self.low, self.high = low, high
        self.calls = {"score": 0, "loglikelihood": 0, "decompose": 0}
        self.llm = FunctionLLM(self.generate_one, name=name,
                               loglikelihood_fn=self.loglikelihood_one if logprobs else None)

    def value(self, path: str, text: str) -> float | None:
        """The criterion's value for a sample (clipped to the scale), or ``None`` without a reader."""
        reader = self.readers.get(path)
        if reader is None:
            return None
        q = parse_qualities(text)
        v = q[reader] if isinstance(reader, str) else reader(q)
        return min(max(float(v), self.low), float(self.high))

    @staticmethod
    def _line_after(prompt: str, mark: str) -> str | None:
        start = prompt.find(mark)
        if start < 0:
            return None
        return prompt[start + len(mark):].split("\n", 1)[0].strip()

    def _criterion(self, prompt: str, mark: str) -> str | None:
        shown = self._line_after(prompt, mark)
        return None if shown is None else "/".join(s.strip() for s in shown.split(" > "))

    def loglikelihood_one(self, context: str, continuation: str) -> tuple[float, int]:
        self.calls["loglikelihood"] += 1
        path = self._criterion(context, CRITERION_MARK)
        k = int(continuation.strip())
        v = None if path is None else self.value(path, context)
        if v is None:
            return math.log(1.0 / (self.high - self.low + 1)), 1
        lo = math.floor(v)
        p = {lo: 1.0 - (v - lo), lo + 1: v - lo}.get(k, 0.0)
        return math.log(max(p, 1e-9)), 1

    def generate_one(self, prompt: str, **_: object) -> str:
        decompose_path = self._criterion(prompt, DECOMPOSE_MARK)
        if decompose_path is not None:
            self.calls["decompose"] += 1
            subs = self.decompositions.get(decompose_path)
            if subs is None:
                return "This criterion is already atomic; I would not split it."
            return json.dumps([{"name": n, "description": d} for n, d in subs])
        self.calls["score"] += 1
        path = self._criterion(prompt, CRITERION_MARK)
        v = None if path is None else self.value(path, prompt)
        return "I cannot judge this." if v is None else f"Score: {round(v)}"


# ---------------------------------------------------------------------------------------------------
# The offline demo: news summaries whose human score depends on logic and grammar only.

DEMO_TASK = "Rate the overall quality of a short news summary."
DEMO_CRITERIA = [
    "coherence: the summary is well structured and logically organized",
    "fluency: the sentences are grammatical and well punctuated",
    "relevance: the summary keeps to the important content of the article",
]
DEMO_QUALITIES = ("logic", "flow", "grammar", "punctuation", "relevance")
DEMO_SYSTEMS = ("sys-a", "sys-b", "sys-c", "sys-d", "sys-e", "sys-f")
_SENTENCES = (
    "The city council approved the new transit budget after a long debate.",
    "Researchers reported a drop in river pollution over the past decade.",
    "The central bank kept interest rates unchanged for a third month.",
    "A storm closed schools across the region on Tuesday.",
    "The museum reopened its east wing after two years of repairs.",
    "Local farmers expect a smaller harvest because of the dry summer.",
    "The team won the final with a goal in the last minute.",
    "A new library branch will open in the northern district next spring.",
)


def demo_judge(*, logprobs: bool = True) -> ScriptedJudge:
    """The judge of the demo: coherence = mean(logic, flow), fluency = mean(grammar, punctuation),
    relevance = relevance; coherence splits into logic and flow, fluency into grammar and punctuation,
    relevance into coverage and focus (both reading relevance)."""
    readers: dict[str, Reader] = {
        "coherence": lambda q: (q["logic"] + q["flow"]) / 2,
        "coherence/logic": "logic",
        "coherence/flow": "flow",
        "fluency": lambda q: (q["grammar"] + q["punctuation"]) / 2,
        "fluency/grammar": "grammar",
        "fluency/punctuation": "punctuation",
        "relevance": "relevance",
        "relevance/coverage": "relevance",
        "relevance/focus": "relevance",
    }
    decompositions = {
        "coherence": [("logic", "the ideas follow from one another"), ("flow", "sentences connect smoothly")],
        "fluency": [("grammar", "the sentences are grammatical"), ("punctuation", "punctuation is correct")],
        "relevance": [("coverage", "the main facts are present"), ("focus", "nothing unimportant is included")],
    }
    return ScriptedJudge(readers, decompositions, logprobs=logprobs, name="scripted:hd-eval-demo")


def make_demo_records(n: int = 240, *, seed: int = 0, n_unlabelled: int = 4) -> list[dict]:
    """The demo's records (what ``examples/summaries.jsonl`` holds): each system has its own mean
    qualities; the human score is ``(2 logic + grammar) / 3`` plus noise (sd 0.15), so flow,
    punctuation and relevance do not matter; the last ``n_unlabelled`` scores are null."""
    rng = np.random.default_rng(seed)
    means = {s: rng.uniform(2.0, 4.0, size=len(DEMO_QUALITIES)) for s in DEMO_SYSTEMS}
    records = []
    for i in range(n):
        system = DEMO_SYSTEMS[i % len(DEMO_SYSTEMS)]
        q = np.clip(means[system] + rng.normal(0.0, 0.9, size=len(DEMO_QUALITIES)), 1.0, 5.0).round(2)
        qual = dict(zip(DEMO_QUALITIES, (float(v) for v in q)))
        human = (2 * qual["logic"] + qual["grammar"]) / 3 + rng.normal(0.0, 0.15)
        text = f"Summary {i:03d}: {_SENTENCES[i % len(_SENTENCES)]}"
        records.append({"sample": encode_qualities(text, qual),
                        "score": None if i >= n - n_unlabelled else round(float(human), 2), "system": system})
    return records
