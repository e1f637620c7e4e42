"""Champion and challenger live (pipeline.live, pipeline.compare, bentos/service.py): on one real `bentoml serve` with
a real MLflow store of two versions, the canary split and the shadow audit, the comparison, a promotion and a rollback
under 16 concurrent clients (no failed request, every answer names the version the aliases named), a bad snapshot
refused; in process, the follower's refusals. The served tests run in file order on one module-scoped server."""
import copy
import dataclasses
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline.bundle import BundleError, load_bundle
from pipeline.export import Snapshot
from pipeline.live import Follower, Served, Shadow, canary_mask, decide, served_snapshot, store_loader
from pipeline.request import applicant_model
from pipeline.scorer import Scorer, check_sample
from tests.conftest import BIN, ROOT, deep_merge
from tests.test_champion import GATE_OPEN, register
from tests.test_service import Server, _records

POLL_S, SHARE, MODEL = 0.5, 0.25, "riskops-credit-default"


# ---- in process ----

def test_canary_split_is_deterministic_by_id_or_inputs():
    rows = [{"ID": f"a{i}", "AGE": 20 + i % 60, "PAY_0": i % 5} for i in range(3000)]
    m = canary_mask(rows, SHARE, "ID")
    assert abs(m.mean() - SHARE) < 0.03 and (canary_mask(rows, SHARE, "ID") == m).all()
    moved = [{**r, "AGE": r["AGE"] + 1} for r in rows]  # other inputs, same ids: the same sides
    assert (canary_mask(moved, SHARE, "ID") == m).all() and not (canary_mask(moved, SHARE) == canary_mask(rows, SHARE)).all()
    assert canary_mask(rows, 0.5, "ID")[m].all() and not canary_mask(rows, 0.0, "ID").any()


class NaNCalibrated:
    "A calibrator that answers NaN: a model whose warm-up must fail."
    def __init__(self, inner): self.estimator = inner.estimator
    def probability(self, margin): return np.full(len(margin), np.nan)


def test_follower_refuses_a_bad_snapshot_once_and_keeps_serving(small_bundle, small_params):
    broken = copy.copy(small_bundle.model)
    broken.calibrated = NaNCalibrated(small_bundle.model.calibrated)
    snapshots = {"good": Snapshot("good", small_bundle, None, {}),
                 "nan": Snapshot("nan", dataclasses.replace(small_bundle, model=broken), None, {})}

    def load(tag):
        if tag == "tampered": return served_snapshot(Snapshot(tag, load_bundle(small_bundle.path, "0" * 64), None, {}), small_params)
        return served_snapshot(snapshots[tag], small_params)
    newest, results = ["good"], []
    f = Follower(Served(Scorer(None, small_params), why="none yet"), lambda: newest[0], load, POLL_S,
                 on_result=lambda r, d: results.append(r))
    assert f.check() == "swapped" and f.served.tag == "good" and f.served.why is None
    for bad, says in (("nan", "warm-up answers wrong"), ("tampered", "MANIFEST.json: sha256")):
        newest[0] = bad
        assert f.check() == "refused" and f.check() is None  # refused once, not at every poll
        assert f.served.tag == "good" and says in f.refused[bad]
    assert results == ["swapped", "refused", "refused"]


class Trail:
    "An audit trail that keeps what it is given."
    def __init__(self): self.records = []
    def write(self, records): self.records += records
    def close(self, timeout=None): return True


@pytest.mark.parametrize("gate", ["refused", None, "", "no verdict"])
def test_a_challenger_whose_gate_did_not_pass_never_decides_but_is_shadowed(small_bundle, small_params, small_splits, gate):
    rows = small_splits["test"].drop(columns=small_params["data"]["target"]).head(200).to_dict("records")
    champion, challenger = Scorer(small_bundle, small_params), Scorer(None, small_params)  # the heuristic as the challenger
    passed = Served(champion, challenger, "t", challenger_gate="passed")
    answers, canary = decide(passed, rows, 0.5)
    assert 0.3 < canary.mean() < 0.7 and {a["model_version"] for a in answers} == {"heuristic", "local"}  # it can decide
    other = dataclasses.replace(passed, challenger_gate=gate)
    assert not other.challenger_decides and other.describe()["challenger_decides"] is False
    for share in (0.5, 0.999999):
        for how in ("answers", "explain"):
            answers, canary = decide(other, rows[:20] if how == "explain" else rows, share, how=how)
            assert not canary.any() and {a["model_version"] for a in answers} == {"local"}
    # the shadow scores the refused challenger for every applicant, in its role
    shadow = Shadow(Trail(), window_s=0)
    answers, canary = decide(other, rows, 0.5)
    shadow.submit(other, "score", [(f"r{i}", 0, r, bool(c), "2026-11-30T00:00:00Z") for i, (r, c) in enumerate(zip(rows, canary))])
    assert shadow.close()
    assert len(shadow.trail.records) == len(rows) and {(r["model_version"], r["role"]) for r in shadow.trail.records} == {("heuristic", "challenger")}


