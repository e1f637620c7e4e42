"""The fast paths of the audit records (orjson for the canonical JSON, a direct spool line) write exactly the text of
the reference implementation (json.dumps) on many random values: floats of every magnitude, NaN and infinities,
numpy scalars, big integers, control characters, DEL, non-ASCII text, non-string keys, enums, dates."""
import datetime as dt
import enum
import json
import math
import random
import struct

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.audit import AuditTrail, _line, audit_engine, audit_records, jsonable, protect, to_json


def reference_to_json(v) -> str:
    return json.dumps(jsonable(v), sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def reference_records(endpoint, request_id, inputs, answers, latency_ms, personal=None, salt="s"):
    "audit_records as it was before its fast path (protect everywhere, json.dumps)."
    META = ("request_id", "scored_at", "model_name", "model_version", "threshold", "method", "bundle_sha")
    personal = personal or {}
    out = []
    for i, (row, ans) in enumerate(zip(inputs, answers)):
        outputs = {k: (protect(v, personal, salt) if isinstance(v, dict) else v) for k, v in ans.items() if k not in META}
        out.append({"request_id": request_id, "position": i, "endpoint": endpoint, "scored_at": ans.get("scored_at"),
                    "inputs": reference_to_json(protect(row, personal, salt)), "outputs": reference_to_json(outputs),
                    "threshold": ans.get("threshold"), "model_name": ans.get("model_name"),
                    "model_version": ans.get("model_version"), "bundle_sha": ans.get("bundle_sha"),
                    "method": ans.get("method"), "latency_ms": float(latency_ms)})
    return out


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


def rand_float(rnd: random.Random) -> float:
    k = rnd.random()
    if k < 0.3: return struct.unpack("d", rnd.getrandbits(64).to_bytes(8, "little"))[0]  # any bits: NaN, inf, subnormal
    if k < 0.5: return rnd.choice([0.0, -0.0, math.inf, -math.inf, math.nan, 1e16, 1e15, 1e-4, 1e-5, 9.99e-5, 5e-324])
    return rnd.uniform(-1, 1) * 10.0 ** rnd.randint(-12, 22)


def rand_str(rnd: random.Random) -> str:
    pool = "abcXYZ019 _-.,:;\"\\/e" + "\x00\n\t\x1f\x7f" + "é€😀\u2028" + "null" * 3
    return "".join(rnd.choice(pool) for _ in range(rnd.randint(0, 12))) if rnd.random() < 0.5 else \
        rnd.choice(["e-5", "1e-6", "0.00001", "null", "log-odds", "PAY_0", ""])


def rand_scalar(rnd: random.Random):
    k = rnd.randrange(14)
    if k < 4: return rand_float(rnd)
    if k == 4: return rnd.randint(-10**6, 10**6)
    if k == 5: return rnd.choice([2**63 - 1, -2**63, 2**64 - 1, 2**64, 2**70, -2**80])
    if k == 6: return rnd.choice([True, False, None])
    if k == 7: return rnd.choice([np.float64(rand_float(rnd)), np.float32(rnd.random()), np.int64(rnd.randint(-9, 9)),
                                  np.bool_(rnd.random() < 0.5)])
    if k == 8: return rnd.choice([Colour.RED, Level.LOW, dt.date(2025, 1, 2), dt.datetime(2025, 1, 2, 3, 4, 5)])
    return rand_str(rnd)


def rand_value(rnd: random.Random, depth: int = 0):
    k = rnd.random()
    if depth > 3 or k < 0.5: return rand_scalar(rnd)
    if k < 0.75:
        keys = [rand_str(rnd) if rnd.random() < 0.9 else rnd.choice([1, 2.5, None, True]) for _ in range(rnd.randint(0, 6))]
        return {key: rand_value(rnd, depth + 1) for key in keys}
    seq = [rand_value(rnd, depth + 1) for _ in range(rnd.randint(0, 5))]
    return tuple(seq) if rnd.random() < 0.2 else seq


def canonical_or_error(f, v):
    try: return f(v)
    except (TypeError, ValueError) as e: return type(e)


def test_to_json_is_the_reference_text_on_random_values():
    rnd = random.Random(17)
    for _ in range(60_000):
        v = rand_value(rnd)
        assert canonical_or_error(to_json, v) == canonical_or_error(reference_to_json, v), repr(v)


def test_to_json_floats_of_every_magnitude():
    rnd = random.Random(4)
    for _ in range(200_000):
        x = rand_float(rnd)
        v = {"x": x, "l": [x, -x]}
        assert to_json(v) == reference_to_json(v), repr(x)


def test_to_json_of_plain_answers_takes_the_fast_path(monkeypatch):
    "Answers of plain, finite values never reach the reference encoder (else the fast path would buy nothing)."
    import pipeline.audit as audit
    calls = []
    monkeypatch.setattr(audit, "_CANONICAL", type("Spy", (), {"encode": lambda self, v: calls.append(v) or "x"})())
    ans = {"risk_score": 0.12104199881050778, "risk_grade": 4, "decision": "approve", "scaled_score": 544.3,
           "reason_codes": [{"feature": "LIMIT_BAL", "value": 50000.0, "contribution": -0.1489955,
                             "text": "LIMIT_BAL (credit limit) = 50000 lowered the risk by 0.149 log-odds"}]}
    assert audit.to_json(ans) == json.dumps(ans, sort_keys=True, separators=(",", ":")) and not calls


def test_spool_line_is_json_dumps_on_random_records():
    rnd = random.Random(5)
    keys = ["request_id", "position", "endpoint", "scored_at", "inputs", "outputs", "threshold", "model_name",
            "model_version", "bundle_sha", "method", "latency_ms", "role"]
    for _ in range(30_000):
        r = {k: (rand_scalar(rnd) if rnd.random() < 0.5 else reference_to_json(rand_value(rnd)) if rnd.random() < 0.5
                 else rand_str(rnd)) for k in rnd.sample(keys, rnd.randint(0, len(keys)))}
        if rnd.random() < 0.05: r[rnd.choice([1, None, 2.5])] = "x"
        assert _line(r) == json.dumps(r, default=str), repr(r)


@pytest.mark.parametrize("personal", [None, {"SEX": "hash", "AGE": "drop"}])
def test_audit_records_are_the_reference_records(personal):
    rnd = random.Random(6)
    for n in range(3000):
        k = rnd.randint(1, 3)
        inputs = [{"AGE": rand_scalar(rnd), "SEX": rand_scalar(rnd), "LIMIT_BAL": rand_float(rnd), "EDUCATION": rand_str(rnd)}
                  for _ in range(k)]
        answers = [{"risk_score": rnd.random(), "risk_grade": rnd.randint(1, 10), "decision": "approve",
                    "reason_codes": [{"feature": "AGE", "value": row["AGE"], "contribution": rand_float(rnd), "text": rand_str(rnd)}],
                    "values": {"AGE": row["AGE"], "SEX": row["SEX"]}, "threshold": rnd.random(), "method": "model",
                    "model_name": "m", "model_version": "3", "bundle_sha": "0" * 64, "scored_at": "2025-01-01T00:00:00.000+00:00"}
                   for row in inputs]
        got = canonical_or_error(lambda _: audit_records("score", f"r{n}", inputs, answers, 1.5, personal, "s"), None)
        want = canonical_or_error(lambda _: reference_records("score", f"r{n}", inputs, answers, 1.5, personal, "s"), None)
        assert got == want
        if isinstance(got, list):
            assert [json.dumps(r, default=str) for r in got] == [_line(r) for r in got]


def test_database_rows_are_the_reference_rows(tmp_path):
    "Records written through the trail land in the database as json.loads of json.dumps of the reference records."
    rnd = random.Random(8)
    url = f"sqlite:///{tmp_path}/audit.sqlite"
    trail = AuditTrail(url, tmp_path / "spool", flush_interval_s=0.01, batch_size=64)
    want = []
    for n in range(500):
        inputs = [{"AGE": rand_scalar(rnd), "LIMIT_BAL": rand_float(rnd), "EDUCATION": rand_str(rnd)}]
        answers = [{"risk_score": rand_float(rnd), "decision": rand_str(rnd), "threshold": rand_float(rnd), "method": "model",
                    "model_name": "m", "model_version": "3", "bundle_sha": "0" * 64, "scored_at": "2025-01-01T00:00:00.000+00:00"}]
        try: recs = audit_records("score", f"r{n:04d}", inputs, answers, rand_float(rnd))
        except (TypeError, ValueError): continue
        trail.write(recs)
        want += [json.loads(json.dumps(r, default=str)) for r in reference_records("score", f"r{n:04d}", inputs, answers, recs[0]["latency_ms"])]
    assert trail.close(30)
    engine = sa.create_engine(url)
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(sa.text("SELECT * FROM audit_records ORDER BY request_id, position"))]
    engine.dispose()
    assert len(rows) == len(want) > 300
    for got, exp in zip(rows, want):
        for k, v in exp.items():
            g = got[k]
            if isinstance(v, float) and math.isnan(v): assert g is None or math.isnan(g), k
            else: assert g == v and type(g) is type(v), (k, g, v)


