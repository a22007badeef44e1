"""One round's fine-tuning: weighted MLE + ``cl_ratio`` x triplet loss over :class:`TrainItem` batches
from :class:`UniqueQuestionSampler`, resumable at the step.

A plain torch loop rather than a ``transformers.Trainer`` subclass (a choice): the official trainer
replaces the Trainer's data loader with its own batch sampler and collator and its training step with
its own losses, which leaves little of the Trainer; here every piece of randomness is a function of
``(seed, round, step)`` (batch order per epoch, positive and negative draws), so resuming needs only the
weights, the optimiser's moments and the step, all saved without pickled objects.

Checkpoint (``state_dir/latest``, replaced atomically every ``save_steps`` and at the end):
``save_pretrained`` weights (safetensors) and tokenizer, ``optimizer.pt`` (the optimiser's ``state_dict``: tensors
and numbers, read back with ``torch.load(weights_only=True)``), ``rng.pt`` (torch's generator states)
and ``trainer_state.json`` (step, total steps, a hash of the round's data).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...common.files import atomic_directory
from ...common.jsonl import JsonlAppender, read_jsonl, write_jsonl
from ...common.progress import progress_bar
from .config import LossConfig, TrainConfig
from .data import TrainItem
from .losses import rationale_representations, triplet_cosine_loss, weighted_mle_loss
from .sampler import UniqueQuestionSampler

__all__ = ["Batch", "DistillCollator", "TrainResult", "batch_losses", "leading_special_ids", "load_weights", "train_round"]


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. ``<s>``), as :class:`lmops.llm.HFLocal`
    adds them before every prompt, so training sees prompts as generation does."""
    with_specials = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    if plain and with_specials[-len(plain):] == plain:
        return list(with_specials[: len(with_specials) - len(plain)])
    return []


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        input_ids: ``(B, L)`` int64, prefix + completion + end of sequence, right-padded.
        attention_mask: ``(B, L)`` int64.
        prefix_lengths: ``(B,)`` int64, prefix tokens per row.
        cl_mask: ``(B,)`` float32, 1 where the item has a positive and a negative.
        prefixes, anchors, positives, negatives: token lists of the valid contrastive items only.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prefix_lengths: torch.Tensor
    cl_mask: torch.Tensor
    prefixes: list[list[int]] = field(default_factory=list)
    anchors: list[list[int]] = field(default_factory=list)
    positives: list[list[int]] = field(default_factory=list)
    negatives: list[list[int]] = field(default_factory=list)


