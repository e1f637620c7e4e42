"""The package's shape: no import circle between its modules."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    "The pipeline modules a module imports (absolute `pipeline.x` or relative `.x`), at any depth of its code."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1: out.add(mod.split(".")[0] if mod else "")
            elif mod.startswith("pipeline."): out.add(mod.split(".")[1])
            elif mod == "pipeline": out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return out - {"", path.stem}


def test_no_import_circle():
    graph = {p.stem: imports(p) for p in (ROOT / "pipeline").glob("*.py") if not p.stem.startswith("_")}
    assert {"scorer", "bundle", "rules", "model"} <= set(graph)
    state, cycle = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open": cycle.append(path + [nxt])
            elif nxt not in state: visit(nxt, path + [nxt])
        state[node] = "done"
    for node in sorted(graph):
        if node not in state: visit(node, [node])
    assert not cycle, cycle
    assert not graph["rules"] and graph["scorer"].isdisjoint({"train", "evaluate", "explain", "registry"})


def test_bandit_finds_no_medium_or_high_issue():
    "Static security scan of the package and the service: a justified `# nosec` names the check and why, above it."
    import subprocess, sys, json
    bandit = Path(sys.executable).parent / "bandit"
    r = subprocess.run([str(bandit), "-q", "-r", "pipeline", "bentos", "-f", "json", "--severity-level", "medium"],
                       cwd=ROOT, capture_output=True, text=True)
    found = json.loads(r.stdout)
    assert found["metrics"]["_totals"]["loc"] > 1000  # it scanned the code
    assert [(i["filename"], i["line_number"], i["test_id"], i["issue_text"]) for i in found["results"]] == []
    assert r.returncode == 0, r.stderr[-2000:]
