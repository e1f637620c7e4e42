"""The production loop end to end, on real parts and the pipeline's own commands: a repository copy on a small profile
(`dvc repro`, the MLflow store, `riskops-export`), one `bentoml serve` that follows the store, the audit database.

serve v1 -> a drifted month of traffic -> `drift --since` alerts on the shifted features only -> outcomes arrive and
realised performance is reported per version -> a retrain on data that includes the month registers v2 as challenger
-> shadow scoring of v2 on traffic -> the gate passed, an approval recorded -> promotion: the same server answers with
v2 -> rollback: v1 again -> the registry's audit log and the service's audit records show every step in order."""
import json
import os

import pandas as pd
import pytest
import requests
import sqlalchemy as sa
import yaml

from tests.conftest import copy_repo, deep_merge, load_yaml, run
from tests.test_champion import GATE_OPEN
from tests.test_live import until
from tests.test_service import Server

# A short search on a row sample: the same code path as the default profile.
TINY = {"data": {"sample_rows": 3000}, "train": {"n_trials": 2, "max_rounds": 150, "ensemble_top_k": 1, "cv_folds": 2},
        "evaluate": {"bootstrap": 20}, "explain": {"sample_rows": 100}}


def score(url: str, rows: pd.DataFrame, prefix: str) -> list[dict]:
    "POST rows to /score 50 at a time under request ids `prefix-k`; every answer."
    out = []
    for k in range(0, len(rows), 50):
        recs = json.loads(rows.iloc[k:k + 50].to_json(orient="records"))
        r = requests.post(url + "/score", json={"applicants": recs, "request_id": f"{prefix}-{k // 50}"}, timeout=60)
        assert r.status_code == 200, r.text
        out += r.json()
    return out


def served_version(url: str, row: dict) -> str:
    return requests.post(url + "/score", json={"applicants": [row]}, timeout=30).json()[0]["model_version"]


