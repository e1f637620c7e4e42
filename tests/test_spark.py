"""The Spark batch engine (`python -m pipeline.score --engine spark`): the same outputs as the local engine, row for
row and every column, on 100,000 rows in four parquet files; bad input refused in one line before a JVM starts; pyspark
never imported by the local job or the service's modules."""
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.score import run_job
from tests.conftest import ROOT, deep_merge
from tests.test_service import small_model  # noqa: F401  (fixture)

ROWS, FILES = 100_000, 4
BAD = {5: ("AGE", 5), 17: ("SEX", 9), 40_000: ("PAY_0", None), 99_999: ("LIMIT_BAL", -1)}


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipeline.score", *map(str, args)], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def applicants(small_model, small_params, tmp_path_factory):
    "100,000 applicants (the small test split repeated, a few broken) as one file and as four files; the params file."
    tmp = tmp_path_factory.mktemp("spark")
    reps = -(-ROWS // len(small_model["test"]))
    df = pd.concat([small_model["test"]] * reps, ignore_index=True).head(ROWS)
    for row, (col, value) in BAD.items():  # in the column's own type (codes are text): parquet keeps one type a column
        df.loc[row, col] = value if value is None or df[col].dtype.kind in 'if' else str(value)
    df.to_parquet(tmp / "all.parquet")
    (tmp / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(ROWS), FILES)):
        df.iloc[rows].to_parquet(tmp / "in" / f"part-{i}.parquet")
    params = deep_merge(small_params, {"serve": {"batch": {"reason_codes_for": "all", "chunk_rows": 10_000}}})
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp, params


def test_spark_engine_equals_the_local_engine_on_100k_rows(applicants, small_model):
    tmp, params = applicants
    bundle = small_model["bundle"]
    t = time.perf_counter()
    local = run_job(tmp / "all.parquet", tmp / "local.parquet", bundle, params, progress=False)
    local_s = time.perf_counter() - t
    t = time.perf_counter()
    out = _cli("--engine", "spark", "--master", "local[2]", "--input", tmp / "in" / "*.parquet", "--output", tmp / "spark",
               "--model", bundle.path, "--params", tmp / "params.yaml")
    spark_s = time.perf_counter() - t
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"\n{ROWS:,} rows: local engine {local_s:.1f} s, spark local[2] {spark_s:.1f} s (JVM start included)")
    report = yaml.safe_load((tmp / "spark" / "report.json").read_text())
    assert report["rows_in"] == ROWS == report["rows_scored"] + report["rows_quarantined"] and report["files"] == FILES
    assert report["rows_quarantined"] == local["rows_quarantined"] == len(BAD)
    assert f"{ROWS:,} rows in = " in out.stderr
    # scores: every column, same types, same values, row for row
    spark = pd.read_parquet(tmp / "spark" / "scores").sort_values("_row").reset_index(drop=True)
    mine = pd.read_parquet(tmp / "local.parquet").sort_values("_row").reset_index(drop=True)
    assert list(spark.columns) == list(mine.columns) and len(spark) == ROWS - len(BAD)
    pd.testing.assert_frame_equal(spark, mine, check_exact=True)
    assert spark["reason_1"].notna().any() and set(spark["bundle_sha"]) == {bundle.sha}
    # quarantine: the same rows, rules and values as the local job's csv
    q = pd.read_parquet(tmp / "spark" / "quarantine").sort_values("_row").reset_index(drop=True)
    lq = pd.read_csv(local["quarantine"], dtype=str).sort_values("_row", key=lambda s: s.astype(int)).reset_index(drop=True)
    assert list(q.columns) == list(lq.columns) and q["_row"].tolist() == sorted(BAD)
    pd.testing.assert_frame_equal(q.astype({"_row": str}), lq, check_dtype=False)  # text as read, a missing value missing


def test_spark_input_mistakes_are_one_line_before_any_jvm(applicants, tmp_path):
    from pipeline.spark import check_spark_input
    tmp, _ = applicants
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "x.csv", index=False)
    (tmp_path / "taken").mkdir()
    for source, output, words in ((tmp_path / "missing-*.parquet", tmp_path / "o", "no such input"),
                                  (tmp_path / "x.csv", tmp_path / "o", "reads parquet files"),
                                  (tmp / "in", tmp_path / "taken", "use --restart")):
        with pytest.raises((ValueError, FileNotFoundError), match=words): check_spark_input(str(source), str(output))
    t = time.perf_counter()  # the command: one line, exit 2, in seconds (no JVM started)
    out = _cli("--engine", "spark", "--input", tmp_path / "x.csv", "--output", tmp_path / "o", "--params", tmp / "params.yaml")
    assert out.returncode == 2 and "reads parquet files" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert time.perf_counter() - t < 30
    assert "--engine {local,spark}" in _cli("--help").stdout


def test_local_job_and_service_modules_never_import_pyspark():
    code = ("import sys; import pipeline.score, pipeline.validate, pipeline.scorer, pipeline.export, pipeline.audit; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