def test_spool_lines_are_read_as_json_reads_them():
    "_loads gives json.loads's value (types and float bits included) or json's error, on random and damaged lines."
    from pipeline.audit import _loads
    rnd = random.Random(9)
    specials = [b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e400}', b'{"a": 123456789012345678901234567890}',
                b'{"a": -9223372036854775809}', b'{"a": 18446744073709551616}', b'{"a": "\\ud800"}', b'\xef\xbb\xbf{"a": 1}',
                b'{"a": 1, "a": 2}', b'{"a": {"b": 99999999999999999999999}}', b'[1, 2]', b'"x"', b'', b'{"a": 1', b'{"a": "\xff"}',
                b'{"a": 9223372036854775807.0}', b'{"a": 1.7976931348623157e308}', b'{"a": 5e-324}', b'{"a": 01}']
    lines = specials + [json.dumps(rand_value(rnd) if rnd.random() < 0.3 else
                                   {k: rand_scalar(rnd) for k in rnd.sample(["request_id", "position", "inputs", "threshold", "x"], 3)},
                                   default=str).encode() for _ in range(40_000)]
    for line in lines:
        want, got = canonical_or_error(json.loads, line), canonical_or_error(_loads, line)
        assert repr(got) == repr(want) and type(got) is type(want), line
        if isinstance(want, dict):
            for k, v in want.items():
                assert type(got[k]) is type(v) and (not isinstance(v, float) or struct.pack("d", v) == struct.pack("d", got[k]))


