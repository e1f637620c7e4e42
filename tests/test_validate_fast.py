"""The vectorised validation (`screen`) gives what pandera gives: the same rules per row, in the same order, the
same valid frame, quarantine and report, on random damaged frames."""
import numpy as np
import pandas as pd
import pytest

from pipeline.validate import (clean_types, make_report, pandera_failures, row_failures, screen, validate_for_scoring,
                               validate_frame)


def reference_validate(df, params, with_target=True):
    "validate_frame as it was: pandera's failures, then clean_types of the passing rows."
    rules = pandera_failures(df, params, with_target)
    bad = df.index.isin(rules.index)
    quarantine = df[bad].assign(_rule=rules).rename_axis("_row").reset_index()
    valid = clean_types(df[~bad], params)
    return valid, quarantine, make_report(len(df), len(valid), rules, params)


def damaged(raw, rng, rows=400, share=0.08):
    "Rows drawn from the raw file (repeats included), a share of cells damaged in every way the schema judges."
    df = raw.iloc[rng.integers(0, len(raw), rows)].reset_index(drop=True)
    df.index = rng.permutation(rows) * 3 + 7  # labels neither from 0 nor sorted
    df = df.astype({c: object for c in ["LIMIT_BAL", "AGE", "SEX", "EDUCATION", "BILL_AMT2"]} | {"PAY_0": float})
    def some(): return df.index[rng.random(rows) < share]
    df.loc[some(), "AGE"] = rng.choice([150, 5, -1, 17, 121])
    df.loc[some(), "AGE"] = np.nan
    df.loc[some(), "LIMIT_BAL"] = rng.choice(["n/a", "12abc", " 5000 ", "1e5", None, -10, 1e39, "nan"])
    df.loc[some(), "PAY_0"] = rng.choice([-3, 10, np.nan])
    df.loc[some(), "BILL_AMT2"] = rng.choice(["x", 1e40, -1e40, None, "3.5"])
    df.loc[some(), "PAY_AMT1"] = rng.choice([-1.0, np.nan, np.inf, 4e38])
    over = some()
    df.loc[over, "BILL_AMT3"] = pd.to_numeric(df.loc[over, "LIMIT_BAL"], errors="coerce").fillna(1000).to_numpy(float) * 50
    df.loc[some(), "SEX"] = rng.choice([3, "2", 2.0, "x", None, " 1 "])
    df.loc[some(), "EDUCATION"] = rng.choice([7, -1, "0", 9.5, None])
    df.loc[some(), "MARRIAGE"] = rng.choice([4, 5])
    df.loc[some(), "default"] = rng.choice([2, -1])
    return df


def variants(params):
    v = params["validate"]
    rules = v["rules"] + [{"name": "education known", "expr": "EDUCATION != '0' | AGE < 30"},
                          {"name": "paid some", "expr": "PAY_AMT1 + PAY_AMT2 >= 0 & SEX == '1' | SEX == '2'"}]
    nullable = {**params["columns"], "numeric": {**params["columns"]["numeric"], "AGE": {"min": 18, "max": 120, "nullable": True}},
                "categorical": {**params["columns"]["categorical"], "SEX": {"codes": [1, 2], "nullable": True},
                                "MARRIAGE": {"codes": None}}}
    yield params
    yield {**params, "validate": {**v, "rules": rules}}
    yield {**params, "columns": nullable, "validate": {**v, "duplicate_rows": "allow"}}
    yield {**params, "columns": nullable, "validate": {**v, "rules": rules}}


@pytest.mark.parametrize("seed", range(6))
def test_fast_rules_equal_pandera_on_damaged_frames(raw, params, seed):
    rng = np.random.default_rng(seed)
    df = damaged(raw, rng, share=[0.0, 0.01, 0.08, 0.3][seed % 4])
    for p in variants(params):
        for with_target in (True, False):
            fast, ref = row_failures(df, p, with_target), pandera_failures(df, p, with_target)
            assert screen(df, p, with_target) is not None
            pd.testing.assert_series_equal(fast, ref, check_index_type=True)
            got, want = validate_frame(df, p, with_target), reference_validate(df, p, with_target)
            pd.testing.assert_frame_equal(got[0], want[0], check_exact=True)
            pd.testing.assert_frame_equal(got[1], want[1], check_exact=True)
            assert got[2] == want[2] and list(got[2]["rules"]) == list(want[2]["rules"])


def test_fast_path_on_the_default_data_and_a_resampled_batch(raw, params):
    for df in (raw, raw.sample(5000, replace=True, random_state=3).reset_index(drop=True)):  # repeats: duplicate rows
        assert screen(df, params) is not None
        got, want = validate_frame(df, params), reference_validate(df, params)
        for a, b in zip(got[:2], want[:2]): pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert got[2] == want[2] and list(got[2]["rules"]) == list(want[2]["rules"])
    scoring = raw.sample(5000, replace=True, random_state=4).reset_index(drop=True)
    assert validate_for_scoring(scoring, params)[2]["rows_quarantined"] == 0
    assert screen(pd.concat([raw.head(5), raw.head(3)]), params) is None  # repeated row labels: pandera's


def test_id_column_duplicates_and_missing_ids(raw, params):
    rng = np.random.default_rng(7)
    df = damaged(raw, rng, rows=300, share=0.05)
    df["cust"] = rng.integers(0, 250, len(df)).astype(object)
    df.loc[df.index[:5], "cust"] = None
    p = {**params, "data": {**params["data"], "id": "cust"}}
    pd.testing.assert_series_equal(row_failures(df, p), pandera_failures(df, p))
    got, want = validate_frame(df, p), reference_validate(df, p)
    for a, b in zip(got[:2], want[:2]): pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_frames_the_fast_path_leaves_to_pandera(raw, params):
    df = raw.head(50).copy()
    df["AGE"] = df["AGE"].astype(bool)  # to_numeric keeps bools: not plain numbers
    assert screen(df, params) is None
    pd.testing.assert_series_equal(row_failures(df, params), pandera_failures(df, params))
    missing = raw.head(20).drop(columns=["PAY_AMT3"])
    pd.testing.assert_series_equal(row_failures(missing, params), pandera_failures(missing, params))
    empty = raw.head(0)
    got, want = validate_frame(empty, params), reference_validate(empty, params)
    pd.testing.assert_frame_equal(got[0], want[0]) and pd.testing.assert_frame_equal(got[1], want[1])
