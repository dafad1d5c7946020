"""MetaRecommender's blend with closed-form models (blend.py) and its save/load round trip.

Known answers: the stacking weights are exact least squares, the ranking weights satisfy
the softmax-likelihood optimality condition, every closed-form input equals the baseline
it stands for, and a saved-then-loaded model gives bit-identical scores.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from metarec.baselines import (
    EASE,
    BiasedMF,
    ImplicitALS,
    ItemKNN,
    ItemKNNRating,
    ItemMeanUserBias,
)
from metarec.blend import (
    Blend,
    BlendConfig,
    ClosedForm,
    best_ordering_input,
    content_map,
    fit_rank_blend,
    fit_rank_weights,
    fit_rating_weights,
    ndcg_of_weights,
    pair_order,
    search_rank_weights,
)
from metarec.data.raw import RawData, build_dataset, make_ratings_frame
from metarec.features import build_features
from metarec.meta.algorithms import MetaConfig
from metarec.metrics import ndcg_at_k
from metarec.model import MetaRecommender, ModelConfig
from metarec.splits import make_split
from metarec.text.encoder import HashingEncoder
from metarec.train import TrainConfig
from metarec.types import Interactions, MetarecError, Task

# --- pure functions ------------------------------------------------------------------------


def test_rating_weights_are_exact_least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    y = 2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.5  # noiseless: the solution is exact
    np.testing.assert_allclose(fit_rating_weights(x, y), [2.0, -1.0, 0.5], atol=1e-10)
    with pytest.raises(MetarecError, match="cannot fit"):
        fit_rating_weights(x[:3], y[:3])


def test_rating_weights_without_intercept_sum_to_one_over_the_marked_inputs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)) + 3.0
    # noiseless y = 0.3 a + 0.7 b + 2 c, c (a logit) outside the sum: recovered exactly
    y = 0.3 * x[:, 0] + 0.7 * x[:, 1] + 2.0 * x[:, 2]
    summed = np.array([True, True, False])
    for loss in ("l2", "l1"):
        w = fit_rating_weights(x, y, loss, intercept=False, summed=summed)
        np.testing.assert_allclose(w, [0.3, 0.7, 2.0, 0.0], atol=1e-7)
    # noisy, with a true intercept of 1 the constrained fit cannot use: still sums to 1
    y2 = 0.5 * x[:, 0] + 0.2 * x[:, 1] + 1.0 + rng.normal(size=40)
    w = fit_rating_weights(x[:, :2], y2, intercept=False)
    assert w[0] + w[1] == pytest.approx(1.0, abs=1e-10) and w[2] == 0.0


def test_rating_weights_shrink_toward_the_prior_in_closed_form():
    # one centred input and a free (unpenalised) intercept: c = mean(y) and
    # w = (Σ x y + s n w0) / (Σ x² + s n), the ridge solution around the prior w0
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    s, w0, n = 0.3, 1.0, 5
    w = fit_rating_weights(x[:, None], y, shrink=s, prior=np.array([w0]))
    expect = ((x * y).sum() + s * n * w0) / ((x * x).sum() + s * n)  # (8+1.5)/(10+1.5)
    np.testing.assert_allclose(w, [expect, y.mean()], atol=1e-12)
    with pytest.raises(MetarecError, match="l2"):
        fit_rating_weights(x[:, None], y, "l1", shrink=s)


def test_l1_rating_weights_ignore_an_outlier():
    # y = 2 x + 1 exactly except one wild row: least absolute deviations recovers the line
    # exactly (an LP vertex through the clean rows), least squares is pulled away
    x = np.linspace(-1, 1, 21)[:, None]
    y = 2 * x[:, 0] + 1
    y[3] += 40.0
    np.testing.assert_allclose(fit_rating_weights(x, y, "l1"), [2.0, 1.0], atol=1e-8)
    assert abs(fit_rating_weights(x, y, "l2")[1] - 1.0) > 1.0


def test_rank_weights_meet_the_optimality_condition():
    # one user, two items, one input: x = (1, 0), item 0 liked. With s = std(x) = 1/2 and
    # v = w·s the standardised weight, the loss is −log σ(v/s) + λ v², whose stationary
    # point satisfies σ(−v/s)/s = 2λ v.
    lam = 0.05
    x = np.array([[[1.0], [0.0]]])
    pos = np.array([[True, False]])
    w = fit_rank_weights(x, pos, np.zeros_like(pos), weight_decay=lam)
    s = 0.5
    v = w[0] * s
    assert 1 / (1 + np.exp(v / s)) / s == pytest.approx(2 * lam * v, rel=1e-5)
    # an uninformative second input gets (numerically) no weight; excluded items are ignored
    x2 = np.concatenate([x, np.ones_like(x)], 2)
    w2 = fit_rank_weights(x2, pos, np.zeros_like(pos), weight_decay=lam)
    assert w2[0] == pytest.approx(w[0], rel=1e-5) and w2[1] == 0.0


def test_rank_weights_need_a_positive():
    with pytest.raises(MetarecError, match="no liked"):
        fit_rank_weights(np.zeros((1, 2, 1)), np.zeros((1, 2), bool), np.zeros((1, 2), bool))


def test_rank_weights_ignore_a_liked_item_that_is_excluded():
    # mutation audit, probe 147: not masking the positives by the exclusions survived
    # (the callers mask them first); a liked support item is never ranked, so it is no
    # positive: the weights are those without it, and a user liking only excluded items
    # gives nothing to fit on
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 20, 2))
    pos = np.zeros((3, 20), bool)
    pos[:, :4] = True
    excl = np.zeros_like(pos)
    excl[:, 0] = True  # liked and support
    want = fit_rank_weights(x, pos & ~excl, excl, 1e-2)
    assert np.isfinite(want).all() and abs(want[0]) > 0.1
    np.testing.assert_array_equal(fit_rank_weights(x, pos, excl, 1e-2), want)
    with pytest.raises(MetarecError, match="no liked"):
        fit_rank_weights(x, excl.copy(), excl, 1e-2)


def _rank_world(seed=0, users=40, items=200):
    # two noisy views of a hidden taste (one much noisier) and a useless input; each
    # user's top-5 by taste are the liked items, the first 3 items are "support"
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(users, items))
    x = np.stack(
        [
            taste + rng.normal(scale=3.0, size=taste.shape),
            taste + rng.normal(scale=1.0, size=taste.shape),
            rng.normal(size=taste.shape),
        ],
        2,
    )  # (U, N, 3)
    pos = np.zeros(taste.shape, bool)
    for u in range(users):
        pos[u, np.argsort(-taste[u])[:5]] = True
    excl = np.zeros_like(pos)
    excl[:, :3] = True
    return x, pos & ~excl, excl


def test_ndcg_of_weights_matches_the_metric():
    x, pos, excl = _rank_world()
    w = np.array([0.3, 1.0, -0.2])
    s = x @ w
    expected = []
    for u in range(len(s)):
        cand = np.flatnonzero(~excl[u])
        ranked = cand[np.argsort(-s[u, cand], kind="stable")]
        expected.append(ndcg_at_k(ranked, np.flatnonzero(pos[u]), 10))
    assert ndcg_of_weights(x, pos, excl, w, 10) == pytest.approx(np.mean(expected), abs=1e-12)


def test_ndcg_of_weights_breaks_ties_at_random_not_by_index():
    # liked items are the lowest indices; an input that ties every item must score like
    # chance (5 of 400 liked: nDCG@10 ~ 0.03), not like a ranking by index (1.0)
    users, n = 200, 400
    x = np.zeros((users, n, 1))
    pos = np.zeros((users, n), bool)
    pos[:, :5] = True
    excl = np.zeros_like(pos)
    tied = ndcg_of_weights(x, pos, excl, np.array([1.0]), 10)
    assert tied < 0.1
    assert tied == ndcg_of_weights(x, pos, excl, np.array([1.0]), 10)  # one fixed order
    # an input that does rank the liked items first still scores 1
    x[:, :5, 0] = 1.0
    assert ndcg_of_weights(x, pos, excl, np.array([1.0]), 10) == 1.0
    # columns permuted once up front (the search's way) give the same value
    from metarec.blend import _tie_order

    x = np.random.default_rng(0).integers(0, 3, size=(users, n, 1)).astype(np.float64)
    o = _tie_order(n)
    w = np.array([1.0])
    assert ndcg_of_weights(x[:, o], pos[:, o], excl[:, o], w, 10, shuffled=True) == (
        ndcg_of_weights(x, pos, excl, w, 10)
    )


def test_ndcg_search_never_loses_to_its_start_and_is_deterministic():
    x, pos, excl = _rank_world()
    start = fit_rank_weights(x, pos, excl, weight_decay=1e-2)
    w = search_rank_weights(x, pos, excl, start, k=10)
    assert ndcg_of_weights(x, pos, excl, w, 10) >= ndcg_of_weights(x, pos, excl, start, 10)
    np.testing.assert_array_equal(w, search_rank_weights(x, pos, excl, start, k=10))
    # the useless input never outweighs the clean view
    assert abs(w[2]) <= abs(w[1])


def test_cv_rank_fit_keeps_softmax_unless_the_search_wins_in_cv():
    x, pos, excl = _rank_world()
    w_soft, kind = fit_rank_blend(x, pos, excl, 1e-2, "softmax")
    assert kind == "softmax"
    np.testing.assert_array_equal(w_soft, fit_rank_weights(x, pos, excl, 1e-2))
    w_ndcg, kind = fit_rank_blend(x, pos, excl, 1e-2, "ndcg")
    assert kind == "ndcg"
    w_auto, kind = fit_rank_blend(x, pos, excl, 1e-2, "cv")
    # replay the 2-fold CV by hand: even rows against odd rows, both ways
    rows = np.arange(len(x))
    folds = (rows[0::2], rows[1::2])
    cv = {}
    for how in ("softmax", "ndcg"):
        cv[how] = sum(
            ndcg_of_weights(
                x[folds[b]],
                pos[folds[b]],
                excl[folds[b]],
                fit_rank_blend(x[folds[a]], pos[folds[a]], excl[folds[a]], 1e-2, how)[0],
                10,
            )
            for a, b in ((0, 1), (1, 0))
        )
    assert kind == ("ndcg" if cv["ndcg"] > cv["softmax"] + 1e-12 else "softmax")
    np.testing.assert_array_equal(w_auto, w_ndcg if kind == "ndcg" else w_soft)


def test_fit_rank_blend_rejects_an_unknown_fit():
    with pytest.raises(MetarecError, match="how="):
        fit_rank_blend(
            np.zeros((1, 2, 1)), np.ones((1, 2), bool), np.zeros((1, 2), bool), 0.1, "best"
        )


def test_auto_rank_fit_runs_the_cv_choice_only_with_enough_users():
    """ "auto" = "cv" from ``search_users`` users (rows) up, the plain softmax fit below."""
    x, pos, excl = _rank_world()
    n = len(x)
    w_soft, _ = fit_rank_blend(x, pos, excl, 1e-2, "softmax")
    w_cv, kind_cv = fit_rank_blend(x, pos, excl, 1e-2, "cv")
    w, kind = fit_rank_blend(x, pos, excl, 1e-2, "auto", search_users=n + 1)
    assert kind == "softmax"
    np.testing.assert_array_equal(w, w_soft)
    w, kind = fit_rank_blend(x, pos, excl, 1e-2, "auto", search_users=n)
    assert kind == kind_cv
    np.testing.assert_array_equal(w, w_cv)


def test_rank_fit_takes_an_evenly_spread_subset_of_users_above_the_cell_budget(fitted, monkeypatch):
    import metarec.model as M

    ds, split, feats, _ = fitted
    rows: list[int] = []
    real = M.fit_rank_blend

    def spy(x, *args, **kwargs):
        rows.append(x.shape[0])  # (n_users, n_cand, 1 + n_inputs)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(M, "fit_rank_blend", spy)
    small = BlendConfig(rank_fit_cells=ds.n_items * 12)  # room for 12 users
    rec = MetaRecommender(_fast_config(blend=small)).fit(ds, split.train, feats, valid=split.valid)
    assert len(split.valid) > 12 and rows and max(rows) == 12
    assert rec.blend_ is not None and rec.blend_.rank_weights is not None
    with pytest.raises(MetarecError, match="rank_fit_cells"):
        BlendConfig(rank_fit_cells=0)


def test_blend_config_rejects_unknown_rank_fit():
    with pytest.raises(MetarecError, match="rank_fit"):
        BlendConfig(rank_fit="lambdamart")
    with pytest.raises(MetarecError, match="rank_k"):
        BlendConfig(rank_k=0)


def test_blend_config_rejects_unknown_inputs():
    with pytest.raises(MetarecError, match="rank_inputs"):
        BlendConfig(rank_inputs=("lightfm",))
    with pytest.raises(MetarecError, match="large_rank_inputs"):
        BlendConfig(large_rank_inputs=("ease",))
    with pytest.raises(MetarecError, match="knn_alpha"):
        BlendConfig(knn_alpha=2.0)
    with pytest.raises(MetarecError, match="knn_damping"):
        BlendConfig(knn_damping=-0.5)
    with pytest.raises(MetarecError, match="cold_rank_inputs"):
        BlendConfig(cold_rank_inputs=("text",))
    with pytest.raises(MetarecError, match="content_reg"):
        BlendConfig(content_reg=0.0)
    with pytest.raises(MetarecError, match="rank_search_users"):
        BlendConfig(rank_search_users=1)
    for n in (0, 2.5, True):
        with pytest.raises(MetarecError, match="rating_knn_neighbours"):
            BlendConfig(rating_knn_neighbours=n)
    with pytest.raises(MetarecError, match="rating_knn_damping"):
        BlendConfig(rating_knn_damping=float("nan"))
    with pytest.raises(MetarecError, match="rating_knn_damping"):
        BlendConfig(rating_knn_damping=1e308)
    with pytest.raises(MetarecError, match="names an input twice"):
        BlendConfig(rating_inputs=("item_knn_rating", "item_knn_rating"))
    # the prior is a whole rating, not an offset input
    with pytest.raises(MetarecError, match="whole-rating inputs"):
        BlendConfig(rating_inputs=("item_knn_rating", "user_bias"), rating_prior="user_bias")
    # "auto" needs a whole-rating input only where it shrinks toward one
    BlendConfig(rating_inputs=("user_bias", "item_bias"), rating_shrink=0.0)
    with pytest.raises(MetarecError, match="set blend.rating_shrink=0"):
        BlendConfig(rating_inputs=("user_bias", "item_bias"))
    with pytest.raises(MetarecError, match="rating_knn_shrink"):
        BlendConfig(rating_knn_shrink=-1.0)
    with pytest.raises(MetarecError, match="rating_knn_damping"):
        BlendConfig(rating_knn_damping=-0.1)


# --- closed-form inputs equal the baselines ---------------------------------------------------


def _world(n_users=150, n_items=40, seed=0, numeric=False, user_age=False):
    """Two tastes (even items vs odd items), a per-item quality offset, timestamps so the
    user-cold split takes the newest users; items 34.. are never rated (cold)."""
    rng = np.random.default_rng(seed)
    users, items, ratings, ts = [], [], [], []
    quality = rng.normal(0, 0.7, n_items)
    for u in range(n_users):
        taste = u % 2
        for t, i in enumerate(rng.choice(34, size=24, replace=False)):
            r = 3 + (1.2 if i % 2 == taste else -1.2) + quality[i] + rng.normal(0, 0.3)
            users.append(f"u{u}")
            items.append(f"i{i}")
            ratings.append(float(np.clip(np.round(r), 1, 5)))
            ts.append(1000 * u + t)
    item_table = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"{'space' if i % 2 == 0 else 'garden'} story {i}" for i in range(n_items)],
        }
    )
    if numeric:  # a numeric side column, "year", that the item-cold "side" input reads
        item_table["year"] = 1990.0 + np.arange(n_items) % 9
    raw = RawData(
        name="world",
        ratings=make_ratings_frame(users, items, ratings, timestamp=ts),
        feedback="explicit",
        rating_range=(1.0, 5.0),
        has_time=True,
        items=item_table,
        item_text_columns=("title",),
        item_numeric_columns=("year",) if numeric else (),
    )
    if user_age:  # a users table with a numeric side column, "age", apart by taste
        ages = [20.0 + 30.0 * (u % 2) for u in range(n_users)]
        user_table = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)], "age": ages})
        raw = dataclasses.replace(raw, users=user_table, user_numeric_columns=("age",))
    return build_dataset(raw)


@pytest.fixture(scope="module")
def world():
    ds = _world()
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    return ds, split


def test_blend_popularity_counts_only_likes_on_implicit_data(world):
    # the blend's popularity input, as the Popularity baseline: a label 0 is a "no"
    ds, split = world
    train = split.train
    flipped = train.rating >= 4.0  # the log as implicit labels: 1 for 4-5 stars, else 0
    imp_train = dataclasses.replace(train, rating=flipped.astype(train.rating.dtype))
    imp = dataclasses.replace(ds, feedback="implicit", rating_range=(0.0, 1.0))
    cfg = BlendConfig(rating=False, rank_inputs=("popularity",))
    closed = ClosedForm.fit(imp, imp_train, cfg, like=0.5, seed=0)
    liked = np.bincount(train.item_idx[flipped], minlength=ds.n_items)
    np.testing.assert_allclose(closed.log_pop, np.log1p(liked))
    every = np.bincount(train.item_idx, minlength=ds.n_items)
    assert not np.allclose(liked, every)  # the world has rows below 4 stars


def test_a_rating_at_a_threshold_float32_rounds_down_is_a_like_everywhere(world):
    """Ratings are held in float32; fit judged likes in float32 (0.7 >= 0.7) while the
    blend's histories, cast to float64, held 0.7 as 0.699999988, below the threshold: a
    like in training was a dislike at recommend time (probe 155). Every comparison now
    goes through metrics.is_relevant."""
    from metarec.meta.episodes import labels_for
    from metarec.model import _as_likes

    ds, split = world
    # the 1-5 log on a 0.3-1.1 scale: 4 stars is 0.9, the middle 3 stars 0.7
    scaled = dataclasses.replace(
        split.train, rating=(0.3 + 0.2 * (split.train.rating - 1)).astype(np.float32)
    )
    sds = dataclasses.replace(ds, rating_range=(0.3, 1.1))
    cfg = BlendConfig(rating=False, rank_inputs=("ease", "knn"))
    closed = ClosedForm.fit(sds, scaled, cfg, like=0.7, seed=0)
    at = np.float32(0.7)
    assert float(at) < 0.7  # the threshold float32 rounds down
    items = split.train.item_idx[:3]
    targets = np.arange(34)
    as_like = closed.rank_inputs(cfg.rank_inputs, [(items, np.full(3, 0.9))], targets)
    for hist in (np.full(3, at, dtype=np.float32), np.full(3, at).astype(np.float64)):
        got = closed.rank_inputs(cfg.rank_inputs, [(items, hist)], targets)
        np.testing.assert_array_equal(got, as_like)
    # fit's labels agree: the ranking model's likes and the episodes' targets
    liked = _as_likes(dataclasses.replace(split, train=scaled), 0.7).train.rating
    np.testing.assert_array_equal(liked, (split.train.rating >= 3).astype(np.float32))
    np.testing.assert_array_equal(labels_for("binary", np.array([at], np.float64), 0.7), [1.0])


def test_a_request_rating_at_a_threshold_float32_rounds_down_adapts_as_a_like(fitted):
    """The ranking model's adaptation labels a request's support in float32 too: the
    history is read as float64 (0.7 held as 0.699999988), and compared there a rating
    at the like threshold trained as a like was a dislike at recommend time (probe 155)."""
    ds, split, _, rec = fitted
    rec = MetaRecommender.from_state(*rec.state(), split.train)
    rec._like_threshold = lambda: 0.7
    items = np.array([1, 2, 3], dtype=np.int64)
    at = Interactions(
        np.zeros(3, np.int64),
        items,
        np.full(3, 0.7, np.float32),
        np.arange(3),
        np.zeros(3, np.int16),
    )
    (ep,) = rec._episodes(rec.rank_, [(-1, at)], train_rows=False)
    assert ep.support_y[np.isin(ep.support_items, items)].tolist() == [1.0, 1.0, 1.0]


def test_the_closed_form_counts_likes_at_a_threshold_float32_rounds_down(world):
    """ClosedForm.fit's count of liked items (EASE is fitted where there are any, and
    skipped above ease_max_items) judges likes as EASE does, through is_relevant: a log
    rated 0.7 throughout at a like threshold of 0.7 has every item liked, not none."""
    ds, split = world
    flat = dataclasses.replace(split.train, rating=np.full(len(split.train), 0.7, np.float32))
    sds = dataclasses.replace(ds, rating_range=(0.3, 1.1))
    n_items = len(np.unique(split.train.item_idx))
    for most, fitted in ((n_items, True), (n_items - 1, False)):
        cfg = BlendConfig(rating=False, rank_inputs=("ease", "popularity"), ease_max_items=most)
        closed = ClosedForm.fit(sds, flat, cfg, like=0.7, seed=0)
        assert (closed.ease is not None) == fitted, most


def test_the_ranking_blend_takes_a_query_rating_at_the_threshold_as_a_positive(fitted, monkeypatch):
    """The ranking blend's positives are judged through is_relevant (float32) as evaluate
    judges relevance: a validation query item rated 0.7 (held as 0.699999988) at a like
    threshold of 0.7 is a positive, not an item no weight should rank (probe 155)."""
    import metarec.model as model_module

    ds, split, _, rec = fitted
    rec = MetaRecommender.from_state(*rec.state(), split.train)
    rec._like_threshold = lambda: 0.7
    cfg = BlendConfig(rating=False, rank_inputs=("popularity",))
    closed = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0)
    tasks = [
        dataclasses.replace(
            t, query=dataclasses.replace(t.query, rating=np.full(len(t.query), 0.7, np.float32))
        )
        for t in split.valid[:3]
    ]
    pairs = [(t.user_idx, t.support) for t in tasks]
    items = np.arange(ds.n_items)
    seen = []

    def spy(x, positive, *a):
        seen.append(positive)
        return np.zeros(x.shape[-1]), "softmax"

    monkeypatch.setattr(model_module, "fit_rank_blend", spy)
    rec._fit_rank_blend(closed, ("popularity",), tasks, pairs, items)
    assert seen, "no positive: the blend was not fitted"
    for row, t in zip(seen[0], tasks, strict=True):
        assert set(np.flatnonzero(row)) == set(t.query.item_idx) - set(t.support.item_idx)


def test_closed_form_inputs_equal_the_baselines(world):
    ds, split = world
    cfg = BlendConfig(rank_inputs=("ease", "popularity", "biased_mf"))
    closed = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0)
    imub = ItemMeanUserBias().fit(ds, split.train)
    mf = BiasedMF(factors=cfg.mf_factors, reg=cfg.mf_reg, bias_reg=cfg.mf_reg, seed=0)
    mf.fit(ds, split.train)
    ease = EASE(reg=cfg.ease_reg, min_rating=3.0).fit(ds, split.train)
    targets = np.arange(34)  # trained items
    for t in split.test[:5]:
        hist = (t.support.item_idx, t.support.rating.astype(np.float64))
        x = closed.rating_inputs(("item_mean_user_bias", "biased_mf"), *hist, targets)
        np.testing.assert_allclose(x[:, 0], imub._predict(t.user_idx, t.support, targets))
        np.testing.assert_allclose(x[:, 1], mf._predict(t.user_idx, t.support, targets))
        # the split inputs add up to the whole predictions
        names = ("user_bias", "item_bias", "mf_user", "mf_item", "popularity")
        parts = closed.rating_inputs(names, *hist, targets)
        np.testing.assert_allclose(closed.mu + parts[:, 0] + parts[:, 1], x[:, 0])
        np.testing.assert_allclose(closed.mf_mu + parts[:, 2] + parts[:, 3], x[:, 1])
        g = closed.rank_inputs(cfg.rank_inputs, [hist], targets)[0]
        np.testing.assert_allclose(g[:, 0], ease.score(t.user_idx, t.support, targets), rtol=1e-5)
        counts = np.bincount(split.train.item_idx, minlength=ds.n_items)
        np.testing.assert_allclose(g[:, 1], np.log1p(counts[targets]))
        # the MF ranking input is the MF rating minus the per-user constant mu + b_u
        diff = mf._predict(t.user_idx, t.support, targets) - g[:, 2]
        np.testing.assert_allclose(diff, diff[0])
    # an untrained item gets EASE score 0, popularity 0
    g = closed.rank_inputs(("ease", "popularity"), [hist], np.array([39]))[0, 0]
    assert g.tolist() == [0.0, 0.0]


def test_als_rank_input_equals_the_implicit_als_baseline_and_round_trips(world):
    pytest.importorskip("implicit", reason="the baselines extra is not installed")
    ds, split = world
    cfg = BlendConfig(rank_inputs=("popularity", "als"), als_factors=8, als_iterations=5)
    closed = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0)
    als = ImplicitALS(
        factors=8, reg=cfg.als_reg, alpha=cfg.als_alpha, iterations=5, seed=0, min_rating=3.0
    ).fit(ds, split.train)
    back = ClosedForm.from_state(*closed.state())
    targets = np.arange(ds.n_items)
    for t in split.test[:5]:
        hist = (t.support.item_idx, t.support.rating.astype(np.float64))
        g = closed.rank_inputs(cfg.rank_inputs, [hist], targets)[0]
        want = als.score(t.user_idx, t.support, targets)
        np.testing.assert_allclose(g[:, 1], want, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(back.rank_inputs(cfg.rank_inputs, [hist], targets)[0], g)
    # no liked history item: the folded-in user is 0, so is every score
    empty = (np.array([0]), np.array([1.0]))
    assert not closed.rank_inputs(("als",), [empty], targets).any()


def test_knn_rating_input_equals_the_baseline_and_round_trips(world):
    ds, split = world
    names = ("item_mean_user_bias", "biased_mf", "item_knn_rating")
    cfg = BlendConfig(
        rating_inputs=names,
        rating_knn_shrink=1.0,
        rating_knn_damping=0.3,
        rating_knn_neighbours=10,
    )
    closed = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0)
    assert closed.rknn is not None and closed.rknn.getnnz(1).max() == 10
    # the blend's ItemMean + user bias is the baseline's default (10, 5)
    knn = ItemKNNRating(sim_shrink=1.0, damping=0.3, neighbours=10).fit(ds, split.train)
    back = ClosedForm.from_state(*closed.state())
    targets = np.arange(ds.n_items)
    for t in split.test[:5]:
        hist = (t.support.item_idx, t.support.rating.astype(np.float64))
        x = closed.rating_inputs(names, *hist, targets)
        # float32 similarities in the blend, float64 in the baseline
        want = knn.rank_scores(t.user_idx, t.support, targets)
        np.testing.assert_allclose(x[:, 2], want, rtol=1e-6)
        assert not np.allclose(x[:34, 2], x[:34, 0])  # the neighbours move trained items
        np.testing.assert_array_equal(x[34:, 2], x[34:, 0])  # never rated: none
        np.testing.assert_array_equal(back.rating_inputs(names, *hist, targets), x)
    # not asked for, not fitted (nor saved)
    two = BlendConfig(rating_inputs=("item_mean_user_bias", "biased_mf"))
    plain = ClosedForm.fit(ds, split.train, two, like=3.0, seed=0)
    assert plain.rknn is None and "rknn_data" not in plain.state()[1]
    with pytest.raises(MetarecError, match="item_knn_rating input was not fitted"):
        plain.rating_inputs(("item_knn_rating",), *hist, targets)
    # a damaged neighbour table is refused at load, not served
    state, tensors = closed.state()
    assert tensors["rknn_indices"].dtype == torch.int32  # half the bytes of int64
    dup = tensors["rknn_indices"].clone()
    dup[1] = dup[0]  # row 0 names one neighbour twice
    shifted = tensors["rknn_indptr"].clone()
    shifted[0] = 1
    for key, bad in (
        ("rknn_indices", tensors["rknn_indices"] + ds.n_items),
        ("rknn_indices", dup),
        ("rknn_data", tensors["rknn_data"] * float("nan")),
        ("rknn_indptr", tensors["rknn_indptr"][:-1]),
        ("rknn_indptr", shifted),
    ):
        with pytest.raises(MetarecError, match="item_knn_rating neighbours are malformed"):
            ClosedForm.from_state(state, {**tensors, key: bad})
    diag = closed.rknn.tolil()
    diag[0, 0] = 0.5  # item 0 its own neighbour
    diag = diag.tocsr()
    diag.sort_indices()
    with pytest.raises(MetarecError, match="item_knn_rating neighbours are malformed"):
        ClosedForm.from_state(
            {**state, "rknn_shape": list(diag.shape)},
            {
                **tensors,
                "rknn_indptr": torch.from_numpy(diag.indptr.astype(np.int64)),
                "rknn_indices": torch.from_numpy(diag.indices.astype(np.int32)),
                "rknn_data": torch.from_numpy(diag.data.astype(np.float32)),
            },
        )
    for cfg_bad in (
        {**state, "rknn_damping": -1.0},
        {**state, "rknn_damping": float("nan")},
        {k: v for k, v in state.items() if k != "rknn_shape"},
    ):
        with pytest.raises(MetarecError, match="item_knn_rating neighbours are malformed"):
            ClosedForm.from_state(cfg_bad, tensors)


def test_knn_rank_input_equals_the_item_knn_baseline_and_round_trips(world):
    ds, split = world
    cfg = BlendConfig(rank_inputs=("knn",), knn_alpha=0.4, knn_damping=0.5)
    closed = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0)
    assert closed.rank_names == ("knn",) and closed.ease is None
    knn = ItemKNN(alpha=0.4, damping=0.5, min_rating=3.0).fit(ds, split.train)
    assert closed.knn_scale == knn.median_score() > 0
    back = ClosedForm.from_state(*closed.state())
    targets = np.arange(ds.n_items)
    for t in split.test[:5]:
        hist = (t.support.item_idx, t.support.rating.astype(np.float64))
        g = closed.rank_inputs(("knn",), [hist], targets)[0, :, 0]
        want = np.log1p(knn.score(t.user_idx, t.support, targets) / closed.knn_scale)
        np.testing.assert_allclose(g, want, rtol=1e-12)
        assert g[34:].tolist() == [0.0] * 6  # never rated: no neighbours
        np.testing.assert_array_equal(back.rank_inputs(("knn",), [hist], targets)[0, :, 0], g)


def test_content_map_with_one_hot_features_is_ridge_regression_of_the_matrix_on_itself():
    """F = I (one feature per item): the profile is the user's row x_u, and the map is the
    ridge regression of X on X (scikit-learn), over (1 + λ_f) from the item side's ridge
    (FᵀF = I, mean eigenvalue 1); λ_p = reg × the mean eigenvalue of XᵀX."""
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(3)
    x = (rng.random((30, 8)) < 0.4).astype(np.float64)
    reg = 0.2
    a = content_map(np.eye(8), sp.csr_matrix(x), reg)
    lam_p = reg * np.trace(x.T @ x) / 8
    want = Ridge(alpha=lam_p, fit_intercept=False).fit(x, x).coef_.T / (1 + reg)
    np.testing.assert_allclose(a, want, rtol=1e-8, atol=1e-10)


def test_content_map_without_ridge_is_the_whitened_feature_similarity():
    """reg -> 0 with full-rank profiles: A -> (FᵀF)⁻¹, so F A Fᵀ is the projection onto
    F's column space (an item's score from itself: its leverage)."""
    rng = np.random.default_rng(4)
    f = rng.normal(size=(12, 3))
    x = sp.csr_matrix((rng.random((40, 12)) < 0.5).astype(np.float64))
    a = content_map(f, x, 1e-10)
    np.testing.assert_allclose(a, np.linalg.inv(f.T @ f), rtol=1e-6)


def test_content_rank_input_scores_cold_items_and_round_trips(world):
    """score_j = Σ_{liked history i} (F A)_i · f_j, with A = content_map on the liked
    training matrix; items nobody rated get scores (from their features), unlike EASE."""
    ds, split = world
    rng = np.random.default_rng(5)
    f = rng.normal(size=(ds.n_items, 6))
    cfg = BlendConfig(rank_inputs=("ease", "content"), content_reg=0.3)
    closed = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0, item_features=f)
    assert closed.rank_names == ("ease", "content")
    tr = split.train
    liked = tr.rating >= 3.0
    x = sp.csr_matrix(
        (np.ones(int(liked.sum())), (tr.user_idx[liked], tr.item_idx[liked])),
        shape=(ds.n_users, ds.n_items),
    )
    x.data[:] = 1.0
    a = content_map(f, x, 0.3)
    back = ClosedForm.from_state(*closed.state())
    targets = np.arange(ds.n_items)
    for t in split.test[:5]:
        hist = (t.support.item_idx, t.support.rating.astype(np.float64))
        g = closed.rank_inputs(("ease", "content"), [hist], targets)[0]
        prof = f[np.unique(hist[0][hist[1] >= 3.0])].sum(0)
        np.testing.assert_allclose(g[:, 1], prof @ a @ f.T, rtol=1e-4, atol=1e-5)
        assert not g[34:, 0].any() and np.abs(g[34:, 1]).min() > 0  # cold: EASE 0, content not
        np.testing.assert_array_equal(back.rank_inputs(("ease", "content"), [hist], targets)[0], g)
    # without features (or for a history with nothing liked) the input is skipped / 0
    plain = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0)
    assert plain.rank_names == ("ease",) and plain.content_rows is None
    empty = (np.array([0]), np.array([1.0]))
    assert not closed.rank_inputs(("content",), [empty], targets).any()


def test_side_rank_inputs_are_the_numeric_columns_one_weight_each_and_round_trip(world):
    """ "side" expands to one input per numeric item column ("side:<name>"), each the
    column's value of the target item whatever the history (a prior over items: cold
    ones included); no columns, or no values given, skip it."""
    ds, split = world
    rng = np.random.default_rng(6)
    vals = rng.normal(size=(ds.n_items, 2)).astype(np.float32)
    cfg = BlendConfig(rank_inputs=("popularity", "side"))
    closed = ClosedForm.fit(
        ds, split.train, cfg, like=3.0, seed=0, item_numeric=(vals, ["year", "price"])
    )
    assert closed.rank_names == ("popularity", "side:year", "side:price")
    back = ClosedForm.from_state(*closed.state())
    assert back.side_columns == ("year", "price")
    targets = np.arange(ds.n_items)
    hists = [(t.support.item_idx, t.support.rating.astype(np.float64)) for t in split.test[:3]]
    g = closed.rank_inputs(closed.rank_names, hists, targets)  # (3, n_items, 3)
    for t in range(3):
        np.testing.assert_array_equal(g[t, :, 1:], vals.astype(np.float64))
    np.testing.assert_array_equal(back.rank_inputs(closed.rank_names, hists, targets), g)
    # one column only, by name
    np.testing.assert_array_equal(
        closed.rank_inputs(("side:price",), hists[:1], targets)[0, :, 0], vals[:, 1]
    )
    # no numeric columns / none given: skipped
    empty = (np.zeros((ds.n_items, 0), np.float32), [])
    assert ClosedForm.fit(ds, split.train, cfg, 3.0, 0, item_numeric=empty).rank_names == (
        "popularity",
    )
    plain = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0)
    assert plain.rank_names == ("popularity",) and "side_values" not in plain.state()[1]
    with pytest.raises(MetarecError, match="item_numeric"):
        ClosedForm.fit(ds, split.train, cfg, 3.0, 0, item_numeric=(vals[:5], ["year", "price"]))


# --- MetaRecommender with the blend -------------------------------------------------------------


def _fast_config(**kw) -> ModelConfig:
    return ModelConfig(
        train=TrainConfig(steps=20, eval_every=10, meta_batch=8),
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def fitted(world, tmp_path_factory):
    ds, split = world
    known = np.zeros(ds.n_items, bool)
    known[split.train.item_idx] = True
    feats = build_features(
        ds, HashingEncoder(dim=64), cache=tmp_path_factory.mktemp("emb"), fit_items=known
    )
    rec = MetaRecommender(_fast_config()).fit(ds, split.train, feats, valid=split.valid)
    return ds, split, feats, rec


def test_fit_is_the_same_under_a_float64_default_dtype(world):
    """Parameters are float32 whatever torch's default dtype: under a float64 default the
    fit failed in baddbmm (float32 features meet float64 weights). The NP algorithm and the
    autoencoder text reduction create parameters of their own, so they are in the run."""
    from metarec.model import TextConfig

    ds, split = world
    cfg = _fast_config(
        meta=MetaConfig(algorithm="np"),
        text=TextConfig(model="hashing:64", reduce="autoencoder", pca_dim=8),
    )
    t = split.test[0]

    def fit_and_score():
        rec = MetaRecommender(cfg).fit(ds, split.train, valid=split.valid)
        assert {v.dtype for v in rec.rating_.params.values()} == {torch.float32}
        return np.concatenate(
            [
                rec.score(t.user_idx, t.support, t.query.item_idx),
                rec.rank_scores(t.user_idx, t.support, np.arange(ds.n_items)),
            ]
        )

    expected = fit_and_score()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = fit_and_score()
    finally:
        torch.set_default_dtype(old)
    np.testing.assert_array_equal(got, expected)


def test_a_saved_blend_missing_an_input_model_is_refused(fitted):
    """A ranking weight whose input has no fitted model would score 0 for every item,
    silently; loading such state (a RUN from a buggy or another version) raises."""
    *_, rec = fitted
    assert rec.blend_ is not None and "ease" in rec.blend_.rank_inputs
    cfg, tensors = rec.blend_.state()
    assert Blend.from_state(cfg, tensors).rank_inputs == rec.blend_.rank_inputs
    del tensors["ease"]
    with pytest.raises(KeyError, match="'ease' has no fitted model"):
        Blend.from_state(cfg, tensors)


def test_rating_weights_are_least_squares_on_validation_users(fitted):
    ds, split, _, fitted_rec = fitted
    # a copy of the fitted model whose stack has two inputs and a fixed prior, the case
    # solved by hand below (auto's choice: test_auto_rating_prior_...)
    rec = MetaRecommender.from_state(*fitted_rec.state(), split.train)
    two = ("item_mean_user_bias", "biased_mf")
    rec.config = dataclasses.replace(
        rec.config,
        blend=dataclasses.replace(
            rec.config.blend, rating_inputs=two, rating_prior="item_mean_user_bias"
        ),
    )
    rec.blend_ = blend = rec._fit_blend(ds, split)
    assert blend is not None and blend.rating_weights is not None
    assert blend.rank_weights is not None and blend.rank_inputs == ("ease", "popularity")
    tasks = list(split.valid)
    # rebuild the stacking design from scratch: raw meta rating, like-model logit (the
    # default rating_like) and the closed-form inputs
    assert blend.rating_like
    pairs = [(t.user_idx, t.support) for t in tasks]
    queries = [t.query.item_idx for t in tasks]
    meta = np.concatenate(rec._scores(rec.rating_, pairs, queries))
    like = np.concatenate(rec._scores(rec.rank_, pairs, queries))
    x = np.concatenate(
        [
            blend.closed.rating_inputs(
                blend.rating_inputs, t.support.item_idx, t.support.rating, t.query.item_idx
            )
            for t in tasks
        ]
    )
    y = np.concatenate([t.query.rating for t in tasks])
    design = np.column_stack([meta, like, x, np.ones(len(y))])
    # the default stack has no intercept and its whole-rating weights (meta, ItemMean+
    # UserBias, BiasedMF) sum to 1: substituting w_meta = 1 − w_imub − w_mf leaves a free
    # v = (w_like, w_imub, w_mf) and the residual r = y − meta ≈ F v, F = [like, x − meta].
    # The ridge toward "ItemMean+UserBias alone" (w0 = (0, 0, 1, 0)) adds
    # λn·[(1 − w_imub − w_mf)² + w_like² + (w_imub − 1)² + w_mf²] = λn·[(1 − aᵀv)² + |v − e2|²]
    # with a = (0, 1, 1), e2 = (0, 1, 0); its normal equations, solved by hand:
    # (FᵀF + λn(aaᵀ + I)) v = Fᵀr + λn(a + e2)
    assert blend.rating_inputs == ("item_mean_user_bias", "biased_mf")
    cfg = rec.config.blend
    assert cfg.rating_prior == "item_mean_user_bias" and cfg.rating_shrink > 0
    lam = cfg.rating_shrink * len(y)
    free = np.column_stack([like, x - meta[:, None]])
    a, e2 = np.array([0.0, 1.0, 1.0]), np.array([0.0, 1.0, 0.0])
    lhs = free.T @ free + lam * (np.outer(a, a) + np.eye(3))
    rhs = free.T @ (y - meta) + lam * (a + e2)
    w_like, w_imub, w_mf = np.linalg.solve(lhs, rhs)
    expected = [1.0 - w_imub - w_mf, w_like, w_imub, w_mf, 0.0]
    np.testing.assert_allclose(blend.rating_weights, expected, rtol=1e-6, atol=1e-9)

    # the penalised objective it minimises is no worse than at two feasible points: the
    # prior itself (ItemMean+UserBias alone) and the meta-model alone
    def objective(w):
        w0 = np.array([0.0, 0.0, 1.0, 0.0])
        return np.sum((design @ w - y) ** 2) + lam * np.sum((w[:4] - w0) ** 2)

    for feasible in ([0.0, 0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]):
        assert objective(blend.rating_weights) <= objective(np.array(feasible)) + 1e-9
    # and λ = 0 is the plain constrained least squares
    w0 = fit_rating_weights(
        design[:, :4], y, intercept=False, summed=np.array([True, False, True, True])
    )
    w_like0, w_imub0, w_mf0 = np.linalg.lstsq(free, y - meta, rcond=None)[0]
    np.testing.assert_allclose(
        w0, [1.0 - w_imub0 - w_mf0, w_like0, w_imub0, w_mf0, 0.0], rtol=1e-6, atol=1e-9
    )


def test_blended_scores_are_consistent_and_pure(fitted):
    ds, split, _, rec = fitted
    before = {k: v.clone() for k, v in rec.rating_.params.items()}
    tasks = list(split.test[:4])
    items = np.arange(ds.n_items)
    many = rec.score_many(tasks, [t.query.item_idx for t in tasks])
    batch = rec.rank_scores_batch(tasks, items)
    for t, m, row in zip(tasks, many, batch, strict=True):
        np.testing.assert_allclose(rec.score(t.user_idx, t.support, t.query.item_idx), m, rtol=1e-5)
        # float32 meta-model: a batch of 1 and of 4 may differ in the last bits
        np.testing.assert_allclose(
            rec.rank_scores(t.user_idx, t.support, items), row, rtol=1e-5, atol=1e-6
        )
        assert m.min() >= 1.0 and m.max() <= 5.0
    for k, v in rec.rating_.params.items():
        assert torch.equal(v, before[k])
    # the blended rank score is exactly w_meta * logit + w · closed-form inputs
    t = tasks[0]
    logit = rec._scores(rec.rank_, [(t.user_idx, t.support)], items)[0]
    hist = (t.support.item_idx, t.support.rating.astype(np.float64))
    g = rec.blend_.closed.rank_inputs(rec.blend_.rank_inputs, [hist], items)[0]
    w = rec.blend_.rank_weights
    np.testing.assert_allclose(batch[0], w[0] * logit + g @ w[1:], rtol=1e-5, atol=1e-6)


def test_adapt_once_serving_applies_the_same_blend(fitted):
    ds, split, _, rec = fitted
    t = split.test[1]
    items = np.arange(ds.n_items)
    got = rec.score_adapted(rec.adapt_user(t.user_idx, t.support, "score"), t.query.item_idx)
    np.testing.assert_allclose(got, rec.score(t.user_idx, t.support, t.query.item_idx), rtol=1e-5)
    p = rec.score_adapted(rec.adapt_user(t.user_idx, t.support, "rank"), items)
    s = rec.rank_scores(t.user_idx, t.support, items)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-s)), rtol=1e-5)


def test_state_round_trip_gives_identical_scores(fitted):
    ds, split, _, rec = fitted
    cfg, tensors = rec.state()
    assert cfg["blend"] is not None and any(k.startswith("blend.") for k in tensors)
    back = MetaRecommender.from_state(cfg, tensors, split.train)
    tasks = list(split.test[:6])
    items = np.arange(ds.n_items)
    for a, b in zip(
        rec.score_many(tasks, [t.query.item_idx for t in tasks]),
        back.score_many(tasks, [t.query.item_idx for t in tasks]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        rec.rank_scores_batch(tasks, items), back.rank_scores_batch(tasks, items)
    )


def test_blend_off_or_too_few_validation_users_means_the_meta_model_alone(fitted):
    ds, split, feats, rec = fitted
    off = MetaRecommender(_fast_config(blend=BlendConfig(rating=False, rank=False)))
    off.fit(ds, split.train, feats, valid=split.valid)
    assert off.blend_ is None
    # same seed, same training: the un-blended score is the blend's (clipped) meta input
    t = split.test[0]
    raw = rec._scores(rec.rating_, [(t.user_idx, t.support)], [t.query.item_idx])[0]
    got = off.score(t.user_idx, t.support, t.query.item_idx)
    np.testing.assert_allclose(got, np.clip(raw, 1, 5), rtol=1e-6)
    cfg, tensors = off.state()
    assert cfg["blend"] is None
    assert MetaRecommender.from_state(cfg, tensors, split.train).blend_ is None
    # fewer validation users than min_valid_users: no blend is fitted
    few = dataclasses.replace(split, valid=split.valid[: rec.config.blend.min_valid_users - 1])
    assert rec._fit_blend(ds, few) is None


def test_blend_fit_histories_can_leave_out_train_rows(fitted):
    # without given validation tasks, fit carves the newest training users out; their
    # train rows hold the query, so the blend fit adapts them on the support alone
    _, split, _, rec = fitted
    u = int(split.train.user_idx[-1])  # a user with training rows
    n_rows = int(np.sum(split.train.user_idx == u))
    items, _ = rec._full_history(u, Interactions.empty(), train_rows=True)
    assert len(items) == n_rows > 0
    items, _ = rec._full_history(u, Interactions.empty(), train_rows=False)
    assert len(items) == 0


def test_l1_stack_with_the_like_logit(fitted):
    # a copy of the fitted model with a different blend: L1 loss, like-model logit stacked
    ds, split, _, rec = fitted
    cfg, tensors = rec.state()
    other = MetaRecommender.from_state(cfg, tensors, split.train)
    blend_cfg = BlendConfig(rating_loss="l1", rating_like=True, rating_shrink=0.0)
    other.config = dataclasses.replace(other.config, blend=blend_cfg)
    other.blend_ = other._fit_blend(ds, split)
    n_inputs = len(other.blend_.rating_inputs)
    assert other.blend_.rating_like and len(other.blend_.rating_weights) == 2 + n_inputs + 1
    t = split.test[2]
    want = other.score(t.user_idx, t.support, t.query.item_idx)
    np.testing.assert_allclose(other.score_many([t], [t.query.item_idx])[0], want, rtol=1e-5)
    adapted = other.adapt_user(t.user_idx, t.support, "score")
    np.testing.assert_allclose(other.score_adapted(adapted, t.query.item_idx), want, rtol=1e-5)
    # the blended rating is w · (meta, like logit, imub, mf, 1) before clipping
    pair = [(t.user_idx, t.support)]
    meta = other._scores(other.rating_, pair, [t.query.item_idx])[0]
    like = other._scores(other.rank_, pair, [t.query.item_idx])[0]
    hist = (t.support.item_idx, t.support.rating.astype(np.float64))
    x = other.blend_.closed.rating_inputs(other.blend_.rating_inputs, *hist, t.query.item_idx)
    design = np.column_stack([meta, like, x, np.ones(len(meta))])
    np.testing.assert_allclose(want, np.clip(design @ other.blend_.rating_weights, 1, 5), rtol=1e-5)
    back = MetaRecommender.from_state(*other.state(), split.train)
    assert back.blend_.rating_like
    np.testing.assert_array_equal(back.score(t.user_idx, t.support, t.query.item_idx), want)


def test_pair_order_is_auc_on_two_levels_and_counts_graded_pairs_by_hand():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 30).astype(float)
    s = np.round(rng.normal(size=30), 1)  # ties too
    assert pair_order(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # ratings 1, 3, 3, 5: five differently rated pairs; s orders (1,3a), (1,5), (3b,5)
    # right, (3a,5) wrong and ties (1,3b): (3 + 0.5) / 5
    y = np.array([1.0, 3.0, 3.0, 5.0])
    s = np.array([0.0, 2.0, 0.0, 1.0])
    assert pair_order(y, s) == pytest.approx(3.5 / 5)
    assert np.isnan(pair_order(np.array([4.0, 4.0]), np.array([1.0, 2.0])))


def test_best_ordering_input_picks_the_column_that_orders_each_user():
    # two users (3 rows, then 2): column "b" orders both, "a" only the first
    y = np.array([1.0, 2.0, 3.0, 5.0, 4.0])
    x = np.array([[1, 3], [2, 4], [3, 5], [0, 9], [1, 8]], dtype=float)
    assert best_ordering_input(["a", "b"], x, y, [3, 2]) == "b"
    assert best_ordering_input(["a", "b"], x[:3], y[:3], [3]) == "a"  # a tie: the first
    # a user without a differently rated pair does not count
    y2 = np.array([1.0, 2.0, 3.0, 4.0, 4.0])
    assert best_ordering_input(["a", "b"], x, y2, [3, 2]) == "a"


def test_auto_rating_prior_is_the_input_ordering_validation_users_best(fitted):
    """rating_prior = "auto" fits exactly the weights of the explicit prior that orders
    the validation queries best (by pair_order, computed here from the inputs alone)."""
    ds, split, _, rec = fitted
    names = ("item_mean_user_bias", "biased_mf", "item_knn_rating")
    base = BlendConfig(rating_inputs=names, rating_knn_neighbours=10)
    other = MetaRecommender.from_state(*rec.state(), split.train)

    def refit(prior):
        other.config = dataclasses.replace(
            other.config, blend=dataclasses.replace(base, rating_prior=prior)
        )
        return other._fit_blend(ds, split)

    auto = refit("auto")
    tasks = list(split.valid)
    order = {}
    for j, name in enumerate(names):
        per_user = []
        for t in tasks:
            x = auto.closed.rating_inputs(
                names, t.support.item_idx, t.support.rating.astype(np.float64), t.query.item_idx
            )
            per_user.append(pair_order(t.query.rating.astype(np.float64), x[:, j]))
        order[name] = np.nanmean(per_user)
    best = max(names, key=lambda n: order[n])  # (a tie would take the first: none here)
    assert sorted(order.values())[-1] > sorted(order.values())[-2]
    explicit = {n: refit(n).rating_weights for n in names}
    np.testing.assert_allclose(auto.rating_weights, explicit[best], rtol=1e-10)
    assert auto.rating_prior == best  # recorded, and saved (below)
    assert any(not np.allclose(explicit[best], w) for w in explicit.values())
    # the weights go through a save and load like any other blend's
    other.blend_ = auto
    back = MetaRecommender.from_state(*other.state(), split.train)
    assert back.blend_.closed.rknn is not None and back.blend_.rating_prior == best
    t = split.test[0]
    np.testing.assert_array_equal(
        back.score(t.user_idx, t.support, t.query.item_idx),
        other.score(t.user_idx, t.support, t.query.item_idx),
    )
    with pytest.raises(MetarecError, match="'auto' picks one of the whole-rating inputs"):
        BlendConfig(rating_inputs=("user_bias", "item_bias"), rating_prior="auto")


def test_ndcg_rank_fit_is_recorded_saved_and_used(fitted):
    # a copy of the fitted model whose ranking weights come from the nDCG search
    ds, split, _, rec = fitted
    other = MetaRecommender.from_state(*rec.state(), split.train)
    other.config = dataclasses.replace(
        other.config, blend=dataclasses.replace(rec.config.blend, rank_fit="ndcg")
    )
    other.blend_ = other._fit_blend(ds, split)
    assert other.blend_.rank_fit == "ndcg" and rec.blend_.rank_fit == "softmax"
    t = split.test[1]
    items = np.arange(ds.n_items)
    got = other.rank_scores(t.user_idx, t.support, items)
    # the blended score is w · (meta logit, EASE, popularity) with the searched weights
    logit = other._scores(other.rank_, [(t.user_idx, t.support)], items)[0]
    hist = other._history(t.user_idx, t.support)
    x = other.blend_.closed.rank_inputs(other.blend_.rank_inputs, [hist], items)[0]
    w = other.blend_.rank_weights
    np.testing.assert_allclose(got, logit * w[0] + x @ w[1:], rtol=1e-6, atol=1e-9)
    back = MetaRecommender.from_state(*other.state(), split.train)
    assert back.blend_.rank_fit == "ndcg"
    np.testing.assert_array_equal(back.rank_scores(t.user_idx, t.support, items), got)


def test_short_histories_get_their_own_rank_weights(fitted):
    # the default blend has a second weight vector for histories of one item, fitted on
    # the validation supports cut to one item; a copy with one weight set for everyone
    ds, split, _, other = fitted
    assert other.config.blend.rank_short_history == 1
    single = MetaRecommender.from_state(*other.state(), split.train)
    single.config = dataclasses.replace(
        single.config, blend=dataclasses.replace(other.config.blend, rank_short_history=0)
    )
    single.blend_ = single._fit_blend(ds, split)
    b = other.blend_
    assert b.short_history == 1 and single.blend_.rank_weights_short is None
    assert single.blend_.short_history == 0
    # the long-history weights are exactly the one-set blend's
    np.testing.assert_array_equal(b.rank_weights, single.blend_.rank_weights)
    assert not np.allclose(b.rank_weights_short, b.rank_weights)
    # and the short ones are the softmax fit on the cut validation tasks, replayed by hand:
    # the support's first item, the query what followed it (blend.rank_short_requery)
    assert other.config.blend.rank_short_requery
    cut = [
        Task(
            t.user_idx,
            t.support.take(np.arange(1)),
            Interactions.concat([t.support.take(np.arange(1, len(t.support))), t.query]).take(
                np.arange(len(t.query))
            ),
        )
        for t in split.valid
        if len(t.support) > 1
    ]
    pairs = [(t.user_idx, other._history_without_query(t)) for t in cut]
    items = np.arange(ds.n_items)
    w_short, _ = other._fit_rank_blend(b.closed, b.rank_inputs, cut, pairs, items)
    np.testing.assert_allclose(b.rank_weights_short, w_short, rtol=1e-9)
    t = split.test[3]
    for support, w in ((t.support, b.rank_weights), (t.support.take(np.arange(1)), w_short)):
        got = other.rank_scores(t.user_idx, support, items)
        logit = other._scores(other.rank_, [(t.user_idx, support)], items)[0]
        hist = other._history(t.user_idx, support)
        x = np.column_stack([logit, b.closed.rank_inputs(b.rank_inputs, [hist], items)[0]])
        np.testing.assert_allclose(got, x @ w, rtol=1e-6, atol=1e-9)
    # a batch mixing both kinds of user, serving's adapt-once path and a reload agree
    one = dataclasses.replace(t, support=t.support.take(np.arange(1)))
    batch = other.rank_scores_batch([t, one], items)
    # (float32 scoring batched two users at a time: equal to rounding)
    np.testing.assert_allclose(
        batch[1], other.rank_scores(t.user_idx, one.support, items), rtol=1e-5
    )
    adapted = other.adapt_user(t.user_idx, one.support, "rank")
    np.testing.assert_allclose(
        other.score_adapted(adapted, items), 1 / (1 + np.exp(-batch[1])), rtol=1e-5
    )
    back = MetaRecommender.from_state(*other.state(), split.train)
    assert back.blend_.short_history == 1
    np.testing.assert_array_equal(back.rank_scores_batch([t, one], items), batch)
    with pytest.raises(MetarecError, match="rank_short_history"):
        BlendConfig(rank_short_history=-1)


def test_one_item_rank_weights_can_keep_the_k_query(fitted):
    # blend.rank_short_requery = False (the default before 2026-12-05): the one-item
    # users keep the query of the split's K; the K weights are the same either way
    ds, split, _, rec = fitted
    other = MetaRecommender.from_state(*rec.state(), split.train)
    other.config = dataclasses.replace(
        other.config, blend=dataclasses.replace(rec.config.blend, rank_short_requery=False)
    )
    other.blend_ = b = other._fit_blend(ds, split)
    np.testing.assert_array_equal(b.rank_weights, rec.blend_.rank_weights)
    cut = [
        Task(t.user_idx, t.support.take(np.arange(1)), t.query)
        for t in split.valid
        if len(t.support) > 1
    ]
    pairs = [(t.user_idx, other._history_without_query(t)) for t in cut]
    w, _ = other._fit_rank_blend(b.closed, b.rank_inputs, cut, pairs, np.arange(ds.n_items))
    np.testing.assert_allclose(b.rank_weights_short, w, rtol=1e-9)
    assert not np.allclose(b.rank_weights_short, rec.blend_.rank_weights_short)


def _diverging_above(limit, monkeypatch):
    """Make model.train raise MetaLossDiverged for the rating model while its inner_lr is
    above ``limit`` (as a 2- or 3-item catalogue's one-row supports did at 0.05); records
    every (head, inner_lr) tried."""
    import metarec.model as M
    from metarec.train import MetaLossDiverged

    tried = []
    real = M.train

    def train(split, feats, sc, meta, tcfg, **kw):
        tried.append((sc.head, meta.inner_lr))
        if sc.head == "rating" and meta.inner_lr > limit:
            raise MetaLossDiverged("train: meta-loss is inf at step 1 (probe)", 1)
        return real(split, feats, sc, meta, tcfg, **kw)

    monkeypatch.setattr(M, "train", train)
    return tried


def test_fit_halves_a_diverging_inner_lr_and_keeps_it_in_the_run(fitted, monkeypatch):
    ds, split, feats, _ = fitted
    tried = _diverging_above(0.02, monkeypatch)
    cfg = _fast_config(blend=BlendConfig(rating=False, rank=False))
    with pytest.warns(UserWarning, match="not finite at training step 1 with meta.inner_lr 0.05"):
        rec = MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    # the rating model (MAML) halved twice, then all its members trained at that step;
    # the ranking model trained as configured
    m = cfg.rating_members
    assert tried == [("rating", 0.05), ("rating", 0.025)] + [("rating", 0.0125)] * m + [
        ("binary", 0.05)
    ]
    assert rec.rating_.learner.cfg.inner_lr == 0.0125
    assert rec.lowered_settings() == {"rating model meta.inner_lr": 0.0125}
    state, tensors = rec.state()
    assert state["parts"]["rating"]["meta"]["inner_lr"] == 0.0125
    assert state["model"]["meta"]["inner_lr"] == 0.05  # what was asked for, as asked
    back = MetaRecommender.from_state(state, tensors, split.train)
    assert back.rating_.learner.cfg.inner_lr == 0.0125


def test_fit_gives_up_after_the_last_halving_and_never_retries_a_neural_process(
    fitted, monkeypatch
):
    import metarec.model as M
    from metarec.train import MetaLossDiverged

    ds, split, feats, _ = fitted
    tried = _diverging_above(0.0, monkeypatch)
    cfg = _fast_config(rank_model=False)
    with pytest.warns(UserWarning), pytest.raises(MetaLossDiverged):
        MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    assert len(tried) == M.INNER_LR_BACKOFFS + 1
    tried.clear()
    # a neural process has no inner step to lower: its error stands at once
    np_cfg = _fast_config(rank_model=False, meta=MetaConfig(algorithm="np"))
    with pytest.raises(MetaLossDiverged):
        MetaRecommender(np_cfg).fit(ds, split.train, feats, valid=split.valid)
    assert len(tried) == 1


def test_fits_own_validation_users_enter_the_blend_as_cold_users(fitted):
    # fit without validation tasks holds out its newest users, and indexes them for
    # serving with all their rows; the blend must see them as the cold users it is fitted
    # for (support only), not with every later row: then no history was ever one item
    # long, and the one-item weights were silently never fitted
    ds, _, feats, _ = fitted
    rec = MetaRecommender(_fast_config(k_shot=6, n_query=8)).fit(ds, ds.interactions, feats)
    split = rec._training_split(ds, ds.interactions, None)
    assert len(split.valid) >= rec.config.blend.min_valid_users
    b = rec.blend_
    assert b.short_history == 1 and b.rank_weights_short is not None
    rows = rec._rows_index(split.train)
    for t in split.valid[:5]:
        seen = rec._history_without_query(t, rows)
        np.testing.assert_array_equal(seen.item_idx, t.support.item_idx)
        # the rows fit indexed for serving hold the user's later rows too
        assert len(rec._history_without_query(t)) > len(t.support)


def test_held_out_validation_items_keep_the_k_query_for_one_item_weights():
    # user- and item-cold: a validation user's query is their first rows on held-out items
    # and what follows their first support item is warm rows the blend is not fitted over;
    # "the next interactions" there left no positive, and the one-item weights silently
    # went missing
    ds = _world(n_users=300)
    split = make_split(ds, "user-item-cold", k_shot=6, n_query=8, seed=0)
    rec = MetaRecommender(_fast_config()).fit(
        ds, split.train, valid=split.valid, valid_items=split.valid_cold_items
    )
    assert rec.config.blend.rank_short_requery
    b = rec.blend_
    assert b.short_history == 1 and b.rank_weights_short is not None


def test_a_requested_short_weight_set_that_cannot_be_fitted_is_named(fitted):
    # cuts no validation support is longer than get no weights of their own: said, not
    # silently dropped (the RUN stored rating_cuts [] for a requested [10])
    ds, split, _, rec = fitted
    other = MetaRecommender.from_state(*rec.state(), split.train)
    blend = dataclasses.replace(
        rec.config.blend, rating_short_histories=(1, 50), rank_short_history=50
    )
    other.config = dataclasses.replace(other.config, blend=blend)
    with pytest.warns(UserWarning) as got:
        b = other._fit_blend(ds, split)
    text = " ".join(str(w.message) for w in got)
    assert "histories of [50] items" in text and "rank_short_history=50" in text
    assert b.rating_cuts == (1,) and b.rank_weights_short is None


def test_requery_skips_repeats_and_the_cut_support(fitted):
    # with a repeated item (preprocess.dedupe off) the next interactions hold each item
    # once, and never the item the cut support already holds
    *_, rec = fitted
    rows = lambda items: Interactions(  # noqa: E731
        np.zeros(len(items), dtype=np.int64),
        np.array(items, dtype=np.int64),
        np.full(len(items), 4.0, dtype=np.float32),
        np.arange(len(items), dtype=np.int64),
        np.zeros(len(items), dtype=np.int16),
    )
    task = Task(0, rows([5, 7, 5, 8]), rows([9, 7, 11]))
    (cut,), _ = rec._short_tasks([task], 1, requery=True, rows=rec._rows_index(rows([])))
    np.testing.assert_array_equal(cut.support.item_idx, [5])
    np.testing.assert_array_equal(cut.query.item_idx, [7, 8, 9])


def test_short_histories_can_get_their_own_rating_weights(fitted):
    # blend.rating_short_histories = (1, 3): histories of 1 item, and of 2-3 items, are
    # rated with weights fitted on the validation supports cut to 1 and 3 items; longer
    # histories keep the split's K weights exactly
    ds, split, _, rec = fitted
    base = rec.config.blend
    assert base.rating_short_histories == ()  # an option, off by default
    for requery in (False, True):
        cfg = dataclasses.replace(base, rating_short_histories=(1, 3), rating_short_requery=requery)
        other = MetaRecommender.from_state(*rec.state(), split.train)
        other.config = dataclasses.replace(other.config, blend=cfg)
        other.blend_ = b = other._fit_blend(ds, split)
        assert b.rating_cuts == (1, 3) and b.rating_weights_short.shape == (2, 6)
        np.testing.assert_array_equal(b.rating_weights, rec.blend_.rating_weights)
        # each cut's weights are the one-set blend fitted on validation tasks cut by hand
        # (same query, or the interactions right after the cut), shrunk toward the prior
        # the K weights chose (not one each cut would choose: the RUN records one)
        assert b.rating_prior in ("item_mean_user_bias", "biased_mf", "item_knn_rating")
        plain = MetaRecommender.from_state(*rec.state(), split.train)
        plain.config = dataclasses.replace(
            plain.config, blend=dataclasses.replace(base, rating_prior=b.rating_prior)
        )
        for j, n in enumerate((1, 3)):
            cut = []
            for t in split.valid:
                if len(t.support) <= n:
                    continue
                query = t.query
                if requery:
                    rest = Interactions.concat(
                        [t.support.take(np.arange(n, len(t.support))), query]
                    )
                    query = rest.take(np.arange(len(t.query)))
                cut.append(Task(t.user_idx, t.support.take(np.arange(n)), query))
            one = plain._fit_blend(ds, dataclasses.replace(split, valid=tuple(cut)))
            np.testing.assert_allclose(b.rating_weights_short[j], one.rating_weights, rtol=1e-9)
        assert not np.allclose(b.rating_weights_short[0], b.rating_weights)
        # a test user's prediction uses the weights of the smallest cut >= their history
        t = split.test[2]
        for n, w in (
            (1, b.rating_weights_short[0]),
            (2, b.rating_weights_short[1]),
            (3, b.rating_weights_short[1]),
            (len(t.support), b.rating_weights),
        ):
            sup = t.support.take(np.arange(n))
            got = other.score(t.user_idx, sup, t.query.item_idx)
            meta = other._scores(other.rating_, [(t.user_idx, sup)], [t.query.item_idx])[0]
            like = other._scores(other.rank_, [(t.user_idx, sup)], [t.query.item_idx])[0]
            x = b.closed.rating_inputs(b.rating_inputs, sup.item_idx, sup.rating, t.query.item_idx)
            want = np.column_stack([meta, like, x]) @ w[:-1] + w[-1]
            lo, hi = ds.rating_range
            np.testing.assert_allclose(got, np.clip(want, lo, hi), rtol=1e-6, atol=1e-6)
        back = MetaRecommender.from_state(*other.state(), split.train)
        assert back.blend_.rating_cuts == (1, 3)
        cfg, tensors = other.blend_.state()
        with pytest.raises(KeyError, match="2 rating_cuts but 1 rows"):
            Blend.from_state(
                cfg, {**tensors, "rating_weights_short": tensors["rating_weights_short"][:1]}
            )
        with pytest.raises(KeyError, match="0 rating_cuts but 2 rows"):
            Blend.from_state({**cfg, "rating_cuts": []}, tensors)
        # a RUN is checked at load by scoring a one-item user, which reads only the first
        # cut's weights: every weight set and every cut value is checked directly
        bad = tensors["rating_weights_short"].clone()
        bad[1, 0] = float("nan")
        with pytest.raises(ValueError, match="rating_weights_short holds NaN"):
            Blend.from_state(cfg, {**tensors, "rating_weights_short": bad})
        inf = tensors["rating_weights"].clone()
        inf[0] = float("inf")
        with pytest.raises(ValueError, match="rating_weights holds NaN or inf"):
            Blend.from_state(cfg, {**tensors, "rating_weights": inf})
        for cuts in ([3, 1], [0, 3], [1.7, 3], [True, 3], "13"):
            with pytest.raises(ValueError, match="rating_cuts"):
                Blend.from_state({**cfg, "rating_cuts": cuts}, tensors)
        for short in (-5, 1.9, None):
            with pytest.raises(ValueError, match="short_history"):
                Blend.from_state({**cfg, "short_history": short}, tensors)
        sup = t.support.take(np.arange(2))
        np.testing.assert_array_equal(
            back.score(t.user_idx, sup, t.query.item_idx),
            other.score(t.user_idx, sup, t.query.item_idx),
        )
    for bad in ((0,), (3, 1), (2, 2)):
        with pytest.raises(MetarecError, match="rating_short_histories"):
            BlendConfig(rating_short_histories=bad)


def test_model_seed_seeds_meta_training(fitted):
    # seed 0 reproduces the fixture exactly (see the blend-off test); another seed trains
    # a different model (initialisation and task sampling follow model.seed)
    ds, split, feats, rec = fitted
    other = MetaRecommender(_fast_config(seed=1, rank_model=False))
    other.fit(ds, split.train, feats, valid=split.valid)
    differs = [not torch.equal(v, rec.rating_.params[k]) for k, v in other.rating_.params.items()]
    assert any(differs)


def test_history_is_in_time_order_after_load(fitted):
    # max_support keeps a history's end, so a warm user's training rows must come in time
    # order, from a fitted model and from one rebuilt from its saved state alike
    _, split, _, rec = fitted
    cfg, tensors = rec.state()
    back = MetaRecommender.from_state(cfg, tensors, split.train)
    train = split.train
    u = int(np.bincount(train.user_idx).argmax())
    rows = np.flatnonzero(train.user_idx == u)
    want = train.item_idx[rows[np.argsort(train.timestamp[rows], kind="stable")]]
    assert not np.array_equal(want, np.sort(want))  # time order is not item order here
    for model in (rec, back):
        items, _ = model._history(u, Interactions.empty())
        np.testing.assert_array_equal(items, want)


def test_history_order_item_age_keeps_the_newest_items_last():
    # items first rated (by anyone) at t = 30, 5, 20; user 0 rated them at t = 30, 40, 20.
    # Time order 2, 0, 1; item age (oldest item first) 1, 2, 0; index order 0, 1, 2.
    # max_support keeps a history's end: the latest interactions, or the newest items
    train = Interactions(
        np.array([1, 0, 0, 0]),
        np.array([1, 0, 1, 2]),
        np.array([4.0, 5.0, 2.0, 1.0]),
        np.array([5, 30, 40, 20]),
        np.zeros(4),
    )
    rating = {0: 5.0, 1: 2.0, 2: 1.0}
    for order, want in {"time": [2, 0, 1], "item_age": [1, 2, 0]}.items():
        rec = MetaRecommender(ModelConfig(history_order=order))
        rec.n_users_, rec.n_items_ = 2, 3
        rec._index_training_rows(train)
        items, ratings = rec._history(0, Interactions.empty())
        assert items.tolist() == want, order
        assert ratings.tolist() == [rating[i] for i in want]
    with pytest.raises(MetarecError, match="history_order"):
        ModelConfig(history_order="newest")


def test_blend_fit_sees_validation_users_as_scoring_does(fitted):
    """A validation user with training rows (item cold-start: warm users) is adapted on
    those rows + the support when scored, so the blend is fitted on the same history —
    minus the task's query items (a carved-out user's train rows hold the query)."""
    from metarec.types import Task

    _, split, _, rec = fitted
    u = int(split.train.user_idx[-1])
    rows = split.train.take(np.flatnonzero(split.train.user_idx == u))
    assert len(rows) >= 3
    query = rows.take(np.array([0]))  # one of the user's own training rows
    support = split.valid[0].support  # any support rows
    hist = rec._history_without_query(Task(u, support, query))
    want_items, _ = rec._history(u, support)
    want_items = want_items[want_items != query.item_idx[0]]
    np.testing.assert_array_equal(hist.item_idx, want_items)
    assert query.item_idx[0] not in hist.item_idx
    # the support comes last, in order: "latest max_support" keeps it
    np.testing.assert_array_equal(hist.item_idx[-len(support) :], support.item_idx)
    assert (np.diff(hist.timestamp) > 0).all()


def test_als_rank_input_is_skipped_with_a_warning_without_implicit(world, monkeypatch):
    import importlib.util

    ds, split = world
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "implicit" else find(name, *a)
    )
    cfg = BlendConfig(rank_inputs=("popularity", "als"))
    with pytest.warns(UserWarning, match="metarec\\[baselines\\]"):
        closed = ClosedForm.fit(ds, split.train, cfg, like=3.0, seed=0)
    assert closed.als_factors is None
    assert "als_factors" not in closed.state()[1]


def test_item_cold_blend_ranks_the_validation_items_with_the_cold_inputs(fitted, monkeypatch):
    """``fit(valid_items=...)``: the ranking blend is fitted over those items only (those
    a validation user is ranked over in item cold-start) with ``cold_rank_inputs``; on
    held-out items EASE and popularity are 0, the content input is not."""
    import metarec.model as M

    ds, split, feats, _ = fitted
    cold = np.arange(34, 40)  # never rated in the world
    seen: list[tuple[int, ...]] = []
    real = M.fit_rank_blend

    def spy(x, pos, excl, *a, **k):
        seen.append(x.shape)
        return real(x, pos, excl, *a, **k)

    monkeypatch.setattr(M, "fit_rank_blend", spy)
    # validation queries on the cold items: each task's first 6 query rows re-pointed there
    valid = tuple(
        Task(t.user_idx, t.support, dataclasses.replace(t.query.take(np.arange(6)), item_idx=cold))
        for t in split.valid
    )
    cfg = _fast_config(blend=BlendConfig(rank_short_history=0, cold_rank_inputs=("content",)))
    rec = MetaRecommender(cfg).fit(ds, split.train, feats, valid=valid, valid_items=cold)
    assert rec.blend_ is not None and rec.blend_.rank_inputs == ("content",)
    assert seen and seen[0][1] == len(cold)  # (users, the cold items, meta + content)
    assert seen[0][2] == 2
    # the default cold_rank_inputs () keeps the usual inputs, still fitted over those items
    seen.clear()
    plain = _fast_config(blend=BlendConfig(rank_short_history=0))
    rec = MetaRecommender(plain).fit(ds, split.train, feats, valid=valid, valid_items=cold)
    assert rec.blend_ is not None and rec.blend_.rank_inputs == ("ease", "popularity")
    assert seen and seen[0][1] == len(cold)
    # ("side",) on a catalogue without numeric columns: no cold input, so the held-out
    # items are ranked by the meta logit alone (no ranking fit at all)
    seen.clear()
    side = _fast_config(blend=BlendConfig(rank_short_history=0, cold_rank_inputs=("side",)))
    rec = MetaRecommender(side).fit(ds, split.train, feats, valid=valid, valid_items=cold)
    assert rec.blend_ is not None and rec.blend_.rank_inputs == ()
    assert rec.blend_.rank_weights is None and not seen
    # without valid_items: the whole catalogue, the usual inputs
    seen.clear()
    rec = MetaRecommender(cfg).fit(ds, split.train, feats, valid=valid)
    assert rec.blend_ is not None and rec.blend_.rank_inputs == ("ease", "popularity")
    assert seen and seen[0][1] == ds.n_items
    # an unknown item index is an error, not a silent fit
    with pytest.raises(MetarecError):
        MetaRecommender(cfg).fit(ds, split.train, feats, valid=valid, valid_items=np.array([99]))


def test_item_cold_side_blend_adds_the_numeric_columns_to_the_meta_logit(tmp_path):
    """With a numeric item column the cold inputs ("side",) are "side:<column>": a held-out
    item's ranking score is w0 · meta logit + w1 · its z-scored column value, the z-score
    taken over the training items as the model's own features take it."""
    from metarec.features import numeric_features

    ds = _world(numeric=True)
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    known = np.zeros(ds.n_items, bool)
    known[split.train.item_idx] = True
    feats = build_features(ds, HashingEncoder(dim=64), cache=tmp_path, fit_items=known)
    cold = np.arange(34, 40)
    valid = tuple(
        Task(t.user_idx, t.support, dataclasses.replace(t.query.take(np.arange(6)), item_idx=cold))
        for t in split.valid
    )
    cfg = _fast_config(blend=BlendConfig(rank_short_history=0, cold_rank_inputs=("side",)))
    rec = MetaRecommender(cfg).fit(ds, split.train, feats, valid=valid, valid_items=cold)
    blend = rec.blend_
    assert blend is not None and blend.rank_inputs == ("side:year",)
    assert blend.rank_weights is not None and blend.rank_weights.shape == (2,)
    z = numeric_features(ds.item_table, ds.n_items, np.flatnonzero(known))[0][:, 0]
    t = split.test[0]
    logits = np.stack(rec._scores(rec.rank_, [(t.user_idx, t.support)], cold))
    got = rec.rank_scores(t.user_idx, t.support, cold)
    w = blend.rank_weights
    np.testing.assert_allclose(got, w[0] * logits[0] + w[1] * z[cold], rtol=1e-6)


