"""params.yaml checked before any work (issue 13, item 1): each mistake a new user makes is one line naming its
key path, exit 2 from `python -m pipeline.params`, no traceback; rules outside the grammar are refused (issue 14)."""
import copy
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.params import (KNOWN_KEYS, SECTIONS, CompiledRule, ParamsError, RuleError, code_value, holds_row,
                             params_problems, parse_params)
from tests.conftest import ROOT


def other_params(params: dict) -> dict:
    "The default params correctly rewritten for another data set (loans with a good/bad target)."
    p = copy.deepcopy(params)
    p["data"] |= {"path": "data/raw/not_there.csv", "id": "customer_id", "target": "status",
                  "target_values": ["good", "bad"], "positive": "bad"}
    p["columns"] = {"numeric": {"income": {"min": 0}, "debt": {"min": 0}, "age": {"min": 18}},
                    "categorical": {"Records": {"codes": ["no", "yes"]}, "Marital": {"codes": ["male : single", "female"]}},
                    "protected": ["age"], "drop": []}
    p["featurize"] |= {"ratios": {"debt_to_income": ["debt", "income"]},
                       "aggregates": {"money": {"fn": "sum", "cols": ["income", "debt"]}}}
    p["validate"] |= {"rules": [{"name": "debt within 5x income", "expr": "debt <= 5 * income"}], "rule_max_share": {}}
    p["evaluate"]["fairness_bands"] = {"age": [18, 30, 50, 121]}
    p["explain"]["descriptions"] = {"income": "monthly income", "debt_to_income": "debt / income"}
    p["batches"]["shifts"] = {"income": {"scale": 0.8}, "Records": {"set": "yes", "share": 0.3}}
    p["serve"]["heuristic"]["weights"] = {"debt": 0.001}
    p["train"]["monotone"] = {"debt_to_income": 1}
    return p


def set_in(p: dict, path: str, value) -> dict:
    p = copy.deepcopy(p)
    *head, last = path.split(".")
    d = p
    for k in head: d = d[k]
    d[last] = value
    return p


# (what a new user got wrong, the params changed, raw YAML replacing the placeholder, the line expected)
MISTAKES = [
    ("leftover default-data ratios", ("featurize.ratios", {"utilisation_1": ["BILL_AMT1", "LIMIT_BAL"]}), None,
     "featurize.ratios.utilisation_1: LIMIT_BAL is not a declared column"),
    ("a ratio named like a raw column", ("featurize.ratios", {"income": ["debt", "age"]}), None,
     "featurize.ratios.income: income is also a raw column"),
    ("a typo in protected", ("columns.protected", ["age", "Marrital"]), None,
     "columns.protected[1]: Marrital is not a declared column (did you mean Marital?)"),
    ("positive not among target_values", ("data.positive", 1), None,
     "data.positive: 1 is not one of data.target_values ['good', 'bad']"),
    ("a typo in train.calibration", ("train.calibration", "temprature"), None,
     "train.calibration: Input should be 'temperature', 'sigmoid' or 'isotonic' (got 'temprature')"),
    ("leftover fairness_bands", ("evaluate.fairness_bands", {"AGE": [18, 25, 121]}), None,
     "evaluate.fairness_bands.AGE: AGE is not a declared column (did you mean age?)"),
    ("leftover descriptions", ("explain.descriptions", {"PAY_0": "repayment status"}), None,
     "explain.descriptions.PAY_0: PAY_0 is not a declared column or engineered feature"),
    ("leftover heuristic weights", ("serve.heuristic.weights", {"PAY_0": 0.55}), None,
     "serve.heuristic.weights.PAY_0: PAY_0 is not a declared column"),
    ("unquoted [no, yes]", ("columns.categorical.Records.codes", "PLACEHOLDER"), "[no, yes]",
     "columns.categorical.Records.codes[0]: YAML read this as the boolean false (unquoted no/off/false): quote it"),
    ("unquoted male : single", ("columns.categorical.Marital.codes", "PLACEHOLDER"), "[male : single, female]",
     "columns.categorical.Marital.codes[0]: YAML read `male : single` as a mapping (a colon followed by a space): quote it"),
    ("a typo in a key", ("train.calibraton", "sigmoid"), None,
     "train.calibraton: unknown key (did you mean calibration?)"),
]


def mistake_text(params: dict, change, raw) -> str:
    text = yaml.safe_dump(set_in(other_params(params), *change), sort_keys=False)
    return text.replace("PLACEHOLDER", raw) if raw else text


