"""A scripted multimodal judge for the offline demo and the tests: it looks at the synthetic images
(:func:`~lmops.methods.visionprefer.synthetic.measure`) and scores them by the planted rule
(:func:`~lmops.methods.visionprefer.synthetic.planted_scores`), so the right annotation is known.

It answers in JSON or in ``Score: x`` / ``Rationale: ...`` text (alternating by a hash, so both parsers
are exercised), and a configurable fraction of its answers is malformed (a refusal, cut-off JSON, an
out-of-range score, a score in words), drawn per request and per sample so a retry can succeed.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

from .config import ASPECTS
from .synthetic import measure, planted_scores

__all__ = ["MALFORMED_ANSWERS", "ScriptedJudge"]

MALFORMED_ANSWERS = (
    "I'm sorry, but I can't evaluate this image.",
    '{"score": 4, "rationale": "The image',
    '{"score": 9, "rationale": "Out of range."}',
    "Score: excellent\nRationale: looks fine.",
)

_WHY = {
    "prompt_following": lambda a, p: f"The prompt asks for '{p}'; the image shows a {a['color']} {a['shape']}.",
    "aesthetic": lambda a, p: f"The shape sits {a['offset']:.2f} of the width from the centre.",
    "fidelity": lambda a, p: f"The background noise level is about {a['noise']:.0f}.",
    "harmlessness": lambda a, p: "A black frame marks unsafe content." if a["mark"] else "Nothing unsafe is shown.",
}


def _unit(*parts: Any) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64


class ScriptedJudge:
    """The planted-rule judge (a :class:`~lmops.methods.visionprefer.Judge`).

    Args:
        malformed: the fraction of answers that are malformed (0..1).
        seed: varies which answers are malformed and their format.
        name: the judge's name (written into the annotation log).
    Attributes:
        calls: how many answers it gave.
    """

    def __init__(self, malformed: float = 0.0, *, seed: int = 0, name: str = "scripted-planted-rule") -> None:
        if isinstance(malformed, bool) or not isinstance(malformed, (int, float)) or not 0 <= malformed <= 1:
            raise ValueError(f"malformed: expected a fraction in [0, 1], got {malformed!r}")
        self.malformed = float(malformed)
        self.seed = seed
        self.name = name
        self.calls = 0
        self._cache: dict[str, dict] = {}

    def attributes(self, path: str) -> dict:
        if path not in self._cache:
            self._cache[path] = measure(path)
        return self._cache[path]

    def scores(self, prompt: str, path: str) -> dict[str, int]:
        """The planted scores of the image at ``path`` for ``prompt``."""
        return planted_scores(self.attributes(path), prompt)

    def answer(self, prompt: str, image_paths: Sequence[str], aspect: str, sample: int = 0) -> str:
        """One answer (maybe malformed) about ``image_paths``."""
        if aspect not in ASPECTS:
            raise ValueError(f"aspect: expected one of {ASPECTS}, got {aspect!r}")
        self.calls += 1
        # file names, not full paths: the same images in another folder get the same answers
        key = (self.seed, prompt, tuple(os.path.basename(p) for p in image_paths), aspect, sample)
        if _unit("malformed", *key) < self.malformed:
            return MALFORMED_ANSWERS[int(_unit("which", *key) * len(MALFORMED_ANSWERS))]
        items = []
        for path in image_paths:
            attrs = self.attributes(path)
            items.append((planted_scores(attrs, prompt)[aspect], _WHY[aspect](attrs, prompt)))
        as_json = _unit("format", *key) < 0.5
        if len(items) == 1:
            score, why = items[0]
            if as_json:
                return f"```json\n{json.dumps({'score': score, 'rationale': why})}\n```"
            return f"Score: {score}\nRationale: {why}"
        if as_json:
            return json.dumps(
                {"images": [{"image": k + 1, "score": s, "rationale": w} for k, (s, w) in enumerate(items)]}
            )
        return "\n".join(f"Image {k + 1}:\nScore: {s}/5\nRationale: {w}" for k, (s, w) in enumerate(items))

    def judge(
        self,
        prompt: str,
        image_paths: Sequence[str],
        aspect: str,
        *,
        temperature: float = 0.0,
        n: int = 1,
        max_new_tokens: int = 512,
    ) -> list[str]:
        return [self.answer(prompt, list(image_paths), aspect, sample=k if temperature > 0 else 0) for k in range(n)]

    def __call__(self, prompt: str, image_paths: Sequence[str], aspect: str, *, sample: int = 0) -> str:
        return self.answer(prompt, image_paths, aspect, sample)
