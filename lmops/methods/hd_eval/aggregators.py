"""White-box aggregators: criterion scores -> the human score, with per-criterion attributions.

HD-Eval's aggregator is "white box", "efficient to train" and fit to human labels by regression (MSE,
per a secondary summary); its model family and attribution method are unconfirmed. So both are
pluggable here. An aggregator implements :class:`Aggregator`:

- ``fit(X, y) -> self``, ``predict(X) -> y``: ``X`` is float64 ``(n_samples, n_features)``, ``y`` is
  ``(n_samples,)``;
- ``attribution(X, y) -> (n_features,)``: non-negative importances on data ``(X, y)``;
- ``to_dict()`` / ``from_dict(d)``: JSON-ready parameters (no pickle), with ``kind`` the registered name.

Two are built in (a choice): :class:`LinearAggregator` (least squares with intercept, optional ridge;
attribution |coefficient| x feature standard deviation) and :class:`MLPAggregator` (a one-hidden-layer
torch MLP; attribution by :func:`permutation_importance`). :func:`register_aggregator` adds more.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "LinearAggregator",
    "MLPAggregator",
    "aggregator_from_dict",
    "make_aggregator",
    "permutation_importance",
    "register_aggregator",
]


@runtime_checkable
class Aggregator(Protocol):
    """What :class:`~lmops.methods.hd_eval.HDEval` needs of an aggregator (see the module docstring)."""

    kind: str

    def fit(self, X: np.ndarray, y: np.ndarray) -> "Aggregator": ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def attribution(self, X: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    def to_dict(self) -> dict: ...


def _check_xy(X: object, y: object | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"X: expected a 2-D array (n_samples, n_features >= 1), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X: expected finite values (impute missing criterion scores first)")
    if y is None:
        return X, None
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y: expected shape ({X.shape[0]},), got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("y: expected finite values (drop NaN human scores first)")
    return X, y


def permutation_importance(
    model: Any, X: np.ndarray, y: np.ndarray, *, repeats: int = 5, seed: int = 0
) -> np.ndarray:
    """Mean increase of the mean squared error of ``model.predict`` when one column of ``X`` is
    shuffled (``repeats`` shuffles, seeded), clipped at 0: one value per feature, shape
    ``(n_features,)``. Works for any fitted model; for a linear one it is about 2 w_j^2 var(x_j)."""
    X, y = _check_xy(X, y)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected a positive int, got {repeats!r}")
    rng = np.random.default_rng(seed)
    base = float(np.mean((model.predict(X) - y) ** 2))
    out = np.zeros(X.shape[1])
    for j in range(X.shape[1]):
        losses = []
        for _ in range(repeats):
            Xp = X.copy()
            Xp[:, j] = X[rng.permutation(X.shape[0]), j]
            losses.append(float(np.mean((model.predict(Xp) - y) ** 2)))
        out[j] = max(0.0, float(np.mean(losses)) - base)
    return out


class LinearAggregator:
    """``y ~ intercept + X @ coef`` by least squares (``ridge > 0``: L2 on ``coef``, not the intercept).

    Attribution is |coef_j| x std(x_j) on the data given: the change of the prediction for a typical
    move of the feature. A choice (the paper's attribution method is unconfirmed).
    """

    kind = "linear"

    def __init__(self, ridge: float = 0.0) -> None:
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0 <= ridge < float("inf"):
            raise ValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")
        self.ridge = float(ridge)
        self.coef: np.ndarray | None = None
        self.intercept: float = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LinearAggregator":
        X, y = _check_xy(X, y)
        if X.shape[0] < 2:
            raise ValueError(f"X: expected at least 2 samples to fit, got {X.shape[0]}")
        mx, my = X.mean(axis=0), y.mean()
        Xc, yc = X - mx, y - my
        if self.ridge > 0:
            gram = Xc.T @ Xc + self.ridge * np.eye(X.shape[1])
            coef = np.linalg.solve(gram, Xc.T @ yc)
        else:  # lstsq: the minimum-norm solution when features are collinear or constant
            coef = np.linalg.lstsq(Xc, yc, rcond=None)[0]
        self.coef = coef
        self.intercept = float(my - mx @ coef)
        return self

    def _fitted(self) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("LinearAggregator: call fit() first")
        return self.coef

    def predict(self, X: np.ndarray) -> np.ndarray:
        coef = self._fitted()
        X, _ = _check_xy(X)
        if X.shape[1] != coef.shape[0]:
            raise ValueError(f"X: expected {coef.shape[0]} features, got {X.shape[1]}")
        return X @ coef + self.intercept

    def attribution(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        coef = self._fitted()
        X, _ = _check_xy(X, y)
        return np.abs(coef) * X.std(axis=0)

    @property
    def weights(self) -> list[float]:
        """The coefficients, one per feature."""
        return [float(c) for c in self._fitted()]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ridge": self.ridge, "coef": self.weights, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict) -> "LinearAggregator":
        agg = cls(ridge=float(data.get("ridge", 0.0)))
        agg.coef = np.asarray(data["coef"], dtype=np.float64)
        agg.intercept = float(data["intercept"])
        return agg


class MLPAggregator:
    """A one-hidden-layer tanh MLP, trained full-batch with Adam on standardized features and target
    (torch), predicting with numpy. The nonlinear option; attribution is permutation importance.
    Sizes and steps are a choice, sized for a few hundred to a few thousand labelled samples (such
    small matrices train fastest with ``torch.set_num_threads(1)`` on a busy machine).
    """

    kind = "mlp"

    def __init__(self, hidden: int = 16, steps: int = 400, lr: float = 0.02, weight_decay: float = 1e-3,
                 seed: int = 0, repeats: int = 5) -> None:
        for name, value in (("hidden", hidden), ("steps", steps), ("repeats", repeats)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"lr, weight_decay: expected lr > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        self.hidden, self.steps, self.lr, self.weight_decay = hidden, steps, float(lr), float(weight_decay)
        self.seed, self.repeats = int(seed), repeats
        self.params: dict[str, np.ndarray] | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> "MLPAggregator":
        import torch

        X, y = _check_xy(X, y)
        x_mean, x_std = X.mean(axis=0), X.std(axis=0)
        x_std = np.where(x_std > 0, x_std, 1.0)
        y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
        gen = torch.Generator().manual_seed(self.seed)
        d, h = X.shape[1], self.hidden
        w1 = ((torch.rand(d, h, generator=gen, dtype=torch.float64) * 2 - 1) / d**0.5).requires_grad_()
        b1 = torch.zeros(h, dtype=torch.float64, requires_grad=True)
        w2 = ((torch.rand(h, 1, generator=gen, dtype=torch.float64) * 2 - 1) / h**0.5).requires_grad_()
        b2 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        xt = torch.from_numpy((X - x_mean) / x_std)
        yt = torch.from_numpy((y - y_mean) / y_std)
        opt = torch.optim.Adam([w1, b1, w2, b2], lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.steps):
            opt.zero_grad()
            pred = (torch.tanh(xt @ w1 + b1) @ w2 + b2).squeeze(-1)
            loss = torch.mean((pred - yt) ** 2)
            loss.backward()
            opt.step()
        self.params = {
            "w1": w1.detach().numpy().copy(), "b1": b1.detach().numpy().copy(),
            "w2": w2.detach().numpy().copy(), "b2": b2.detach().numpy().copy(),
            "x_mean": x_mean, "x_std": x_std, "y_mean": np.array(y_mean), "y_std": np.array(y_std),
        }
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.params is None:
            raise RuntimeError("MLPAggregator: call fit() first")
        p = self.params
        X, _ = _check_xy(X)
        if X.shape[1] != p["w1"].shape[0]:
            raise ValueError(f"X: expected {p['w1'].shape[0]} features, got {X.shape[1]}")
        hid = np.tanh(((X - p["x_mean"]) / p["x_std"]) @ p["w1"] + p["b1"])
        return (hid @ p["w2"] + p["b2"])[:, 0] * float(p["y_std"]) + float(p["y_mean"])

    def attribution(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return permutation_importance(self, X, y, repeats=self.repeats, seed=self.seed)

    def to_dict(self) -> dict:
        if self.params is None:
            raise RuntimeError("MLPAggregator: call fit() first")
        return {
            "kind": self.kind, "hidden": self.hidden, "steps": self.steps, "lr": self.lr,
            "weight_decay": self.weight_decay, "seed": self.seed, "repeats": self.repeats,
            "params": {k: np.asarray(v).tolist() for k, v in self.params.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "MLPAggregator":
        agg = cls(hidden=int(data["hidden"]), steps=int(data["steps"]), lr=float(data["lr"]),
                  weight_decay=float(data["weight_decay"]), seed=int(data["seed"]), repeats=int(data["repeats"]))
        agg.params = {k: np.asarray(v, dtype=np.float64) for k, v in data["params"].items()}
        return agg


# name -> (class with from_dict, factory(ridge, seed) -> fresh instance)
AGGREGATORS: dict[str, tuple[type, Callable[..., Any]]] = {
    "linear": (LinearAggregator, lambda ridge=0.0, seed=0: LinearAggregator(ridge=ridge)),
    "mlp": (MLPAggregator, lambda ridge=0.0, seed=0: MLPAggregator(seed=seed)),
}


def register_aggregator(name: str, cls: type, factory: Callable[..., Any] | None = None) -> None:
    """Make ``name`` usable as ``HDEval(aggregator=name)`` and loadable from a saved model.

    ``cls`` implements :class:`Aggregator` with ``kind = name`` and a classmethod ``from_dict``;
    ``factory(ridge=..., seed=...)`` builds a fresh one (default: ``cls()``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if getattr(cls, "kind", None) != name or not callable(getattr(cls, "from_dict", None)):
        raise TypeError(f"cls: expected a class with kind = {name!r} and a from_dict classmethod")
    AGGREGATORS[name] = (cls, factory or (lambda ridge=0.0, seed=0: cls()))


def make_aggregator(spec: str | Callable[[], Any], *, ridge: float = 0.0, seed: int = 0) -> Aggregator:
    """A fresh aggregator from a registered name or a zero-argument factory."""
    if isinstance(spec, str):
        if spec not in AGGREGATORS:
            raise ValueError(f"aggregator: expected one of {sorted(AGGREGATORS)}, got {spec!r}")
        agg = AGGREGATORS[spec][1](ridge=ridge, seed=seed)
    else:
        agg = spec()
    for method in ("fit", "predict", "attribution"):
        if not callable(getattr(agg, method, None)):
            raise TypeError(f"aggregator: {type(agg).__name__} has no {method}() (see the Aggregator protocol)")
    return agg


def aggregator_from_dict(data: dict) -> Aggregator:
    """Rebuild a fitted aggregator from its ``to_dict()``."""
    if not isinstance(data, dict) or data.get("kind") not in AGGREGATORS:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise ValueError(f"aggregator: unknown kind {kind!r}; expected one of {sorted(AGGREGATORS)} "
                         "(register custom ones with register_aggregator)")
    return AGGREGATORS[data["kind"]][0].from_dict(data)
