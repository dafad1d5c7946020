"""Streaming tasks from Parquet, the synthetic log generator, and the resumable embedding
cache build: hand-made logs with known offsets, exact per-user rows, disjoint rank shards,
learning from a stream, and an interrupted cache build that encodes only what is missing."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from meta_synthetic import make_problem
from metarec.meta import MetaConfig, MetaLearner
from metarec.models.scorer import Scorer, ScorerConfig
from metarec.streaming import ParquetTaskStream, embed_resumable, index_log
from metarec.synth import SynthConfig, generate
from metarec.text.cache import EmbeddingCache
from metarec.text.encoder import HashingEncoder
from metarec.train import TrainConfig, _valid_episodes, evaluate_loss, train
from metarec.types import MetarecError


def _write(path, users, items, ratings=None, row_group_size=3):
    n = len(users)
    table = pa.table(
        {
            "user_idx": pa.array(np.asarray(users, np.int32)),
            "item_idx": pa.array(np.asarray(items, np.int32)),
            "rating": pa.array(
                np.asarray(ratings if ratings is not None else [1.0] * n, np.float32)
            ),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_index_log_offsets_and_counts(tmp_path):
    # user 2 has no rows; users span row-group boundaries (groups of 3 rows)
    p = _write(tmp_path / "log.parquet", [0, 0, 1, 1, 1, 3, 3], [4, 1, 1, 2, 0, 4, 4])
    ix = index_log(p, batch_size=2)
    assert ix.n_rows == 7 and ix.n_users == 4 and ix.n_items == 5
    assert ix.user_start.tolist() == [0, 2, 5, 5]
    assert ix.user_count.tolist() == [2, 3, 0, 2]
    assert ix.item_count.tolist() == [1, 2, 1, 0, 3]
    assert ix.group_start.tolist() == [0, 3, 6, 7]


def test_index_log_rejects_unsorted_and_missing_columns(tmp_path):
    p = _write(tmp_path / "bad.parquet", [0, 1, 0], [0, 0, 0])
    with pytest.raises(MetarecError, match="not sorted by user_idx at row 3"):
        index_log(p)
    with pytest.raises(MetarecError, match=r"missing column\(s\) 'uid' \(columns: user_idx, "):
        index_log(p, user_col="uid")
    with pytest.raises(MetarecError, match="item_idx 0 >= n_items"):
        index_log(_write(tmp_path / "ok.parquet", [0, 0], [0, 0]), n_items=0)
    with pytest.raises(MetarecError, match="has no rows"):
        index_log(_write(tmp_path / "empty.parquet", [], []))


def test_a_log_sorted_within_each_read_batch_only_is_refused(tmp_path):
    """Users [1, 2 | 0, 3], one row group read 2 rows at a time: each batch is sorted, the
    log is not. A batch's first user must not be smaller than the previous batch's last
    (mutation audit, probe 147: checking within batches only indexed user 0 at row 3)."""
    p = _write(tmp_path / "log.parquet", [1, 2, 0, 3], [0, 1, 2, 3], row_group_size=4)
    with pytest.raises(MetarecError, match="not sorted by user_idx at row 3"):
        index_log(p, batch_size=2)
    # the same ids in user order are indexed
    ix = index_log(_write(tmp_path / "ok.parquet", [0, 1, 2, 3], [2, 0, 1, 3]), batch_size=2)
    assert ix.user_start.tolist() == [0, 1, 2, 3] and ix.user_count.tolist() == [1, 1, 1, 1]


def _write_cols(path, row_group_size=3, write_statistics=True, **cols):
    """A log from arrow arrays (nulls, floats, wide ids, odd names), row groups of 3."""
    table = pa.table({k: pa.array(v) if isinstance(v, list) else v for k, v in cols.items()})
    pq.write_table(table, path, row_group_size=row_group_size, write_statistics=write_statistics)
    return path


USERS, ITEMS = [0, 0, 1, 1, 1, 2, 2], [0, 1, 2, 3, 0, 1, 2]


def test_null_or_nan_rating_is_an_error_naming_file_column_and_row(tmp_path):
    # a null is counted by the row-group statistics: refused at index time (row 5)
    ratings = pa.array([4.0, 5.0, 3.0, 2.0, None, 1.0, 2.0], pa.float32())
    p = _write_cols(tmp_path / "null.parquet", user_idx=USERS, item_idx=ITEMS, rating=ratings)
    with pytest.raises(MetarecError, match=r"null\.parquet: row 5: rating is null$"):
        index_log(p)
    # without statistics (or for NaN, which they do not count) the stream's read finds it
    p = _write_cols(
        tmp_path / "nostats.parquet",
        write_statistics=False,
        user_idx=USERS,
        item_idx=ITEMS,
        rating=ratings,
    )
    stream = ParquetTaskStream(index_log(p), k_shot=1, n_query=1, rank=0, world=1)
    with pytest.raises(MetarecError, match=r"nostats\.parquet: row 5: rating is null$"):
        stream.sample(3, np.random.default_rng(0))
    nan = [4.0, float("nan"), 3.0, 2.0, 1.0, 1.0, 2.0]
    p = _write(tmp_path / "nan.parquet", USERS, ITEMS, nan)
    stream = ParquetTaskStream(index_log(p), k_shot=1, n_query=1, head="rating", rank=0, world=1)
    with pytest.raises(MetarecError, match=r"nan\.parquet: row 2: rating is NaN$"):
        stream.sample(3, np.random.default_rng(0))
    inf = [4.0, 5.0, 3.0, 2.0, 1.0, 1.0, float("inf")]
    p = _write(tmp_path / "inf.parquet", USERS, ITEMS, inf)
    stream = ParquetTaskStream(index_log(p), k_shot=1, n_query=1, rank=0, world=1)
    with pytest.raises(MetarecError, match=r"row 7: rating is inf, not a finite float32$"):
        stream.histories(3)


def test_missing_or_misnamed_rating_column_is_refused_when_indexed(tmp_path):
    p = _write_cols(tmp_path / "norating.parquet", user_idx=USERS, item_idx=ITEMS)
    with pytest.raises(
        MetarecError,
        match=r"norating\.parquet: missing column\(s\) 'rating' \(columns: user_idx, item_idx\)$",
    ):
        index_log(p)
    rated = [5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 2.0]
    p = _write_cols(tmp_path / "caps.parquet", user_idx=USERS, item_idx=ITEMS, Rating=rated)
    with pytest.raises(MetarecError, match=r"\(columns: user_idx, item_idx, Rating\); did you"):
        index_log(p)
    # named: the stream reads the columns the log was indexed with
    ix = index_log(p, rating_col="Rating")
    stream = ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=1)
    assert sorted(r for _, _, rs in stream.histories(3) for r in rs.tolist()) == sorted(rated)
    # a text column is not a number, and the stream checks columns it is told to read
    p = _write_cols(tmp_path / "text.parquet", user_idx=USERS, item_idx=ITEMS, rating=["a"] * 7)
    with pytest.raises(MetarecError, match="column 'rating' has type string; it must hold nu"):
        index_log(p)
    with pytest.raises(MetarecError, match=r"missing column\(s\) 'score'"):
        ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=1, rating_col="score")


def test_fractional_ids_are_refused_and_whole_floats_accepted(tmp_path):
    half = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    p = _write_cols(tmp_path / "frac.parquet", user_idx=half, item_idx=ITEMS, rating=[1.0] * 7)
    with pytest.raises(
        MetarecError,
        match=r"frac\.parquet: row 2: user_idx is 0\.5, not a whole number \(ids are integers\)$",
    ):
        index_log(p)
    nan = [0.0, 0.0, 1.0, 1.0, float("nan"), 2.0, 2.0]
    p = _write_cols(tmp_path / "nanid.parquet", user_idx=USERS, item_idx=nan, rating=[1.0] * 7)
    with pytest.raises(MetarecError, match=r"row 5: item_idx is NaN$"):
        index_log(p, batch_size=2)
    big = [0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 1e20]
    p = _write_cols(tmp_path / "bigid.parquet", user_idx=big, item_idx=ITEMS, rating=[1.0] * 7)
    with pytest.raises(MetarecError, match=r"row 7: user_idx is 1e\+20, too large for an exact"):
        index_log(p)
    whole = [float(u) for u in USERS]
    p = _write_cols(tmp_path / "whole.parquet", user_idx=whole, item_idx=ITEMS, rating=[1.0] * 7)
    ix, ref = index_log(p), index_log(_write(tmp_path / "int.parquet", USERS, ITEMS))
    assert ix.user_start.tolist() == ref.user_start.tolist()
    assert ix.user_count.tolist() == ref.user_count.tolist()
    assert ix.item_count.tolist() == ref.item_count.tolist()


def test_null_and_negative_ids_name_the_problem_and_the_row(tmp_path):
    items = pa.array([0, 1, None, 3, 0, 1, 2], pa.int32())
    p = _write_cols(tmp_path / "nullid.parquet", user_idx=USERS, item_idx=items, rating=[1.0] * 7)
    with pytest.raises(MetarecError, match=r"nullid\.parquet: row 3: item_idx is null$"):
        index_log(p)
    users = pa.array([0, 0, 1, 1, 1, 2, None], pa.int64())
    p = _write_cols(tmp_path / "nulluser.parquet", user_idx=users, item_idx=ITEMS, rating=[1.0] * 7)
    with pytest.raises(MetarecError, match=r"row 7: user_idx is null$"):
        index_log(p, batch_size=4)
    p = _write(tmp_path / "negitem.parquet", USERS, [0, 1, 2, 3, -1, 1, 2])
    with pytest.raises(MetarecError, match=r"negitem\.parquet: row 5: item_idx -1 is negative$"):
        index_log(p)
    # a negative user is reported as such, not as "not sorted"
    p = _write(tmp_path / "neguser.parquet", [0, 0, 1, -3, 1, 2, 2], ITEMS)
    with pytest.raises(MetarecError, match=r"row 4: user_idx -3 is negative$"):
        index_log(p)
    p = _write(tmp_path / "neg0.parquet", [-1, 0, 1], [0, 0, 0])
    with pytest.raises(MetarecError, match=r"row 1: user_idx -1 is negative$"):
        index_log(p)


def test_huge_ids_are_refused_before_the_counts_are_allocated(tmp_path):
    import tracemalloc

    items = pa.array([0, 1, 2, 10**10, 0, 1, 2], pa.int64())
    p = _write_cols(tmp_path / "huge.parquet", user_idx=USERS, item_idx=items, rating=[1.0] * 7)
    with pytest.raises(
        MetarecError, match=r"huge\.parquet: row 4: item_idx 10000000000 >= n_items \(5\)$"
    ):
        index_log(p, n_items=5)
    tracemalloc.start()
    try:
        # without n_items: a bound from the row count (2**24 for a small log)
        with pytest.raises(MetarecError, match=r"row 4: item_idx 10000000000 is far beyond .*"):
            index_log(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24  # nothing the size of the id was allocated
    users = pa.array([0, 0, 1, 1, 1, 2, 2**40], pa.int64())
    p = _write_cols(tmp_path / "hugeu.parquet", user_idx=users, item_idx=ITEMS, rating=[1.0] * 7)
    with pytest.raises(MetarecError, match=r"row 7: user_idx 1099511627776 is far .* n_users$"):
        index_log(p)
    # a declared id space is honoured: users past the last one in the log have no rows
    ix = index_log(_write(tmp_path / "ok.parquet", USERS, ITEMS), n_users=10, n_items=6)
    assert ix.n_users == 10 and ix.user_count.tolist() == [2, 3, 2] + [0] * 7
    assert ix.n_items == 6 and ix.user_start[3:].tolist() == [7] * 7
    with pytest.raises(MetarecError, match=r"row 6: user_idx 2 >= n_users \(2\)$"):
        index_log(tmp_path / "ok.parquet", n_users=2)
    for bad in (-1, 2.5, True):
        with pytest.raises(MetarecError, match="n_items must be an integer >= 0"):
            index_log(tmp_path / "ok.parquet", n_items=bad)


@pytest.fixture
def log(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 9, size=40)  # some users have 1 event: never served
    users = np.repeat(np.arange(40), counts)
    items = rng.integers(0, 50, size=len(users))
    ratings = rng.integers(1, 6, size=len(users)).astype(np.float32)
    path = _write(tmp_path / "log.parquet", users, items, ratings, row_group_size=17)
    return path, pd.DataFrame({"user_idx": users, "item_idx": items, "rating": ratings})


def test_one_epoch_serves_every_user_once_with_its_exact_rows(log):
    path, frame = log
    ix = index_log(path)
    stream = ParquetTaskStream(ix, k_shot=2, n_query=2, rank=0, world=1, buffer_groups=2)
    eligible = {u for u, c in frame.groupby("user_idx").size().items() if c >= 2}
    got = stream.histories(len(eligible))
    assert sorted(u for u, _, _ in got) == sorted(eligible)
    for u, items, ratings in got:
        mine = frame[frame.user_idx == u]
        assert items.tolist() == mine.item_idx.tolist()
        assert ratings.tolist() == mine.rating.tolist()
    # the next epoch starts over with a different order
    again = [u for u, _, _ in stream.histories(len(eligible))]
    assert sorted(again) == sorted(eligible) and again != [u for u, _, _ in got]


def test_ranks_read_disjoint_row_groups_covering_all_users(log):
    path, frame = log
    ix = index_log(path)
    eligible = {u for u, c in frame.groupby("user_idx").size().items() if c >= 2}
    shards = []
    for rank in range(2):
        s = ParquetTaskStream(ix, k_shot=2, n_query=2, rank=rank, world=2, seed=5)
        assert s.rank_sharded
        groups = list(s._queue)
        users = set()
        for g in groups:
            users |= set(s.users_of_group(int(g)).tolist())
        shards.append(users)
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == eligible


def test_stream_is_seeded_and_time_order_episodes_are_first_k(log):
    path, frame = log
    ix = index_log(path)

    def order(seed):
        s = ParquetTaskStream(ix, k_shot=2, n_query=3, seed=seed, rank=0, world=1)
        return s, [u for u, _, _ in s.histories(10)]

    assert order(1)[1] == order(1)[1]
    assert order(1)[1] != order(2)[1]
    s = ParquetTaskStream(
        ix, k_shot=2, n_query=3, head="rating", resample_prob=0.0, rank=0, world=1
    )
    for e in s.sample(8, np.random.default_rng(0)):
        mine = frame[frame.user_idx == e.user_idx].item_idx.to_numpy()
        ks = min(2, len(mine) - 1)
        assert e.support_items.tolist() == mine[:ks].tolist()
        assert e.query_items.tolist() == mine[ks : ks + 3].tolist()


def test_too_few_row_groups_for_the_ranks(tmp_path):
    ix = index_log(_write(tmp_path / "one.parquet", [0, 0], [0, 1], row_group_size=10))
    with pytest.raises(MetarecError, match="1 row groups cannot be shared by 2 ranks"):
        ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=2)


def test_meta_training_from_a_stream_learns(tmp_path):
    split, feats = make_problem(0, "binary")
    tr = split.train
    order = np.lexsort((tr.timestamp, tr.user_idx))
    path = _write(
        tmp_path / "train.parquet",
        tr.user_idx[order],
        tr.item_idx[order],
        tr.rating[order],
        row_group_size=64,
    )
    ix = index_log(path, n_items=feats.n_items)
    sc = ScorerConfig(d_item_text=8, n_items=40, embed_dim=8, hidden=(16,), head="binary")
    meta = MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.1)
    cfg = TrainConfig(steps=40, meta_batch=8, outer_lr=3e-3, eval_every=10, patience=100, seed=7)
    stream = ParquetTaskStream(ix, k_shot=split.k_shot, n_query=split.n_query, rank=0, world=1)
    res = train(
        split, feats, sc, meta, cfg, progress=False, sampler=stream, known_items=ix.item_count > 0
    )
    learner = MetaLearner(Scorer(sc), meta)
    init = learner.init_params(torch.Generator().manual_seed(cfg.seed))
    valid = _valid_episodes(split.valid, "binary", feats.n_items, cfg)
    before = evaluate_loss(learner, init, feats, valid, res.known_items)
    after = evaluate_loss(learner, res.params, feats, valid, res.known_items)
    assert after < before - 0.02, (before, after)
    assert res.known_items.tolist() == (np.bincount(tr.item_idx, minlength=40) > 0).tolist()
    # train() reports the negatives the stream drew: 40 items are uniform under "auto"
    assert res.negatives == "catalogue"
    popular = ParquetTaskStream(
        ix, k_shot=split.k_shot, n_query=split.n_query, rank=0, world=1, negatives="popularity"
    )
    short = replace(cfg, steps=2, eval_every=2)
    res = train(split, feats, sc, meta, short, progress=False, sampler=popular, known_items=None)
    assert res.negatives == "popularity"


def test_stream_draws_query_negatives_as_train_negatives_would(tmp_path, monkeypatch):
    """train.negatives had no effect on a stream, which drew uniformly. Now the stream
    takes ``negatives``: "popularity" draws a query's negatives in proportion to event
    count^0.75 (supports stay uniform), "auto" resolves by the catalogue's size, and
    train() reports what the stream drew."""
    import metarec.streaming as streaming

    # 60 users, each with one of the popular items 0, 1, 2 (20 events each) and one rare
    # item of their own (3 + u, one event): 63 items
    users = [u for u in range(60) for _ in (0, 1)]
    items = [x for u in range(60) for x in (u % 3, 3 + u)]
    ix = index_log(_write(tmp_path / "pop.parquet", users, items, row_group_size=10))
    with pytest.raises(MetarecError, match="negatives 'often' is not one of"):
        ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=1, negatives="often")
    auto = ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=1)
    assert auto.negatives == "catalogue" and auto.popular_pool is None  # 63 items: uniform
    import metarec.train as train_module  # the "auto" rule, shared with the in-memory sampler

    monkeypatch.setattr(train_module, "POPULARITY_MIN_ITEMS", 60)
    auto = ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=1)
    assert auto.negatives == "popularity"
    rating = ParquetTaskStream(ix, k_shot=1, n_query=1, head="rating", rank=0, world=1)
    assert rating.negatives == "catalogue"  # the rating head samples no negatives
    # the pool: items 0-2 round(4 * 20^0.75) = 38 times each, the rare ones 4 times
    pop = ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=1, negatives="popularity")
    assert np.bincount(pop.popular_pool).tolist() == [38] * 3 + [4] * 60
    # a query's negative is another user's popular item 76 / 312 = 24% of the time; a
    # support's, drawn uniformly, 2 / 61 = 3%
    rng = np.random.default_rng(0)
    q_pop = s_pop = n = 0
    for _ in range(20):
        for ep in pop.sample(60, rng):
            own = {ep.user_idx % 3, 3 + ep.user_idx}
            (nq,), (ns,) = ep.query_items[ep.query_y == 0], ep.support_items[ep.support_y == 0]
            assert nq not in own and ns not in own
            q_pop, s_pop, n = q_pop + (nq < 3), s_pop + (ns < 3), n + 1
    assert 0.19 < q_pop / n < 0.29 and s_pop / n < 0.06, (q_pop / n, s_pop / n)
    # bounded: the scale falls to 100 / (3 * 20^0.75 + 60) = 1.13, so the popular items
    # sit in it round(1.13 * 9.46) = 11 times, and every item at least once
    monkeypatch.setattr(streaming, "STREAM_POPULAR_POOL_MAX", 100)
    small = ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=1, negatives="popularity")
    counts = np.bincount(small.popular_pool)
    assert len(small.popular_pool) <= 120 and counts.min() == 1 and counts[0] == 11


def test_synthetic_log_is_sorted_skewed_and_deterministic(tmp_path):
    cfg = SynthConfig(n_users=300, n_items=200, n_interactions=9000, users_per_chunk=70, seed=3)
    out = generate(cfg, tmp_path / "a")
    f = pq.read_table(out.log).to_pandas()
    assert len(f) == out.n_rows == 9000
    assert pq.ParquetFile(out.log).metadata.num_row_groups == 5  # ceil(300 / 70) chunks
    per_user = f.groupby("user_idx").size()
    assert len(per_user) == 300 and per_user.min() >= 2
    assert (np.diff(f.user_idx) >= 0).all()
    same_user = np.diff(f.user_idx) == 0
    assert (np.diff(f.timestamp)[same_user] >= 0).all()
    assert set(f.rating.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    # power laws: the busiest 10% of users and items hold far more than 10% of the events
    top = lambda s: s.sort_values(ascending=False).head(len(s) // 10).sum() / s.sum()  # noqa: E731
    assert top(per_user) > 0.3
    assert top(f.item_idx.value_counts()) > 0.3
    # preferences: a user's events concentrate in few topics (3 favourites + 20% exploring)
    items = pq.read_table(out.items).to_pandas()
    topic = items.topic.to_numpy()[f.item_idx.to_numpy()]
    share = (
        pd.DataFrame({"u": f.user_idx, "t": topic})
        .groupby("u")
        .t.agg(lambda t: t.value_counts().head(3).sum() / len(t))
    )
    assert share[per_user >= 20].mean() > 0.7
    assert len(items) == 200 and items.title.str.contains("no. ").all()
    again = pq.read_table(generate(cfg, tmp_path / "b").log).to_pandas()
    pd.testing.assert_frame_equal(f, again)


class CountingEncoder(HashingEncoder):
    def __init__(self, fail_after: int | None = None):
        super().__init__(dim=16)
        self.encoded: list[str] = []
        self.fail_after = fail_after

    def encode(self, texts, batch_size=None, show_progress=False):
        if self.fail_after is not None and len(self.encoded) >= self.fail_after:
            raise KeyboardInterrupt  # an interrupted build
        self.encoded += list(texts)
        return super().encode(texts, batch_size=batch_size, show_progress=show_progress)


def test_interrupted_cache_build_resumes_with_only_missing_texts(tmp_path):
    texts = [f"item text number {i}" for i in range(50)]
    cache = EmbeddingCache(tmp_path / "cache")
    enc = CountingEncoder(fail_after=20)  # dies at the third chunk of 10
    with pytest.raises(KeyboardInterrupt):
        embed_resumable(texts, enc, cache, chunk_size=10)
    assert len(enc.encoded) == 20
    enc2 = CountingEncoder()
    vecs, stats = embed_resumable(texts, enc2, cache, chunk_size=10)
    assert enc2.encoded == texts[20:]  # only the missing ones, in order
    assert stats == {"n_texts": 50, "encoded": 30, "hits": 20, "chunks_done": 5, "complete": True}
    np.testing.assert_array_equal(vecs, HashingEncoder(dim=16).encode(texts))
    # stop_after_chunks: a planned stop also keeps what was done
    part, s = embed_resumable(texts, CountingEncoder(), tmp_path / "c2", 10, stop_after_chunks=2)
    assert part is None and s["chunks_done"] == 2 and not s["complete"]


def test_each_resumable_chunk_is_one_shard(tmp_path):
    # the cache's own parts (8,192 texts) cut a 10,000-text chunk in two
    cache = EmbeddingCache(tmp_path / "cache")
    embed_resumable([f"t{i}" for i in range(25)], CountingEncoder(), cache, chunk_size=10)
    enc = HashingEncoder(dim=16)
    index = json.loads((cache.folder(enc.fingerprint) / "index.json").read_text())
    assert [e["n"] for e in index["shards"]] == [10, 10, 5]


def test_stream_embed_and_synth_parameters_are_checked_in_one_line(tmp_path, log):
    # each was a raw numpy/pyarrow error, a ZeroDivisionError, or accepted silently
    path, _ = log
    ix = index_log(path)
    for kwargs, said in (
        ({"head": "bogus"}, "head 'bogus' is not 'binary' or 'rating'"),
        ({"n_negatives": -1}, "n_negatives must be >= 0"),
        ({"seed": -1}, "seed must be in [0,"),
        ({"resample_prob": 1.5}, "resample_prob must be in [0, 1]"),
    ):
        with pytest.raises(MetarecError, match=re.escape(said)):
            ParquetTaskStream(ix, k_shot=1, n_query=1, rank=0, world=1, **kwargs)
    with pytest.raises(MetarecError, match="batch_size must be >= 1"):
        index_log(path, batch_size=0)
    for kwargs, said in (
        ({"chunk_size": 0}, "chunk_size must be >= 1, got 0"),
        ({"chunk_size": -3}, "chunk_size must be >= 1, got -3"),
        ({"chunk_size": 5, "stop_after_chunks": -1}, "stop_after_chunks must be >= 0"),
    ):
        with pytest.raises(MetarecError, match=re.escape(said)):
            embed_resumable(["a", "b"], HashingEncoder(dim=8), tmp_path / "c", **kwargs)
    for kwargs, said in (
        ({"users_per_chunk": 0}, "users_per_chunk must be >= 1"),
        ({"users_per_chunk": -5}, "users_per_chunk must be >= 1"),
        ({"user_exponent": 0.0}, "user_exponent must be a finite number > 0"),
        ({"item_exponent": float("nan")}, "item_exponent must be a finite number >= 0"),
        ({"n_users": 10.5}, "n_users must be an integer"),
        ({"seed": -1}, "seed must be in [0,"),
        ({"explore": 2.0}, "explore must be in [0, 1]"),
    ):
        with pytest.raises(MetarecError, match=re.escape(said)):
            SynthConfig(**{"n_users": 20, "n_items": 10, "n_interactions": 100, **kwargs})
    SynthConfig(n_users=20, n_items=10, n_interactions=100, item_exponent=0.0)  # uniform
    SynthConfig(n_users=20, n_items=10, n_interactions=100, explore=np.float32(0.5))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MetarecError, match="cannot write the synthetic log in"):
        generate(SynthConfig(n_users=20, n_items=10, n_interactions=100), tmp_path / "afile")


def test_a_catalogue_larger_than_the_logs_items_needs_n_items(tmp_path):
    # docs/scaling.md's snippet without n_items=: the index counts only the items up to
    # the log's largest id, and validation on a later item was an IndexError
    split, feats = make_problem(0, "binary")
    tr = split.train
    keep = tr.item_idx < 30  # the log's ids stop at 29 of the 40-item catalogue
    order = np.lexsort((tr.timestamp[keep], tr.user_idx[keep]))
    path = _write(
        tmp_path / "t.parquet",
        tr.user_idx[keep][order],
        tr.item_idx[keep][order],
        tr.rating[keep][order],
        row_group_size=64,
    )
    short = index_log(path)
    assert short.n_items < feats.n_items
    sc = ScorerConfig(d_item_text=8, n_items=40, embed_dim=8, hidden=(16,), head="binary")
    meta = MetaConfig(algorithm="fomaml", inner_steps=1, inner_lr=0.1)
    cfg = TrainConfig(steps=2, meta_batch=4, eval_every=2, seed=0)
    stream = ParquetTaskStream(short, k_shot=2, n_query=2, rank=0, world=1)
    with pytest.raises(MetarecError, match="known_items has .* entries and the FeatureSet 40"):
        train(
            split,
            feats,
            sc,
            meta,
            cfg,
            progress=False,
            sampler=stream,
            known_items=short.item_count > 0,
        )
    full = index_log(path, n_items=feats.n_items)
    stream = ParquetTaskStream(full, k_shot=2, n_query=2, rank=0, world=1)
    res = train(
        split, feats, sc, meta, cfg, progress=False, sampler=stream, known_items=full.item_count > 0
    )
    assert len(res.known_items) == 40


def test_bench_scale_reduced_size_reports_resume_and_rss(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "scale.json"
    args = ["--users", "400", "--items", "300", "--interactions", "8000", "--users-per-chunk"]
    args += ["100", "--chunk", "100", "--steps", "3", "--meta-batch", "8", "--no-progress"]
    assert bench.main(args + ["--work", str(tmp_path / "w"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    emb = res["stages"]["embed"]
    # 3 chunks of 100 texts: stopped after 1, the resume encodes exactly the other 200
    assert emb["encoded_before_interrupt"] == 100 and emb["interrupted_after_chunks"] == 1
    assert emb["encoded_on_resume"] == 200 and emb["hits_on_resume"] == 100
    assert emb["encoded_when_complete"] == 0
    assert res["stages"]["index"]["row_groups"] == 4 and res["stages"]["index"]["users"] == 400
    # at this size the steps are too short to time apart from each run's start: a rate
    # is a positive number, or null with a warning (three identical runs read 0.74-1.42)
    tps = res["stages"]["train"]["tasks_per_s"]
    assert res["stages"]["train"]["steps"] == 3 and (tps is None or tps > 0)
    assert res["stages"]["train_in_memory_baseline"]["rows"] > 0
    ratio = res["stages"]["train_in_memory_baseline"]["stream_over_memory"]
    assert ratio is None or ratio > 0
    # the rate itself: (steps - 1) x batch over the N-step run's time beyond the 1-step one
    assert bench._rate(11, 8, 2.0, 1.0) == 80.0
    assert bench._rate(3, 8, 1.0, 0.95) is None and bench._rate(1, 8, 1.0, 0.1) is None
    # its own folder, stopped before synth.json was written, is still its own
    (tmp_path / "w" / "synth.json").unlink()
    assert bench.main(args + ["--work", str(tmp_path / "w")]) == 0
    assert res["rss_ok"] and 0 < res["peak_rss_gb"] <= 4.0


def test_train_refuses_a_stream_that_draws_otherwise_than_the_model_trains(tmp_path):
    """A 1-5 star stream fed a binary head trained on a negative cross-entropy
    (train_loss -5.7) without a word; and the config's n_negatives, positive_threshold
    and resample_prob were ignored for the stream's own."""
    split, feats = make_problem(0, "rating")
    tr = split.train
    order = np.lexsort((tr.timestamp, tr.user_idx))
    path = _write(
        tmp_path / "r.parquet", tr.user_idx[order], tr.item_idx[order], tr.rating[order], 64
    )
    ix = index_log(path, n_items=feats.n_items)
    meta = MetaConfig(algorithm="fomaml", inner_steps=1, inner_lr=0.1)
    cfg = TrainConfig(steps=2, meta_batch=4, eval_every=2, seed=0)

    def go(head, stream_kw=(), **cfg_kw):
        sc = ScorerConfig(d_item_text=8, n_items=40, embed_dim=8, hidden=(16,), head=head)
        stream = ParquetTaskStream(ix, k_shot=3, n_query=3, rank=0, world=1, **dict(stream_kw))
        return train(split, feats, sc, meta, replace(cfg, **cfg_kw), progress=False, sampler=stream)

    with pytest.raises(
        MetarecError, match=r"stream draws 'rating' episodes and the scorer's head is 'binary'"
    ):
        go("binary", {"head": "rating"})
    with pytest.raises(MetarecError, match=r"stream draws 'binary' episodes .* head is 'rating'"):
        go("rating")
    with pytest.raises(MetarecError, match=r"n_negatives=1 and train.n_negatives is 8"):
        go("binary", n_negatives=8)
    with pytest.raises(MetarecError, match=r"resample_prob=0.5 and train.resample_prob is 0.0"):
        go("rating", {"head": "rating"}, resample_prob=0.0)
    # agreeing settings train; a rating head does not read the binary-only ones
    assert go("binary", {"n_negatives": 8}, n_negatives=8).params
    assert go("binary", {"positive_threshold": np.float32(0.7)}, positive_threshold=0.7).params
    assert go("rating", {"head": "rating"}, n_negatives=8).params
    # min_support and newest-items episodes had been accepted and not applied (review 160)
    with pytest.raises(MetarecError, match=r"min_support=0 and train.min_support is 2"):
        go("binary", min_support=2)
    assert go("binary", {"min_support": 2}, min_support=2).params
    with pytest.raises(MetarecError, match=r'train.episodes is "newest_items"; set .*"time"'):
        go("binary", episodes="newest_items")
    assert go("binary", episodes="time").params
    # "auto" resolves on the split (train.episode_order): validation queries on items
    # training has none of resolve it to "newest_items", which a stream does not draw
    q = np.concatenate([t.query.item_idx for t in split.valid])
    cold = replace(split, train=tr.take(np.flatnonzero(~np.isin(tr.item_idx, q))))
    sc = ScorerConfig(d_item_text=8, n_items=40, embed_dim=8, hidden=(16,), head="binary")
    stream = ParquetTaskStream(ix, k_shot=3, n_query=3, rank=0, world=1)
    with pytest.raises(MetarecError, match=r'train.episodes is "auto" \(here "newest_items"'):
        train(cold, feats, sc, meta, cfg, progress=False, sampler=stream)


