"""The compiled walk (pipeline.attribution) and the scorer's one-pass path: XGBoost's numbers to the bit, on many rows."""
import numpy as np
import pytest
import xgboost as xgb

import pipeline.attribution as attribution
from pipeline.attribution import CompiledMargin, PathAttribution, heap_tables, tree_tables


def _booster(seed: int, depth: int, n: int = 3000, missing: float = 0.15, rounds: int = 40, **extra) -> tuple:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 7)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=n) > 0).astype(int)
    X[rng.random(X.shape) < missing] = np.nan
    b = xgb.train({"max_depth": depth, "eta": 0.3, "objective": "binary:logistic", "base_score": 0.3, "nthread": 1, **extra},
                  xgb.DMatrix(X, y), rounds)
    return b, X


@pytest.mark.parametrize("seed,depth,extra", [(0, 1, {}), (1, 4, {}), (2, 7, {}),
                                              (3, 10, {"grow_policy": "lossguide", "max_leaves": 24})])
def test_margin_and_credits_equal_xgboost_with_and_without_missing_values(seed, depth, extra):
    b, X = _booster(seed, depth, **extra)
    full = np.nan_to_num(X, nan=0.25)  # no missing value: the walk skips their test
    cm, paths = CompiledMargin(b, X[:100]), PathAttribution(b)
    for data in (X, full, X[:1], X[:65]):
        theirs = b.inplace_predict(data, predict_type="margin")
        assert np.array_equal(cm.margin(data), theirs)  # to the bit, float32
        margin, credits = paths.walk(data)
        assert margin.dtype == np.float32 and np.array_equal(margin, theirs)
        np.testing.assert_allclose(credits, b.predict(xgb.DMatrix(data), pred_contribs=True, approx_contribs=True), atol=1e-5)
        assert np.array_equal(credits, paths.attribute(data))


def test_heap_layout_copies_short_leaves_and_refuses_deep_trees(monkeypatch):
    b, X = _booster(5, 3)
    t = tree_tables(b)
    h = heap_tables(t, X.shape[1])
    assert len(h["feat"]) == int((2 ** (t["depths"] + 1) - 1).sum())
    assert (h["col"][h["delta"] != 0] < X.shape[1]).all()  # every credit goes to a feature, none to the spare column
    monkeypatch.setattr(attribution, "MAX_DEPTH", 2)
    with pytest.raises(ValueError, match="deeper"):
        CompiledMargin(b, X[:10])
    with pytest.raises(ValueError, match="deeper"):
        PathAttribution(b)


def test_shared_tables_give_the_same_attributions():
    b, X = _booster(6, 5)
    cm = CompiledMargin(b, X[:100])
    shared = PathAttribution(b, cm.tables, cm.heap)
    assert np.array_equal(shared.attribute(X), PathAttribution(b).attribute(X)) and shared.bias == PathAttribution(b).bias


@pytest.fixture(scope="module")
def champion(small_bundle, small_params, small_splits):
    "A trained XGBoost bundle (the small profile's; built by the tests, not by `dvc repro`) and its test split."
    return small_bundle, small_params, small_splits["test"].drop(columns=small_params["data"]["target"])


def test_scorer_one_pass_equals_the_separate_margin_and_credits(champion):
    from pipeline.scorer import Scorer, check_sample
    from pipeline.validate import validate_for_scoring
    bundle, params, test = champion
    rows = validate_for_scoring(test.head(3000), params)[0]
    rows.loc[rows.index[:40], "EDUCATION"] = "6"  # a rare code, pooled
    rows.loc[rows.index[40:80], "BILL_AMT2"] = 0.0  # a ratio's zero denominator: a missing value, imputed
    scorer = Scorer(bundle, params, check_sample(params))
    assert scorer.paths is not None and scorer.paths.margin_checked
    one = scorer.score(rows, "all")  # margins and credits from one walk
    two = scorer.score(rows, np.ones(len(rows), bool))  # the margin, then the credits of every row
    for k in one:
        assert np.array_equal(one[k], two[k], equal_nan=one[k].dtype.kind == "f") if one[k].dtype != object else list(map(str, one[k].ravel())) == list(map(str, two[k].ravel())), k
    xgb_margin = bundle.model.estimator.booster_.inplace_predict(bundle.model.featurizer.transform(rows), predict_type="margin")
    assert np.array_equal(one["risk_score"], bundle.model.calibrated.probability(xgb_margin))
    declined = scorer.score(rows, "declined")
    at = np.flatnonzero(one["decision"] == "decline")
    assert np.array_equal(declined["which"], at) and np.array_equal(declined["reason_contribution"], one["reason_contribution"][at], equal_nan=True)
