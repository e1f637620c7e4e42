"""Drift on a large batch (default 1,000,000 rows x every declared feature, target: under 3 s) and the
rows/s of validation, measured in one run.

The batch is drawn with replacement from the validated data of params.yaml; the reference is the training
split, as in the stage. Validation is timed on the whole raw file (the default data: 30,000 rows).
Wall time and CPU time are both printed: on a shared machine the wall time includes waiting for a core.
Needs only the raw data and params.yaml (no `dvc repro`).

    python bench/drift.py [--rows 1000000] [--repeats 3]
"""
import argparse
import time

import numpy as np

from pipeline.core import feature_columns, load_params
from pipeline.drift import feature_drift, score_psi
from pipeline.featurize import reference_profile, split_frame
from pipeline.validate import read_input, validate_frame


def best_time(fn, repeats: int) -> tuple[float, float, object]:
    "Fastest wall time and CPU time of `fn()` in seconds over `repeats` calls, and its last result."
    times, cpu, out = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(times), min(cpu), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the drift batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target-s", type=float, default=3.0, help="the goal for drift on the batch")
    args = ap.parse_args()
    params = load_params(args.params)
    raw = read_input(params)
    valid, _, _ = validate_frame(raw, params)
    train = split_frame(valid, params)["train"]
    profile = reference_profile(train, params)
    numeric, categorical = feature_columns(params)
    rng = np.random.default_rng(0)
    batch = valid.sample(n=args.rows, replace=True, random_state=0).reset_index(drop=True)
    print(f"reference: {len(train):,} training rows; batch: {args.rows:,} rows x {len(profile)} features "
          f"({len(numeric)} numeric, {len(categorical)} categorical)")

    t_drift, c_drift, table = best_time(lambda: feature_drift(profile, train, batch, params), args.repeats)
    scores_ref, scores_cur = rng.beta(1, 4, len(train)), rng.beta(1, 4, args.rows)
    t_score, c_score, _ = best_time(lambda: score_psi(scores_ref, scores_cur, params["drift"]["bins"]), args.repeats)
    total, cpu = t_drift + t_score, c_drift + c_score
    print(f"feature drift (PSI, KS or chi-square with p-values, JS distance): {t_drift:.3f} s wall, {c_drift:.3f} s CPU")
    print(f"score PSI on {args.rows:,} scores: {t_score:.3f} s wall, {c_score:.3f} s CPU")
    print(f"drift total: {total:.3f} s wall ({cpu:.3f} s CPU) for {args.rows:,} rows; goal {args.target_s:.1f} s; "
          f"ratio wall/goal {total / args.target_s:.2f} ({'met' if total < args.target_s else 'NOT met'})")
    print(f"max feature PSI of the resampled batch: {table.psi.max():.4f} (same distribution: expected near 0)")

    t_val, c_val, (_, _, report) = best_time(lambda: validate_frame(raw, params), args.repeats)
    print(f"validation of {len(raw):,} rows: {t_val:.3f} s wall ({c_val:.3f} s CPU) = {len(raw) / t_val:,.0f} rows/s "
          f"({report['rows_quarantined']:,} quarantined)")


if __name__ == "__main__":
    main()
