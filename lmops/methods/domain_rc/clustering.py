"""Length-based clustering (paper, Algorithm 1): related documents are put in one training text, up to
a length budget, so the model reads an extended, topically coherent context.

Until no document is left: a random remaining document seeds a cluster of length ``L_c = len(d) +
len(its QA)``; then the nearest remaining document joins, again and again, while the cluster stays
within ``l_max`` tokens and ``d_max`` documents; growth stops at the first nearest document whose
cosine similarity is below ``threshold`` (0.7 in the paper).

Exact rules here (the paper's loop reads "while L_c < L_max and N_c < D_max"; these are its
unambiguous form, a choice):

- a document joins only if the cluster then holds at most ``l_max`` tokens and ``d_max`` documents, so
  a cluster never exceeds ``l_max`` (it must fit a context to be packed); the first nearest document
  that does not fit ends the cluster (it is not skipped for a farther one);
- "nearest" is measured from the seed document (``anchor="seed"``, as Algorithm 1 reads), or from the
  normalized mean of the cluster's documents (``anchor="centroid"``, a variant);
- a document longer than ``l_max`` on its own is never a neighbour: it becomes a cluster by itself,
  flagged ``overlong`` and counted (packing then splits it), never an error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .config import ClusterConfig
from .data import Cluster, DocumentQA
from .formatting import ClusterTemplate
from .neighbors import NeighborIndex, build_index, iter_neighbors

__all__ = ["ClusterReport", "cluster_documents", "document_lengths", "length_based_clustering", "token_length_fn"]

LengthFn = Callable[[list[str]], list[int]]


@dataclass
class ClusterReport:
    """Counts of one clustering.

    Attributes:
        documents, clusters: how many of each; singletons: clusters of one document; overlong: ids (or
        indices) of the documents longer than ``l_max``; stops: how many clusters stopped for each
        reason; index: the nearest-neighbour index used; max_length / mean_documents: over clusters.
    """

    documents: int = 0
    clusters: int = 0
    singletons: int = 0
    overlong: list[Any] = field(default_factory=list)
    stops: dict[str, int] = field(default_factory=dict)
    index: str = ""
    max_length: int = 0
    mean_documents: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["overlong_count"] = len(self.overlong)
        d["overlong"] = list(self.overlong[:100])
        return d


def _check_lengths(lengths: Sequence[int], n: int) -> list[int]:
    out = list(lengths)
    if len(out) != n:
        raise ValueError(f"lengths: expected one length per embedding row ({n}), got {len(out)}")
    for i, v in enumerate(out):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"lengths[{i}]: expected an int >= 0, got {v!r}")
    return out


def length_based_clustering(
    embeddings: torch.Tensor,
    lengths: Sequence[int],
    *,
    l_max: int,
    d_max: int,
    threshold: float = 0.7,
    seed: int = 0,
    anchor: str = "seed",
    index: NeighborIndex | None = None,
    brute_force_max: int = 20000,
    faiss_kind: str = "flat",
) -> tuple[list[Cluster], ClusterReport]:
    """Algorithm 1 on row indices (see the module docstring for the exact rules).

    Args:
        embeddings: ``(n, dim)`` float; rows are L2-normalized here (cosine similarity).
        lengths: each document's length plus its QA's, in tokens (``n`` ints >= 0).
        l_max, d_max, threshold, seed, anchor: as :class:`ClusterConfig`.
        index: a prebuilt index over the normalized rows (default :func:`build_index` with
            ``brute_force_max`` and ``faiss_kind``).
    Returns:
        clusters (``doc_ids`` hold row indices as strings, ``id`` numbers them in creation order, the
        overlong singletons last) and the report.
    """
    ClusterConfig(l_max=l_max, d_max=d_max, threshold=threshold, seed=seed, anchor=anchor)  # validates
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise ValueError(f"embeddings: expected a (n, dim) tensor, got {getattr(embeddings, 'shape', embeddings)!r}")
    n = len(embeddings)
    lengths = _check_lengths(lengths, n)
    report = ClusterReport(documents=n)
    if n == 0:
        return [], report
    emb = torch.nn.functional.normalize(embeddings.detach().to("cpu", torch.float32), dim=-1)
    overlong = [i for i in range(n) if lengths[i] > l_max]
    if index is None:
        index = build_index(emb, brute_force_max=brute_force_max, faiss_kind=faiss_kind)
    report.index = index.name
    if overlong:
        index.remove(overlong)  # never a neighbour: each is its own cluster below
    is_overlong = set(overlong)
    order = [i for i in range(n) if i not in is_overlong]
    random.Random(seed).shuffle(order)  # the next live row in a random order is a uniformly random seed
    alive = [True] * n
    for i in overlong:
        alive[i] = False
    groups: list[tuple[list[int], int, str]] = []
    for s in order:
        if not alive[s]:
            continue
        alive[s] = False
        index.remove([s])
        members, total = [s], lengths[s]
        if anchor == "seed":
            candidates = iter_neighbors(index, emb[s], first_k=min(d_max - 1, 64) if d_max > 1 else 1)
        stop = "exhausted"
        while True:
            if len(members) >= d_max:
                stop = "d_max"
                break
            if anchor == "seed":
                nxt = next(candidates, None)
            else:
                centroid = torch.nn.functional.normalize(emb[members].sum(0), dim=0)
                found = index.search(centroid, 1)
                nxt = found[0] if found else None
            if nxt is None:
                break
            j, sim = nxt
            if sim < threshold:
                stop = "similarity"
                break
            if total + lengths[j] > l_max:
                stop = "l_max"
                break
            members.append(j)
            total += lengths[j]
            alive[j] = False
            index.remove([j])
        groups.append((members, total, stop))
    groups += [([i], lengths[i], "overlong") for i in overlong]
    clusters = [Cluster(id=k, doc_ids=[str(i) for i in m], length=t, overlong=(stop == "overlong"), stop=stop)
                for k, (m, t, stop) in enumerate(groups)]
    report.clusters = len(clusters)
    report.singletons = sum(len(c.doc_ids) == 1 for c in clusters)
    report.overlong = overlong
    for c in clusters:
        report.stops[c.stop] = report.stops.get(c.stop, 0) + 1
    report.max_length = max(c.length for c in clusters)
    report.mean_documents = n / len(clusters)
    return clusters, report


def token_length_fn(tokenizer: Any) -> LengthFn:
    """Lengths in tokens of ``tokenizer`` (no special tokens), for a batch of texts."""

    def lengths(texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    return lengths


def document_lengths(docs: Sequence[DocumentQA], length_fn: LengthFn, template: ClusterTemplate | None = None) -> list[int]:
    """Each document's ``len(document) + len(its QA block)`` in ``length_fn``'s units (the QA block is
    its pairs rendered by ``template``; the separators between documents are not counted)."""
    template = template or ClusterTemplate()
    doc_lengths = length_fn([d.text for d in docs])
    with_qa = [i for i, d in enumerate(docs) if d.qa]
    qa_lengths = length_fn([template.qa_block(docs[i].qa) for i in with_qa])
    out = list(doc_lengths)
    for i, q in zip(with_qa, qa_lengths):
        out[i] += q
    return out


def cluster_documents(
    docs: Sequence[DocumentQA],
    embeddings: torch.Tensor,
    length_fn: LengthFn,
    *,
    config: ClusterConfig | None = None,
    template: ClusterTemplate | None = None,
    index: NeighborIndex | None = None,
) -> tuple[list[Cluster], ClusterReport]:
    """:func:`length_based_clustering` of documents with QA: lengths from ``length_fn`` (use
    :func:`token_length_fn` of the training tokenizer), clusters and the report naming documents by id."""
    cfg = config or ClusterConfig()
    if len(docs) != len(embeddings):
        raise ValueError(f"embeddings: expected one row per document ({len(docs)}), got {len(embeddings)}")
    lengths = document_lengths(docs, length_fn, template)
    clusters, report = length_based_clustering(
        embeddings, lengths, l_max=cfg.l_max, d_max=cfg.d_max, threshold=cfg.threshold, seed=cfg.seed,
        anchor=cfg.anchor, index=index, brute_force_max=cfg.brute_force_max, faiss_kind=cfg.faiss_kind,
    )
    for c in clusters:
        c.doc_ids = [docs[int(i)].id for i in c.doc_ids]
    report.overlong = [docs[i].id for i in report.overlong]
    return clusters, report
