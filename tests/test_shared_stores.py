"""Shared stores by configuration, on a real PostgreSQL server: two tuning processes add trials to one Optuna study
(unique trial numbers, one best trial); `train` refits the best of them, tracked in MLflow on PostgreSQL; `register`
and its gate, `riskops-promote` (aliases), `riskops-export` and the service run against the same store, the service
auditing to PostgreSQL. And SQLite, the default, in WAL mode with a busy timeout."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import joblib
import optuna
import pandas as pd
import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline.core import sqlite_url, tracking_uri
from pipeline.featurize import Featurizer
from pipeline.validate import make_report
from tests.conftest import BIN, ROOT, deep_merge, free_port, run

TUNE = "import sys; from pipeline.train import tune_cli; sys.exit(tune_cli())"  # riskops-tune, without reinstalling


def createdb(server, name: str) -> str:
    run([*server.as_owner, str(server.bin / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", name], server.dir)
    return f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/{name}"


@pytest.fixture(scope="module")
def workspace(postgres_server, small_splits, small_params, tmp_path_factory):
    "A working folder as `featurize` leaves it (small profile), params whose study and MLflow store are on PostgreSQL."
    ws = tmp_path_factory.mktemp("shared")
    (ws / "data/split").mkdir(parents=True)
    for name, df in small_splits.items(): df.to_parquet(ws / f"data/split/{name}.parquet")
    (ws / "models").mkdir(), (ws / "reports").mkdir(), (ws / "metrics").mkdir()
    joblib.dump(Featurizer.from_params(small_params).fit(small_splits["train"]), ws / "models/featurizer.joblib")
    (ws / "reports/validation.json").write_text(json.dumps(make_report(4000, 4000, pd.Series([], dtype=str), small_params)))
    optuna_url, mlflow_url, audit_url = (createdb(postgres_server, n) for n in ("optuna_shared", "mlflow_shared", "audit_shared"))
    params = deep_merge(small_params, {
        "data": {"path": str(ROOT / small_params["data"]["path"])},
        "train": {"n_trials": 4, "storage": optuna_url},
        "evaluate": {"bootstrap": 20},
        "register": {"min_auc": 0.99},  # the gate refuses: riskops-promote --force makes it champion
        "serve": {"max_list": 5, "audit": {**small_params["serve"]["audit"], "spool_dir": str(ws / "spool")}}})
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"MLFLOW_TRACKING_URI": mlflow_url, "BENTOML_HOME": str(ws / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return ws, params, env, audit_url


def cli(ws, env, *cmd) -> subprocess.CompletedProcess:
    t = time.perf_counter()
    out = run([*cmd, "--params", str(ws / "params.yaml")], ws, {**env, "PYTHONPATH": str(ROOT)})
    print(f"{time.perf_counter() - t:5.1f} s  {' '.join(map(str, cmd[1:]))[:60]}")
    return out


def test_two_tuning_processes_one_study_then_train_register_promote_serve_on_postgres(workspace):
    ws, params, env, audit_url = workspace
    # two tuning processes add 4 trials to one study in PostgreSQL
    out = cli(ws, env, sys.executable, "-c", TUNE, "--workers", "2", "--trials", "4").stdout
    ran = json.loads(re.search(r"worker\(s\) (\[[\d, ]+\])", out).group(1))
    assert len(ran) == 2 and min(ran) >= 1 and sum(ran) >= 4, out
    name = re.search(r"study (xgb-\w+)", out).group(1)
    study = optuna.load_study(study_name=name, storage=params["train"]["storage"])
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers))) == list(range(sum(ran)))  # unique, no gap
    assert len(study.best_trials) == 1 and f"best trial #{study.best_trial.number}" in out
    # train finds the study full, runs no trial of its own and refits the best of the two processes' trials
    train = cli(ws, env, sys.executable, "-m", "pipeline.train")
    assert f"{len(numbers)} finished trials, {len(numbers)} of them there before this run" in train.stderr
    assert json.loads((ws / "models/model_info.json").read_text())["best_params"] == study.best_params
    assert len(optuna.load_study(study_name=name, storage=params["train"]["storage"]).trials) == len(numbers)
    # evaluate, register (the gate refuses), promote by hand; every alias in MLflow on PostgreSQL
    cli(ws, env, sys.executable, "-m", "pipeline.evaluate")
    cli(ws, env, sys.executable, "-m", "pipeline.registry")
    registered = json.loads((ws / "models/registry.json").read_text())
    assert registered["version"] == "1" and not registered.get("promoted")
    moved = cli(ws, env, str(BIN / "riskops-promote"), "1", "--reason", "pg", "--force").stdout
    assert moved.splitlines()[0].startswith("champion: version None -> 1 (forced: bypassed gate (refused)"), moved
    from mlflow import MlflowClient
    assert str(MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        params["mlflow"]["registered_model"], "champion").version) == "1"
    # the service: the champion exported from the PostgreSQL registry, auditing to PostgreSQL
    cli(ws, env, str(BIN / "riskops-export"))
    port = free_port()
    log = open(ws / "serve.log", "w")
    proc = subprocess.Popen([str(BIN / "bentoml"), "serve", "bentos.service:RiskService", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env, "RISKOPS_PARAMS": str(ws / "params.yaml"), "RISK_AUDIT_DB_URL": audit_url})
    try:
        url, end = f"http://127.0.0.1:{port}", time.time() + 120
        while time.time() < end:
            assert proc.poll() is None, (ws / "serve.log").read_text()[-3000:]
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200: break
            except requests.RequestException: pass
            time.sleep(0.5)
        applicant = json.loads(pd.read_parquet(ws / "data/split/test.parquet").drop(columns=params["data"]["target"])
                               .head(1).to_json(orient="records"))
        r = requests.post(url + "/score", json={"applicants": applicant, "request_id": "pg-1"}, timeout=30)
        assert r.status_code == 200 and r.json()[0]["model_version"] == "1", r.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        log.close()
    with sa.create_engine(audit_url).connect() as c:
        got = c.execute(sa.text("select request_id, model_version from audit_records")).fetchall()
    assert [tuple(g) for g in got] == [("pg-1", "1")]


def test_sqlite_stores_are_in_wal_mode_with_a_busy_timeout(tmp_path, monkeypatch):
    url = sqlite_url(f"sqlite:///{tmp_path}/a/optuna.db")
    assert url.endswith("?timeout=30") and sqlite_url(url) == url
    assert sqlite3.connect(tmp_path / "a/optuna.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert tracking_uri().endswith("mlflow.db?timeout=30")
    assert sqlite3.connect(tmp_path / "mlflow.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri({"mlflow": {"tracking_uri": "postgresql+psycopg://u:pw@h/db"}}) == "postgresql+psycopg://u:pw@h/db"


def test_tune_without_a_shared_study_is_one_line(workspace, small_params, tmp_path):
    ws, *_ = workspace
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(small_params))
    out = subprocess.run([sys.executable, "-c", TUNE, "--params", str(p)], cwd=ws, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "train.storage" in out.stderr, out.stderr