def test_catalogue_scoring_shares_the_item_side_only_when_no_task_adapts_it(fitted):
    """Scoring one item list for T tasks passes (1, N) item inputs when no item-side
    parameter is per task (the NP ranking model adapts only user_vec): the scores equal
    the (T, N) computation, and per-task item-side copies take the (T, N) path."""
    ds, split, _, rec = fitted
    pairs = [(t.user_idx, t.support) for t in split.test[:4]]
    items = np.arange(ds.n_items)
    part = rec.rank_
    scorer = part.learner.scorer
    fast, user_x = rec._adapt(part, pairs)
    assert scorer.item_side_shared(fast, part.params)
    q = torch.from_numpy(items).unsqueeze(0).expand(len(pairs), -1)  # (T, N)
    q_x, rows = scorer.item_inputs(rec.features_, q), scorer.item_rows(q, rec._known_t())
    want = part.learner.predict(fast, user_x, q_x, rows).numpy()
    got = np.stack(rec._predict(part, fast, user_x, items))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the same values as per-task copies: not shared, the (T, N) path, the same scores
    per_task = {
        k: (v.unsqueeze(0).expand(len(pairs), *v.shape).clone() if k == "mlp.0.w" else v)
        for k, v in fast.items()
    }
    assert not scorer.item_side_shared(per_task, part.params)
    got = np.stack(rec._predict(part, per_task, user_x, items))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_knn_stands_in_for_ease_on_a_large_catalogue(fitted):
    pytest.importorskip("implicit", reason="the baselines extra is not installed")
    ds, split, feats, _ = fitted
    small = BlendConfig(ease_max_items=5, als_factors=8, als_iterations=3)  # 34 liked items
    rec = MetaRecommender(_fast_config(blend=small)).fit(ds, split.train, feats, valid=split.valid)
    assert rec.blend_ is not None and rec.blend_.rank_inputs == ("knn", "content")
    assert rec.blend_.closed.ease is None and rec.blend_.closed.als_factors is None
    assert rec.blend_.closed.content_rows is not None
    assert rec.blend_.rank_weights is not None and len(rec.blend_.rank_weights) == 3
    # ALS beside kNN
    both = dataclasses.replace(small, large_rank_inputs=("als", "knn"))
    rec = MetaRecommender(_fast_config(blend=both)).fit(ds, split.train, feats, valid=split.valid)
    assert rec.blend_ is not None and rec.blend_.rank_inputs == ("als", "knn")
    assert rec.blend_.rank_weights is not None and len(rec.blend_.rank_weights) == 3
    # the saved model ranks as the fitted one
    back = MetaRecommender.from_state(*rec.state(), split.train)
    t = split.test[0]
    np.testing.assert_allclose(
        back.rank_scores(t.user_idx, t.support, np.arange(ds.n_items)),
        rec.rank_scores(t.user_idx, t.support, np.arange(ds.n_items)),
    )
    # no stand-ins: rank_inputs without EASE, popularity alone
    off = dataclasses.replace(small, large_rank_inputs=())
    rec = MetaRecommender(_fast_config(blend=off)).fit(ds, split.train, feats, valid=split.valid)
    assert rec.blend_ is not None and rec.blend_.rank_inputs == ("popularity",)


