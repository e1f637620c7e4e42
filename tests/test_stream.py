"""Event-stream scoring (issue 16, part 3) on a real Kafka-protocol broker: two `python -m pipeline.stream` processes
in one consumer group, one SIGKILLed and restarted, answer each valid event id once and dead-letter each invalid event
once; a claim left half-published by a crash is published once; SIGTERM finishes the batch, commits and exits 0."""
import asyncio
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml

from tests.conftest import ROOT, deep_merge
from tests.test_service import small_model  # noqa: F401  (fixture)

ENV = {k: v for k, v in os.environ.items() if k not in ("RISK_AUDIT_DB_URL", "RISK_STREAM_BROKERS")}


def stream_params(small_params, broker, tmp, **stream) -> tuple[dict, object]:
    "Params for a stream on new topics (input 4 partitions, output 4, dead letters 2) and a new group; and their file."
    name = uuid.uuid4().hex[:8]
    topics = {"input_topic": broker.create_topic(f"applicants-{name}", 4), "output_topic": broker.create_topic(f"scores-{name}", 4),
              "dead_letter_topic": broker.create_topic(f"dead-{name}", 2)}
    p = deep_merge(small_params, {
        "stream": {"brokers": [broker.bootstrap], "group": f"scorers-{name}", "batch_size": 250, "max_wait_ms": 50,
                   "session_timeout_s": 3, "claim_timeout_s": 2, "shutdown_timeout_s": 20, **topics, **stream},
        "serve": {"audit": {"path": str(tmp / "audit.sqlite"), "spool_dir": str(tmp / "spool")}}})
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return p, path


def events(rows: list[dict], n: int) -> tuple[list[bytes], set[str], dict[str, str]]:
    """`n` event values: per 100, one of each invalid kind (age out of bounds, unknown field, no event id, not JSON), one
    repeat of the previous event (a producer's retry), the rest valid. Also the valid ids, and the invalid ids' kinds."""
    values, valid, invalid = [], set(), {}
    for i in range(n):
        row, kind = rows[i % len(rows)], i % 100
        if kind == 3: body, invalid[f"bad-{i}"] = {"event_id": f"bad-{i}", "applicant": row | {"AGE": 150}}, "AGE"
        elif kind == 13: body, invalid[f"bad-{i}"] = {"event_id": f"bad-{i}", "applicant": row, "extra": 1}, "extra"
        elif kind == 23: body = {"applicant": row}
        elif kind == 33:
            values.append(b"not json {"); continue
        elif kind == 43:
            values.append(values[-1]); continue
        else:
            body = {"event_id": f"ev-{i}", "applicant": row}
            valid.add(body["event_id"])
        values.append(json.dumps(body).encode())
    return values, valid, invalid


def produce(bootstrap: str, topic: str, values: list[bytes]) -> list[tuple[int, int]]:
    "Send `values` to `topic`; the (partition, offset) of each, once acknowledged."
    from aiokafka import AIOKafkaProducer

    async def go():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            sent = [await producer.send(topic, v) for v in values]
            return [(m.partition, m.offset) for m in await asyncio.gather(*sent)]
        finally: await producer.stop()
    return asyncio.run(go())


def read_topic(bootstrap: str, topic: str) -> list[tuple[str, dict]]:
    "Every record of `topic`: (key, JSON value)."
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go():
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
            c.assign(parts)
            await c.seek_to_beginning(*parts)
            out = []
            while batch := await c.getmany(timeout_ms=1000):
                out += [(r.key.decode(), json.loads(r.value)) for recs in batch.values() for r in recs]
            return out
        finally: await c.stop()
    return asyncio.run(go())


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    "The group's committed offset of each partition of `topic` (0 when none)."
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go():
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await c.start()
        try: return {p: (await c.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)}
        finally: await c.stop()
    return asyncio.run(go())


def claims(db, where: str = "1") -> int:
    with sqlite3.connect(db) as c:
        try: return c.execute(f"SELECT count(*) FROM stream_claims WHERE {where}").fetchone()[0]  # nosec B608: test-only literals
        except sqlite3.OperationalError: return 0  # not created yet


