"""The audit trail against real databases and real failures: SQLite locked, PostgreSQL restarted, a writer killed
with SIGKILL, records the database refuses. Every test checks the database's own contents at the end."""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from pipeline.audit import AuditTrail, audit_engine, audit_records, audit_salt
from tests.conftest import ROOT


def record(request_id: str, position: int = 0) -> dict:
    return {"request_id": request_id, "position": position, "endpoint": "/score", "scored_at": "2025-01-01T00:00:00Z",
            "inputs": json.dumps({"LIMIT_BAL": 50000}), "outputs": json.dumps({"risk_score": 0.2, "reason_codes": []}),
            "threshold": 0.5, "model_name": "m", "model_version": "1", "bundle_sha": "0" * 64, "method": "model",
            "latency_ms": 1.0}


def stored(url: str, prefix: str) -> list[tuple[str, int]]:
    "Every (request_id, position) in the audit table whose id starts with `prefix`, duplicates included."
    engine = audit_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT request_id, position FROM audit_records WHERE request_id LIKE :p"),
                             {"p": prefix + "%"}).fetchall()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows]


def write_in_threads(trail: AuditTrail, prefix: str, threads: int = 8, per_thread: int = 250, pause_s: float = 0.01):
    "`threads` threads each write `per_thread` records in requests of 1-4 applicants; the keys written."
    written, lock = set(), threading.Lock()

    def worker(t):
        rng, i = random.Random(t), 0
        while i < per_thread:
            n = min(rng.randint(1, 4), per_thread - i)
            rid = f"{prefix}-{t}-{i}"
            trail.write([record(rid, p) for p in range(n)])
            with lock: written.update((rid, p) for p in range(n))
            i += n
            time.sleep(pause_s)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool: th.start()
    return pool, written


def assert_exactly_once(url: str, prefix: str, expected: set):
    rows = stored(url, prefix)
    assert len(rows) == len(set(rows)), "duplicated audit rows"
    missing = expected - set(rows)
    assert not missing, f"{len(missing)} audit rows lost, e.g. {sorted(missing)[:3]}"
    assert set(rows) == expected, f"{len(set(rows) - expected)} rows nobody wrote"


def test_sqlite_locked_loses_nothing(tmp_path):
    "SQLite locked by another connection for 3 s while 8 threads write 2,000 records: all stored once afterwards."
    db = tmp_path / "audit.sqlite"
    url = f"sqlite:///{db}"
    trail = AuditTrail(url, tmp_path / "spool", flush_interval_s=0.05, max_backoff_s=0.5)
    pool, written = write_in_threads(trail, "lock")
    time.sleep(0.2)
    blocker = sqlite3.connect(db, isolation_level=None, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")  # no other connection can write until ROLLBACK
    time.sleep(3)
    during = trail.pending
    stored_during = len(stored(url, "lock"))  # WAL: reading is still possible
    unhealthy = not trail.healthy(max_pending=0)
    blocker.execute("ROLLBACK")
    blocker.close()
    for th in pool: th.join()
    assert len(written) == 2000
    assert during > 0 and trail.retries > 0 and unhealthy, "the outage was never seen: the test proves nothing"
    assert stored_during < 2000
    assert trail.close(timeout=60)
    assert trail.pending == 0 and trail.failed == 0
    assert_exactly_once(url, "lock", written)
    assert not list((tmp_path / "spool").glob("spool-*")), "a drained spool is removed at close"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_loses_nothing(postgres_server, tmp_path, mode):
    """PostgreSQL stopped for 2 s (a clean shutdown, or `immediate`: as if it crashed) and started again while 8
    threads write 2,000 records: 0 lost, 0 duplicated."""
    url, prefix = postgres_server.url, f"pgrestart-{mode}"
    trail = AuditTrail(url, tmp_path / "spool", flush_interval_s=0.05, max_backoff_s=0.5)
    pool, written = write_in_threads(trail, prefix)
    time.sleep(0.3)
    postgres_server.stop(mode)  # open connections are closed under the trail
    try:
        time.sleep(2)
        during = trail.pending
    finally:
        postgres_server.start()
    for th in pool: th.join()
    assert during > 0 and trail.retries > 0, "the outage was never seen: the test proves nothing"
    assert trail.close(timeout=60)
    assert trail.pending == 0 and trail.failed == 0
    assert_exactly_once(url, prefix, written)


CHILD = """
import sys, time
from pipeline.audit import AuditTrail
url, spool = sys.argv[1], sys.argv[2]
trail = AuditTrail(url, spool, flush_interval_s=0.02, max_backoff_s=0.2)
for i in range(100000):
    trail.write([{"request_id": f"kill-{i}", "position": p, "endpoint": "/score", "inputs": "{}", "outputs": "{}"}
                 for p in range(2)])
    print(i + 1, flush=True)  # this write has returned
    time.sleep(0.002)
"""


def test_killed_writer_is_replayed(tmp_path):
    "kill -9 of a writer process: a new trail on the same spool folder stores every record whose write returned, once."
    db, spool = tmp_path / "audit.sqlite", tmp_path / "spool"
    url = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(spool)], stdout=subprocess.PIPE, text=True, env=env)
    blocker = None
    try:
        returned = 0
        for line in child.stdout:
            returned = int(line)
            if returned == 200 and blocker is None:  # from here on, records pile up in the spool
                blocker = sqlite3.connect(db, isolation_level=None, timeout=30)
                blocker.execute("BEGIN EXCLUSIVE")
            if returned >= 600: break
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read().split()
        returned = int(rest[-1]) if rest else returned
    finally:
        if child.poll() is None: child.kill()
        child.wait()
        if blocker is not None: blocker.execute("ROLLBACK"); blocker.close()
    moved_before = {rid for rid, _ in stored(url, "kill-")}
    assert len(moved_before) < returned, "everything was moved before the kill: the test proves nothing"

    trail = AuditTrail(url, spool, flush_interval_s=0.05)
    assert trail.pending > 0  # the dead process's spool was claimed at start-up
    assert trail.close(timeout=60)
    rows = stored(url, "kill-")
    assert len(rows) == len(set(rows)), "duplicated audit rows"
    expected = {(f"kill-{i}", p) for i in range(returned) for p in range(2)}
    assert expected <= set(rows), f"{len(expected - set(rows))} records lost"
    # at most the one write in flight when the process died, whole, besides those that returned
    extra = set(rows) - expected
    assert extra <= {(f"kill-{returned}", 0), (f"kill-{returned}", 1)}
    assert not list(spool.glob("spool-*")), "the replayed spool is removed"


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
@pytest.mark.parametrize("bad_id", ["x" * 65, "nul\x00id"], ids=["65 chars", "NUL"])
def test_refused_record_takes_no_other(db, bad_id, request, tmp_path):
    "One record the database refuses among 200 good ones in the same batch: it is dead-lettered, the 200 are stored."
    url = f"sqlite:///{tmp_path}/audit.sqlite" if db == "sqlite" else request.getfixturevalue("postgres_url")
    prefix = f"refuse-{db}-{'long' if len(bad_id) > 64 else 'nul'}-"
    good = [record(f"{prefix}{i}") for i in range(200)]
    trail = AuditTrail(url, tmp_path / "spool", batch_size=256, flush_interval_s=1.0)
    trail.write(good[:100])
    trail.write([record(bad_id)])
    trail.write(good[100:])
    assert trail.close(timeout=60)
    assert trail.written == 200 and trail.failed == 1 and trail.pending == 0
    assert_exactly_once(url, prefix, {(r["request_id"], 0) for r in good})
    letters = [json.loads(l) for l in trail.dead_letter.read_text().splitlines()]
    assert [d["record"]["request_id"] for d in letters] == [bad_id]
    assert letters[0]["reason"], "the database's reason is kept"
    print(db, repr(bad_id[:8]), "->", letters[0]["reason"].splitlines()[0])


