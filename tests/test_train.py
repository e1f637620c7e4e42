import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from pipeline.core import score, target_vector
from pipeline.featurize import Featurizer, split_frame
from pipeline.model import CalibratedMargin, holdout_scores
from pipeline.train import merge_boosters, train_models


def test_training_is_seeded_and_picks_the_better_model(small_splits, small_params):
    featurizer = Featurizer.from_params(small_params).fit(small_splits["train"])
    a = train_models(small_splits, featurizer, small_params, progress=False)
    b = train_models(small_splits, featurizer, small_params, progress=False)
    assert a["study"].best_params == b["study"].best_params
    assert a["valid"] == b["valid"]
    assert len(a["study"].trials) == small_params["train"]["n_trials"]
    yv = target_vector(small_splits["valid"], small_params)
    aucs = {name: roc_auc_score(yv, holdout_scores(m, small_splits["valid"])) for name, m in a["models"].items()}
    assert aucs == pytest.approx({k: v["valid_auc"] for k, v in a["valid"].items()})
    assert aucs[a["winner"]] == max(aucs.values()) and all(0.65 < v < 0.85 for v in aucs.values())


def test_merged_booster_is_the_mean_of_its_members():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 5))
    y = (X[:, 0] + X[:, 1] * rng.normal(size=1500) > 0.5).astype(int)
    members = [xgb.XGBClassifier(n_estimators=n, max_depth=d, base_score=b, random_state=s).fit(X, y)
               for n, d, b, s in [(20, 2, 0.3, 0), (35, 3, 0.5, 1), (10, 4, 0.2, 2)]]
    merged = merge_boosters([m.get_booster() for m in members])
    mean_margin = np.mean([m.predict(X, output_margin=True) for m in members], axis=0)
    assert merged.num_boosted_rounds() == 65
    assert np.abs(merged.inplace_predict(X, predict_type="margin") - mean_margin).max() < 1e-4
    contribs = merged.predict(xgb.DMatrix(X), pred_contribs=True)
    mean_contribs = np.mean([m.get_booster().predict(xgb.DMatrix(X), pred_contribs=True) for m in members], axis=0)
    assert np.abs(contribs - mean_contribs).max() < 1e-4


def test_cross_fitted_model_scores_its_own_rows_out_of_fold(small_trained, small_splits, small_params):
    featurizer, model = small_trained["featurizer"], small_trained["models"]["xgboost"]
    ensemble, valid = model.estimator, small_splits["valid"]
    yv = target_vector(valid, small_params)
    # it trained on the validation rows: in-sample scores flatter it, out-of-fold scores do not
    assert roc_auc_score(yv, score(model, valid)) > roc_auc_score(yv, holdout_scores(model, valid)) + 0.02
    assert len(ensemble.oof_margin_) == len(small_splits["train"]) + len(valid)
    test = small_splits["test"]
    with pytest.raises(KeyError):  # rows it never saw have no out-of-fold score
        ensemble.out_of_fold(test.index[:5])
    # calibrated on out-of-fold margins, not on its flattering in-sample ones (which would shrink them more)
    fitted = pd.concat([small_splits["train"], valid])
    y_fit, method = target_vector(fitted, small_params), small_params["train"]["calibration"]
    on_oof = CalibratedMargin(None, method).fit(None, y_fit, margin=ensemble.oof_margin_)
    in_sample = CalibratedMargin(ensemble, method).fit(featurizer.transform(fitted), y_fit)
    grid = np.linspace(-3, 3, 7)
    assert np.allclose(model.calibrated.probability(grid), on_oof.probability(grid))
    assert np.abs(in_sample.probability(grid) - on_oof.probability(grid)).max() > 0.01


@pytest.mark.parametrize("method", ["temperature", "sigmoid", "isotonic"])
def test_calibrators_map_margins_to_probabilities(method):
    rng = np.random.default_rng(1)
    margin = rng.normal(size=4000) * 3  # an overconfident model: true log-odds are a third of its margin
    y = (rng.random(4000) < 1 / (1 + np.exp(-margin / 3))).astype(int)
    calibrated = CalibratedMargin(None, method).fit(None, y, margin=margin)
    p = calibrated.probability(np.array([-3.0, 0.0, 3.0]))
    assert np.all(np.diff(p) > 0) and p[1] == pytest.approx(0.5, abs=0.05)
    assert p[2] == pytest.approx(1 / (1 + np.exp(-1)), abs=0.06)  # 3 / 3 = 1 in true log-odds
    with pytest.raises(ValueError, match="train.calibration"):
        CalibratedMargin(None, "platt").fit(None, y, margin=margin)
