"""GLAN's supervised fine-tuning: each question-answer pair is one sequence and the loss covers only the
response tokens (paper section 2.5). Works with any ``transformers`` causal LM, fully fine-tuned or with
LoRA (peft) or ResLoRA (:mod:`lmops.reslora`) adapters.

- :func:`build_example`: prompt + response token ids, labels ``-100`` on the prompt. The prompt is the
  tokenizer's chat template when it has one (the response is what the template adds for the assistant
  turn), else the plain ``### Instruction / ### Response`` template (:func:`plain_template`) with the
  response followed by EOS: a choice. Prompt and response are tokenized separately, so the mask is
  exact at their boundary.
- :func:`train_sft`: AdamW, a cosine schedule with linear warm-up down to 0 (the paper's), optional
  gradient accumulation, the loss averaged over every response token of an optimizer step.
- :func:`save_sft`: ``save_pretrained`` (or the adapters) into a directory written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...common.files import atomic_directory
from ...common.jsonl import read_jsonl
from ...common.progress import progress_bar
from .config import SFTConfig

__all__ = [
    "IGNORE_INDEX",
    "SFTExample",
    "SFTResult",
    "build_example",
    "build_examples",
    "collate",
    "load_pairs",
    "plain_template",
    "prepare_model",
    "response_loss",
    "save_sft",
    "train_sft",
]

IGNORE_INDEX = -100
PLAIN_TEMPLATE = "### Instruction:\n{question}\n\n### Response:\n"


def plain_template(question: str) -> str:
    """The prompt used when the tokenizer has no chat template."""
    return PLAIN_TEMPLATE.format(question=question)


@dataclass
class SFTExample:
    """One training sequence: ``input_ids`` and ``labels`` of equal length (``IGNORE_INDEX`` on the prompt)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_response(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def build_example(
    tokenizer: Any,
    question: str,
    answer: str,
    *,
    max_length: int = 1024,
    template: str | Callable[[str], str] = "auto",
) -> SFTExample | None:
    """Tokenize one pair; ``None`` when the prompt alone leaves no room for a response token.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        question, answer: the pair.
        max_length: tokens at most; a longer response is cut at the end.
        template: ``"auto"`` (the chat template if the tokenizer has one, else :func:`plain_template`),
            ``"chat"``, ``"plain"``, or a callable ``question -> prompt text`` (the response is then
            ``answer`` + EOS).
    """
    if not isinstance(question, str) or not isinstance(answer, str):
        raise TypeError("question, answer: expected strings")
    if template not in ("auto", "chat", "plain") and not callable(template):
        raise ValueError(f"template: expected 'auto', 'chat', 'plain' or a callable, got {template!r}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise ValueError("template='chat': the tokenizer has no chat template")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if template in ("auto", "chat") and has_chat:
        user = [{"role": "user", "content": question}]
        prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
        prompt = _ids(tokenizer, prompt_text, False)
        if full.startswith(prompt_text) and full[len(prompt_text):].strip():
            response = _ids(tokenizer, full[len(prompt_text):], False)  # the template's own end-of-turn
        else:
            response = _ids(tokenizer, answer, False) + eos
    else:
        make = template if callable(template) else plain_template
        prompt = _ids(tokenizer, make(question), True)
        response = _ids(tokenizer, answer, False) + eos
    room = max_length - len(prompt)
    if room < 1 or not response:
        return None
    response = response[:room]
    return SFTExample(prompt + response, [IGNORE_INDEX] * len(prompt) + response)


def build_examples(tokenizer: Any, pairs: Iterable[dict], *, max_length: int = 1024,
                   template: str | Callable[[str], str] = "auto") -> tuple[list[SFTExample], int]:
    """:func:`build_example` over records with ``question`` and ``answer``; returns the examples and the
    number skipped (a prompt too long for ``max_length``)."""
    out, skipped = [], 0
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or not isinstance(p.get("question"), str) or not isinstance(p.get("answer"), str):
            raise ValueError(f"pairs[{i}]: expected a record with string 'question' and 'answer'")
        ex = build_example(tokenizer, p["question"], p["answer"], max_length=max_length, template=template)
        if ex is None:
            skipped += 1
        else:
            out.append(ex)
    return out, skipped


def load_pairs(path: str | os.PathLike) -> list[dict]:
    """The records of an ``instructions.jsonl`` (lines without a question and an answer are skipped)."""
    return read_jsonl(path, required=["question", "answer"]).records


def collate(examples: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` on padding), each
    ``(batch, longest)`` int64."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def response_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``(sum of next-token cross-entropy over the response tokens, their count)``; the logits of
    position ``t`` predict label ``t + 1`` (float32 cross-entropy)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


def prepare_model(model: nn.Module, config: SFTConfig) -> nn.Module:
    """Apply the adapter of ``config`` (``None``: every parameter trains). Returns the model to train
    (for LoRA, peft's wrapper)."""
    torch.manual_seed(config.seed)
    if config.adapter == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM")
        return get_peft_model(model, lcfg)
    if config.adapter == "reslora":
        from ...reslora import apply_reslora

        return apply_reslora(model, list(config.target_modules), structure=config.reslora_structure, r=config.lora_r,
                             alpha=config.lora_alpha, dropout=config.lora_dropout)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@dataclass
class SFTResult:
    """What :func:`train_sft` did: the mean response-token loss of every optimizer step, and counts."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    n_examples: int = 0
    n_skipped: int = 0
    trainable_params: int = 0
    total_params: int = 0

    def to_dict(self) -> dict:
        return {"losses": self.losses, "steps": self.steps, "n_examples": self.n_examples,
                "n_skipped": self.n_skipped, "trainable_params": self.trainable_params,
                "total_params": self.total_params}


def train_sft(
    model: nn.Module,
    tokenizer: Any,
    pairs: Iterable[dict] | Sequence[SFTExample],
    config: SFTConfig | None = None,
    *,
    template: str | Callable[[str], str] = "auto",
    progress: bool = True,
) -> tuple[nn.Module, SFTResult]:
    """Fine-tune ``model`` on ``pairs`` (records with ``question``/``answer``, or built
    :class:`SFTExample`) with the response-only loss. The adapter of ``config`` is applied first
    (:func:`prepare_model`). Returns the trained model (peft's wrapper with LoRA) and an
    :class:`SFTResult`. ``ValueError`` when no example is left to train on."""
    config = config or SFTConfig()
    items = list(pairs)
    if items and all(isinstance(x, SFTExample) for x in items):
        examples, skipped = items, 0
    else:
        examples, skipped = build_examples(tokenizer, items, max_length=config.max_length, template=template)
    if not examples:
        raise ValueError(f"pairs: no training example ({skipped} skipped: prompt longer than max_length)")
    model = prepare_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    result = SFTResult(n_examples=len(examples), n_skipped=skipped,
                       trainable_params=sum(p.numel() for p in params),
                       total_params=sum(p.numel() for p in model.parameters()))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    micro = math.ceil(len(examples) / config.batch_size)
    per_epoch = math.ceil(micro / config.grad_accum)
    total = per_epoch * config.epochs if config.max_steps is None else min(config.max_steps, per_epoch * config.epochs)
    warmup = config.warmup_steps if config.warmup_steps is not None else math.ceil(config.warmup_ratio * total)
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=min(warmup, total), num_training_steps=total)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    with progress_bar(total=total, desc="sft", unit="step", disable=not progress) as bar:
        for _epoch in range(config.epochs):
            order = torch.randperm(len(examples), generator=gen).tolist()
            batches = [[examples[i] for i in order[s : s + config.batch_size]]
                       for s in range(0, len(order), config.batch_size)]
            for g in range(0, len(batches), config.grad_accum):
                if result.steps >= total:
                    break
                group = [collate(b, pad) for b in batches[g : g + config.grad_accum]]
                n_tok = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in group)
                step_loss = 0.0
                for b in group:
                    loss, _ = response_loss(model, {k: v.to(device) for k, v in b.items()})
                    (loss / n_tok).backward()
                    step_loss += float(loss.detach())
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                result.steps += 1
                result.losses.append(step_loss / n_tok)
                bar.update(1)
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
    model.eval()
    return model, result


def save_sft(model: nn.Module, tokenizer: Any, out_dir: str | os.PathLike, config: SFTConfig,
             result: SFTResult | None = None, *, base_model: str | None = None) -> Path:
    """Save into ``out_dir``, atomically (an existing directory is replaced only once all is written):
    the full model (no adapter, or ``config.save_merged``), else the adapters (peft's
    ``save_pretrained``, or :func:`lmops.reslora.save_adapter`), the tokenizer, and ``glan_sft.json``
    (the config, the losses and ``base_model``)."""
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        if config.adapter == "lora":
            (model.merge_and_unload() if config.save_merged else model).save_pretrained(tmp)
        elif config.adapter == "reslora":
            from ...reslora import merge_and_unload, save_adapter

            if config.save_merged:
                merge_and_unload(model).save_pretrained(tmp)
            else:
                save_adapter(model, tmp)
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"method": "glan-sft", "base_model": base_model, "config": config.to_dict(),
                "result": result.to_dict() if result else None}
        (Path(tmp) / "glan_sft.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
