"""Hostile input against a real `bentoml serve` (issue 14): strict bodies, numbers a model cannot represent, the
cross-column rules online exactly as in the batch job, one bad caller in an adaptive batch, JSON logs, the schema's example."""
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml

from tests.conftest import ROOT, deep_merge
from tests.test_service import AUTH, Server, _home, _params_file, _records, server, small_model  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def hard(server):  # noqa: F811
    "The session's `bentoml serve` of tests/test_service.py: one server start, not two."
    return server


def _named(r) -> str:
    "Everything a 400 says about where and why: locations and messages."
    body = r.json()
    return json.dumps(body.get("detail", body))


def test_hostile_bodies_get_400_naming_the_field_and_the_service_keeps_answering(hard, small_model):
    good = _records(small_model["test"].head(1))[0]
    cases = [("/score", {"applicants": [good], "colour": 1}, "colour"),
             ("/score_batch", {"applicants": [good], "colour": 1}, "colour"),
             ("/explain", {"applicant": good, "colour": 1}, "colour"),
             ("/score_batch", {"applicants": [good] * 6}, "at most 5"),        # serve.max_list, named
             ("/score", {"applicants": [good] * 6}, "at most 5"),
             ("/score", {"applicants": [good], "request_id": "x" * 65}, "request_id"),
             ("/score", {"applicants": [good], "request_id": "a\u0000b"}, "request_id"),
             ("/score", {"applicants": [{**good, "PAY_AMT1": 1e39}]}, "PAY_AMT1"),
             ("/score_batch", {"applicants": [{**good, "BILL_AMT1": -1e39}]}, "BILL_AMT1"),
             ("/explain", {"applicant": {**good, "PAY_AMT1": 1e308}}, "PAY_AMT1"),
             ("/explain", {"applicant": {**good, "BILL_AMT1": 650001, "LIMIT_BAL": 50000}}, "bill within 12x limit")]
    for path, body, named in cases:
        r = requests.post(hard.url + path, json=body, headers=AUTH)
        assert r.status_code == 400 and named in _named(r), (path, body if len(str(body)) < 300 else named, r.text[:500])
    for path, raw in (("/score", b'{"applicants": [%s]}'), ("/explain", b'{"applicant": %s}')):
        for value in (b"NaN", b"Infinity", b"-Infinity"):
            row = json.dumps({**good, "PAY_AMT2": 0}).replace('"PAY_AMT2": 0', '"PAY_AMT2": %s').encode() % value
            r = requests.post(hard.url + path, data=raw % row, headers={**AUTH, "content-type": "application/json"})
            assert r.status_code == 400 and "PAY_AMT2" in _named(r), (path, value, r.text[:300])
    ok = requests.post(hard.url + "/score", json={"applicants": [good], "request_id": "ok:1.a_b-" + "x" * 54}, headers=AUTH)
    assert ok.status_code == 200 and ok.json()[0]["request_id"] == "ok:1.a_b-" + "x" * 54


def test_online_and_batch_refuse_exactly_the_same_rows(hard, small_model, small_params, tmp_path):
    rows = _records(small_model["test"].head(12))
    rows[1] |= {"BILL_AMT1": 650001, "LIMIT_BAL": 50000}     # breaks "bill within 12x limit"
    rows[4] |= {"BILL_AMT3": 600001, "LIMIT_BAL": 50000}
    rows[6] |= {"AGE": 150}                                   # out of range
    rows[8] |= {"PAY_AMT4": 1e39}                             # beyond float32
    rows[9] |= {"BILL_AMT1": 600000, "LIMIT_BAL": 50000}      # exactly 12x: holds
    path, out = tmp_path / "rows.csv", tmp_path / "scores.parquet"
    pd.DataFrame(rows).to_csv(path, index=False)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(deep_merge(small_params, {"validate": {"max_bad_share": 1.0}})))
    r = subprocess.run([sys.executable, "-m", "pipeline.score", "--params", str(params_path), "--input", str(path),
                        "--output", str(out), "--model", str(small_model["bundle"].path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    quarantine = pd.read_csv(tmp_path / "scores.quarantine.csv")
    batch_refused = set(quarantine["_row"])
    assert "PAY_AMT4: beyond float32" in set(quarantine["_rule"])        # the row, quarantined naming the column
    online = [requests.post(hard.url + "/score", json={"applicants": [row]}, headers=AUTH) for row in rows]
    assert {r.status_code for r in online} == {200, 400}
    online_refused = {i for i, r in enumerate(online) if r.status_code == 400}
    assert online_refused == batch_refused == {1, 4, 6, 8}
    assert "bill within 12x limit" in _named(online[1]) and "AGE" in _named(online[6]) and "PAY_AMT4" in _named(online[8])


def test_one_bad_caller_in_an_adaptive_batch_gets_the_only_400(hard, small_model):
    rows = _records(small_model["test"].head(16))
    rows[5] = {**rows[5], "BILL_AMT1": 650001, "LIMIT_BAL": 50000}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: requests.post(hard.url + "/score_batch", json={"applicants": [r]}, headers=AUTH), rows))
    assert [a.status_code for a in answers] == [400 if i == 5 else 200 for i in range(16)], [a.text[:200] for a in answers]
    assert "bill within 12x limit" in _named(answers[5])


def test_logs_are_json_lines_with_request_id_and_client_errors_at_info(hard, small_model):
    good = _records(small_model["test"].head(1))[0]
    assert requests.post(hard.url + "/score", json={"applicants": [good], "request_id": "log-1"}, headers=AUTH).status_code == 200
    assert requests.post(hard.url + "/score", json={"applicants": [{**good, "AGE": 7}]}, headers=AUTH).status_code == 400
    hard.log.flush()
    lines = Path(hard.log.name).read_text().splitlines()
    ours = [json.loads(l) for l in lines if l.startswith("{")]
    scored = [l for l in ours if l.get("request_id") == "log-1"]
    assert len(scored) == 1 and scored[0]["level"] == "INFO" and scored[0]["name"] == "riskops.service", ours[-3:]
    assert scored[0]["model_version"] == "local" and scored[0]["latency_ms"] > 0 and scored[0]["endpoint"] == "score"
    assert any("scoring with" in l["message"] for l in ours)   # the start-up line, visible under bentoml serve
    text = "\n".join(lines)
    assert "Traceback" not in text and "[ERROR]" not in text, text[-3000:]
    assert any("client error" in l and "INFO" in l for l in lines)


def test_openapi_schema_documents_codes_bounds_and_an_example_that_scores(hard):
    spec = requests.get(hard.url + "/docs.json").json()
    applicant = spec["components"]["schemas"]["Applicant"]
    assert applicant["properties"]["SEX"]["enum"] == [1, 2] and applicant["additionalProperties"] is False
    assert applicant["properties"]["AGE"]["minimum"] == 18 and applicant["properties"]["LIMIT_BAL"]["description"]
    body = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False
    r = requests.post(hard.url + "/score", json=body["example"], headers=AUTH)
    assert r.status_code == 200, r.text
    post = spec["paths"]["/score_batch"]["post"]
    assert post["security"] == [{"bearer": []}] and spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"400", "401", "415", "503"} <= set(post["responses"])
    assert "detail" in post["responses"]["400"]["content"]["application/json"]["schema"]["properties"]
