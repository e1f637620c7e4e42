import numpy as np
import pytest

from pipeline.evaluate import choose_threshold, classification_metrics, curves

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
