"""0/1-knapsack packing of training examples into fixed-length contexts (paper, section 3.2).

Each context is filled by solving a 0/1 knapsack on the examples not yet packed: the subset whose
total length is the largest that fits ``context_length`` (value = weight, i.e. subset sum), found
exactly by dynamic programming; then the next context is solved on what is left, until nothing is.

The DP is the classic one over reachable fills, with the reachable set kept as the bits of one Python
integer (``reach |= reach << w``), so each item costs one shift over ``capacity`` bits. Items of one
length are grouped and their counts split into powers of two (bounded knapsack), so a context costs
at most ``distinct lengths * log2(count)`` shifts however many items there are (at most
``capacity`` distinct lengths), and the scan stops as soon as an exact fill is reachable.

Every example is followed by the EOS token, the separator between packed examples. Attention is not
masked between the examples of one context (standard packing, as most continued-pretraining setups);
positions run on across them.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Sequence

from .data import PackedSequence

__all__ = ["PackReport", "knapsack_fill", "pack_examples", "pack_lengths"]


def _check_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity: expected a positive int, got {capacity!r}")
    return capacity


def _best_counts(counts: dict[int, int], capacity: int) -> dict[int, int]:
    """How many items of each length a max-fill subset takes: the bounded-knapsack DP on
    ``{length: available count}`` (every length in ``[1, capacity]``)."""
    # pseudo-items (length, multiplicity): counts split into 1, 2, 4, ..., rest (every count 0..c reachable)
    pseudo: list[tuple[int, int]] = []
    for w in sorted(counts, reverse=True):  # long first: an exact fill is then found early with long items
        count, k = counts[w], 1
        while count > 0:
            m = min(k, count)
            pseudo.append((w, m))
            count -= m
            k *= 2
    mask = (1 << (capacity + 1)) - 1
    full = 1 << capacity
    reach = 1  # bit t set: a fill of exactly t tokens is reachable
    before: list[int] = []
    for w, m in pseudo:
        before.append(reach)
        reach = (reach | (reach << (w * m))) & mask
        if reach & full:
            break
    # walk back: pseudo-item j is needed iff the fill still to explain is not reachable without it
    take: dict[int, int] = defaultdict(int)
    t = reach.bit_length() - 1
    for j in range(len(before) - 1, -1, -1):
        if (before[j] >> t) & 1:
            continue
        w, m = pseudo[j]
        take[w] += m
        t -= w * m
    if t != 0:  # the DP guarantees t == 0; anything else is a bug here
        raise RuntimeError("knapsack reconstruction failed")
    return dict(take)


def knapsack_fill(lengths: Sequence[int], capacity: int) -> list[int]:
    """Indices of a subset of ``lengths`` with the largest total ``<= capacity`` (exact 0/1 knapsack
    with value = weight), in increasing order; among items of one length the first ones are taken.
    Items longer than ``capacity`` and zero-length items are never chosen.
    ``O(min(n, distinct lengths * log n) * capacity / 64)`` word operations."""
    capacity = _check_capacity(capacity)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(lengths):
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"lengths[{i}]: expected an int >= 0, got {w!r}")
        if 0 < w <= capacity:
            by_length[w].append(i)
    take = _best_counts({w: len(v) for w, v in by_length.items()}, capacity)
    return sorted(i for w, c in take.items() for i in by_length[w][:c])


def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices: each bin is a max-fill subset (:func:`knapsack_fill`) of the items left
    after the earlier bins, until every item is in one; within a length, items go in input order.
    Every length must be in ``[1, capacity]`` (``ValueError`` otherwise)."""
    capacity = _check_capacity(capacity)
    left: dict[int, deque[int]] = defaultdict(deque)
    for i, w in enumerate(lengths):
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= capacity:
            raise ValueError(f"lengths[{i}]: expected an int in [1, capacity={capacity}], got {w!r}")
        left[w].append(i)
    bins: list[list[int]] = []
    while left:
        take = _best_counts({w: len(q) for w, q in left.items()}, capacity)
        chosen = []
        for w, c in take.items():
            chosen += [left[w].popleft() for _ in range(c)]
            if not left[w]:
                del left[w]
        bins.append(sorted(chosen))
    return bins


@dataclass
class PackReport:
    """Counts of one :func:`pack_examples` run: examples in, over-long ones (and what was done),
    contexts out, tokens, and the fill (tokens / (contexts * context_length))."""

    examples: int = 0
    overlong: int = 0
    overlong_policy: str = "split"
    pieces: int = 0
    dropped_tokens: int = 0
    sequences: int = 0
    tokens: int = 0
    fill: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pack_examples(
    token_ids: Sequence[Sequence[int]],
    context_length: int,
    *,
    eos_id: int,
    ids: Sequence[str] | None = None,
    overlong: str = "split",
) -> tuple[list[PackedSequence], PackReport]:
    """Pack tokenized examples into contexts of at most ``context_length`` tokens.

    Each example gets ``eos_id`` appended. One longer than the context then (``overlong``):
    ``"split"`` into consecutive context-sized pieces, each packed as an item (``"<id>#<k>"``), so no
    token is lost; ``"truncate"`` to the context; ``"drop"`` it. Empty examples are skipped.

    Returns the packed sequences (``input_ids`` are plain int lists, ``sources`` the example ids) and
    a :class:`PackReport`.
    """
    _check_capacity(context_length)
    if overlong not in ("split", "truncate", "drop"):
        raise ValueError(f"overlong: expected 'split', 'truncate' or 'drop', got {overlong!r}")
    if ids is None:
        ids = [str(i) for i in range(len(token_ids))]
    if len(ids) != len(token_ids):
        raise ValueError(f"ids: expected one id per example ({len(token_ids)}), got {len(ids)}")
    report = PackReport(examples=len(token_ids), overlong_policy=overlong)
    items: list[list[int]] = []
    names: list[str] = []
    for name, seq in zip(ids, token_ids):
        if not len(seq):
            continue
        seq = list(seq) + [eos_id]
        if len(seq) <= context_length:
            items.append(seq)
            names.append(name)
            continue
        report.overlong += 1
        if overlong == "drop":
            report.dropped_tokens += len(seq)
        elif overlong == "truncate":
            report.dropped_tokens += len(seq) - context_length
            items.append(seq[:context_length])
            names.append(name)
        else:
            for k, start in enumerate(range(0, len(seq), context_length)):
                items.append(seq[start:start + context_length])
                names.append(f"{name}#{k}")
                report.pieces += 1
    bins = pack_lengths([len(s) for s in items], context_length)
    packed = [PackedSequence([t for i in b for t in items[i]], [names[i] for i in b]) for b in bins]
    report.sequences = len(packed)
    report.tokens = sum(len(p.input_ids) for p in packed)
    report.fill = report.tokens / (len(packed) * context_length) if packed else 0.0
    return packed, report
