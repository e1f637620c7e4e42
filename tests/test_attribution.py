"""Path attributions (pipeline/attribution.py): XGBoost's approximate contributions, computed by the numba kernel."""
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from pipeline.attribution import PathAttribution, tree_tables


def _booster(seed: int, depth: int, n_features: int = 6, missing: float = 0.2, rounds: int = 30) -> tuple:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(800, n_features))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=800) > 0).astype(int)
    X[rng.random(X.shape) < missing] = np.nan  # missing values take each split's learned default direction
    b = xgb.train({"max_depth": depth, "eta": 0.3, "objective": "binary:logistic", "base_score": 0.3, "nthread": 1},
                  xgb.DMatrix(X, y), rounds)
    return b, X


@pytest.mark.parametrize("seed,depth", [(0, 1), (1, 3), (2, 6)])
def test_equal_to_xgboost_approx_contribs_and_sum_to_the_margin(seed, depth):
    b, X = _booster(seed, depth)
    ours = PathAttribution(b).attribute(X)
    theirs = b.predict(xgb.DMatrix(X), pred_contribs=True, approx_contribs=True)
    assert ours.shape == theirs.shape == (len(X), X.shape[1] + 1)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(ours.sum(axis=1), b.predict(xgb.DMatrix(X), output_margin=True), atol=1e-5)
    assert not np.allclose(ours[:, :-1], b.predict(xgb.DMatrix(X), pred_contribs=True)[:, :-1], atol=1e-3) or depth == 1  # not SHAP


def test_tables_number_children_next_to_each_other():
    b, _ = _booster(3, 4)
    t = tree_tables(b)
    internal = t["nodes"][t["nodes"] >= 0]
    left = internal & 0xFFFFFFFF
    assert len(t["roots"]) == 30 and (left + 1 < len(t["nodes"])).all()
    assert (np.diff(t["roots"]) > 0).all() and t["depths"].max() == 4


def test_refuses_a_wrong_width_and_categorical_splits():
    b, X = _booster(4, 3)
    with pytest.raises(ValueError, match="columns"):
        PathAttribution(b).attribute(X[:, :3])
    df = pd.DataFrame({"c": pd.Categorical(np.random.default_rng(0).choice(list("abcd"), 400)), "x": np.arange(400.0)})
    y = (df["c"].isin(["a", "b"])).astype(int)
    cat = xgb.train({"max_depth": 2, "max_cat_to_onehot": 1}, xgb.DMatrix(df, y, enable_categorical=True), 3)
    with pytest.raises(ValueError, match="categorical"):
        PathAttribution(cat)