def test_large_catalogues_fit_rank_weights_by_large_rank_fit(fitted):
    # the nDCG search where kNN + content stand in for EASE; rank_fit elsewhere
    ds, split, feats, rec = fitted
    assert rec.blend_ is not None and rec.blend_.closed.ease is not None
    assert rec.blend_.rank_fit == "softmax" and not rec.blend_.closed.large
    small = BlendConfig(ease_max_items=5)  # 34 liked training items: "large"
    big = MetaRecommender(_fast_config(blend=small)).fit(ds, split.train, feats, valid=split.valid)
    assert big.blend_ is not None and big.blend_.closed.large
    assert big.blend_.rank_inputs == ("knn", "content") and big.blend_.rank_fit == "ndcg"
    # "" = rank_fit on large catalogues too; the refit changes only the fit used
    off = MetaRecommender.from_state(*big.state(), split.train)
    off.config = dataclasses.replace(
        big.config, blend=dataclasses.replace(small, large_rank_fit="")
    )
    off.blend_ = off._fit_blend(ds, split)
    assert off.blend_ is not None and off.blend_.rank_fit == "softmax"
    assert off.blend_.rank_inputs == big.blend_.rank_inputs
    # the saved model keeps the fit it used
    back = MetaRecommender.from_state(*big.state(), split.train)
    assert back.blend_ is not None and back.blend_.rank_fit == "ndcg"
    with pytest.raises(MetarecError, match="large_rank_fit"):
        BlendConfig(large_rank_fit="lambdamart")


