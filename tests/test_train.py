import pytest
from sklearn.metrics import roc_auc_score

from pipeline.core import score, target_vector

from pipeline.featurize import build_featurizer, split_frame
from pipeline.train import train_models
from pipeline.validate import read_input, validate_frame


@pytest.fixture(scope="module")
def small_splits(small_params, root):
    params = {**small_params, "data": {**small_params["data"], "path": str(root / small_params["data"]["path"])}}
    valid, _, _ = validate_frame(read_input(params), params)
    assert len(valid) <= small_params["data"]["sample_rows"]
    return split_frame(valid, params)


def test_training_is_seeded_and_picks_the_better_model(small_splits, small_params):
    featurizer = build_featurizer(small_params).fit(small_splits["train"])
    a = train_models(small_splits, featurizer, small_params, progress=False)
    b = train_models(small_splits, featurizer, small_params, progress=False)
    assert a["study"].best_params == b["study"].best_params
    assert a["valid"] == b["valid"]
    assert len(a["study"].trials) == small_params["train"]["n_trials"]
    yv = target_vector(small_splits["valid"], small_params)
    aucs = {name: roc_auc_score(yv, score(m, small_splits["valid"])) for name, m in a["models"].items()}
    assert aucs == pytest.approx({k: v["valid_auc"] for k, v in a["valid"].items()})
    assert aucs[a["winner"]] == max(aucs.values()) and all(0.65 < v < 0.85 for v in aucs.values())
