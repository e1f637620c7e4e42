"""The audit trail under faults, on a real `bentoml serve` with 12 concurrent clients: the SQLite database locked for
~10 s, PostgreSQL stopped and restarted mid-load, and the service's processes killed with SIGKILL mid-load then started
again on the same spool folder. After recovery, every request answered 200 has exactly one audit record per applicant
in the database: none lost, none duplicated."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline.audit import audit_engine
from tests.conftest import ROOT, deep_merge
from tests.test_service import Server, _free_port

CLIENTS = 12


class AuditedServer(Server):
    "`bentoml serve` (as tests.test_service.Server) with any audit database URL."
    def __init__(self, home: Path, params_path: Path, url: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "RISKOPS_PARAMS": str(params_path),
               "RISK_AUDIT_DB_URL": url, "PYTHONPATH": str(ROOT)}
        env.pop("RISK_API_TOKEN", None)
        self.log = open(home / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "bentos.service:RiskService",
                                      "--host", "127.0.0.1", "--port", str(self.port)], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def up(self) -> "AuditedServer":
        assert self.wait("/readyz"), Path(self.log.name).read_text()[-3000:]
        return self

    def descendants(self) -> list[tuple[int, str]]:
        "(pid, command line) of every process the server started, at any depth (BentoML's workers among them)."
        parent = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit(): continue
            try: parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (ValueError, OSError, IndexError): pass
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            kids = [p for p, pp in parent.items() if pp == pid]
            todo += kids
            for k in kids:
                try: found.append((k, Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
                except FileNotFoundError: pass
        return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_bundle, small_splits, small_params):
    "A BentoML home with the small bundle, a params file (audit spool in a temporary folder), and applicants."
    from tests.test_service import _home
    tmp = tmp_path_factory.mktemp("faults")
    params_path = tmp / "params.yaml"
    params_path.write_text(yaml.safe_dump(deep_merge(small_params, {"serve": {"max_list": 5, "audit": {
        "spool_dir": str(tmp / "spool"), "flush_interval_s": 0.05}}})))
    home = _home(tmp_path_factory, {"bundle": small_bundle}, params_path)
    rows = json.loads(small_splits["test"].drop(columns=small_params["data"]["target"]).head(300).to_json(orient="records"))
    return home, params_path, rows, tmp


class Load:
    "CLIENTS threads posting /score (1-3 applicants, unique request ids) until stopped; what was answered 200."
    def __init__(self, url: str, rows: list[dict], prefix: str):
        self.url, self.rows, self.prefix = url, rows, prefix
        self.ok, self.other, self.lock, self.stop_event = {}, 0, threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(t,)) for t in range(CLIENTS)]
        for th in self.threads: th.start()

    def client(self, t: int):
        s, i = requests.Session(), 0
        while not self.stop_event.is_set():
            n, rid = 1 + (t + i) % 3, f"{self.prefix}-{t}-{i}"
            body = {"applicants": self.rows[(7 * t + i) % 290:][:n], "request_id": rid}
            try: status = s.post(self.url + "/score", json=body, timeout=30).status_code
            except requests.RequestException: status = None
            with self.lock:
                if status == 200: self.ok[rid] = n
                else: self.other += 1
            i += 1

    def stop(self) -> "Load":
        self.stop_event.set()
        for th in self.threads: th.join(60)
        return self

    def expected(self) -> set[tuple[str, int]]:
        return {(rid, p) for rid, n in self.ok.items() for p in range(n)}


def stored(url: str, prefix: str) -> list[tuple[str, int]]:
    engine = audit_engine(url)
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.text("SELECT request_id, position FROM audit_records WHERE request_id LIKE :p"),
                                                {"p": prefix + "-%"})]
    except (sa.exc.OperationalError, sa.exc.ProgrammingError): return []  # no database yet, or no table yet (PostgreSQL)
    finally: engine.dispose()


def assert_every_answer_audited_once(url: str, load: Load, timeout: float = 30):
    "Wait for the writer to catch up, then: each 200 answer's applicants stored once, nothing else stored."
    expected, end = load.expected(), time.time() + timeout
    assert len(load.ok) > 50, f"only {len(load.ok)} requests answered 200"
    while time.time() < end and not expected <= set(stored(url, load.prefix)): time.sleep(0.5)
    rows = stored(url, load.prefix)
    assert len(rows) == len(set(rows)), f"{len(rows) - len(set(rows))} duplicated audit records"
    lost = expected - set(rows)
    assert not lost, f"{len(lost)} of {len(expected)} answered applicants have no audit record, e.g. {sorted(lost)[:3]}"
    # requests that were not answered 200 (a killed worker) may still be audited, but only whole and only once
    extra = {rid for rid, _ in set(rows) - expected}
    assert len(extra) <= load.other, f"{len(extra)} audited requests nobody was answered or refused"


def warm(srv: AuditedServer, rows: list[dict], url: str, prefix: str):
    "One request through, and its record in the database (the table exists before the fault)."
    r = requests.post(srv.url + "/score", json={"applicants": rows[:1], "request_id": f"{prefix}warm-0"}, timeout=30)
    assert r.status_code == 200, r.text
    end = time.time() + 20
    while time.time() < end and not stored(url, prefix + "warm"): time.sleep(0.2)
    assert stored(url, prefix + "warm"), Path(srv.log.name).read_text()[-3000:]


def test_sqlite_locked_for_10s_under_load_loses_nothing(setup):
    home, params_path, rows, tmp = setup
    db = tmp / "locked.sqlite"
    url = f"sqlite:///{db}"
    srv = AuditedServer(home, params_path, url).up()
    try:
        warm(srv, rows, url, "lock")
        load = Load(srv.url, rows, "lock")
        time.sleep(1)
        blocker = sqlite3.connect(db, timeout=10, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # as root chmod does not stop writes: a held write lock does
        locked_at = time.time()
        time.sleep(4)
        load.stop()
        answered_while_locked = len(load.ok)
        time.sleep(max(0.0, 10 - (time.time() - locked_at)))
        assert set(stored(url, "lock")) <= load.expected()  # readers still read under the lock
        blocker.execute("ROLLBACK")
        blocker.close()
        assert answered_while_locked > 50 and load.other == 0  # the service kept answering, spooling records
        assert_every_answer_audited_once(url, load)
    finally:
        srv.stop()


def test_postgres_restarted_under_load_loses_nothing(setup, postgres_server):
    home, params_path, rows, tmp = setup
    url = postgres_server.url
    srv = AuditedServer(home, params_path, url).up()
    try:
        warm(srv, rows, url, "pgdown")
        load = Load(srv.url, rows, "pgdown")
        time.sleep(1.5)
        postgres_server.stop("immediate")
        try: time.sleep(3)
        finally: postgres_server.start()
        time.sleep(1.5)
        load.stop()
        assert load.other == 0
        assert_every_answer_audited_once(url, load)
    finally:
        srv.stop()


def test_killed_service_is_replayed_by_the_next_one(setup):
    home, params_path, rows, tmp = setup
    url = f"sqlite:///{tmp / 'killed.sqlite'}"
    srv = AuditedServer(home, params_path, url).up()
    try:
        warm(srv, rows, url, "kill")
        load = Load(srv.url, rows, "kill")
        time.sleep(2)
        workers = [pid for pid, cmd in srv.descendants() if "worker" in cmd]
        assert workers, srv.descendants()
        for pid in workers: os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        rest = [pid for pid, _ in srv.descendants()]  # and the rest of the service: nothing is flushed on the way out
        for pid in [srv.proc.pid, *rest]: os.kill(pid, signal.SIGKILL)
        srv.proc.wait(30)
        load.stop()
    finally:
        srv.stop()
    assert len(load.ok) > 50
    assert list((tmp / "spool").glob("spool-*.jsonl")), "records were expected to be left in the spool"
    again = AuditedServer(home, params_path, url).up()  # the same spool folder: its start-up replays what was left
    try: assert_every_answer_audited_once(url, load)
    finally: again.stop()