def test_head_fit_sees_only_each_inputs_top_items():
    """rank_fit_head: the softmax fit runs over the union of every input's top-h items per
    user (excluded items never count); the same as fitting with everything else excluded."""
    x, pos, excl = _rank_world()
    h = 6
    near = np.zeros_like(excl)
    for u in range(x.shape[0]):
        for c in range(x.shape[2]):
            cand = np.flatnonzero(~excl[u])
            near[u, cand[np.argsort(-x[u, cand, c])[:h]]] = True
    assert near.sum(1).max() <= 3 * h and not (near & excl).any()
    want = fit_rank_weights(x, pos & near, excl | ~near, 1e-2)
    got, kind = fit_rank_blend(x, pos, excl, 1e-2, "softmax", head=h)
    assert kind == "softmax"
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # head 0 or at least the catalogue: the plain fit
    plain = fit_rank_weights(x, pos, excl, 1e-2)
    np.testing.assert_array_equal(fit_rank_blend(x, pos, excl, 1e-2, head=0)[0], plain)
    np.testing.assert_array_equal(fit_rank_blend(x, pos, excl, 1e-2, head=x.shape[1])[0], plain)
    with pytest.raises(MetarecError, match="rank_fit_head"):
        BlendConfig(rank_fit_head=-1)


