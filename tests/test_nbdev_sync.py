"""The notebooks are the source of pipeline/: exporting them again must reproduce it exactly."""
import shutil

from tests.conftest import run


def test_nbdev_export_changes_nothing(tmp_path, root):
    for item in ["nbs", "pipeline"]:
        shutil.copytree(root / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for f in ["settings.ini", "pyproject.toml"]:
        shutil.copy2(root / f, tmp_path / f)
    before = {p.name: p.read_text() for p in (tmp_path / "pipeline").glob("*.py")}
    run(["nbdev_export"], tmp_path)
    after = {p.name: p.read_text() for p in (tmp_path / "pipeline").glob("*.py")}
    changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    assert not changed, f"nbdev_export would change {changed}: edit the notebooks, run nbdev_export, commit both"
