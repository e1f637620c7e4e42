import numpy as np
import pandas as pd
import pytest

from pipeline.core import target_vector
from pipeline.featurize import Featurizer, bin_shares, code_shares, reference_profile, safe_name, split_frame
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
    fz = Featurizer(["bill", "limit", "d1", "d2"], [], {"util": ["bill", "limit"]},
                    {"late": {"fn": "count_positive", "cols": ["d1", "d2"]}, "worst": {"fn": "max", "cols": ["d1", "d2"]}})
    raw = fz.fit(X).transform(X.assign(extra="ignored"), with_raw=True)[1]
    out = pd.DataFrame(raw, columns=["bill", "limit", "d1", "d2", "util", "late", "worst"])
    assert out["util"].iloc[0] == 0.5 and np.isnan(out["util"].iloc[1]) and np.isnan(out["util"].iloc[2])
    assert out["late"].tolist() == [2, 0, 1] and out["worst"].tolist() == [2, 0, 3]
    assert "extra" not in fz.feature_names_ and fz.frame(X).notna().all().all()


def test_featurizer_equals_scikit_learns_column_transformer(splits, params):
    "The one featurizer against the scikit-learn pipeline it replaced: the same matrix, column for column."
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder
    from pipeline.core import as_code, feature_columns
    fz = Featurizer.from_params(params).fit(splits["train"])
    numeric, categorical = feature_columns(params)
    engineered = [*fz.ratios, *fz.aggregates]
    codes = FunctionTransformer(lambda X: X.apply(as_code).fillna("missing").astype(object), feature_names_out="one-to-one")
    onehot = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=params["featurize"]["min_category_share"],
                           sparse_output=False)
    reference = ColumnTransformer([("num", SimpleImputer(strategy="median", add_indicator=True), numeric + engineered),
                                   ("cat", Pipeline([("codes", codes), ("onehot", onehot)]), categorical)])
    numbers = lambda df: pd.concat([df[categorical], pd.DataFrame(fz.numeric_block(df), columns=numeric + engineered,
                                                                  index=df.index)], axis=1)
    reference.fit(numbers(splits["train"]))
    odd = splits["test"].head(50).copy()
    odd.loc[odd.index[:5], "EDUCATION"] = ["99", None, "1", "0", "6"]
    for df in (splits["test"], odd):
        assert np.array_equal(fz.transform(df), reference.transform(numbers(df)), equal_nan=True)
    assert np.array_equal(fz.transform(odd), fz.transform(odd.to_dict("records")))  # frames and records alike


def test_featurizer_handles_unseen_codes_and_missing_values(splits, params):
    featurizer = Featurizer.from_params(params).fit(splits["train"])
    X = featurizer.frame(splits["test"])
    assert X.notna().all().all() and {"delay_max", "utilisation_1", "SEX_2"} <= set(X.columns)
    odd = splits["test"].head(3).copy()
    odd["EDUCATION"] = ["99", None, "1"]
    odd.loc[odd.index[0], "LIMIT_BAL"] = np.nan
    Xo = featurizer.frame(odd)
    assert Xo.shape == (3, X.shape[1]) and Xo.notna().all().all()
    edu = Xo.filter(like="EDUCATION").iloc[0]
    if featurizer.pooled_["EDUCATION"]:  # EDUCATION has pooled rare codes: unseen codes join them
        assert edu["EDUCATION_infrequent"] == 1 and edu.sum() == 1
    else:
        assert edu.sum() == 0
    assert set(featurizer.fields_) == set(params["columns"]["numeric"]) | set(params["columns"]["categorical"]) | set(
        featurizer.ratios) | set(featurizer.aggregates)


def test_feature_names_are_safe_unique_and_map_back_to_their_field():
    values = ["a<b", "x[1]", "c/d", 'say "hi"', "déjà vu", "z" * 200, "x_1", "x]1"]
    df = pd.DataFrame({"amount due": [1.0, 2.0] * 4, "kind.of": values})
    fz = Featurizer(["amount due"], ["kind.of"]).fit(df)
    assert len(set(fz.feature_names_)) == len(fz.feature_names_)
    assert not any(ch in name for name in fz.feature_names_ for ch in "[]<")
    assert fz.fields_.count("kind.of") == len(values) and fz.fields_[0] == "amount due"
    assert safe_name("a [b] <c>") == "a _b_ _c_"
    import xgboost as xgb  # XGBoost takes the names
    xgb.DMatrix(fz.transform(df), feature_names=fz.feature_names_)


def test_reference_profile_shares(splits, params):
    profile = reference_profile(splits["train"], params)
    for col, ref in profile.items():
        assert sum(ref["shares"]) == pytest.approx(1.0), col
    assert profile["SEX"]["codes"] == ["1", "2"] and profile["LIMIT_BAL"]["kind"] == "numeric"
    assert bin_shares(np.array([0.5, 1.5, np.nan, 9.0]), [1.0, 2.0]).tolist() == [0.25, 0.25, 0.25, 0.25]
    assert code_shares(pd.Series(["a", "b", "z", None]), ["a", "b"]).tolist() == [0.25, 0.25, 0.25, 0.25]
