"""Drift on a large batch (default 1,000,000 rows x every declared feature, goal: under 0.5 s) and the
rows/s of validation (goals: 1,000,000 rows/s on the raw file, 2,000,000 rows/s on a million rows), in one run.

The batch is drawn with replacement from the validated data of params.yaml; the reference is the training
split, as in the stage. Validation is timed on the whole raw file (the default data: 30,000 rows, the stage's
params: its 35 repeated rows are quarantined), and on the raw file resampled to a million rows (seeded) with a
seeded 0.1% of rows damaged (an age out of range, an unknown code, a missing value, a bill over 12 times the
limit, a negative payment) as the batch job validates a chunk (`validate_for_scoring`: repeated rows allowed),
so quarantine is exercised; and, for information, the same million rows under the stage's params (nearly all of
them repeats of an earlier row, so nearly all quarantined as duplicate rows: the quarantine path at its heaviest).
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
from pipeline.validate import read_input, validate_for_scoring, validate_frame


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
    ap.add_argument("--target-s", type=float, default=0.5, help="the goal for drift on the batch")
    ap.add_argument("--validate-rows", type=int, default=1_000_000, help="rows in the large validation case")
    ap.add_argument("--goal-small", type=float, default=1e6, help="validation rows/s goal on the raw file")
    ap.add_argument("--skip-stage-case", action="store_true", help="leave out the information-only stage case")
    ap.add_argument("--goal-large", type=float, default=2e6, help="validation rows/s goal on the large case")
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

    def rate(label, frame, fn, goal, repeats):
        t, c, (_, _, report) = best_time(lambda: fn(frame, params), repeats)
        rows_s = len(frame) / t
        print(f"validation of {len(frame):,} rows ({label}): {t:.3f} s wall ({c:.3f} s CPU) = {rows_s:,.0f} rows/s "
              f"({report['rows_quarantined']:,} quarantined); " + (f"goal {goal:,.0f} rows/s; ratio {rows_s / goal:.2f} "
              f"({'met' if rows_s >= goal else 'NOT met'})" if goal else "no goal (information)"))

    rate("the raw file, the stage's params", raw, validate_frame, args.goal_small, max(args.repeats, 5))
    big = raw.sample(n=args.validate_rows, replace=True, random_state=0).reset_index(drop=True)
    damaged = rng.choice(len(big), len(big) // 1000, replace=False)
    for i, (col, value) in enumerate([("AGE", 150), ("SEX", 3), ("PAY_0", np.nan), ("PAY_AMT2", -5.0)]):
        big[col] = big[col].astype(float) if isinstance(value, float) else big[col]
        big.loc[damaged[i::5], col] = value
    big.loc[damaged[4::5], "BILL_AMT1"] = big.loc[damaged[4::5], "LIMIT_BAL"] * 50
    rate("resampled, 0.1% damaged, as the batch job: repeats allowed", big, validate_for_scoring, args.goal_large, args.repeats)
    if not args.skip_stage_case: rate("the same rows, the stage's params: repeats quarantined", big, validate_frame, None, 1)


if __name__ == "__main__":
    main()
