"""Issue #17's figures in one run: every bench that measures one, then each figure's line with its goal and ratio.

After `make repro`, from the repository root, on a quiet machine (about 15 minutes on 2 cores):

    python bench/limits.py [--skip-cv]

Runs, one after the other (never two at once: each wants both cores):
- bench/serve.py --batch-only: the batch job on 1,000,000 rows over raw XGBoost `inplace_predict` (reason codes for
  declined rows >= 0.80, for all rows >= 0.60);
- bench/serve.py --skip-batch --skip-shadow: `/score` on `bentoml serve` against the FastAPI baseline in the same run
  (p50 <= 1.2x, 16-client throughput >= 1.25x);
- bench/drift.py: drift on 1,000,000 x 23 (< 0.5 s) and validation rows/s (>= 2M on 1,000,000 rows, >= 1M on 30,000);
- bench/cv.py: 3x3 repeated stratified CV (mean test AUC >= 0.7905, wall time <= 1.5x the 206 s of the issue).
Each bench's whole output is shown as it runs; the summary at the end repeats the lines that name a goal.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = [("batch scoring", ["bench/serve.py", "--batch-only"]),
           ("/score over HTTP", ["bench/serve.py", "--skip-batch", "--skip-shadow"]),
           ("drift and validation", ["bench/drift.py", "--skip-stage-case"]),
           ("cross-validated AUC", ["bench/cv.py"])]


def run(name: str, args: list[str]) -> list[str]:
    "Run one bench with this interpreter, echo its output, return its lines; a failed bench stops the run."
    print(f"\n=== {name}: python {' '.join(args)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "1000")}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    if proc.wait() != 0: sys.exit(f"bench/limits.py: {name} failed (exit {proc.returncode}); its output is above")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-cv", action="store_true", help="leave out the cross-validation (about 4 minutes)")
    args = ap.parse_args()
    start, summary = time.perf_counter(), []
    for name, cmd in BENCHES:
        if args.skip_cv and cmd[0] == "bench/cv.py": continue
        summary.append((name, [l for l in run(name, cmd) if "goal" in l.lower()]))
    print(f"\n=== issue #17 figures (one run, {time.perf_counter() - start:.0f} s, {os.cpu_count()} cores, load average now "
          f"{os.getloadavg()[0]:.2f})")
    for name, lines in summary:
        print(f"{name}:")
        for l in lines: print(f"  {l.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
