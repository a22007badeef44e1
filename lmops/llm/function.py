"""``FunctionLLM``: a Python callable as an LLM backend (scripted demos, tests, custom clients)."""

from __future__ import annotations

from typing import Callable, Sequence

from .errors import LLMError
from .protocol import (
    Message,
    check_conversations,
    check_generation_args,
    check_loglikelihood_args,
    stop_list,
    text_content,
)

__all__ = ["FunctionLLM", "render_chat"]


def render_chat(conversation: list[Message]) -> str:
    """The plain chat rendering :class:`FunctionLLM` uses by default: one ``role: content`` line per
    message, then ``assistant:``. A choice (a callable has no chat template); pass ``chat_template``."""
    lines = [f"{m['role']}: {text_content(m)}" for m in conversation]
    return "\n".join(lines + ["assistant:"])


def _cut(text: str, stops: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


class FunctionLLM:
    """Wraps ``fn(prompt, **kwargs) -> str`` as an :class:`~lmops.llm.LLM`.

    ``fn`` is called once per completion with ``max_new_tokens``, ``temperature``, ``top_p``, ``stop`` (a
    list) and ``sample`` (0..n-1) as keywords; its output is cut before the first stop string here too.
    A return value that is not a string raises :class:`LLMError` (so a cache never stores it).

    Args:
        fn: the callable.
        name: the model name caches key on (default: ``fn``'s qualified name).
        chat_template: conversation -> prompt for :meth:`chat` (default :func:`render_chat`).
        loglikelihood_fn: ``(context, continuation) -> (logprob, n_tokens)``; without it
            :meth:`loglikelihood` raises ``NotImplementedError``.
    """

    def __init__(
        self,
        fn: Callable[..., str],
        *,
        name: str | None = None,
        chat_template: Callable[[list[Message]], str] = render_chat,
        loglikelihood_fn: Callable[[str, str], tuple[float, int]] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn: expected a callable fn(prompt, **kwargs) -> str, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or f"function:{getattr(fn, '__qualname__', type(fn).__name__)}"
        self.chat_template = chat_template
        self.loglikelihood_fn = loglikelihood_fn

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        n: int = 1,
    ) -> list[list[str]]:
        prompts = check_generation_args(prompts, max_new_tokens, temperature, top_p, stop, n)
        stops = stop_list(stop)
        out = []
        for prompt in prompts:
            samples = []
            for k in range(n):
                text = self.fn(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               stop=stops, sample=k)
                if not isinstance(text, str):
                    raise LLMError(self.name, f"the function returned {type(text).__name__}, expected str")
                samples.append(_cut(text, stops))
            out.append(samples)
        return out

    def chat(
        self,
        conversations: list[list[Message]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        n: int = 1,
    ) -> list[list[str]]:
        prompts = [self.chat_template(conv) for conv in check_conversations(conversations)]
        return self.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             stop=stop, n=n)

    def loglikelihood(self, contexts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        contexts, continuations = check_loglikelihood_args(contexts, continuations)
        if self.loglikelihood_fn is None:
            raise NotImplementedError(f"{self.name}: no loglikelihood_fn was given to FunctionLLM")
        out = []
        for ctx, cont in zip(contexts, continuations):
            value = self.loglikelihood_fn(ctx, cont)
            try:
                logprob, count = float(value[0]), int(value[1])
            except (TypeError, ValueError, IndexError):
                raise LLMError(self.name, f"loglikelihood_fn returned {value!r}, expected (float, int)") from None
            out.append((logprob, count))
        return out
