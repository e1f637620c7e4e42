import numpy as np
import pandas as pd
import pytest

from pipeline.core import score
from pipeline.evaluate import (assign_grade, choose_threshold, classification_metrics, curves, evaluate_models,
                               fairness_report, fairness_table, grade_edges, grade_table, perturb, robustness_report,
                               scaled_score)
from pipeline.featurize import Featurizer, split_frame
from pipeline.train import train_models
from pipeline.validate import validate_frame

Y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.9])


def test_metrics_against_hand_computed_values():
    # pairs (bad, good) ranked correctly: 0.35 beats 3 of 4 goods, the others beat all 4 -> 15/16
    t = choose_threshold(Y, P)
    assert t == 0.6  # TPR 3/4 at FPR 0 is the largest gap
    m = classification_metrics(Y, P, t)
    assert m["auc"] == pytest.approx(15 / 16)
    assert m["gini"] == pytest.approx(2 * 15 / 16 - 1)
    assert m["ks"] == pytest.approx(0.75)
    assert m["precision"] == 1.0 and m["recall"] == 0.75 and m["f1"] == pytest.approx(6 / 7)
    assert m["approval_rate"] == 5 / 8 and m["default_rate_approved"] == pytest.approx(1 / 5)
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))


def test_unknown_threshold_rule_is_refused():
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(Y, P, "magic")


def test_curves_are_thinned_and_bounded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = np.clip(y * 0.3 + rng.random(5000) * 0.7, 0, 1)
    c = curves(y, p, bins=10)
    assert len(c["roc"]) <= 200 and c["roc"].iloc[0].tolist() == [0, 0] and c["roc"].iloc[-1].tolist() == [1, 1]
    assert len(c["calibration"]) == 10 and c["calibration"].observed.between(0, 1).all()


def test_threshold_rules_by_hand():
    # approval_rate: approve the lowest-risk 75% -> the 0.75 quantile of the scores
    assert choose_threshold(Y, P, "approval_rate", approval_rate=0.75) == pytest.approx(np.quantile(P, 0.75))
    # cost with FN cost 10, FP cost 1: declining from 0.35 up misses no default and declines one good (0.4): cost 1
    assert choose_threshold(Y, P, "cost", cost_fn=10, cost_fp=1) == 0.35
    t = choose_threshold(Y, P, "cost", cost_fn=1, cost_fp=10)
    assert t == 0.6  # declining 0.6, 0.7, 0.9 misses one default (cost 1) and declines no good


def test_grades_and_scaled_score():
    edges = grade_edges(np.linspace(0, 1, 101), 4)
    assert edges == pytest.approx([0.25, 0.5, 0.75])
    assert assign_grade([0.1, 0.25, 0.6, 0.99], edges).tolist() == [1, 2, 3, 4]
    table = grade_table([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9], edges)
    assert table.default_rate.tolist() == [0, 0, 1, 1] and table.share.sum() == 1
    p50 = 1 / 51  # odds of 50 goods per bad
    assert scaled_score(p50) == pytest.approx(600)
    assert scaled_score(1 / 101) - scaled_score(p50) == pytest.approx(20 * np.log2(100 / 50))


def test_fairness_against_known_answer():
    y = np.array([0, 0, 1, 1] * 2)
    p = np.array([0.1, 0.2, 0.3, 0.9, 0.6, 0.7, 0.3, 0.9])
    table, summary = fairness_table(y, p, 0.5, pd.Series(list("aaaabbbb")), min_rows=1)
    assert table.loc["a", "approval_rate"] == 0.75 and table.loc["b", "approval_rate"] == 0.25
    assert table.loc["a", "fpr"] == 0 and table.loc["b", "fpr"] == 1 and table.loc["a", "tpr"] == table.loc["b", "tpr"] == 0.5
    assert summary["disparate_impact_ratio"] == pytest.approx(1 / 3)
    assert summary["demographic_parity_difference"] == pytest.approx(0.5)
    assert summary["equalized_odds_difference"] == pytest.approx(1.0)
    _, small = fairness_table(y, p, 0.5, pd.Series(list("aaaabbbb")), min_rows=5)
    assert small["groups_compared"] == 0 and small["disparate_impact_ratio"] is None  # not assessed, no free pass


