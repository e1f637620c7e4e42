"""The scoring runtime (pipeline.scorer, pipeline.request) and the BentoML service (bentos/service.py) served for real on 127.0.0.1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline.request import applicant_model, invalid_rows
from pipeline.rules import field_sums
from pipeline.scorer import Scorer, check_sample
from tests.conftest import ROOT, deep_merge

TOKEN = "test-token-123"


@pytest.fixture(scope="session")
def small_model(small_bundle, small_splits, small_params) -> dict:
    "The small XGBoost bundle and a few test applicants (no target)."
    return {"bundle": small_bundle, "test": small_splits["test"].drop(columns=small_params["data"]["target"])}


def _records(df):
    return json.loads(df.to_json(orient="records"))


# ---- the scoring runtime, in process ----

def test_scorer_scores_exactly_as_the_bundle_and_gives_field_reasons(small_model, small_params):
    bundle, rows = small_model["bundle"], small_model["test"].head(200)
    scorer = Scorer(bundle, small_params, check_sample(small_params))
    answers = scorer.answers(rows)
    expected = bundle.predict(rows)
    assert [a["risk_score"] for a in answers] == expected["risk_score"].tolist()  # the same call: the same bits
    assert [a["decision"] for a in answers] == expected["decision"].tolist()
    assert [a["risk_grade"] for a in answers] == expected["risk_grade"].tolist()
    assert {a["bundle_sha"] for a in answers} == {bundle.sha}
    # records (what the service passes) and frames give the same answers
    recs = [applicant_model(small_params)(**r).model_dump() for r in _records(rows.head(20))]
    assert [x["risk_score"] for x in scorer.answers(recs)] == [a["risk_score"] for a in answers[:20]]
    assert all(len(x["reason_codes"]) <= small_params["serve"]["reason_codes"] for x in answers)


def test_approx_reason_codes_are_xgboosts_approximate_contributions(small_model, small_params):
    rows = small_model["test"].head(300)
    approx = deep_merge(small_params, {"serve": {"contributions": "approx"}})
    scorer = Scorer(small_model["bundle"], approx, check_sample(approx))
    assert scorer.paths is not None  # the compiled kernel passed its check against XGBoost
    X, _ = scorer.matrix(rows)
    est = small_model["bundle"].model.estimator
    xgb_approx = field_sums(est.contributions(X, approx=True)[:, :-1], scorer.fields)[0]
    np.testing.assert_allclose(scorer.field_contributions(X), xgb_approx, atol=1e-5)
    # /explain stays exact SHAP, whatever serve.contributions says
    shap = field_sums(est.contributions(X[:3])[:, :-1], scorer.fields)[0]
    for e, row in zip(scorer.explain(rows.head(3)), shap):
        assert list(e["contributions"].values()) == pytest.approx(row.tolist(), abs=1e-5)
    assert not np.allclose(xgb_approx[:3], shap, atol=1e-3)


def test_request_model_applies_the_validate_rules_strictly(small_params, raw, root):
    Applicant = applicant_model(small_params)
    row = _records(raw.drop(columns=small_params["data"]["target"]).head(1))[0]
    assert Applicant(**row).model_dump()["SEX"] == str(row["SEX"])
    assert Applicant(**{**row, "SEX": f"{row['SEX']}.0"}).model_dump()["SEX"] == str(row["SEX"])  # same code as validate
    bad = {**row, "AGE": 12, "EDUCATION": 9, "PAY_0": None, "colour": "red"}
    with pytest.raises(Exception) as e:
        Applicant(**bad)
    assert {err["loc"][0] for err in e.value.errors()} == {"AGE", "EDUCATION", "PAY_0", "colour"}
    rules = invalid_rows([{k: v for k, v in bad.items() if k != "colour"}], small_params)[0]["rule"]
    assert all(c in rules for c in ("AGE", "EDUCATION", "PAY_0"))  # the validate stage rejects the same columns
    assert invalid_rows([row, row], small_params) == []  # duplicates are fine when scoring
    # booleans are neither numbers nor codes; numeric strings are not numbers (field case score_bool.json)
    case = json.loads((root.parent / "shared/field-cases/score_bool.json").read_text())
    applicant = case["applicants"][0] if "applicants" in case else case
    for body, field in ((applicant, "SEX"), ({**row, "LIMIT_BAL": "50000"}, "LIMIT_BAL"), ({**row, "AGE": True}, "AGE")):
        with pytest.raises(Exception) as e:
            Applicant(**body)
        assert field in {err["loc"][0] for err in e.value.errors()}, body


def test_fallback_is_the_documented_rule(small_params, small_model):
    scorer = Scorer(None, small_params)
    answers = scorer.answers(small_model["test"].head(3))
    assert {a["method"] for a in answers} == {"fallback"} and {a["model_version"] for a in answers} == {"heuristic"}
    h = small_params["serve"]["heuristic"]
    row = small_model["test"].iloc[0]
    margin = h["intercept"] + sum(w * row[c] for c, w in h["weights"].items())
    assert answers[0]["risk_score"] == pytest.approx(1 / (1 + np.exp(-margin)))
    assert all(r["feature"] in h["weights"] for a in answers for r in a["reason_codes"])


def test_serving_imports_no_training_code(root):
    "The service's and the batch job's entry points, in a fresh interpreter: no Optuna, matplotlib, SHAP or training."
    code = ("import os, sys; os.environ['RISKOPS_PARAMS'] = 'params.yaml'; import bentos.service, pipeline.score; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'matplotlib', 'shap') "
            "or m in ('pipeline.train', 'pipeline.evaluate', 'pipeline.explain', 'pipeline.registry')))")
    env = {**os.environ, "BENTOML_HOME": str(root / ".bentoml-import-test")}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


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


def _home(tmp_path_factory, small_model, params_path, tamper=False) -> Path:
    "A BentoML home holding the small bundle, exported by `riskops-export` (one byte of model.joblib changed if `tamper`)."
    home = tmp_path_factory.mktemp("bentoml")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    out = subprocess.run([str(Path(sys.executable).parent / "riskops-export"), str(small_model["bundle"].path), "--params",
                          str(params_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    if tamper:
        for f in home.glob("models/*/*/model.joblib"):
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 1
            f.write_bytes(bytes(data))
    return home


def _params_file(tmp_path_factory, small_params, **serve) -> Path:
    p = tmp_path_factory.mktemp("params") / "params.yaml"  # each params file its own audit spool, never the repo's
    spool = {"audit": {**small_params["serve"]["audit"], "spool_dir": str(p.parent / "spool")}}
    p.write_text(yaml.safe_dump(deep_merge(small_params, {"serve": {"max_list": 5, **spool, **serve}})))
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
    bundle = small_model["bundle"]
    assert [a["risk_score"] for a in answers] == pytest.approx(bundle.predict(rows)["risk_score"].tolist(), abs=1e-12)
    for a in answers:
        assert a["method"] == "model" and a["model_version"] == "local" and a["model_name"] == "unregistered"
        assert a["bundle_sha"] == bundle.sha
        assert a["request_id"] == "req-1" and a["threshold"] == pytest.approx(bundle.rules["threshold"])
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
             ({"applicants": [{**good, "LIMIT_BAL": "50000"}]}, {"LIMIT_BAL"}),   # a numeric string is not a number
             ({"applicants": [{**good, "SEX": True}]}, {"SEX"}),                   # a boolean is not a code
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


def test_score_answered_by_the_gate_as_bentoml_answers_its_own_endpoints(server, small_model):
    """/score is answered by the service's middleware (RequestGate._scored), /score_batch by BentoML's own dispatch:
    the same bad applicant gets the same 400 (each field's loc, msg and type, BentoML's error line), the same
    applicants the same answers, and a body BentoML's JSON parser refuses is refused the same way."""
    rows = _records(small_model["test"].head(3))
    bad = [{**rows[0], "AGE": 7, "SEX": "x", "extra": 1}, {k: v for k, v in rows[1].items() if k != "PAY_0"},
           {**rows[2], "LIMIT_BAL": "50000"}]
    for applicant in bad:
        mine = requests.post(server.url + "/score", json={"applicants": [applicant]}, headers=AUTH)
        theirs = requests.post(server.url + "/score_batch", json={"applicants": [applicant]}, headers=AUTH)
        assert mine.status_code == theirs.status_code == 400, (mine.text, theirs.text)
        assert mine.json()["detail"] == theirs.json()["detail"], (mine.json(), theirs.json())
        assert mine.json()["error"] == theirs.json()["error"].replace("ScoreBatchRequest", "ScoreRequest")
        assert mine.headers["content-type"] == theirs.headers["content-type"] == "application/json"
    for raw in (b"", b"not json", b"[]", b'{"applicants": null}', b'{"applicants": [1]}', b'{"applicants": [], "x": 1}'):
        mine = requests.post(server.url + "/score", data=raw, headers={**AUTH, "content-type": "application/json"})
        theirs = requests.post(server.url + "/score_batch", data=raw, headers={**AUTH, "content-type": "application/json"})
        assert mine.status_code == theirs.status_code == 400, (raw, mine.text, theirs.text)
        assert [d["type"] for d in mine.json()["detail"]] == [d["type"] for d in theirs.json()["detail"]], raw
    single = requests.post(server.url + "/score", json={"applicants": rows}, headers=AUTH)
    assert single.status_code == 200 and single.headers["server"] == "BentoML Service/riskops"
    batched = [requests.post(server.url + "/score_batch", json={"applicants": [r]}, headers=AUTH).json()[0] for r in rows]
    drop = lambda a: {k: v for k, v in a.items() if k not in ("scored_at", "request_id")}
    assert [drop(a) for a in single.json()] == [drop(a) for a in batched]
    assert len({a["request_id"] for a in single.json()}) == 1  # one request, one id (the caller's when given)


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
    local = Scorer(small_model["bundle"], small_params, check_sample(small_params))  # the server's settings
    record = [applicant_model(small_params)(**rows[0]).model_dump()]
    assert single[0]["reason_codes"] == local.answers(record)[0]["reason_codes"]
    assert e["contributions"] == pytest.approx(local.explain(record)[0]["contributions"], abs=1e-6)
    assert e["risk_score"] == pytest.approx(single[0]["risk_score"])


