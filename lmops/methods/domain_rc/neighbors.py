"""Nearest-neighbour search over the documents not yet clustered, for the greedy clustering.

The clustering removes each document from the index as it joins a cluster and asks, many times, for
the nearest *remaining* documents to a query vector. Three indexes answer that:

- :class:`ExactIndex`: exact inner products by torch matmul over the live rows (the default up to
  ``brute_force_max`` documents); with ``chunk_size`` it scans the rows in chunks, so memory stays
  ``O(chunk_size)`` beyond the embeddings themselves (the fallback for a large corpus without faiss);
- :class:`FaissIndex`: faiss ``IndexFlatIP`` (exact) or ``IndexHNSWFlat`` (approximate, sub-linear
  queries for millions of documents), when ``faiss`` is installed (optional, never required). Removed
  documents are filtered from the results, asking for more when too many were removed, and the index
  is rebuilt from the live rows once they are the minority.

Vectors are expected L2-normalized (then inner product is cosine similarity).
"""

from __future__ import annotations

import warnings
from typing import Iterator, Protocol, Sequence

import torch

__all__ = ["ExactIndex", "FaissIndex", "NeighborIndex", "build_index", "iter_neighbors"]


class NeighborIndex(Protocol):
    """What the clustering needs from an index: nearest live rows to a query, and removal."""

    name: str

    @property
    def n_alive(self) -> int: ...

    def remove(self, ids: Sequence[int]) -> None: ...

    def search(self, query: torch.Tensor, k: int) -> list[tuple[int, float]]:
        """The ``k`` live rows with the largest inner product with ``query`` (``(dim,)``), as
        ``(row, similarity)`` by decreasing similarity (ties by row); fewer when fewer are live."""
        ...


def _check_vectors(vectors: torch.Tensor) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2 or not vectors.is_floating_point():
        raise ValueError(f"vectors: expected a (n, dim) float tensor, got {getattr(vectors, 'shape', vectors)!r}")
    if not torch.isfinite(vectors).all():
        raise ValueError("vectors: holds NaN or infinite values")
    return vectors.detach().to("cpu", torch.float32).contiguous()


class ExactIndex:
    """Exact search by matmul over the live rows of ``vectors`` (``(n, dim)`` float).

    Args:
        chunk_size: rows per matmul (``None``: all at once).
    """

    def __init__(self, vectors: torch.Tensor, *, chunk_size: int | None = None) -> None:
        self.vectors = _check_vectors(vectors)
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size: expected None or a positive int, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.alive = torch.ones(len(self.vectors), dtype=torch.bool)
        self._n_alive = len(self.vectors)
        self.name = "exact" if chunk_size is None else f"exact-chunked({chunk_size})"

    @property
    def n_alive(self) -> int:
        return self._n_alive

    def remove(self, ids: Sequence[int]) -> None:
        idx = torch.as_tensor(list(ids), dtype=torch.long)
        self._n_alive -= int(self.alive[idx].sum())
        self.alive[idx] = False

    def search(self, query: torch.Tensor, k: int) -> list[tuple[int, float]]:
        k = min(int(k), self._n_alive)
        if k <= 0:
            return []
        q = query.detach().to(torch.float32).reshape(-1)
        n = len(self.vectors)
        step = self.chunk_size or n
        cand_sims, cand_ids = [], []
        for start in range(0, n, step):
            alive = self.alive[start:start + step]
            if not alive.any():
                continue
            sims = self.vectors[start:start + step] @ q
            sims = sims.masked_fill(~alive, float("-inf"))
            top = torch.topk(sims, min(k, int(alive.sum())))
            cand_sims.append(top.values)
            cand_ids.append(top.indices + start)
        sims, ids = torch.cat(cand_sims), torch.cat(cand_ids)
        pairs = sorted(zip(ids.tolist(), sims.tolist()), key=lambda p: (-p[1], p[0]))
        return pairs[:k]