def test_perturbations():
    df = pd.DataFrame({"a": np.arange(1000.0), "b": np.ones(1000), "c": ["x"] * 1000})
    assert perturb(df, ["a", "b"], "shift", 0.2)["a"].iloc[10] == pytest.approx(12.0)
    missing = perturb(df, ["a", "b"], "missing", 0.2)[["a", "b"]].isna().mean().mean()
    assert 0.17 < missing < 0.23
    noisy = perturb(df, ["a"], "noise", 0.1)
    assert 0.08 < (noisy.a - df.a).std() / df.a.std() < 0.12 and (noisy.c == "x").all()
    assert (perturb(df, ["a"], "outliers", 1.0).a == df.a * 10).all()
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(df, ["a"], "melt", 0.1)


@pytest.fixture(scope="module")
def evaluated(raw, params):
    "A short search on the full default data, evaluated as the evaluate stage does."
    p = {**params, "train": {**params["train"], "n_trials": 3, "ensemble_top_k": 1, "cv_folds": 3},
         "evaluate": {**params["evaluate"], "bootstrap": 20}}
    rows, _, _ = validate_frame(raw, p)
    splits = split_frame(rows, p)
    models = train_models(splits, Featurizer.from_params(p).fit(splits["train"]), p, progress=False)["models"]
    metrics, tables = evaluate_models(splits, models, "xgboost", p)
    return p, splits, models, metrics, tables


def test_bands_are_monotone_on_the_default_data(evaluated):
    p, _, _, metrics, tables = evaluated
    grades = tables["xgboost"]["grades"]
    assert metrics["grades_monotone"] and grades.default_rate.is_monotonic_increasing
    assert len(grades) == p["evaluate"]["grades"] and abs(grades.share - 1 / len(grades)).max() < 0.03
    assert metrics["auc_ci_low"] < metrics["auc"] < metrics["auc_ci_high"]
    assert metrics["ece"] < metrics["brier"] and 0 < metrics["approval_rate"] < 1


def test_fairness_and_robustness_reports_on_the_default_data(evaluated):
    p, splits, models, metrics, _ = evaluated
    fair = fairness_report(splits["test"], score(models["xgboost"], splits["test"]), metrics["threshold"], p)
    assert set(fair["columns"]) == {"SEX", "AGE"}
    assert set(fair["columns"]["AGE"]["groups"]) == {"[18, 25)", "[25, 35)", "[35, 45)", "[45, 55)", "[55, 121)"}
    assert fair["min_disparate_impact_ratio"] == min(c["disparate_impact_ratio"] for c in fair["columns"].values())
    robust = robustness_report(models["xgboost"], splits["test"], p)
    assert robust["clean_auc"] == pytest.approx(metrics["auc"])
    drops = [s["auc_drop"] for s in robust["scenarios"].values()]
    assert robust["worst_auc_drop"] == max(drops) > 0
    noise = [robust["scenarios"][f"noise_{lvl}"]["auc"] for lvl in p["evaluate"]["robustness"]["noise"]]
    assert noise == sorted(noise, reverse=True)  # more noise, lower AUC


def test_grade_table_points_fall_as_risk_rises():
    table = grade_table([0, 1, 0, 1], [0.05, 0.3, 0.5, 0.9], [0.2, 0.6], {"base_score": 600, "base_odds": 50, "pdo": 20})
    assert table.points_high.is_monotonic_decreasing and (table.points_high > table.points_low).all()
    assert table.points_low.iloc[0] == pytest.approx(scaled_score(0.2), abs=0.05)
    assert table.points_high.iloc[1] == table.points_low.iloc[0]