def test_score_answer_headers_then_its_log_line_and_counts(server, small_model):
    """The gate's 200: the serializer's bytes with starlette's headers for them (content-length, content-type) and the
    server name; the request's log line (its id, latency) and its score counts follow the answer (written just after it is sent)."""
    def count():
        text = requests.get(server.url + "/metrics").text
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("riskops_scores_total{"))
    before = count()
    rows = _records(small_model["test"].head(3))
    r = requests.post(server.url + "/score", json={"applicants": rows, "request_id": "tally-1"}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content) and r.headers["server"] == "BentoML Service/riskops"
    assert [a["request_id"] for a in r.json()] == ["tally-1"] * 3
    end, lines, counted = time.time() + 10, [], before
    while time.time() < end and not (lines and counted >= before + 3):
        lines = [json.loads(l) for l in Path(server.log.name).read_text().splitlines()
                 if l.startswith("{") and '"tally-1"' in l]
        counted = count()
        time.sleep(0.05)
    assert len(lines) == 1 and lines[0]["endpoint"] == "score" and lines[0]["applicants"] == 3 and lines[0]["latency_ms"] > 0
    assert counted == before + 3


def test_metrics_count_scores_by_grade_and_method(server, small_model):
    requests.post(server.url + "/score", json={"applicants": _records(small_model["test"].head(2))}, headers=AUTH)
    text = requests.get(server.url + "/metrics").text
    assert 'riskops_scores_total{' in text and 'method="model"' in text and "riskops_risk_score_bucket" in text


