"""The pipeline on data sets it has never seen, described only through params.yaml, end to end: `dvc repro` on a
small profile in a temporary copy of the repository, the batch job on the test split, `riskops-export` and one
`/score` over HTTP on a real `bentoml serve`, whose reason codes name the applicant's own fields and values.

Three generated sets: (a) string categoricals full of punctuation, unicode and 200-character values, column names
with spaces and dots, missing values and a good/bad target; (b) an id column and a 0/1 target stored as strings
(parquet); (c) features linear in the log-odds, where the logistic baseline wins and can be champion."""
import json
import os
import time

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from tests.conftest import BIN, copy_repo, deep_merge, load_yaml, mlflow_env, run

LONG = "very long category " + "é" * 181  # 200 characters
ODD = ['<500 m² / "A"', "[x] \\ y: z, w; 'q'", "Ünïcødé ✓ ok", LONG, "plain"]


def punctuation_set(n: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    kind = rng.choice(ODD, n)
    late = rng.poisson(0.5, n)
    income = rng.lognormal(8, 0.4, n)
    logit = -1.2 + 0.9 * late + 1.2 * (kind == ODD[0]) - 0.8 * (kind == LONG) - 0.4 * np.log(income / 3000)
    bad = rng.random(n) < 1 / (1 + np.exp(-logit))
    df = pd.DataFrame({"monthly income": income.round(2), "late.payments": late, "age": rng.integers(18, 80, n),
                       "home type": kind, "job.title": rng.choice(["a / b", "c<d>", "e [f]"], n),
                       "outcome": np.where(bad, "bad", "good")})
    df.loc[rng.choice(n, n // 20, replace=False), "monthly income"] = np.nan
    df.loc[rng.choice(n, n // 25, replace=False), "job.title"] = None
    return df, {"data": {"path": "data/raw/odd.csv", "target": "outcome", "target_values": ["good", "bad"], "positive": "bad"},
                "columns": {"numeric": {"monthly income": {"min": 0, "nullable": True}, "late.payments": {"min": 0},
                                        "age": {"min": 18, "max": 100}},
                            "categorical": {"home type": {"codes": None}, "job.title": {"codes": None, "nullable": True}},
                            "protected": ["age"]},
                "evaluate": {"fairness_bands": {"age": [18, 45, 101]}},
                "serve": {"heuristic": {"weights": {"late.payments": 0.5}}}}


def string_target_set(n: int = 2000, seed: int = 1) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    debt, income = rng.lognormal(9, 0.6, n), rng.lognormal(10, 0.4, n)
    region = rng.choice(["north", "south", "east"], n)
    logit = -1.5 + 2.0 * debt / income + 0.7 * (region == "east")
    bad = rng.random(n) < 1 / (1 + np.exp(-logit))
    df = pd.DataFrame({"applicant_id": [f"A{i:06d}" for i in range(n)], "debt": debt.round(2), "income": income.round(2),
                       "region": region, "default_flag": pd.Series(np.where(bad, "1", "0"), dtype="string")})
    return df, {"data": {"path": "data/raw/flags.parquet", "id": "applicant_id", "target": "default_flag",
                         "target_values": ["0", "1"], "positive": "1"},
                "columns": {"numeric": {"debt": {"min": 0}, "income": {"min": 0}},
                            "categorical": {"region": {"codes": ["north", "south", "east"]}}, "protected": ["region"]},
                "featurize": {"ratios": {"debt_to_income": ["debt", "income"]}},
                "serve": {"heuristic": {"weights": {"debt": 0.0001}}}}


def linear_set(n: int = 2000, seed: int = 2) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8))
    w = np.array([1.0, -0.8, 0.6, -0.5, 0.4, 0.3, -0.3, 0.2])
    bad = rng.random(n) < 1 / (1 + np.exp(-(X @ w - 1.0)))
    df = pd.DataFrame(X.round(4), columns=[f"x{i}" for i in range(8)]).assign(group=rng.choice(["u", "v"], n), y=bad.astype(int))
    return df, {"data": {"path": "data/raw/linear.csv", "target": "y", "target_values": [0, 1], "positive": 1},
                "columns": {"numeric": {f"x{i}": {} for i in range(8)}, "categorical": {"group": {"codes": ["u", "v"]}},
                            "protected": ["group"]},
                "serve": {"heuristic": {"weights": {"x0": 1.0}}}}


# What every small run shares: the sections that name the default data's columns emptied, a short search.
SMALL = {"data": {"id": None, "sample_rows": None, "description": "generated for a test", "unit": "applicant", "period": "none"},
         "columns": {"drop": []},
         "validate": {"rules": [], "rule_max_share": {}},
         "featurize": {"ratios": {}, "aggregates": {}},
         "train": {"n_trials": 2, "max_rounds": 150, "early_stopping_rounds": 20, "prune_warmup_rounds": 10,
                   "ensemble_top_k": 1, "cv_folds": 2},
         "evaluate": {"fairness_bands": {}, "fairness_min_rows": 50, "bootstrap": 20,
                      "robustness": {"noise": [0.1], "missing": [0.1]}},
         "register": {"max_ece": 0.1, "min_auc": 0.65},
         "explain": {"sample_rows": 100, "dependence_plots": 2, "descriptions": {}},
         "batches": {"months": 3, "shifts": {}},
         "serve": {"workers": 1, "batch": {"model": "models/bundle"}}}

DATASETS = {"punctuation": punctuation_set, "string_target": string_target_set, "linear": linear_set}


# Mappings that replace the default data's (merged, they would keep its column names).
REPLACED = [("columns", "numeric"), ("columns", "categorical"), ("validate", "rule_max_share"), ("featurize", "ratios"),
            ("featurize", "aggregates"), ("evaluate", "fairness_bands"), ("evaluate", "robustness"),
            ("explain", "descriptions"), ("batches", "shifts"), ("serve", "heuristic", "weights")]


def params_for(base: dict, overlay: dict) -> dict:
    "The default params.yaml with SMALL and the data set's overlay put in; the mappings in REPLACED replaced, not merged."
    p = deep_merge(deep_merge(base, SMALL), overlay)
    for *path, key in REPLACED:
        node, small, mine = p, SMALL, overlay
        for k in path: node, small, mine = node[k], small.get(k, {}), mine.get(k, {})
        node[key] = mine.get(key, small.get(key, {}))
    return p


def write_data(df: pd.DataFrame, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False) if path.suffix == ".parquet" else df.to_csv(path, index=False)


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


@pytest.mark.parametrize("name", DATASETS)
def test_pipeline_end_to_end_on_a_generated_dataset(name, tmp_path, root):
    from tests.test_service import Server
    t0 = time.time()
    df, overlay = DATASETS[name]()
    (tmp_path / "repo").mkdir()
    repo = copy_repo(tmp_path / "repo")
    params = params_for(load_yaml(root / "params.yaml"), overlay)
    write_data(df, repo / params["data"]["path"])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    env = mlflow_env(tmp_path)
    run(["riskops-check"], repo, env)
    # every stage on the set with hostile values (explain names files after features); up to register for the others
    run(["dvc", "repro"] if name == "punctuation" else ["dvc", "repro", "register"], repo, env)

    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    registry = json.loads((repo / "models/registry.json").read_text())
    assert metrics["auc"] > 0.65, metrics["auc"]
    assert all(r["value"] is not None or r["reason"] for r in registry["criteria"])  # never a bare nan
    if name == "linear":  # the baseline wins and the Gini-gain criterion compares the runner-up with it
        assert metrics["model"] == "baseline"
        gain = next(r for r in registry["criteria"] if r["criterion"].startswith("relative Gini gain"))
        assert "runner-up (xgboost)" in gain["criterion"] and gain["passed"], gain
    card = repo / "models/MODEL_CARD.md"
    if card.exists():
        assert "credit-card" not in card.read_text() and "six-month" not in card.read_text()

    # the batch job on the test split, with the bundle
    scored = tmp_path / "scored.parquet"
    run(["python", "-m", "pipeline.score", "--input", "data/split/test.parquet", "--output", str(scored),
         "--model", "models/bundle"], repo, env)
    test = pd.read_parquet(repo / "data/split/test.parquet")
    assert len(pd.read_parquet(scored)) == len(test)

    # riskops-export and one /score over HTTP on a real bentoml serve
    home = tmp_path / "bentoml"
    home.mkdir()
    run(["riskops-export", "models/bundle"], repo, {**env, "BENTOML_HOME": str(home)})
    server = Server(home, repo / "params.yaml", tmp_path / "audit.sqlite", token=None)
    try:
        assert server.wait("/readyz"), (home / f"serve-{server.port}.log").read_text()[-3000:]
        applicant = json.loads(test.drop(columns=params["data"]["target"]).head(1).to_json(orient="records", force_ascii=False))[0]
        r = requests.post(server.url + "/score", json={"applicants": [applicant]}, timeout=30)
        assert r.status_code == 200, r.text
        answer = r.json()[0]
    finally:
        server.stop()
    raw_fields = set(params["columns"]["numeric"]) | set(params["columns"]["categorical"])
    engineered = set(params["featurize"]["ratios"]) | set(params["featurize"]["aggregates"])
    for reason in answer["reason_codes"]:
        assert reason["feature"] in raw_fields | engineered, reason
        if reason["feature"] in raw_fields:
            mine = applicant[reason["feature"]]
            assert (reason["value"] == "missing") if is_missing(mine) else (
                reason["value"] == pytest.approx(mine) if isinstance(mine, (int, float)) else reason["value"] == mine), (reason, mine)
    print(f"{name}: test AUC {metrics['auc']:.4f} ({metrics['model']}), gate {registry['verdict']}; {time.time() - t0:.0f} s")