def start(path, bundle, log):
    return subprocess.Popen([sys.executable, "-m", "pipeline.stream", "--params", str(path), "--model", str(bundle.path)],
                            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(cond, timeout: float, what: str, procs=(), logs=()):
    end = time.time() + timeout
    while time.time() < end:
        if cond(): return
        for p, log in zip(procs, logs):
            if p.poll() is not None: raise AssertionError(f"a stream process exited {p.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n" + "\n".join(l.read_text()[-2000:] for l in logs))


def stop(procs, timeout: float = 30) -> list[int]:
    for p in procs:
        if p.poll() is None: os.killpg(p.pid, signal.SIGTERM)
    try: return [p.wait(timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def rows(small_model):
    return json.loads(small_model["test"].to_json(orient="records"))


def test_two_processes_one_killed_and_restarted_answer_each_event_once(kafka_broker, small_model, small_params, rows, tmp_path):
    from pydantic import TypeAdapter
    from pipeline.request import ScoreAnswer
    from pipeline.scorer import Scorer, check_sample
    params, path = stream_params(small_params, kafka_broker, tmp_path)
    s, bundle, db = params["stream"], small_model["bundle"], tmp_path / "audit.sqlite"
    values, valid, invalid = events(rows, 10_000)
    placed = produce(kafka_broker.bootstrap, s["input_topic"], values[:5000])
    logs = [tmp_path / "a.log", tmp_path / "b.log", tmp_path / "a2.log"]
    procs = [start(path, bundle, open(logs[0], "w")), start(path, bundle, open(logs[1], "w"))]
    try:
        killed = procs[0].pid
        wait_for(lambda: claims(db, "published") >= 2000 and claims(db, f"owner LIKE '%-{killed}-%'") > 0, 90,
                 "2,000 events answered, some by the first process", procs, logs)
        os.killpg(killed, signal.SIGKILL)   # mid-run: half the events are not even produced yet
        procs[0].wait()
        placed += produce(kafka_broker.bootstrap, s["input_topic"], values[5000:])
        procs[0] = start(path, bundle, open(logs[2], "w"))
        expected = len(valid) + 4 * 100   # one claim per valid event id and per invalid event
        wait_for(lambda: claims(db, "published") >= expected, 120, f"{expected} events answered", procs[1:], logs[1:])
        assert stop(procs) == [0, 0]
    finally: stop(procs, 5)
    assert claims(db) == claims(db, "published") == expected
    answers = read_topic(kafka_broker.bootstrap, s["output_topic"])
    per_id = collections.Counter(k for k, _ in answers)
    assert set(per_id) == valid and set(per_id.values()) == {1}, per_id.most_common(3)   # exactly one answer per event id
    checked = TypeAdapter(list[ScoreAnswer]).validate_python([a for _, a in answers])
    assert all(a.request_id == k == v["event_id"] for a, (k, v) in zip(checked, answers))
    assert {(a.model_version, a.bundle_sha, a.method) for a in checked} == {("local", bundle.sha, "model")}
    by_id = {k: v for k, v in answers}
    again = Scorer(bundle, params, check_sample(params)).answers(rows[:50])   # the same scores as the service's scorer
    assert [by_id[f"ev-{i}"]["risk_score"] for i in range(50) if f"ev-{i}" in by_id] == \
           pytest.approx([a["risk_score"] for i, a in enumerate(again) if f"ev-{i}" in by_id], abs=1e-12)
    dead = read_topic(kafka_broker.bootstrap, s["dead_letter_topic"])
    per_key = collections.Counter(k for k, _ in dead)
    assert len(dead) == len(per_key) == 400   # one dead letter per invalid event
    assert {k for k in per_key if not k.startswith("@")} == set(invalid)
    for key, letter in dead:
        if key in invalid: assert invalid[key] in letter["reason"] and letter["event_id"] == key
        else: assert letter["event_id"] is None and key == f"@{s['input_topic']}:{letter['source']['partition']}:{letter['source']['offset']}"
    assert sum(letter["reason"].startswith("not JSON") for _, letter in dead) == 100
    with sqlite3.connect(db) as c:   # one audit record per answered event id
        assert c.execute("SELECT count(*), count(DISTINCT request_id) FROM audit_records WHERE endpoint = 'stream'").fetchone() == (len(valid),) * 2
    ends = {}
    for p, o in placed: ends[p] = max(ends.get(p, 0), o + 1)
    assert committed(kafka_broker.bootstrap, s["group"], s["input_topic"], 4) == ends   # every offset committed


def test_a_claim_left_half_published_by_a_crash_is_published_once(kafka_broker, small_model, small_params, rows, tmp_path):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from pipeline.scorer import Scorer, check_sample
    from pipeline.stream import Claims, StreamScorer, published_keys, topic_ends
    params, _ = stream_params(small_params, kafka_broker, tmp_path, claim_timeout_s=0)
    s, url = params["stream"], f"sqlite:///{tmp_path / 'audit.sqlite'}"
    scorer = Scorer(small_model["bundle"], params, check_sample(params))
    values, valid, _ = events(rows, 40)
    records = [type("Record", (), {"topic": s["input_topic"], "partition": 0, "offset": i, "value": v}) for i, v in enumerate(values)]

    async def go():
        producer, reader = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap), AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start(); await reader.start()
        try:
            async def publish(items):
                sent = [await producer.send(t, v, key=k.encode()) for t, k, v in items]
                return [(m.topic, m.partition, m.offset) for m in await asyncio.gather(*sent)]

            async def dies_half_way(items):
                await publish(items[: len(items) // 2])
                raise ConnectionError("killed while publishing")
            scan = lambda topic, start, keys: published_keys(reader, topic, start, keys)
            ends = lambda: topic_ends(reader, [s["output_topic"], s["dead_letter_topic"]])
            with pytest.raises(ConnectionError):
                await StreamScorer(scorer, params, Claims(url, "dead"), dies_half_way, scan, await ends()).handle(records)
            second = StreamScorer(scorer, params, Claims(url, "alive"), publish, scan, await ends())
            return await second.handle(records), await second.handle(records)
        finally:
            await producer.stop()
            try: await reader.stop()
            except asyncio.CancelledError: pass
    first, again = asyncio.run(go())
    distinct = len(valid) + 4   # 35 valid ids and 4 invalid events
    assert first["recovered"] + first["republished"] == distinct and first["recovered"] == distinct // 2, first
    assert again["duplicates"] == len(records) and again["republished"] == again["answers"] == 0
    answers = collections.Counter(k for k, _ in read_topic(kafka_broker.bootstrap, s["output_topic"]))
    assert set(answers) == valid and set(answers.values()) == {1}
    assert len(read_topic(kafka_broker.bootstrap, s["dead_letter_topic"])) == 4


def test_sigterm_finishes_the_batch_commits_and_exits_0(kafka_broker, small_model, small_params, rows, tmp_path):
    params, path = stream_params(small_params, kafka_broker, tmp_path, batch_size=50)
    s, db, log = params["stream"], tmp_path / "audit.sqlite", tmp_path / "stream.log"
    placed, done = {}, threading.Event()

    def feed():   # a steady stream of valid events while the process runs and stops: at most 15,000
        for k in range(75):
            if done.is_set(): return
            ids = [f"t-{k}-{i}" for i in range(200)]
            batch = [json.dumps({"event_id": e, "applicant": rows[i % len(rows)]}).encode() for i, e in enumerate(ids)]
            placed.update(zip(ids, produce(kafka_broker.bootstrap, s["input_topic"], batch)))
            time.sleep(0.1)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    proc = start(path, small_model["bundle"], open(log, "w"))
    try:
        wait_for(lambda: claims(db, "published") >= 500, 90, "500 events answered", [proc], [log])
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        done.set()
        feeder.join(30)
        stop([proc], 5)
    text = log.read_text()
    assert "stopping: finishing the batch in hand" in text and "stopped: answers" in text and "Traceback" not in text
    offsets = committed(kafka_broker.bootstrap, s["group"], s["input_topic"], 4)
    before = {e for e, (p, o) in placed.items() if o < offsets[p]}
    assert len(before) >= 500 and len(before) < len(placed)   # stopped in the middle of the stream
    assert claims(db) == claims(db, "published") == len(before)   # answered = committed: the batch in hand finished
    answers = collections.Counter(k for k, _ in read_topic(kafka_broker.bootstrap, s["output_topic"]))
    assert set(answers) == before and set(answers.values()) == {1}


def test_command_line_help_failures_and_no_training_code(kafka_broker, small_model, small_params, tmp_path, caplog):
    code = ("import sys, pipeline.stream as m\ntry: m.main(['--help'])\nexcept SystemExit as e: assert e.code == 0\n"
            "print(sorted(x for x in sys.modules if x.split('.')[0] in ('optuna', 'shap', 'matplotlib', 'mlflow') or x == 'pipeline.train'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and "--brokers" in r.stdout and r.stdout.strip().splitlines()[-1] == "[]", r.stderr[-2000:]
    from pipeline.stream import main
    params, path = stream_params(small_params, kafka_broker, tmp_path, input_topic="no-such-topic")
    model = ["--params", str(path), "--model", str(small_model["bundle"].path)]
    assert main([*model]) == 2 and "topic 'no-such-topic' does not exist" in caplog.text
    from tests.conftest import free_port
    assert main([*model, "--brokers", f"127.0.0.1:{free_port()}"]) == 2 and "Unable to bootstrap" in caplog.text
    assert main(["--params", str(path), "--model", str(tmp_path / "nothing")]) == 2 and "not a model bundle" in caplog.text


def test_a_promotion_reaches_a_running_stream_scorer(kafka_broker, small_trained, small_splits, small_params, rows, tmp_path,
                                                    monkeypatch):
    "`stream.model: champion` on a real MLflow store: a promotion, then a rollback, answer the next events without a restart."
    from pipeline.registry import Registry, promote, rollback
    from tests.test_champion import GATE_OPEN, register
    params, path = stream_params(small_params, kafka_broker, tmp_path, model="champion")
    p = deep_merge(params, {"register": GATE_OPEN, "serve": {"follow_poll_s": 0.3}})
    path.write_text(yaml.safe_dump(p))
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["MLFLOW_TRACKING_URI"])
    monkeypatch.chdir(tmp_path)
    models = small_trained["models"]
    v1 = register((p, tmp_path, store), models["xgboost"], models["baseline"], small_splits, "xgboost")  # the first champion
    v2 = register((deep_merge(p, {"register": {"approvals_required": 1}}), tmp_path, store), models["baseline"],
                  models["baseline"], small_splits, "baseline")  # waits as challenger
    reg = Registry(p["mlflow"]["registered_model"])
    assert reg.alias("champion") == v1 and reg.alias("challenger") == v2
    s, log = p["stream"], tmp_path / "stream.log"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stream", "--params", str(path)], cwd=ROOT, env={**ENV, **store},
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    sent = []

    def send(n: int) -> list[str]:
        ids = [f"ev-{len(sent) + i}" for i in range(n)]
        produce(kafka_broker.bootstrap, s["input_topic"], [json.dumps({"event_id": e, "applicant": rows[i % len(rows)]}).encode()
                                                          for i, e in enumerate(ids)])
        sent.extend(ids)
        return ids

    def versions(ids) -> dict[str, str]:
        got = {k: v["model_version"] for k, v in read_topic(kafka_broker.bootstrap, s["output_topic"])}
        return {i: got[i] for i in ids if i in got}

    def answered_by(version: str, timeout: float = 60) -> list[str]:
        "Events sent every 0.3 s until one is answered by `version`; then a batch sent after it must all be answered by it."
        end = time.time() + timeout
        while time.time() < end:
            if proc.poll() is not None: raise AssertionError(f"the stream process exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            ids = send(5)
            time.sleep(0.3)
            if version in versions(sent).values(): break
        else: raise AssertionError(f"no answer by version {version} in {timeout} s:\n{log.read_text()[-3000:]}")
        after = send(20)
        wait_for(lambda: len(versions(after)) == 20, 60, "20 answers", [proc], [log])
        return sorted(set(versions(after).values()))

    try:
        first = send(20)
        wait_for(lambda: len(versions(first)) == 20, 90, "the first answers", [proc], [log])
        assert set(versions(first).values()) == {v1}
        promote(reg, v2, "drill: a running stream follows", force=True)
        assert answered_by(v2) == [v2]
        rollback(reg, "drill: and back")
        assert answered_by(v1) == [v1]
        pid = proc.pid
        assert stop([proc]) == [0] and pid == proc.pid  # one process all along: no restart
    finally: stop([proc], 5)
    text = log.read_text()
    assert text.count("swapped in") >= 2 and f"following champion@{v1}" in text, text[-3000:]
    answers = collections.Counter(k for k, _ in read_topic(kafka_broker.bootstrap, s["output_topic"]))
    assert set(answers) == set(sent) and set(answers.values()) == {1}  # each event answered once, across the swaps
