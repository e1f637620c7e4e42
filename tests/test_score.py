"""The batch scoring job: validation and quarantine, answers equal to the model's, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.score import run_job
from pipeline.scorer import Scorer, check_sample
from tests.conftest import ROOT, deep_merge
from tests.test_service import small_model  # noqa: F401  (fixture)

BAD = {5: ("AGE", 5), 17: ("SEX", 9), 400: ("PAY_0", None), 1234: ("LIMIT_BAL", "lots")}


@pytest.fixture(scope="module")
def batch(small_model, tmp_path_factory):
    "3,000 applicants (the small test split, repeated) with a few broken rows, as csv."
    df = pd.concat([small_model["test"]] * 4, ignore_index=True).head(3000).astype(object)
    for row, (col, value) in BAD.items(): df.loc[row, col] = value
    path = tmp_path_factory.mktemp("batch") / "applicants.csv"
    df.to_csv(path, index=False)
    return path, df


def _params(small_params, **batch):
    return deep_merge(small_params, {"serve": {"batch": {"reason_codes_for": "all", **batch}}})


def test_job_scores_valid_rows_and_quarantines_bad_ones(batch, small_model, small_params, tmp_path):
    path, df = batch
    params = _params(small_params)
    out = tmp_path / "scores.parquet"
    bundle = small_model["bundle"]
    report = run_job(path, out, bundle, params, chunk_rows=700, progress=False)
    assert report["rows_scored"] == 3000 - len(BAD) and report["rows_quarantined"] == len(BAD)
    assert report["bundle_sha"] == bundle.sha and report["model_version"] == "local"
    scores, quarantine = pd.read_parquet(out), pd.read_csv(report["quarantine"])
    assert sorted(quarantine["_row"]) == sorted(BAD)
    for row, (col, _) in BAD.items():
        assert col in quarantine.set_index("_row").loc[row, "_rule"]
    assert scores["_row"].is_unique and set(scores["_row"]) == set(range(3000)) - set(BAD)
    valid = pd.read_csv(path).drop(index=list(BAD))
    from pipeline.validate import clean_types
    expected = bundle.predict(clean_types(valid, small_params))
    ordered = scores.sort_values("_row")
    assert ordered["risk_score"].tolist() == expected["risk_score"].tolist()  # the bundle's own call: the same bits
    assert ordered["decision"].tolist() == expected["decision"].tolist() and set(scores["bundle_sha"]) == {bundle.sha}
    # the same reason codes as the service's answers
    service = Scorer(bundle, params, check_sample(params)).answers(clean_types(valid.head(50), small_params))
    k = params["serve"]["reason_codes"]
    for s, (_, r) in zip(service, ordered.head(50).iterrows()):
        assert [c["feature"] for c in s["reason_codes"]] == [r[f"reason_{j}"] for j in range(1, k + 1) if pd.notna(r[f"reason_{j}"])]
        assert [str(c["value"]) for c in s["reason_codes"]] == [r[f"reason_{j}_value"] for j in range(1, k + 1) if pd.notna(r[f"reason_{j}"])]
        assert s["risk_grade"] == r["risk_grade"] and s["decision"] == r["decision"]
    assert json.loads((tmp_path / "scores.report.json").read_text())["rows_in"] == 3000
    assert not (tmp_path / "scores.parquet.parts").exists()


def test_declined_only_reason_codes(batch, small_model, small_params, tmp_path):
    path, _ = batch
    run_job(path, tmp_path / "s.parquet", small_model["bundle"], _params(small_params, reason_codes_for="declined"),
            chunk_rows=1000, progress=False)
    s = pd.read_parquet(tmp_path / "s.parquet")
    declined = s["decision"] == "decline"
    assert declined.any() and s.loc[~declined, "reason_1"].isna().all() and s.loc[declined, "reason_1"].notna().all()


def test_resume_after_kill_has_no_duplicates_or_losses(batch, small_model, small_params, tmp_path):
    path, _ = batch
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(_params(small_params)))
    out = tmp_path / "scores.parquet"
    cmd = [sys.executable, "-m", "pipeline.score", "--params", str(params_path), "--input", str(path), "--output", str(out),
           "--model", str(small_model["bundle"].path), "--chunk-rows", "100"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = tmp_path / "scores.parquet.parts"
    end = time.time() + 120
    while time.time() < end and len(list(parts.glob("part-*.arrow"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("part-*.arrow")))
    assert 3 <= done_before < 30, "the job must be killed part-way"
    # another chunk size cannot resume these parts
    other = subprocess.run(cmd[:-1] + ["250"], cwd=ROOT, capture_output=True, text=True)
    assert other.returncode == 2 and "--restart" in other.stderr
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((tmp_path / "scores.report.json").read_text())
    assert report["chunks_resumed"] >= done_before and report["chunks"] == 30
    scores = pd.read_parquet(out)
    assert scores["_row"].is_unique and set(scores["_row"]) == set(range(3000)) - set(BAD)
    clean = tmp_path / "clean.parquet"
    run_job(path, clean, small_model["bundle"], _params(small_params), chunk_rows=100, progress=False)
    pd.testing.assert_frame_equal(scores, pd.read_parquet(clean))


def test_cli_help_and_bad_input(tmp_path):
    assert subprocess.run([sys.executable, "-m", "pipeline.score", "--help"], cwd=ROOT, capture_output=True).returncode == 0
    r = subprocess.run([sys.executable, "-m", "pipeline.score", "--input", str(tmp_path / "none.csv"), "--output",
                        str(tmp_path / "o.parquet")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "none.csv" in r.stderr


def test_parts_made_with_other_reason_code_settings_are_refused(batch, small_model, small_params, tmp_path):
    from pipeline.core import write_json
    from pipeline.score import job_manifest
    path, _ = batch
    bundle, out = small_model["bundle"], tmp_path / "s.parquet"
    declined = _params(small_params, reason_codes_for="declined")
    (tmp_path / "s.parquet.parts").mkdir()
    write_json(job_manifest(path, bundle.sha, 1000, declined), tmp_path / "s.parquet.parts" / "manifest.json")
    with pytest.raises(ValueError, match="reason codes differ"):  # all rows' reasons would mix with declined rows' only
        run_job(path, out, bundle, _params(small_params), chunk_rows=1000, progress=False)
    report = run_job(path, out, bundle, declined, chunk_rows=1000, progress=False)
    assert report["chunks_resumed"] == 0 and report["rows_in"] == 3000


def test_combine_writes_a_column_typed_differently_in_two_parts_as_text(tmp_path):
    from pipeline.score import combine
    pd.DataFrame({"_row": [0, 1], "id": [10, 11], "reason_1": [None, None]}).to_parquet(tmp_path / "part-0.parquet")
    pd.DataFrame({"_row": [2], "id": ["A-12"], "reason_1": ["PAY_0"]}).to_parquet(tmp_path / "part-1.parquet")
    for out in (tmp_path / "all.parquet", tmp_path / "all.csv"):
        assert combine([tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"], out) == 3
        df = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
        assert list(df["id"].astype(str)) == ["10", "11", "A-12"] and df["reason_1"].tolist()[2] == "PAY_0"


def test_a_tampered_bundle_is_refused_naming_the_file(small_model, batch, tmp_path):
    import shutil
    copy = tmp_path / "bundle"
    shutil.copytree(small_model["bundle"].path, copy)
    data = bytearray((copy / "rules.json").read_bytes())
    data[10] ^= 1
    (copy / "rules.json").write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "pipeline.score", "--input", str(batch[0]), "--output", str(tmp_path / "o.parquet"),
                        "--model", str(copy)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "rules.json: sha256 does not match" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.parquet").exists()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    export = subprocess.run([str(Path(sys.executable).parent / "riskops-export"), str(copy)], cwd=tmp_path, env=env,
                            capture_output=True, text=True)   # the export refuses it too
    assert export.returncode == 2 and "rules.json: sha256 does not match" in export.stderr and "Traceback" not in export.stderr
    assert not (tmp_path / "bentoml" / "models").exists() or not any((tmp_path / "bentoml" / "models").rglob("MANIFEST.json"))


def test_a_file_that_cannot_be_scored_fails_and_keeps_its_quarantine(small_model, small_params, tmp_path):
    df = small_model["test"].head(300)
    path = tmp_path / "semicolons.csv"
    df.to_csv(path, index=False, sep=";")   # the wrong delimiter: one column, every row quarantined
    r = subprocess.run([sys.executable, "-m", "pipeline.score", "--input", str(path), "--output", str(tmp_path / "o.parquet"),
                        "--model", str(small_model["bundle"].path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "max_bad_share" in r.stderr and "Traceback" not in r.stderr
    assert len(pd.read_csv(tmp_path / "o.quarantine.csv")) == 300
