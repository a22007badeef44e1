"""Document embeddings from any ``transformers`` encoder: mean pooling over the attention mask, then L2
normalization, so that a dot product is the cosine similarity the clustering thresholds.

The paper does not name its embedding model (a choice left to the user: ``--encoder``); any
``AutoModel`` works, an encoder (BERT, E5, BGE) or a decoder's base model.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["embed_texts", "load_encoder", "mean_pool"]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` (``(batch, seq, dim)``, float) over the positions where
    ``attention_mask`` (``(batch, seq)``, 0/1) is 1; ``(batch, dim)`` float32. A row with no position
    gives zeros (not NaN)."""
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden, attention_mask: expected (B, T, D) and (B, T), got {tuple(hidden.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    mask = attention_mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden.to(torch.float32) * mask).sum(1)
    return summed / mask.sum(1).clamp(min=1.0)


def load_encoder(name_or_dir: str, *, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)``: ``AutoModel`` and ``AutoTokenizer`` from a local directory or a Hub name,
    in eval mode on ``device``."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    model = AutoModel.from_pretrained(name_or_dir).to(device).eval()
    return model, tokenizer


@torch.inference_mode()
def embed_texts(
    texts: Sequence[str],
    model: Any,
    tokenizer: Any,
    *,
    batch_size: int = 32,
    max_length: int = 512,
) -> torch.Tensor:
    """Embed ``texts``: ``(len(texts), hidden)`` float32 on the CPU, each row of unit L2 norm.

    Texts are sorted by length into batches (less padding), cut to ``max_length`` tokens, and put back
    in their order. ``model(input_ids, attention_mask)`` must return ``last_hidden_state`` (or a tuple
    whose first item is it). An empty ``texts`` gives a ``(0, hidden)`` tensor.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", 0)
    if not texts:
        return torch.zeros(0, hidden_size, dtype=torch.float32)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer: has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    rows: list[torch.Tensor] = []
    for start in range(0, len(order), batch_size):
        chunk = [texts[i] for i in order[start:start + batch_size]]
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        output = model(**enc)
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        rows.append(mean_pool(hidden, enc["attention_mask"]).cpu())
    pooled = torch.cat(rows)
    out = torch.empty_like(pooled)
    out[torch.tensor(order)] = pooled
    return torch.nn.functional.normalize(out, dim=-1)
