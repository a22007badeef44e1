"""``UniqueQuestionSampler``: batches that hold each question at most once (the official ``data.py``
sampler's purpose), so the in-batch items of a question never pull on each other and a question's
several teacher rationales spread over the epoch.

The official sampler walks random permutations of the questions, taking one unused item of each, and
cuts that stream into batches; a batch that straddles two permutations can hold a question twice, and
the last batch is padded with random items. This one guarantees the property and covers every item
exactly once per epoch: each batch takes the ``batch_size`` questions with the most unused items (ties
broken at random, so equal counts give a random permutation), one random unused item of each, and the
epoch's batches are then shuffled. Taking the fullest questions first uses the fewest batches possible,
``max(largest count, ceil(items / batch_size))``; only the last batches can be smaller (a choice, where
the official code pads).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable, Iterator, Sequence

from torch.utils.data import Sampler

__all__ = ["UniqueQuestionSampler"]


class UniqueQuestionSampler(Sampler):
    """A batch sampler (``DataLoader(batch_sampler=...)``) over items labelled by question.

    Args:
        question_ids: the question of each item (index ``i`` -> ``question_ids[i]``).
        batch_size: the most items per batch.
        seed: the shuffle seed; epoch ``e`` uses ``(seed, e)``, so a resumed run rebuilds the same batches.

    Iterating yields the batches of the current epoch (:meth:`set_epoch`, or advanced by one after each
    full iteration, as the official sampler does).
    """

    def __init__(self, question_ids: Sequence[Hashable], batch_size: int, seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        ids = list(question_ids)
        if not ids:
            raise ValueError("question_ids: expected at least one item")
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.groups: dict[Hashable, list[int]] = {}
        for index, q in enumerate(ids):
            self.groups.setdefault(q, []).append(index)
        self.n_items = len(ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches (lists of item indices) of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        rng = random.Random(f"{self.seed}:{epoch}")
        pools = {}
        for q, items in self.groups.items():
            items = list(items)
            rng.shuffle(items)
            pools[q] = items
        order = list(pools)
        # heap of (-remaining, random tie-break, position in order)
        heap = [(-len(pools[q]), rng.random(), i) for i, q in enumerate(order)]
        heapq.heapify(heap)
        out: list[list[int]] = []
        while heap:
            taken = [heapq.heappop(heap) for _ in range(min(self.batch_size, len(heap)))]
            batch = []
            for neg, _, i in taken:
                batch.append(pools[order[i]].pop())
                if neg + 1 < 0:
                    heapq.heappush(heap, (neg + 1, rng.random(), i))
            rng.shuffle(batch)
            out.append(batch)
        rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        largest = max(len(v) for v in self.groups.values())
        return max(largest, -(-self.n_items // self.batch_size))
