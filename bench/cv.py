"""Repeated stratified 3-fold x 3 on the default data with the pipeline's own featurize + train code.

Each fold trains on 20,000 rows, split into train/valid by params exactly as the pipeline does: the
Optuna search runs on train/valid, then the final model is cross-fitted on all 20,000 (and calibrated
on its out-of-fold scores). It is tested on the other 10,000. Prints the test AUC of every fold, their
mean and sd with its ratio to the goal of issue #17 (0.7905, TabArena's tuned XGBoost 0.7907, LightGBM
0.7902), the wall time with its ratio to the 206 s of the starting commit on a quiet 2-core machine (goal:
<= 1.5x), and the process's CPU time (every thread; compare it with the same run of the starting commit
when the machine is shared). `--repeats 1` (3 folds) is the quick look; the figure is the 3x3 run.

    python bench/cv.py [--trials N] [--repeats R] [--params params.yaml]
"""
import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from pipeline.core import get_logger, load_params, score, target_vector
from pipeline.featurize import Featurizer
from pipeline.train import train_models
from pipeline.validate import read_input, validate_frame


GOAL_AUC = 0.7905     # issue #17
BASE_WALL_S = 206.0  # the starting commit's 3x3 run on a quiet 2-core machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--trials", type=int, help="Optuna trials per fold (default: train.n_trials)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--folds", type=int, default=3)
    args = ap.parse_args()
    log = get_logger("bench.cv")
    params = load_params(args.params)
    if args.trials: params["train"]["n_trials"] = args.trials
    rows, _, report = validate_frame(read_input(params), params)
    y = target_vector(rows, params)
    f = params["featurize"]
    valid_share = f["valid_size"] / (1 - f["test_size"])
    cv = RepeatedStratifiedKFold(n_splits=args.folds, n_repeats=args.repeats, random_state=f["seed"])
    aucs, baseline_aucs, start, cpu = [], [], time.perf_counter(), time.process_time()
    for i, (fit_idx, test_idx) in enumerate(cv.split(rows, y)):
        fit, test = rows.iloc[fit_idx], rows.iloc[test_idx]
        train, valid = train_test_split(fit, test_size=valid_share, stratify=y[fit_idx], random_state=f["seed"])
        featurizer = Featurizer.from_params(params).fit(train)
        result = train_models({"train": train, "valid": valid}, featurizer, params, progress=False)
        yt = target_vector(test, params)
        aucs.append(roc_auc_score(yt, score(result["models"]["xgboost"], test)))
        baseline_aucs.append(roc_auc_score(yt, score(result["models"]["baseline"], test)))
        log.info("fold %d: train %d / valid %d / test %d rows, XGBoost AUC %.4f, baseline %.4f",
                 i + 1, len(train), len(valid), len(test), aucs[-1], baseline_aucs[-1])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    a, b = np.array(aucs), np.array(baseline_aucs)
    print(f"rows: {len(rows):,} validated of {report['rows_in']:,}; {len(a)} folds; {params['train']['n_trials']} trials per fold")
    print(f"XGBoost test AUC: mean {a.mean():.4f}, sd {a.std(ddof=1):.4f}, min {a.min():.4f}, max {a.max():.4f}")
    print(f"baseline test AUC: mean {b.mean():.4f}, sd {b.std(ddof=1):.4f}")
    print(f"relative Gini gain over baseline: {(2 * a.mean() - 1) / (2 * b.mean() - 1) - 1:.1%}")
    print(f"mean test AUC {a.mean():.4f} = {a.mean() / GOAL_AUC:.4f} of the goal {GOAL_AUC} (published tuned XGBoost 0.7907)")
    print(f"wall time {wall:.0f} s ({wall / len(a):.1f} s per fold) = {wall / (BASE_WALL_S * len(a) / 9):.2f}x the starting "
          f"commit's {BASE_WALL_S:.0f} s per 9 folds (goal <= 1.5x); CPU time {cpu:.0f} s")


if __name__ == "__main__":
    main()
