"""The one interface every lmops method uses to talk to a language model.

Three request types, answered in batches, as lm-evaluation-harness's ``LM`` (whose shape this follows):

- :meth:`LLM.generate`: ``n`` completions per prompt;
- :meth:`LLM.chat`: ``n`` replies per conversation (a list of ``{"role", "content"}`` messages), where
  the backend has a chat template or a chat endpoint;
- :meth:`LLM.loglikelihood`: the exact, token-aligned sum of log-probabilities of each continuation
  given its context, and the continuation's token count.

Every backend has a ``name`` (backend and model) that caches key on. :func:`check_generation_args` and
:func:`check_conversations` are the argument checks every backend shares.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

__all__ = ["LLM", "Message", "check_conversations", "text_content", "check_generation_args", "check_loglikelihood_args", "stop_list"]

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@runtime_checkable
class LLM(Protocol):
    """What a backend implements. All lists are batches; results come back in the order given."""

    name: str

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
        """``n`` completions of each prompt (without the prompt), each cut before the first ``stop``
        string. ``temperature=0`` is greedy."""
        ...

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
        """``n`` assistant replies to each conversation."""
        ...

    def loglikelihood(self, contexts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        """``(sum of log p(continuation tokens | context), number of continuation tokens)`` per pair."""
        ...


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    """``stop`` as a list of non-empty strings (``ValueError``/``TypeError`` naming ``stop`` otherwise)."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, (list, tuple)) else None
    if items is None or not all(isinstance(s, str) and s for s in items):
        raise TypeError(f"stop: expected None, a non-empty string or a list of them, got {stop!r}")
    return items


def _check_strings(name: str, items: object) -> list[str]:
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise TypeError(f"{name}: expected a list of strings, got {type(items).__name__}")
    return list(items)


def check_generation_args(
    prompts: object, max_new_tokens: object, temperature: object, top_p: object, stop: object, n: object
) -> list[str]:
    """Validate the arguments of :meth:`LLM.generate` (and the sampling ones of :meth:`LLM.chat`,
    passing ``prompts=[]``); returns ``prompts`` as a list."""
    items = _check_strings("prompts", prompts)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive int, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < float("inf"):
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    stop_list(stop)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    return items


def _is_part(part: object) -> bool:
    """An OpenAI content part: ``{"type": "text", "text": str}`` or ``{"type": "image_url", "image_url":
    {"url": str, ...}}`` (a URL or a ``data:`` URL)."""
    if not isinstance(part, dict):
        return False
    if part.get("type") == "text":
        return isinstance(part.get("text"), str)
    if part.get("type") == "image_url":
        image = part.get("image_url")
        return isinstance(image, dict) and isinstance(image.get("url"), str)
    return False


def check_conversations(conversations: object) -> list[list[Message]]:
    """Validate :meth:`LLM.chat`'s conversations: each a non-empty list of ``{"role", "content"}``, the
    content a string or, for backends that take images (an OpenAI-compatible vision endpoint), a list of
    OpenAI content parts (``{"type": "text", "text"}``, ``{"type": "image_url", "image_url": {"url"}}``)."""
    if not isinstance(conversations, (list, tuple)):
        raise TypeError(f"conversations: expected a list of conversations, got {type(conversations).__name__}")
    for i, conv in enumerate(conversations):
        if not isinstance(conv, (list, tuple)) or not conv:
            raise ValueError(f"conversations[{i}]: expected a non-empty list of messages, got {conv!r}")
        for j, msg in enumerate(conv):
            content = msg.get("content") if isinstance(msg, dict) else None
            ok_content = isinstance(content, str) or (
                isinstance(content, list) and bool(content) and all(_is_part(p) for p in content)
            )
            if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant") or not ok_content:
                raise ValueError(
                    f"conversations[{i}][{j}]: expected {{'role': 'system'|'user'|'assistant', 'content': str or "
                    f"a list of text/image_url parts}}, got {msg!r:.300}"
                )
    return [list(conv) for conv in conversations]


def text_content(message: Message) -> str:
    """A message's text: the string, or its text parts joined (images shown as ``[image]``), for backends
    that take text only."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p["text"] if p["type"] == "text" else "[image]" for p in content)


def check_loglikelihood_args(contexts: object, continuations: object) -> tuple[list[str], list[str]]:
    """Validate :meth:`LLM.loglikelihood`'s arguments: two string lists of one length, continuations non-empty."""
    ctx = _check_strings("contexts", contexts)
    cont = _check_strings("continuations", continuations)
    if len(ctx) != len(cont):
        raise ValueError(f"contexts, continuations: expected lists of one length, got {len(ctx)} and {len(cont)}")
    for i, c in enumerate(cont):
        if not c:
            raise ValueError(f"continuations[{i}]: expected a non-empty string")
    return ctx, cont
