"""The pipeline on a data set it has never seen, described only through params.yaml: string categoricals,
missing values, an id column and a good/bad target. Real `dvc repro` in a temporary copy."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import copy_repo, load_yaml, mlflow_env, run


def make_dataset(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.5, n)
    debt = income * rng.uniform(0, 1.5, n)
    late = rng.poisson(0.4, (n, 3))
    employment = rng.choice(["salaried", "self-employed", "unemployed"], n, p=[0.6, 0.3, 0.1])
    logit = -2.5 + 1.5 * debt / income + 0.8 * late.sum(axis=1) + 1.0 * (employment == "unemployed")
    bad = rng.random(n) < 1 / (1 + np.exp(-logit))
    df = pd.DataFrame({"customer_id": [f"C{i:05d}" for i in range(n)], "income": income.round(2),
                       "debt": debt.round(2), "age": rng.integers(18, 80, n),
                       **{f"late_{m}": late[:, m] for m in range(3)},
                       "region": rng.choice(["north", "south", "east", "west"], n), "employment": employment,
                       "status": np.where(bad, "bad", "good")})
    df.loc[rng.choice(n, n // 20, replace=False), "income"] = np.nan     # allowed: income is nullable
    df.loc[rng.choice(n, n // 30, replace=False), "region"] = None       # allowed: region is nullable
    df.loc[:9, "status"] = "unknown"                                     # 10 rows with a bad target
    df.loc[10:19, "age"] = 200                                          # 10 rows out of range
    return df


def params_for(base: dict) -> dict:
    p = dict(base)
    p["data"] = {"path": "data/raw/loans.csv", "id": "customer_id", "target": "status",
                 "target_values": ["good", "bad"], "positive": "bad", "sample_rows": None, "sample_seed": 1}
    p["columns"] = {"numeric": {"income": {"min": 0, "nullable": True}, "debt": {"min": 0}, "age": {"min": 18, "max": 100},
                                "late_0": {"min": 0}, "late_1": {"min": 0}, "late_2": {"min": 0}},
                    "categorical": {"region": {"codes": ["north", "south", "east", "west"], "nullable": True},
                                    "employment": {"codes": None}},
                    "protected": ["age"], "drop": []}
    p["featurize"] = {**base["featurize"], "ratios": {"debt_to_income": ["debt", "income"]},
                      "aggregates": {"late_total": {"fn": "sum", "cols": ["late_0", "late_1", "late_2"]}}}
    p["validate"] = {**base["validate"], "rules": [{"name": "debt within 2x income", "expr": "debt <= 2 * income"}],
                     "rule_max_share": {}}
    p["batches"] = {**base["batches"], "shifts": {"income": {"scale": 0.6}, "region": {"set": "north", "share": 0.5}}}
    p["train"] = {**base["train"], "n_trials": 3, "max_rounds": 300}
    p["explain"] = {**base["explain"], "sample_rows": 200, "descriptions": {"debt_to_income": "debt / income", "late_0": "late payments, last month"}}
    p["evaluate"] = {**base["evaluate"], "fairness_bands": {"age": [18, 30, 45, 60, 101]}}
    p["serve"] = {**base["serve"], "heuristic": {**base["serve"]["heuristic"], "weights": {"late_0": 0.5, "late_1": 0.3}}}
    return p


def test_pipeline_runs_on_a_generated_dataset(tmp_path, root):
    repo = copy_repo(tmp_path)
    (repo / "data/raw/loans.csv").parent.mkdir(parents=True, exist_ok=True)
    make_dataset().to_csv(repo / "data/raw/loans.csv", index=False)
    (repo / "params.yaml").write_text(yaml.safe_dump(params_for(load_yaml(root / "params.yaml")), sort_keys=False))
    run(["dvc", "repro"], repo, mlflow_env(tmp_path))

    validation = json.loads((repo / "reports/validation.json").read_text())
    assert validation["rows_in"] == 3000 and validation["rows_quarantined"] == 20
    assert validation["rules"] == {"status: allowed codes": 10, "age: max 100": 10}
    quarantine = pd.read_csv(repo / "data/quarantine/rows.csv")
    assert sorted(quarantine["_row"]) == list(range(20))
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert metrics["auc"] > 0.7 and metrics["baseline_auc"] > 0.7
    importance = pd.read_csv(repo / "reports/shap_importance.csv")
    assert importance.feature.iloc[0] in {"debt_to_income", "late_total", "late_0", "late_1", "late_2"}
    assert any(f.startswith("employment_") for f in importance.feature)
    drift = json.loads((repo / "metrics/drift.json").read_text())
    assert set(drift["features"]) == {"income", "debt", "age", "late_0", "late_1", "late_2", "region", "employment"}
    assert drift["features"]["region"]["psi"] < 0.1
    months = sorted((repo / "data/batches/sudden").glob("month_*.parquet"))  # as many as drift.min_rows allows
    assert len(months) >= 3
    sudden = pd.read_parquet(months[-1])
    assert (sudden["region"] == "north").mean() > 0.5 and (sudden["age"] <= 100).all()
    report = (repo / "reports/model_report.html").read_text()  # the report stage on string codes and a good/bad target
    assert "ROC AUC" in report and f"{metrics['auc']:.4f}" in report and "<strong>age</strong>" in report
