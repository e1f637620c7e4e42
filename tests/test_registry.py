"""Champion/challenger against a real (temporary) MLflow store: the gate refuses a worse model with the
reason, promotes a good one, rollback restores the previous champion, every move is in the audit log;
replacing the champion needs recorded approvals by different people, and a forced promotion is audited as such."""
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
from pipeline.registry import (CHALLENGER, CHAMPION, Registry, approve, approve_cli, approvals_of, card_info,
                               compare_with_champion, gate, gate_summary, model_card, promote, promote_cli,
                               promote_on_gate, register_candidate, rollback, rollback_cli, write_card)
from pipeline.train import cross_fit, train_models
from pipeline.params import ParamsError
from pipeline.validate import validate_frame
from tests.conftest import BIN, deep_merge, make_bundle


@pytest.fixture(scope="module")
def setting(raw, params, tmp_path_factory):
    "Full default data, default gate criteria, a short search; a fresh MLflow store."
    tmp = tmp_path_factory.mktemp("registry")
    p = {**params, "train": {**params["train"], "n_trials": 3, "ensemble_top_k": 1, "cv_folds": 3},
         "evaluate": {**params["evaluate"], "bootstrap": 20}}
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

    p8 = {**p, "train": {**p["train"], "n_trials": 8, "ensemble_top_k": 2}}  # a longer search, a bigger ensemble: a new bundle
    better = register(setting, reg, train_models(splits, featurizer, p8, progress=False)["models"])
    assert p["register"]["approvals_required"] == 1  # params.yaml: passing the gate is not enough to replace a champion
    assert better["verdict"].startswith("passed") and not better["promoted"] and reg.alias(CHALLENGER) == better["version"]
    assert f"riskops-approve {better['version']} --by NAME" in better["awaiting"]
    with pytest.raises(BundleError, match="has 0 of the 1 approvals"):
        promote(reg, better["version"], "not approved yet")
    approve(reg, better["version"], "model risk", "validated on the same test split")
    promote(reg, better["version"], "approved by model risk")
    assert reg.alias(CHAMPION) == better["version"] and better["previous_champion"] == first["version"]

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


# --- Approvals: a store with versions carrying the tags the gate sets, no models trained (seconds, not minutes) ---

@pytest.fixture(scope="module")
def approvals_store(tmp_path_factory):
    "A fresh MLflow store, the working directory; each test registers its own model name in it."
    tmp = tmp_path_factory.mktemp("approvals")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.chdir(tmp)
    yield tmp
    mp.undo()


def versions(name: str, gates: list[str], params: dict) -> Registry:
    """Registered model `name`, one version per gate verdict (tags bundle_sha, gate, gate_detail), each made challenger
    as `register_candidate` does; version 1, registered into an empty store, becomes the first champion."""
    reg = Registry(name)
    reg.client.create_registered_model(name)
    for i, verdict in enumerate(gates, 1):
        v = reg.client.create_model_version(name, source=f"file:///nowhere/{name}/{i}")
        for k, value in {"bundle_sha": f"{i:064x}", "gate": verdict, "gate_detail": "[]"}.items():
            reg.client.set_model_version_tag(name, v.version, k, value)
        reg.move_alias(CHALLENGER, str(v.version), "register", "new candidate")
        if i == 1: assert promote_on_gate(reg, "1", "passed every criterion", params) is None  # no champion yet: exempt
    return reg


def test_the_first_champion_is_exempt_and_an_approval_counts_once_per_person(approvals_store, params):
    reg = versions("approve-once", ["passed", "passed"], params)
    first = next(e for e in reg.audit_log() if e["alias"] == CHAMPION)
    assert first["to"] == "1" and "first champion of this store" in first["exempt"] and first["approvals_required"] == 1
    assert approve(reg, "2", "Ann  Lee", "validated")["by"] == "Ann Lee"
    with pytest.raises(BundleError, match="Ann Lee already approved version 2"):
        approve(reg, "2", " ann lee ", "once more")  # the same person, however spelt
    with pytest.raises(BundleError, match="--reason is empty"):
        approve(reg, "2", "Bo", "  ")
    with pytest.raises(BundleError, match="has no version 9"):
        approve(reg, "9", "Bo", "x")
    assert [a["by"] for a in approvals_of(reg.model_version("2").tags)] == ["Ann Lee"]
    assert reg.champion_history() == ["1"] and reg.version_of(CHAMPION) == "1"  # approvals move no alias
    assert reg.version_of(CHALLENGER) == "2"
    waiting = promote_on_gate(reg, "2", "passed every criterion", params)  # the register stage, with a champion
    assert "waits as challenger for 1 approval(s)" in waiting and reg.alias(CHAMPION) == "1"
    sandbox = deep_merge(params, {"register": {"approvals_required": 0}})
    assert promote_on_gate(reg, "2", "passed every criterion", sandbox) is None and reg.alias(CHAMPION) == "2"
    assert "exempt" not in reg.audit_log()[-2] and reg.audit_log()[-2]["approvals_required"] == 0