class DistillCollator:
    """Tokenizes :class:`TrainItem` batches and draws each item's contrastive pair, as the official
    ``ContrastiveDynamicCollator``: a positive is a random teacher rationale for the question *different
    from the anchor*, the negative a random wrong student rationale; an item lacking either is masked.
    Anchor, positive and negative end with the end-of-sequence token (the official texts end with it)."""

    def __init__(self, tokenizer: Any, *, max_length: int = 1024, contrastive: bool = True) -> None:
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError("tokenizer: needs an eos_token_id (rationales end with it)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.tokenizer, self.eos_id, self.pad_id = tokenizer, int(eos), int(pad)
        self.max_length = max_length
        self.contrastive = contrastive
        self.specials = leading_special_ids(tokenizer)
        self._cache: dict[str, list[int]] = {}

    def _tokens(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._cache[text] = ids
        return ids

    def encode(self, prefix: str, completion: str) -> tuple[list[int], list[int]]:
        """``(prefix ids, completion ids + eos)``, cut to ``max_length`` from the prefix's left (then the
        completion's right)."""
        p = self.specials + self._tokens(prefix)
        c = self._tokens(completion) + [self.eos_id]
        if len(c) >= self.max_length:
            c = c[: self.max_length - 1]
        if len(p) + len(c) > self.max_length:
            p = p[len(p) + len(c) - self.max_length:]
        return p, c

    def rationale(self, text: str, room: int) -> list[int]:
        ids = self._tokens(text)[: max(room - 1, 0)] + [self.eos_id]
        return ids

    def __call__(self, items: Sequence[TrainItem], rng: random.Random) -> Batch:
        rows, prefix_lengths, mask = [], [], []
        prefixes, anchors, positives, negatives = [], [], [], []
        for item in items:
            p, c = self.encode(item.prefix, item.completion)
            rows.append(p + c)
            prefix_lengths.append(len(p))
            ok = False
            if self.contrastive and item.positives and item.negatives:
                pool = list(item.positives)
                rng.shuffle(pool)
                positive = next((x for x in pool if x != item.completion), None)
                if positive is not None:
                    ok = True
                    room = self.max_length - len(p)
                    prefixes.append(p)
                    anchors.append(c)
                    positives.append(self.rationale(positive, room))
                    negatives.append(self.rationale(rng.choice(item.negatives), room))
            mask.append(1.0 if ok else 0.0)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            att[i, : len(r)] = 1
        return Batch(ids, att, torch.tensor(prefix_lengths, dtype=torch.long), torch.tensor(mask),
                     prefixes, anchors, positives, negatives)


def batch_losses(model: Any, batch: Batch, loss: LossConfig, pad_id: int) -> dict[str, torch.Tensor]:
    """``{"loss", "mle", "cl"}`` for one batch (``loss = mle + cl_ratio * cl``; ``cl`` is 0 without valid
    contrastive items). The triplet term is averaged over the valid items only, which equals the
    official masked mean over the batch."""
    device = next(model.parameters()).device
    out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
    mle = weighted_mle_loss(out.logits, batch.input_ids.to(device), batch.attention_mask.to(device),
                            batch.prefix_lengths, loss.prefix_weight)
    cl = torch.zeros((), device=device)
    if loss.contrastive and batch.anchors:
        a, p, n = rationale_representations(model, batch.prefixes, [batch.anchors, batch.positives, batch.negatives],
                                            pad_id=pad_id, prefix_cache=loss.prefix_cache)
        cl = triplet_cosine_loss(a, p, n, margin=loss.margin)
    return {"loss": mle + loss.cl_ratio * cl, "mle": mle, "cl": cl}


@dataclass
class TrainResult:
    """What :func:`train_round` did: steps ``start_step .. total_steps - 1`` (``start_step > 0`` after a
    resume) and each step's logged values."""

    total_steps: int
    start_step: int
    log: list[dict]

    @property
    def resumed(self) -> bool:
        return self.start_step > 0


def _items_hash(items: Sequence[TrainItem]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    # transformers' get_linear_schedule_with_warmup, the HF Trainer's default
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _optimizer(model: Any, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]  # biases and norms
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)


def _save_state(model: Any, tokenizer: Any, optimizer: torch.optim.Optimizer, state: dict, state_dir: Path) -> None:
    with atomic_directory(state_dir / "latest") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)  # so the checkpoint is a loadable model directory
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def load_weights(model: Any, directory: str | os.PathLike) -> None:
    """Copy the weights of a model directory (``save_pretrained`` + tokenizer) into ``model`` (same
    architecture), loaded as :func:`lmops.llm.load_local_model` loads it."""
    from ...llm import load_local_model

    dtype = next(model.parameters()).dtype
    loaded, _ = load_local_model(directory, dtype=dtype, device="cpu")
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied]:
        raise ValueError(f"{directory}: weights do not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def train_round(
    model: Any,
    tokenizer: Any,
    items: Sequence[TrainItem],
    *,
    train: TrainConfig,
    loss: LossConfig,
    state_dir: str | os.PathLike,
    round: int = 1,
    log_path: str | os.PathLike | None = None,
    progress: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``items``; resume from ``state_dir/latest`` when it exists.

    Args:
        model: a ``transformers`` causal LM (decoder-only; the contrastive path reuses its KV cache).
        tokenizer: its tokenizer (with an end-of-sequence token).
        items: the round's data (at least one item).
        train, loss: settings.
        state_dir: where the resumable checkpoint lives.
        round: mixes into the per-step seeds.
        log_path: a JSONL file with one ``{"round", "step", "loss", "mle", "cl", "cl_items", "lr"}`` per
            step (on resume, steps past the checkpoint are dropped before they are redone).
        on_step: called after every optimiser step with ``(step, log record)``; an exception it raises
            stops training (the last checkpoint stays).
    """
    items = list(items)
    if not items:
        raise ValueError("items: a round needs at least one training item")
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    collator = DistillCollator(tokenizer, max_length=train.max_length, contrastive=loss.contrastive)
    sampler = UniqueQuestionSampler([it.qid for it in items], train.batch_size, seed=train.seed + 1000 * round)
    per_epoch = len(sampler)
    total = train.max_steps if train.max_steps is not None else train.epochs * per_epoch
    data_hash = _items_hash(items)
    optimizer = _optimizer(model, train)
    start = 0
    latest = state_dir / "latest"
    if (latest / "trainer_state.json").is_file():
        state = json.loads((latest / "trainer_state.json").read_text(encoding="utf-8"))
        if state.get("data") != data_hash or state.get("total_steps") != total:
            raise ValueError(f"{latest}: a checkpoint of other training data or settings; remove it to restart")
        load_weights(model, latest)
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
        rng = torch.load(latest / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        start = int(state["step"])
    if log_path is not None and Path(log_path).exists():
        kept = [r for r in read_jsonl(log_path).records if r.get("step", total) < start]
        write_jsonl(log_path, kept)
    log: list[dict] = []
    appender = JsonlAppender(log_path, fsync=False) if log_path is not None else None
    bar = progress_bar(total - start, desc=f"train round {round}", unit="step") if progress and total > start else None
    epoch_batches: dict[int, list[list[int]]] = {}
    model.train()
    try:
        for step in range(start, total):
            epoch, index = divmod(step, per_epoch)
            if epoch not in epoch_batches:
                epoch_batches = {epoch: sampler.batches(epoch)}
            batch = collator([items[i] for i in epoch_batches[epoch][index]],
                             random.Random(f"{train.seed}:{round}:{step}"))
            lr = train.learning_rate * _lr_factor(step, train.warmup_steps, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            values = batch_losses(model, batch, loss, collator.pad_id)
            values["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"round": round, "step": step, "loss": values["loss"].item(), "mle": values["mle"].item(),
                      "cl": values["cl"].item(), "cl_items": len(batch.anchors), "lr": lr}
            log.append(record)
            if appender is not None:
                appender.append(record)
            if bar is not None:
                bar.update(1)
            done = step + 1
            if done % train.save_steps == 0 or done == total:
                _save_state(model, tokenizer, optimizer, {"step": done, "total_steps": total, "data": data_hash,
                                               "round": round}, state_dir)
            if on_step is not None:
                on_step(step, record)
    finally:
        model.eval()
        if appender is not None:
            appender.close()
        if bar is not None:
            bar.close()
    return TrainResult(total, start, log)