def test_held_out_validation_items_train_the_ranking_model_with_cold_id_dropout(
    fitted, monkeypatch
):
    """With ``valid_items`` (item cold-start) the ranking model trains with
    ``cold_rank_id_dropout``; without, with ``rank_id_dropout``; the rating model keeps
    ``train.id_dropout`` either way, and None falls back to ``rank_id_dropout``."""
    import metarec.model as M

    ds, split, feats, _ = fitted
    drops: list[tuple[str, float]] = []
    real = M.train

    def spy(split_, feats_, sc, meta, tcfg, **kw):
        drops.append((sc.head, tcfg.id_dropout))
        return real(split_, feats_, sc, meta, tcfg, **kw)

    monkeypatch.setattr(M, "train", spy)
    cold = np.arange(34, 40)
    valid = tuple(
        Task(t.user_idx, t.support, dataclasses.replace(t.query.take(np.arange(6)), item_idx=cold))
        for t in split.valid
    )
    cfg = _fast_config(rank_id_dropout=0.5, cold_rank_id_dropout=0.9)
    MetaRecommender(cfg).fit(ds, split.train, feats, valid=valid, valid_items=cold)
    MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    MetaRecommender(dataclasses.replace(cfg, cold_rank_id_dropout=None)).fit(
        ds, split.train, feats, valid=valid, valid_items=cold
    )
    # the rating model is model.rating_members models, each trained in turn
    rating = [("rating", cfg.train.id_dropout)] * cfg.rating_members
    assert drops == [*rating, ("binary", 0.9), *rating, ("binary", 0.5), *rating, ("binary", 0.5)]
    with pytest.raises(MetarecError, match="cold_rank_id_dropout"):
        _fast_config(cold_rank_id_dropout=1.0)


