import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline

from pipeline.batches import make_batches
from pipeline.core import target_vector
from pipeline.drift import (alert_records, chi2_test, code_counts, drift_html, drift_report, expected_auc, feature_drift,
                            js_distance, numeric_test, post_webhook, psi, score_psi, send_alerts, status)
from pipeline.featurize import bin_shares, Featurizer, code_shares, quantile_edges, reference_profile, split_frame
from pipeline.train import fit_baseline
from pipeline.validate import validate_frame


@pytest.fixture(scope="module")
def world(raw, params):
    "The default data validated and split, the training reference profile, and a quickly fitted baseline model."
    valid, _, _ = validate_frame(raw, params)
    s = split_frame(valid, params)
    featurizer = Featurizer.from_params(params).fit(s["train"])
    model = make_pipeline(featurizer, fit_baseline(featurizer.transform(s["train"]), target_vector(s["train"], params), params))
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
