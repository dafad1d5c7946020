"""The Python API misused, as black-box probe 180 found it: each case is now a clear
one-line error or the documented answer."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from metarec import baselines as B
from metarec import metrics as M
from metarec.data.raw import RawData, make_ratings_frame
from metarec.meta.algorithms import MetaConfig
from metarec.model import MetaRecommender, ModelConfig, TextConfig
from metarec.predictor import Predictor, fit_raw
from metarec.splits import make_split
from metarec.train import TrainConfig
from metarec.types import Interactions, MetarecError
from test_model import _world as _rating_world
from test_new_users import _world as _users_world


def _fast(**kw) -> ModelConfig:
    return ModelConfig(
        text=TextConfig(model="hashing:64", pca_dim=16),
        train=TrainConfig(steps=10, eval_every=5, meta_batch=8),
        rating_members=1,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def users_run(tmp_path_factory):
    return _users_world(tmp_path_factory.mktemp("probe_users"))


# --- 1. unfitted baselines: score() is a bare AttributeError ------------------------------


@pytest.mark.parametrize(
    "cls",
    [B.Popularity, B.ItemMean, B.ItemMeanUserBias, B.ItemKNNRating, B.BiasedMF, B.TextCosine],
)
def test_an_unfitted_baselines_score_is_a_one_line_error(cls):
    # README: "A slip is one line (... an unfitted model)"; recommend() says "call fit()"
    with pytest.raises(MetarecError, match="fit"):
        cls().score(0, Interactions.empty(), np.array([0, 1]))


def test_an_unfitted_popularitys_rank_scores_batch_is_a_one_line_error():
    with pytest.raises(MetarecError, match="fit"):
        B.Popularity().rank_scores_batch([], np.array([0, 1]))


# --- 2. ranking metrics: a Python set of relevant items scores 0 --------------------------


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda r, rel: M.hr_at_k(r, rel, 2), 1.0),
        (lambda r, rel: M.recall_at_k(r, rel, 3), 1.0),
        (lambda r, rel: M.ndcg_at_k(r, rel, 3), M.ndcg_at_k([1, 2, 3], [2, 3], 3)),
        (lambda r, rel: M.mrr(r, rel), 0.5),
    ],
)
def test_ranking_metrics_take_the_relevant_items_as_a_set(fn, expected):
    # metrics.py: "from a ranked list of item indices and the set of relevant items"; a set
    # became a 0-d object array, matched nothing, and every metric read 0 (or an error is due)
    assert fn([1, 2, 3], {2, 3}) == pytest.approx(expected)
    assert fn([1, 2, 3], {2: 0, 3: 1}.keys()) == pytest.approx(expected)  # any iterable


# --- 3. ndcg_at_k allocates O(k) memory whatever the list length --------------------------


def test_ndcg_at_k_with_a_huge_cutoff_costs_no_more_than_the_list():
    # "k larger than the list" is a documented case (hr/recall handle it in O(list));
    # ndcg built discounts for all k positions: k=1e8 took 1.6 GB, k=1e9 a MemoryError
    tracemalloc.start()
    try:
        value = M.ndcg_at_k([1, 2, 3], [2], 10**7)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert value == pytest.approx(M.ndcg_at_k([1, 2, 3], [2], 3))
    assert peak < 8_000_000, f"peak {peak / 1e6:.0f} MB for a 3-item list"


# --- 4. Predictor.save of a with_users view drops its new users ---------------------------


def test_a_with_users_view_is_not_saved_without_its_new_users(users_run, tmp_path):
    """Saving a view wrote its new users' rows and not their ids: the loaded copy scored
    them as cold users without side data (up to 0.27 stars off). It is refused now; the
    RUN it came from saves, and a user given side data with their training rows kept
    (filled) is part of the fitted rows."""
    tmp = users_run.parent
    pred = Predictor.load(users_run)
    view, stats = pred.with_users(pd.read_csv(tmp / "U_new.csv"))
    assert stats["new_users_with_side_data"] == 2
    with pytest.raises(MetarecError, match="view with 2 user"):
        view.save(tmp_path / "VIEW")
    assert not (tmp_path / "VIEW").exists()
    pred.save(tmp_path / "RUN")
    assert (
        Predictor.load(tmp_path / "RUN").model.features_.user_side.shape[0] == len(pred.users) + 1
    )


# --- 5. fitting a with_new_users view keeps its new-user count -----------------------------


def test_a_refitted_view_forgets_the_views_new_users():
    ds = _rating_world(n_users=60, user_age=True)
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    rec = MetaRecommender(_fast()).fit(ds, split.train, valid=split.valid)
    view = rec.with_new_users(np.ones((2, rec.features_.user_side.shape[1])))
    view.fit(ds, split.train, valid=split.valid)  # "a second fit starts clean"
    with pytest.raises(MetarecError, match="outside"):  # was an IndexError
        view.score(ds.n_users + 1, Interactions.empty(), np.arange(3))


# --- 6. make_split: a fraction that is not a number ---------------------------------------


@pytest.mark.parametrize("bad", ["0.1", None])
@pytest.mark.parametrize("key", ["valid_frac", "test_frac"])
def test_a_split_fraction_that_is_no_number_is_a_one_line_error(key, bad):
    ds = _rating_world(n_users=40)
    with pytest.raises(MetarecError, match=key):
        make_split(ds, "user-cold", k_shot=3, n_query=3, **{key: bad})


# --- 7. a bool rating in a Python support frame is a silent 1-star rating ----------------


def test_a_bool_rating_is_refused_as_the_cli_refuses_true(users_run):
    # _supports_from_frame: a frame built in Python "is read here the same way" as a file;
    # the CLI refuses rating "True" (not a number), Python took True as a 1-star rating
    pred = Predictor.load(users_run)
    support = pd.DataFrame(
        {"user_id": ["x", "x"], "item_id": ["it0", "it2"], "rating": [True, True]}
    )
    query = pd.DataFrame({"user_id": ["x"], "item_id": ["it4"]})
    with pytest.raises(MetarecError, match="rating"):
        pred.predict(support, query)


# --- 8. a refit keeps the name the first fit's scoring model gave it ---------------------


def _implicit(ds):
    """``ds`` with its ratings read as likes (4 and 5), as implicit data."""
    inter = ds.interactions
    return dataclasses.replace(
        ds,
        feedback="implicit",
        rating_range=(0.0, 1.0),
        interactions=dataclasses.replace(inter, rating=(inter.rating >= 4).astype(np.float32)),
    )


def test_a_loaded_implicit_model_refitted_on_ratings_is_named_after_its_new_scoring_model():
    ds = _rating_world(n_users=60)
    implicit = _implicit(ds)
    cfg = _fast(rank_meta=MetaConfig(algorithm="np"))
    sp_i = make_split(implicit, "user-cold", k_shot=6, n_query=8, seed=0)
    first = MetaRecommender(cfg).fit(implicit, sp_i.train, valid=sp_i.valid)
    state, tensors = first.state()
    loaded = MetaRecommender.from_state(state, tensors, sp_i.train)  # as a RUN loads
    assert loaded.name == "MetaRec-np"  # its scoring model is the NP ranking model
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    loaded.fit(ds, split.train, valid=split.valid)
    fresh = MetaRecommender(cfg).fit(ds, split.train, valid=split.valid)
    assert loaded.scoring_algorithm == "maml"
    assert loaded.name == fresh.name  # was still "MetaRec-np"


# --- 9. float ids: make_ratings_frame and the Predictor spell them differently ------------


def test_a_predictor_fitted_on_float_ids_knows_them_when_given_as_floats(tmp_path):
    log = _rating_world(n_users=60).interactions
    frame = pd.DataFrame(
        {
            "user_id": log.user_idx.astype(float),  # ids read as floats (a NaN-able column)
            "item_id": log.item_idx.astype(float),
            "rating": log.rating,
            "timestamp": log.timestamp,
        }
    )
    raw = RawData(
        name="floats",
        ratings=make_ratings_frame(
            frame.user_id, frame.item_id, frame.rating, timestamp=frame.timestamp
        ),
        feedback="explicit",
        rating_range=(1.0, 5.0),
        has_time=True,
    )
    pred = fit_raw(raw, _fast())
    user = float(frame.user_id.iloc[0])
    rows = frame[frame.user_id == user]
    # the same frame, the same spelling: the query items are the user's own training items
    out, _ = pred.predict(rows.iloc[:2], rows.iloc[2:4][["user_id", "item_id"]])
    assert len(out) == 2


# --- 10. Task / FeatureSet arguments of another type: bare AttributeError ------------------


@pytest.fixture(scope="module")
def small_fit():
    ds = _rating_world(n_users=60)
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    return ds, split, MetaRecommender(_fast()).fit(ds, split.train, valid=split.valid)


def test_fit_refuses_features_that_are_no_featureset_in_a_line(small_fit):
    ds, split, _ = small_fit
    with pytest.raises(MetarecError):
        MetaRecommender(_fast()).fit(ds, split.train, features=np.zeros((3, 3)))


def test_score_many_refuses_tuples_for_tasks_in_a_line(small_fit):
    _, split, rec = small_fit
    t = split.test[0]
    with pytest.raises(MetarecError):
        rec.score_many([(t.user_idx, t.support)], [t.query.item_idx])


# --- 11. mae_rounded / nearest_level take NaN levels ---------------------------------------


def test_nearest_level_refuses_nan_levels():
    # "levels must be sorted, distinct and non-empty": [1, nan, 5] passed the check and
    # mae_rounded of perfect predictions read 2.0
    with pytest.raises(MetarecError, match="levels"):
        M.mae_rounded([1.0, 5.0], [1.0, 5.0], [1.0, np.nan, 5.0])


def test_a_warm_split_without_test_users_is_validation_only_as_the_others_are():
    # warm with test_frac=0 said "no user has more than K interactions", which was false;
    # user-cold and item-cold give a validation-only split there
    ds = _rating_world(n_users=60)
    for protocol in ("warm", "user-cold"):
        split = make_split(ds, protocol, k_shot=6, n_query=8, test_frac=0.0, seed=0)
        assert not split.test and split.valid, protocol


def test_a_nan_rating_in_train_is_named_as_such():
    ds = _rating_world(n_users=60)
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    rating = split.train.rating.copy()
    rating[3] = np.nan
    train = dataclasses.replace(split.train, rating=rating)
    with pytest.raises(MetarecError, match="train row 3 has a rating that is not finite"):
        MetaRecommender(_fast()).fit(ds, train, valid=split.valid)


def test_validation_tasks_given_as_a_generator_are_all_read(small_fit):
    # the Task check read a generator to its end before fit did: 0 validation users, and
    # the blend skipped without early stopping
    ds, split, rec = small_fit
    again = MetaRecommender(_fast()).fit(ds, split.train, valid=(t for t in split.valid))
    assert again.blend_skipped_ == rec.blend_skipped_
    t = split.test[0]
    np.testing.assert_array_equal(
        again.score(t.user_idx, t.support, t.query.item_idx),
        rec.score(t.user_idx, t.support, t.query.item_idx),
    )