def test_an_item_only_held_out_validation_users_rated_is_served_as_unknown(tmp_path):
    """fit without validation tasks carves the newest users out of train for early
    stopping; an item only they rated never reaches meta-training, so its ID row is
    untrained: it is scored through the trained unknown row, as training scored it."""
    ds = _world()
    inter = ds.interactions
    newest = int(inter.user_idx[np.argmax(inter.timestamp)])
    # item 35 (never rated in the world) rated once, by the newest user
    extra = Interactions(
        np.array([newest]),
        np.array([35]),
        np.array([5.0], np.float32),
        np.array([inter.timestamp.max() + 1]),
        np.zeros(1, np.int16),
    )
    ds = dataclasses.replace(ds, interactions=Interactions.concat([inter, extra]))
    feats = build_features(ds, HashingEncoder(dim=64), cache=tmp_path / "emb")
    rec = MetaRecommender(_fast_config()).fit(ds, ds.interactions, feats)
    assert not rec.known_items_[35]
    held = rec._training_split(ds, ds.interactions, None)
    assert newest not in set(held.train.user_idx.tolist())
    np.testing.assert_array_equal(
        rec.known_items_, np.isin(np.arange(ds.n_items), held.train.item_idx)
    )
    # item 35 scores exactly as a never-rated item with the same features would: the
    # unknown row, not its own untrained one
    rows = rec.rank_.learner.scorer.item_rows(torch.tensor([35, 36]), rec._known_t())
    assert rows.tolist() == [ds.n_items, ds.n_items]


def test_refit_trains_again_on_every_row_for_the_validated_steps(tmp_path):
    """``model.refit``: fit's own held-out rows (here the newest items) reach meta-training
    and the closed-form models in a second pass of the validated length; the item
    cold-start settings validation resolved are kept; with validation tasks given it is
    an error (evaluate would train the meta-model on rows the baselines never see)."""
    ds = _world()
    feats = build_features(ds, HashingEncoder(dim=64), cache=tmp_path / "emb")
    first = MetaRecommender(_fast_config(valid_holdout="new_items")).fit(ds, ds.interactions, feats)
    import metarec.model as model_module

    calls = []
    real_train = model_module.train

    def spy(split, feats, sc, meta, tcfg, **kw):
        calls.append((sc.head, len(split.train), len(split.valid), tcfg.steps, tcfg.episodes))
        return real_train(split, feats, sc, meta, tcfg, **kw)

    with pytest.MonkeyPatch().context() as m:
        m.setattr(model_module, "train", spy)
        rec = MetaRecommender(_fast_config(valid_holdout="new_items", refit=True)).fit(
            ds, ds.interactions, feats
        )
    # pass 1 on the carved rows with validation, then pass 2 on every row without it, for
    # the validated steps, with the newest-items tasks validation resolved "auto" to
    # (each rating pass trains model.rating_members models, alike but for their seeds)
    m = _fast_config().rating_members
    assert [c[0] for c in calls] == ["rating"] * m + ["binary"] + ["rating"] * m + ["binary"]
    (h1, n1, v1, s1, _), (h2, n2, v2, _, _) = calls[m - 1 : m + 1]
    (h3, n3, v3, s3, e3), (h4, n4, v4, s4, e4) = calls[2 * m : 2 * m + 2]
    assert v1 and v2 and not v3 and not v4 and n3 == len(ds.interactions) > n1
    assert s1 == _fast_config().train.steps
    # each member for the steps its own validation chose (an ensemble's members stop at
    # their own steps; they all took member 0's before)
    assert len(first.rating_.member_steps) == m and first.rating_.member_steps[0] == (
        first.rating_.result.best_step
    )
    assert tuple(c[3] for c in calls[m + 1 : 2 * m + 1]) == first.rating_.member_steps
    assert (s4,) == first.rank_.member_steps == (first.rank_.result.best_step,)
    assert e3 == e4 == "newest_items"
    held = rec._training_split(ds, ds.interactions, None).valid_cold_items
    assert len(held) and not first.known_items_[held].any()
    # every rated item now has a trained ID row; unrated ones still have none
    rated = np.zeros(ds.n_items, bool)
    rated[ds.interactions.item_idx] = True
    assert np.array_equal(rec.known_items_, rated)
    for key in ("rating_", "rank_"):
        a, b = getattr(first, key), getattr(rec, key)
        # the part keeps the validated run's result (it chose the refit's length)
        assert b.result.best_step == a.result.best_step and b.result.best_valid is not None
        assert b.member_steps == a.member_steps and b.member_valid == a.member_valid
        assert b.new_items == a.new_items
        assert any(not torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert rec.rank_.new_items  # cold_rank_id_dropout, kept by the refit
    # closed-form models on every row: the held-out items have a popularity now
    assert (first.blend_.closed.log_pop[held] == 0).all()
    assert (rec.blend_.closed.log_pop[held] > 0).all()
    # the blend weights are the ones validation fitted
    np.testing.assert_array_equal(rec.blend_.rank_weights, first.blend_.rank_weights)
    np.testing.assert_array_equal(rec.blend_.rating_weights, first.blend_.rating_weights)
    t = rec._training_split(ds, ds.interactions, None).valid[0]
    assert np.isfinite(rec.rank_scores(t.user_idx, t.support, np.arange(ds.n_items))).all()
    # a saved refit model scores as the fitted one
    loaded = MetaRecommender.from_state(*rec.state(), ds.interactions)
    np.testing.assert_allclose(
        loaded.score(t.user_idx, t.support, t.query.item_idx),
        rec.score(t.user_idx, t.support, t.query.item_idx),
    )
    split = make_split(ds, "user-cold", k_shot=5, n_query=5, seed=0)
    with pytest.raises(MetarecError, match="refit"):
        MetaRecommender(_fast_config(refit=True)).fit(ds, split.train, feats, valid=split.valid)


def test_fit_fits_the_features_without_the_items_it_holds_out_as_new(tmp_path, monkeypatch):
    # fit built its features (PCA, side statistics) with every item of train, the items it
    # then held out as new included: changing one held-out item's text moved every row
    ds = _world()
    rec = MetaRecommender(_fast_config(valid_holdout="new_items"))
    held = rec._training_split(ds, ds.interactions, None).valid_cold_items
    assert len(held)
    seen = []

    def spy(dataset, fit_items, fit_users):
        seen.append((np.asarray(fit_items).copy(), np.asarray(fit_users).copy()))
        return build_features(
            dataset,
            HashingEncoder(dim=64),
            cache=tmp_path / "emb",
            fit_items=fit_items,
            fit_users=fit_users,
        )

    monkeypatch.setattr(rec, "build_features", spy)
    rec.fit(ds, ds.interactions)
    ((fit_items, fit_users),) = seen
    assert not fit_items[held].any()
    rated = np.zeros(ds.n_items, dtype=bool)
    rated[ds.interactions.item_idx] = True
    rated[held] = False
    assert np.array_equal(fit_items, rated)
    # the user side statistics: the users with training rows (probe 153)
    users = np.zeros(ds.n_users, dtype=bool)
    users[ds.interactions.user_idx] = True
    assert np.array_equal(fit_users, users)


def test_valid_holdout_new_items_validates_on_the_newest_items(tmp_path):
    """``valid_holdout = "new_items"``: fit without validation tasks holds out the newest
    items (by first interaction) instead of the newest users, so the item cold-start
    settings apply and those items are served as new items."""
    from metarec.train import validates_new_items

    ds = _world()
    feats = build_features(ds, HashingEncoder(dim=64), cache=tmp_path / "emb")
    cfg = _fast_config(valid_holdout="new_items")
    rec = MetaRecommender(cfg)
    split = rec._training_split(ds, ds.interactions, None)
    held = split.valid_cold_items
    assert len(held) and validates_new_items(split) and not split.test
    # the newest items by first interaction, none of their rows left in meta-training
    first = ds.interactions.item_first_time(ds.n_items)
    rated = np.unique(ds.interactions.item_idx)
    newest = rated[np.argsort(first[rated], kind="stable")][-len(held) :]
    assert set(held.tolist()) == set(newest.tolist())
    assert not np.isin(split.train.item_idx, held).any()
    rec.fit(ds, ds.interactions, feats)
    assert not rec.known_items_[held].any() and rec.known_items_[split.train.item_idx].all()
    t = split.valid[0]
    s = rec.rank_scores(t.user_idx, t.support, np.arange(ds.n_items))
    assert np.isfinite(s).all()
    # the ranking model trained with the item cold-start settings, the RUN records it and
    # `metarec update` continues with them (cold_rank_id_dropout, not rank_id_dropout)
    assert rec.rank_.new_items and rec.rating_.new_items
    loaded = MetaRecommender.from_state(*rec.state(), ds.interactions)
    assert loaded.rank_.new_items and loaded.rating_.new_items
    import metarec.update as upd
    from metarec.predictor import Predictor

    seen = {}

    def spy(model, part, s_all, s_fb, tcfg, ucfg, device):
        seen[part.learner.scorer.cfg.head] = (tcfg.id_dropout, tcfg.episodes)
        return part.params, (0.0, 0.0)

    pred = Predictor(
        rec, ds.users, ds.items, np.full(ds.n_items, "default", dtype=object), ds.interactions, {}
    )
    fb = pd.DataFrame({"user_id": [ds.users.ids[0]], "item_id": [ds.items.ids[0]], "rating": [5.0]})
    monkey = pytest.MonkeyPatch()
    with monkey.context() as m:
        m.setattr(upd, "_continue", spy)
        pred2, _ = upd.update(pred, fb, upd.UpdateConfig(steps=1))
    # and with the newest-items training tasks "auto" resolved to for both parts
    assert seen == {
        "binary": (cfg.cold_rank_id_dropout, "newest_items"),
        "rating": (cfg.train.id_dropout, "newest_items"),
    }
    assert pred2.model.rank_.new_items
    # "users" (the default) holds out users, not items
    assert not len(
        MetaRecommender(_fast_config())._training_split(ds, ds.interactions, None).valid_cold_items
    )
    with pytest.raises(MetarecError, match="valid_holdout"):
        _fast_config(valid_holdout="items")


@pytest.mark.parametrize("scale, shift", [(20.0, 0.0), (1.0, -3.0), (2.5, -10.0)])
def test_any_rating_scale_trains_as_one_to_five(tmp_path, scale, shift):
    """Ratings on another scale (the same log mapped by r -> scale * r + shift: 20-100,
    -2..2, -7.5..2.5) train exactly as 1-5 stars do: the rating model sees
    (rating - rating_offset) / rating_unit, which is the 1-5 rating again, so its ratings
    come out mapped the same way and the ranking model (likes at the range's middle) is
    unchanged. Unscaled, MAML diverged at its first step on 20-100; unshifted, a scale
    with negative ratings gave the rating-weighted history profile NaN."""
    ds = _world()
    big = dataclasses.replace(
        ds,
        interactions=dataclasses.replace(
            ds.interactions, rating=(ds.interactions.rating * scale + shift).astype(np.float32)
        ),
        rating_range=(ds.rating_range[0] * scale + shift, ds.rating_range[1] * scale + shift),
    )
    feats = build_features(ds, HashingEncoder(dim=64), cache=tmp_path / "emb")
    split = make_split(ds, "user-cold", k_shot=5, n_query=5, seed=0)
    split_big = make_split(big, "user-cold", k_shot=5, n_query=5, seed=0)
    # the closed-form blend too (since biased MF's factor penalty and the rating stack
    # are set in stars of the scale; they were absolute)
    cfg = _fast_config(blend=BlendConfig(min_valid_users=2))
    small = MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    large = MetaRecommender(cfg).fit(big, split_big.train, feats, valid=split_big.valid)
    assert small.blend_ is not None and small.blend_.rating_weights is not None
    assert (small.rating_unit, small.rating_offset) == (1.0, 0.0)
    assert large.rating_unit == scale and large.rating_offset == pytest.approx(shift)
    t, tb = split.test[0], split_big.test[0]
    items = np.arange(ds.n_items)
    np.testing.assert_allclose(
        large.score(tb.user_idx, tb.support, items),
        scale * small.score(t.user_idx, t.support, items) + shift,
        rtol=1e-5,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        large.rank_scores(tb.user_idx, tb.support, items),
        small.rank_scores(t.user_idx, t.support, items),
        rtol=1e-5,
        atol=1e-6,
    )
    # serving's adapt-once path and a reloaded model agree
    adapted = large.adapt_user(tb.user_idx, tb.support, which="score")
    np.testing.assert_allclose(
        large.score_adapted(adapted, items), large.score(tb.user_idx, tb.support, items)
    )
    loaded = MetaRecommender.from_state(*large.state(), split_big.train)
    np.testing.assert_allclose(
        loaded.score(tb.user_idx, tb.support, items), large.score(tb.user_idx, tb.support, items)
    )


def test_a_run_saved_before_the_rating_offset_scales_without_shifting(tmp_path):
    """RUN state without "rating_offset" (written when ratings were only divided by the
    unit) loads with offset 0, so such a RUN predicts as it did when it was fitted."""
    ds = _world()
    feats = build_features(ds, HashingEncoder(dim=64), cache=tmp_path / "emb")
    split = make_split(ds, "user-cold", k_shot=5, n_query=5, seed=0)
    cfg = _fast_config(blend=BlendConfig(rating=False, rank=False))
    rec = MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    state, tensors = rec.state()
    assert state["rating_offset"] == 0.0
    old = {k: v for k, v in state.items() if k != "rating_offset"}
    assert MetaRecommender.from_state(old, tensors, split.train).rating_offset == 0.0
    # an old RUN fitted on 0-4 keeps offset 0 (its model trained on r / 1), where a fit
    # today would use -1 (0 stars trains as 1)
    old_04 = {**old, "rating_range": [0.0, 4.0]}
    assert MetaRecommender.from_state(old_04, tensors, split.train).rating_offset == 0.0


def test_the_python_api_refuses_what_it_cannot_score(fitted):
    """Wrong input through the API is one clear MetarecError, never NaN scores, a
    truncated index or a repeated recommendation."""
    ds, split, _, rec = fitted
    t = split.test[0]
    items = np.arange(5)

    def support(r):
        return Interactions(
            np.array([t.user_idx]),
            np.array([1]),
            np.array([r], np.float32),
            np.zeros(1, np.int64),
            np.zeros(1, np.int16),
        )

    for bad in (99.0, -3.0, float("nan")):  # used to give all-NaN scores
        with pytest.raises(MetarecError, match="support rating"):
            rec.score(t.user_idx, support(bad), items)
    lo, hi = rec.rating_range_
    assert np.isfinite(rec.score(t.user_idx, support(hi), items)).all()
    with pytest.raises(MetarecError, match="must be integers"):
        rec.score(t.user_idx, t.support, np.array([0.7, 1.2]))  # not items 0 and 1
    with pytest.raises(MetarecError, match="1-D"):
        rec.score(t.user_idx, t.support, np.array([[0, 1]]))
    for user in (-1, ds.n_users + 1, 10**6):
        with pytest.raises(MetarecError, match="user_idx"):
            rec.score(user, t.support, items)
    assert np.isfinite(rec.score(ds.n_users, t.support, items)).all()  # the cold row
    top, _ = rec.recommend(t.user_idx, t.support, k=3, candidates=np.array([5, 5, 5, 6]))
    assert sorted(top.tolist()) == [5, 6]
    for k in (2.5, 0, True):
        with pytest.raises(MetarecError, match="k must be an integer"):
            rec.recommend(t.user_idx, t.support, k=k)
    with pytest.raises(MetarecError, match="no interactions"):
        MetaRecommender(_fast_config()).fit(ds, Interactions.empty())


# --- the Python API's contract (probe 19) ------------------------------------------------------


def test_a_second_fit_starts_clean(fitted):
    # refitted on implicit data, the object kept the explicit fit's rating model: score()
    # used it and state() saved it beside the new ranking model
    ds, split, feats, rec = fitted
    implicit = dataclasses.replace(ds, feedback="implicit", rating_range=(0.0, 1.0))

    def likes(inter: Interactions) -> Interactions:
        keep = inter.rating >= 4
        return Interactions(
            inter.user_idx[keep],
            inter.item_idx[keep],
            np.ones(int(keep.sum()), np.float32),
            inter.timestamp[keep],
            inter.domain[keep],
        )

    again = MetaRecommender(_fast_config())
    again.fit(ds, split.train, feats, valid=split.valid)
    assert again.rating_ is not None
    train = likes(split.train)
    again.fit(implicit, train, feats)
    fresh = MetaRecommender(again.config).fit(implicit, train, feats)
    assert again.rating_ is None and set(again.state()[0]["parts"]) == {"rank"}
    t = split.test[0]
    np.testing.assert_allclose(
        again.score(t.user_idx, t.support, t.query.item_idx),
        fresh.score(t.user_idx, t.support, t.query.item_idx),
        rtol=1e-6,
    )


def test_keyword_overrides_merge_into_the_configs_tables():
    # MetaRecommender(cfg, train={"steps": 5}) replaced the whole table: ema and
    # eval_every fell to TrainConfig's class defaults, text={"pca_dim": 8} reset
    # text.model, rank_meta={"inner_steps": 2} switched the ranking model from NP to MAML
    base = ModelConfig.from_dict({"text": {"model": "hashing:32"}})
    rec = MetaRecommender(
        base, text={"pca_dim": 8}, train={"steps": 5}, rank_meta={"inner_steps": 2}
    )
    c = rec.config
    assert (c.text.model, c.text.pca_dim) == ("hashing:32", 8)
    assert (c.train.steps, c.train.ema, c.train.eval_every) == (5, base.train.ema, 50)
    assert (c.rank_meta.algorithm, c.rank_meta.inner_steps) == ("np", 2)
    # a table where a config belongs is one line, not an AttributeError inside fit
    with pytest.raises(MetarecError, match="ModelConfig.train: expected a TrainConfig"):
        ModelConfig(train={"steps": 3})
    with pytest.raises(MetarecError, match="config must be a ModelConfig, got dict"):
        MetaRecommender({"seed": 1})
    from metarec.model import TextConfig

    with pytest.raises(MetarecError, match="TextConfig.model: expected a string"):
        TextConfig(model=None)


def test_hand_built_feature_sets_are_float32_and_checked(world):
    # float64 features failed inside torch ("Input dtypes must be the same"); numpy
    # arrays in torch.zeros; a user_side of the wrong length was accepted
    from metarec.features import FeatureSet

    ds, split = world
    known = np.zeros(ds.n_items, bool)
    known[split.train.item_idx] = True
    f = build_features(ds, HashingEncoder(dim=16), fit_items=known)
    f64 = FeatureSet(f.item_text.double().numpy(), f.item_side.double(), f.user_side.double(), "x")
    assert all(t.dtype == torch.float32 for t in (f64.item_text, f64.item_side, f64.user_side))
    cfg = _fast_config(blend=dataclasses.replace(ModelConfig().blend, rating=False, rank=False))
    a = MetaRecommender(cfg).fit(ds, split.train, f64, valid=split.valid)
    b = MetaRecommender(cfg).fit(ds, split.train, f, valid=split.valid)
    t = split.test[0]
    np.testing.assert_allclose(
        a.score(t.user_idx, t.support, t.query.item_idx),
        b.score(t.user_idx, t.support, t.query.item_idx),
        rtol=1e-6,
    )
    short = FeatureSet(f.item_text, f.item_side, f.user_side[:-1], "x")
    with pytest.raises(MetarecError, match="the FeatureSet has .* users, the dataset"):
        MetaRecommender(cfg).fit(ds, split.train, short, valid=split.valid)
    with pytest.raises(MetarecError, match="item_text has .* rows but item_side"):
        FeatureSet(f.item_text[:-1], f.item_side, f.user_side)
    with pytest.raises(MetarecError, match="expected a 2-D"):
        FeatureSet(f.item_text[0], f.item_side, f.user_side)


def test_fit_leaves_the_global_random_stream_alone(world):
    # fit seeded torch's global generator (torch.manual_seed): a notebook's own draws
    # after a fit changed with the fit's seed. Nothing in training draws from it
    ds, split = world
    cfg = _fast_config(blend=dataclasses.replace(ModelConfig().blend, rating=False, rank=False))
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    a = MetaRecommender(cfg).fit(ds, split.train, valid=split.valid)
    assert torch.equal(torch.rand(3), want)
    torch.manual_seed(7)
    b = MetaRecommender(cfg).fit(ds, split.train, valid=split.valid)
    for k, v in a.rank_.params.items():
        assert torch.equal(v, b.rank_.params[k]), k


def test_update_meta_steps_run_torch_deterministic_kernels_on_cpu(fitted, monkeypatch):
    # fit ran them and update did not: a 2-thread update's RUN differed from the
    # 1-thread one (~6e-8); inside update's steps the setting is on, after it as found
    import metarec.update as upd
    from metarec.predictor import Predictor

    ds, _, _, rec = fitted
    seen = []
    real = upd.build_inputs

    def spy(*a, **k):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*a, **k)

    monkeypatch.setattr(upd, "build_inputs", spy)
    pred = Predictor(
        rec, ds.users, ds.items, np.full(ds.n_items, "default", dtype=object), ds.interactions, {}
    )
    fb = pd.DataFrame({"user_id": ["fresh"] * 3, "item_id": ds.items.ids[:3], "rating": 5.0})
    before = torch.are_deterministic_algorithms_enabled()
    upd.update(pred, fb, upd.UpdateConfig(steps=2, meta_batch=4))
    assert seen and all(seen) and torch.are_deterministic_algorithms_enabled() == before


