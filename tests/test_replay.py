"""Replay (pipeline.replay, `riskops-replay`): decisions served by a real `bentoml serve` from a registered version are
re-scored from their audit records to the bit; after a promotion, replaying against the champion names exactly the
decisions the new champion would change."""
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import mlflow
import pytest
import requests
import yaml

from pipeline.bundle import CHAMPION, Registry, resolve
from pipeline.replay import parse_since, read_audit, replay
from tests.conftest import BIN, ROOT, deep_merge
from tests.test_champion import GATE_OPEN, register
from tests.test_service import Server


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_params):
    "A fresh MLflow store, an open gate, and the audit database and spool in the temporary folder."
    tmp = tmp_path_factory.mktemp("replay")
    p = deep_merge(small_params, {"register": GATE_OPEN, "serve": {"max_list": 100, "audit": {
        "path": str(tmp / "audit.sqlite"), "spool_dir": str(tmp / "spool")}}})
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "RISK_AUDIT_DB_URL": f"sqlite:///{tmp / 'audit.sqlite'}",
           "PYTHONPATH": str(ROOT)}
    mp = pytest.MonkeyPatch()
    for k, v in env.items(): mp.setenv(k, v)
    mp.chdir(tmp)
    yield p, tmp, env
    mp.undo()


def replay_cli(store, *args) -> subprocess.CompletedProcess:
    p, tmp, env = store
    return subprocess.run([sys.executable, "-m", "pipeline.replay", *args, "--params", str(tmp / "params.yaml")], cwd=tmp,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def test_parse_since():
    assert parse_since("30m") == timedelta(minutes=30) and parse_since("2h") == timedelta(hours=2)
    assert parse_since("1d") == timedelta(days=1)
    with pytest.raises(ValueError, match="30m, 2h, 1d"):
        parse_since("yesterday")


def test_replay_reproduces_served_decisions_and_names_what_a_promotion_changes(store, small_trained, small_splits, small_params):
    p, tmp, env = store
    models = small_trained["models"]
    v1 = register(store, models["xgboost"], models["baseline"], small_splits, "xgboost")
    home = tmp / "bentoml"
    home.mkdir()
    out = subprocess.run([str(BIN / "riskops-export"), "--params", str(tmp / "params.yaml")], cwd=tmp, capture_output=True,
                         text=True, env={**os.environ, **env, "BENTOML_HOME": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    test = small_splits["test"].drop(columns=p["data"]["target"]).head(100)
    rows = json.loads(test.to_json(orient="records"))
    srv = Server(home, tmp / "params.yaml", tmp / "audit.sqlite", token=None)
    answers = []
    try:
        assert srv.wait("/readyz"), Path(srv.log.name).read_text()[-3000:]
        for i in range(0, 100, 10):  # ten requests of ten applicants
            r = requests.post(srv.url + "/score", json={"applicants": rows[i:i + 10], "request_id": f"replay-{i // 10}"}, timeout=60)
            assert r.status_code == 200, r.text
            answers += r.json()
    finally:
        srv.stop()
    assert {a["model_version"] for a in answers} == {v1}

    # the function API: every record re-scored by the audited version, to the bit
    records = read_audit(env["RISK_AUDIT_DB_URL"], since=timedelta(hours=1))
    assert len(records) == 100
    same = replay(records, p)
    assert same["identical"].all(), same.loc[~same["identical"], ["request_id", "position", "differences", "note"]]
    assert (same["stored_risk_score"] == [a["risk_score"] for a in answers]).all()

    # the command: everything in the last hour, then one request
    out = replay_cli(store, "--since", "1h")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "100 records replayed: 100 identical, 0 not; 0 decisions differ"
    out = replay_cli(store, "replay-3")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 11 and all(l.startswith("replay-3#") and l.endswith("identical") for l in lines[:-1])
    out = replay_cli(store, "no-such-request")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "no-such-request" in out.stderr and "Traceback" not in out.stderr

    # a new champion: the decisions it would change, counted directly
    v2 = register(store, models["baseline"], models["baseline"], small_splits, "baseline")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    assert Registry(p["mlflow"]["registered_model"]).alias(CHAMPION) == v2 != v1
    new = resolve(CHAMPION, p).predict(test)["decision"].tolist()
    changed = sum(a["decision"] != d for a, d in zip(answers, new))
    assert 0 < changed < 100
    table = replay(records, p, against=CHAMPION)
    assert (table["replayed_version"] == v2).all() and not table["identical"].any()
    assert int((table["stored_decision"] != table["replayed_decision"]).sum()) == changed
    out = replay_cli(store, "--since", "1h", "--against", CHAMPION)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].endswith(f"; {changed} decisions differ")
    assert sum("decision" in l.split("differs: ")[-1].split(",") for l in out.stdout.splitlines() if "differs: " in l) == changed


def test_unknown_version_and_bad_since_are_one_line(store):
    out = replay_cli(store, "--since", "yesterday")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "30m, 2h, 1d" in out.stderr
    out = replay_cli(store, "--help")
    assert out.returncode == 0 and "--against" in out.stdout