def account(monkeypatch, name: str) -> None:
    "Run what follows as the account `name` (getpass.getuser reads LOGNAME first)."
    monkeypatch.setenv("LOGNAME", name)


def test_promotion_needs_the_recorded_approvals_and_rollback_none(approvals_store, params, monkeypatch):
    reg = versions("approve-two", ["passed", "passed"], params)
    account(monkeypatch, "ann")
    approve(reg, "2", "Ann", "validated")
    with pytest.raises(BundleError, match=r"version 2 has 1 of the 2 approvals .* `riskops-approve 2 --by NAME"):
        promote(reg, "2", "one is not enough", required=2)
    assert reg.alias(CHAMPION) == "1"
    account(monkeypatch, "bo")
    approve(reg, "2", "Bo", "reviewed the fairness figures")
    entry = promote(reg, "2", "validated and reviewed", required=2)
    assert (entry["action"], entry["forced"], entry["approvals"]) == ("promote", False, ["Ann", "Bo"])
    assert reg.alias(CHAMPION) == "2" == reg.version_of(CHAMPION) and reg.champion_history() == ["1", "2"]
    assert rollback(reg, "incident")["to"] == "1" == reg.alias(CHAMPION)  # version 1 has no approvals: not needed


def test_a_forced_promotion_is_audited_as_forced_with_what_it_bypassed(approvals_store, params):
    reg = versions("approve-forced", ["passed", "refused"], params)
    with pytest.raises(BundleError, match=r"did not pass the gate \(refused\) and has 0 of the 1 approvals"):
        promote(reg, "2", "try")
    entry = promote(reg, "2", "regulator deadline", force=True)
    assert (entry["action"], entry["forced"]) == ("forced-promote", True)
    assert entry["bypassed"] == ["gate (refused)", "approvals (0 of 1 recorded)"]
    lines = [json.loads(l) for l in (approvals_store / "models/registry_audit.jsonl").read_text().splitlines()]
    assert lines[-2] == reg.audit_log()[-2] == entry and reg.audit_log()[-1]["alias"] == CHALLENGER  # 2 left challenger
    assert reg.alias(CHAMPION) == "2"


def card_metrics() -> dict:
    "Every figure a model card shows (0.5, baseline 0.4)."
    m = {k: 0.5 for k in ("auc", "gini", "ks", "pr_auc", "brier", "log_loss", "threshold", "approval_rate",
                          "default_rate_approved", "precision", "recall", "brier_uncalibrated", "ece", "ece_uncalibrated",
                          "default_rate_test")}
    return m | {f"baseline_{k}": 0.4 for k in ("auc", "gini", "ks", "pr_auc", "brier", "log_loss")} | {"model": "xgboost"}


