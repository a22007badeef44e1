"""The error every lmops LLM backend raises when a model's answer cannot be used."""

from __future__ import annotations

__all__ = ["LLMError"]


class LLMError(RuntimeError):
    """A failed or malformed LLM reply, after the backend's retries.

    Attributes:
        endpoint: where the request went (a URL, or the backend's name).
        reason: what was wrong, in words.
    """

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.endpoint = endpoint
        self.reason = reason
