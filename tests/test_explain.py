import numpy as np
import pandas as pd
import pytest

from pipeline.explain import explain_rows, file_safe, global_importance
from pipeline.model import MergedBooster
from pipeline.rules import field_sums
from pipeline.scorer import Scorer
from tests.conftest import deep_merge, make_bundle


def test_shap_values_add_up_to_the_margin(small_trained, small_splits, small_params):
    rows = small_splits["test"].head(50)
    for name, model in small_trained["models"].items():
        explanation = explain_rows(model, rows)
        recon = explanation.values.sum(axis=1) + explanation.base_values
        assert np.abs(recon - model.margin(rows)).max() < 1e-4, name
    ensemble = small_trained["models"]["xgboost"].estimator
    assert isinstance(ensemble, MergedBooster) and len(ensemble.oof_margin_) == len(small_splits["train"]) + len(small_splits["valid"])
    importance = global_importance(explain_rows(small_trained["models"]["xgboost"], rows))
    assert importance.mean_abs_shap.is_monotonic_decreasing and len(importance) == explanation.values.shape[1]


@pytest.mark.parametrize("kind", ["xgboost", "baseline"])
def test_reason_codes_name_the_applicants_fields_with_their_values(kind, small_trained, small_splits, small_params, tmp_path):
    exact = deep_merge(small_params, {"serve": {"contributions": "exact", "reason_codes": 3},
                                      "explain": {"descriptions": {"PAY_0": "September repayment status"}}})
    bundle = make_bundle(small_trained["models"][kind], small_splits, small_params, tmp_path / kind)
    rows = small_splits["test"].head(40).copy()
    rows.loc[rows.index[:3], "EDUCATION"] = None
    answers = Scorer(bundle, exact).answers(rows)
    model = bundle.model
    explanation = explain_rows(model, rows)
    per_field, fields = field_sums(explanation.values, model.featurizer.fields_)
    declared = set(small_params["columns"]["numeric"]) | set(small_params["columns"]["categorical"])
    engineered = set(model.featurizer.ratios) | set(model.featurizer.aggregates)
    for i, answer in enumerate(answers):
        positive = sorted(per_field[i][per_field[i] > 0], reverse=True)[:3]
        assert [c["contribution"] for c in answer["reason_codes"]] == pytest.approx(positive)
        for c in answer["reason_codes"]:
            assert c["feature"] in declared | engineered  # a field, never a one-hot or indicator column
            if c["feature"] in small_params["columns"]["categorical"]:  # the applicant's own code, or missing
                got = rows[c["feature"]].iloc[i]
                assert c["value"] == ("missing" if got is None else str(got))
            elif c["feature"] in declared:
                assert c["value"] == pytest.approx(float(rows[c["feature"]].iloc[i]))
            assert "raised the risk by" in c["text"]
            if c["feature"] == "PAY_0": assert c["text"].startswith("PAY_0 (September repayment status) = ")
    # an applicant's reasons do not depend on who else is in the request
    alone = Scorer(bundle, exact).answers(rows.iloc[[7]])[0]["reason_codes"]
    assert alone == answers[7]["reason_codes"]


def test_file_names_from_feature_names_are_safe():
    for name in ["Purpose=car/new", "a\\b", "x" * 300, "ok_name"]:
        safe = file_safe(name)
        assert "/" not in safe and "\\" not in safe and len(safe) < 80
    assert file_safe("ok_name") == "ok_name" and file_safe("a/b") != file_safe("a_b")
