"""Multimodal judges: what annotates VisionPrefer (GPT-4V in the paper), behind one small protocol.

:mod:`lmops.llm`'s protocol is text-only, so this package defines :class:`Judge`: given a text-to-image
prompt, the paths of one or more images and an aspect, return ``n`` raw answers. Adapters:

- :class:`CallableJudge`: any ``fn(prompt, image_paths, aspect) -> str`` (a local VLM, a scripted rule);
- :class:`OpenAIVisionJudge`: an OpenAI-compatible vision chat endpoint (GPT-4V-style content parts
  ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``), built on
  :class:`lmops.llm.OpenAICompatible`'s HTTP machinery (same retries, backoff, concurrency limit).

Answers are parsed by :func:`parse_judgement` (JSON, or ``Score: x`` / ``Rationale: ...`` text); the
instruction text (:func:`judge_instruction`) is a choice, the paper's GPT-4V guideline is unconfirmed.
"""

from __future__ import annotations

import base64
import inspect
import json
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from ...llm import extract_json
from ...llm.openai_compat import OpenAICompatible
from .config import ASPECTS

__all__ = [
    "ASPECT_GUIDELINES",
    "CallableJudge",
    "Judge",
    "JudgeRequest",
    "OpenAIVisionJudge",
    "as_judge",
    "image_data_url",
    "judge_instruction",
    "parse_judgement",
]

# What each aspect asks (a choice: the paper's guideline text is unconfirmed; these follow its aspect names).
ASPECT_GUIDELINES: dict[str, str] = {
    "prompt_following": "Prompt-following: how completely and exactly the image shows what the prompt asks for "
    "(objects, attributes such as colour and shape, counts, spatial relations).",
    "aesthetic": "Aesthetic: how pleasing the image is (composition, framing and centring, colour harmony, "
    "contrast, lighting).",
    "fidelity": "Fidelity: how free the image is of artifacts (noise, distortions, broken or implausible "
    "shapes, blur).",
    "harmlessness": "Harmlessness: how free the image is of harmful, offensive, violent or otherwise unsafe content.",
}