def test_read_lines_takes_complete_lines_only(tmp_path):
    from pipeline.audit import read_lines
    rnd = random.Random(10)
    for n in range(300):
        data = b"".join(rnd.choice([b"a", b"bb", b"", b"x" * rnd.randint(0, 50)]) + b"\n" for _ in range(rnd.randint(0, 40)))
        data += rnd.choice([b"", b"unfinished", b"{"])
        path = tmp_path / f"s{n}"; path.write_bytes(data)
        offset = rnd.randint(0, len(data))
        offset = data.rfind(b"\n", 0, offset) + 1  # a line start
        max_lines = rnd.randint(0, 45)
        chunk = rnd.choice([7, 64, 1 << 20])
        buf = data[offset:offset + chunk]  # the reference: what read_lines did before (complete lines of one chunk)
        while buf and b"\n" not in buf and offset + len(buf) < len(data): buf = data[offset:offset + len(buf) + chunk]
        want = buf[:buf.rfind(b"\n") + 1].split(b"\n")[:-1][:max_lines]
        lines, end = read_lines(path, offset, max_lines, chunk=chunk)
        assert lines == want and end == offset + sum(len(l) + 1 for l in want)
        if chunk > len(data): assert lines == data[offset:data.rfind(b"\n") + 1].split(b"\n")[:-1][:max_lines]


