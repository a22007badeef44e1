"""One way for every ``lmops`` verb to turn its ``--llm`` argument into a backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .protocol import LLM

__all__ = ["llm_from_spec"]


def llm_from_spec(
    spec: str,
    *,
    model: str | None = None,
    scripted: Callable[[], LLM] | None = None,
    cache: str | os.PathLike | None = None,
    max_concurrency: int = 8,
) -> LLM:
    """The backend named by ``spec``:

    - ``http://…`` or ``https://…``: :class:`~lmops.llm.OpenAICompatible` at that base URL (``…/v1``)
      with ``model`` (required; the API key comes from ``OPENAI_API_KEY`` when set);
    - a local model directory: :class:`~lmops.llm.HFLocal` (packed BitNet included);
    - ``"scripted"``: ``scripted()``, a method's offline recipe.

    With ``cache``, the backend is wrapped in :class:`~lmops.llm.CachedLLM` at that file, so a rerun
    or a resumed run asks nothing twice. Raises ``ValueError`` naming ``--llm`` for anything else.
    """
    from .cache import CachedLLM

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--llm: expected a URL, a model directory or 'scripted', got {spec!r}")
    if spec == "scripted":
        if scripted is None:
            raise ValueError("--llm scripted: this command has no scripted recipe")
        llm = scripted()
    elif spec.startswith(("http://", "https://")):
        if not model:
            raise ValueError(f"--model: required with --llm {spec} (the model name the server serves)")
        from .openai_compat import OpenAICompatible

        llm = OpenAICompatible(spec, model, max_concurrency=max_concurrency)
    elif Path(spec).expanduser().is_dir():
        from .hf_local import HFLocal

        llm = HFLocal.from_pretrained(Path(spec).expanduser(), name=model)
    else:
        raise ValueError(f"--llm: {spec!r} is neither an http(s) URL, an existing model directory, nor 'scripted'")
    return CachedLLM(llm, cache) if cache is not None else llm