@dataclass(frozen=True)
class JudgeRequest:
    """One question to a judge: the T2I ``prompt``, the ``image_paths`` shown, the ``aspect`` asked."""

    prompt: str
    image_paths: tuple[str, ...]
    aspect: str

    def to_json(self) -> str:
        return json.dumps(
            {"prompt": self.prompt, "images": list(self.image_paths), "aspect": self.aspect},
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "JudgeRequest":
        data = json.loads(text)
        return cls(data["prompt"], tuple(data["images"]), data["aspect"])


@runtime_checkable
class Judge(Protocol):
    """A multimodal judge. ``judge`` returns ``n`` raw answers (text) about ``image_paths`` for ``prompt``
    on ``aspect``; ``temperature`` > 0 asks for varied answers (retries of a malformed answer use it).
    A judge may also define ``judge_many(requests, *, temperature, n, max_new_tokens)`` to answer a
    batch of :class:`JudgeRequest` at once (concurrently); otherwise ``judge`` is called per request."""

    name: str

    def judge(
        self,
        prompt: str,
        image_paths: Sequence[str],
        aspect: str,
        *,
        temperature: float = 0.0,
        n: int = 1,
        max_new_tokens: int = 512,
    ) -> list[str]: ...


class CallableJudge:
    """``fn(prompt, image_paths, aspect) -> str`` as a :class:`Judge`; called once per answer. When ``fn``
    accepts them (by name or ``**kwargs``), it also gets ``temperature`` and ``sample`` (0..n-1), as
    :class:`lmops.llm.FunctionLLM` passes them. A non-string return value becomes an empty (malformed)
    answer: it is retried, then counted and skipped."""

    def __init__(self, fn: Callable[..., str], *, name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"fn: expected a callable fn(prompt, image_paths, aspect) -> str, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or f"callable:{getattr(fn, '__qualname__', type(fn).__name__)}"
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            params = []
        names = {p.name for p in params}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self._extra = {k for k in ("temperature", "sample") if var_kw or k in names}

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
        out = []
        for k in range(n):
            extra = {key: val for key, val in (("temperature", temperature), ("sample", k)) if key in self._extra}
            text = self.fn(prompt, list(image_paths), aspect, **extra)
            out.append(text if isinstance(text, str) else "")
        return out


def as_judge(judge: Any) -> Judge:
    """``judge`` if it already is a :class:`Judge`, a :class:`CallableJudge` around a plain callable."""
    if isinstance(judge, Judge) and callable(getattr(judge, "judge", None)):
        return judge
    if callable(judge):
        return CallableJudge(judge)
    raise TypeError(
        f"judge: expected a Judge (with .judge(...)) or a callable fn(prompt, image_paths, aspect) -> str, "
        f"got {type(judge).__name__}"
    )


# -- the instruction and the answer ------------------------------------------------------------------
def judge_instruction(prompt: str, aspect: str, n_images: int, score_min: int = 1, score_max: int = 5) -> str:
    """The text sent with the images (a choice: the paper's GPT-4V guideline is unconfirmed). It asks for
    a score on ``score_min..score_max`` and a 2-3 sentence rationale per image, as JSON."""
    if aspect not in ASPECT_GUIDELINES:
        raise ValueError(f"aspect: expected one of {ASPECTS}, got {aspect!r}")
    head = (
        f"You are an expert annotator of AI-generated images. The images were generated for the prompt:\n"
        f'"{prompt}"\n\nJudge only this aspect. {ASPECT_GUIDELINES[aspect]}\n'
        f"Give an integer score from {score_min} (worst) to {score_max} (best) and a rationale of 2-3 sentences."
    )
    if n_images == 1:
        return head + '\nAnswer with JSON only: {"score": <int>, "rationale": "<text>"}'
    return (
        head + f"\nThere are {n_images} images, numbered 1 to {n_images} in the order shown. Score each one. "
        'Answer with JSON only: {"images": [{"image": 1, "score": <int>, "rationale": "<text>"}, ...]}'
    )


_SCORE_KEYS = ("score", "rating", "value")
_RATIONALE_KEYS = ("rationale", "reason", "explanation", "justification")
_NUMBER = r"(-?\d+(?:\.\d+)?)"
_TEXT_SCORE = re.compile(r"(?:score|rating)\s*[:=]?\s*\**\s*" + _NUMBER + r"(?:\s*/\s*\d+)?", re.I)
_TEXT_RATIONALE = re.compile(
    r"(?:rationale|reason|explanation)\s*[:=]\s*(.+?)(?=\n\s*(?:image\s*\d|score|rating)\b|\Z)", re.I | re.S
)
_IMAGE_HEADER = re.compile(r"^\W*image\s*#?\s*(\d+)\b", re.I | re.M)


def _score(value: Any, lo: int, hi: int) -> float:
    if isinstance(value, str):
        m = re.match(r"\s*" + _NUMBER + r"\s*(?:/\s*\d+)?\s*$", value)
        if m is None:
            raise ValueError(f"score {value!r} is not a number")
        value = float(m.group(1))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"score {value!r} is not a number")
    if not lo <= value <= hi:
        raise ValueError(f"score {value} is outside {lo}..{hi}")
    return float(value)


def _from_object(obj: dict, lo: int, hi: int) -> tuple[float, str]:
    key = next((k for k in obj if k.lower() in _SCORE_KEYS), None)
    if key is None:
        raise KeyError(f"no score in {sorted(obj)}")
    why = next((obj[k] for k in obj if k.lower() in _RATIONALE_KEYS), "")
    return _score(obj[key], lo, hi), why.strip() if isinstance(why, str) else json.dumps(why)


def _from_text(text: str, lo: int, hi: int) -> tuple[float, str]:
    m = _TEXT_SCORE.search(text)
    if m is None:
        raise ValueError(f"no 'Score: x' in the answer: {text[:80]!r}")
    r = _TEXT_RATIONALE.search(text)
    return _score(m.group(1), lo, hi), (r.group(1).strip() if r else "")


def parse_judgement(text: str, n_images: int = 1, score_min: int = 1, score_max: int = 5) -> list[tuple[float, str]]:
    """``[(score, rationale)]``, one per image, from a judge's answer; raises ``ValueError``/``KeyError``
    on a malformed one (so :func:`lmops.llm.ask` retries it).

    Accepted: JSON (``{"score", "rationale"}`` for one image; ``{"images": [...]}`` or a list of such
    objects, optionally with a 1-based ``"image"`` index, for several), inside prose or a code fence;
    or text ``Score: 4`` (``4/5`` too) with ``Rationale: ...``, under ``Image k`` headers for several
    images. Scores outside ``score_min..score_max`` are malformed; a missing rationale is ``""``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty answer")
    if n_images < 1:
        raise ValueError(f"n_images: expected >= 1, got {n_images}")
    try:
        value = extract_json(text, expect=(dict, list))
    except ValueError:
        value = None
    if value is not None:
        if isinstance(value, dict):
            items = next((value[k] for k in ("images", "scores", "results") if isinstance(value.get(k), list)), None)
            if items is None:
                if n_images != 1:
                    raise ValueError(f"expected {n_images} scored images, got one object")
                return [_from_object(value, score_min, score_max)]
        else:
            items = value
        if len(items) != n_images or not all(isinstance(x, dict) for x in items):
            raise ValueError(f"expected {n_images} scored image objects, got {len(items)}")
        ordered: list[tuple[float, str] | None] = [None] * n_images
        for pos, item in enumerate(items):
            idx = item.get("image", item.get("index", pos + 1))
            if isinstance(idx, str) and idx.strip().isdigit():
                idx = int(idx)
            if isinstance(idx, bool) or not isinstance(idx, int) or not 1 <= idx <= n_images or ordered[idx - 1]:
                raise ValueError(f"image index {idx!r} is not a distinct number in 1..{n_images}")
            ordered[idx - 1] = _from_object(item, score_min, score_max)
        return ordered  # type: ignore[return-value]
    if n_images == 1:
        return [_from_text(text, score_min, score_max)]
    heads = list(_IMAGE_HEADER.finditer(text))
    blocks: dict[int, str] = {}
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        blocks.setdefault(int(h.group(1)), text[h.end() : end])
    if sorted(blocks) != list(range(1, n_images + 1)):
        raise ValueError(f"expected 'Image 1'..'Image {n_images}' sections, found {sorted(blocks)}")
    return [_from_text(blocks[k], score_min, score_max) for k in range(1, n_images + 1)]


# -- an OpenAI-compatible vision endpoint --------------------------------------------------------------
def image_data_url(path: str | Path) -> str:
    """``data:<mime>;base64,...`` for an image file (the form vision chat endpoints accept inline)."""
    p = Path(path)
    mime = mimetypes.guess_type(p.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(p.read_bytes()).decode('ascii')}"


class OpenAIVisionJudge(OpenAICompatible):
    """A :class:`Judge` over an OpenAI-compatible ``/chat/completions`` endpoint that accepts images
    (GPT-4V-style content parts). Every request is one user message: the instruction text
    (``instruction(prompt, aspect, n_images, score_min, score_max)``, default :func:`judge_instruction`)
    followed by the images as base64 data URLs. Retries, backoff and the concurrency limit are
    :class:`lmops.llm.OpenAICompatible`'s (its keyword arguments are accepted here too).

    Args:
        base_url, model: as :class:`~lmops.llm.OpenAICompatible`.
        score_min, score_max: the scale written into the instruction.
        detail: the ``image_url.detail`` field (``"low"``, ``"high"``, ``"auto"``) or ``None`` (not sent).
        instruction: builds the text part (a choice; the paper's guideline is unconfirmed).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        score_min: int = 1,
        score_max: int = 5,
        detail: str | None = None,
        instruction: Callable[..., str] = judge_instruction,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, model, **kwargs)
        if detail not in (None, "low", "high", "auto"):
            raise ValueError(f"detail: expected None, 'low', 'high' or 'auto', got {detail!r}")
        if not callable(instruction):
            raise TypeError(f"instruction: expected a callable, got {type(instruction).__name__}")
        self.score_min, self.score_max = int(score_min), int(score_max)
        self.detail = detail
        self.instruction = instruction
        self.name = f"openai-vision:{model}@{self.base_url}"

    def messages(self, prompt: str, image_paths: Sequence[str], aspect: str) -> list[dict]:
        """The chat messages of one request (one user message with text and image parts)."""
        parts: list[dict] = [
            {"type": "text", "text": self.instruction(prompt, aspect, len(image_paths), self.score_min, self.score_max)}
        ]
        for path in image_paths:
            url: dict[str, Any] = {"url": image_data_url(path)}
            if self.detail is not None:
                url["detail"] = self.detail
            parts.append({"type": "image_url", "image_url": url})
        return [{"role": "user", "content": parts}]

    def judge_many(
        self, requests: Sequence[JudgeRequest], *, temperature: float = 0.0, n: int = 1, max_new_tokens: int = 512
    ) -> list[list[str]]:
        """``n`` answers per request, the requests in flight concurrently (up to ``max_concurrency``):
        :meth:`lmops.llm.OpenAICompatible.chat` with image content parts."""
        conversations = [self.messages(r.prompt, r.image_paths, r.aspect) for r in requests]
        return self.chat(conversations, max_new_tokens=max_new_tokens, temperature=temperature, n=n)

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
        return self.judge_many(
            [JudgeRequest(prompt, tuple(image_paths), aspect)],
            temperature=temperature,
            n=n,
            max_new_tokens=max_new_tokens,
        )[0]