def test_explain_is_leave_one_out_of_the_blended_ranking_score(fitted):
    # with a fitted blend the weights were the meta-model's logit alone: they did not
    # explain the blended score /recommend serves
    ds, split, _, rec = fitted
    assert rec.blend_ is not None and rec.blend_.rank_weights is not None
    t = split.test[1]
    _assert_explain_is_leave_one_out(rec, t.user_idx, t.support, np.arange(12))


def _assert_explain_is_leave_one_out(model, user, support, items, rows=None, atol=1e-5):
    """``model.explain``'s weight of each of ``rows`` (default every row) against the
    served score less the score re-requested without that row; returns the weights."""
    w = model.explain(user, support, items)
    full = model.rank_scores(user, support, items)
    n = len(support)
    for j in range(n) if rows is None else rows:
        loo = model.rank_scores(user, support.take(np.delete(np.arange(n), j)), items)
        np.testing.assert_allclose(w[:, j], full - loo, rtol=1e-4, atol=atol)
    return w


def test_explain_of_a_two_row_support_keeps_the_supports_blend_weights(fitted):
    """Left one row short, a two-row support fell to the one-item blend weights, another
    score scale: each weight measured that switch (-5.5 logits on a probe), not the row.
    The leave-one-outs now keep the whole support's weights."""
    ds, split, _, rec = fitted
    blend = rec.blend_
    assert blend is not None and blend.rank_weights_short is not None and blend.short_history == 1
    t = next(t for t in split.test if len(t.support) >= 2)
    two = t.support.take(np.arange(2))
    items = np.arange(12)
    w = rec.explain(t.user_idx, two, items)
    (fast, user_x) = rec._adapt(rec.rank_, [(t.user_idx, two), (t.user_idx, two.take([1]))])
    logits = np.stack(rec._predict(rec.rank_, fast, user_x, items))
    hists = [rec._history(t.user_idx, two), rec._history(t.user_idx, two.take([1]))]
    long = np.array([False])
    full = blend.rank(logits[0][None], [hists[0]], items, long)[0]
    loo = blend.rank(logits[1][None], [hists[1]], items, long)[0]
    np.testing.assert_allclose(w[:, 0], full - loo, rtol=1e-4, atol=1e-5)
    # not the request without the row, which takes the one-item weights
    served = rec.rank_scores(t.user_idx, two.take([1]), items)
    assert not np.allclose(w[:, 0], full - served, atol=1e-3)


def test_adaptation_negatives_avoid_the_whole_history_not_only_the_kept_rows(fitted):
    """A history longer than max_support adapts on its latest rows; the sampled negatives
    must still avoid every item the user rated (an older like is not a "no")."""
    _, split, _, rec = fitted
    train = split.train
    u = int(np.bincount(train.user_idx).argmax())
    history = set(train.item_idx[train.user_idx == u].tolist())
    assert len(history) > 4
    short = MetaRecommender.from_state(*rec.state(), train)
    short.config = dataclasses.replace(short.config, max_support=2)
    for model in (rec, short):
        (ep,) = model._episodes(model.rank_, [(u, Interactions.empty())])
        kept = min(len(history), model.config.max_support)
        negatives = ep.support_items[kept:]
        assert (ep.support_y[kept:] == 0).all() and len(negatives) > 0
        assert not history & set(negatives.tolist())


def test_explain_on_a_rating_run_uses_the_whole_supports_weights(tmp_path):
    """rank_model=false ranks by the blended rating; explain's leave-one-outs took the
    weights of their own length, so with short-history weight sets a four-row support's
    three-row leave-one-outs switched weight sets, and the weights measured the switch."""
    from metarec.blend import apply_rating_weights, rating_design

    ds = _world()
    feats = build_features(ds, HashingEncoder(dim=64), cache=tmp_path / "emb")
    split = make_split(ds, "user-cold", k_shot=5, n_query=5, seed=0)
    blend = BlendConfig(rank=False, rating_short_histories=(3,), min_valid_users=2)
    rec = MetaRecommender(_fast_config(rank_model=False, blend=blend))
    rec.fit(ds, split.train, feats, valid=split.valid)
    b = rec.blend_
    assert b is not None and b.rating_weights_short is not None and b.rating_cuts == (3,)
    cold, sup, items = ds.n_users, split.test[0].support.take(np.arange(4)), np.arange(ds.n_items)
    w = rec.explain(cold, sup, items, "rank")
    full = rec.rank_scores(cold, sup, items)
    for j in range(4):
        rest = sup.take(np.delete(np.arange(4), j))
        meta = rec._scores(rec.rating_, [(cold, rest)], [items])[0]
        x = b.closed.rating_inputs(b.rating_inputs, *rec._history(cold, rest), items)
        design = rating_design(meta, None, x, b.rating_inputs, b.rating_unit)
        # the leave-one-out rated with the four-row support's (long) weights
        np.testing.assert_allclose(
            w[:, j], full - apply_rating_weights(b.rating_weights, design), atol=1e-6
        )


def test_a_user_outside_the_user_table_gets_the_zero_side_row_not_user_0s(tmp_path):
    # mutation audit, probe 147: scoring a cold user (user_idx == n_users) with user 0's
    # side features survived; a user from a new file has no row of the users table, so
    # it gets the appended zero row, and user 0's age must not move its scores
    ds = _world(user_age=True)
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    known = np.zeros(ds.n_items, bool)
    known[split.train.item_idx] = True
    feats = build_features(ds, HashingEncoder(dim=64), cache=tmp_path / "emb", fit_items=known)
    assert feats.user_side.shape == (ds.n_users, 1) and feats.user_side[0, 0] == -1.0
    rec = MetaRecommender(_fast_config()).fit(ds, split.train, feats, valid=split.valid)
    side = rec.features_.user_side
    assert side.shape == (ds.n_users + 1, 1) and not side[ds.n_users].any()  # the zero row
    cold, sup, items = ds.n_users, split.test[0].support, np.arange(ds.n_items)

    def scores(user, support):
        return np.concatenate(
            [rec.score(user, support, items), rec.rank_scores(user, support, items)]
        )

    before_cold, before_0 = scores(cold, sup), scores(0, Interactions.empty())
    side[0, 0] = 3.0  # user 0 three standard deviations the other way
    # the row is read: user 0's own scores move
    assert not np.allclose(scores(0, Interactions.empty()), before_0, atol=1e-3)
    np.testing.assert_array_equal(scores(cold, sup), before_cold)


def test_fit_names_arguments_of_the_wrong_type(world):
    # AttributeErrors from deep inside ("'str' object has no attribute 'item_idx'")
    from metarec.predictor import Predictor

    ds, split = world
    with pytest.raises(MetarecError, match="train must be Interactions"):
        MetaRecommender().fit(ds, "x")
    with pytest.raises(MetarecError, match="expected a Dataset, got NoneType"):
        MetaRecommender().fit(None, split.train)
    with pytest.raises(MetarecError, match="Predictor.fit: expected a Dataset, got str"):
        Predictor.fit("x")