def test_approvals_are_in_the_audit_log_in_order_and_on_the_model_card(approvals_store, params, monkeypatch):
    from pipeline.bundle import write_bundle
    reg = versions("approve-card", ["passed", "passed", "refused"], params)
    account(monkeypatch, "ann")
    approve(reg, "2", "Ann", "validated | signed")
    account(monkeypatch, "bo")
    approve(reg, "2", "Bo", "fairness reviewed")
    promote(reg, "2", "two approvals")
    log = [(e["action"], e["alias"], e.get("version") or e["to"], e.get("by")) for e in reg.audit_log()]
    assert log[-5:] == [("register", CHALLENGER, "2", None), ("register", CHALLENGER, "3", None), ("approve", None, "2", "Ann"),
                        ("approve", None, "2", "Bo"), ("promote", CHAMPION, "2", None)]
    info = {"registered_model": reg.name, "version": "2", "criteria": []}
    card = model_card(params, info | card_info(reg, "2", params), card_metrics(), {"rows_in": 1, "rows_passed": 1,
                                                                                 "rows_quarantined": 0}, {})
    approvals = card.split("## Approvals\n", 1)[1].split("\n## ", 1)[0]
    assert "(promote): two approvals" in approvals and "`register.approvals_required`: 1" in approvals
    assert "| 1 | Ann |" in approvals and "validated \\| signed" in approvals and "| 2 | Bo |" in approvals
    assert "Forced" not in approvals and "without approvals" not in approvals
    promote(reg, "3", "deadline", force=True)
    forced = model_card(params, info | {"version": "3"} | card_info(reg, "3", params), card_metrics(),
                        {"rows_in": 1, "rows_passed": 1, "rows_quarantined": 0}, {})
    assert "**Forced promotion**: it bypassed gate (refused); approvals (0 of 1 recorded)." in forced
    assert "No approvals recorded (`register.approvals_required`: 1)." in forced
    first = model_card(params, info | {"version": "1"} | card_info(reg, "1", params), card_metrics(),
                       {"rows_in": 1, "rows_passed": 1, "rows_quarantined": 0}, {})
    assert "Promoted without approvals: the first champion of this store" in first
    # the card file: only for the version whose bundle is this working tree's models/bundle
    assert write_card(reg, "3", params).startswith("models/MODEL_CARD.md not rewritten")
    sha = write_bundle(approvals_store / "models/bundle", {"toy": 1}, {}, {})
    reg.client.set_model_version_tag(reg.name, "3", "bundle_sha", sha)
    for name, obj in {"metrics/evaluate.json": card_metrics(), "reports/validation.json": {"rows_in": 2, "rows_passed": 2,
                      "rows_quarantined": 0}, "metrics/fairness.json": {"columns": {}}}.items():
        (approvals_store / name).parent.mkdir(parents=True, exist_ok=True)
        (approvals_store / name).write_text(json.dumps(obj))
    (approvals_store / "data/split").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({params["data"]["target"]: params["data"]["target_values"]}).to_parquet(approvals_store / "data/split/test.parquet")
    assert write_card(reg, "3", params) == "wrote models/MODEL_CARD.md (version 3)"
    text = (approvals_store / "models/MODEL_CARD.md").read_text()
    assert text.startswith(f"# Model card: {reg.name} version 3\n") and "**Forced promotion**" in text and sha in text


def test_approve_and_promote_commands_refuse_in_one_line(approvals_store, params, capsys, root):
    assert "riskops-approve=pipeline.registry:approve_cli" in (root / "settings.ini").read_text()
    p = deep_merge(params, {"mlflow": {"registered_model": "approve-cli"}})
    (approvals_store / "params.yaml").write_text(yaml.safe_dump(p))
    versions("approve-cli", ["passed", "passed"], p)
    with pytest.raises(SystemExit) as help_:
        approve_cli(["--help"])
    assert help_.value.code == 0 and "--by" in capsys.readouterr().out

    def refused(cli, args, says):
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err

    refused(promote_cli, ["2", "--reason", "x"], "riskops-promote: version 2 has 0 of the 1 approvals")
    refused(promote_cli, ["2", "--reason", "  "], "riskops-promote: --reason is empty")
    refused(rollback_cli, ["--reason", ""], "riskops-rollback: --reason is empty")
    assert approve_cli(["2", "--by", "Ann", "--reason", "validated"]) == 0
    assert "version 2: approved by Ann, 1 of 1 approvals recorded; promote it with `riskops-promote 2" in capsys.readouterr().out
    refused(approve_cli, ["2", "--by", "ANN", "--reason", "again"], "riskops-approve: Ann already approved version 2")
    refused(approve_cli, ["2", "--by", "Bo", "--reason", ""], "riskops-approve: --reason is empty")
    refused(approve_cli, ["9", "--by", "Bo", "--reason", "x"], "riskops-approve: approve-cli has no version 9")
    assert promote_cli(["2", "--reason", "validated by Ann"]) == 0
    out = capsys.readouterr()
    assert "champion: version 1 -> 2" in out.out and "models/MODEL_CARD.md not rewritten" in out.err