def test_the_current_params_and_a_correct_other_data_set_pass(params):
    assert params_problems(params) == []
    assert params_problems(other_params(params)) == []
    proc = subprocess.run([sys.executable, "-m", "pipeline.params", "--params", str(ROOT / "params.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.parametrize("what,change,raw,line", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_one_line_naming_its_key_path_exit_2(params, tmp_path, what, change, raw, line):
    text = mistake_text(params, change, raw)
    t = time.perf_counter()
    with pytest.raises(ParamsError) as err:
        parse_params(text)
    assert time.perf_counter() - t < 1.0  # the check itself; generous bound (it takes milliseconds)
    assert any(p.startswith(line) for p in err.value.problems), err.value.problems
    (tmp_path / "p.yaml").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "pipeline.params", "--params", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert any(l.startswith(line) for l in proc.stderr.splitlines()), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_stage_stops_on_a_params_mistake_before_reading_data(params, tmp_path):
    "The data file does not exist: a stage that read it first would say so instead."
    text = mistake_text(params, ("featurize.ratios", {"utilisation_1": ["BILL_AMT1", "LIMIT_BAL"]}), None)
    (tmp_path / "params.yaml").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "pipeline.validate"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "featurize.ratios.utilisation_1: LIMIT_BAL is not a declared column" in proc.stderr
    assert "not_there.csv" not in proc.stderr and not (tmp_path / "data").exists()


def test_load_params_raises_params_error_with_the_lines(params, tmp_path):
    from pipeline.core import load_params
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(set_in(params, "train.calibration", "platt")))
    with pytest.raises(ValueError) as err:
        load_params(tmp_path / "p.yaml")
    assert isinstance(err.value, ParamsError) and err.value.problems == [
        "train.calibration: Input should be 'temperature', 'sigmoid' or 'isotonic' (got 'platt')"]
    assert load_params(tmp_path / "p.yaml", check=False)["train"]["calibration"] == "platt"
    (tmp_path / "bad.yaml").write_text("data: {target: [a, b\n")
    with pytest.raises(ParamsError, match=r"bad.yaml line \d+: not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_more_mistakes_are_caught(params):
    p = other_params(params)
    cases = {
        "featurize.aggregates.money: Records is categorical": set_in(p, "featurize.aggregates.money.cols", ["income", "Records"]),
        "featurize.ratios.debt_to_income: debt is in columns.drop": set_in(p, "columns.drop", ["debt"]),
        "data.target: income is also declared under columns": set_in(p, "data.target", "income"),
        "batches.shifts.Records.set: 'maybe' is not one of columns.categorical.Records.codes":
            set_in(p, "batches.shifts.Records", {"set": "maybe"}),
        "batches.shifts.Records: Records is categorical": set_in(p, "batches.shifts.Records", {"scale": 2}),
        "train.monotone.Records: Records is categorical": set_in(p, "train.monotone", {"Records": 1}),
        "evaluate.fairness_bands.income: income is not in columns.protected": set_in(p, "evaluate.fairness_bands", {"income": [0, 1]}),
        "validate.rule_max_share.bill within 12x limit: no rule is reported as": set_in(p, "validate.rule_max_share", {"bill within 12x limit": 0.1}),
        "evaluate.threshold_rule: Input should be": set_in(p, "evaluate.threshold_rule", "ks"),
        "serve.batch.reason_codes_for: Input should be": set_in(p, "serve.batch.reason_codes_for", "some"),
        "featurize.aggregates.money.fn: Input should be": set_in(p, "featurize.aggregates.money.fn", "median"),
        "data.target_values: ['good', 'bad', 'bad'] repeats a value": set_in(p, "data.target_values", ["good", "bad", "bad"]),
        "columns.numeric.True: YAML read this as the boolean true": set_in(p, "columns.numeric", {True: {}, "income": {}}),
        "data.periode: unknown key (did you mean period?)": set_in(p, "data.periode", "x"),
    }
    for line, bad in cases.items():
        problems = params_problems(bad)
        assert any(pr.startswith(line) for pr in problems), (line, problems)
    assert params_problems(set_in(p, "data.positive", 1.0)) != []
    assert params_problems(set_in(set_in(p, "data.target_values", [0, 1]), "data.positive", "1")) == []  # codes


def test_approvals_required_is_a_count(params):
    "register.approvals_required: a whole number of approvals, at least 0; absent means the default, 1."
    for bad in (-1, "two", True, 1.5):
        problems = params_problems(set_in(params, "register.approvals_required", bad))
        assert [pr for pr in problems if pr.startswith("register.approvals_required: ")], (bad, problems)
    assert params_problems(set_in(params, "register.approvals_required", 0)) == []
    unset = copy.deepcopy(params)
    del unset["register"]["approvals_required"]
    assert params_problems(unset) == []


def test_known_keys_are_listed_in_one_place_and_cover_every_model_field():
    "A new key is one word in KNOWN_KEYS: every typed field must be listed there too."
    def fields(model, path):
        for name, f in model.model_fields.items():
            key = f.alias or name
            assert key in KNOWN_KEYS[path].split(), f"{path}.{key} is typed but not in KNOWN_KEYS"
    for section, model in SECTIONS.items():
        assert section in KNOWN_KEYS[""].split()
        fields(model, section)
    for path, model in {"serve.batch": SECTIONS["serve"].model_fields["batch"].annotation,
                        "drift.webhook": SECTIONS["drift"].model_fields["webhook"].annotation}.items():
        fields(model, path)


def test_code_value_agrees_with_core_as_code():
    from pipeline.core import as_code
    values = [1, 1.0, "1", " 1 ", 2.5, "2.50", "good", " bad ", 0, -3, "-3.0", "1e3", 1e3, "x y", "nan", "inf"]
    assert [code_value(v) for v in values] == list(as_code(pd.Series(values, dtype=object)))


NUM, CAT = ["LIMIT_BAL", "AGE", "BILL_AMT1", "PAY_AMT1"], ["SEX", "EDUCATION"]


@pytest.mark.parametrize("expr", [
    "@sys.modules['os'].system('touch {f}') == 0",
    "@sys.modules['os'].system('touch {f}') == 0 | (LIMIT_BAL >= 0)",
    "__import__('os').system('touch {f}') == 0",
    "LIMIT_BAL >= 0 & __import__('os').system('touch {f}') == 0",
    "LIMIT_BAL.__class__.__mro__[1].__subclasses__() == 0",
    "(lambda: __import__('os').system('touch {f}'))() == 0",
    "[x for x in (1,)] == LIMIT_BAL",
    "open('{f}', 'w') == 0",
])
def test_rules_outside_the_grammar_are_refused_and_nothing_runs(params, tmp_path, expr):
    f = tmp_path / "ran"
    rule = {"name": "evil", "expr": expr.format(f=f)}
    with pytest.raises(RuleError, match="not allowed"):
        CompiledRule(rule["expr"], NUM, CAT)
    bad = set_in(params, "validate.rules", [params["validate"]["rules"][0], rule])
    assert [p for p in params_problems(bad) if p.startswith("validate.rules[1] (evil): ")], params_problems(bad)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run([sys.executable, "-m", "pipeline.params", "--params", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "validate.rules[1] (evil): " in proc.stderr and "not allowed" in proc.stderr
    assert not f.exists()


def test_the_exact_rules_of_issue_14_are_refused_at_params_check(params):
    for expr in ["@sys.modules['os'].system('true') == 0", "__import__('os').system('true') == 0"]:
        problems = params_problems(set_in(params, "validate.rules", [{"name": "x", "expr": expr}]))
        assert problems and problems[0].startswith("validate.rules[0] (x): ") and "not allowed" in problems[0]


def test_grammar_types_and_undeclared_names():
    for expr, message in [("SEX == 1", "quote it"), ("SEX < '2'", "only == and != compare codes"),
                          ("AGE * 2", "must give true/false"), ("INCOME > 0", "INCOME is not a declared column"),
                          ("1 < 2", "naming no column"), ("AGE > 'x'", "comparing a number with a code"),
                          ("AGE in (1, 2)", "not allowed"), ("AGE > True", "not allowed"), ("AGE > 'a", "cannot be (read|parsed)")]:
        with pytest.raises(RuleError, match=message):
            CompiledRule(expr, NUM, CAT)


def rows(n=400, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"LIMIT_BAL": rng.choice([0, 1000, 5000, 20000], n).astype(float),
                       "AGE": rng.integers(18, 80, n).astype(float), "BILL_AMT1": rng.normal(3000, 8000, n).round(),
                       "PAY_AMT1": rng.exponential(2000, n).round(), "SEX": rng.choice(["1", "2"], n).astype(object),
                       "EDUCATION": rng.choice(["0", "1", "2", "3"], n).astype(object)})
    for c in df: df.loc[rng.random(n) < 0.05, c] = None if c in CAT else np.nan
    return df


@pytest.mark.parametrize("expr", [
    "BILL_AMT1 <= 12 * LIMIT_BAL & PAY_AMT1 <= 2 * LIMIT_BAL | AGE >= 60",
    "18 <= AGE < 70",
    "PAY_AMT1 / LIMIT_BAL < 0.5 or -BILL_AMT1 > 100",
    "EDUCATION != '0' and not (SEX == '2' & AGE < 25)",
    "~(EDUCATION == '3') | (BILL_AMT1 - PAY_AMT1) / 2 >= AGE + 1",
    "SEX == EDUCATION or AGE > 50",
])
def test_compiled_rules_agree_with_pandas_eval_on_rules_in_the_grammar(expr):
    "The semantics the rules had under DataFrame.eval (trusted expressions here), missing values passing."
    df = rows()
    rule = CompiledRule(expr, NUM, CAT)
    got = rule({c: df[c].to_numpy(dtype=float if c in NUM else object) for c in rule.columns})
    want = df.eval(expr).to_numpy(dtype=bool) | df[list(rule.columns)].isna().any(axis=1).to_numpy()
    assert (got == want).all()
    one = [holds_row(rule, r) for r in df.to_dict("records")]
    assert one == list(got)