def test_unused_meta_settings_name_each_key_no_model_reads():
    from metarec.model import unused_meta_settings

    assert unused_meta_settings(ModelConfig(), explicit=True) == []
    assert unused_meta_settings(ModelConfig(), explicit=False) == []
    # the default ranking model is a neural process: no inner step
    cfg = ModelConfig(rank_meta=MetaConfig(algorithm="np", inner_lr=0.01, np_hidden=32))
    assert unused_meta_settings(cfg, explicit=True) == ["rank_meta.inner_lr ('np' does not use it)"]
    # MAML reads the step, not the ridge's λ
    cfg = ModelConfig(meta=MetaConfig(inner_lr=0.01, ridge_lambda=3.0))
    assert unused_meta_settings(cfg, explicit=True) == [
        "meta.ridge_lambda ('maml' does not use it)"
    ]
    # on implicit data only the ranking model trains: meta.* reaches nothing
    assert unused_meta_settings(cfg, explicit=False) == [
        "meta.* (on implicit data only the ranking model trains, with rank_meta.*)"
    ]
    # ... unless the ranking model shares it (rank_meta = None), then the rating-only
    # keys are judged by its algorithm: ridge_target is read by a binary ridge head
    shared = ModelConfig(meta=MetaConfig(algorithm="ridge", ridge_target=2.0), rank_meta=None)
    assert unused_meta_settings(shared, explicit=False) == []
    assert unused_meta_settings(shared, explicit=True) == []
    no_rank = ModelConfig(rank_model=False, meta=MetaConfig(algorithm="ridge", ridge_target=2.0))
    assert unused_meta_settings(no_rank, explicit=True) == [
        "meta.ridge_target ('ridge' does not use it)"
    ]
    off = ModelConfig(rank_model=False, rank_meta=MetaConfig(algorithm="maml"))
    assert unused_meta_settings(off, explicit=True) == [
        "rank_meta.* (model.rank_model = false: no ranking model trains)"
    ]


def test_fit_warns_about_meta_settings_with_no_effect_pooled_by_its_own_rules(fitted):
    from metarec.transfer import PooledRecommender

    ds, split, feats, _ = fitted
    cfg = _fast_config(
        rank_meta=MetaConfig(algorithm="np", inner_steps=2), blend=BlendConfig(rating=False)
    )
    with pytest.warns(UserWarning, match=r"no effect: rank_meta.inner_steps \('np' does not"):
        MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    # the pooled model rewrites its meta tables (0 inner steps, an SGD algorithm): it
    # names what it never reads by those rules, not by the meta-learner's (it said
    # nothing, and results.json recorded the settings as given)
    with pytest.warns(UserWarning, match=r"no effect: rank_meta.inner_steps \(it trains with 0"):
        PooledRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)


def test_the_pooled_refit_trains_the_pooled_model_again(fitted, monkeypatch):
    # the refit took the part's learner config, which for the pooled model holds its
    # fine-tuning steps: Pooled+FT's refit meta-trained with 5 inner steps instead
    import metarec.model as M
    from metarec.transfer import PooledRecommender

    ds, split, feats, _ = fitted
    seen = []
    real = M.train

    def train(split, feats, sc, meta, tcfg, **kw):
        seen.append((sc.head, meta.inner_steps))
        return real(split, feats, sc, meta, tcfg, **kw)

    monkeypatch.setattr(M, "train", train)
    cfg = _fast_config(refit=True, rating_members=1, blend=BlendConfig(rating=False, rank=False))
    PooledRecommender(cfg, finetune_steps=5).fit(ds, split.train, feats)
    assert seen == [("rating", 0), ("binary", 0), ("rating", 0), ("binary", 0)]


def test_the_warm_ranking_blend_leaves_each_users_training_items_out(world, monkeypatch):
    # evaluate and recommend leave a warm user's training history out of the ranking;
    # the blend's fit left out only the support, so the items each validation user had
    # rated were negatives there, and the weights were fitted on another ranking
    import metarec.model as M

    ds, _ = world
    split = make_split(ds, "warm", k_shot=4, n_query=6, seed=0)
    seen = {}
    real = M.fit_rank_blend

    def spy(x, pos, excl, *args, **kw):
        seen.setdefault("excl", excl)
        return real(x, pos, excl, *args, **kw)

    monkeypatch.setattr(M, "fit_rank_blend", spy)
    known = np.zeros(ds.n_items, bool)
    known[split.train.item_idx] = True
    feats = build_features(ds, HashingEncoder(dim=64), fit_items=known)
    cfg = _fast_config(rating_members=1, blend=BlendConfig(rating=False, min_valid_users=1))
    MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    excl = seen["excl"]
    task = split.valid[0]
    history = split.train.item_idx[split.train.user_idx == task.user_idx]
    assert len(history) > len(task.support)
    assert excl[0, history].all()  # the whole catalogue is ranked: columns are item indices
    assert not excl[0, task.query.item_idx].any()


def test_model_settings_no_model_reads_are_named():
    # rating_members = 5 on labels and rank_members = 3 with rank_model = false were
    # taken and silently did nothing, though the README says such keys are named
    from metarec.model import unused_model_settings

    cfg = ModelConfig(rating_members=5, blend=BlendConfig(rating_shrink=0.5))
    assert unused_model_settings(cfg, explicit=False) == [
        "rating_members (implicit data: no rating model)",
        "blend.rating_shrink (implicit data: no rating stack)",
    ]
    assert unused_model_settings(cfg, explicit=True) == []
    off = ModelConfig(rank_model=False, rank_members=3, rank_negatives=7)
    assert unused_model_settings(off, explicit=True) == [
        "rank_members (rank_model = false: no ranking model trains)",
        "rank_negatives (rank_model = false: no ranking model trains)",
    ]
    assert unused_model_settings(ModelConfig(), explicit=False) == []
    # fit keeps no training checkpoints: train.checkpoint_every was taken without a word
    from metarec.train import TrainConfig

    ck = ModelConfig(train=TrainConfig(checkpoint_every=2))
    assert unused_model_settings(ck, explicit=True) == [
        "train.checkpoint_every (fit writes no training checkpoints)"
    ]


@pytest.mark.parametrize(
    ("ratings", "hint"),
    [
        # half the rows at the bottom: a threshold at the median (1) would like every row;
        # of 2 (42% liked) and 3 (17%), 2 is nearer a half
        ([1.0] * 700 + [2.0] * 300 + [3.0] * 199 + [1000.0], 2),
        ([1.0] * 300 + [7.0] * 899 + [1000.0], 7),
        # no threshold leaves 1% liked and some disliked: no hint (it had repeated the
        # threshold, or named one with the same single like)
        ([1.0] * 1199 + [1000.0], None),
        ([1.0] * 1194 + [2.0] * 5 + [1000.0], None),
    ],
)
def test_a_tiny_share_of_likes_is_warned_about_with_a_threshold_that_helps(ratings, hint):
    from metarec.model import MIN_LIKED_SHARE

    rec = MetaRecommender(ModelConfig())
    rec.feedback_, rec.rating_range_ = "explicit", (1.0, 1000.0)
    ratings = np.array(ratings)
    with pytest.warns(UserWarning, match=r"is reached by 1 of 1200 training ratings") as got:
        rec._check_likes(ratings)
    said = str(got[0].message)
    if hint is None:
        assert "no threshold leaves 1% of them likes and some dislikes" in said
    else:
        assert (
            f"(fit: --set like_threshold={hint}; evaluate: --set model.like_threshold={hint})"
            in said
        )
        # the hint helps: likes and dislikes both, and the share no longer warned about
        assert MIN_LIKED_SHARE <= (ratings >= hint).mean() < 1.0
    rec.rating_range_ = (1.0, 5.0)  # the middle, 3, is reached by many: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec._check_likes(np.array([1.0, 3.0, 5.0] * 10))


def test_settings_the_split_leaves_without_effect_are_said(fitted):
    # probe 136: the item cold-start settings on a split whose validation tests no new
    # items, and age-matched negatives on time-ordered tasks, were taken without a word
    # and changed no weight; fit's summary called the negatives age-matched
    ds, split, feats, _ = fitted
    cfg = ModelConfig(
        cold_rank_members=2,
        cold_rank_id_dropout=0.1,
        train=TrainConfig(steps=20, eval_every=10, meta_batch=8, negatives="age_matched"),
        blend=BlendConfig(rating=False, rank=False),
        progress=False,
    )
    with pytest.warns(UserWarning, match="settings with no effect: cold_rank_members") as said:
        rec = MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    text = " ".join(str(w.message) for w in said)
    assert "cold_rank_id_dropout (the validation tasks test no new items" in text
    assert "train.negatives = 'age_matched' (it applies to 'newest_items'" in text
    assert rec.rank_.negatives == "catalogue" and rec.rank_.members == 1


def test_positive_threshold_is_named_as_a_setting_with_no_effect():
    # the ranking model trains on 0/1 likes: every allowed value splits them alike
    from metarec.model import unused_model_settings

    cfg = ModelConfig(train=TrainConfig(positive_threshold=0.9))
    assert any(
        s.startswith("train.positive_threshold (the ranking model trains on 0/1 likes")
        for s in unused_model_settings(cfg, explicit=True)
    )
    assert unused_model_settings(ModelConfig(), explicit=True) == []


def test_fit_fits_the_user_side_statistics_on_its_training_users(world, monkeypatch):
    """fit without a FeatureSet builds one with the user side statistics fitted on the
    users with training rows, as the item side ones are on the training items: on every
    user, the test users' ages moved the z-scores, and so training (probe 153)."""
    ds, split = world
    seen = []

    class Built(Exception):
        pass

    def spy(self, dataset, fit_items, fit_users=None):
        seen.append(fit_users)
        raise Built

    monkeypatch.setattr(MetaRecommender, "build_features", spy)
    with pytest.raises(Built):
        MetaRecommender(_fast_config()).fit(ds, split.train, valid=split.valid)
    (users,) = seen
    assert users is not None and users.shape == (ds.n_users,)
    assert set(np.flatnonzero(users).tolist()) == set(split.train.user_idx.tolist())
    assert not users[[t.user_idx for t in split.test]].any()


def test_a_rating_stack_that_falls_as_users_rate_higher_is_dropped(fitted, monkeypatch):
    """A stack fitted on validation users with no signal to find turned the meta-model's
    rating against itself: a user's 5 on an item predicted 1.84, their 1 3.42 (probe
    155). Where validation queries' blended ratings fall as every history rating goes
    from the scale's bottom to its top while the meta-model's rise, the stack is dropped
    with a warning (the ranking blend stays); a short-history stack gives way to the
    main weights. The fitted stack rises, and is kept."""
    ds, split, _, fitted_rec = fitted
    rec = MetaRecommender.from_state(*fitted_rec.state(), split.train)
    real = MetaRecommender._fit_rating_stack

    def against(self, closed, tasks, *a):
        w, prior = real(self, closed, tasks, *a)
        w = np.zeros_like(w)
        w[0], w[-1] = -1.0, 6.0  # 6 − the meta-model's rating: falls as it rises
        return w, prior

    monkeypatch.setattr(MetaRecommender, "_fit_rating_stack", against)
    said = r"stack fitted on \d+ validation users: its stack predicted lower ratings"
    with pytest.warns(UserWarning, match=said):
        blend = rec._fit_blend(ds, split)
    assert blend is not None and blend.rating_weights is None
    # recorded where evaluate's results and fit's summary say what was skipped
    from metarec.experiment import _blend_skipped

    assert _blend_skipped(rec).startswith("rating blend: its stack predicted lower ratings")
    assert blend.rating_weights_short is None and blend.rank_weights is not None
    # only the short histories' stacks fall: they give way, the main stack stays
    calls = []

    def shorts_against(self, closed, tasks, *a):
        calls.append(len(tasks))
        return (real if len(calls) == 1 else against)(self, closed, tasks, *a)

    monkeypatch.setattr(MetaRecommender, "_fit_rating_stack", shorts_against)
    b = dataclasses.replace(rec.config.blend, rating_short_histories=(1, 3))
    rec.config = dataclasses.replace(rec.config, blend=b)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        blend = rec._fit_blend(ds, split)
    assert blend.rating_weights is not None and len(calls) > 1
    assert blend.rating_weights_short is None
    assert any("predict lower ratings for users who rate higher" in str(w.message) for w in said)
    # the fitted stack: kept (no warning of it)
    monkeypatch.setattr(MetaRecommender, "_fit_rating_stack", real)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert rec._fit_blend(ds, split).rating_weights is not None
    assert not any("rate higher" in str(w.message) for w in said)


def test_explain_covers_every_row_of_a_support_longer_than_one_chunk(fitted):
    """explain adapts its leave-one-outs in chunks of 256 (a request may hold 1,000 rows):
    a row in a later chunk gets its own exact leave-one-out weight, as the first do."""
    ds, split, _, rec = fitted
    t = split.test[0]
    n = 300  # 301 adaptations: two chunks
    sup = Interactions(
        np.full(n, t.user_idx, np.int64),
        (np.arange(n) % ds.n_items).astype(np.int64),
        (1 + np.arange(n) % 5).astype(np.float32),
        np.arange(n, dtype=np.int64),
        np.zeros(n, np.int16),
    )
    items = np.arange(12)
    # either side of the chunks' edge
    w = _assert_explain_is_leave_one_out(rec, t.user_idx, sup, items, (0, 255, 256, n - 1), 1e-6)
    assert w.shape == (len(items), n)


def test_a_stack_is_judged_falling_only_where_the_meta_model_rises(fitted, monkeypatch):
    """_stack_falls_with_ratings drops a stack that turns the meta-model's rating against
    itself: the stack falls as every history rating goes from the scale's bottom to its
    top while the meta-model alone rises. A stack that falls with a falling meta-model
    follows it, and is kept; one that rises is kept whatever the meta-model does."""
    ds, split, _, rec = fitted
    rec = MetaRecommender.from_state(*rec.state(), split.train)
    tasks = list(split.valid[:5])
    pairs = [(t.user_idx, t.support) for t in tasks]
    for meta_sign, w_meta, drop in (
        (1, -1.0, True),
        (-1, 1.0, False),
        (-1, -1.0, False),
        (1, 1.0, False),
    ):

        def design(closed, flat, queries, rating_like, meta_sign=meta_sign):
            # the meta-model's rating: the history's mean rating, rising or falling with it
            meta = np.concatenate(
                [
                    np.full(len(q), meta_sign * float(h.rating.mean()))
                    for (_, h), q in zip(flat, queries, strict=True)
                ]
            )
            return np.stack([meta, np.ones_like(meta)], 1), meta[:, None]

        monkeypatch.setattr(rec, "_stack_design", design)
        w = np.array([w_meta, 0.0, 3.0])  # meta weight, the constant column's, intercept
        got = rec._stack_falls_with_ratings(None, tasks, pairs, w, False)
        assert (got is not None) == drop, (meta_sign, w_meta, got)
        if drop:
            lo, hi = rec.rating_range_
            assert got == pytest.approx((-(hi - lo), hi - lo))

    # judged over the validation users' queries together, not one user's: the first
    # user's meta-model rises, the four others' fall, and the mean falls
    def mixed(closed, flat, queries, rating_like):
        meta = np.concatenate(
            [
                np.full(len(q), (1 if u == tasks[0].user_idx else -1) * float(h.rating.mean()))
                for (u, h), q in zip(flat, queries, strict=True)
            ]
        )
        return np.stack([meta, np.ones_like(meta)], 1), meta[:, None]

    monkeypatch.setattr(rec, "_stack_design", mixed)
    w = np.array([-1.0, 0.0, 3.0])
    assert rec._stack_falls_with_ratings(None, tasks, pairs, w, False) is None


def test_explain_weighs_rows_older_than_max_support_too(fitted):
    """Rows older than max_support had weight 0, while the blend's closed-form inputs read
    the whole history and removing one moved the served score by up to 0.85 logits
    (probe 157): every row's weight is its exact leave-one-out."""
    ds, split, _, rec = fitted
    short = MetaRecommender.from_state(*rec.state(), split.train)
    short.config = dataclasses.replace(short.config, max_support=3)
    assert short.blend_ is not None and short.blend_.rank_weights is not None
    t = next(t for t in split.test if len(t.support) >= 6)
    w = _assert_explain_is_leave_one_out(short, t.user_idx, t.support, np.arange(12))
    assert np.abs(w[:, : len(t.support) - 3]).max() > 1e-3  # the old rows count