def test_audit_records_survive_a_clean_shutdown(tmp_path_factory, small_model, small_params):
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
        got = c.execute(sa.text("select request_id, position, model_version, bundle_sha, method, latency_ms, inputs, "
                                "outputs, threshold from audit_records")).fetchall()
    assert sorted({g[0] for g in got}) == sorted(ids)   # one record per applicant, each request's positions 0..n-1
    assert sorted((g[0], g[1]) for g in got) == sorted((f"a{i}", j) for i in range(30) for j in range(1 + i % 4))
    assert all(g[2] == "local" and g[3] == small_model["bundle"].sha and g[4] == "model" and g[5] > 0 for g in got)
    first = next(g for g in got if g[0] == "a3" and g[1] == 2)
    assert json.loads(first[6])["LIMIT_BAL"] == rows[2]["LIMIT_BAL"]        # the inputs, to replay the decision
    assert json.loads(first[7])["decision"] in ("approve", "decline") and first[8] == pytest.approx(small_model["bundle"].rules["threshold"])


def test_tampered_bundle_fallback_not_ready_or_refuses(tmp_path_factory, small_model, small_params):
    params_path = _params_file(tmp_path_factory, small_params, fallback="heuristic")
    home = _home(tmp_path_factory, small_model, params_path, tamper=True)
    logs = []
    for store in (home, tmp_path_factory.mktemp("empty-store")):  # a changed model file, then no model at all
        srv = Server(store, params_path, home / "audit.sqlite", token=None)
        try:
            assert srv.wait("/livez")
            assert requests.get(srv.url + "/readyz").status_code == 503
            r = requests.post(srv.url + "/score", json={"applicants": _records(small_model["test"].head(2))})
            assert r.status_code == 200 and {a["method"] for a in r.json()} == {"fallback"}
            assert {a["model_version"] for a in r.json()} == {"heuristic"}
        finally:
            srv.stop()
            logs.append(Path(srv.log.name).read_text())
    assert "model.joblib: sha256 does not match" in logs[0], logs[0][-3000:]  # the refused file, named
    strict = _params_file(tmp_path_factory, small_params, fallback="none")
    srv = Server(_home(tmp_path_factory, small_model, strict, tamper=True), strict, home / "audit2.sqlite", token=None)
    try:  # refused before any worker starts: the process ends, naming the file
        srv.proc.wait(120)
        log = Path(srv.log.name).read_text()
        assert srv.proc.returncode != 0 and "refusing to start" in log and "model.joblib" in log, log[-3000:]
    finally:
        srv.stop()


