import numpy as np
import pandas as pd
import pytest

from pipeline.drift import feature_drift, psi, score_psi, status
from pipeline.featurize import reference_profile, split_frame
from pipeline.validate import validate_frame


def test_psi_is_zero_for_identical_and_large_for_shift():
    r = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(r, r) == 0.0
    assert psi(r, np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(sum(
        (c - q) * np.log(c / q) for c, q in zip([0.1, 0.2, 0.3, 0.4], r)))
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20000)
    assert score_psi(ref, rng.normal(size=20000), 10) < 0.01
    assert score_psi(ref, rng.normal(1.0, 1, size=20000), 10) > 0.25


def test_status_thresholds(params):
    assert [status(v, params) for v in (0.05, 0.2, 0.3)] == ["stable", "monitor", "alert"]


def test_feature_drift_flags_only_the_shifted_features(raw, params):
    valid, _, _ = validate_frame(raw, params)
    s = split_frame(valid, params)
    profile = reference_profile(s["train"], params)
    same = feature_drift(profile, s["train"], s["test"], params)
    assert (same.status == "stable").all() and same.psi.max() < 0.02
    shifted = s["test"].copy()
    shifted["BILL_AMT1"] *= 3
    shifted["SEX"] = "2"
    table = feature_drift(profile, s["train"], shifted, params)
    assert set(table.index[table.status == "alert"]) == {"BILL_AMT1", "SEX"}
    assert table.loc["BILL_AMT1", "ks_pvalue"] < 1e-6 and np.isnan(table.loc["SEX", "ks"])
