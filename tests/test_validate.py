import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.params import ParamsError
from pipeline.validate import DataQualityError, check_gate, validate_frame


def test_default_data_passes_and_duplicates_are_quarantined(raw, params):
    valid, quarantine, report = validate_frame(raw, params)
    assert report["passed"]
    assert report["rows_in"] == len(raw) == len(valid) + len(quarantine)
    assert report["rules"] == {"duplicate row": int(raw.duplicated().sum())} and len(quarantine) > 0
    assert set(quarantine["_rule"]) == {"duplicate row"}
    assert valid["LIMIT_BAL"].dtype == "float64" and set(valid["SEX"]) == {"1", "2"}


def test_out_of_range_rows_fail_the_gate_naming_column_and_count(raw, params):
    bad = raw.copy()
    idx = bad.sample(frac=0.1, random_state=1).index
    bad.loc[idx, "AGE"] = 150
    valid, quarantine, report = validate_frame(bad, params)
    n_dup = raw.duplicated().sum()
    assert report["rules"]["AGE: max 120"] == len(idx)
    assert set(idx) <= set(quarantine["_row"])
    assert len(valid) + len(quarantine) == len(raw)
    with pytest.raises(DataQualityError, match=r"AGE: max 120: 3,000 rows"):
        check_gate(report)
    assert report["rows_quarantined"] <= len(idx) + n_dup


def test_missing_column_quarantines_every_row(raw, params):
    valid, quarantine, report = validate_frame(raw.drop(columns=["PAY_AMT3"]), params)
    assert len(valid) == 0 and len(quarantine) == len(raw)
    assert report["rules"] == {"PAY_AMT3: missing column": len(raw)}
    with pytest.raises(DataQualityError, match="PAY_AMT3: missing column: 30,000 rows"):
        check_gate(report)


def test_wrong_type_is_reported_per_cell(raw, params):
    bad = raw.head(1000).astype({"LIMIT_BAL": object, "EDUCATION": object})
    bad.loc[[3, 7], "LIMIT_BAL"] = "lots"
    bad.loc[5, "EDUCATION"] = "phd"
    bad.loc[9, "LIMIT_BAL"] = "50000"  # a number stored as text is fine
    valid, quarantine, report = validate_frame(bad, params)
    rules = quarantine.set_index("_row")["_rule"]
    assert rules[3] == rules[7] == "LIMIT_BAL: numeric type"
    assert rules[5] == "EDUCATION: allowed codes"
    assert 9 in valid.index and valid.loc[9, "LIMIT_BAL"] == 50000.0


def test_missing_values_only_where_nullable(raw, params):
    bad = raw.head(500).copy()
    bad.loc[[1, 2], "BILL_AMT1"] = np.nan
    bad.loc[3, "default"] = np.nan
    _, quarantine, _ = validate_frame(bad, params)
    rules = quarantine.set_index("_row")["_rule"]
    assert rules[1] == "BILL_AMT1: missing value" and rules[3] == "default: missing value"
    nullable = {**params, "columns": {**params["columns"],
                                      "numeric": {**params["columns"]["numeric"], "BILL_AMT1": {"nullable": True}}}}
    valid, quarantine, _ = validate_frame(bad, nullable)
    assert 1 in valid.index and np.isnan(valid.loc[1, "BILL_AMT1"]) and list(quarantine["_row"]) == [3]


def test_duplicate_ids_and_allowing_duplicate_rows(raw, params):
    df = raw.head(100).assign(cid=range(100))
    df.loc[10, "cid"] = 3
    p = {**params, "data": {**params["data"], "id": "cid"}}
    _, quarantine, _ = validate_frame(df, p)
    assert quarantine.set_index("_row")["_rule"][10] == "cid: duplicate id"
    dups = pd.concat([raw.head(50), raw.head(5)], ignore_index=True)
    assert validate_frame(dups, params)[2]["rows_quarantined"] == 5
    allow = {**params, "validate": {**params["validate"], "duplicate_rows": "allow"}}
    assert validate_frame(dups, allow)[2]["rows_quarantined"] == 0


