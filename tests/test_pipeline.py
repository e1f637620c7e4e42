"""The pipeline end to end: real `dvc repro` and `dvc exp run` in a temporary copy of the repository,
with a real (temporary) MLflow store."""
import json

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core import file_md5
from tests.conftest import copy_repo, deep_merge, load_yaml, mlflow_env, run

STAGES = ["validate", "featurize", "train", "evaluate", "register", "explain", "report", "batches", "drift"]


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory, root):
    "A copy of the repository with the small profile merged into params.yaml, after one `dvc repro`."
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    params = deep_merge(load_yaml(repo / "params.yaml"), load_yaml(root / "tests/profile_small.yaml"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git commit -qam 'small profile'", repo)
    env = mlflow_env(repo)
    proc = run(["dvc", "repro"], repo, env)
    return repo, env, proc


def test_repro_runs_every_stage_and_writes_outputs(small_repo):
    repo, _, proc = small_repo
    for stage in STAGES:
        assert f"Running stage '{stage}'" in proc.stdout
    for out in ["data/validated/data.parquet", "data/quarantine/rows.csv", "data/split/test.parquet",
                "models/featurizer.joblib", "models/xgboost.joblib", "models/bundle/MANIFEST.json", "plots/roc/xgboost.csv",
                "plots/shap/beeswarm.png", "reports/shap_importance.csv", "reports/drift.csv", "reports/validation.html",
                "reports/drift.html", "reports/alerts.json", "data/batches/sudden/month_06.parquet",
                "reports/model_report.html"]:
        assert (repo / out).stat().st_size > 0, out
    validation = json.loads((repo / "reports/validation.json").read_text())
    assert validation["rows_in"] == 4000 == validation["rows_passed"] + validation["rows_quarantined"]
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.70 < metrics["auc"] < 0.85 and metrics["gini"] == pytest.approx(2 * metrics["auc"] - 1, abs=1e-5)
    assert 0.6 < metrics["baseline_auc"] < 0.85 and 0 < metrics["ks"] < 1
    drift = json.loads((repo / "metrics/drift.json").read_text())
    assert drift["status"] == "stable" and set(drift["features"]) >= {"LIMIT_BAL", "SEX"}
    shown = run(["dvc", "metrics", "show"], repo).stdout
    assert "baseline_auc" in shown and "score_psi" in shown


def test_mlflow_run_is_traceable(small_repo):
    repo, env, _ = small_repo
    info = json.loads((repo / "models/model_info.json").read_text()) | json.loads((repo / "models/mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run_ = client.get_run(info["run_id"])
    params = load_yaml(repo / "params.yaml")
    assert run_.data.tags["data_md5"] == file_md5(repo / params["data"]["path"])
    assert len(run_.data.tags["git_commit"]) >= 40 and len(run_.data.tags["params_hash"]) == 16
    assert run_.data.metrics["test_auc"] == pytest.approx(json.loads((repo / "metrics/evaluate.json").read_text())["auc"], abs=1e-6)
    children = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['run_id']}'")
    assert len(children) == params["train"]["n_trials"]
    assert all("valid_auc" in c.data.metrics or c.data.tags["state"] == "PRUNED" for c in children)
    registry = json.loads((repo / "models/registry.json").read_text())
    version = client.get_model_version(registry["registered_model"], registry["version"])
    assert version.run_id == info["run_id"] and version.tags["gate"] == ("passed" if registry["promoted"] else "refused")
    assert version.tags["bundle_sha"] == registry["bundle_sha"] == json.loads(json.dumps(registry))["bundle_sha"]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model(f"models:/{registry['registered_model']}/{registry['version']}")
    test = pd.read_csv(repo / params["data"]["path"]).head(300).drop(columns=params["data"]["target"])  # raw ints
    from pipeline.bundle import load_bundle
    local = load_bundle(repo / "models/bundle", registry["bundle_sha"]).predict(test)
    got = model.predict(test)
    assert list(got.columns) == ["risk_score", "risk_grade", "scaled_score", "decision"]
    pd.testing.assert_frame_equal(got, local)
    assert set(got["decision"]) <= {"approve", "decline"} and got["risk_score"].between(0, 1).all()
    card = repo / "models/MODEL_CARD.md"  # the champion's card; written only on promotion
    assert card.exists() == registry["promoted"]
    if registry["promoted"]:
        text = card.read_text()
        assert text.startswith(f"# Model card: {registry['registered_model']} version {registry['version']}\n")
        assert info["run_id"] in text and registry["bundle_sha"] in text
    assert json.loads((repo / "models/registered.json").read_text()) == {"registered_model": registry["registered_model"],
                                                                         "bundle_sha": registry["bundle_sha"]}


def aliases(env, name="riskops-credit-default") -> dict:
    return dict(MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_registered_model(name).aliases)


def test_second_repro_is_a_no_op_and_an_experiment_moves_no_alias(small_repo):
    repo, env, _ = small_repo
    again = run(["dvc", "repro"], repo, env).stdout
    assert "Running stage" not in again and "Data and pipelines are up to date" in again
    before = aliases(env)
    exp = run(["dvc", "exp", "run", "-S", "train.n_trials=2"], repo, env).stdout
    ran = {s for s in STAGES if f"Running stage '{s}'" in exp}
    assert ran == {"train", "evaluate", "register", "explain", "report", "drift"}, exp
    assert aliases(env) == before  # a throw-away experiment registers its version but moves no alias
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    tagged = [v for v in client.search_model_versions("name = 'riskops-credit-default'") if v.tags.get("dvc_exp_name")]
    assert len(tagged) == 1 and tagged[0].tags["gate"] in ("passed", "refused")


def test_retraining_with_same_params_gives_same_metrics_and_registers_nothing_new(small_repo):
    repo, env, _ = small_repo
    run("git checkout -- params.yaml && dvc repro", repo, env)
    before = (repo / "metrics/evaluate.json").read_text()
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    versions = lambda: sorted(v.version for v in client.search_model_versions("name = 'riskops-credit-default'"))
    known = versions()
    run("dvc repro -f -s train && dvc repro && dvc repro -f -s register", repo, env)
    assert (repo / "metrics/evaluate.json").read_text() == before
    assert versions() == known  # the same bundle sha: registering is idempotent
    assert "already version" in json.loads((repo / "models/registry.json").read_text())["verdict"]


def test_a_fresh_clone_reproduces_every_tracked_file(small_repo, tmp_path):
    "Commit the repro's outputs, then rebuild from nothing (no DVC cache, no git-ignored file, a new MLflow store): git status stays empty."
    repo, env, _ = small_repo
    run("git checkout -- params.yaml && dvc repro && git add -A && git -c user.name=t -c user.email=t@t commit -qm outputs", repo, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    proc = run(["dvc", "repro"], clone, mlflow_env(clone))
    for stage in ("train", "register", "report", "drift"):  # the registry readers run against the clone's own new store
        assert f"Running stage '{stage}'" in proc.stdout, (stage, proc.stdout[-2000:])
    assert json.loads((clone / "models/registry.json").read_text())["version"] == "1"
    assert run(["git", "status", "--porcelain"], clone).stdout == ""


def test_exp_run_switches_the_drift_batch(small_repo):
    repo, env, _ = small_repo
    run("git checkout -- params.yaml && dvc repro", repo, env)
    batch = "data/batches/sudden/month_06.parquet"
    exp = run(["dvc", "exp", "run", "-S", f"drift.current={batch}"], repo, env).stdout
    assert {s for s in STAGES if f"Running stage '{s}'" in exp} == {"drift"}, exp
    drift = json.loads((repo / "metrics/drift.json").read_text())
    alerts = json.loads((repo / "reports/alerts.json").read_text())
    assert drift["batch"] == batch and drift["status"] == "alert" and drift["features"]["AGE"]["status"] == "alert"
    assert "AGE" in {a["name"] for a in alerts["alerts"]} and alerts["webhook"] == {"configured": False}
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp_id = client.get_experiment_by_name(load_yaml(repo / "params.yaml")["mlflow"]["experiment"]).experiment_id
    runs = client.search_runs([exp_id], f"tags.batch = '{batch}'")
    assert len(runs) == 1 and runs[0].data.metrics["psi.AGE"] == pytest.approx(drift["features"]["AGE"]["psi"], abs=1e-5)
