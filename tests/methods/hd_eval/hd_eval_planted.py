"""The planted task the HD-Eval tests share (a helper module, not collected): samples carry hidden
features f1..f5; the human score is 2*f1 + 1*f3 + noise, so of the criteria only coherence > logic (f1)
and fluency > grammar (f3) matter.

- coherence = (f1 + f2) / 2, splitting into logic (f1) and flow (f2);
- fluency = f3, splitting into grammar (f3) and spelling (f5);
- relevance = f4 (noise; its decomposition is not scripted, so asking fails).
"""

from __future__ import annotations

import numpy as np

from lmops.methods.hd_eval.scripted import ScriptedJudge, encode_qualities

TASK = "Rate the quality of a product description."
CRITERIA = ["coherence: the text is logically organized", "fluency", "relevance: it stays on topic"]
SYSTEMS = ("alpha", "beta", "gamma", "delta", "epsilon")


def judge(*, logprobs: bool = True) -> ScriptedJudge:
    readers = {
        "coherence": lambda q: (q["f1"] + q["f2"]) / 2,
        "coherence/logic": "f1",
        "coherence/flow": "f2",
        "fluency": "f3",
        "fluency/grammar": "f3",
        "fluency/spelling": "f5",
        "relevance": "f4",
    }
    decompositions = {
        "coherence": [("logic", "claims follow from each other"), ("flow", "sentences connect smoothly")],
        "fluency": [("grammar", "sentences are grammatical"), ("spelling", "words are spelled right")],
    }
    return ScriptedJudge(readers, decompositions, logprobs=logprobs, name="scripted:planted")


def data(n: int = 150, *, seed: int = 1, noise: float = 0.2, n_nan: int = 0):
    """``(samples, human scores, systems, features)``; the last ``n_nan`` scores are NaN / None."""
    rng = np.random.default_rng(seed)
    feats = rng.uniform(1.0, 5.0, size=(n, 5)).round(2)
    human = 2 * feats[:, 0] + feats[:, 2] + rng.normal(0.0, noise, size=n)
    samples = [encode_qualities(f"Item {i}: a sturdy oak chair.", {f"f{k + 1}": float(feats[i, k]) for k in range(5)})
               for i in range(n)]
    scores: list = [float(h) for h in human]
    for i in range(n - n_nan, n):
        scores[i] = None if i % 2 else float("nan")
    systems = [SYSTEMS[i % len(SYSTEMS)] for i in range(n)]
    return samples, scores, systems, feats