def test_live_spool_is_not_replayed_by_another_trail(tmp_path):
    "Two trails (two workers) on one spool folder: neither claims the other's spool while it is alive."
    url = f"sqlite:///{tmp_path}/audit.sqlite"
    a = AuditTrail(url, tmp_path / "spool", flush_interval_s=0.05)
    b = AuditTrail(url, tmp_path / "spool", flush_interval_s=0.05, rescan_s=0.1)
    a.write([record("live-a")])
    b.write([record("live-b")])
    time.sleep(0.5)
    assert a.leftovers == [] and b.leftovers == []
    assert a.close(timeout=30) and b.close(timeout=30)
    assert sorted(stored(url, "live-")) == [("live-a", 0), ("live-b", 0)]


def test_database_down_at_start_up(tmp_path):
    "A trail starts, accepts writes and reports not ready while its database cannot be reached; nothing is lost."
    folder = tmp_path / "db"
    folder.mkdir()
    blocker = sqlite3.connect(folder / "audit.sqlite", isolation_level=None)
    blocker.execute("PRAGMA journal_mode=WAL")
    blocker.execute("BEGIN EXCLUSIVE")
    url = f"sqlite:///{folder / 'audit.sqlite'}"
    trail = AuditTrail(url, tmp_path / "spool", flush_interval_s=0.05, max_backoff_s=0.2, max_pending=5)
    for i in range(10): trail.write([record(f"down-{i}")])
    time.sleep(1.5)
    assert trail.pending == 10 and not trail.healthy() and trail.healthy(max_pending=10)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert trail.close(timeout=30)
    assert len(stored(url, "down-")) == 10


def test_audit_records_protect_personal_data(monkeypatch):
    "Personal columns are hashed with the salt of RISK_AUDIT_SALT or left out, in the inputs and in /explain's values."
    rows = [{"LIMIT_BAL": 50000, "SEX": "2", "AGE": 35}]
    answers = [{"risk_score": 0.3, "method": "model", "values": {"LIMIT_BAL": 50000.0, "SEX": 2.0, "AGE": 35.0},
                "contributions": {"LIMIT_BAL": 0.1, "SEX": 0.02, "AGE": -0.1}}]
    policy = {"SEX": "hash", "AGE": "drop"}
    monkeypatch.delenv("RISK_AUDIT_SALT", raising=False)
    default = audit_records("/explain", "r", rows, answers, 2.0, policy)[0]
    monkeypatch.setenv("RISK_AUDIT_SALT", "secret")
    assert audit_salt() == "secret"
    salted = audit_records("/explain", "r", rows, answers, 2.0, policy)[0]
    inputs, outputs = json.loads(salted["inputs"]), json.loads(salted["outputs"])
    assert "AGE" not in inputs and "AGE" not in outputs["values"] and "AGE" not in outputs["contributions"]
    assert inputs["SEX"].startswith("sha256:") and inputs["SEX"] != json.loads(default["inputs"])["SEX"]
    assert len(inputs["SEX"]) == len("sha256:") + 64  # a digest, not the value
    assert inputs["LIMIT_BAL"] == 50000 and salted["endpoint"] == "/explain" and salted["position"] == 0
