"""Outcomes joined to audited decisions (the real `riskops-outcomes` command on a real SQLite audit database written
through AuditTrail), realised performance per month and model version, strict JSON."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.metrics import roc_auc_score

from pipeline.core import ks_statistic
from pipeline.drift import write_strict_json
from pipeline.outcomes import ONE_CLASS, audited, realised
from tests.test_drift import write_audit


def outcomes_cli(*args, root, subprocess_=False):
    "The command: in this process (fast), or as `python -m pipeline.outcomes` once, to see the real exit and output."
    if subprocess_:
        return subprocess.run([sys.executable, "-m", "pipeline.outcomes", *args], cwd=root, capture_output=True, text=True)
    import contextlib, io, os
    from pipeline.outcomes import main
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(args))
    finally: os.chdir(cwd)
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


@pytest.fixture
def db(tmp_path, params):
    "60 applicants of version 1 in May, 40 of version 2 in June (all audited), and their outcomes file."
    rng = np.random.default_rng(0)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    rows = pd.DataFrame({c: rng.integers(0, 5, 100) for c in params["columns"]["numeric"]})
    scores = rng.uniform(size=100)
    decisions = np.where(scores >= 0.5, "decline", "approve")
    write_audit(url, tmp_path / "spool", rows.iloc[:60], "1", "2026-05-10T10:00:00.000+00:00", "may", scores[:60], decisions[:60])
    write_audit(url, tmp_path / "spool", rows.iloc[60:], "2", "2026-06-10T10:00:00.000+00:00", "june", scores[60:], decisions[60:])
    y = (rng.uniform(size=100) < scores).astype(int)
    y[60:] = 0  # June: one class only
    target = params["data"]["target"]
    out = pd.DataFrame({"request_id": ["may"] * 60 + ["june"] * 40, "position": list(range(60)) + list(range(40)),
                        target: y, "observed_at": "2026-11-01"})
    out.to_csv(tmp_path / "outcomes.csv", index=False)
    return url, tmp_path, out, scores, decisions


def count(url):
    with sa.create_engine(url).connect() as c: return c.execute(sa.text("select count(*) from outcomes")).scalar()


def test_outcomes_are_joined_once_and_realised_figures_are_per_month_and_version(db, root, tmp_path):
    url, tmp, out, scores, decisions = db
    first = outcomes_cli("--file", str(tmp / "outcomes.csv"), "--db", url, root=root)
    assert first.returncode == 0 and json.loads(first.stdout) == {"rows": 100, "new": 100, "already_stored": 0}, first.stderr
    again = outcomes_cli("--file", str(tmp / "outcomes.csv"), "--db", url, root=root)
    assert json.loads(again.stdout) == {"rows": 100, "new": 0, "already_stored": 100} and count(url) == 100
    figures = realised(audited(sa.create_engine(url)))
    may, june = figures
    y = out[out.columns[2]].to_numpy()
    assert (may["month"], may["model_version"], may["decisions"], may["outcomes"]) == ("2026-05", "1", 60, 60)
    assert may["auc"] == pytest.approx(roc_auc_score(y[:60], scores[:60]))
    assert may["ks"] == pytest.approx(ks_statistic(y[:60], scores[:60]))
    assert may["default_rate"] == pytest.approx(y[:60].mean())
    assert may["approval_rate"] == pytest.approx((decisions[:60] == "approve").mean())
    assert june["model_version"] == "2" and june["auc"] is None and june["auc_reason"] == ONE_CLASS and june["default_rate"] == 0
    text = write_strict_json({"realised": figures}, tmp_path / "m.json").read_text()
    assert "NaN" not in text and json.loads(text)["realised"][1]["ks_reason"] == ONE_CLASS


def test_unknown_ids_and_conflicting_duplicates_are_refused_with_counts_and_nothing_written(db, root, params):
    url, tmp, out, *_ = db
    target = params["data"]["target"]
    bad = pd.concat([out.head(5),
                     pd.DataFrame({"request_id": ["ghost", "ghost2"], "position": [0, 0], target: [1, 0], "observed_at": "2026-11-01"}),
                     out.iloc[[0]].assign(**{target: 1 - out[target].iloc[0]})])  # request may/0 twice, two outcomes
    bad.to_csv(tmp / "bad.csv", index=False)
    proc = outcomes_cli("--file", str(tmp / "bad.csv"), "--db", url, root=root, subprocess_=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "2 unknown id(s)" in proc.stderr and "1 conflicting duplicate(s) in the file" in proc.stderr
    assert "nothing written" in proc.stderr and "Traceback" not in proc.stderr
    with sa.create_engine(url).connect() as c: assert not sa.inspect(c).has_table("outcomes") or count(url) == 0
    assert outcomes_cli("--file", str(tmp / "outcomes.csv"), "--db", url, root=root).returncode == 0
    flipped = out.head(3).assign(**{target: 1 - out[target].head(3)})
    flipped.to_csv(tmp / "flipped.csv", index=False)
    proc = outcomes_cli("--file", str(tmp / "flipped.csv"), "--db", url, root=root)
    assert proc.returncode == 2 and "3 conflicting with stored outcomes" in proc.stderr and count(url) == 100