class FaissIndex:
    """faiss search over the live rows (requires the optional ``faiss`` package).

    Args:
        kind: ``"flat"`` (``IndexFlatIP``, exact) or ``"hnsw"`` (``IndexHNSWFlat`` with inner product,
            approximate).
        hnsw_m, ef_search: HNSW's graph degree and its search breadth (raised to ``k`` when larger).
    """

    def __init__(self, vectors: torch.Tensor, *, kind: str = "flat", hnsw_m: int = 32, ef_search: int = 64) -> None:
        import faiss  # optional dependency; build_index checks it first

        if kind not in ("flat", "hnsw"):
            raise ValueError(f"kind: expected 'flat' or 'hnsw', got {kind!r}")
        self._faiss = faiss
        self.vectors = _check_vectors(vectors)
        self.kind, self.hnsw_m, self.ef_search = kind, hnsw_m, ef_search
        self.alive = torch.ones(len(self.vectors), dtype=torch.bool)
        self._n_alive = len(self.vectors)
        self.name = f"faiss-{kind}"
        self._build(torch.arange(len(self.vectors)))

    def _build(self, rows: torch.Tensor) -> None:
        faiss = self._faiss
        dim = self.vectors.shape[1]
        if self.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        if len(rows):
            index.add(self.vectors[rows].numpy())
        self._index, self._rows, self._dead_in_index = index, rows, 0

    @property
    def n_alive(self) -> int:
        return self._n_alive

    def remove(self, ids: Sequence[int]) -> None:
        idx = torch.as_tensor(list(ids), dtype=torch.long)
        newly = int(self.alive[idx].sum())
        self._n_alive -= newly
        self.alive[idx] = False
        self._dead_in_index += newly
        # filtered-out results make each search ask for more; rebuild once most rows are dead
        if self._dead_in_index > max(1024, len(self._rows) // 2) and self._n_alive:
            self._build(torch.nonzero(self.alive).flatten())

    def search(self, query: torch.Tensor, k: int) -> list[tuple[int, float]]:
        k = min(int(k), self._n_alive)
        if k <= 0:
            return []
        q = query.detach().to(torch.float32).reshape(1, -1).numpy()
        total = len(self._rows)
        want = min(total, k + self._dead_in_index if self._dead_in_index < 4 * k else 2 * k)
        while True:
            if self.kind == "hnsw":
                self._index.hnsw.efSearch = max(self.ef_search, want)
            sims, found = self._index.search(q, want)
            pairs = []
            for j, s in zip(found[0].tolist(), sims[0].tolist()):
                if j < 0:
                    continue
                row = int(self._rows[j])
                if self.alive[row]:
                    pairs.append((row, float(s)))
            if len(pairs) >= k or want >= total:
                pairs.sort(key=lambda p: (-p[1], p[0]))
                return pairs[:k]
            want = min(total, 2 * want)


def build_index(vectors: torch.Tensor, *, brute_force_max: int = 20000, faiss_kind: str = "flat") -> NeighborIndex:
    """The index for ``vectors``: :class:`ExactIndex` up to ``brute_force_max`` rows; above, a
    :class:`FaissIndex` when faiss is installed, else a chunked :class:`ExactIndex` with a warning."""
    if len(vectors) <= brute_force_max:
        return ExactIndex(vectors)
    try:
        import faiss  # noqa: F401
    except ImportError:
        warnings.warn(
            f"{len(vectors)} documents > brute_force_max={brute_force_max} and faiss is not installed: "
            "falling back to chunked exact search (correct, but each query scans every document; "
            "install faiss-cpu for an HNSW index)",
            RuntimeWarning,
            stacklevel=2,
        )
        return ExactIndex(vectors, chunk_size=brute_force_max)
    return FaissIndex(vectors, kind=faiss_kind)


def iter_neighbors(index: NeighborIndex, query: torch.Tensor, *, first_k: int = 16) -> Iterator[tuple[int, float]]:
    """The live rows by decreasing similarity to ``query``, fetched lazily in growing batches.

    The caller must remove every row it was given before asking for the next batch (the clustering
    does: each row it is given either joins the cluster, and is removed, or ends the iteration)."""
    k = max(1, int(first_k))
    while True:
        batch = index.search(query, k)
        yield from batch
        if len(batch) < k:
            return
        k *= 2
