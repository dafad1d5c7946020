"""preprocess: each step on hand-made data with hand-counted answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from metarec.data.raw import RawData, make_ratings_frame
from metarec.preprocess import PreprocessConfig, prepare, preprocess
from metarec.types import MetarecError


def raw_of(user_ids, item_ids, ratings, ts=None, domain=None, **kw) -> RawData:
    kw.setdefault("feedback", "explicit")
    kw.setdefault("rating_range", (1.0, 5.0))
    kw.setdefault("has_time", True)
    frame = make_ratings_frame(user_ids, item_ids, ratings, ts, domain)
    return RawData(name="toy", ratings=frame, **kw)


def step(reports, name):
    (rep,) = [r for r in reports if r["step"] == name]
    return rep


def pairs(raw: RawData) -> list[tuple[str, str, float, int]]:
    r = raw.ratings
    return list(
        zip(
            r.user_id.tolist(),
            r.item_id.tolist(),
            r.rating.tolist(),
            r.timestamp.tolist(),
            strict=True,
        )
    )


def test_default_config_leaves_clean_data_untouched():
    raw = raw_of(["a", "a", "b"], ["x", "y", "x"], [1, 5, 3], [10, 20, 30])
    out, reports = preprocess(raw)
    assert pairs(out) == pairs(raw)
    assert out.feedback == "explicit" and out.rating_range == (1.0, 5.0)
    assert all(r["rows_before"] == r["rows_after"] == 3 for r in reports)
    assert [r["step"] for r in reports] == [
        "missing_ids",
        "timestamps",
        "rating_range",
        "dedupe",
        "side_missing",
        "unknown_items",
        "straight_liners",
        "k_core",
        "normalize",
        "binarize",
    ]
    json.dumps(reports)  # reports are JSON-ready as they are


def test_missing_ids_and_ratings_are_dropped_and_counted():
    raw = raw_of(["a", None, "c", "d", ""], ["x", "y", None, "z", "w"], [1, 2, 3, None, 4])
    out, reports = preprocess(raw)
    assert out.ratings.user_id.tolist() == ["a"]
    rep = step(reports, "missing_ids")
    assert (rep["missing_user_id"], rep["missing_item_id"], rep["missing_rating"]) == (2, 1, 1)
    assert (rep["rows_before"], rep["rows_after"]) == (5, 1)


def test_bad_timestamps_and_out_of_range_ratings():
    raw = raw_of(
        ["a", "a", "a", "a", "a"],
        ["p", "q", "r", "s", "t"],
        [1, 0, 6, 5, 3],
        pd.Series([5, 6, 7, -1, "later"], dtype=object),
    )
    out, reports = preprocess(raw)
    # -1 is a second before 1970: a date like any other (it used to be dropped)
    assert pairs(out) == [("a", "p", 1.0, 5), ("a", "s", 5.0, -1)]
    assert out.ratings.timestamp.dtype == np.int64
    ts = step(reports, "timestamps")
    assert (ts["not_a_number"], ts["before_1970"], ts["rows_after"]) == (1, 1, 4)
    rr = step(reports, "rating_range")
    assert (rr["below"], rr["above"], rr["rows_after"]) == (1, 1, 2)


def test_bad_timestamp_without_dropping_raises():
    raw = raw_of(["a"], ["p"], [1], pd.Series(["soon"], dtype=object))
    with pytest.raises(MetarecError, match="timestamp 'soon'"):
        preprocess(raw, PreprocessConfig(drop_bad_timestamps=False))


def test_dedupe_keeps_latest_per_user_item_domain():
    # (a, x, d1) three times: the latest (t=30) wins even though it is not last in the log;
    # (a, x, d2) is another domain and stays; (b, x) ties at t=5: the later log row wins.
    raw = raw_of(
        ["a", "a", "a", "a", "b", "b"],
        ["x", "x", "x", "x", "x", "x"],
        [1, 5, 2, 4, 3, 4],
        [10, 30, 20, 10, 5, 5],
        ["d1", "d1", "d1", "d2", "d1", "d1"],
    )
    out, reports = preprocess(raw)
    r = out.ratings
    assert list(zip(r.user_id, r.rating, r.timestamp, r.domain, strict=True)) == [
        ("a", 5.0, 30, "d1"),
        ("a", 4.0, 10, "d2"),
        ("b", 4.0, 5, "d1"),
    ]
    assert step(reports, "dedupe")["duplicates"] == 3
    out2, _ = preprocess(raw, PreprocessConfig(dedupe=False))
    assert len(out2.ratings) == 6


def test_k_core_is_iterative():
    # 2-core. Pass 1: items z, z2 (one rating each) and user c (one rating) go.
    # Pass 2: user b has only y left -> goes. Pass 3: y has only a left -> goes. Pass 4: stable.
    raw = raw_of(
        ["a", "a", "a", "b", "b", "c", "d", "d"],
        ["x", "w", "y", "y", "z", "z2", "x", "w"],
        [1, 2, 3, 4, 5, 1, 2, 3],
    )
    out, reports = preprocess(raw, PreprocessConfig(user_min_count=2, item_min_count=2))
    assert sorted(set(out.ratings.user_id)) == ["a", "d"]
    assert sorted(set(out.ratings.item_id)) == ["w", "x"]
    rep = step(reports, "k_core")
    assert (rep["dropped_users"], rep["dropped_items"], rep["rows_after"]) == (2, 3, 4)
    assert rep["iterations"] == 4
    uc = out.ratings.user_id.value_counts()
    ic = out.ratings.item_id.value_counts()
    assert uc.min() >= 2 and ic.min() >= 2


def test_straight_liners_only_when_enabled():
    raw = raw_of(
        ["a", "a", "a", "b", "b", "b", "c", "c"],
        ["x", "y", "z", "x", "y", "z", "x", "y"],
        [4, 4, 4, 1, 2, 3, 5, 5],
    )
    assert len(preprocess(raw)[0].ratings) == 8
    out, reports = preprocess(raw, PreprocessConfig(straight_liner_min_ratings=3))
    # a: 3 equal ratings -> out; c: equal but only 2 ratings -> stays.
    assert sorted(set(out.ratings.user_id)) == ["b", "c"]
    assert step(reports, "straight_liners")["dropped_users"] == 1
    implicit = raw_of(["a"], ["x"], [1], feedback="implicit", rating_range=(0.0, 1.0))
    with pytest.raises(MetarecError, match="explicit"):
        preprocess(implicit, PreprocessConfig(straight_liner_min_ratings=3))


def test_binarize_threshold():
    raw = raw_of(["a", "a", "b"], ["x", "y", "x"], [3, 4, 5])
    out, reports = preprocess(raw, PreprocessConfig(binarize_threshold=4))
    assert out.ratings.rating.tolist() == [0.0, 1.0, 1.0]
    assert out.feedback == "implicit" and out.rating_range == (0.0, 1.0)
    rep = step(reports, "binarize")
    assert (rep["positives"], rep["negatives"]) == (2, 1)


def test_binarize_judges_a_rating_at_the_threshold_as_relevance_does():
    """binarize compares in float32, as ratings are held and metrics.is_relevant judges
    every like: a float32 log's 0.7 (0.699999988 read in float64) is a positive at a
    threshold of 0.7, as it is a like at fit and recommend time."""
    rated = np.array([0.7, 0.5], dtype=np.float32)
    raw = raw_of(["a", "a"], ["x", "y"], rated, rating_range=(0.0, 1.0))
    assert raw.ratings.rating.to_numpy(np.float64)[0] < 0.7  # as float64 reads it
    out, _ = preprocess(raw, PreprocessConfig(binarize_threshold=0.7))
    assert out.ratings.rating.tolist() == [1.0, 0.0]


def catalogue_raw(**cfg) -> RawData:
    items = pd.DataFrame(
        {
            "item_id": ["x", "y", "z"],
            "title": ["X", "Y", None],
            "genre": ["g1", None, "g1"],
            "year": [1990.0, np.nan, 2000.0],
        }
    )
    users = pd.DataFrame({"user_id": ["a", "b"], "age": [20.0, 40.0]})
    return raw_of(
        ["a", "a", "b", "b"],
        ["x", "y", "z", "ghost"],
        [1, 2, 3, 4],
        items=items,
        users=users,
        item_text_columns=("title",),
        item_categorical_columns=("genre",),
        item_numeric_columns=("year",),
        user_numeric_columns=("age",),
    )


def test_side_missing_fill_strategies():
    raw = catalogue_raw()
    out, reports = preprocess(
        raw, PreprocessConfig(missing_numeric="mean", missing_categorical="mode")
    )
    assert out.items.year.tolist() == [1990.0, 1995.0, 2000.0]
    assert out.items.genre.tolist() == ["g1", "g1", "g1"]
    assert out.items.title.isna().tolist() == [False, False, True]  # text kept as is
    assert len(out.ratings) == 4
    cols = step(reports, "side_missing")["columns"]["items"]
    assert cols["year"] == {"strategy": "mean", "missing": 1, "filled": 1, "value": 1995.0}
    out_m, _ = preprocess(raw, PreprocessConfig.from_dict({"missing_columns": {"year": "median"}}))
    assert out_m.items.year.tolist() == [1990.0, 1995.0, 2000.0]
    with pytest.raises(MetarecError, match="'genre' is not numeric"):
        preprocess(raw, PreprocessConfig(missing_categorical="mean"))


def test_side_missing_drop_removes_entity_and_its_interactions():
    raw = catalogue_raw()
    out, reports = preprocess(raw, PreprocessConfig(missing_text="drop"))
    assert out.items.item_id.tolist() == ["x", "y"]
    assert pairs(out) == [("a", "x", 1.0, 0), ("a", "y", 2.0, 1), ("b", "ghost", 4.0, 3)]
    rep = step(reports, "side_missing")
    assert (rep["dropped_items"], rep["dropped_item_rows"], rep["rows_after"]) == (1, 1, 3)


def test_unknown_items_and_normalize_then_prepare():
    raw = catalogue_raw()
    cfg = PreprocessConfig(drop_unknown_items=True, normalize="minmax", missing_numeric="mean")
    ds = prepare(raw, cfg)
    assert ds.items.ids.tolist() == ["x", "y", "z"]  # catalogue order; "ghost" gone
    assert len(ds.interactions) == 3
    assert step(ds.report, "unknown_items")["unknown_items"] == 1
    assert ds.item_table.frame.year.tolist() == [0.0, 0.5, 1.0]
    assert ds.user_table.frame.age.tolist() == [0.0, 1.0]
    assert step(ds.report, "normalize")["stats"]["items.year"] == {"min": 1990.0, "max": 2000.0}
    rep = ds.report[-1]
    assert (rep["step"], rep["users"], rep["items"]) == ("reindex", 2, 3)
    json.dumps(list(ds.report))
    z = preprocess(raw, PreprocessConfig(normalize="zscore"))[0]
    # users' age: mean 30, population std 10 -> -1, +1
    assert z.users.age.tolist() == [-1.0, 1.0]
    no_catalogue = raw_of(["a"], ["x"], [1])
    with pytest.raises(MetarecError, match="catalogue"):
        preprocess(no_catalogue, PreprocessConfig(drop_unknown_items=True))


def test_k_core_also_prunes_catalogue_and_refuses_to_empty():
    items = pd.DataFrame({"item_id": ["x", "y", "z"]})
    raw = raw_of(["a", "b", "a", "b", "c"], ["x", "x", "y", "y", "z"], [1, 2, 3, 4, 5], items=items)
    ds = prepare(raw, PreprocessConfig(item_min_count=2))
    # z is filtered out, so it must not come back as an unrated catalogue item; c had only z.
    assert ds.items.ids.tolist() == ["x", "y"]
    assert ds.users.ids.tolist() == ["a", "b"]
    assert step(ds.report, "k_core")["dropped_item_rows"] == 1
    with pytest.raises(MetarecError, match="removed every interaction"):
        preprocess(raw, PreprocessConfig(item_min_count=3))


def test_config_from_dict_rejects_unknown_and_bad_values():
    with pytest.raises(MetarecError, match=r"unknown config key 'data.preprocess.kcore'"):
        PreprocessConfig.from_dict({"kcore": 5})
    with pytest.raises(MetarecError, match="normalize"):
        PreprocessConfig(normalize="l2")
    with pytest.raises(MetarecError, match="user_min_count"):
        PreprocessConfig(user_min_count=-1)
    with pytest.raises(MetarecError, match="dedupe"):
        PreprocessConfig.from_dict({"dedupe": "maybe"})
    with pytest.raises(MetarecError, match="binarize_threshold: expected a number"):
        PreprocessConfig.from_dict({"binarize_threshold": True})
    cfg = PreprocessConfig.from_dict({"user_min_count": 5, "binarize_threshold": 4})
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    # read as every other config table is (review 160: its own parser refused these)
    assert PreprocessConfig.from_dict({"binarize_threshold": "none"}).binarize_threshold is None
    assert PreprocessConfig.from_dict({"binarize_threshold": "3.5"}).binarize_threshold == 3.5
    assert PreprocessConfig.from_dict({"dedupe": "false"}).dedupe is False


def test_bundled_goodbooks_sample_comes_through_unchanged():
    data = pytest.importorskip("metarec.data", reason="dataset loaders unavailable")
    raw = data.read_raw("goodbooks-sample")
    ds = prepare(raw)
    # Published shape of the bundled sample (shared/data/goodbooks-sample/SOURCE.md).
    assert (len(ds.interactions), ds.n_users) == (49_886, 990)
    assert all(r["rows_before"] == r["rows_after"] == 49_886 for r in ds.report)


def test_interactions_refuse_values_their_columns_cannot_hold():
    """numpy wrapped domain 40000 to -25536, cast timestamp 1e30 to the smallest int64
    with a warning, and stored rating 1e40 as inf."""
    from metarec.types import Interactions, MetarecError

    for args, said in [
        (([1], [1], [1.0], [0], [40000]), r"domain must fit int16 \(-32768..32767\), got 40000"),
        (([1], [1], [1.0], [1e30], [0]), r"timestamp must fit int64 .*, got 1e\+30"),
        (([1], [1], [1e40], [0], [0]), r"rating must fit float32, got 1e\+40"),
    ]:
        with pytest.raises(MetarecError, match=said):
            Interactions(*(np.asarray(a) for a in args))
    assert Interactions(*(np.asarray(a) for a in ([1], [1], [4.0], [5], [1]))).domain.tolist() == [
        1
    ]
    # the edges: a float domain at int16's max is taken, 2**63 as a float is not (int64's
    # max rounds up to it in float64), and an inf rating given stays inf
    edge = Interactions(*(np.asarray(a) for a in ([1], [1], [1.0], [0], [32767.0])))
    assert edge.domain.tolist() == [32767]
    with pytest.raises(MetarecError, match=r"timestamp must fit int64"):
        Interactions(*(np.asarray(a) for a in ([1], [1], [1.0], [2.0**63], [0])))
    inf = Interactions(*(np.asarray(a) for a in ([1], [1], [np.inf], [0], [0])))
    assert np.isinf(inf.rating).all()


def test_filters_drop_the_entities_they_empty_and_count_them():
    """Probe 165: k_core and the straight-liner filter counted and dropped only the users
    and items below their own thresholds; an item rated only by dropped users stayed in
    the catalogue with no rows (goodbooks-biography's 20-core kept 2 such books in the
    full ranking), and a user emptied by item removals stayed a catalogue user."""
    items = pd.DataFrame({"item_id": ["x", "y", "q"]})
    raw = raw_of(
        ["a", "a", "c", "c", "b", "d"],
        ["x", "y", "x", "y", "q", "q"],
        [1, 2, 3, 4, 5, 1],
        items=items,
    )
    ds = prepare(raw, PreprocessConfig(user_min_count=2, item_min_count=2))
    assert ds.items.ids.tolist() == ["x", "y"] and ds.users.ids.tolist() == ["a", "c"]
    rep = step(ds.report, "k_core")
    assert (rep["dropped_users"], rep["dropped_items"]) == (2, 1)
    # and the reverse: u is above user_min_count (none set) but rated only "solo", which
    # item_min_count=2 removes: u has no rows left and goes from the users table, counted
    users = pd.DataFrame({"user_id": ["a", "b", "u"]})
    raw = raw_of(
        ["a", "b", "a", "b", "u"], ["x", "x", "y", "y", "solo"], [1, 2, 3, 4, 5], users=users
    )
    ds = prepare(raw, PreprocessConfig(item_min_count=2))
    assert ds.users.ids.tolist() == ["a", "b"]
    rep = step(ds.report, "k_core")
    assert (rep["dropped_users"], rep["dropped_items"], rep["dropped_user_rows"]) == (1, 1, 1)
    # straight-liners: s gave 5 to everything, and was the only one to rate item only_s
    items = pd.DataFrame({"item_id": ["x", "y", "only_s"]})
    raw = raw_of(
        ["s", "s", "s", "a", "a"], ["x", "y", "only_s", "x", "y"], [5, 5, 5, 1, 4], items=items
    )
    ds = prepare(raw, PreprocessConfig(straight_liner_min_ratings=3))
    assert ds.items.ids.tolist() == ["x", "y"]
    rep = step(ds.report, "straight_liners")
    assert (rep["dropped_users"], rep["dropped_items"], rep["dropped_item_rows"]) == (1, 1, 1)


def test_an_empty_text_cell_is_a_missing_value():
    # loaders read an empty text cell as "": missing_text never saw it (probe 165)
    raw = catalogue_raw()
    raw.items.loc[2, "title"] = "  "
    out, reports = preprocess(raw, PreprocessConfig(missing_text="drop"))
    assert out.items.item_id.tolist() == ["x", "y"]
    assert step(reports, "side_missing")["columns"]["items"]["title"]["missing"] == 1
    out, _ = preprocess(raw, PreprocessConfig(missing_columns=(("title", "mode"),)))
    assert out.items.title.tolist() == ["X", "Y", "X"]  # the tie of X and Y: the smallest


def test_preprocessing_settings_that_cannot_mean_what_they_say_are_refused():
    raw = catalogue_raw()
    # a misspelt column override was dropped without a word
    with pytest.raises(MetarecError, match=r"missing_columns names 'titel', which is no side"):
        preprocess(raw, PreprocessConfig(missing_columns=(("titel", "drop"),)))
    # a binarize threshold off the scale made every row one class without a word
    for t, every in ((0.5, "positive"), (1.0, "positive"), (10, "negative")):
        with pytest.raises(
            MetarecError, match=rf"binarize_threshold .* every row would be {every}"
        ):
            preprocess(raw, PreprocessConfig(binarize_threshold=t))
    assert preprocess(raw, PreprocessConfig(binarize_threshold=3))[0].feedback == "implicit"
    # inside the scale, but past every rating the log holds (1..4 here): one class
    with pytest.raises(MetarecError, match=r"binarize_threshold 4.5 makes every rating a negative"):
        preprocess(raw, PreprocessConfig(binarize_threshold=4.5))


def test_a_step_that_empties_the_log_is_named_and_a_disabled_dedupe_still_counts():
    raw = raw_of(["a", "b", "a"], ["x", "x", "x"], [1, 2, 3], [1, 2, 3])
    # it said "see the step reports", which a stopped run never wrote (probe 165)
    with pytest.raises(MetarecError, match=r"step 'k_core' removed every interaction \(2 rows"):
        preprocess(raw, PreprocessConfig(item_min_count=3))
    _, reports = preprocess(raw, PreprocessConfig(dedupe=False))
    rep = step(reports, "dedupe")
    assert rep["enabled"] is False and rep["duplicates"] == 1 and rep["rows_after"] == 3


def test_a_disabled_dedupe_counts_duplicates_per_domain_as_an_enabled_one_would():
    # the same (user, item) in two domains is two events, not a duplicate: the disabled
    # count is keyed as the enabled dedupe is, on (user, item, domain)
    raw = raw_of(["a", "a", "a"], ["x", "x", "x"], [1, 2, 3], [1, 2, 3], ["d1", "d2", "d1"])
    rep = step(preprocess(raw, PreprocessConfig(dedupe=False))[1], "dedupe")
    assert (rep["enabled"], rep["duplicates"]) == (False, 1)
    assert step(preprocess(raw)[1], "dedupe")["duplicates"] == 1


def test_missing_columns_may_name_a_user_side_column():
    # the typo check knows the columns of both side tables, not the items' alone
    raw = catalogue_raw()
    raw.users.loc[1, "age"] = np.nan
    out, reports = preprocess(raw, PreprocessConfig(missing_columns=(("age", "mean"),)))
    assert out.users.age.tolist() == [20.0, 20.0]
    assert step(reports, "side_missing")["columns"]["users"]["age"]["filled"] == 1


def test_an_empty_log_is_said_as_such_and_the_emptying_step_names_its_settings():
    # a log empty from the start is not one a step emptied: no step is blamed for it
    with pytest.raises(MetarecError, match=r"^toy: the log holds no interaction$"):
        preprocess(raw_of([], [], []))
    # the emptying step's settings are named, the thresholds (*_count) included
    raw = raw_of(["a", "b", "a"], ["x", "x", "x"], [1, 2, 3], [1, 2, 3])
    with pytest.raises(MetarecError, match=r"user_min_count=0, item_min_count=3\)$"):
        preprocess(raw, PreprocessConfig(item_min_count=3))


def test_side_missing_drop_drops_what_it_empties_too():
    # review 169: a user dropped for a missing age left the item only they rated in the
    # catalogue (k_core and the straight-liners no longer do; this step did still)
    items = pd.DataFrame({"item_id": ["x", "only_b"]})
    users = pd.DataFrame({"user_id": ["a", "b"], "age": [30.0, np.nan]})
    raw = raw_of(
        ["a", "b", "b"],
        ["x", "x", "only_b"],
        [1, 2, 3],
        items=items,
        users=users,
        user_numeric_columns=("age",),
    )
    ds = prepare(raw, PreprocessConfig(missing_numeric="drop"))
    assert ds.items.ids.tolist() == ["x"] and ds.users.ids.tolist() == ["a"]
    rep = step(ds.report, "side_missing")
    assert (rep["dropped_users"], rep["dropped_items"]) == (1, 1)
