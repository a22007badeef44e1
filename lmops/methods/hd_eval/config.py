"""HD-Eval's settings, validated when built (a ``ValueError`` names the field)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Union

__all__ = ["HDEvalConfig", "MODES", "PRUNE_METHODS"]

MODES = ("horizontal", "vertical")
PRUNE_METHODS = ("attribution", "permutation", "none")


def _int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def _number(name: str, value: object, low: float, high: float, *, closed_high: bool = True) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value
    ok = ok and (value <= high if closed_high else value < high)
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name}: expected a number in [{low}, {high}{bracket}, got {value!r}")


@dataclass
class HDEvalConfig:
    """Everything :class:`~lmops.methods.hd_eval.HDEval` can be told. Defaults marked "a choice" are
    ours: the paper's values are unconfirmed (see the package docstring).

    Attributes:
        aggregator: ``"linear"`` (least squares with intercept), ``"mlp"`` (a small torch MLP), another
            name given to :func:`~lmops.methods.hd_eval.register_aggregator`, or a callable returning a
            fresh aggregator (such a model cannot be saved unless its class is registered).
        mode: ``"horizontal"`` (one aggregator over all surviving leaves) or ``"vertical"`` (each
            internal criterion predicted from its own children, bottom-up, then the root aggregator on
            the top-level criteria).
        max_depth: deepest criteria level (top-level criteria are depth 1).
        rounds: fit-and-prune passes; a decomposition step runs between two passes.
        prune: ``"attribution"`` (the aggregator's own attribution: |coefficient| x feature std for
            linear, permutation importance otherwise), ``"permutation"`` (permutation importance for any
            aggregator) or ``"none"``.
        prune_threshold: a criterion whose share of its aggregator's total attribution is below this is
            pruned (0.05: a choice). The most important criterion of each aggregator is never pruned.
        expand_top: at most this many significant criteria (by global attribution share) are decomposed
            per decomposition step (a choice).
        min_subcriteria, max_subcriteria: the sizes of decomposition accepted (2..5; longer lists are
            cut to ``max_subcriteria``).
        valid_fraction: share of the labelled samples held out for the report's correlations (0 = none).
        seed: the held-out split, permutation importance and the MLP's initialization.
        round_outputs: round predictions to the nearest integer (reported; the 2026 reproduction notes
            that float outputs break ties and inflate rank correlations).
        score_min, score_max: the integer score scale the LLM is asked for.
        use_logprobs: probability-weighted scores when the backend has ``loglikelihood``.
        chunk_size: prompts per backend call.
        retries: extra attempts for an unparsable answer (then it counts as missing).
        ridge: L2 penalty of the linear aggregator (0 = ordinary least squares).
        permutation_repeats: shuffles per feature in permutation importance.
        decompose_chat: ask for decompositions with ``llm.chat`` (else ``llm.generate``).
        progress: show progress bars while scoring.
    """

    aggregator: Union[str, Callable[[], Any]] = "linear"
    mode: str = "horizontal"
    max_depth: int = 2
    rounds: int = 2
    prune: str = "attribution"
    prune_threshold: float = 0.05
    expand_top: int = 3
    min_subcriteria: int = 2
    max_subcriteria: int = 5
    valid_fraction: float = 0.2
    seed: int = 0
    round_outputs: bool = False
    score_min: int = 1
    score_max: int = 5
    use_logprobs: bool = True
    chunk_size: int = 64
    retries: int = 2
    ridge: float = 0.0
    permutation_repeats: int = 5
    decompose_chat: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        from .aggregators import AGGREGATORS

        if isinstance(self.aggregator, str):
            if self.aggregator not in AGGREGATORS:
                raise ValueError(f"aggregator: expected one of {sorted(AGGREGATORS)} or a callable returning an "
                                 f"aggregator, got {self.aggregator!r}")
        elif not callable(self.aggregator):
            raise TypeError(f"aggregator: expected a name or a callable, got {type(self.aggregator).__name__}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.prune not in PRUNE_METHODS:
            raise ValueError(f"prune: expected one of {PRUNE_METHODS}, got {self.prune!r}")
        _int("max_depth", self.max_depth, 1)
        _int("rounds", self.rounds, 1)
        _number("prune_threshold", self.prune_threshold, 0.0, 1.0, closed_high=False)
        _int("expand_top", self.expand_top, 0)
        _int("min_subcriteria", self.min_subcriteria, 1)
        _int("max_subcriteria", self.max_subcriteria, 1)
        if self.max_subcriteria < self.min_subcriteria:
            raise ValueError(f"max_subcriteria: expected >= min_subcriteria ({self.min_subcriteria}), "
                             f"got {self.max_subcriteria}")
        _number("valid_fraction", self.valid_fraction, 0.0, 1.0, closed_high=False)
        _int("seed", self.seed, 0)
        for name in ("round_outputs", "use_logprobs", "decompose_chat", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        for name in ("score_min", "score_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected an int, got {value!r}")
        if not self.score_max > self.score_min:
            raise ValueError(f"score_max: expected > score_min ({self.score_min}), got {self.score_max}")
        if self.score_max - self.score_min > 100:
            raise ValueError(f"score_max: expected at most 101 score values, got {self.score_min}..{self.score_max}")
        _int("chunk_size", self.chunk_size, 1)
        _int("retries", self.retries, 0)
        _number("ridge", self.ridge, 0.0, float("inf"), closed_high=False)
        _int("permutation_repeats", self.permutation_repeats, 1)

    @property
    def aggregator_name(self) -> str | None:
        """The registered name of the aggregator, or ``None`` for an unregistered callable."""
        return self.aggregator if isinstance(self.aggregator, str) else None

    def to_dict(self) -> dict:
        """JSON-ready settings (a callable aggregator is written as ``None``)."""
        out = asdict(self)
        out["aggregator"] = self.aggregator_name
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "HDEvalConfig":
        if not isinstance(data, dict):
            raise TypeError(f"config: expected a dict, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown}")
        data = dict(data)
        if data.get("aggregator") is None:
            data.pop("aggregator", None)
        return cls(**data)
