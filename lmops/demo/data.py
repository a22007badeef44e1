"""Text that exists on every machine, and a byte-level tokenizer: what the demo trains on, with no download.

The corpus is CPython's own reference documentation, ``pydoc_data.topics.topics`` (about 460 KB of
English prose and grammar that ships with the interpreter and feeds ``help()``). Where a distribution
leaves ``pydoc_data`` out, a few KB of public-domain text shipped here (``demo_corpus.txt``) stands in.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

__all__ = ["ByteTokenizer", "Corpus", "load_demo_corpus"]


@dataclass(frozen=True)
class Corpus:
    """UTF-8 bytes of a text, and where it came from (for the user to read)."""

    data: bytes
    source: str

    def split(self, holdout: float) -> tuple[bytes, bytes]:
        """``(train, validation)``: the last ``holdout`` fraction (0 < holdout < 1) is the validation part."""
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout: expected a fraction in (0, 1), got {holdout!r}")
        cut = int(len(self.data) * (1.0 - holdout))
        return self.data[:cut], self.data[cut:]


def load_demo_corpus(prefer_pydoc: bool = True) -> Corpus:
    """The demo's training text: ``pydoc_data.topics`` (topics in sorted order), else the shipped fallback."""
    if prefer_pydoc:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            topics = None
        if topics:
            text = "\n\n".join(topics[key] for key in sorted(topics))
            return Corpus(text.encode("utf-8"), f"CPython reference documentation (pydoc_data.topics, {len(topics)} topics)")
    text = resources.files(__name__).joinpath("demo_corpus.txt").read_text(encoding="utf-8")
    return Corpus(text.encode("utf-8"), "lmops/demo/demo_corpus.txt (pydoc_data not available)")


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, token id = byte value, nothing to download.

    ``decode`` replaces bytes that do not form valid UTF-8 (a model may emit half a character).
    """

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