def test_a_snapshot_records_the_challengers_gate_and_a_broken_challenger_is_left_out(small_bundle, small_params, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    code = ("import dataclasses, sys; from pipeline.bundle import load_bundle; from pipeline.export import export_bento; "
            "b = load_bundle(sys.argv[1]); c = dataclasses.replace(b, version='2'); "
            "print(export_bento(b, 'm', c, challenger_gate='refused')); print(export_bento(b, 'm', c, challenger_gate='passed')); "
            "print(export_bento(b, 'm', dataclasses.replace(c, sha='0' * 64), challenger_gate='passed'))")
    made = subprocess.run([sys.executable, "-c", code, str(small_bundle.path)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"})
    assert made.returncode == 0, made.stderr[-2000:]
    refused, passed, broken = made.stdout.split()
    load, rows = store_loader("m", small_params), check_sample(small_params).to_dict("records")
    s = load(refused)
    assert s.challenger is not None and s.challenger_gate == "refused" and not s.challenger_decides and s.challenger_error is None
    s = load(passed)  # the same models: the scorers reused, the verdict the new snapshot's
    assert s.challenger_decides and s.describe()["challenger_gate"] == "passed"
    s = load(broken)  # the champion is served alone, and why is said
    assert s.challenger is None and not s.challenger_decides and "MANIFEST.json: sha256" in s.challenger_error
    assert s.describe()["challenger_error"] == s.challenger_error and s.describe()["model_version"] == "local"
    assert decide(s, rows, 0.9)[1].sum() == 0


def test_a_challenger_that_fails_to_warm_up_leaves_the_champion_serving_alone(small_bundle, small_params):
    broken = copy.copy(small_bundle.model)
    broken.calibrated = NaNCalibrated(small_bundle.model.calibrated)
    bad = dataclasses.replace(small_bundle, model=broken, version="2")
    snapshots = {"one": Snapshot("one", small_bundle, None, {}),
                 "rollback": Snapshot("rollback", dataclasses.replace(small_bundle, version="0"), bad, {"challenger_gate": "passed"})}
    results = []
    f = Follower(Served(Scorer(None, small_params), why="none yet"), lambda: newest[0],
                 lambda tag: served_snapshot(snapshots[tag], small_params), POLL_S, on_result=lambda r, d: results.append((r, d)))
    newest = ["one"]
    assert f.check() == "swapped"
    newest[0] = "rollback"  # a champion update whose challenger cannot warm up: the champion swaps in, alone
    assert f.check() == "swapped" and f.check() is None
    assert f.served.tag == "rollback" and f.served.champion.identity["model_version"] == "0" and f.served.challenger is None
    assert "warm-up answers wrong" in f.served.challenger_error and f.served.describe()["challenger_error"] == f.served.challenger_error
    assert f.challenger_failures == 1 and "warm-up answers wrong" in f.challenger_failed["rollback"] and not f.refused
    assert [r for r, _ in results] == ["swapped", "swapped", "challenger_failed"] and "warm-up" in results[-1][1]


def test_a_transient_failure_is_retried_with_backoff_and_bounded(small_bundle, small_params):
    calls, fail = [], {"flaky": 2, "gone": 99, "bad": 99}
    def load(tag):
        calls.append((tag, time.monotonic()))
        if fail[tag]:
            fail[tag] -= 1
            if tag == "bad": raise BundleError("MANIFEST.json: sha256 0000 is not the 1234 recorded")
            raise OSError(f"{tag}: the store is busy")
        return served_snapshot(Snapshot(tag, small_bundle, None, {}), small_params)
    newest, results = ["flaky"], []
    f = Follower(Served(Scorer(None, small_params), why="none yet"), lambda: newest[0], load, 0.01, retries=3,
                 backoff_s=0.2, on_result=lambda r, d: results.append(r))
    assert f.check() == "retry" and f.check() is None  # within the backoff: not tried
    until(lambda: f.check() == "swapped", timeout=5, every=0.02)
    assert f.served.tag == "flaky" and len(calls) == 3 and results == ["retry", "retry", "swapped"] and not f.refused
    gaps = [b[1] - a[1] for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # the backoff doubles
    newest[0], calls[:], results[:] = "gone", [], []  # never comes back: refused after 3 retries, then never tried
    f.backoff_s = 0.02
    until(lambda: (f.check(), "gone" in f.refused)[1], timeout=5, every=0.01)
    assert len(calls) == 4 and results == ["retry"] * 3 + ["refused"] and f.served.tag == "flaky"
    for _ in range(5): assert f.check() is None
    assert len(calls) == 4 and "busy" in f.refused["gone"]
    newest[0], calls[:], results[:] = "bad", [], []  # a failed check is not transient: refused at once
    assert f.check() == "refused" and f.check() is None and len(calls) == 1 and results == ["refused"]
    from pipeline.export import bento_ref
    with pytest.raises(BundleError) as e: bento_ref("no-such-model-here", "no-such-model-here:abc")
    from pipeline.live import transient
    assert transient(e.value) and transient(OSError()) and not transient(BundleError("sha"))


# ---- one served world: an MLflow store with champion v1 (XGBoost) and challenger v2 (the baseline, passed by the gate,
# waiting for an approval), later challenger v3 (refused by the gate)

@pytest.fixture(scope="module")
def world(tmp_path_factory, small_trained, small_splits, small_params):
    tmp = tmp_path_factory.mktemp("live")
    serve = {"audit": {"spool_dir": str(tmp / "spool"), "flush_interval_s": 0.05}, "max_list": 50,
             "shadow": True, "canary_share": SHARE, "follow_poll_s": POLL_S}
    p = deep_merge(small_params, {"register": GATE_OPEN, "serve": serve})
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "BENTOML_HOME": str(tmp / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True"}
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    mp.chdir(tmp)
    srv = None
    try:  # the service starts on an empty store (the fallback answers) and follows it: its start overlaps the registering
        (tmp / "bentoml").mkdir()
        srv = Server(tmp / "bentoml", tmp / "params.yaml", tmp / "audit.sqlite", token=None)
        models = small_trained["models"]
        v1 = register((p, tmp, env), models["xgboost"], models["baseline"], small_splits, "xgboost")
        wait = deep_merge(p, {"register": {"approvals_required": 1}})  # v2 passes the gate and stays challenger
        v2 = register((wait, tmp, env), models["baseline"], models["baseline"], small_splits, "baseline")
        name = p["mlflow"]["registered_model"]
        bundles = {v1: dataclasses.replace(load_bundle(tmp / "xgboost"), name=name, version=v1),
                   v2: dataclasses.replace(load_bundle(tmp / "baseline"), name=name, version=v2)}
        out = cli(tmp, env, "riskops-export")
        assert f"v{v1} (sha" in out.stdout and f"challenger {name} v{v2}" in out.stdout, out.stdout
        assert srv.wait("/readyz"), Path(srv.log.name).read_text()[-3000:]  # ready: the export was swapped in
        yield {"p": p, "tmp": tmp, "env": env, "v1": v1, "v2": v2, "bundles": bundles, "srv": srv, "models": models,
               "url": f"sqlite:///{tmp / 'audit.sqlite'}"}
    finally:
        if srv is not None: srv.stop()
        mp.undo()


def cli(tmp, env, cmd, *args):
    out = subprocess.run([str(BIN / cmd), *args, "--params", str(tmp / "params.yaml")], cwd=tmp, capture_output=True,
                         text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


class Command:
    """An operations command (`pipeline.registry`'s console-script function) in its own process, imported ahead and run
    on `run()`: under load, the seconds of importing MLflow would only stretch the test, not test anything."""
    def __init__(self, tmp, env, fn: str, *args: str):
        code = (f"import sys; from pipeline.registry import {fn}; print('imported', flush=True); sys.stdin.readline(); "
                f"sys.exit({fn}({[*args, '--params', str(tmp / 'params.yaml')]!r}))")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp, env={**os.environ, **env}, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def imported(self) -> "Command":
        assert self.proc.stdout.readline().strip() == "imported", self.proc.stderr.read()[-3000:]
        return self

    def run(self) -> str:
        out, err = self.proc.communicate("go\n", timeout=120)
        assert self.proc.returncode == 0, err[-3000:]
        return out


def ready(srv) -> dict:
    return requests.get(srv.url + "/readyz", timeout=10).json()


def until(check, timeout=20.0, every=0.1):
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got: return got
        time.sleep(every)
    raise TimeoutError(f"{check} not true in {timeout} s")


def counts(url) -> tuple[int, int]:
    with sa.create_engine(url).connect() as c:
        n = lambda t: c.execute(sa.text(f"select count(*) from {t}")).scalar() if sa.inspect(c).has_table(t) else 0
        return n("audit_records"), n("shadow_records")


def test_canary_answers_name_the_deciding_version_and_shadow_audits_both(world, small_splits, small_params):
    w, srv = world, world["srv"]
    v1, v2, p = w["v1"], w["v2"], w["p"]
    d = ready(srv)
    assert (d["model_version"], d["challenger_version"], d["shadow"], d["canary_share"]) == (v1, v2, True, SHARE), d
    assert (d["challenger_gate"], d["challenger_decides"], d["challenger_error"]) == ("passed", True, None), d
    assert d["bundle_sha"] == w["bundles"][v1].sha and d["challenger_sha"] == w["bundles"][v2].sha
    rows = small_splits["test"].drop(columns=small_params["data"]["target"]).head(120)
    recs = _records(rows)
    valid = [applicant_model(p)(**r).model_dump() for r in recs]
    mask = canary_mask(valid, SHARE)
    assert 0.12 < mask.mean() < 0.38, mask.mean()
    answers, again = [], []
    for k in range(0, 120, 20):
        r = requests.post(srv.url + "/score", json={"applicants": recs[k:k + 20], "request_id": f"c{k}"}, timeout=30)
        assert r.status_code == 200, r.text
        answers += r.json()
    for k in range(0, 120, 30):  # the same applicants in other requests: the same sides
        again += requests.post(srv.url + "/score", json={"applicants": recs[k:k + 30], "request_id": f"d{k}"}, timeout=30).json()
    expected = [v2 if m else v1 for m in mask]
    assert [a["model_version"] for a in answers] == expected == [a["model_version"] for a in again]
    # each answer is exactly the deciding model's, as scored in process (the shadow changes nothing in it)
    scorers = {v: Scorer(b, p, check_sample(p)) for v, b in w["bundles"].items()}
    mine = {v: s.answers(valid) for v, s in scorers.items()}
    exact = lambda a: {k: v for k, v in a.items() if k not in ("scored_at", "request_id", "risk_score", "reason_codes")} | \
        {"reasons": [(c["feature"], c["value"]) for c in a["reason_codes"]]}
    for i, (a, v) in enumerate(zip(answers, expected)):  # a linear model's sums may differ in the last bit with the batch
        e = json.loads(json.dumps(mine[v][i]))
        assert exact(a) == exact(e) and a["risk_score"] == pytest.approx(e["risk_score"], rel=1e-12, abs=1e-15), (i, a, e)
        assert [c["contribution"] for c in a["reason_codes"]] == pytest.approx([c["contribution"] for c in e["reason_codes"]], abs=1e-9)
        assert a["bundle_sha"] == w["bundles"][v].sha
    # both audited: one decision per applicant (its version), one shadow record of the other model (its role)
    until(lambda: counts(w["url"]) == (240, 240))
    with sa.create_engine(w["url"]).connect() as c:
        dec = c.execute(sa.text("select request_id, position, model_version, outputs from audit_records")).all()
        sha = c.execute(sa.text("select request_id, position, model_version, outputs, role from shadow_records")).all()
    at = lambda rid, pos: int(rid[1:]) + pos
    for rid, pos, version, outputs in dec:
        assert version == expected[at(rid, pos)]
    for rid, pos, version, outputs, role in sha:
        i = at(rid, pos)
        other = v1 if mask[i] else v2
        assert version == other and role == ("champion" if mask[i] else "challenger")
        assert json.loads(outputs)["risk_score"] == pytest.approx(mine[other][i]["risk_score"], rel=1e-12, abs=1e-15)
    # the consumers of the decisions (drift --since, realised, outcomes, replay) see each applicant once
    from pipeline.outcomes import audited
    from pipeline.replay import read_audit
    engine = sa.create_engine(w["url"])
    assert len(audited(engine)) == 240 and len(read_audit(w["url"])) == 240
    assert len(audited(engine, version=v2)) == 2 * int(mask.sum())  # the canary's decisions, under the challenger's version
    # outcomes for the first round, then the comparison (command, in process)
    y = small_splits["test"][small_params["data"]["target"]].head(120).to_numpy().astype(int)
    outcomes = pd.DataFrame({"request_id": [f"c{20 * (i // 20)}" for i in range(120)], "position": [i % 20 for i in range(120)],
                             small_params["data"]["target"]: y, "observed_at": "2026-12-01"})
    outcomes.to_csv(w["tmp"] / "outcomes.csv", index=False)
    from pipeline.outcomes import main as outcomes_main
    assert outcomes_main(["--file", str(w["tmp"] / "outcomes.csv"), "--db", w["url"], "--params", str(w["tmp"] / "params.yaml")]) == 0
    from pipeline.compare import compare_live, main as compare_main
    from pipeline.drift import score_psi
    from sklearn.metrics import roc_auc_score
    result = compare_live(w["url"], p)
    (pair,) = result["pairs"]
    s1, s2 = (np.array([a["risk_score"] for a in mine[v]]) for v in (v1, v2))
    d1, d2 = (np.array([a["decision"] for a in mine[v]]) for v in (v1, v2))
    assert (pair["champion_version"], pair["challenger_version"], pair["applicants"], pair["outcomes"]) == (v1, v2, 240, 120)
    assert pair["challenger_decided"] == pytest.approx(mask.mean())
    assert pair["decision_agreement"] == pytest.approx((d1 == d2).mean())
    assert pair["score_psi"] == pytest.approx(score_psi(np.tile(s1, 2), np.tile(s2, 2), p["drift"]["bins"]))
    assert pair["champion_approval_rate"] == pytest.approx((d1 == "approve").mean())
    assert pair["challenger_approval_rate"] == pytest.approx((d2 == "approve").mean())
    assert pair["champion_auc"] == pytest.approx(roc_auc_score(y, s1)) and pair["challenger_auc"] == pytest.approx(roc_auc_score(y, s2))
    import contextlib, io
    out = io.StringIO()
    with contextlib.redirect_stdout(out): assert compare_main(["--db", w["url"], "--params", str(w["tmp"] / "params.yaml"), "--json"]) == 0
    assert json.loads(out.getvalue())["pairs"][0]["applicants"] == 240


class Load:
    "`clients` threads posting one body to /score over keep-alive connections until stopped; each answer timed and named."
    def __init__(self, url: str, body: bytes, clients: int = 16):
        self.host, self.port = url.split("//")[1].split(":")
        self.body, self.seen, self.lock, self.stop = body, [], threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]

    def client(self):
        conn, mine = http.client.HTTPConnection(self.host, int(self.port), timeout=30), []
        while not self.stop.is_set():
            sent = time.time()
            try:
                conn.request("POST", "/score", body=self.body, headers={"content-type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                mine.append((sent, time.time(), r.status, json.loads(data)[0]["model_version"] if r.status == 200 else data[:200]))
            except Exception as e:  # a failed request is recorded, never hidden
                mine.append((sent, time.time(), -1, repr(e)))
                conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        with self.lock: self.seen += mine

    def __enter__(self):
        for t in self.threads: t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads: t.join()


def snapshots(home: Path) -> list[tuple[float, str]]:
    "When each snapshot in the store was exported (epoch seconds) and its champion's version, oldest first."
    out = []
    for f in home.glob(f"models/{MODEL}/*/model.yaml"):
        meta = yaml.safe_load(f.read_text())["metadata"]
        out.append((datetime.fromisoformat(meta["exported_at"]).timestamp(), str(meta["version"])))
    return sorted(out)


def test_promotion_and_rollback_under_load_fail_no_request(world, small_splits, small_params):
    w, srv = world, world["srv"]
    v1, v2 = w["v1"], w["v2"]
    assert ready(srv)["model_version"] == v1
    rows = _records(small_splits["test"].drop(columns=small_params["data"]["target"]).head(50))
    one = next(r for r in rows if not canary_mask([applicant_model(w["p"])(**r).model_dump()], SHARE)[0])  # the champion decides it
    promote = Command(w["tmp"], w["env"], "promote_cli", v2, "--force", "--reason", "drill under load")  # riskops-promote
    rollback = Command(w["tmp"], w["env"], "rollback_cli", "--reason", "drill under load")  # riskops-rollback
    promote.imported(), rollback.imported()
    with Load(srv.url, json.dumps({"applicants": [one]}).encode()) as load:
        time.sleep(1.0)
        promoted = promote.run()
        assert f"champion: version {v1} -> {v2}" in promoted and "exported champion" in promoted, promoted
        until(lambda: ready(srv)["model_version"] == v2, timeout=15)
        time.sleep(1.0)
        rolled = rollback.run()
        assert f"champion: version {v2} -> {v1}" in rolled and "exported champion" in rolled, rolled
        until(lambda: ready(srv)["model_version"] == v1, timeout=15)
        time.sleep(1.0)
    seen = sorted(load.seen)
    failed = [s for s in seen if s[2] != 200]
    assert not failed, failed[:5]
    (t_promote, after_p), (t_rollback, after_r) = snapshots(w["tmp"] / "bentoml")[-2:]
    assert (after_p, after_r) == (v2, v1)
    # the alias each request could have been served under: the store's at any moment between its sending (less the
    # time a worker takes to notice and check a snapshot) and its answer
    alias = lambda t: v1 if t < t_promote else v2 if t < t_rollback else v1
    bound = POLL_S + 4.0
    wrong = [s for s in seen if s[3] not in {alias(s[0] - bound), alias(s[0]), alias(s[1])}]
    assert not wrong, wrong[:5]
    assert all(s[3] == v1 for s in seen if s[1] < t_promote)  # nothing ran ahead of the store
    swap = {}
    for name, t, until_t, old in (("promotion", t_promote, t_rollback, v1), ("rollback", t_rollback, np.inf, v2)):
        late = [s[0] for s in seen if s[3] == old and t <= s[0] < until_t]
        swap[name] = max(late, default=t) - t  # after this, every request sent was answered by the new version
        assert swap[name] <= bound, swap
    took = seen[-1][1] - seen[0][0]
    print(f"\n{len(seen)} requests from 16 clients in {took:.1f} s ({len(seen) / took:.0f}/s), 0 failed; swap time "
          f"(snapshot written -> last request answered by the old version): promotion {swap['promotion']:.2f} s, "
          f"rollback {swap['rollback']:.2f} s (poll {POLL_S} s)")
    d = ready(srv)
    assert d["model_version"] == v1 and d["challenger_version"] is None and d["swaps"] >= 3


def test_a_bad_snapshot_is_refused_counted_and_the_old_one_keeps_serving(world, small_splits, small_params):
    w, srv = world, world["srv"]
    current = ready(srv)["model_version"]
    code = ("import dataclasses, sys; from pipeline.bundle import load_bundle; from pipeline.export import export_bento; "
            "b = load_bundle(sys.argv[1]); print(export_bento(dataclasses.replace(b, sha='0' * 64), sys.argv[2]))")
    made = subprocess.run([sys.executable, "-c", code, str(w["tmp"] / "xgboost"), MODEL], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **w["env"]})
    assert made.returncode == 0, made.stderr[-2000:]
    refused = lambda: [l for l in requests.get(srv.url + "/metrics").text.splitlines()
                       if l.startswith("riskops_model_swaps_total") and 'result="refused"' in l and not l.endswith(" 0.0")]
    until(refused, timeout=15)
    d = ready(srv)
    assert d["model_version"] == current and d["store_tag"] != made.stdout.strip()
    r = requests.post(srv.url + "/score", json={"applicants": _records(small_splits["test"].drop(
        columns=small_params["data"]["target"]).head(3))}, timeout=30)
    assert r.status_code == 200 and {a["model_version"] for a in r.json()} <= {current, w["v2"]}
    log = Path(srv.log.name).read_text()
    assert "refused, still serving" in log and "MANIFEST.json: sha256" in log


def test_a_challenger_the_gate_refused_is_shadowed_and_never_decides(world, small_splits, small_params):
    w, srv = world, world["srv"]
    v1 = w["v1"]
    assert ready(srv)["model_version"] == v1
    marked = copy.deepcopy(w["models"]["baseline"])
    marked.riskops_test_mark = "v3"  # the baseline again, its files (and sha) other than v2's
    shut = deep_merge(w["p"], {"register": {"min_auc": 1.01}})
    v3 = register((shut, w["tmp"], w["env"]), marked, w["models"]["baseline"], small_splits, "refused")
    from pipeline.bundle import Registry
    reg = Registry(w["p"]["mlflow"]["registered_model"])
    assert reg.alias("challenger") == v3 and reg.model_version(v3).tags["gate"] == "refused"
    cli(w["tmp"], w["env"], "riskops-export")
    d = until(lambda: (lambda d: d if d["challenger_version"] == v3 else None)(ready(srv)), timeout=20)
    assert (d["model_version"], d["challenger_gate"], d["challenger_decides"]) == (v1, "refused", False), d
    recs = _records(small_splits["test"].drop(columns=small_params["data"]["target"]).head(120))
    assert canary_mask([applicant_model(w["p"])(**r).model_dump() for r in recs], SHARE).any()  # a passed one would decide some
    before = counts(w["url"])
    answers = []
    for k in range(0, 120, 40):
        r = requests.post(srv.url + "/score", json={"applicants": recs[k:k + 40], "request_id": f"refused{k}"}, timeout=30)
        assert r.status_code == 200, r.text
        answers += r.json()
    assert {a["model_version"] for a in answers} == {v1}
    until(lambda: counts(w["url"]) == (before[0] + 120, before[1] + 120))
    with sa.create_engine(w["url"]).connect() as c:
        dec = c.execute(sa.text("select model_version from audit_records where request_id like 'refused%'")).scalars().all()
        sha = c.execute(sa.text("select model_version, role from shadow_records where request_id like 'refused%'")).all()
    assert len(dec) == 120 and set(dec) == {v1}
    assert len(sha) == 120 and set(map(tuple, sha)) == {(v3, "challenger")}


def test_a_challenger_that_fails_its_check_leaves_the_champion_serving_alone(world, small_splits, small_params):
    w, srv = world, world["srv"]
    v1, v2 = w["v1"], w["v2"]
    code = ("import dataclasses, sys; from pipeline.bundle import load_bundle; from pipeline.export import export_bento; "
            "b = dataclasses.replace(load_bundle(sys.argv[1]), name=sys.argv[4], version=sys.argv[5]); "
            "c = dataclasses.replace(load_bundle(sys.argv[2]), name=sys.argv[4], version=sys.argv[6], sha='0' * 64); "
            "print(export_bento(b, sys.argv[3], c, challenger_gate='passed'))")
    made = subprocess.run([sys.executable, "-c", code, str(w["tmp"] / "xgboost"), str(w["tmp"] / "baseline"), MODEL,
                           w["p"]["mlflow"]["registered_model"], v1, v2], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **w["env"]})
    assert made.returncode == 0, made.stderr[-2000:]
    tag = made.stdout.strip()
    d = until(lambda: (lambda d: d if d["store_tag"] == tag else None)(ready(srv)), timeout=20)
    assert (d["model_version"], d["challenger_version"], d["challenger_decides"]) == (v1, None, False), d
    assert f"challenger version {v2}" in d["challenger_error"] and "MANIFEST.json: sha256" in d["challenger_error"], d
    assert d["challenger_failures"] >= 1 and d["retrying"] == 0, d  # counted by the worker that answered, not retried
    metric = [l for l in requests.get(srv.url + "/metrics").text.splitlines()
              if l.startswith("riskops_model_swaps_total") and 'result="challenger_failed"' in l]
    assert metric and float(metric[0].split()[-1]) >= 1, metric
    r = requests.post(srv.url + "/score", json={"applicants": _records(small_splits["test"].drop(
        columns=small_params["data"]["target"]).head(20))}, timeout=30)
    assert r.status_code == 200 and {a["model_version"] for a in r.json()} == {v1}
    log = Path(srv.log.name).read_text()
    assert "its challenger was left out, the champion serves alone" in log
