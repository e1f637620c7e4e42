"""Scaling out, in one run: the batch job's rows/s with the local engine and with the Spark engine, then Optuna trials
per minute with one and with two tuning processes on one shared study.

Needs the pipeline's outputs (`dvc repro`: data/split, models/featurizer.joblib, models/bundle). Scoring: --rows
applicants (the test split repeated) as one parquet file for the local engine and --files files for Spark, the same
params (serve.batch: reason codes for declined applicants, chunk_rows); Spark's rows/s is the job's on a started
session, its session start printed beside it. Tuning: `riskops-tune --trials T --seed 42` with one worker
(train.n_jobs threads), with one worker of one thread, then with two (half as many threads each; seeds 42 and 43),
each on a fresh study in a
temporary SQLite file (WAL mode), or in --storage (e.g. a PostgreSQL database; the second run then adds to the
first's study). A trial's cost depends on its hyper-parameters (depth, learning rate, pruning), so a few trials
give a rough figure: use more for a steadier one.

    python bench/scale.py [--rows 1000000] [--files 4] [--master local[2]] [--trials N] [--storage URL] [--skip-spark | --skip-tuning]
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.bundle import resolve
from pipeline.core import load_params
from pipeline.score import run_job

ROOT = Path(__file__).resolve().parents[1]


def scoring(params: dict, rows: int, files: int, master: str, tmp: Path) -> dict:
    "Rows/s of the local job and of the Spark job (on a started session) on the same `rows` applicants."
    test = pd.read_parquet(ROOT / "data/split/test.parquet").drop(columns=params["data"]["target"])
    df = pd.concat([test] * -(-rows // len(test)), ignore_index=True).head(rows)
    df.to_parquet(tmp / "all.parquet")
    (tmp / "in").mkdir()
    for i, part in enumerate(np.array_split(np.arange(rows), files)): df.iloc[part].to_parquet(tmp / "in" / f"part-{i}.parquet")
    bundle = resolve(str(ROOT / "models/bundle"), params)
    t = time.perf_counter()
    run_job(tmp / "all.parquet", tmp / "local.parquet", bundle, params, progress=False)
    local = time.perf_counter() - t
    from pipeline.spark import run_spark_job, spark_session
    t = time.perf_counter()
    spark = spark_session(master)
    spark.range(1).count()
    start = time.perf_counter() - t
    t = time.perf_counter()
    run_spark_job(str(tmp / "in"), str(tmp / "spark"), bundle, params, master=master, spark=spark)
    job = time.perf_counter() - t
    spark.stop()
    return {"local_s": local, "spark_start_s": start, "spark_job_s": job}


def tuning(params: dict, workers: int, trials: int, storage: str | None, tmp: Path, n_jobs: int | None = None) -> float:
    "Trials per minute of `riskops-tune --workers N --trials T` on a fresh study (or the one in `storage`)."
    run = f"{workers}-{n_jobs}"
    p = {**params, "train": {**params["train"], "storage": storage or f"sqlite:///{tmp / f'optuna-{run}.db'}",
                             "n_jobs": n_jobs or params["train"]["n_jobs"]}}
    (tmp / f"params-{run}.yaml").write_text(yaml.safe_dump(p))
    code = "import sys; from pipeline.train import tune_cli; sys.exit(tune_cli())"
    out = subprocess.run([sys.executable, "-c", code, "--workers", str(workers), "--trials", str(trials), "--seed", "42",
                          "--params", str(tmp / f"params-{run}.yaml")], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    print("   ", out.stdout.strip())
    return float(re.search(r"\(([\d.]+) trials/min\)", out.stdout).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--trials", type=int, default=None, help="trials per run (default: train.n_trials)")
    ap.add_argument("--storage", default=None, help="study database (default: a fresh SQLite file per run)")
    ap.add_argument("--skip-spark", action="store_true", help="tuning only")
    ap.add_argument("--skip-tuning", action="store_true", help="scoring only")
    args = ap.parse_args()
    params = load_params(args.params)
    args.trials = args.trials or params["train"]["n_trials"]
    print(f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; reason codes for {params['serve']['batch']['reason_codes_for']}")
    with tempfile.TemporaryDirectory() as tmp:
        s = None if args.skip_spark else scoring(params, args.rows, args.files, args.master, Path(tmp))
        if s: print(f"batch scoring, {args.rows:,} rows: local engine {args.rows / s['local_s']:,.0f} rows/s ({s['local_s']:.1f} s); "
              f"spark {args.master} {args.rows / s['spark_job_s']:,.0f} rows/s ({s['spark_job_s']:.1f} s on a started session, "
              f"which took {s['spark_start_s']:.1f} s to start)")
        if args.skip_tuning: return
        one = tuning(params, 1, args.trials, args.storage, Path(tmp))
        single = tuning(params, 1, args.trials, args.storage, Path(tmp), n_jobs=1)
        two = tuning(params, 2, args.trials, args.storage, Path(tmp))
        n = params["train"]["n_jobs"]
        print(f"tuning, {args.trials} trials: {one:.1f} trials/min with one process ({n} threads), {two:.1f} with two "
              f"({max(1, n // 2)} thread each): {two / one:.2f}x; one process with one thread: {single:.1f}")


if __name__ == "__main__":
    main()
