"""Reports end to end: the `report` DVC stage and both report commands in a small copy of the repository
(real dvc, real MLflow store, real Jupyter kernels), bad parameters refused before any kernel starts, and
the HTML looked at in headless Chromium."""
import base64
import io
import json
import re

import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.report import metrics_table, performance_table
from tests.conftest import copy_repo, deep_merge, load_yaml, mlflow_env, plot_coloured, run, screenshot

IMG = re.compile(r'<img[^>]+src="data:image/png;base64,([^"]+)"')


@pytest.fixture(scope="module")
def repo(tmp_path_factory, root):
    "A small copy of the repository after `dvc repro report` (validate ... register, explain, report)."
    repo = copy_repo(tmp_path_factory.mktemp("report"))
    small = deep_merge(load_yaml(repo / "params.yaml"), load_yaml(root / "tests/profile_small.yaml"))
    gate_open = {"min_auc": 0.5, "min_gini_gain_over_baseline": -1.0, "max_ece": 1.0, "min_disparate_impact_ratio": 0.0,
                 "max_equalized_odds_difference": 1.0, "max_robustness_auc_drop": 1.0}  # version 1 becomes champion
    small = deep_merge(small, {"data": {"sample_rows": 3000}, "evaluate": {"bootstrap": 30}, "register": gate_open})
    (repo / "params.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    run("git commit -qam 'small profile'", repo)
    env = mlflow_env(repo)
    proc = run(["dvc", "repro", "report"], repo, env)
    return repo, env, small, proc


def report(repo, env, *args, check=True):
    return run(["python", "-m", "pipeline.report", *args], repo, env, check=check)


def images(html: str) -> list[Image.Image]:
    "Every embedded PNG of the page, decoded."
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in IMG.findall(html)]


def test_stage_writes_the_model_report(repo):
    repo, env, params, proc = repo
    assert "Running stage 'report'" in proc.stdout
    nb = json.loads((repo / "reports/model_report.ipynb").read_text())
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    registry = json.loads((repo / "models/registry.json").read_text())
    assert injected and f"version = \"{registry['version']}\"" in "".join(injected[0]["source"])
    html = (repo / "reports/model_report.html").read_text()
    assert f"version {registry['version']}" in html and "ROC AUC" in html and "95% low" in html
    assert registry["bundle_sha"] in html  # the report names the bundle it describes
    assert "<script src=" not in html and "import pipeline" not in html  # self-contained, no input cells
    status = run(["dvc", "status", "report"], repo, env).stdout
    assert "changed" not in status, status