def test_without_orjson_the_text_is_the_same(monkeypatch):
    "orjson is an optional speed-up: without it (a bento that does not ship it) every path is json's, same text."
    import pipeline.audit as audit
    rnd = random.Random(11)
    values = [rand_value(rnd) for _ in range(3000)]
    lines = [json.dumps(rand_value(rnd), default=str).encode() for _ in range(3000)]
    recs = [{"request_id": rand_str(rnd), "position": rnd.randint(0, 9), "inputs": rand_str(rnd), "threshold": rand_float(rnd)}
            for _ in range(3000)]
    with_it = ([canonical_or_error(audit.to_json, v) for v in values], [repr(canonical_or_error(audit._loads, l)) for l in lines],
               [audit._line(r) for r in recs])
    monkeypatch.setattr(audit, "orjson", None)
    without = ([canonical_or_error(audit.to_json, v) for v in values], [repr(canonical_or_error(audit._loads, l)) for l in lines],
               [audit._line(r) for r in recs])
    assert with_it == without
    assert without[0] == [canonical_or_error(reference_to_json, v) for v in values]
    assert without[2] == [json.dumps(r, default=str) for r in recs]


def test_driver_insert_stores_what_sqlalchemy_execute_stores(tmp_path):
    """The batch insert through the driver's SQL (tuples, one executemany) stores and refuses what the SQLAlchemy
    execute it replaced stores and refuses: the same rows, values and types, duplicates skipped, the same
    refused rows with the same reasons (a text that is no number in a Float column)."""
    def reference(trail, engine, rows):  # _insert before the driver path, on another database
        try:
            with engine.begin() as c: c.execute(trail.insert, rows)
            return []
        except sa.exc.SQLAlchemyError: pass
        refused = []
        for row in rows:
            try:
                with engine.begin() as c: c.execute(trail.insert, [row])
            except sa.exc.SQLAlchemyError as e:
                key = (trail.table.c.request_id == row["request_id"]) & (trail.table.c.position == row["position"])
                with engine.connect() as c: stored = c.execute(sa.select(sa.func.count()).where(key)).scalar() > 0
                if not stored: refused.append((row, str(getattr(e, "orig", None) or e).strip()[:2000]))
        return refused
    def value():  # what a spool line read back can hold (json's types; integers SQLite can store)
        while True:
            v = json.loads(json.dumps(rand_scalar(rnd), default=str))
            if not isinstance(v, int) or -2**63 <= v < 2**63: return v
    read = lambda e: [tuple(r) for r in e.connect().execute(sa.text("SELECT * FROM audit_records ORDER BY request_id, position"))]
    rnd = random.Random(11)
    for n, bad_share in enumerate((0.0, 0.0, 0.02)):
        trail = AuditTrail(f"sqlite:///{tmp_path}/a{n}.sqlite", tmp_path / f"spool{n}", flush_interval_s=3600)
        ref = audit_engine(f"sqlite:///{tmp_path}/b{n}.sqlite")
        trail.table.metadata.create_all(ref)
        rows = []
        for i in range(400):
            row = {c: value() for c in trail.columns} | {"request_id": f"r{i % 150}", "position": i % 2}
            for c in ("threshold", "latency_ms"):  # Float columns: numbers, None, numeric text
                row[c] = rnd.choice([rand_float(rnd), rnd.randint(-9, 9), None, True, "0.5"])
            if rnd.random() < bad_share: row |= {"request_id": f"bad{i}", "latency_ms": "word"}  # no number: refused
            rows.append(row)
        refused = trail._insert(rows)
        assert refused == reference(trail, ref, rows)
        assert len(refused) == sum(r["request_id"].startswith("bad") for r in rows) and (len(refused) > 0) == (bad_share > 0)
        got, want = read(trail.engine), read(ref)
        assert got == want and [[type(v) for v in r] for r in got] == [[type(v) for v in r] for r in want]
        if not bad_share: assert len(got) == 150  # 400 rows, 150 keys
        trail.close(); ref.dispose()
