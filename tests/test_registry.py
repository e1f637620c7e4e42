"""Champion/challenger against a real (temporary) MLflow store: the gate refuses a worse model with the
reason, promotes a good one, rollback restores the previous champion, every move is in the audit log."""
import json
import os
import subprocess

import pandas as pd
import pytest
import yaml

from pipeline.bundle import BundleError, resolve
from pipeline.core import setup_mlflow, target_vector
from pipeline.evaluate import evaluate_models
from pipeline.featurize import Featurizer, split_frame
from pipeline.model import CalibratedMargin, ScoringModel
from pipeline.registry import (CHALLENGER, CHAMPION, Registry, compare_with_champion, gate, gate_summary, promote,
                               register_candidate, rollback)
from pipeline.train import cross_fit, train_models
from pipeline.params import ParamsError
from pipeline.validate import validate_frame
from tests.conftest import BIN, deep_merge, make_bundle


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
    "Bundle the xgboost model as evaluate does, compare with the champion and register as the register stage does."
    p, splits, featurizer, tmp, env = setting
    metrics, _ = evaluate_models(splits, models, "xgboost", p)
    bundle = make_bundle(models["xgboost"], splits, p, tmp / f"bundle-{len(reg.known())}")
    comparison = compare_with_champion(reg, splits["test"], p, metrics["auc"])
    return register_candidate(reg, bundle.path, bundle.sha, None, metrics, p, comparison)