def test_the_production_loop(tmp_path, root):
    repo = copy_repo(tmp_path / "repo")
    audit_db, home = tmp_path / "audit.sqlite", tmp_path / "bentoml"
    home.mkdir()
    loop = {"register": {**GATE_OPEN, "approvals_required": 1}, "drift": {"min_rows": 100},
            "serve": {"workers": 1, "shadow": True, "canary_share": 0.0, "follow_poll_s": 0.5,
                      "audit": {"spool_dir": str(tmp_path / "spool"), "flush_interval_s": 0.05}}}
    params = deep_merge(deep_merge(load_yaml(repo / "params.yaml"), TINY), loop)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "BENTOML_HOME": str(home),
           "BENTOML_DO_NOT_TRACK": "True", "RISK_AUDIT_DB_URL": f"sqlite:///{audit_db}", "RISKOPS_PARAMS": str(repo / "params.yaml")}
    registry_log = lambda: [json.loads(l) for l in (repo / "models/registry_audit.jsonl").read_text().splitlines()]

    # v1: the pipeline on a fresh store makes the first champion; exported; served
    run(["dvc", "repro", "register", "batches"], repo, env)
    assert json.loads((repo / "models/registry.json").read_text())["version"] == "1"
    run(["riskops-export"], repo, env)
    srv = Server(home, repo / "params.yaml", audit_db, token=None)
    try:
        assert srv.wait("/readyz"), open(srv.log.name).read()[-3000:]
        assert requests.get(srv.url + "/readyz", timeout=10).json()["model_version"] == "1"
        pid = srv.proc.pid

        # a drifted month of traffic (the sudden scenario's shifted months), served by v1
        target = params["data"]["target"]
        month = pd.concat([pd.read_parquet(repo / f"data/batches/sudden/month_{m:02d}.parquet") for m in (4, 5, 6)],
                          ignore_index=True)
        answers = score(srv.url, month.drop(columns=[target]), "m6")
        assert {a["model_version"] for a in answers} == {"1"} and len(answers) == len(month) >= 200

        # drift over the audit window: alerts on the shifted features, and only on them
        run(["python", "-m", "pipeline.drift", "--since", "1h"], repo, env)
        drift = json.loads((repo / "metrics/drift.json").read_text())
        alerted = {f for f, r in drift["features"].items() if r["status"] == "alert"}
        shifted = set(params["batches"]["shifts"])
        assert drift["rows"] == len(month) and {"AGE", "BILL_AMT1"} <= alerted <= shifted, (alerted, shifted)

        # outcomes arrive: realised performance per month and model version
        outcomes = pd.DataFrame({"request_id": [f"m6-{i // 50}" for i in range(len(month))],
                                 "position": [i % 50 for i in range(len(month))], target: month[target],
                                 "observed_at": "2026-11-30"})
        outcomes.to_csv(tmp_path / "outcomes.csv", index=False)
        loaded = json.loads(run(["riskops-outcomes", "--file", str(tmp_path / "outcomes.csv")], repo, env).stdout)
        assert loaded["new"] == len(month)
        run(["python", "-m", "pipeline.drift", "--since", "1h"], repo, env)
        realised = json.loads((repo / "metrics/drift.json").read_text())["realised"]
        assert [r["model_version"] for r in realised] == ["1"] and realised[0]["outcomes"] == realised[0]["decisions"] == len(month), realised
        assert 0.5 < realised[0]["auc"] <= 1

        # a retrain on data that includes the month: v2, challenger (the gate passed, no approval yet); the store follows
        raw = repo / params["data"]["path"]
        pd.concat([pd.read_csv(raw), month[pd.read_csv(raw, nrows=1).columns]]).to_csv(raw, index=False)
        run(["dvc", "repro", "register"], repo, env)
        result = json.loads((repo / "models/registry.json").read_text())
        assert result["version"] == "2" and not result["promoted"] and "riskops-approve" in result["awaiting"], result
        ready = until(lambda: (d := requests.get(srv.url + "/readyz", timeout=10).json())["challenger_version"] == "2" and d)
        assert ready["model_version"] == "1"

        # shadow scoring of v2 on traffic: v1 decides, v2 is scored and audited beside it
        later = score(srv.url, month.drop(columns=[target]).head(60), "shadow")
        assert {a["model_version"] for a in later} == {"1"}
        engine = sa.create_engine(f"sqlite:///{audit_db}")
        query = "select model_version, count(*) from shadow_records where request_id like 'shadow-%' group by model_version"
        def shadowed():
            with engine.connect() as c:
                return sa.inspect(c).has_table("shadow_records") and dict(c.execute(sa.text(query)).fetchall()).get("2") == 60
        until(shadowed)
        with engine.connect() as c: shadow = dict(c.execute(sa.text(query)).fetchall())
        assert shadow == {"2": 60}, shadow

        # the gate passed; promotion needs an approval; then the same server answers with v2, and after a rollback v1
        refused = run(["riskops-promote", "2", "--reason", "retrained with November"], repo, env, check=False)
        assert refused.returncode == 2 and "has 0 of the 1 approvals" in refused.stderr, refused.stderr
        run(["riskops-approve", "2", "--by", "Ann Lee", "--reason", "validated on the shadow traffic"], repo, env)
        run(["riskops-promote", "2", "--reason", "retrained with November"], repo, env)
        row = json.loads(month.drop(columns=[target]).head(1).to_json(orient="records"))[0]
        until(lambda: served_version(srv.url, row) == "2")
        run(["riskops-rollback", "--reason", "incident drill"], repo, env)
        until(lambda: served_version(srv.url, row) == "1")
        assert srv.proc.pid == pid and srv.proc.poll() is None  # no restart
    finally:
        srv.stop()

    # the registry's audit log, in order
    steps = [(e["action"], e.get("alias"), str(e.get("to") or e.get("version"))) for e in registry_log()]
    expected = [("promote", "champion", "1"), ("register", "challenger", "2"), ("approve", None, "2"),
                ("promote", "champion", "2"), ("rollback", "champion", "1")]
    it = iter(steps)
    assert all(step in it for step in expected), steps  # in this order (other entries may sit between)
    # and the service's own records, in the order written (one worker): v1's answers, then v2's, then v1's again
    with sa.create_engine(f"sqlite:///{audit_db}").connect() as c:
        served = [v for (v,) in c.execute(sa.text("select model_version from audit_records order by rowid"))]
    runs = [v for i, v in enumerate(served) if i == 0 or served[i - 1] != v]
    assert runs == ["1", "2", "1"], runs
