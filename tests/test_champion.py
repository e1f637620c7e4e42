"""One champion everywhere: after a promotion, a rollback, and with the logistic baseline as champion, the batch job,
`/score` on a real `bentoml serve` and `mlflow.pyfunc.load_model("models:/<name>@champion")` give the same risk score
and decision for every test applicant, and name the same version and bundle sha."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from pipeline.bundle import CHAMPION, Registry
from pipeline.evaluate import evaluate_models
from pipeline.registry import register_candidate
from tests.conftest import BIN, ROOT, deep_merge, make_bundle
from tests.test_service import Server

GATE_OPEN = {"min_auc": 0.5, "min_gini_gain_over_baseline": -1.0, "max_ece": 1.0, "min_disparate_impact_ratio": 0.0,
             "max_equalized_odds_difference": 1.0, "max_robustness_auc_drop": 1.0, "max_auc_drop_vs_champion": 1.0,
             "approvals_required": 0}  # the test is about serving: a version that passes becomes champion at once


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_params):
    "A fresh MLflow store and a params file whose gate lets each new version through (the test is about serving)."
    tmp = tmp_path_factory.mktemp("champion")
    p = deep_merge(small_params, {"register": GATE_OPEN, "serve": {"audit": {"spool_dir": str(tmp / "spool")}}})
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items(): mp.setenv(k, v)
    mp.chdir(tmp)
    yield p, tmp, env
    mp.undo()


def register(store, model, baseline, splits, name: str) -> str:
    "Bundle, gate and register `model` (metrics beside the baseline's, as evaluate writes them); its version."
    p, tmp, _ = store
    metrics, _ = evaluate_models(splits, {"m": model, "baseline": baseline}, "m", p)
    bundle = make_bundle(model, splits, p, tmp / name)
    return register_candidate(Registry(p["mlflow"]["registered_model"]), bundle.path, bundle.sha, None, metrics, p)["version"]


def cli(store, *cmd, **extra):
    p, tmp, env = store
    out = subprocess.run([*cmd, "--params", str(tmp / "params.yaml")], cwd=tmp, capture_output=True, text=True,
                         env={**os.environ, **env, **extra})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def three_ways(store, test: pd.DataFrame, label: str) -> dict[str, pd.DataFrame]:
    "The whole test split scored by the batch job, by /score over HTTP and by the registry's pyfunc model."
    p, tmp, env = store
    work = tmp / label
    work.mkdir()
    test.to_parquet(work / "applicants.parquet")
    cli(store, sys.executable, "-m", "pipeline.score", "--input", str(work / "applicants.parquet"),
        "--output", str(work / "batch.parquet"))
    batch = pd.read_parquet(work / "batch.parquet").sort_values("_row").reset_index(drop=True)
    home = work / "bentoml"
    cli(store, str(BIN / "riskops-export"), BENTOML_HOME=str(home))
    srv = Server(home, tmp / "params.yaml", work / "audit.sqlite", token=None)
    try:
        assert srv.wait("/readyz"), Path(srv.log.name).read_text()[-3000:]
        records, n = json.loads(test.to_json(orient="records")), p["serve"]["max_list"]
        answers = []
        for i in range(0, len(records), n):
            r = requests.post(srv.url + "/score", json={"applicants": records[i:i + n]}, timeout=60)
            assert r.status_code == 200, r.text
            answers += r.json()
    finally:
        srv.stop()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model(f"models:/{p['mlflow']['registered_model']}@champion")
    pyfunc = model.predict(test)
    pyfunc.attrs["bundle_sha"] = model.model_config["bundle_sha"]
    return {"batch": batch, "service": pd.DataFrame(answers), "pyfunc": pyfunc}


def check_agreement(store, test, label: str, version: str) -> None:
    p, *_ = store
    reg = Registry(p["mlflow"]["registered_model"])
    assert reg.alias(CHAMPION) == version
    sha = reg.model_version(version).tags["bundle_sha"]
    got = three_ways(store, test, label)
    b, s, f = got["batch"], got["service"], got["pyfunc"]
    assert len(b) == len(s) == len(f) == len(test)
    for other in (s, f):
        assert np.abs(b["risk_score"].to_numpy() - other["risk_score"].to_numpy()).max() <= 1e-9
        assert (b["decision"].to_numpy() == other["decision"].to_numpy()).all()
        assert (b["risk_grade"].to_numpy() == other["risk_grade"].to_numpy()).all()
    assert set(b["model_version"]) == set(s["model_version"]) == {version}
    assert set(b["bundle_sha"]) == set(s["bundle_sha"]) == {f.attrs["bundle_sha"]} == {sha}


def test_batch_service_and_pyfunc_agree_through_promotion_rollback_and_a_baseline_champion(
        store, small_trained, small_splits, small_params):
    test = small_splits["test"].drop(columns=small_params["data"]["target"])
    models = small_trained["models"]
    v1 = register(store, models["xgboost"], models["baseline"], small_splits, "xgboost")
    check_agreement(store, test, "xgboost-v1", v1)
    v2 = register(store, models["baseline"], models["baseline"], small_splits, "baseline")  # the baseline as champion
    assert v2 != v1
    check_agreement(store, test, "baseline-v2", v2)
    out = cli(store, str(BIN / "riskops-rollback"), "--reason", "drill")
    assert f"champion: version {v2} -> {v1}" in out.stdout
    check_agreement(store, test, "rollback-v1", v1)
    out = cli(store, str(BIN / "riskops-promote"), v2, "--reason", "back to the baseline")
    assert f"champion: version {v1} -> {v2}" in out.stdout
