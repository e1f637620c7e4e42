"""The batch job's fast path (issue #17): the compiled pass that gives credits only to the rows that may be declined,
the chunk's Arrow table built without pandas, and the writer that no longer falls back to `combine` on empty reasons."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.score as score
from pipeline.attribution import PathAttribution
from pipeline.score import ScoresWriter, combine, run_job
from pipeline.scorer import Scorer, check_sample, decline_cut, picked_credits
from tests.conftest import deep_merge
from tests.test_fast_path import _booster


@pytest.mark.parametrize("seed,depth,extra", [(0, 1, {}), (2, 7, {}), (3, 10, {"grow_policy": "lossguide", "max_leaves": 24})])
def test_select_gives_walks_margins_and_the_credits_of_the_rows_it_picks(seed, depth, extra):
    b, X = _booster(seed, depth, **extra)
    paths = PathAttribution(b)
    for data in (X, np.nan_to_num(X, nan=0.25), X[:1], X[:65], X[:0]):
        margin, credits = paths.walk(data)
        for cut in (-np.inf, np.inf, *(np.quantile(margin, [0.1, 0.5, 0.97]) if len(data) else ())):
            m, rows, c = paths.select(data, cut)
            picked = np.flatnonzero(margin >= np.float32(cut))
            assert np.array_equal(m, margin) and np.array_equal(rows, picked)
            assert np.array_equal(c, credits[picked])  # to the bit: the same additions in the same order


def test_picked_credits_walks_the_rows_the_cut_missed():
    credits = np.arange(12.0).reshape(4, 3)
    out = picked_credits(np.array([1, 5, 9]), np.array([1, 4, 6, 9]), credits, lambda X: X[:, :3] * 0 - 1.0, np.zeros((10, 3)))
    assert np.array_equal(out, [[0, 1, 2], [-1, -1, -1], [9, 10, 11]])


def test_decline_cut_is_just_below_the_threshold_and_open_at_the_ends():
    from scipy.special import expit
    p = lambda m: expit(0.8 * np.asarray(m) - 0.5)
    cut = decline_cut(p, 0.25)
    assert p([cut])[0] < 0.25 <= p([cut + 2e-3 * (1 + abs(cut))])[0]
    assert decline_cut(p, 0.0) == -np.inf and decline_cut(p, 1.1) == np.inf


@pytest.fixture(scope="module")
def rows_and_scorer(small_bundle, small_params, small_splits):
    from pipeline.validate import validate_for_scoring
    rows = validate_for_scoring(small_splits["test"].drop(columns=small_params["data"]["target"]).head(1500), small_params)[0]
    rows.loc[rows.index[:40], "EDUCATION"] = "6"  # a rare code, pooled
    rows.loc[rows.index[40:120], "BILL_AMT2"] = 0.0  # a ratio's zero denominator: missing, a reason value "missing"
    rows.loc[rows.index[120:200], "BILL_AMT1"] = -0.0  # written "-0.0", as str() writes it
    scorer = Scorer(small_bundle, small_params, check_sample(small_params))
    assert scorer.paths is not None and scorer.paths.margin_checked and np.isfinite(scorer.cut)
    return rows, scorer


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype == object: assert list(map(str, a[k].ravel())) == list(map(str, b[k].ravel())), k
        else: assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def test_declined_in_one_pass_equals_margin_then_walk_whatever_the_cut(rows_and_scorer):
    rows, scorer = rows_and_scorer
    fast = scorer.score(rows, "declined")
    declined = fast["decision"] == "decline"
    assert 0 < declined.sum() < len(rows)
    reference = scorer.score(rows, declined)  # a mask: the margin, then a walk of the declined rows
    _same(fast, reference)
    cut = scorer.cut
    try:
        for wrong in (np.inf, cut + 1.0, -np.inf):  # picks none, misses some, picks every row: the same answers
            scorer.cut = wrong
            _same(scorer.score(rows, "declined"), reference)
    finally: scorer.cut = cut


@pytest.mark.parametrize("reasons", ["declined", "all", "none", "mask"])
def test_table_is_from_pandas_of_frame_to_the_bit(rows_and_scorer, reasons):
    rows, scorer = rows_and_scorer
    if reasons == "mask": reasons = np.arange(len(rows)) % 3 == 0
    head = pa.Table.from_pandas(pd.DataFrame({"_row": rows.index.to_numpy()}), preserve_index=False)
    expected = pa.Table.from_pandas(pd.concat([head.to_pandas(), scorer.frame(rows, reasons)], axis=1), preserve_index=False)
    got = scorer.table(rows, reasons, head)
    assert got.schema.equals(expected.schema, check_metadata=True) and got.equals(expected)


def test_value_codes_write_each_value_as_str_does(rows_and_scorer):
    from pipeline.scorer import reason_values, value_codes
    rows, scorer = rows_and_scorer
    X, raw = scorer.matrix(rows)
    names = scorer.field_names()
    rng = np.random.default_rng(0)
    which = np.sort(rng.choice(len(rows), 400, replace=False))
    which[:3] = [40, 41, 120]  # a missing ratio, a negative zero
    idx = rng.integers(-1, len(names), (len(which), 4))
    idx[:2, 0], idx[2, 0] = names.index("payment_ratio_1"), names.index("BILL_AMT1")
    codes, vocab = value_codes(rows, raw, scorer.numeric, names, which, idx)
    expected = reason_values(rows, raw, scorer.numeric, names, which, idx)
    got = [[None if c < 0 else vocab[c] for c in r] for r in codes]
    assert got == [[None if v is None else str(v) for v in r] for r in expected]
    assert got[0][0] == "missing" and got[2][0] == "-0.0"


def test_writer_promotes_a_reason_column_empty_in_the_first_chunk_as_combine_does(tmp_path):
    frames = [pd.DataFrame({"_row": [0, 1], "reason_1": np.array([None, None], object), "x": [0.5, np.nan]}),
              pd.DataFrame({"_row": [2, 3], "reason_1": pd.array(["PAY_0", None], dtype="str"), "x": [1.0, 2.0]})]
    tables = [pa.Table.from_pandas(f, preserve_index=False) for f in frames]
    parts = []
    for i, t in enumerate(tables):
        parts.append(tmp_path / f"part-{i}.arrow")
        score._write_atomic(t, parts[-1])
    combine(parts, tmp_path / "combined.parquet")
    with ScoresWriter(tmp_path / "streamed.parquet", {"reason_1": pa.large_string()}) as w:
        for t in tables: w.add(t)
    assert w.finished
    a, b = pq.read_table(tmp_path / "combined.parquet"), pq.read_table(tmp_path / "streamed.parquet")
    assert a.schema.equals(b.schema, check_metadata=True) and a.equals(b)
    with ScoresWriter(tmp_path / "empty.parquet", {"reason_1": pa.large_string()}) as w:
        w.add(tables[0]); w.add(tables[0])  # empty to the end: `combine` keeps it null, so the writer leaves it to `combine`
    assert not w.finished and not (tmp_path / "empty.parquet").exists()


def test_job_without_reasons_streams_its_output_without_combine(small_bundle, small_params, small_splits, tmp_path, monkeypatch):
    src = tmp_path / "in.parquet"
    rows = small_splits["test"].drop(columns=small_params["data"]["target"]).head(900)
    rows.to_parquet(src)
    params = deep_merge(small_params, {"serve": {"batch": {"reason_codes_for": "none"}}})
    monkeypatch.setattr(score, "combine", lambda *a: (_ for _ in ()).throw(AssertionError("fell back to combine")))
    report = run_job(src, tmp_path / "s.parquet", small_bundle, params, chunk_rows=300, progress=False)
    out = pq.read_table(tmp_path / "s.parquet")
    assert report["rows_scored"] == out.num_rows and pa.types.is_null(out.schema.field("reason_1").type)
    assert out.schema.metadata is None  # as `combine` wrote it before: every part cast, no pandas metadata
    assert json.loads((tmp_path / "s.report.json").read_text())["rows_in"] == len(rows)
