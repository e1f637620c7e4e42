"""The compiled drift pass (`grid_counts`) and the threaded `feature_drift` give what the straightforward numpy
does: counts equal to `featurize.bin_counts` and to brute force, the same table bit for bit on one thread or two, and
KS and chi-square figures equal to scipy's on ties, constant columns, missing values and unseen categories."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.drift import feature_drift, grid_counts, ks_test, numeric_test, score_bins
from pipeline.featurize import bin_counts, bin_shares, code_counts, quantile_edges, reference_profile, split_frame
from pipeline.validate import validate_frame


def grids(rng):
    "Grids the pass meets: few integer codes, many ties, heavy tails, a single point, infinite ends, none."
    yield np.unique(rng.integers(-2, 9, 40).astype(float))
    yield np.unique(rng.lognormal(8, 2, 5000).round(0))
    yield np.unique(np.r_[rng.normal(size=300), -rng.lognormal(10, 3, 50)])
    yield np.array([3.0])
    yield np.array([-np.inf, 0.0, 1.0, np.inf])
    yield np.array([0.0, np.nextafter(0.0, 1.0), 1e-300, 5e-324 * 3])
    yield np.array([])


@pytest.mark.parametrize("seed", range(4))
def test_grid_counts_equal_bin_counts_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    for g in grids(rng):
        g = np.unique(g)
        pool = np.r_[g[np.isfinite(g)], rng.normal(0, 10, 50).round(seed % 2), [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308]]
        x = rng.choice(pool, 20_000)
        edges = sorted(rng.choice(g, min(4, len(g)), replace=False).tolist()) if len(g) else []
        for grid in (g if len(g) else None, None):
            fast, ref = grid_counts(x, edges, grid), bin_counts(x, edges, grid)
            for a, b in zip(fast, ref):
                assert (a is None and b is None) or (a.dtype.kind == b.dtype.kind and np.array_equal(a, b))
        if len(g):
            _, le, lt = grid_counts(x, edges, g)
            assert le.tolist() == [(x <= v).sum() for v in g] and lt.tolist() == [(x < v).sum() for v in g]


def test_ks_equals_scipy_on_ties_and_missing_values():
    rng = np.random.default_rng(5)
    a = np.r_[rng.integers(0, 6, 3000).astype(float), [np.nan] * 30]
    b = np.r_[rng.integers(1, 8, 200_000).astype(float), [np.nan] * 999]
    d, p = ks_test(a, b)
    want = stats.ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)], method="asymp")
    assert d == pytest.approx(want.statistic, abs=1e-15) and p == pytest.approx(want.pvalue, rel=1e-12, abs=1e-300)


@pytest.fixture(scope="module")
def frames(raw, params):
    valid, _, _ = validate_frame(raw, params)
    train = split_frame(valid, params)["train"]
    batch = valid.sample(n=150_000, replace=True, random_state=1).reset_index(drop=True)
    batch["PAY_AMT6"] = 500.0  # a constant column
    batch.loc[batch.sample(frac=0.02, random_state=2).index, "BILL_AMT1"] = np.nan  # missing values
    batch.loc[batch.sample(frac=0.05, random_state=3).index, "EDUCATION"] = "9"  # a code the reference never saw
    batch.loc[batch.sample(frac=0.01, random_state=4).index, "MARRIAGE"] = None
    batch["AGE"] = batch["AGE"] + 7  # a shift
    return train, batch, reference_profile(train, params)


def reference_drift(profile, train, batch, params):
    "Per feature, the figures computed the straightforward way: bin_counts, scipy's KS and chi-square."
    out = {}
    for col, spec in profile.items():
        if spec["kind"] == "numeric":
            r, c = train[col].to_numpy(float), batch[col].to_numpy(float)
            shares = bin_shares(c, spec["edges"])
            ks = stats.ks_2samp(r[~np.isnan(r)], c[~np.isnan(c)], method="asymp")
            out[col] = (shares, ks.statistic, ks.pvalue)
        else:
            counts, ref = code_counts(batch[col], spec["codes"]), code_counts(train[col], spec["codes"])
            table = np.vstack([ref, counts])
            table = table[:, table.sum(axis=0) > 0]
            chi = stats.chi2_contingency(table, correction=False)
            out[col] = (counts / len(batch), chi.statistic, chi.pvalue)
    return out


def test_threaded_feature_drift_is_bit_identical_and_equals_the_reference(frames, params):
    train, batch, profile = frames
    one, two = (feature_drift(profile, train, batch, params, workers=w) for w in (1, 2))
    pd.testing.assert_frame_equal(one, two, check_exact=True)
    assert all(np.array_equal(one.attrs["shares"][k], two.attrs["shares"][k]) for k in profile)
    ref = reference_drift(profile, train, batch, params)
    for col, (shares, stat, p) in ref.items():
        assert np.array_equal(one.attrs["shares"][col], shares), col
        kind = profile[col]["kind"]
        got_stat, got_p = (one.loc[col, "ks"], one.loc[col, "ks_pvalue"]) if kind == "numeric" else \
            (one.loc[col, "chi2"], one.loc[col, "chi2_pvalue"])
        assert got_stat == pytest.approx(stat, rel=1e-12, abs=1e-15), col
        assert got_p == pytest.approx(p, rel=1e-12, abs=1e-300), col
    assert one.loc["EDUCATION", "off_reference_share"] == pytest.approx(0.05, abs=1e-3)
    assert one.loc["PAY_AMT6", "status"] != "stable" and one.loc["AGE", "status"] == "alert"


def test_score_bins_use_the_same_counts():
    rng = np.random.default_rng(9)
    ref, cur = rng.beta(1, 4, 5000), np.r_[rng.beta(1, 3, 300_000), [np.nan] * 3]
    b = score_bins(ref, cur, 10)
    assert np.array_equal(b["current"], bin_shares(cur, b["edges"]))
    assert np.array_equal(numeric_test(ref, cur, b["edges"])[0], bin_shares(cur, b["edges"]))
