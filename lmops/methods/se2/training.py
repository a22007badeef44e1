"""Training the dual encoder on the scored records (the official ``Se2Dataset`` + DPR's training loop).

Per record (:func:`make_training_samples`):

- query = the chosen demonstrations then the query's question (:func:`~.retriever.query_text`);
- positive = the best-ranked candidate with ``one_shot_acc > 0``; records without one are dropped;
- hard negatives = the last ``n_hard_negatives`` candidates of the ranking. A fix: the positive is left
  out of them (the official code can list it as both when few candidates are right);
- random negatives = ``n_random_negatives`` pool examples drawn *with replacement* (``random.choices``,
  as the official code) from the pool without the positive and the hard negatives.

Loss (:func:`biencoder_loss`): softmax cross-entropy of each query over every context of the batch (its
positive, its negatives, and every other record's contexts), the target being its positive.
Training: AdamW, linear warmup then linear decay, gradient-norm clipping; the weights with the lowest
validation loss are kept (a choice for DPR's ``best_valid`` criterion, which may also be average rank).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ...common.progress import progress_bar
from .config import TrainConfig
from .data import Example, Pool, ScoredRecord, Template
from .retriever import DualEncoder, query_text

__all__ = ["TrainReport", "TrainingSample", "biencoder_loss", "make_training_samples", "train_retriever"]


@dataclass
class TrainingSample:
    """One query with its contexts (pool ids)."""

    query: str
    positive: int
    hard_negatives: list[int]
    random_negatives: list[int]


def make_training_samples(
    records: Sequence[ScoredRecord],
    pool: Pool,
    queries_by_id: dict[int, Example],
    *,
    template: Template | None = None,
    n_hard_negatives: int = 20,
    n_random_negatives: int = 20,
    seed: int = 0,
) -> list[TrainingSample]:
    """The training samples of ``records`` (ctxs ranked best first); records without a candidate with
    ``one_shot_acc > 0`` are dropped. Random negatives come from ``random.Random(seed)``."""
    template = template or Template()
    rng = random.Random(seed)
    samples = []
    for rec in records:
        right = [c for c in rec.ctxs if c.one_shot_acc > 0]
        if not right:
            continue
        positive = right[0].id
        tail = rec.ctxs[-n_hard_negatives:] if n_hard_negatives else []
        hard = [c.id for c in tail if c.id != positive]
        barred = {positive, *hard}
        others = [pid for pid in pool.ids if pid not in barred]
        rand = rng.choices(others, k=n_random_negatives) if others and n_random_negatives else []
        query = query_text(pool, template, rec.chosen, queries_by_id[rec.query_id])
        samples.append(TrainingSample(query, positive, hard, rand))
    return samples


def biencoder_loss(query_vectors: Tensor, context_vectors: Tensor, positive_index: Tensor) -> Tensor:
    """DPR's NLL: ``query_vectors`` ``(B, H)`` against all ``context_vectors`` ``(C, H)`` by dot product,
    cross-entropy with target ``positive_index`` ``(B,)`` int64 (each query's positive row). Scalar."""
    scores = query_vectors @ context_vectors.T
    return F.cross_entropy(scores, positive_index)


@dataclass
class TrainReport:
    """Per epoch: mean training loss and validation loss (``nan`` without validation data); the epoch
    whose weights were kept (0-based)."""

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    n_train: int = 0
    n_valid: int = 0


def _batch_loss(model: DualEncoder, pool_texts: dict[int, str], batch: Sequence[TrainingSample], rng: random.Random | None):
    contexts: list[str] = []
    positive_index = []
    for s in batch:
        negatives = list(s.hard_negatives) + list(s.random_negatives)
        if rng is not None:
            rng.shuffle(negatives)  # DPR shuffles the negatives of a sample; order only matters with ties
        positive_index.append(len(contexts))
        contexts.extend(pool_texts[i] for i in [s.positive] + negatives)
    q = model.embed_queries([s.query for s in batch])
    c = model.embed_contexts(contexts)
    return biencoder_loss(q, c, torch.tensor(positive_index, dtype=torch.long, device=q.device))


@torch.no_grad()
def _valid_loss(model: DualEncoder, pool_texts: dict[int, str], samples: Sequence[TrainingSample], batch_size: int) -> float:
    if not samples:
        return float("nan")
    model.eval()
    total = 0.0
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        total += float(_batch_loss(model, pool_texts, batch, None)) * len(batch)
    return total / len(samples)


def train_retriever(
    model: DualEncoder,
    train_records: Sequence[ScoredRecord],
    valid_records: Sequence[ScoredRecord],
    pool: Pool,
    queries: Sequence[Example],
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
) -> TrainReport:
    """Train ``model`` in place on the scored records and leave it with the best validation weights.

    Args:
        model: the dual encoder (its ``template`` renders the pool).
        train_records, valid_records: :func:`~.sampling.score_candidates`'s output.
        pool: the prompt pool the records' ids refer to.
        queries: the queries the records were built for (their ids are the records' ``query_id``).
        config: see :class:`TrainConfig`.
    Raises:
        ValueError: no training record has a positive.
    """
    config = config or TrainConfig()
    queries_by_id = {q.id: q for q in queries}
    missing = sorted({r.query_id for r in list(train_records) + list(valid_records)} - set(queries_by_id))
    if missing:
        raise ValueError(f"queries: no query for record query_id(s) {missing[:5]}")
    kw = {"template": model.template, "n_hard_negatives": config.n_hard_negatives,
          "n_random_negatives": config.n_random_negatives}
    train = make_training_samples(train_records, pool, queries_by_id, seed=config.seed, **kw)
    valid = make_training_samples(valid_records, pool, queries_by_id, seed=config.seed + 1, **kw)
    if not train:
        raise ValueError("train_records: no record has a candidate with one_shot_acc > 0 (no positive to train on)")
    pool_texts = dict(zip(pool.ids, pool.texts(model.template)))
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:  # DPR's get_schedule_linear
        if step < config.warmup_steps:
            return float(step + 1) / float(max(1, config.warmup_steps))
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - config.warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    report = TrainReport(n_train=len(train), n_valid=len(valid))
    best_loss, best_state = float("inf"), None
    with progress_bar(total=total_steps, desc="se2 train", unit="step", disable=not progress) as bar:
        for epoch in range(config.epochs):
            model.train()
            order = list(range(len(train)))
            rng.shuffle(order)
            running = 0.0
            for start in range(0, len(order), config.batch_size):
                batch = [train[i] for i in order[start : start + config.batch_size]]
                loss = _batch_loss(model, pool_texts, batch, rng)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                running += float(loss.detach()) * len(batch)
                bar.update(1)
            report.train_loss.append(running / len(train))
            vloss = _valid_loss(model, pool_texts, valid, config.eval_batch_size)
            report.valid_loss.append(vloss)
            bar.set_postfix(loss=f"{report.train_loss[-1]:.3f}", valid=f"{vloss:.3f}")
            score = vloss if valid else -epoch  # without validation data the last epoch is kept
            if score < best_loss or best_state is None:
                best_loss, best_state, report.best_epoch = score, copy.deepcopy(model.state_dict()), epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return report
