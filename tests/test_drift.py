import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.batches import make_batches
from pipeline.core import target_vector
from pipeline.drift import (EPS, INSUFFICIENT, ONE_CLASS, alert_records, chi2_test, code_counts, drift_html, drift_report,
                            expected_auc, feature_drift, feature_records, js_distance, numeric_test, post_webhook, psi,
                            score_psi, send_alerts, status, write_strict_json)
from pipeline.featurize import (bin_counts, bin_shares, Featurizer, code_shares, quantile_edges, reference_profile,
                                split_frame)
from pipeline.train import fit_baseline
from pipeline.model import CalibratedMargin, ScoringModel
from pipeline.validate import validate_frame


@pytest.fixture(scope="module")
def world(raw, params):
    "The default data validated and split, the training reference profile, and a quickly fitted baseline model."
    valid, _, _ = validate_frame(raw, params)
    s = split_frame(valid, params)
    featurizer = Featurizer.from_params(params).fit(s["train"])
    base = fit_baseline(featurizer.transform(s["train"]), target_vector(s["train"], params), params)
    model = ScoringModel(featurizer, CalibratedMargin(base).fit(featurizer.transform(s["valid"]), target_vector(s["valid"], params)))
    return s, reference_profile(s["train"], params), model


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


@pytest.mark.parametrize("rounding", [None, 1, 0])
def test_one_pass_ks_and_bins_agree_with_scipy_and_featurize(rounding):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=3000), rng.normal(0.05, 1.1, size=20000)
    if rounding is not None: a, b = a.round(rounding), b.round(rounding)  # ties
    b[:50] = np.nan
    edges = quantile_edges(pd.Series(a), 10)
    shares, d, p = numeric_test(a, b, edges)
    ref = stats.ks_2samp(a, b[~np.isnan(b)], method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert np.allclose(shares, bin_shares(b, edges)) and shares[-1] == pytest.approx(50 / 20000)


def test_code_counts_chi_square_and_js_distance():
    rng = np.random.default_rng(4)
    ref = pd.Series(rng.choice([1, 2, 3], 5000, p=[0.5, 0.3, 0.2]))
    cur = pd.Series(rng.choice(["1", "2", "3", "9", None], 8000, p=[0.48, 0.3, 0.2, 0.01, 0.01]), dtype=object)
    codes = ["1", "2", "3"]
    assert np.allclose(code_counts(cur, codes) / len(cur), code_shares(cur, codes))
    assert np.allclose(code_counts(ref, codes), [(ref == k).sum() for k in (1, 2, 3)] + [0, 0])
    same = pd.Series(rng.choice(["1", "2", "3"], 8000, p=[0.5, 0.3, 0.2]))
    _, p_same = chi2_test(code_counts(ref, codes), code_counts(same, codes))
    _, p_new_codes = chi2_test(code_counts(ref, codes), code_counts(cur, codes))  # 1% unknown, 1% missing: new
    assert p_new_codes < 1e-6
    shifted = pd.Series(rng.choice(["1", "2", "3"], 8000, p=[0.3, 0.3, 0.4]))
    chi2, p_shift = chi2_test(code_counts(ref, codes), code_counts(shifted, codes))
    assert p_same > 1e-3 and p_shift < 1e-12 and chi2 > 100
    share = code_shares(ref, codes)
    assert js_distance(share, share) == 0.0 and 0.1 < js_distance(share, code_shares(shifted, codes)) < 1


def test_expected_auc_matches_pairs_and_realised_auc_when_calibrated():
    rng = np.random.default_rng(5)
    q = rng.random(150).round(1)  # ties
    w = q[:, None] * (1 - q[None, :])
    np.fill_diagonal(w, 0)
    right = (q[:, None] > q[None, :]) + 0.5 * (q[:, None] == q[None, :])
    assert expected_auc(q) == pytest.approx((w * right).sum() / w.sum(), rel=1e-12)
    p = rng.beta(1, 4, 40000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_auc(p) == pytest.approx(roc_auc_score(y, p), abs=0.01)


def test_feature_drift_flags_only_the_shifted_features(world, params):
    s, profile, _ = world
    same = feature_drift(profile, s["train"], s["test"], params)
    assert (same.status == "stable").all() and same.psi.max() < 0.02 and same.js_distance.max() < 0.05
    shifted = s["test"].copy()
    shifted["BILL_AMT1"] *= 3
    shifted["SEX"] = "2"
    table = feature_drift(profile, s["train"], shifted, params)
    assert set(table.index[table.status == "alert"]) == {"BILL_AMT1", "SEX"}
    assert table.loc["BILL_AMT1", "ks_pvalue"] < 1e-6 and np.isnan(table.loc["SEX", "ks"])
    assert table.loc["SEX", "chi2_pvalue"] < 1e-6 and np.isnan(table.loc["BILL_AMT1", "chi2"])
    assert same.loc["SEX", "chi2_pvalue"] > 1e-3


def test_sudden_alerts_on_shifted_features_only_and_none_raises_none(world, params):
    s, profile, model = world
    shifted = set(params["batches"]["shifts"])
    for scenario in ["none", "sudden"]:
        for month, batch in enumerate(make_batches(s["test"], scenario, params), start=1):
            table, summary = drift_report(profile, s["train"], batch, model, params, baseline=s["test"])
            alerts = alert_records(table, summary, params)
            on = {a["name"] for a in alerts if a["kind"] == "feature" and a["level"] == "alert"}
            if scenario == "sudden" and month >= params["batches"]["sudden_month"]:
                assert on == shifted, (month, on)
                assert summary["status"] == "alert" and summary["rows_quarantined"] < 0.05 * len(batch)
            else:
                assert [a for a in alerts if a["level"] == "alert"] == [], (scenario, month, alerts)
                assert summary["status"] in ("stable", "monitor")


def test_performance_drift_with_labels_and_estimate_without(world, params):
    s, profile, model = world
    target = params["data"]["target"]
    _, same = drift_report(profile, s["train"], s["test"], model, params, baseline=s["test"])
    assert same["auc_drop"] == 0 and same["performance_basis"] == "labels"
    assert same["current_auc"] == pytest.approx(same["reference_auc"]) and 0.6 < same["reference_auc"] < 0.85
    riskier = s["test"][s["test"]["PAY_0"] >= 1].drop(columns=[target])  # only customers already late; no labels
    _, est = drift_report(profile, s["train"], riskier, model, params, baseline=s["test"])
    assert "auc_drop" not in est and est["performance_basis"] == "estimated (CBPE)"
    assert est["current_expected_default_rate"] > est["reference_expected_default_rate"] + 0.2
    assert est["expected_auc_drop"] > params["drift"]["auc_drop_alert"] and est["performance_status"] == "alert"
    truth = s["test"][s["test"]["PAY_0"] >= 1]
    _, real = drift_report(profile, s["train"], truth, model, params, baseline=s["test"])
    assert real["auc_drop"] > params["drift"]["auc_drop_alert"]  # the labels confirm the estimated drop


def test_drift_html_is_self_contained_with_a_histogram_per_feature(world, params):
    s, profile, model = world
    batch = s["test"].assign(AGE=s["test"]["AGE"] + 10)
    table, summary = drift_report(profile, s["train"], batch, model, params, baseline=s["test"])
    page = drift_html(profile, table, summary, alert_records(table, summary, params))
    assert page.count("src='data:image/png;base64,") == len(profile) + 1 and "<script" not in page  # + the score
    assert "Drift report: alert" in page and "AGE: PSI" in page


class Hook(BaseHTTPRequestHandler):
    "Answers 500 to the first `fail` requests, then 200; records every body."
    fail, bodies = 1, []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        self.send_response(500 if len(type(self).bodies) <= type(self).fail else 200)
        self.end_headers()

    def log_message(self, *args): pass


@pytest.fixture
def hook_server():
    Hook.bodies = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()
    server.server_close()


def test_webhook_is_retried_until_delivered(hook_server, params, monkeypatch):
    server, url = hook_server
    Hook.fail = 2
    monkeypatch.setenv("RISKOPS_WEBHOOK_URL", url)
    p = {**params, "drift": {**params["drift"], "webhook": {**params["drift"]["webhook"], "backoff_s": 0.05}}}
    alerts = [{"level": "alert", "kind": "feature", "name": "AGE", "metric": "PSI", "value": 1.2, "threshold": 0.25}]
    start = time.monotonic()
    result = send_alerts(alerts + [{**alerts[0], "level": "monitor", "name": "SEX"}], {"status": "alert", "batch": "b"}, p)
    assert result == {"configured": True, "sent": True, "delivered": True, "attempts": 3, "http_status": 200}
    assert len(Hook.bodies) == 3 and Hook.bodies[-1]["alerts"] == alerts  # only alert level by default
    assert time.monotonic() - start >= 0.05 + 0.1  # backoff waited 0.05 s then 0.1 s
    assert send_alerts([], {"status": "stable"}, p) == {"configured": True, "sent": False}


def test_webhook_gives_up_within_its_time_budget_and_never_raises(hook_server):
    server, url = hook_server
    Hook.fail = 100
    start = time.monotonic()
    result = post_webhook(url, {"x": 1}, retries=10, backoff_s=0.2, timeout_s=1, max_total_s=1.0)
    assert not result["delivered"] and result["error"] == "HTTP 500" and 2 <= result["attempts"] <= 4
    assert time.monotonic() - start < 1.5
    dead = post_webhook("http://127.0.0.1:9/", {"x": 1}, retries=2, backoff_s=0.01, timeout_s=0.5, max_total_s=2)
    assert dead["delivered"] is False and dead["attempts"] == 3 and dead["error"]


def test_webhook_refuses_urls_that_are_not_http(tmp_path):
    "urlopen also reads file:// and ftp://: a webhook URL from params or the environment must be http(s)."
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    for url in (secret.as_uri(), "ftp://127.0.0.1/x", "gopher://127.0.0.1/"):
        result = post_webhook(url, {"x": 1}, retries=0)
        assert result == {"delivered": False, "attempts": 0, "error": "webhook URL scheme must be http or https"}


def test_a_batch_without_valid_rows_is_refused_naming_the_rule(world, params):
    s, profile, model = world
    with pytest.raises(ValueError, match="no valid rows in the batch: .*AGE: missing column"):
        drift_report(profile, s["train"], s["test"].drop(columns=["AGE"]), model, params)


def test_webhook_does_not_retry_a_client_error(hook_server):
    server, url = hook_server
    Hook.fail = 100
    orig = Hook.do_POST

    def client_error(self):
        type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(400)
        self.end_headers()
    Hook.do_POST = client_error
    try:
        result = post_webhook(url, {"x": 1}, retries=3, backoff_s=0.01)
    finally:
        Hook.do_POST = orig
    assert result == {"delivered": False, "attempts": 1, "error": "HTTP 400"} and len(Hook.bodies) == 1


# --- figures that hold at the edges (issue 15 section 2; field cases in ../shared/field-cases) ---

FIELD = Path(__file__).resolve().parents[2] / "shared/field-cases"


def field_case(name: str) -> pd.DataFrame:
    return pd.read_parquet(FIELD / f"{name}.parquet")


def no_nan_json(path: Path):
    "The file parsed as strict JSON: NaN or Infinity fail."
    def refuse(token): raise AssertionError(f"{path}: {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_edges_give_frequent_values_and_values_outside_the_reference_bins_of_their_own():
    ref = pd.Series([-2, -1, -1, 0, 0, 0, 0, 1, 2, 2, 8] * 10, dtype=float)
    edges = quantile_edges(ref, 4)
    shares = bin_shares(ref, edges)
    moved = bin_shares(ref.replace(2.0, 8.0), edges)
    assert psi(shares, moved) > 0.25  # 2 -> 8 leaves the bin of 2: with merged quantile edges both were one bin
    assert bin_shares(np.array([9.0]), edges)[-2] == 1 and shares[-2] == 0  # above the reference's maximum: own bin
    assert bin_shares(np.array([-3.0]), edges)[0] == 1 and shares[0] == 0   # below its minimum: own bin
    assert bin_shares(np.array([-0.5]), edges)[shares == 0].sum() == 1  # between two frequent values: a bin the reference left empty
    constant = quantile_edges(pd.Series([3.0] * 50), 10)
    assert bin_shares(np.full(5, 3.0), constant)[1] == 1 and bin_shares(np.array([3.5]), constant)[1] == 0
    rng = np.random.default_rng(7)
    cont = rng.normal(size=20_000)  # continuous: quantile bins of about equal shares, as before
    inner = bin_shares(cont, quantile_edges(pd.Series(cont), 10))[1:-2]
    assert len(inner) == 10 and np.allclose(inner, 0.1, atol=0.002)


@pytest.mark.parametrize("grid", [False, True])
def test_bin_counts_agree_with_brute_force(grid):
    rng = np.random.default_rng(8)
    ref = rng.choice([-2.0, -1.0, 0.0, 1.0, 2.5, 7.0], 3000, p=[0.1, 0.2, 0.4, 0.15, 0.1, 0.05])
    cur = np.append(rng.normal(0, 3, 5000).round(0), [np.nan] * 7)
    edges = quantile_edges(pd.Series(ref), 10)
    g = np.union1d(ref, edges) if grid else None
    counts, le, lt = bin_counts(cur, edges, g)
    bounds = [-np.inf, *edges, np.inf]
    brute = [((cur >= a) & (cur < b)).sum() for a, b in zip(bounds, bounds[1:])] + [np.isnan(cur).sum()]
    assert counts.tolist() == brute and counts.sum() == len(cur)
    if grid:
        assert le.tolist() == [(cur <= x).sum() for x in g] and lt.tolist() == [(cur < x).sum() for x in g]
    else: assert le is None and lt is None
    assert np.allclose(numeric_test(ref, cur, edges)[0], bin_shares(cur, edges))  # batch and reference: one binning


def test_psi_is_the_symmetrised_kl_divergence_of_scipy():
    rng = np.random.default_rng(9)
    ref, cur = rng.normal(size=8000), rng.normal(0.3, 1.2, size=6000)
    edges = quantile_edges(pd.Series(ref), 10)
    r, c = bin_shares(ref, edges), bin_shares(cur, edges)
    rc, cc = np.clip(r, EPS, None), np.clip(c, EPS, None)
    assert psi(r, c) == pytest.approx(stats.entropy(cc, rc) * cc.sum() + stats.entropy(rc, cc) * rc.sum()
                                      + (cc.sum() - rc.sum()) * np.log(cc.sum() / rc.sum()), rel=1e-9)
    assert psi(r, c) > 0.1 and psi(r, bin_shares(rng.normal(size=6000), edges)) < 0.02


def test_chi_square_agrees_with_scipy_on_the_raw_crosstab():
    rng = np.random.default_rng(10)
    ref = rng.choice(["a", "b", "c"], 4000, p=[0.5, 0.3, 0.2])
    cur = rng.choice(["a", "b", "c", "d"], 3000, p=[0.45, 0.3, 0.2, 0.05])
    long = pd.DataFrame({"batch": ["ref"] * len(ref) + ["cur"] * len(cur), "code": np.append(ref, cur)})
    expected = stats.chi2_contingency(pd.crosstab(long.batch, long.code), correction=False)
    chi2, p = chi2_test(code_counts(pd.Series(ref), ["a", "b", "c"]), code_counts(pd.Series(cur), ["a", "b", "c"]))
    assert chi2 == pytest.approx(expected.statistic, rel=1e-9) and p == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    assert p < 1e-10  # the new code "d" (5% of the batch) is seen


def test_tiny_batch_is_insufficient_data_not_alerts(world, params):
    s, profile, model = world
    tiny = field_case("drift_tiny8")
    table, summary = drift_report(profile, s["train"], tiny, model, params, baseline=s["test"])
    assert summary["status"] == INSUFFICIENT and summary["rows"] == 8 and "drift.min_rows" in summary["status_reason"]
    assert (table.status == INSUFFICIENT).all() and summary["score_status"] == summary["performance_status"] == INSUFFICIENT
    assert alert_records(table, summary, params) == [] and summary["features_alert"] == 0
    no_floor = {**params, "drift": {**params["drift"], "min_rows": 0}}
    noisy, _ = drift_report(profile, s["train"], tiny, model, no_floor, baseline=s["test"])
    assert (noisy.status == "alert").sum() > 10  # what the floor prevents: PSI of 8 rows is noise
    assert noisy.ks_pvalue.min() > 0.01  # ... while KS, which knows the sample size, sees no shift
    enough = s["test"].head(params["drift"]["min_rows"])
    _, ok = drift_report(profile, s["train"], enough, model, params, baseline=s["test"])
    assert ok["status"] != INSUFFICIENT


def test_pay0_moved_from_2_to_8_is_not_stable(world, params):
    s, profile, model = world
    batch = field_case("drift_pay0_to_8")
    table, summary = drift_report(profile, s["train"], batch, model, params, baseline=s["test"])
    assert table.loc["PAY_0", "status"] == "alert" and table.loc["PAY_0", "psi"] > params["drift"]["psi_alert"]
    ks = stats.ks_2samp(s["train"]["PAY_0"].to_numpy(float), batch["PAY_0"].to_numpy(float), method="asymp")
    assert table.loc["PAY_0", "ks"] == pytest.approx(ks.statistic, abs=1e-12) and ks.pvalue < 1e-10
    assert table.loc["PAY_0", "ks_pvalue"] == pytest.approx(ks.pvalue, rel=1e-6)
    assert summary["status"] == "alert" and summary["features_alert"] >= 1
    flagged = set(table.index[table.status != "stable"])
    assert flagged == {"PAY_0"}, flagged  # the other features of the batch are unshifted held-out rows
    assert "PAY_0" in {a["name"] for a in alert_records(table, summary, params) if a["level"] == "alert"}


@pytest.fixture(scope="module")
def constant(world, params):
    "A reference where the numeric PAY_AMT6 and the categorical EDUCATION each hold one value, and its profile."
    s, _, _ = world
    train = s["train"].assign(PAY_AMT6=0.0, EDUCATION="2")
    return train, s["test"].assign(PAY_AMT6=0.0, EDUCATION="2"), reference_profile(train, params)


@pytest.mark.parametrize("column,value", [("PAY_AMT6", 500.0), ("EDUCATION", "3")])
def test_a_constant_reference_is_never_stable_once_rows_moved(constant, params, column, value):
    train, batch, profile = constant
    assert (np.asarray(profile[column]["shares"])[:-1] > 0).sum() == 1
    same = feature_drift(profile, train, batch, params)
    assert same.loc[column, "status"] == "stable" and same.loc[column, "off_reference_share"] == 0
    one = batch.copy()
    one.loc[one.index[0], column] = value
    table = feature_drift(profile, train, one, params)
    assert table.loc[column, "psi"] < params["drift"]["psi_monitor"]  # PSI alone would call one moved row stable ...
    assert table.loc[column, "status"] == "monitor" and table.loc[column, "status_basis"] != "PSI"  # ... the rule does not
    assert table.loc[column, "off_reference_share"] == pytest.approx(1 / len(one))
    rec = [a for a in alert_records(table, {"score_status": "stable", "performance_status": "stable", "batch_bad_share": 0}, params)
           if a["name"] == column]
    assert rec and rec[0]["level"] == "monitor" and rec[0]["value"] == pytest.approx(1 / len(one), abs=1e-6)
    moved = batch.assign(**{column: value})  # every row off the reference's value
    table = feature_drift(profile, train, moved, params)
    assert table.loc[column, "status"] == "alert" and table.loc[column, "psi"] > 1
    if column == "PAY_AMT6":
        ks = stats.ks_2samp(train[column], moved[column], method="asymp")
        assert table.loc[column, "ks"] == pytest.approx(ks.statistic) == 1.0
    else:
        assert table.loc[column, "chi2_pvalue"] < 1e-10


def test_one_class_labels_are_not_measurable_and_the_estimate_decides(world, params, tmp_path):
    s, profile, model = world
    batch = field_case("drift_single_class")
    assert batch[params["data"]["target"]].nunique() == 1
    table, summary = drift_report(profile, s["train"], batch, model, params, baseline=s["test"])
    assert summary["realised_performance"] == ONE_CLASS and summary["current_auc"] is None and summary["auc_drop"] is None
    assert summary["auc_drop_reason"] == summary["current_auc_reason"] == ONE_CLASS
    assert summary["performance_basis"] == "estimated (CBPE)"
    d, drop = params["drift"], summary["expected_auc_drop"]
    assert np.isfinite(drop)
    expected = "alert" if drop > d["auc_drop_alert"] else "monitor" if drop > d["auc_drop_monitor"] else "stable"
    assert summary["performance_status"] == expected
    perf = [a for a in alert_records(table, summary, params) if a["kind"] == "performance"]
    assert (perf[0]["metric"] == "expected_auc_drop") if expected != "stable" else perf == []
    path = write_strict_json(summary | {"features": feature_records(table)}, tmp_path / "drift.json")
    back = no_nan_json(path)
    assert back["current_auc"] is None and back["current_auc_reason"] == ONE_CLASS and back["current_ks"] is None
    assert back["features"]["SEX"]["ks"] is None and "numeric" in back["features"]["SEX"]["ks_reason"]
    assert back["features"]["AGE"]["chi2"] is None and back["features"]["AGE"]["ks"] == pytest.approx(table.loc["AGE", "ks"], abs=1e-6)


def test_strict_json_turns_every_nan_into_null_with_a_reason(tmp_path):
    path = write_strict_json({"a": np.nan, "b": np.float32("inf"), "c": None, "c_reason": "given", "d": [1.0, np.nan],
                              "e": {"f": np.float64(np.nan)}, "g": np.int64(3)}, tmp_path / "x.json")
    back = no_nan_json(path)
    assert back == {"a": None, "a_reason": "not a finite number", "b": None, "b_reason": "not a finite number", "c": None,
                    "c_reason": "given", "d": [1.0, None], "e": {"f": None, "f_reason": "not a finite number"}, "g": 3}
    assert "NaN" not in path.read_text()


# --- Monitoring what was served: the batch from the audit trail ----------------------------------------------------

def write_audit(url, spool, rows: pd.DataFrame, version: str, scored_at: str, request_id: str, scores=None, decisions=None):
    "Audit `rows` as one /score_batch request through the real AuditTrail (spool, then database)."
    from pipeline.audit import AuditTrail, audit_records
    n = len(rows)
    scores = np.full(n, 0.2) if scores is None else scores
    decisions = ["approve"] * n if decisions is None else decisions
    answers = [{"risk_score": float(s), "decision": d, "model_version": version, "scored_at": scored_at}
               for s, d in zip(scores, decisions)]
    trail = AuditTrail(url, spool, flush_interval_s=0.02)
    trail.write(audit_records("/score_batch", request_id, rows.to_dict("records"), answers, 1.0))
    assert trail.close()


@pytest.fixture(scope="module")
def served(world, params, tmp_path_factory):
    "An audit database: 1,000 recent applicants of version 1 with AGE shifted, 1,000 unshifted of version 2, 500 old ones."
    s, profile, model = world
    tmp = tmp_path_factory.mktemp("served")
    url = f"sqlite:///{tmp / 'audit.db'}"
    rows = s["test"].drop(columns=params["data"]["target"])
    now = pd.Timestamp.now(tz="UTC")
    shifted = rows.iloc[:1000].assign(AGE=rows.AGE.iloc[:1000] + 15)
    write_audit(url, tmp / "spool", shifted, "1", (now - pd.Timedelta(days=3)).isoformat(timespec="milliseconds"), "shifted")
    write_audit(url, tmp / "spool", rows.iloc[1000:2000], "2", (now - pd.Timedelta(days=2)).isoformat(timespec="milliseconds"), "plain")
    old = rows.iloc[2000:2500].assign(LIMIT_BAL=rows.LIMIT_BAL.iloc[2000:2500] * 10)
    write_audit(url, tmp / "spool", old, "1", (now - pd.Timedelta(days=60)).isoformat(timespec="milliseconds"), "old")
    return url


def test_drift_over_the_audit_window_alerts_on_the_shifted_feature_only(world, params, served):
    from pipeline.drift import audited_batch
    s, profile, model = world
    batch, rows = audited_batch(served, params, since="30d", version="1")
    assert len(batch) == 1000 and set(rows.model_version) == {"1"}  # the 60-day-old rows are outside the window
    table, summary = drift_report(profile, s["train"], batch, model, params, baseline=s["test"])
    assert table.index[table.status == "alert"].tolist() == ["AGE"], table[["psi", "status"]]
    assert (table.drop(index="AGE").status == "stable").all()
    plain, _ = audited_batch(served, params, since="30d", version="2")
    table2, _ = drift_report(profile, s["train"], plain, model, params, baseline=s["test"])
    assert not (table2.status == "alert").any()
    everything, _ = audited_batch(served, params)  # no window, no version: every audited applicant
    assert len(everything) == 2500


def test_drift_command_refuses_an_empty_window_or_a_bad_one_in_one_line(served, capsys):
    from pipeline.drift import main
    assert main(["--since", "30d", "--version", "7", "--db", served]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drift: no audited /score or /score_batch records since") and "of version 7" in err and "\n" not in err
    assert main(["--since", "thirty days", "--db", served]) == 2
    assert "expected a number of hours, days or weeks" in capsys.readouterr().err


def test_the_drift_page_opens_with_the_verdict_then_wide_histograms_then_the_table(world, params, served, tmp_path):
    import base64, io, re
    from PIL import Image
    from pipeline.drift import audited_batch
    from tests.conftest import plot_coloured, screenshot
    s, profile, model = world
    batch, _ = audited_batch(served, params, since="30d", version="1")
    table, summary = drift_report(profile, s["train"], batch, model, params, baseline=s["test"])
    alerts = alert_records(table, summary, params)
    html = drift_html(profile, table, summary | {"batch": "audit_30d_v1"}, alerts)
    verdict, first_img, features = html.index("class='verdict'"), html.index("<img"), html.index(">Features<")
    assert verdict < first_img < features
    card = html[verdict:first_img]
    assert "alert" in card and "AGE: PSI" in card and "What to do:" in card
    pngs = [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r"base64,([^']+)'", html)]
    assert len(pngs) == 1 + len(profile) and all(p.size[0] >= 600 for p in pngs), [p.size for p in pngs[:3]]
    page = tmp_path / "drift.html"
    page.write_text(html)
    shot = screenshot(page, tmp_path, size=(1280, 2400))
    assert plot_coloured(shot[: 2400]) > 20_000  # the verdict card and the first histograms are drawn above the fold
