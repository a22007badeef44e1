"""Aggregators, attribution and permutation importance, serialization, registration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmops.methods.hd_eval import (
    AGGREGATORS,
    LinearAggregator,
    MLPAggregator,
    aggregator_from_dict,
    make_aggregator,
    permutation_importance,
    register_aggregator,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(1, 5, size=(n, 3))
    X[:, 1] *= 2  # a wider feature: attribution must account for spread, not only the coefficient
    return X, rng


def test_linear_recovers_planted_coefficients():
    X, _ = _data()
    y = 1.5 * X[:, 0] - 0.5 * X[:, 1] + 0.0 * X[:, 2] + 3.0
    agg = LinearAggregator().fit(X, y)
    np.testing.assert_allclose(agg.coef, [1.5, -0.5, 0.0], atol=1e-10)
    assert agg.intercept == pytest.approx(3.0)
    np.testing.assert_allclose(agg.predict(X), y, atol=1e-10)


def test_ridge_shrinks_coefficients():
    X, rng = _data(n=30)
    y = X[:, 0] + rng.normal(0, 0.1, 30)
    plain = np.abs(LinearAggregator().fit(X, y).coef).sum()
    assert np.abs(LinearAggregator(ridge=50.0).fit(X, y).coef).sum() < plain


def test_linear_attribution_vs_permutation_importance():
    X, rng = _data()
    y = 1.5 * X[:, 0] - 0.5 * X[:, 1] + rng.normal(0, 0.05, len(X))
    agg = LinearAggregator().fit(X, y)
    attr = agg.attribution(X, y)
    np.testing.assert_allclose(attr, np.abs(agg.coef) * X.std(axis=0))
    perm = permutation_importance(agg, X, y, repeats=20, seed=0)
    # shuffling x_j adds about 2 w_j^2 var(x_j) to the squared error: the square of the attribution, times 2
    np.testing.assert_allclose(perm[:2], 2 * attr[:2] ** 2, rtol=0.15)
    assert perm[2] < 1e-3 * perm[0]
    assert list(np.argsort(attr)) == list(np.argsort(perm))


def test_permutation_importance_sees_what_linear_attribution_misses():
    X, rng = _data()
    y = (X[:, 2] - 3.0) ** 2 + 0.3 * X[:, 0] + rng.normal(0, 0.05, len(X))  # symmetric in x3: no linear trend
    linear = LinearAggregator().fit(X, y).attribution(X, y)
    assert linear[2] < 0.2 * linear.sum()
    mlp = MLPAggregator(seed=0).fit(X, y)
    assert np.corrcoef(mlp.predict(X), y)[0, 1] > 0.95
    perm = mlp.attribution(X, y)
    assert perm[2] > 0.6 * perm.sum()
    assert perm[1] < 0.05 * perm.sum()


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_json_round_trip(kind):
    X, rng = _data(n=60)
    y = X[:, 0] + rng.normal(0, 0.1, 60)
    agg = make_aggregator(kind, seed=3).fit(X, y)
    back = aggregator_from_dict(json.loads(json.dumps(agg.to_dict())))
    assert type(back) is type(agg)
    np.testing.assert_allclose(back.predict(X), agg.predict(X), rtol=0, atol=1e-12)


def test_errors():
    with pytest.raises(RuntimeError):
        LinearAggregator().predict(np.ones((2, 2)))
    with pytest.raises(ValueError, match="X"):
        LinearAggregator().fit(np.array([[1.0, np.nan], [2.0, 3.0]]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="y"):
        LinearAggregator().fit(np.ones((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="ridge"):
        LinearAggregator(ridge=-1)
    with pytest.raises(ValueError, match="aggregator"):
        make_aggregator("tree")
    with pytest.raises(ValueError, match="kind"):
        aggregator_from_dict({"kind": "tree"})


def test_register_a_custom_aggregator():
    class Mean:
        kind = "mean-test"

        def fit(self, X, y):
            self.m = float(np.mean(y))
            return self

        def predict(self, X):
            return np.full(len(X), self.m)

        def attribution(self, X, y):
            return np.ones(X.shape[1])

        def to_dict(self):
            return {"kind": self.kind, "m": self.m}

        @classmethod
        def from_dict(cls, data):
            obj = cls()
            obj.m = data["m"]
            return obj

    register_aggregator("mean-test", Mean)
    try:
        agg = make_aggregator("mean-test").fit(np.ones((3, 1)), np.array([1.0, 2.0, 6.0]))
        assert aggregator_from_dict(agg.to_dict()).predict(np.ones((2, 1))).tolist() == [3.0, 3.0]
        with pytest.raises(TypeError):
            register_aggregator("other-name", Mean)
    finally:
        AGGREGATORS.pop("mean-test", None)
