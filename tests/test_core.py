from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core import as_code, feature_columns, file_md5, params_hash, repo_root, target_vector, ks_statistic


def test_as_code_unifies_numbers_floats_and_strings():
    codes = as_code(pd.Series([2, 2.0, "2", " 2 ", None, np.nan, "grad school", 2.5]))
    assert codes.tolist()[:4] == ["2", "2", "2", "2"]
    assert codes[4] is None and codes[5] is None
    assert codes[6] == "grad school" and codes[7] == "2.5"


def test_target_vector_with_string_and_numeric_targets():
    df = pd.DataFrame({"t": ["bad", "good", "bad"], "n": [1.0, 0.0, 1.0]})
    assert target_vector(df, {"data": {"target": "t", "positive": "bad"}}).tolist() == [1, 0, 1]
    assert target_vector(df, {"data": {"target": "n", "positive": 1}}).tolist() == [1, 0, 1]


def test_ks_statistic_matches_hand_computation():
    # scores sorted: bads at 0.35, 0.6, 0.7, 0.9; goods at 0.1, 0.2, 0.3, 0.4.
    # At threshold 0.6: TPR = 3/4, FPR = 0 -> KS = 0.75 (the maximum gap).
    y = [0, 0, 0, 1, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.9]
    assert ks_statistic(y, p) == pytest.approx(0.75)


def test_repo_root_climbs_out_of_dvc_temp_workspace():
    assert repo_root("/r/.dvc/tmp/exps/tmpx/pipeline") == Path("/r")
    assert repo_root("/r/pipeline") == Path("/r")


def test_feature_columns_respects_drop(params):
    p = {**params, "columns": {**params["columns"], "drop": ["SEX"]}}
    numeric, categorical = feature_columns(p)
    assert "SEX" not in categorical and "EDUCATION" in categorical and "AGE" in numeric


def test_lineage_hashes(params, tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"abc")
    assert file_md5(f) == "900150983cd24fb0d6963f7d28e17f72"
    shuffled = dict(reversed(list(params.items())))
    assert params_hash(shuffled) == params_hash(params)
    assert params_hash({**params, "train": {**params["train"], "seed": 7}}) != params_hash(params)


def test_as_code_on_distinct_values_keeps_every_row_and_code_of_agrees():
    from pipeline.core import as_code, code_of
    values = pd.Series([2, 2.0, "2", " 2 ", None, np.nan, "a", 2.5, "x ", float("inf"), 2], index=range(10, 21), name="c",
                       dtype=object)
    codes = as_code(values)
    assert list(codes) == ["2", "2", "2", "2", None, None, "a", "2.5", "x", "inf", "2"]
    assert codes.index.equals(values.index) and codes.name == "c"
    assert [code_of(v) for v in values] == list(codes)
    assert list(as_code(pd.Series([3.0, np.nan, 1.0]))) == ["3", None, "1"] and as_code(pd.Series([], dtype=object)).empty
