"""``HDEval``: the iterative decompose - aggregate - prune loop, prediction, the report, save/load."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...common.files import atomic_write
from .aggregators import aggregator_from_dict, make_aggregator
from .config import HDEvalConfig
from .decompose import decompose
from .hierarchy import Group, attribute, fit_groups, predict_groups, prune
from .metrics import correlations, system_correlations, system_means
from .scoring import CriterionScorer
from .tree import CriteriaTree

__all__ = ["HDEval", "FORMAT"]

FORMAT = "lmops.hd_eval.model"
VERSION = 1


def _check_samples(samples: object) -> list[str]:
    if isinstance(samples, str) or not isinstance(samples, (list, tuple)) or not all(isinstance(s, str) for s in samples):
        raise TypeError("samples: expected a list of strings")
    return list(samples)


def _check_scores(scores: object, n: int) -> np.ndarray:
    if isinstance(scores, str) or not isinstance(scores, (list, tuple, np.ndarray)):
        raise TypeError("human_scores: expected a list of numbers (None or NaN where missing)")
    if len(scores) != n:
        raise ValueError(f"human_scores: expected {n} values (one per sample), got {len(scores)}")
    out = np.empty(n)
    for i, s in enumerate(scores):
        if s is None:
            out[i] = np.nan
        elif isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise TypeError(f"human_scores[{i}]: expected a number, None or NaN, got {s!r}")
        else:
            out[i] = float(s)
    if np.isinf(out).any():
        raise ValueError("human_scores: expected finite numbers (or NaN/None where missing), got an infinity")
    return out


def _check_systems(systems: object, n: int) -> list[str] | None:
    if systems is None:
        return None
    if isinstance(systems, str) or not isinstance(systems, (list, tuple)) or not all(isinstance(s, str) for s in systems):
        raise TypeError("systems: expected None or a list of system ids (strings)")
    if len(systems) != n:
        raise ValueError(f"systems: expected {n} ids (one per sample), got {len(systems)}")
    return list(systems)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


class HDEval:
    """An LLM evaluator aligned to human scores by hierarchical criteria decomposition.

    Args:
        llm: an :class:`~lmops.llm.LLM` that scores criteria and decomposes them (``None`` only for a
            model loaded to inspect or to :meth:`aggregate` given scores).
        task: what is evaluated, e.g. "Rate the quality of a news summary".
        criteria: the top-level criteria, ``"name"`` or ``"name: description"``.
        aggregator, max_depth, prune, rounds, **options: :class:`~lmops.methods.hd_eval.HDEvalConfig`
            fields (``config=`` passes a whole one instead).

    After :meth:`fit`: :attr:`tree` (the criteria tree, with weights and what was pruned),
    :meth:`predict`, :meth:`report`, :meth:`save`.
    """

    def __init__(self, llm, task: str, criteria: Sequence[str], *, aggregator: Any = "linear", max_depth: int = 2,
                 prune: str = "attribution", rounds: int = 2, config: HDEvalConfig | None = None,
                 **options: Any) -> None:
        if config is None:
            config = HDEvalConfig(aggregator=aggregator, max_depth=max_depth, prune=prune, rounds=rounds, **options)
        elif not isinstance(config, HDEvalConfig):
            raise TypeError(f"config: expected an HDEvalConfig, got {type(config).__name__}")
        elif options or (aggregator, max_depth, prune, rounds) != ("linear", 2, "attribution", 2):
            raise TypeError("config: give either config= or the keyword options, not both")
        if llm is not None:
            for method in ("generate", "chat", "loglikelihood"):
                if not callable(getattr(llm, method, None)):
                    raise TypeError(f"llm: expected an lmops.llm backend with {method}(), got {type(llm).__name__}")
        self.llm = llm
        self.config = config
        self.task = task
        self.tree = CriteriaTree.from_criteria(task, list(criteria))  # validates task and criteria
        self.criteria = list(criteria)
        self.groups: list[Group] | None = None
        self.last_missing: dict[str, int] = {}
        self._report: dict | None = None

    # ------------------------------------------------------------------------------------------------
    def _scorer(self) -> CriterionScorer:
        if self.llm is None:
            raise ValueError("llm: this HDEval has no LLM; pass one to HDEval(...) or HDEval.load(path, llm)")
        c = self.config
        return CriterionScorer(self.llm, self.task, low=c.score_min, high=c.score_max, use_logprobs=c.use_logprobs,
                               chunk_size=c.chunk_size, retries=c.retries, progress=c.progress)

    def _make(self):
        return make_aggregator(self.config.aggregator, ridge=self.config.ridge, seed=self.config.seed)

    def _score_new(self, scorer: CriterionScorer, samples: list[str], raw: dict[str, np.ndarray], stats: dict) -> None:
        """Score every active criterion that has no scores yet (one batched pass)."""
        todo = [(p, n) for p, n, _ in self.tree.active() if p not in raw]
        if not todo:
            return
        got = scorer.score(samples, [(CriteriaTree.display(p), n.description) for p, n in todo])
        for j, (path, _) in enumerate(todo):
            raw[path] = got.values[:, j]
            stats["missing"][path] = int(np.isnan(got.values[:, j]).sum())
        stats["by_logprob"] += got.by_logprob
        stats["by_parsing"] += got.by_parsing

    def _impute(self, raw: dict[str, np.ndarray], train: np.ndarray) -> dict[str, np.ndarray]:
        """Missing scores -> the criterion's mean over the training split (a choice; the midpoint of the
        scale when it has none). The fill value is kept on the node for :meth:`predict`."""
        index = self.tree.index()
        mid = (self.config.score_min + self.config.score_max) / 2
        out = {}
        for path, col in raw.items():
            seen = col[train][np.isfinite(col[train])]
            fill = float(seen.mean()) if seen.size else mid
            index[path].fill = fill
            out[path] = np.where(np.isfinite(col), col, fill)
        return out

    def _fit_once(self, filled: dict[str, np.ndarray], train: np.ndarray, y: np.ndarray, method: str):
        leaves = self.tree.effective_leaves()
        groups, values = fit_groups(self.tree, self.config.mode, {p: filled[p][train] for p in leaves}, y[train],
                                    self._make)
        attrib = attribute(groups, values, y[train], method, repeats=self.config.permutation_repeats,
                           seed=self.config.seed)
        return groups, attrib

    def _expand(self, attrib: dict[str, dict], log: dict) -> int:
        """Decompose the most significant effective leaves above ``max_depth``; returns how many."""
        c = self.config
        depth = {p: d for p, _, d in self.tree.active()}
        index = self.tree.index()
        candidates = [
            p for p in self.tree.effective_leaves()
            if depth[p] < c.max_depth and not index[p].children and index[p].note is None
            and p in attrib and attrib[p]["global_share"] >= c.prune_threshold
        ]
        candidates.sort(key=lambda p: -attrib[p]["global_share"])
        chosen = candidates[: c.expand_top]
        if not chosen:
            return 0
        got = decompose(self.llm, self.task, [(CriteriaTree.display(p), index[p].description) for p in chosen],
                        low=c.min_subcriteria, high=c.max_subcriteria, chat=c.decompose_chat, retries=c.retries)
        made = 0
        for path, children, error in zip(chosen, got.children, got.errors):
            if children is None:
                index[path].note = f"decomposition failed after {c.retries} retries: {error}"
                log["decomposition_failed"][path] = index[path].note
                continue
            log["decomposed"][path] = self.tree.add_children(path, children)
            made += 1
        return made

    # ------------------------------------------------------------------------------------------------
    def fit(self, samples: Sequence[str], human_scores: Sequence[float | None], *,
            systems: Sequence[str] | None = None, valid_fraction: float | None = None) -> "HDEval":
        """Build the criteria tree and fit the aggregator(s) to ``human_scores`` (NaN/None: skipped and
        counted). A seeded ``valid_fraction`` of the labelled samples is held out for the report's
        correlations (sample level, and system level when ``systems`` are given)."""
        c = self.config
        samples = _check_samples(samples)
        y_all = _check_scores(human_scores, len(samples))
        systems = _check_systems(systems, len(samples))
        frac = c.valid_fraction if valid_fraction is None else valid_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1:
            raise ValueError(f"valid_fraction: expected a number in [0, 1), got {frac!r}")
        scorer = self._scorer()
        keep = np.flatnonzero(np.isfinite(y_all))
        nan_skipped = len(samples) - len(keep)
        samples = [samples[i] for i in keep]
        y = y_all[keep]
        systems = None if systems is None else [systems[i] for i in keep]
        perm = np.random.default_rng(c.seed).permutation(len(samples))
        n_valid = int(round(frac * len(samples)))
        valid, train = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
        if len(train) < 3:
            raise ValueError(f"human_scores: expected at least 3 labelled training samples after skipping "
                             f"{nan_skipped} NaN and holding out {n_valid}, got {len(train)}")

        self.tree = CriteriaTree.from_criteria(self.task, self.criteria)
        raw: dict[str, np.ndarray] = {}
        stats = {"missing": {}, "by_logprob": 0, "by_parsing": 0}
        history = []
        method = c.prune if c.prune != "none" else "attribution"
        for r in range(1, c.rounds + 1):
            self._score_new(scorer, samples, raw, stats)
            filled = self._impute(raw, train)
            groups, attrib = self._fit_once(filled, train, y, method)
            pruned = [] if c.prune == "none" else prune(self.tree, groups, attrib, c.prune_threshold,
                                                        label=f"round {r}, {self._method_name(groups)}")
            log = {"round": r, "inputs": attrib, "pruned": pruned, "decomposed": {}, "decomposition_failed": {}}
            history.append(log)
            if r == c.rounds:
                break
            if not self._expand(attrib, log) and not pruned:
                log["stopped"] = "nothing was pruned or decomposed: the tree is final"
                break
        self._score_new(scorer, samples, raw, stats)  # nothing new unless a round was cut short
        filled = self._impute(raw, train)
        groups, attrib = self._fit_once(filled, train, y, method)
        self.groups = groups
        self._annotate(groups, attrib)
        self._report = self._build_report(filled, y, train, valid, systems, stats, history, nan_skipped, attrib)
        return self

    def _method_name(self, groups: list[Group]) -> str:
        if self.config.prune == "permutation":
            return "permutation importance"
        if getattr(groups[-1].aggregator, "kind", "") == "linear":
            return "|coefficient| x feature std"
        return f"{type(groups[-1].aggregator).__name__}.attribution"

    def _annotate(self, groups: list[Group], attrib: dict[str, dict]) -> None:
        index = self.tree.index()
        for node in index.values():
            node.weight = node.attribution = None
        for group in groups:
            coef = getattr(group.aggregator, "coef", None) if getattr(group.aggregator, "kind", "") == "linear" else None
            for n, path in enumerate(group.features):
                index[path].attribution = attrib[path]["share"]
                index[path].weight = None if coef is None else float(coef[n])

    def _outputs(self, pred: np.ndarray) -> np.ndarray:
        return np.round(pred) if self.config.round_outputs else pred

    def _build_report(self, filled, y, train, valid, systems, stats, history, nan_skipped, attrib) -> dict:
        c = self.config
        leaves = self.tree.effective_leaves()

        def evaluate(rows: np.ndarray, rounded: bool) -> dict | None:
            if rows.size == 0:
                return None
            pred = predict_groups(self.groups, {p: filled[p][rows] for p in leaves})
            pred = np.round(pred) if rounded else pred
            out = {"sample": correlations(pred, y[rows])}
            out["system"] = None if systems is None else system_correlations(
                list(pred), list(y[rows]), [systems[i] for i in rows])
            return out

        inputs = {p for g in self.groups for p in g.features}
        criteria = []
        for path, node, depth in self.tree.walk():
            role = "input" if path in inputs else "pruned" if node.pruned else "inner" if node.children else "unused"
            criteria.append({"path": path, "depth": depth, "role": role, "weight": node.weight,
                             "attribution": node.attribution, "pruned": node.pruned,
                             "prune_reason": node.prune_reason, "missing": stats["missing"].get(path, 0),
                             "note": node.note})
        n_scored = stats["by_logprob"] + stats["by_parsing"]
        scoring = ("logprob" if stats["by_parsing"] == 0 else "parsed" if stats["by_logprob"] == 0 else "mixed")
        report = {
            "task": self.task,
            "config": c.to_dict(),
            "mode": c.mode,
            "aggregator": getattr(self.groups[-1].aggregator, "kind", type(self.groups[-1].aggregator).__name__),
            "weights": {p: self.tree.node(p).weight for g in self.groups for p in g.features},
            "intercepts": {(g.key or "(root)"): float(g.aggregator.intercept) for g in self.groups
                           if getattr(g.aggregator, "kind", "") == "linear"},
            "attribution": {p: attrib[p]["share"] for p in attrib},
            "criteria": criteria,
            "pruned": [{"criterion": p, "reason": self.tree.node(p).prune_reason}
                       for p, n, _ in self.tree.walk() if n.pruned],
            "decomposed": {p: len(n.children) for p, n, _ in self.tree.walk() if n.children},
            "decomposition_failed": {p: n.note for p, n, _ in self.tree.walk() if n.note},
            "scoring": scoring if n_scored else None,
            "scored_by_logprob": stats["by_logprob"],
            "scored_by_parsing": stats["by_parsing"],
            "missing": dict(stats["missing"]),
            "missing_total": int(sum(stats["missing"].values())),
            "missing_imputation": "mean of the criterion's scores on the training split",
            "nan_human_skipped": int(nan_skipped),
            "outputs_rounded": c.round_outputs,
            "n_train": int(train.size),
            "n_valid": int(valid.size),
            "train": evaluate(train, c.round_outputs),
            "heldout": evaluate(valid, c.round_outputs),
            "rounds": [{**h, "inputs": {p: v["share"] for p, v in h["inputs"].items()}} for h in history],
        }
        if c.round_outputs:
            report["heldout_unrounded"] = evaluate(valid, False)
        return _finite_or_none(report)

    # ------------------------------------------------------------------------------------------------
    def _require_fitted(self) -> list[Group]:
        if self.groups is None:
            raise RuntimeError("HDEval: call fit() (or HDEval.load) first")
        return self.groups

    def aggregate(self, scores: dict[str, Sequence[float]]) -> list[float]:
        """Predictions from given criterion scores (``{path: one score per sample}``, NaN where missing,
        for every effective leaf): the aggregator(s) alone, no LLM call."""
        groups = self._require_fitted()
        index = self.tree.index()
        leaves = self.tree.effective_leaves()
        lacking = [p for p in leaves if p not in scores]
        if lacking:
            raise KeyError(f"scores: missing criteria {lacking}")
        cols = {}
        for p in leaves:
            col = np.asarray(scores[p], dtype=np.float64)
            fill = index[p].fill if index[p].fill is not None else (self.config.score_min + self.config.score_max) / 2
            cols[p] = np.where(np.isfinite(col), col, fill)
        if len({c.shape for c in cols.values()}) != 1:
            raise ValueError("scores: expected one score per sample for every criterion")
        return [float(v) for v in self._outputs(predict_groups(groups, cols))]

    def predict(self, samples: Sequence[str]) -> list[float]:
        """One score per sample (rounded to integers when ``round_outputs``). Missing criterion scores
        are imputed with the training mean and counted in :attr:`last_missing`."""
        self._require_fitted()
        samples = _check_samples(samples)
        leaves = self.tree.effective_leaves()
        if not samples:
            return []
        index = self.tree.index()
        got = self._scorer().score(samples, [(CriteriaTree.display(p), index[p].description) for p in leaves])
        self.last_missing = {p: int(m) for p, m in zip(leaves, got.missing_per_criterion())}
        return self.aggregate({p: got.values[:, j] for j, p in enumerate(leaves)})

    def evaluate(self, samples: Sequence[str], human_scores: Sequence[float | None], *,
                 systems: Sequence[str] | None = None) -> dict:
        """Predict ``samples`` and correlate with ``human_scores``: ``{"predictions", "sample", "system"}``."""
        samples = _check_samples(samples)
        y = _check_scores(human_scores, len(samples))
        systems = _check_systems(systems, len(samples))
        pred = self.predict(samples)
        return {
            "predictions": pred,
            "sample": correlations(pred, y),
            "system": None if systems is None else system_correlations(pred, list(y), systems),
        }

    def system_scores(self, samples: Sequence[str], systems: Sequence[str]) -> dict[str, float]:
        """The mean prediction of each system (system-level scores)."""
        samples = _check_samples(samples)
        return system_means(self.predict(samples), _check_systems(systems, len(samples)) or [])

    def report(self) -> dict:
        """What :meth:`fit` learned: weights and attribution shares per criterion, what was pruned and why,
        decompositions, missing-score counts, NaN labels skipped, whether outputs are rounded, and
        train / held-out Pearson, Spearman and Kendall (sample level; system level with systems)."""
        if self._report is None:
            raise RuntimeError("HDEval: call fit() first")
        return copy.deepcopy(self._report)

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fitted model as JSON-ready data (tree, aggregator parameters, settings, report)."""
        groups = self._require_fitted()
        config = self.config.to_dict()
        if config["aggregator"] is None:
            config["aggregator"] = getattr(groups[-1].aggregator, "kind", None)
        for g in groups:
            if not callable(getattr(g.aggregator, "to_dict", None)):
                raise TypeError(f"aggregator: {type(g.aggregator).__name__} has no to_dict(); it cannot be saved")
        return {
            "format": FORMAT, "version": VERSION, "task": self.task, "criteria": self.criteria, "config": config,
            "tree": self.tree.to_dict(),
            "groups": [{"key": g.key, "features": g.features, "aggregator": g.aggregator.to_dict()} for g in groups],
            "report": self._report,
        }

    def save(self, path: str | os.PathLike, *, extra: dict | None = None) -> None:
        """Write the fitted model as one JSON file, atomically (no pickle). ``extra``: more JSON-ready
        top-level fields kept with it (e.g. which LLM fit it); :meth:`load` ignores them."""
        data = self.to_dict()
        for key, value in (extra or {}).items():
            if key in data:
                raise ValueError(f"extra: {key!r} is a field of the model itself")
            data[key] = value
        text = json.dumps(_finite_or_none(data), indent=1, ensure_ascii=False, allow_nan=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))

    @classmethod
    def from_dict(cls, data: dict, llm=None) -> "HDEval":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"model: expected a saved HD-Eval model (format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"model: expected format version {VERSION}, got {data.get('version')!r}")
        config = HDEvalConfig.from_dict(data["config"])
        model = cls(llm, data["task"], data["criteria"], config=config)
        model.tree = CriteriaTree.from_dict(data["tree"])
        model.groups = [Group(g["key"], list(g["features"]), aggregator_from_dict(g["aggregator"]))
                        for g in data["groups"]]
        model._report = data.get("report")
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, llm=None) -> "HDEval":
        """A model :meth:`save` wrote; ``llm`` scores new samples in :meth:`predict`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), llm)