def test_model_report_command_for_an_alias(repo):
    repo, env, params, _ = repo
    proc = report(repo, env, "model", "--version", "champion")
    registry = json.loads((repo / "models/registry.json").read_text())
    html = (repo / f"reports/model_report_v{registry['champion']}.html").read_text()
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert f"{metrics['auc']:.4f}" in html and f"{metrics['auc_ci_low']:.4f}" in html
    for section in ["Data", "Test metrics", "Curves", "Fairness", "Robustness", "What drives the score",
                    "Comparison with the previous champion"]:
        assert re.search(f"<h2[^>]*>{re.escape(section)}", html), section
    for col in params["columns"]["protected"]:
        assert f"<strong>{col}</strong>" in html
    pngs = images(html)
    shap_pngs = list((repo / "plots/shap").glob("*.png"))
    assert len(pngs) >= 1 + len(shap_pngs) and all(min(p.size) > 100 for p in pngs), [p.size for p in pngs]
    assert "wrote" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["model", "--version", "999"], "--version 999: no such version of registered model"),
    (["model", "--version", "nosuch"], "--version nosuch: no such alias"),
    (["drift", "--batch", "data/batches/missing.parquet"], "--batch data/batches/missing.parquet: no such file"),
])
def test_bad_parameters_stop_before_any_kernel(repo, args, message):
    repo, env, *_ = repo
    before = set((repo / "reports").iterdir())
    proc = report(repo, env, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "versions 1" in proc.stderr or args[0] == "drift"  # says what does exist
    assert "papermill" not in proc.stderr.lower() and set((repo / "reports").iterdir()) == before


def test_batch_without_a_model_column_is_refused_by_name(repo, tmp_path):
    repo, env, params, _ = repo
    column = next(iter(params["columns"]["numeric"]))
    pd.read_parquet(repo / "data/split/test.parquet").drop(columns=[column]).to_csv(tmp_path / "b.csv", index=False)
    proc = report(repo, env, "drift", "--batch", str(tmp_path / "b.csv"), check=False)
    assert proc.returncode == 2 and f"missing column(s) {column}" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def drift_html(repo, tmp_path_factory):
    "The drift report of the test rows with the first numeric column tripled (labels kept)."
    repo, env, params, _ = repo
    column = next(iter(params["columns"]["numeric"]))
    batch = pd.read_parquet(repo / "data/split/test.parquet")
    batch[column] = batch[column] * 3
    path = tmp_path_factory.mktemp("batch") / "shifted batch.parquet"
    batch.to_parquet(path)
    report(repo, env, "drift", "--batch", str(path))
    (page,) = (repo / "reports").glob("drift_report_*shifted_batch.html")  # named by folder and file
    return column, page.read_text()


def test_drift_report_shows_the_shift_histograms_and_realised_performance(drift_html, repo):
    column, html = drift_html
    params = repo[2]
    assert "<strong>alert</strong>" in html and "Realised on the batch" in html and f">{column}<" in html
    table = re.search(r"Drift per feature.*?</table>", html, re.S).group(0)
    assert "psi" in table and "ks_pvalue" in table
    pngs = images(html)
    assert len(pngs) == 1 + params["report"]["histograms"] and all(min(p.size) > 100 for p in pngs)


def test_another_version_is_rescored_on_the_current_test_split(repo, monkeypatch):
    "A version from another run: no stage outputs of its own, so its curves and metrics come from rescoring it."
    import joblib
    from pipeline.core import setup_mlflow
    from pipeline.evaluate import evaluate_models
    from pipeline.registry import Registry, register_candidate
    from pipeline.report import champion_comparison, model_evidence, previous_champion, resolve_version
    from tests.conftest import make_bundle
    repo, env, params, _ = repo
    monkeypatch.chdir(repo)
    for k, v in env.items(): monkeypatch.setenv(k, v)
    monkeypatch.setenv("DVC_EXP_NAME", "another")  # registered as an experiment would be: no alias moves
    setup_mlflow(params)
    splits = {n: pd.read_parquet(f"data/split/{n}.parquet") for n in ("train", "valid", "test")}
    baseline = joblib.load("models/baseline.joblib")
    metrics, _ = evaluate_models(splits, {"m": baseline, "baseline": baseline}, "m", params)
    bundle = make_bundle(baseline, splits, params, repo / "another_bundle")
    reg = Registry(params["mlflow"]["registered_model"])
    version = register_candidate(reg, bundle.path, bundle.sha, None, metrics, params)["version"]
    assert resolve_version(reg, version) == str(version) and resolve_version(reg, "current") == "1"
    ev = model_evidence(reg, str(version), params)
    evaluated = json.loads((repo / "metrics/evaluate.json").read_text())
    assert not ev["current"] and ev["shap"] is None and ev["comparison"] is None
    assert ev["metrics"]["auc"] == pytest.approx(evaluated["baseline_auc"], abs=1e-6)  # same model, same rows
    assert {"roc", "pr", "calibration", "ks", "grades"} <= set(ev["tables"]) and ev["robustness"]["scenarios"]
    assert previous_champion(reg, str(version)) == "1"
    table = champion_comparison(reg, str(version), ev["metrics"])
    assert table.loc["ROC AUC", "difference"] == pytest.approx(evaluated["baseline_auc"] - evaluated["auc"], abs=1e-6)
    report(repo, env, "model", "--version", str(version))  # the notebook on this path too
    html = (repo / f"reports/model_report_v{version}.html").read_text()
    assert "rescored on the current test split" in html and "No SHAP importance recorded" in html
    assert f"{evaluated['baseline_auc']:.4f}" in html and len(images(html)) == 1


@pytest.mark.parametrize("name", ["model_report", "drift_report_*shifted_batch"])
def test_html_renders_in_headless_chromium(repo, drift_html, tmp_path, name):
    repo, *_ = repo
    (html,) = (repo / "reports").glob(f"{name}.html")  # the drift report is named after the batch's folder and file
    page = screenshot(html, tmp_path)
    assert page.shape[:2] == (4000, 1280)
    assert plot_coloured(page) > 5000, plot_coloured(page)
    assert (page.reshape(-1, 3).std(axis=0) > 20).all()  # not a blank page


def test_helpers_on_small_inputs():
    t = metrics_table({"auc": 0.8, "auc_ci_low": 0.78, "auc_ci_high": 0.82, "gini": 0.6, "baseline_auc": 0.75})
    assert t.loc["Gini", "95% low"] == pytest.approx(0.56) and t.loc["ROC AUC", "baseline"] == 0.75
    with pytest.raises(ValueError, match="no test metrics"):
        metrics_table({"model": "x"})
    labelled = {"reference_auc": 0.78, "current_auc": 0.7, "reference_expected_auc": 0.77, "current_expected_auc": 0.75,
                "reference_default_rate": 0.22, "current_default_rate": 0.3}
    t = performance_table(labelled)
    assert t.index.tolist() == ["AUC", "default rate", "expected AUC (CBPE)"] and t.loc["AUC"].tolist() == [0.78, 0.7]
    unlabelled = performance_table({"reference_auc": 0.78, "current_expected_auc": 0.75, "reference_expected_auc": 0.77})
    assert unlabelled.index.tolist() == ["expected AUC (CBPE)"]  # no labels, no realised rows