def test_stage_cli_exits_nonzero_with_summary_and_writes_quarantine(raw, params, tmp_path):
    bad = raw.head(2000).copy()
    bad.loc[:299, "PAY_AMT1"] = -5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    p = {**params, "data": {**params["data"], "path": "bad.csv"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    proc = subprocess.run([sys.executable, "-m", "pipeline.validate"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "validation failed" in proc.stderr and "PAY_AMT1: min 0: 300 rows" in proc.stderr
    quarantine = pd.read_csv(tmp_path / "data/quarantine/rows.csv")
    assert len(quarantine) >= 300 and (quarantine["_rule"].str.contains("PAY_AMT1: min 0")).sum() == 300
    page = (tmp_path / "reports/validation.html").read_text()
    assert "Gate FAILED" in page and "PAY_AMT1: min 0" in page


def test_five_percent_corrupt_rows_are_quarantined_row_by_row_with_the_rule_named(raw, params):
    df = raw.head(4000).drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng(5)
    rows = rng.choice(len(df), size=len(df) // 20, replace=False)
    kinds = np.array_split(rows, 4)
    df = df.astype({"LIMIT_BAL": object})
    df.loc[kinds[0], "AGE"] = 7
    df.loc[kinds[1], "LIMIT_BAL"] = "unknown"
    df.loc[kinds[2], "MARRIAGE"] = 9
    df.loc[kinds[3], "BILL_AMT2"] = 100 * pd.to_numeric(df.loc[kinds[3], "LIMIT_BAL"])
    valid, quarantine, report = validate_frame(df, params)
    expected = {**dict.fromkeys(kinds[0], "AGE: min 18"), **dict.fromkeys(kinds[1], "LIMIT_BAL: numeric type"),
                **dict.fromkeys(kinds[2], "MARRIAGE: allowed codes"), **dict.fromkeys(kinds[3], "bill within 12x limit")}
    assert quarantine.set_index("_row")["_rule"].to_dict() == expected
    assert sorted(valid.index.tolist() + quarantine["_row"].tolist()) == list(range(len(df)))  # nothing lost
    assert report["rows_in"] == len(df) == report["rows_passed"] + report["rows_quarantined"]
    assert report["balance"] == f"{len(df)} rows in = {len(valid)} passed + {len(rows)} quarantined"
    assert report["bad_share"] == pytest.approx(0.05, abs=1e-3) and report["passed"] is False
    assert report["failed_rules"] == ["bill within 12x limit"]  # its own threshold (0.1%) is stricter than 5%


def test_cross_column_rules_from_params(raw, params):
    df = raw.head(300).copy()
    df.loc[1, "BILL_AMT1"] = np.nan
    df.loc[2, "PAY_AMT1"] = 3 * df.loc[2, "LIMIT_BAL"]
    rule = {"name": "payment within limit", "expr": "PAY_AMT1 <= 2 * LIMIT_BAL and EDUCATION != '9'"}
    p = {**params, "columns": {**params["columns"], "numeric": {**params["columns"]["numeric"], "BILL_AMT1": {"nullable": True}}},
         "validate": {**params["validate"], "rules": [*params["validate"]["rules"], rule]}}
    valid, quarantine, report = validate_frame(df, p)
    assert quarantine.set_index("_row")["_rule"].to_dict() == {2: "payment within limit"}
    assert 1 in valid.index  # a missing value in a rule's column is left to `nullable`
    for expr, message in [("NOPE > 1", r"validate.rules\[0\] \(r\): NOPE is not a declared column"),
                          ("LIMIT_BAL * 2", "must give true/false per row"),
                          ("EDUCATION == 9", "quote it")]:
        bad = {**params, "validate": {**params["validate"], "rules": [{"name": "r", "expr": expr}]}}
        with pytest.raises(ParamsError, match=message):
            validate_frame(df, bad)
    with pytest.raises(ValueError, match=r"validate.rules\[0\]: each rule needs a `name` and an `expr`"):
        validate_frame(df, {**params, "validate": {**params["validate"], "rules": ["BILL_AMT1 > 0"]}})


@pytest.mark.parametrize("expr", ["@sys.modules['os'].system('touch {f}') == 0 | (LIMIT_BAL >= 0)",
                                  "__import__('os').system('touch {f}') == 0"])
def test_a_rule_never_runs_code(raw, params, tmp_path, expr):
    "Issue 14: under DataFrame.eval, `@` reached module globals and the rule ran a shell command."
    f = tmp_path / "ran"
    bad = {**params, "validate": {**params["validate"], "rules": [{"name": "evil", "expr": expr.format(f=f)}]}}
    with pytest.raises(ParamsError, match=r"validate.rules\[0\] \(evil\): .*not allowed"):
        validate_frame(raw.head(50), bad)
    raw.head(50).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**bad, "data": {**params["data"], "path": "d.csv"}}))
    proc = subprocess.run([sys.executable, "-m", "pipeline.validate"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "validate.rules[0] (evil): " in proc.stderr and "Traceback" not in proc.stderr
    assert not f.exists() and not (tmp_path / "data").exists()


def test_rule_thresholds_decide_the_gate(raw, params):
    df = raw.head(1000).copy()
    df.loc[:19, "AGE"] = 150  # 2% of rows: under the overall 5%
    _, _, report = validate_frame(df, params)
    assert report["passed"] and report["rule_max_share"]["AGE: max 120"] == params["validate"]["max_bad_share"]
    strict = {**params, "validate": {**params["validate"], "rule_max_share": {"AGE: max 120": 0.01}}}
    _, _, report = validate_frame(df, strict)
    assert not report["passed"] and report["failed_rules"] == ["AGE: max 120"]
    with pytest.raises(DataQualityError, match=r"AGE: max 120: 20 rows \(over its threshold\)"):
        check_gate(report)


def test_html_report_is_self_contained_and_lists_rules_and_rows(raw, params):
    from pipeline.validate import validation_html
    df = raw.head(500).copy()
    df.loc[[3, 4], "SEX"] = 7
    _, quarantine, report = validate_frame(df, params)
    page = validation_html(report, quarantine)
    assert page.startswith("<!DOCTYPE html>") and "SEX: allowed codes" in page and "Gate passed" in page
    assert "500 rows in = 498 passed + 2 quarantined" in page and "<script" not in page and "http" not in page
    assert page.count("</tr>") >= 1 + 1 + 1 + 2  # header and rows of both tables
