import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.batches import check_shifts, intensity, make_batches, month_plan, shift_frame
from pipeline.validate import validate_frame


def test_intensity_by_scenario():
    assert [intensity("none", m, 6, 4) for m in range(1, 7)] == [0] * 6
    assert [intensity("sudden", m, 6, 4) for m in range(1, 7)] == [0, 0, 0, 1, 1, 1]
    assert [intensity("gradual", m, 4, 4) for m in range(1, 5)] == [0.25, 0.5, 0.75, 1]
    with pytest.raises(ValueError, match="scenario must be one of"):
        intensity("chaos", 1, 6, 4)


def test_shifts_keep_rows_valid_and_integers_integral(raw, params):
    df = raw.head(2000)
    shifts = {"AGE": {"add": 200}, "PAY_0": {"add": 1, "share": 0.5}, "BILL_AMT1": {"scale": 2}, "SEX": {"set": 2, "share": 0.5}}
    out = shift_frame(df, shifts, 1.0, params, np.random.default_rng(0))
    assert (out["AGE"] == 120).all()  # clipped to the declared max
    changed = out["PAY_0"] != df["PAY_0"]
    assert 0.4 < changed.mean() < 0.6 and (out["PAY_0"][changed] == np.minimum(df["PAY_0"][changed] + 1, 9)).all()
    assert (out["BILL_AMT1"] == 2 * df["BILL_AMT1"]).all() and (out["PAY_0"] == out["PAY_0"].round()).all()
    assert 0.7 < (out["SEX"] == 2).mean() < 0.85  # half the rows set to 2, on top of the 2s already there
    half = shift_frame(df, shifts, 0.5, params, np.random.default_rng(0))
    assert (half["BILL_AMT1"] == np.round(1.5 * df["BILL_AMT1"])).all() and (half["AGE"] == np.minimum(df["AGE"] + 100, 120)).all()
    assert shift_frame(df, shifts, 0.0, params, np.random.default_rng(0)).equals(df)
    loose = {**params, "validate": {**params["validate"], "rules": [], "duplicate_rows": "allow"}}
    assert validate_frame(out, loose)[2]["rows_quarantined"] == 0


def test_bad_shift_specs_name_the_field(params):
    with pytest.raises(ValueError, match="batches.shifts.NOPE: not a declared column"):
        check_shifts({"NOPE": {"add": 1}}, params)
    with pytest.raises(ValueError, match="batches.shifts.AGE: give exactly one of scale, add, set"):
        check_shifts({"AGE": {"add": 1, "scale": 2}}, params)
    with pytest.raises(ValueError, match=r"batches.shifts.AGE.share: must be in \(0, 1\]"):
        check_shifts({"AGE": {"add": 1, "share": 2}}, params)


def test_batches_cover_the_source_once_and_none_is_unchanged(raw, params):
    src = raw.head(params["batches"]["months"] * params["drift"]["min_rows"])
    none = make_batches(src, "none", params)
    assert len(none) == params["batches"]["months"] and min(map(len, none)) >= params["drift"]["min_rows"]
    both = pd.concat(none)
    assert sorted(both.index) == list(src.index) and both.sort_index().equals(src)
    unlabelled = make_batches(src, "sudden", {**params, "batches": {**params["batches"], "labels": False}})
    assert all(params["data"]["target"] not in b for b in unlabelled)


def test_cli_writes_each_scenario(raw, params, tmp_path):
    raw.head(300).to_parquet(tmp_path / "held_out.parquet")
    p = {**params, "batches": {**params["batches"], "source": "held_out.parquet", "out": "out", "months": 3},
         "drift": {**params["drift"], "min_rows": 100}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    proc = subprocess.run([sys.executable, "-m", "pipeline.batches", "--scenario", "sudden"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    files = sorted(f.relative_to(tmp_path).as_posix() for f in (tmp_path / "out").rglob("*.parquet"))
    assert files == ["out/sudden/month_01.parquet", "out/sudden/month_02.parquet", "out/sudden/month_03.parquet"]
    helped = subprocess.run([sys.executable, "-m", "pipeline.batches", "--help"], capture_output=True, text=True)
    assert "--scenario" in helped.stdout and "monthly production batches" in helped.stdout


@pytest.mark.parametrize("rows", [450, 599, 120, 40])
def test_too_few_rows_make_fewer_months_each_of_at_least_min_rows(raw, params, rows, caplog):
    p = {**params, "batches": {**params["batches"], "months": 6, "sudden_month": 4}, "drift": {**params["drift"], "min_rows": 100}}
    with caplog.at_level("WARNING", logger="batches"):
        sudden = make_batches(raw.head(rows), "sudden", p)
    assert len(sudden) == max(1, rows // 100) and sum(map(len, sudden)) == rows
    if rows >= 100: assert min(map(len, sudden)) >= 100
    assert f"{len(sudden)} months of at least drift.min_rows=100" in caplog.text
    assert ("below drift.min_rows" in caplog.text) == (rows < 100)
    months, first = month_plan(rows, p)
    assert months == len(sudden) and 1 <= first <= months
    changed = [not b["BILL_AMT1"].equals(raw.head(rows).loc[b.index, "BILL_AMT1"]) for b in sudden]
    assert changed == [m >= first for m in range(1, months + 1)]  # the sudden shift still happens, from `first` on


def test_enough_rows_keep_the_months_without_a_log_line(raw, params, caplog):
    p = {**params, "drift": {**params["drift"], "min_rows": 100}}
    with caplog.at_level("WARNING", logger="batches"):
        assert len(make_batches(raw.head(100 * params["batches"]["months"]), "none", p)) == params["batches"]["months"]
    assert "drift.min_rows" not in caplog.text
