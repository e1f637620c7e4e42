"""The scoring logic (pipeline/service.py) and the BentoML service (bentos/service.py) served for real on 127.0.0.1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline.core import target_vector
from pipeline.evaluate import grade_edges, threshold_for
from pipeline.featurize import Featurizer, split_frame
from pipeline.validate import read_input, validate_frame
from pipeline.service import (AuditWriter, Scorer, applicant_model, check_sample, invalid_rows, load_scorer,
                              records_frame)
from pipeline.train import train_models
from tests.conftest import ROOT, deep_merge

TOKEN = "test-token-123"


_TRAINED: dict = {}  # test_score imports the fixture too: train once per session


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, small_params, root):
    "A small trained scoring pipeline with its decision rules, saved as files; and a few test applicants."
    if not _TRAINED: _TRAINED.update(_train_small_model(tmp_path_factory, small_params, root))
    return _TRAINED


def _train_small_model(tmp_path_factory, small_params, root) -> dict:
    params = {**small_params, "data": {**small_params["data"], "path": str(root / small_params["data"]["path"])}}
    splits = split_frame(validate_frame(read_input(params), params)[0], params)
    featurizer = Featurizer.from_params(small_params).fit(splits["train"])
    quick = deep_merge(small_params, {"train": {"n_trials": 2, "ensemble_top_k": 2, "max_rounds": 120}})
    model = train_models(splits, featurizer, quick, progress=False)["models"]["xgboost"]
    pv = model.predict_proba(splits["valid"])[:, 1]
    decision = {"threshold": threshold_for(target_vector(splits["valid"], small_params), pv, small_params["evaluate"]),
                "grade_edges": grade_edges(pv, small_params["evaluate"]["grades"]),
                "score_scale": small_params["evaluate"]["score_scale"]}
    d = tmp_path_factory.mktemp("model")
    joblib.dump(model, d / "model.joblib")
    (d / "decision.json").write_text(json.dumps(decision))
    (d / "meta.json").write_text(json.dumps({"registered_model": "riskops-test", "version": "7"}))
    test = splits["test"].drop(columns=small_params["data"]["target"])
    return {"dir": d, "model": model, "decision": decision, "test": test}


def _records(df):
    return json.loads(df.to_json(orient="records"))


# ---- the scoring logic, in process ----

def test_fast_path_matches_the_pipeline(small_model, small_params):
    rows = small_model["test"].head(200)
    exact = deep_merge(small_params, {"serve": {"contributions": "exact"}})
    fast, why = load_scorer(small_model["dir"] / "model.joblib", small_model["decision"], exact, {}, check_sample(exact))
    assert why is None and fast.fast and fast.paths is None
    slow = Scorer(small_model["model"], small_model["decision"], exact)
    assert not slow.fast
    a, b = fast.score(rows), slow.score(rows)
    assert np.allclose([x["risk_score"] for x in a], small_model["model"].predict_proba(rows)[:, 1], atol=1e-6)
    assert [x["risk_score"] for x in a] == pytest.approx([x["risk_score"] for x in b], abs=1e-6)
    assert [x["risk_grade"] for x in a] == [x["risk_grade"] for x in b]
    assert [[r["feature"] for r in x["reason_codes"]] for x in a] == [[r["feature"] for r in x["reason_codes"]] for x in b]
    assert all(len(x["reason_codes"]) <= small_params["serve"]["reason_codes"] for x in a)
    # records (what the service passes) and frames give the same answers
    recs = [applicant_model(small_params)(**r).model_dump() for r in _records(rows.head(20))]
    assert [x["risk_score"] for x in fast.score(recs)] == pytest.approx([x["risk_score"] for x in a[:20]])


def test_approx_reason_codes_are_xgboosts_approximate_contributions(small_model, small_params):
    rows = small_model["test"].head(300)
    approx = deep_merge(small_params, {"serve": {"contributions": "approx"}})
    scorer, _ = load_scorer(small_model["dir"] / "model.joblib", small_model["decision"], approx, {}, check_sample(approx))
    assert scorer.fast and scorer.paths is not None
    p, contribs, X, _ = scorer.contributions(rows)
    np.testing.assert_allclose(contribs, scorer.estimator.contributions(X, approx=True)[:, :-1], atol=1e-5)
    assert p == pytest.approx(small_model["model"].predict_proba(rows)[:, 1], abs=1e-5)
    # /explain stays exact SHAP, whatever serve.contributions says
    shap = scorer.estimator.contributions(X[:3])[:, :-1]
    for e, row in zip(scorer.explain(rows.head(3)), shap):
        assert list(e["contributions"].values()) == pytest.approx(row.tolist(), abs=1e-5)
    assert not np.allclose(contribs[:3], shap, atol=1e-3)
    with pytest.raises(ValueError, match="serve.contributions"):
        Scorer(small_model["model"], small_model["decision"], deep_merge(small_params, {"serve": {"contributions": "fast"}}))


def test_request_model_applies_the_validate_rules(small_params, raw):
    Applicant = applicant_model(small_params)
    row = _records(raw.drop(columns=small_params["data"]["target"]).head(1))[0]
    assert Applicant(**row).model_dump()["SEX"] == str(row["SEX"])
    assert Applicant(**{**row, "SEX": f"{row['SEX']}.0"}).model_dump()["SEX"] == str(row["SEX"])  # same code as validate
    bad = {**row, "AGE": 12, "EDUCATION": 9, "PAY_0": None, "colour": "red"}
    with pytest.raises(Exception) as e:
        Applicant(**bad)
    fields = {err["loc"][0] for err in e.value.errors()}
    assert fields == {"AGE", "EDUCATION", "PAY_0", "colour"}
    # the validate stage rejects the same row for the same columns
    rules = invalid_rows([{k: v for k, v in bad.items() if k != "colour"}], small_params)[0]["rule"]
    assert all(c in rules for c in ("AGE", "EDUCATION", "PAY_0"))
    assert invalid_rows([row, row], small_params) == []  # duplicates are fine when scoring


def test_fallback_or_refusal_when_the_model_is_corrupt(small_params, small_model, tmp_path):
    corrupt = tmp_path / "model.joblib"
    corrupt.write_bytes(b"not a pickle")
    scorer, why = load_scorer(corrupt, small_model["decision"], small_params)
    assert why and scorer.method == "fallback"
    answers = scorer.score(small_model["test"].head(3))
    assert {a["method"] for a in answers} == {"fallback"} and all(0 < a["risk_score"] < 1 for a in answers)
    h = small_params["serve"]["heuristic"]
    row = small_model["test"].iloc[0]
    margin = h["intercept"] + sum(w * row[c] for c, w in h["weights"].items())
    assert answers[0]["risk_score"] == pytest.approx(1 / (1 + np.exp(-margin)))
    strict = deep_merge(small_params, {"serve": {"fallback": "none"}})
    with pytest.raises(Exception):
        load_scorer(corrupt, small_model["decision"], strict)
    with pytest.raises(FileNotFoundError):
        load_scorer(tmp_path / "missing.joblib", small_model["decision"], strict)


def test_audit_writer_batches_and_flushes_on_close(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    w = AuditWriter(url, batch_size=50, flush_interval_s=5)
    for i in range(1234):
        w.write({"request_id": f"r{i}", "endpoint": "score", "scored_at": "", "inputs_hash": "h", "n_rows": 1,
                 "outputs": "[]", "model_name": "m", "model_version": "1", "method": "model", "latency_ms": 1.0})
    w.close()
    with sa.create_engine(url).connect() as c:
        ids = [r[0] for r in c.execute(sa.text("select request_id from score_audit"))]
    assert len(ids) == 1234 and len(set(ids)) == 1234


# ---- the BentoML service, served for real ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    "`bentoml serve` in its own process group on 127.0.0.1, stopped by signalling the group."
    def __init__(self, home: Path, params_path: Path, audit: Path, token: str | None = TOKEN):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
               "RISKOPS_PARAMS": str(params_path), "RISK_AUDIT_DB_URL": f"sqlite:///{audit}"}
        env.pop("RISK_API_TOKEN", None)
        if token: env["RISK_API_TOKEN"] = token
        self.log = open(home / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "bentos.service:RiskService",
                                      "--host", "127.0.0.1", "--port", str(self.port)], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, path="/livez", timeout=120) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None: return False
            try:
                if requests.get(self.url + path, timeout=2).status_code == 200: return True
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not up in {timeout}s: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _home(tmp_path_factory, small_model, params_path, corrupt=False) -> Path:
    home = tmp_path_factory.mktemp("bentoml")
    d = small_model["dir"]
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    subprocess.run([sys.executable, "-m", "pipeline.service", "--params", str(params_path), "--model", str(d / "model.joblib"),
                    "--decision", str(d / "decision.json"), "--meta", str(d / "meta.json")], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    if corrupt:
        for f in home.glob("models/*/*/model.joblib"): f.write_bytes(b"corrupt")
    return home


def _params_file(tmp_path_factory, small_params, **serve) -> Path:
    p = tmp_path_factory.mktemp("params") / "params.yaml"
    p.write_text(yaml.safe_dump(deep_merge(small_params, {"serve": {"max_list": 5, **serve}})))
    return p


@pytest.fixture(scope="session")
def server(tmp_path_factory, small_model, small_params):
    params_path = _params_file(tmp_path_factory, small_params)
    home = _home(tmp_path_factory, small_model, params_path)
    srv = Server(home, params_path, home / "audit.sqlite")
    assert srv.wait("/readyz"), Path(srv.log.name).read_text()[-3000:]
    yield srv
    srv.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_score_answers_like_the_model_in_process(server, small_model, small_params):
    rows = small_model["test"].head(3)
    r = requests.post(server.url + "/score", json={"applicants": _records(rows), "request_id": "req-1"}, headers=AUTH)
    assert r.status_code == 200, r.text
    answers = r.json()
    assert len(answers) == 3
    assert [a["risk_score"] for a in answers] == pytest.approx(small_model["model"].predict_proba(rows)[:, 1], abs=1e-6)
    for a in answers:
        assert a["method"] == "model" and a["model_version"] == "7" and a["model_name"] == "riskops-test"
        assert a["request_id"] == "req-1" and a["threshold"] == pytest.approx(small_model["decision"]["threshold"])
        assert a["decision"] == ("decline" if a["risk_score"] >= a["threshold"] else "approve")
        assert 1 <= a["risk_grade"] <= small_params["evaluate"]["grades"]
        assert 0 < len(a["reason_codes"]) <= small_params["serve"]["reason_codes"]


def test_auth_required_on_scoring_only(server, small_model):
    body = {"applicants": _records(small_model["test"].head(1))}
    assert requests.post(server.url + "/score", json=body).status_code == 401
    assert requests.post(server.url + "/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.post(server.url + "/explain", json={"applicant": body["applicants"][0]}).status_code == 401
    for path in ("/livez", "/readyz", "/metrics"):
        assert requests.get(server.url + path).status_code == 200, path


def test_invalid_requests_get_400_naming_the_fields(server, small_model):
    good = _records(small_model["test"].head(1))[0]
    cases = [({"applicants": [{**good, "AGE": 7, "SEX": "x"}]}, {"AGE", "SEX"}),
             ({"applicants": [{k: v for k, v in good.items() if k != "PAY_0"}]}, {"PAY_0"}),
             ({"applicants": [{**good, "LIMIT_BAL": "lots"}]}, {"LIMIT_BAL"}),
             ({"applicants": [{**good, "extra": 1}]}, {"extra"}),
             ({"applicants": [good] * 6}, {"applicants"}),   # over serve.max_list
             ({"applicants": []}, {"applicants"})]
    for body, fields in cases:
        r = requests.post(server.url + "/score", json=body, headers=AUTH)
        assert r.status_code == 400, (body, r.text)
        named = {str(x) for d in r.json()["detail"] for x in d["loc"]}
        assert fields <= named, (fields, r.json())
    r = requests.post(server.url + "/score", data=b"applicants=1", headers={**AUTH, "content-type": "multipart/form-data"})
    assert r.status_code == 415 and "content-type" in r.text
    assert requests.post(server.url + "/score_batch", json={"applicants": []}, headers=AUTH).status_code == 400
    for raw in (b"not json", b"[]", b'{"applicants": null}', b'{"applicants": [1, 2]}'):
        r = requests.post(server.url + "/score", data=raw, headers={**AUTH, "content-type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code)


def test_score_batch_under_concurrency_and_explain(server, small_model, small_params):
    rows = _records(small_model["test"].head(24))
    single = requests.post(server.url + "/score", json={"applicants": rows[:5]}, headers=AUTH).json()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: requests.post(server.url + "/score_batch", json={"applicants": [r]},
                                                        headers=AUTH), rows))
    assert all(a.status_code == 200 for a in answers)
    batch = [a.json()[0] for a in answers]
    assert len({b["request_id"] for b in batch}) == len(batch)  # one request id per caller, even when batched
    assert [b["risk_score"] for b in batch[:5]] == pytest.approx([s["risk_score"] for s in single])
    r = requests.post(server.url + "/explain", json={"applicant": rows[0]}, headers=AUTH)
    assert r.status_code == 200, r.text
    e = r.json()
    local, _ = load_scorer(small_model["dir"] / "model.joblib", small_model["decision"], small_params, {},
                           check_sample(small_params))  # the server's settings: reason codes and explanations as there
    record = [applicant_model(small_params)(**rows[0]).model_dump()]
    assert [c["feature"] for c in single[0]["reason_codes"]] == [c["feature"] for c in local.score(record)[0]["reason_codes"]]
    assert e["contributions"] == pytest.approx(local.explain(record)[0]["contributions"], abs=1e-6)
    assert e["risk_score"] == pytest.approx(single[0]["risk_score"])


def test_metrics_count_scores_by_grade_and_method(server, small_model):
    requests.post(server.url + "/score", json={"applicants": _records(small_model["test"].head(2))}, headers=AUTH)
    text = requests.get(server.url + "/metrics").text
    assert 'riskops_scores_total{' in text and 'method="model"' in text and "riskops_risk_score_bucket" in text


def test_audit_rows_survive_a_clean_shutdown(tmp_path_factory, small_model, small_params):
    params_path = _params_file(tmp_path_factory, small_params)
    home = _home(tmp_path_factory, small_model, params_path)
    audit = home / "audit.sqlite"
    srv = Server(home, params_path, audit, token=None)
    try:
        assert srv.wait("/readyz")
        rows = _records(small_model["test"].head(4))
        ids = []
        for i in range(30):
            r = requests.post(srv.url + "/score", json={"applicants": rows[: 1 + i % 4], "request_id": f"a{i}"})
            assert r.status_code == 200
            ids.append(f"a{i}")
    finally:
        srv.stop()
    with sa.create_engine(f"sqlite:///{audit}").connect() as c:
        got = c.execute(sa.text("select request_id, n_rows, model_version, method, latency_ms from score_audit")).fetchall()
    assert sorted(g[0] for g in got) == sorted(ids)
    assert sum(g[1] for g in got) == sum(1 + i % 4 for i in range(30))
    assert all(g[2] == "7" and g[3] == "model" and g[4] > 0 for g in got)


def test_corrupt_model_fallback_not_ready_or_refuses(tmp_path_factory, small_model, small_params):
    params_path = _params_file(tmp_path_factory, small_params, fallback="heuristic")
    home = _home(tmp_path_factory, small_model, params_path, corrupt=True)
    for store in (home, tmp_path_factory.mktemp("empty-store")):  # a corrupt model, then no model at all
        srv = Server(store, params_path, home / "audit.sqlite", token=None)
        try:
            assert srv.wait("/livez")
            assert requests.get(srv.url + "/readyz").status_code == 503
            r = requests.post(srv.url + "/score", json={"applicants": _records(small_model["test"].head(2))})
            assert r.status_code == 200 and {a["method"] for a in r.json()} == {"fallback"}
            assert {a["model_version"] for a in r.json()} == {"heuristic"}
        finally:
            srv.stop()
    strict = _params_file(tmp_path_factory, small_params, fallback="none")
    srv = Server(_home(tmp_path_factory, small_model, strict, corrupt=True), strict, home / "audit2.sqlite", token=None)
    try:  # the worker's start-up fails and the service never becomes ready
        end = time.time() + 90
        while time.time() < end and "startup failed" not in Path(srv.log.name).read_text():
            time.sleep(0.5)
        assert "startup failed" in Path(srv.log.name).read_text()
        try: status = requests.get(srv.url + "/readyz", timeout=5).status_code
        except requests.RequestException: status = None
        assert status != 200
    finally:
        srv.stop()


def test_bento_builds_offline_and_is_listed(tmp_path_factory, small_model, small_params):
    params_path = _params_file(tmp_path_factory, small_params)
    home = _home(tmp_path_factory, small_model, params_path)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    built = subprocess.run([bentoml, "build", "-f", "bentos/bentofile.yaml", "."], cwd=ROOT, env=env, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    listed = subprocess.run([bentoml, "list", "-o", "json"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    bentos = json.loads(listed.stdout)
    assert [b["tag"].split(":")[0] for b in bentos] == ["riskops"]
    src = next(home.glob("bentos/riskops/*/src"))
    assert (src / "bentos/service.py").exists() and (src / "pipeline/service.py").exists() and (src / "params.yaml").exists()


def test_schemathesis_finds_no_server_error(server, tmp_path):
    "Property-based requests generated from the service's OpenAPI schema (bounded): no answer is a 5xx."
    st = str(Path(sys.executable).parent / "st")
    r = subprocess.run([st, "run", server.url + "/docs.json", "--checks", "not_a_server_error", "--max-examples", "15",
                        "--generation-deterministic", "--request-timeout", "30", "--header", f"Authorization: Bearer {TOKEN}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)  # st writes .schemathesis/ there
    assert r.returncode == 0, r.stdout[-4000:]
    assert " passed" in r.stdout and "generated" in r.stdout


def test_sync_http_client_as_in_the_readme(server, small_model):
    import bentoml
    rows = _records(small_model["test"].head(2))
    with bentoml.SyncHTTPClient(server.url, token=TOKEN) as client:
        answers = client.score(applicants=rows)
    assert [a["risk_score"] for a in answers] == pytest.approx(small_model["model"].predict_proba(small_model["test"].head(2))[:, 1], abs=1e-6)
