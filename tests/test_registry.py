"""Champion/challenger against a real (temporary) MLflow store: the gate refuses a worse model with the
reason, promotes a good one, rollback restores the previous champion, every move is in the audit log."""
import json
import os
import subprocess

import mlflow
import pandas as pd
import pytest
import yaml
from sklearn.pipeline import Pipeline

from pipeline.core import setup_mlflow, target_vector
from pipeline.evaluate import decision_rules, evaluate_models
from pipeline.featurize import Featurizer, split_frame
from pipeline.registry import (CHALLENGER, CHAMPION, Registry, compare_with_champion, gate, gate_summary, promote,
                               register_candidate, rollback)
from pipeline.train import CalibratedMargin, MarginEnsemble, log_models, train_models
from pipeline.validate import validate_frame
from tests.conftest import BIN, deep_merge


@pytest.fixture(scope="module")
def setting(raw, params, tmp_path_factory):
    "Full default data, default gate criteria, a short search; a fresh MLflow store."
    tmp = tmp_path_factory.mktemp("registry")
    p = {**params, "train": {**params["train"], "n_trials": 3}, "evaluate": {**params["evaluate"], "bootstrap": 20}}
    rows, _, _ = validate_frame(raw, p)
    splits = split_frame(rows, p)
    featurizer = Featurizer.from_params(p).fit(splits["train"])
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items(): mp.setenv(k, v)
    mp.chdir(tmp)
    setup_mlflow(p)
    yield p, splits, featurizer, tmp, env
    mp.undo()


def register(setting, reg: Registry, models: dict) -> dict:
    "Log `models` in an MLflow run, evaluate them and compare with the champion as evaluate does, then register."
    p, splits, *_ = setting
    with mlflow.start_run() as run:
        uris = log_models({"models": models, "example": splits["valid"].head(3)})
    metrics, _ = evaluate_models(splits, models, "xgboost", p)
    comparison = compare_with_champion(reg, splits["test"], p, metrics["auc"])
    return register_candidate(reg, uris["xgboost"], run.info.run_id, metrics, p, comparison,
                              decision=decision_rules(metrics, p))


def one_tree(setting):
    p, splits, featurizer, *_ = setting
    fit = pd.concat([splits["train"], splits["valid"]])  # cross-fitted like the real model, one depth-2 tree per fold
    X, y = featurizer.transform(fit), target_vector(fit, p)
    tree = MarginEnsemble([{"max_depth": 2}], deep_merge(p, {"train": {"max_rounds": 1}}), folds=2).fit(X, y)
    return Pipeline([("features", featurizer), ("model", CalibratedMargin(tree).fit(None, y, margin=tree.oof_margin_))])


def test_gate_promotes_refuses_rollback_restores_and_commands_work(setting):
    p, splits, featurizer, tmp, env = setting
    reg = Registry(p["mlflow"]["registered_model"])
    good = train_models(splits, featurizer, p, progress=False)["models"]

    first = register(setting, reg, good)
    assert first["promoted"] and first["verdict"] == "passed every criterion", first
    assert reg.alias(CHAMPION) == first["version"] and reg.alias(CHALLENGER) is None

    worse = register(setting, reg, {"baseline": good["baseline"], "xgboost": one_tree(setting)})
    assert not worse["promoted"]
    assert reg.alias(CHAMPION) == first["version"] and reg.alias(CHALLENGER) == worse["version"]
    failed = {r["criterion"]: r for r in worse["criteria"] if not r["passed"]}
    assert {"test AUC", "AUC drop vs champion"} <= set(failed)
    assert f"test AUC = {failed['test AUC']['value']:.4f}, must be >= 0.7500" in worse["verdict"]
    assert worse["champion_auc_same_split"] == pytest.approx(first["criteria"][0]["value"], abs=1e-6)
    with pytest.raises(ValueError, match="did not pass the gate"):
        promote(reg, worse["version"], "trying")

    p8 = {**p, "train": {**p["train"], "n_trials": 8}}
    better = register(setting, reg, train_models(splits, featurizer, p8, progress=False)["models"])
    assert better["promoted"] and reg.alias(CHAMPION) == better["version"] and better["previous_champion"] == first["version"]

    back = rollback(reg, "incident drill")
    assert back["from"] == better["version"] and back["to"] == first["version"] == reg.alias(CHAMPION)

    champion_moves = [(e["action"], e["from"], e["to"]) for e in reg.audit_log() if e["alias"] == CHAMPION]
    assert champion_moves == [("promote", None, first["version"]), ("promote", first["version"], better["version"]),
                              ("rollback", better["version"], first["version"])]
    lines = [json.loads(l) for l in (tmp / "models/registry_audit.jsonl").read_text().splitlines()]
    assert lines == reg.audit_log() and all(e["who"] and e["at"] and e["why"] for e in lines)
    with pytest.raises(ValueError, match="no previous champion"):
        rollback(reg, "again")  # history is back to one champion
    check_operations_commands(setting, refused_version=worse["version"])


def check_operations_commands(setting, refused_version: str):
    "The console scripts against the registry the test above built: list, refuse a promotion, export."
    p, splits, featurizer, tmp, env = setting
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    cli_env = {**os.environ, **env, "BENTOML_HOME": str(tmp / "bentoml")}

    def run(cmd, *args):
        return subprocess.run([str(BIN / cmd), *args], cwd=tmp, capture_output=True, text=True, env=cli_env)

    for cmd in ["riskops-models", "riskops-promote", "riskops-rollback", "riskops-export"]:
        assert run(cmd, "--help").returncode == 0
    listing = run("riskops-models")
    assert listing.returncode == 0 and "champion" in listing.stdout and "refused" in listing.stdout
    refused = run("riskops-promote", str(refused_version), "--reason", "try")
    assert refused.returncode == 2 and "did not pass the gate" in refused.stderr
    exported = run("riskops-export")
    assert exported.returncode == 0, exported.stderr
    meta = json.loads((tmp / "models/champion.json").read_text())
    assert meta["version"] == Registry(p["mlflow"]["registered_model"]).alias(CHAMPION) and meta["gate"] == "passed"
    assert set(json.loads(meta["decision"])) == {"model", "threshold", "grade_edges", "score_scale"}  # its own rules
    listed = run("bentoml", "models", "list", "-o", "json")
    assert p["register"]["bento_model"] in listed.stdout


def test_gate_refuses_what_it_cannot_assess(params):
    metrics = {"auc": 0.79, "gini": 0.58, "baseline_gini": 0.5, "ece": 0.01}
    fair = {"min_disparate_impact_ratio": 0.9, "max_equalized_odds_difference": 0.05}
    assert all(r["passed"] for r in gate(metrics, params["register"], 0.789, fair, {"worst_auc_drop": 0.01}))
    unknown = {"min_disparate_impact_ratio": None, "max_equalized_odds_difference": None}
    results = gate(metrics, params["register"], None, unknown)
    assert [r["criterion"] for r in results if not r["passed"]] == ["fairness: disparate-impact ratio",
                                                                    "fairness: equalized-odds difference"]
    assert "fairness: disparate-impact ratio = nan" in gate_summary(results)