def test_a_streams_min_support_draws_support_sizes_as_the_in_memory_sampler(tmp_path):
    n = 600
    users = np.repeat(np.arange(60), 10)
    path = _write(tmp_path / "log.parquet", users, np.arange(n) % 40, np.ones(n), 200)
    ix = index_log(path, n_items=40)
    rng = np.random.default_rng(0)
    kw = {"head": "rating", "rank": 0, "world": 1, "resample_prob": 0.0}  # supports as drawn
    fixed = ParquetTaskStream(ix, k_shot=5, n_query=2, **kw)
    assert {len(e.support_items) for e in fixed.sample(40, rng)} == {5}
    drawn = ParquetTaskStream(ix, k_shot=5, n_query=2, min_support=2, **kw)
    assert {len(e.support_items) for e in drawn.sample(200, rng)} == {2, 3, 4, 5}
    for bad in (-1, 1.5, True):
        with pytest.raises(MetarecError, match=r"min_support must be an integer >= 0"):
            ParquetTaskStream(ix, k_shot=5, n_query=2, rank=0, world=1, min_support=bad)


def test_a_damaged_or_rewritten_log_is_one_line(tmp_path):
    """A damaged page was pyarrow's multi-line "Couldn't deserialize thrift" naming no
    file; a log rewritten after index_log was "row_group_indices is 4 ... (2)"."""
    n = 600
    users = np.repeat(np.arange(60), 10)
    path = _write(tmp_path / "log.parquet", users, np.arange(n) % 40, np.ones(n), 200)
    ix = index_log(path, n_items=40)
    _write(tmp_path / "log.parquet", users[:100], np.arange(100) % 40, np.ones(100), 50)
    with pytest.raises(
        MetarecError,
        match=r"has 100 rows in 2 row groups, its index 600 in 3: it changed since it was indexed",
    ):
        ParquetTaskStream(ix, k_shot=2, n_query=2, rank=0, world=1)
    path = _write(tmp_path / "log.parquet", users, np.arange(n) % 40, np.ones(n), 200)
    md = pq.ParquetFile(path).metadata
    at = md.row_group(1).column(0).data_page_offset
    raw = bytearray(path.read_bytes())
    raw[at : at + 12] = b"\xff" * 12
    path.write_bytes(bytes(raw))
    with pytest.raises(
        MetarecError, match=r"log.parquet: cannot read the log \(.*\); is the file damaged\?"
    ) as err:
        index_log(path, n_items=40)
    assert "\n" not in str(err.value)
