"""Cost of reason codes next to plain prediction, for 1 row and for 10,000 rows, measured in one run.

Uses the model bundle `dvc repro` builds (models/bundle) on rows of the test split, with the serving scorer.

    python bench/reason_codes.py [--repeats 50]
"""
import argparse
import time

import numpy as np
import pandas as pd

from pipeline.bundle import load_bundle
from pipeline.core import load_params, read_table
from pipeline.scorer import Scorer, check_sample


def timed(fn, repeats: int) -> float:
    "Median wall time of `fn()` in seconds over `repeats` calls (after one warm-up)."
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--repeats", type=int, default=50, help="timed calls for one row (10,000 rows: a fifth of it)")
    args = ap.parse_args()
    params = load_params(args.params)
    bundle = load_bundle("models/bundle")
    scorer, e = Scorer(bundle, params, check_sample(params)), params["serve"]
    test = read_table("data/split/test.parquet")
    big = test.sample(n=10_000, replace=len(test) < 10_000, random_state=0)
    print(f"model: {bundle.label} ({bundle.rules['model']}), top {e['reason_codes']} reason codes per row ({e['contributions']})")
    print(f"{'rows':>6} {'predict ms':>11} {'predict us/row':>15} {'+reasons ms':>12} {'+reasons us/row':>16} {'ratio':>6}")
    for rows, repeats in ((test.head(1), args.repeats), (big, max(args.repeats // 5, 3))):
        plain = timed(lambda: scorer.score(rows, reasons=False), repeats)
        explained = timed(lambda: scorer.score(rows, reasons=True), repeats)
        n = len(rows)
        print(f"{n:>6} {plain * 1e3:>11.2f} {plain / n * 1e6:>15.1f} {explained * 1e3:>12.2f} {explained / n * 1e6:>16.1f} "
              f"{explained / plain:>6.1f}")


if __name__ == "__main__":
    main()
