"""The dual encoder (DPR's ``BiEncoder``, as Se2 trains it): a query encoder and a context encoder, two
separate ``transformers`` encoders (BERT-like ``AutoModel``), each text represented by the hidden state
of its first token ([CLS]), scored by dot product.

Saved as a directory: ``query_encoder/`` and ``context_encoder/`` (``save_pretrained``, safetensors),
``tokenizer/`` and ``se2_retriever.json`` (lengths and the demonstration template).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ...common.files import atomic_directory
from .data import SEPARATOR, Example, Pool, Template

__all__ = ["DualEncoder", "query_text"]

_CONFIG_FILE = "se2_retriever.json"


def query_text(pool: Pool, template: Template, chosen: Sequence[int], query: Example) -> str:
    """The query encoder's input: the chosen demonstrations in prompt order, then the query's question,
    joined by " \\n " (the official ``Se2Dataset``; the beam search encodes its sequences the same way)."""
    return SEPARATOR.join([template.demonstration(pool[c]) for c in chosen] + [template.question(query)])


class DualEncoder(nn.Module):
    """Two encoders and their (shared) tokenizer.

    Args:
        query_encoder, context_encoder: ``transformers`` models whose output has ``last_hidden_state``
            (``(batch, seq, hidden)``), e.g. ``BertModel``; not shared, as DPR's.
        tokenizer: a ``transformers`` tokenizer; a [CLS] token is put first when it does not add one.
        max_query_length, max_context_length: tokens per text, [CLS] included. A choice: a query that is
            too long keeps its end (the query input sits there), a context keeps its start; DPR keeps the
            start of both.
        template: how pool examples are rendered as contexts (saved with the retriever).
    """

    def __init__(
        self,
        query_encoder: nn.Module,
        context_encoder: nn.Module,
        tokenizer,
        *,
        max_query_length: int = 512,
        max_context_length: int = 512,
        template: Template | None = None,
    ) -> None:
        super().__init__()
        if query_encoder is context_encoder:
            raise ValueError("context_encoder: expected a separate model from query_encoder (DPR does not share them)")
        for name, value in (("max_query_length", max_query_length), ("max_context_length", max_context_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name}: expected an int >= 2, got {value!r}")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer: expected a transformers tokenizer, got {type(tokenizer).__name__}")
        self.query_encoder = query_encoder
        self.context_encoder = context_encoder
        self.tokenizer = tokenizer
        self.max_query_length = max_query_length
        self.max_context_length = max_context_length
        self.template = template or Template()

    # ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.query_encoder.parameters()).device

    def tokenize(self, texts: Sequence[str], max_length: int, *, keep_end: bool = False) -> dict[str, Tensor]:
        """Token ids ``(batch, seq)`` int64 and attention mask, right-padded, each starting with [CLS]
        (when the tokenizer has one) and at most ``max_length`` long."""
        tok = self.tokenizer
        encoded = tok(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        rows = []
        for ids in encoded:
            ids = list(ids)
            head = [ids.pop(0)] if ids and cls_id is not None and ids[0] == cls_id else []
            if cls_id is not None and not head:
                head = [cls_id]
            tail = [ids.pop()] if ids and sep_id is not None and ids[-1] == sep_id else []
            room = max(0, max_length - len(head) - len(tail))
            body = (ids[-room:] if room else []) if keep_end else ids[:room]
            rows.append(head + body + tail)
        width = max(1, max(len(r) for r in rows))
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def _embed(self, encoder: nn.Module, texts: Sequence[str], max_length: int, keep_end: bool) -> Tensor:
        batch = {k: v.to(self.device) for k, v in self.tokenize(texts, max_length, keep_end=keep_end).items()}
        return encoder(**batch).last_hidden_state[:, 0]

    def embed_queries(self, texts: Sequence[str]) -> Tensor:
        """[CLS] vectors of query texts, ``(batch, hidden)``, with gradients (training)."""
        return self._embed(self.query_encoder, texts, self.max_query_length, keep_end=True)

    def embed_contexts(self, texts: Sequence[str]) -> Tensor:
        """[CLS] vectors of context texts, ``(batch, hidden)``, with gradients (training)."""
        return self._embed(self.context_encoder, texts, self.max_context_length, keep_end=False)

    @torch.no_grad()
    def _encode(self, embed, texts: Sequence[str], batch_size: int) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            parts = [embed(texts[i : i + batch_size]).float().cpu() for i in range(0, len(texts), batch_size)]
        finally:
            self.train(was_training)
        if not parts:
            return torch.zeros((0, 0))
        return torch.cat(parts)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Query vectors for retrieval: ``(len(texts), hidden)`` float32 on CPU, eval mode, no gradients."""
        return self._encode(self.embed_queries, list(texts), batch_size)

    def encode_contexts(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Context vectors for the index: ``(len(texts), hidden)`` float32 on CPU, eval mode, no gradients."""
        return self._encode(self.embed_contexts, list(texts), batch_size)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, name_or_path: str | os.PathLike, **kwargs) -> DualEncoder:
        """Two independent copies of one pretrained encoder (``AutoModel.from_pretrained``, e.g.
        ``bert-base-uncased`` as the official code) and its tokenizer (``AutoTokenizer``)."""
        from transformers import AutoModel, AutoTokenizer

        path = str(name_or_path)
        return cls(AutoModel.from_pretrained(path), AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                   **kwargs)

    def save_pretrained(self, path: str | os.PathLike, *, extra: dict | None = None) -> None:
        """Write the retriever to the directory ``path`` atomically (replacing one that is there);
        ``extra`` (JSON-serialisable, e.g. a training report) is kept in ``se2_retriever.json``."""
        with atomic_directory(path) as tmp:
            self.query_encoder.save_pretrained(tmp / "query_encoder", safe_serialization=True)
            self.context_encoder.save_pretrained(tmp / "context_encoder", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            meta = {"max_query_length": self.max_query_length, "max_context_length": self.max_context_length,
                    "template": self.template.to_dict(), "extra": extra or {}}
            (tmp / _CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DualEncoder:
        """Load a retriever saved by :meth:`save_pretrained`."""
        from transformers import AutoModel, AutoTokenizer

        root = Path(path)
        if not (root / _CONFIG_FILE).is_file():
            raise FileNotFoundError(f"path: {root} is not a saved Se2 retriever (no {_CONFIG_FILE})")
        meta = json.loads((root / _CONFIG_FILE).read_text(encoding="utf-8"))
        return cls(
            AutoModel.from_pretrained(root / "query_encoder"),
            AutoModel.from_pretrained(root / "context_encoder"),
            AutoTokenizer.from_pretrained(root / "tokenizer"),
            max_query_length=int(meta["max_query_length"]),
            max_context_length=int(meta["max_context_length"]),
            template=Template.from_dict(meta.get("template", {})),
        )
