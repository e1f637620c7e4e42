import numpy as np
import pandas as pd
import pytest

from pipeline.core import target_vector
from pipeline.featurize import CreditFeatures, bin_shares, build_featurizer, code_shares, reference_profile, split_frame
from pipeline.validate import validate_frame


@pytest.fixture(scope="module")
def splits(raw, params):
    valid, _, _ = validate_frame(raw, params)
    return split_frame(valid, params)


def test_split_is_stratified_seeded_and_disjoint(splits, params):
    sizes = {k: len(v) for k, v in splits.items()}
    total = sum(sizes.values())
    assert sizes["test"] == pytest.approx(total * params["featurize"]["test_size"], abs=1)
    assert sizes["valid"] == pytest.approx(total * params["featurize"]["valid_size"], abs=1)
    rates = [target_vector(s, params).mean() for s in splits.values()]
    assert max(rates) - min(rates) < 0.002
    idx = [set(s.index) for s in splits.values()]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    again = split_frame(pd.concat(splits.values()).sort_index(), params)
    assert again["test"].index.equals(splits["test"].index)


def test_engineered_ratios_and_aggregates():
    X = pd.DataFrame({"bill": [50.0, 10.0, 5.0], "limit": [100.0, 0.0, -1.0], "d1": [2, -1, 0], "d2": [1, 0, 3]})
    out = CreditFeatures(["bill", "limit", "d1", "d2"], {"util": ["bill", "limit"]},
                         {"late": {"fn": "count_positive", "cols": ["d1", "d2"]}, "worst": {"fn": "max", "cols": ["d1", "d2"]}}
                         ).fit(X).transform(X.assign(extra="ignored"))
    assert "extra" not in out
    assert out["util"].iloc[0] == 0.5 and np.isnan(out["util"].iloc[1]) and np.isnan(out["util"].iloc[2])
    assert out["late"].tolist() == [2, 0, 1] and out["worst"].tolist() == [2, 0, 3]


def test_featurizer_handles_unseen_codes_and_missing_values(splits, params):
    featurizer = build_featurizer(params).fit(splits["train"])
    X = featurizer.transform(splits["test"])
    assert X.notna().all().all() and {"delay_max", "utilisation_1", "SEX_2"} <= set(X.columns)
    odd = splits["test"].head(3).copy()
    odd["EDUCATION"] = ["99", None, "1"]
    odd.loc[odd.index[0], "LIMIT_BAL"] = np.nan
    Xo = featurizer.transform(odd)
    assert Xo.shape == (3, X.shape[1]) and Xo.notna().all().all()
    onehot = featurizer.named_steps["columns"].named_transformers_["cat"].named_steps["onehot"]
    edu = Xo.filter(like="EDUCATION").iloc[0]
    if onehot.infrequent_categories_[1] is not None:  # EDUCATION has pooled rare codes: unseen codes join them
        assert edu["EDUCATION_infrequent_sklearn"] == 1 and edu.sum() == 1
    else:
        assert edu.sum() == 0


def test_reference_profile_shares(splits, params):
    profile = reference_profile(splits["train"], params)
    for col, ref in profile.items():
        assert sum(ref["shares"]) == pytest.approx(1.0), col
    assert profile["SEX"]["codes"] == ["1", "2"] and profile["LIMIT_BAL"]["kind"] == "numeric"
    assert bin_shares(np.array([0.5, 1.5, np.nan, 9.0]), [1.0, 2.0]).tolist() == [0.25, 0.25, 0.25, 0.25]
    assert code_shares(pd.Series(["a", "b", "z", None]), ["a", "b"]).tolist() == [0.25, 0.25, 0.25, 0.25]
