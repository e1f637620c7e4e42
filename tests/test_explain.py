import numpy as np
import pytest

from pipeline.explain import explain_rows, global_importance
from pipeline.featurize import build_featurizer
from pipeline.train import MarginEnsemble, train_models, uncalibrated
from tests.test_train import small_splits  # noqa: F401  (fixture)


def test_shap_values_add_up_to_the_margin(small_splits, small_params):
    featurizer = build_featurizer(small_params).fit(small_splits["train"])
    models = train_models(small_splits, featurizer, small_params, progress=False)["models"]
    rows = small_splits["test"].head(50)
    for name, model in models.items():
        explanation = explain_rows(model, rows)
        pipe = uncalibrated(model)
        margin = pipe[-1].decision_function(pipe[:-1].transform(rows))
        recon = explanation.values.sum(axis=1) + explanation.base_values
        assert np.abs(recon - margin).max() < 1e-4, name
    ensemble = uncalibrated(models["xgboost"])[-1]
    t = small_params["train"]
    assert isinstance(ensemble, MarginEnsemble) and len(ensemble.hps) == min(t["ensemble_top_k"], t["n_trials"])
    importance = global_importance(explain_rows(models["xgboost"], rows))
    assert importance.mean_abs_shap.is_monotonic_decreasing and len(importance) == explanation.values.shape[1]


def test_reason_codes_are_the_largest_positive_contributions(small_splits, small_params):
    from pipeline.explain import reason_codes
    featurizer = build_featurizer(small_params).fit(small_splits["train"])
    model = train_models(small_splits, featurizer, small_params, progress=False)["models"]["xgboost"]
    explanation = explain_rows(model, small_splits["test"].head(30))
    codes = reason_codes(explanation, k=3, descriptions={"PAY_0": "September repayment status"})
    assert len(codes) == 30
    for i, rc in enumerate(codes):
        values = explanation.values[i]
        positive = sorted(values[values > 0], reverse=True)[:3]
        assert [c["contribution"] for c in rc] == pytest.approx(positive)
        for c in rc:
            j = explanation.feature_names.index(c["feature"])
            assert c["value"] == pytest.approx(explanation.data[i, j])
            assert c["text"].startswith(c["feature"]) and "raised the risk by" in c["text"]
            if c["feature"] == "PAY_0":
                assert c["text"].startswith("PAY_0 (September repayment status) = ")