def one_tree(setting):
    p, splits, featurizer, *_ = setting
    fit = pd.concat([splits["train"], splits["valid"]])  # cross-fitted like the real model, one depth-2 tree per fold
    X, y = featurizer.frame(fit), target_vector(fit, p)
    tree = cross_fit(X, y, [{"max_depth": 2}], deep_merge(p, {"train": {"max_rounds": 1}}), folds=2)
    return ScoringModel(featurizer, CalibratedMargin(tree).fit(None, y, margin=tree.oof_margin_))


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
    with pytest.raises(BundleError, match="did not pass the gate"):
        promote(reg, worse["version"], "trying")
    again = register(setting, reg, {"baseline": good["baseline"], "xgboost": one_tree(setting)})  # the same bundle
    assert not again["new"] and again["version"] == worse["version"] and reg.known() == [first["version"], worse["version"]]

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
    with pytest.raises(BundleError, match="no previous champion"):
        rollback(reg, "again")  # history is back to one champion
    with pytest.raises(BundleError, match="already the champion"):
        promote(reg, first["version"], "again")
    assert resolve(CHAMPION, p).version == first["version"] and resolve(CHAMPION, p).sha == first["bundle_sha"]
    check_operations_commands(setting, refused_version=worse["version"])
    check_resolver_refusals(setting)
    promote(reg, better["version"], "again, after the drill")  # history: first, better
    reg.client.delete_model_version(reg.name, first["version"])
    with pytest.raises(BundleError, match=f"version {first['version']}, no longer exists"):
        rollback(reg, "to a deleted version")
    assert reg.alias(CHAMPION) == better["version"]


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
    champion = Registry(p["mlflow"]["registered_model"]).alias(CHAMPION)
    assert exported.returncode == 0 and f"v{champion} (sha " in exported.stdout, exported.stderr
    listed = run("bentoml", "models", "list", "-o", "json")
    assert p["register"]["bento_model"] in listed.stdout
    # known failures: one line naming the cause, exit 2, no traceback
    for cmd, args, says in [("riskops-promote", ["99", "--reason", "x"], "has no version 99"),
                            ("riskops-promote", [champion, "--reason", "x"], "already the champion"),
                            ("riskops-export", ["42"], "has no version 42"),
                            ("riskops-export", ["nosuch"], "has no 'nosuch' alias")]:
        out = run(cmd, *args)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, (cmd, args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def check_resolver_refusals(setting):
    "An alias moved outside the commands, and a version whose recorded sha is not its bundle's, are refused."
    from mlflow import MlflowClient
    p, *_ = setting
    reg, client = Registry(p["mlflow"]["registered_model"]), MlflowClient()
    champion = reg.alias(CHAMPION)
    other = next(v for v in reg.known() if v != champion)
    client.set_registered_model_alias(reg.name, CHAMPION, other)  # as the MLflow UI would
    try:
        with pytest.raises(BundleError, match="moved outside riskops-promote"):
            resolve(CHAMPION, p)
    finally:
        client.set_registered_model_alias(reg.name, CHAMPION, champion)
    assert resolve(CHAMPION, p).version == champion
    recorded = reg.model_version(champion).tags["bundle_sha"]
    client.set_model_version_tag(reg.name, champion, "bundle_sha", "0" * 64)  # the stored bundle is not the one promised
    try:
        with pytest.raises(BundleError, match="MANIFEST.json: sha256"):
            resolve(champion, p)
    finally:
        client.set_model_version_tag(reg.name, champion, "bundle_sha", recorded)


CRITERIA = {"min_auc": 0.75, "min_gini_gain_over_baseline": 0.10, "max_auc_drop_vs_champion": 0.005, "max_ece": 0.03,
            "min_disparate_impact_ratio": 0.8, "max_equalized_odds_difference": 0.2, "max_robustness_auc_drop": 0.05}
SMALL_GROUPS = {"min_disparate_impact_ratio": None, "max_equalized_odds_difference": None,
                "columns": {"AGE": {"groups_compared": 1, "groups": {"[18, 45)": {"rows": 163}, "[45, 121)": {"rows": 37}}}}}


def test_gate_refuses_what_it_cannot_assess_and_says_why(params):
    metrics = {"model": "xgboost", "auc": 0.79, "gini": 0.58, "baseline_gini": 0.5, "ece": 0.01}
    fair = {"min_disparate_impact_ratio": 0.9, "max_equalized_odds_difference": 0.05}
    assert all(r["passed"] and r["assessed"] for r in gate(metrics, params["register"], 0.789, fair, {"worst_auc_drop": 0.01}))
    results = gate(metrics, CRITERIA, None, SMALL_GROUPS, fairness_min_rows=100)
    unassessed = [r for r in results if not r["assessed"]]
    assert [r["criterion"] for r in results if not r["passed"]] == [r["criterion"] for r in unassessed] == [
        "fairness: disparate-impact ratio", "fairness: equalized-odds difference"]
    assert all(r["value"] is None and r["status"] == "not assessed" for r in unassessed)
    why = "AGE group [45, 121) has 37 test rows, fewer than evaluate.fairness_min_rows 100"
    assert unassessed[0]["reason"] == why
    summary = gate_summary(results)
    assert summary.startswith("refused: fairness: disparate-impact ratio not assessed: " + why) and "nan" not in summary
    warned = gate(metrics, CRITERIA | {"unassessable": "warn"}, None, SMALL_GROUPS, fairness_min_rows=100)
    assert all(r["passed"] for r in warned)
    assert gate_summary(warned).startswith("passed every criterion it could assess (fairness: disparate-impact ratio not assessed")
    no_protected = gate(metrics, CRITERIA, None, {"min_disparate_impact_ratio": None, "max_equalized_odds_difference": None,
                                                  "columns": {}})
    assert no_protected[-1]["reason"] == "no protected column (columns.protected is empty)"
    with pytest.raises(ParamsError, match="register.unassessable: 'maybe' is not one of refuse, warn"):
        gate(metrics, CRITERIA | {"unassessable": "maybe"})


def test_a_baseline_winner_is_judged_against_the_runner_up():
    base = {"model": "baseline", "auc": 0.80, "gini": 0.60, "baseline_gini": 0.60, "ece": 0.01}
    kept = gate(base | {"xgboost_gini": 0.61}, CRITERIA)
    gain = kept[1]
    assert gain["criterion"] == "relative Gini gain of the runner-up (xgboost) over the baseline, the winner"
    assert gain["value"] == pytest.approx(0.61 / 0.60 - 1) and gain["rule"] == "<" and gain["passed"]
    assert gate_summary(kept) == "passed every criterion"
    beaten = gate(base | {"xgboost_gini": 0.70}, CRITERIA)[1]  # the runner-up gains the bar on test: not the baseline
    assert not beaten["passed"] and "preferred only with a gain of at least 0.1" in beaten["reason"]
    xgb = gate({"model": "xgboost", "auc": 0.8, "gini": 0.6, "baseline_gini": 0.6, "ece": 0.01}, CRITERIA)[1]
    assert xgb["criterion"] == "relative Gini gain over baseline" and xgb["value"] == 0 and not xgb["passed"]


def test_a_champion_of_another_schema_is_not_compared():
    metrics = {"model": "xgboost", "auc": 0.79, "gini": 0.58, "baseline_gini": 0.5, "ece": 0.01}
    note = "champion version 3 was trained on another feature schema (numeric, features differ): not compared"
    results = gate(metrics, CRITERIA, None, champion_note=note, champion_comparable=False)
    row = next(r for r in results if r["criterion"] == "AUC drop vs champion")
    assert row["status"] == "not compared" and row["passed"] and row["value"] is None and row["reason"] == note
    assert gate_summary(results) == f"passed every criterion it could assess (AUC drop vs champion not compared: {note})"
    unscorable = gate(metrics, CRITERIA, None, champion_note="the champion could not be scored (KeyError)")
    assert gate_summary(unscorable) == "refused: AUC drop vs champion not assessed: the champion could not be scored (KeyError)"


def test_model_card_describes_the_data_from_params(params):
    from pipeline.registry import model_card
    m = {k: 0.5 for k in ("auc", "gini", "ks", "pr_auc", "brier", "log_loss", "threshold", "approval_rate",
                          "default_rate_approved", "precision", "recall", "brier_uncalibrated", "ece", "ece_uncalibrated",
                          "default_rate_test")}
    m |= {f"baseline_{k}": 0.4 for k in ("auc", "gini", "ks", "pr_auc", "brier", "log_loss")} | {"model": "xgboost"}
    p = {**params, "data": {**params["data"], "description": "one row per small-business loan", "unit": "small business",
                            "period": "2019 to 2021"}}
    info = {"registered_model": "m", "version": "1", "criteria": gate(m, CRITERIA, None, SMALL_GROUPS)}
    card = model_card(p, info, m, {"rows_in": 10, "rows_passed": 9, "rows_quarantined": 1}, {})
    assert "small business" in card and "one row per small-business loan" in card and "2019 to 2021" in card
    assert "credit-card" not in card and "six-month" not in card and "nan" not in card
    assert "FAIL (not assessed: AGE group [45, 121) has 37 test rows" in card


def test_stages_exit_2_with_the_key_path_on_a_params_mistake(tmp_path, params):
    "Every stage and console script: one line per mistake naming the key path, exit 2, no traceback, no data read."
    bad = {**params, "data": {**params["data"], "positive": 7}, "register": {**params["register"], "unassessable": "maybe"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    env = dict(os.environ)
    commands = [[str(BIN / "python"), "-m", f"pipeline.{m}"] for m in ("validate", "featurize", "train", "evaluate", "registry")]
    commands += [[str(BIN / "riskops-models")], [str(BIN / "riskops-export")]]
    for cmd in commands:
        out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 2, (cmd, out.stderr[-2000:])
        assert "data.positive: 7 is not one of data.target_values" in out.stderr, (cmd, out.stderr)
        assert "Traceback" not in out.stderr, (cmd, out.stderr)
    registry_only = {**params, "register": {**params["register"], "unassessable": "maybe"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(registry_only))
    out = subprocess.run([str(BIN / "python"), "-m", "pipeline.registry"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "register.unassessable: 'maybe' is not one of refuse, warn", out.stderr


def test_data_contradicting_params_exits_2_naming_the_key(tmp_path, params):
    "Declared columns missing from the file, a positive value never seen: one line each with the key path, exit 2."
    pd.DataFrame({"Income": [1.0, 2.0, 3.0], "status": ["good", "bad", "good"]}).to_csv(tmp_path / "loans.csv", index=False)
    p = {**params, "data": {**params["data"], "path": "loans.csv", "target": "status", "target_values": ["good", "bad"],
                            "positive": "bad"},
         "columns": {**params["columns"], "numeric": {"income": {}}, "categorical": {}, "protected": []},
         "featurize": {**params["featurize"], "ratios": {}, "aggregates": {}},
         "validate": {**params["validate"], "rules": [], "rule_max_share": {}},
         "evaluate": {**params["evaluate"], "fairness_bands": {}}, "explain": {**params["explain"], "descriptions": {}},
         "batches": {**params["batches"], "shifts": {}}, "serve": {**params["serve"], "heuristic": {**params["serve"]["heuristic"], "weights": {}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert subprocess.run([str(BIN / "riskops-check")], cwd=tmp_path, capture_output=True, text=True).returncode == 0
    out = subprocess.run([str(BIN / "python"), "-m", "pipeline.validate"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == ("columns.numeric.income: 'income' is not a column of loans.csv (columns: Income, status); "
                                  "did you mean 'Income'?"), out.stderr
    pd.DataFrame({"income": [1.0, 2.0], "status": ["good", "good"]}).to_csv(tmp_path / "loans.csv", index=False)
    out = subprocess.run([str(BIN / "python"), "-m", "pipeline.validate"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == (
        "data.positive: 'bad' never occurs in column 'status' of loans.csv (values seen: 'good')"), out.stderr
    assert not (tmp_path / "data/validated").exists()
