"""Tiny local models with the offline byte-level tokenizer, for the lmops.llm backend and server tests."""

from __future__ import annotations

from pathlib import Path

import torch

from lmops.common.offline_tokenizer import byte_level_tokenizer
from tiny_models import tiny_model

# a minimal Jinja chat template (the byte tokenizer ships none)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_lm(seed: int = 0, arch: str = "llama", **overrides):
    """``(model, tokenizer)``: a 2-layer float32 causal LM of vocab ``len(tokenizer)`` (263)."""
    tok = byte_level_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    model = tiny_model(arch, seed=seed, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, **overrides)
    return model, tok


def save_tiny_lm(path: Path, *, packed: bool = False, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer to ``path``: a plain ``transformers`` directory, or with
    ``packed=True`` an lmops BitNet directory with packed ternary weights."""
    model, tok = tiny_lm(seed)
    if packed:
        from lmops import bitnet

        bitnet.pack(bitnet.convert(model))
        bitnet.save_pretrained(model, path, tokenizer=tok)
    else:
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return path


def reference_greedy(model, tok, prompt: str, max_new_tokens: int) -> str:
    """``model.generate`` on the unpadded prompt, decoded: what a batched backend must reproduce."""
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


def reference_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, int]:
    """Sum of log p(continuation tokens | all before) from one unpadded forward pass, float64 sum."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    total = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
    return total, len(whole) - len(ctx)
