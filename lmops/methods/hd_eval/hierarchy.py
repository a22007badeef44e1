"""Fitting aggregators over the criteria tree, attributing, and pruning.

Two aggregation modes (the 2026 reproduction describes both; which one HD-Eval uses is unconfirmed):

- **horizontal**: one aggregator, the root's, over all effective leaves;
- **vertical**: each active criterion with active children gets its own aggregator over those children
  (fit bottom-up; its prediction is that criterion's value), then the root aggregator over the active
  top-level criteria. Every aggregator is fit to the human score, the only label there is: a choice
  (the reproduction fits each level-1 criterion to its own human label, which this data lacks). So an
  inner aggregator sees the other branches' signal as noise: its attributions are noisier than the
  horizontal ones, and with little data an irrelevant sibling can survive pruning.

A *group* is one aggregator and its inputs, keyed by the criterion it predicts (``""`` for the root).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .aggregators import permutation_importance
from .tree import SEP, CriteriaTree

__all__ = ["Group", "attribute", "fit_groups", "group_layout", "predict_groups", "prune"]


@dataclass
class Group:
    """An aggregator over ``features`` (criterion paths), predicting criterion ``key`` (``""``: the root)."""

    key: str
    features: list[str]
    aggregator: Any


def group_layout(tree: CriteriaTree, mode: str) -> list[tuple[str, list[str]]]:
    """``(key, input paths)`` per aggregator, deepest first, the root last."""
    if mode == "horizontal":
        return [("", tree.effective_leaves())]
    if mode != "vertical":
        raise ValueError(f"mode: expected 'horizontal' or 'vertical', got {mode!r}")
    inner = []
    for path, node, depth in tree.active():
        kids = [path + SEP + c.name for c in node.children if not c.pruned]
        if kids:
            inner.append((depth, path, kids))
    inner.sort(key=lambda t: -t[0])  # stable: deeper aggregators are fit (and evaluated) first
    return [(path, kids) for _, path, kids in inner] + [("", tree.top_level())]


def _matrix(values: dict[str, np.ndarray], features: list[str]) -> np.ndarray:
    return np.stack([values[f] for f in features], axis=1)


def fit_groups(
    tree: CriteriaTree, mode: str, scores: dict[str, np.ndarray], y: np.ndarray, make: Callable[[], Any]
) -> tuple[list[Group], dict[str, np.ndarray]]:
    """Fit every aggregator to ``y`` bottom-up. ``scores`` maps each effective leaf's path to its
    (imputed, finite) scores, float64 ``(n_samples,)``. Returns the groups and every input's values
    (leaf scores, and inner criteria's predictions in vertical mode)."""
    values = dict(scores)
    groups = []
    for key, features in group_layout(tree, mode):
        if not features:
            raise ValueError("every criterion was pruned; nothing is left to aggregate")
        X = _matrix(values, features)
        agg = make().fit(X, y)
        groups.append(Group(key, list(features), agg))
        if key:
            values[key] = np.asarray(agg.predict(X), dtype=np.float64)
    return groups, values


def predict_groups(groups: list[Group], scores: dict[str, np.ndarray]) -> np.ndarray:
    """The root prediction from effective-leaf scores (``groups`` as :func:`fit_groups` returns them)."""
    values = dict(scores)
    out = None
    for group in groups:
        missing = [f for f in group.features if f not in values]
        if missing:
            raise KeyError(f"scores: no values for criteria {missing}")
        pred = np.asarray(group.aggregator.predict(_matrix(values, group.features)), dtype=np.float64)
        if group.key:
            values[group.key] = pred
        else:
            out = pred
    if out is None:
        raise ValueError("groups: no root aggregator")
    return out


def attribute(
    groups: list[Group], values: dict[str, np.ndarray], y: np.ndarray, method: str, *, repeats: int = 5,
    seed: int = 0,
) -> dict[str, dict]:
    """Per input criterion: ``{"group", "raw", "share", "global_share"}``. ``share`` is its part of its
    aggregator's total attribution; ``global_share`` multiplies the shares along the path through
    nested aggregators (equal to ``share`` in horizontal mode). ``method``: ``"attribution"`` (the
    aggregator's own), ``"permutation"`` or ``"none"`` (the aggregator's own; nothing is pruned)."""
    out: dict[str, dict] = {}
    for group in groups:
        X = _matrix(values, group.features)
        if method == "permutation":
            raw = permutation_importance(group.aggregator, X, y, repeats=repeats, seed=seed)
        else:
            raw = np.asarray(group.aggregator.attribution(X, y), dtype=np.float64)
        raw = np.where(np.isfinite(raw), np.abs(raw), 0.0)
        total = float(raw.sum())
        shares = raw / total if total > 0 else np.full(len(raw), 1.0 / len(raw))
        for path, r, s in zip(group.features, raw, shares):
            out[path] = {"group": group.key, "raw": float(r), "share": float(s)}
    # groups run deepest first; walk parents before children to chain the global shares
    for path in sorted(out, key=lambda p: p.count(SEP)):
        parent = out[path]["group"]
        out[path]["global_share"] = out[path]["share"] * (out[parent]["global_share"] if parent else 1.0)
    return out


def prune(
    tree: CriteriaTree, groups: list[Group], attribution: dict[str, dict], threshold: float, *, label: str
) -> list[str]:
    """Prune every input whose ``share`` is below ``threshold``, except the largest of each aggregator;
    returns the pruned paths. ``label`` goes into the reason (e.g. ``"round 1, |coef| x std"``)."""
    index = tree.index()
    pruned = []
    for group in groups:
        shares = [attribution[f]["share"] for f in group.features]
        best = int(np.argmax(shares))
        for n, path in enumerate(group.features):
            if n == best or shares[n] >= threshold:
                continue
            node = index[path]
            node.pruned = True
            node.prune_reason = (f"attribution share {shares[n]:.4f} < threshold {threshold:g} among "
                                 f"{len(group.features)} inputs of the {'root' if not group.key else repr(group.key)} "
                                 f"aggregator ({label})")
            pruned.append(path)
    # A decomposed criterion whose sub-criteria were all pruned goes too (deepest first, so it climbs):
    # its finer parts carried nothing the aggregator used, and scoring it whole again would bring back
    # what was just pruned (a choice). Only horizontal mode gets here: vertical keeps one input per group.
    for path, node, _ in sorted(tree.walk(), key=lambda t: -t[2]):
        if node.children and not node.pruned and all(c.pruned for c in node.children):
            node.pruned = True
            node.prune_reason = f"all of its sub-criteria were pruned ({label})"
            pruned.append(path)
    return pruned
