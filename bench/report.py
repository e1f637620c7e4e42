"""Wall time of both report commands as a user runs them (a fresh process each, kernel start included),
against the 2-minute goal, and of a refused parameter (which must stop before any kernel starts).

Run after `make repro` (the pipeline outputs and the MLflow registry must exist), from the repository root:

    python bench/report.py [--version champion] [--batch data/split/test.parquet] [--repeats 1]
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core import load_params

GOAL_S = 120.0


def timed(cmd: list[str], repeats: int, expect: int = 0) -> float:
    "Median wall time of `cmd` over `repeats` runs; the command must exit with `expect`."
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != expect:
            sys.exit(f"{' '.join(cmd)} exited {proc.returncode} (expected {expect}):\n{proc.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--version", default="champion", help="model version or alias for the model report")
    ap.add_argument("--batch", help="batch for the drift report (default: drift.current in params)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per command (median reported)")
    args = ap.parse_args()
    params = load_params(args.params)
    batch = args.batch or params["drift"]["current"]
    out = Path(params["report"]["dir"])
    base = [sys.executable, "-m", "pipeline.report"]
    rows = [("model report", timed(base + ["model", "--version", args.version, "--out", str(out / "bench_model_report")], args.repeats)),
            ("drift report", timed(base + ["drift", "--batch", batch, "--out", str(out / "bench_drift_report")], args.repeats)),
            ("refused: unknown version", timed(base + ["model", "--version", "999999"], args.repeats, expect=2))]
    print(f"{'command':<26} {'seconds':>8} {'share of the 120 s goal':>24}")
    for name, seconds in rows:
        print(f"{name:<26} {seconds:8.1f} {seconds / GOAL_S:23.0%}")
    print(f"a refused parameter costs {rows[2][1] / rows[0][1]:.0%} of a model report (no kernel started)")


if __name__ == "__main__":
    main()