def test_concurrent_writers_lose_no_audit_entry_or_approval_and_old_keys_are_read(approvals_store, params):
    import threading
    from pipeline.bundle import entry_key, keys_in_order
    reg = versions("concurrent", ["passed", "passed"], params)
    name = reg.name
    # entries of older code: counted keys, read first and in their order
    reg.client.set_registered_model_tag(name, "audit.000001", json.dumps({"action": "old", "alias": None, "why": "1"}))
    reg.client.set_model_version_tag(name, "2", "approval.001", json.dumps({"by": "Old", "at": "t", "reason": "r", "who": "old"}))
    writers, each, start = 4, 6, threading.Barrier(4 + 3)
    errors = []

    def write(i):
        mine = Registry(name)  # its own client, as another command would have
        start.wait()
        try:
            for k in range(each): mine.append_audit("note", f"writer {i} entry {k}")
        except Exception as e: errors.append(e)

    def approving(who):
        mine = Registry(name)
        start.wait()
        try: approve(mine, "2", who, "looked at it", force=True)  # one account here: recorded as forced
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)] + \
              [threading.Thread(target=approving, args=(who,)) for who in ("Ann", "Bo", "Cy")]
    for t in threads: t.start()
    for t in threads: t.join(120)
    assert not errors, errors
    log = reg.audit_log()
    notes = [e["why"] for e in log if e["action"] == "note"]
    assert sorted(notes) == sorted(f"writer {i} entry {k}" for i in range(writers) for k in range(each))  # none lost
    for i in range(writers):  # each writer's entries in the order it wrote them
        assert [n for n in notes if n.startswith(f"writer {i} ")] == [f"writer {i} entry {k}" for k in range(each)]
    assert log[0]["action"] == "old" and sorted(e["by"] for e in log if e["action"] == "approve") == ["Ann", "Bo", "Cy"]
    tags = reg.model_version("2").tags
    approvals = approvals_of(tags)
    assert approvals[0]["by"] == "Old" and sorted(a["by"] for a in approvals[1:]) == ["Ann", "Bo", "Cy"]
    keys = keys_in_order(reg.client.get_registered_model(name).tags, "audit")
    assert len(keys) == len(set(keys)) == len(log) and keys[0] == "audit.000001"
    ats = [json.loads(reg.client.get_registered_model(name).tags[k])["at"] for k in keys[1:]]
    assert ats == sorted(ats)  # the keys sort in time order
    a, b = entry_key("audit"), entry_key("audit")
    assert a != b and a < b or a[:-9] == b[:-9]


def test_two_approvals_need_two_accounts_and_two_names_unless_forced(approvals_store, params, monkeypatch, capsys):
    from pipeline.registry import counted_approvals
    reg = versions("approve-accounts", ["passed", "passed"], params)
    account(monkeypatch, "ops")
    approve(reg, "2", "Ann", "validated")
    with pytest.raises(BundleError, match=r"the account 'ops' already approved version 2 \(as Ann.*two different accounts and names"):
        approve(reg, "2", "Bo", "another name, the same account")
    account(monkeypatch, "bo")
    with pytest.raises(BundleError, match="Ann already approved version 2"):
        approve(reg, "2", "ann", "the same name, another account")
    assert [a["by"] for a in approvals_of(reg.model_version("2").tags)] == ["Ann"]
    with pytest.raises(BundleError, match="has 1 of the 2 approvals"):
        promote(reg, "2", "one person", required=2)
    # --force records it, audited as forced with what it bypassed, and then it counts
    account(monkeypatch, "ops")
    forced = approve(reg, "2", "Bo", "a shared operations account", force=True)
    assert forced["forced"] is True and forced["who"] == "ops" and "the account 'ops' already approved (as Ann)" in forced["bypassed"][0]
    entry = reg.audit_log()[-1]
    assert (entry["action"], entry["by"], entry["forced"], entry["who"]) == ("approve", "Bo", True, "ops")
    assert promote(reg, "2", "two approvals, one forced", required=2)["approvals"] == ["Ann", "Bo"]
    # what counts: a name or an account seen before does not count again (approvals recorded by older code too)
    rec = lambda by, who, **kw: {"by": by, "who": who, "at": "t", "reason": "r"} | kw
    assert [a["by"] for a in counted_approvals([rec("Ann", "ops"), rec("Bo", "ops"), rec("ann ", "x"), rec("Cy", "cy")])] == ["Ann", "Cy"]
    assert len(counted_approvals([rec("Ann", "ops"), rec("Bo", "ops", forced=True)])) == 2
    # the command: --force, and the refusal in one line
    p = deep_merge(params, {"mlflow": {"registered_model": "approve-accounts-cli"}})
    (approvals_store / "params.yaml").write_text(yaml.safe_dump(p))
    versions("approve-accounts-cli", ["passed", "passed"], p)
    from pipeline.registry import approve_cli
    assert approve_cli(["2", "--by", "Ann", "--reason", "validated"]) == 0
    capsys.readouterr()
    assert approve_cli(["2", "--by", "Bo", "--reason", "again"]) == 2
    err = capsys.readouterr().err
    assert "riskops-approve: the account 'ops' already approved version 2" in err and len(err.strip().splitlines()) == 1
    assert approve_cli(["2", "--by", "Bo", "--reason", "shared account", "--force"]) == 0
    assert "2 of 1 approvals recorded" in capsys.readouterr().out