def test_bento_requirements_pin_the_locked_versions_and_no_training_code(root):
    lock = {l.split("==")[0].lower(): l.split("==")[1] for l in (root / "constraints.txt").read_text().split() if "==" in l}
    pins = [l for l in (root / "bentos/requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
    names = {p.split("==")[0].split("[")[0].lower(): p.split("==")[1] for p in pins}
    assert all("==" in p for p in pins) and all(lock[n] == v for n, v in names.items()), (names, lock)
    assert {"xgboost", "scikit-learn", "numpy", "fastcore", "bentoml"} <= set(names)
    assert not {"optuna", "shap", "matplotlib", "mlflow"} & set(names)


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
    assert (src / "bentos/service.py").exists() and (src / "pipeline/scorer.py").exists() and (src / "params.yaml").exists()


def schemathesis(server, tmp_path, *args) -> list[dict]:
    "Run schemathesis (bounded, deterministic, with the token) over the service's OpenAPI schema: the HAR entries."
    st, har = str(Path(sys.executable).parent / "st"), tmp_path / "st.har"
    r = subprocess.run([st, "run", server.url + "/docs.json", "--checks", "not_a_server_error", "--max-examples", "15",
                        "--generation-deterministic", "--request-timeout", "30", "--header", f"Authorization: Bearer {TOKEN}",
                        "--report", "har", "--report-har-path", str(har), *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)  # st writes .schemathesis/ there
    assert r.returncode == 0, r.stdout[-4000:]
    return json.loads(har.read_text())["log"]["entries"]


def test_schemathesis_finds_no_server_error(server, tmp_path):
    "Valid and invalid requests generated from the service's OpenAPI schema, every endpoint: no answer is a 5xx."
    statuses = [e["response"]["status"] for e in schemathesis(server, tmp_path)]
    assert len(statuses) > 100 and max(statuses) < 500 and min(statuses) == 200, sorted(set(statuses))


def test_schemathesis_requests_that_follow_the_schema_are_scored(server, tmp_path):
    """The schema tells the truth: at least half of the requests generated for /score from it (positive mode) are
    scored 200. (The rest break a cross-column rule of validate.rules, which a JSON schema cannot state.)"""
    entries = schemathesis(server, tmp_path, "--mode", "positive", "--include-path", "/score")
    score = [e["response"]["status"] for e in entries if e["request"]["url"].endswith("/score")]
    print(f"schemathesis, positive mode: /score {len(score)} requests, {score.count(200)} answered 200")
    assert len(score) >= 10 and score.count(200) >= len(score) / 2, sorted(score)


def test_sync_http_client_as_in_the_readme(server, small_model):
    import bentoml
    rows = _records(small_model["test"].head(2))
    with bentoml.SyncHTTPClient(server.url, token=TOKEN) as client:
        answers = client.score(applicants=rows)
    assert [a["risk_score"] for a in answers] == pytest.approx(small_model["bundle"].predict(small_model["test"].head(2))["risk_score"].tolist(), abs=1e-12)
