"""Baselines: one contract test mixin (implicit's "checkerboard" idea) run over every
baseline, plus closed-form checks of the fold-ins and of EASE."""

from __future__ import annotations

import importlib.util
import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metarec.baselines import (
    BASELINES,
    EASE,
    BiasedMF,
    ImplicitALS,
    ItemKNN,
    ItemKNNRating,
    ItemMean,
    ItemMeanUserBias,
    LightFMRanker,
    Popularity,
    TextCosine,
    als_fold_in,
    make_baseline,
    popularity_counts,
    ridge_fold_in,
)
from metarec.features import FeatureSet
from metarec.types import Dataset, IdMap, Interactions, MetarecError, Task

N_ITEMS = 20  # items 0..9 are the A half, 10..19 the B half
N_A, N_B = 24, 16  # group A users 0..23, group B users 24..39; users 40, 41 are cold
COLD_A, COLD_B = 40, 41
A_ITEMS, B_ITEMS = np.arange(10), np.arange(10, 20)


def inter(users, items, ratings) -> Interactions:
    n = len(items)
    return Interactions(
        np.broadcast_to(np.asarray(users), (n,)), items, ratings, np.arange(n), np.zeros(n)
    )


def checkerboard() -> tuple[Dataset, Interactions, FeatureSet]:
    """Group A rates 8 of the A items 5 and 2 B items 1; group B likewise with 4s on B.

    A is larger and rates higher, so non-personalised models rank A items first too.
    """
    u, i, r = [], [], []
    for user in range(N_A + N_B):
        own, other, like = (A_ITEMS, B_ITEMS, 5.0) if user < N_A else (B_ITEMS, A_ITEMS, 4.0)
        liked = own[(np.arange(10) + user) % 5 != 0]  # 8 of 10, a different 8 per user
        disliked = other[[user % 10, (user + 3) % 10]]
        u += [user] * 10
        i += [*liked, *disliked]
        r += [like] * 8 + [1.0] * 2
    n = len(u)
    train = Interactions(np.array(u), np.array(i), np.array(r), np.arange(n), np.zeros(n))
    ds = Dataset(
        name="checkerboard",
        interactions=train,
        users=IdMap(np.array([f"u{k}" for k in range(N_A + N_B + 2)])),
        items=IdMap(np.array([f"i{k}" for k in range(N_ITEMS)])),
        feedback="explicit",
        rating_range=(1.0, 5.0),
        has_time=False,
    )
    # text: a group direction plus a little per-item detail, so items are not identical
    group = np.zeros((N_ITEMS, 2))
    group[A_ITEMS, 0] = 1.0
    group[B_ITEMS, 1] = 1.0
    detail = np.random.default_rng(0).normal(0, 0.1, (N_ITEMS, 3))
    text = torch.tensor(np.hstack([group, detail]), dtype=torch.float32)
    feats = FeatureSet(text, torch.zeros(N_ITEMS, 0), torch.zeros(N_A + N_B + 2, 0))
    return ds, train, feats


COLD_A_SUPPORT = inter(COLD_A, np.array([0, 1, 2, 15]), np.array([5.0, 5.0, 5.0, 1.0]))
COLD_B_SUPPORT = inter(COLD_B, np.array([10, 11, 12, 3]), np.array([4.0, 4.0, 4.0, 1.0]))


@pytest.fixture(scope="module")
def board():
    return checkerboard()


def _state(model) -> dict:
    """Copies of every array attribute, to check that scoring changes nothing."""
    return {k: np.array(v, copy=True) for k, v in vars(model).items() if isinstance(v, np.ndarray)}


class ContractTests:
    """Every baseline must pass these; subclasses supply make_model()."""

    def make_model(self):
        raise NotImplementedError

    @pytest.fixture
    def fitted(self, board):
        ds, train, feats = board
        return self.make_model().fit(ds, train, feats)

    def test_cold_user_of_group_a_gets_a_items(self, fitted):
        items, scores = fitted.recommend(COLD_A, COLD_A_SUPPORT, k=5)
        assert len(items) == 5
        assert set(items.tolist()) <= set(range(3, 10))  # A items, support excluded
        assert np.all(np.diff(scores) <= 0)  # best first

    def test_cold_user_of_group_b_gets_b_items(self, fitted):
        if not fitted.personalized:
            pytest.skip(f"{fitted.name} ranks the same for everyone")
        items, _ = fitted.recommend(COLD_B, COLD_B_SUPPORT, k=5)
        assert set(items.tolist()) <= set(range(13, 20))

    def test_rating_predictions_on_scale_and_ordered(self, fitted):
        if not fitted.predicts_ratings:
            pytest.skip(f"{fitted.name} only ranks")
        s = fitted.score(COLD_A, COLD_A_SUPPORT, np.arange(N_ITEMS))
        assert s.min() >= 1.0 and s.max() <= 5.0
        assert s[A_ITEMS].mean() > s[B_ITEMS].mean() + 1.0

    def test_batch_equals_single(self, fitted):
        tasks = [
            Task(COLD_A, COLD_A_SUPPORT, Interactions.empty()),
            Task(COLD_B, COLD_B_SUPPORT, Interactions.empty()),
            Task(3, Interactions.empty(), Interactions.empty()),  # a warm user, no support
        ]
        items = np.arange(N_ITEMS)
        batch = fitted.rank_scores_batch(tasks, items)
        single = np.stack([fitted.rank_scores(t.user_idx, t.support, items) for t in tasks])
        np.testing.assert_allclose(batch, single, rtol=1e-10, atol=1e-12)
        many = fitted.score_many(tasks, [items[:5], items[5:], items])
        np.testing.assert_allclose(many[1], fitted.score(COLD_B, COLD_B_SUPPORT, items[5:]))

    def test_fit_is_deterministic(self, board, fitted):
        ds, train, feats = board
        again = self.make_model().fit(ds, train, feats)
        items = np.arange(N_ITEMS)
        np.testing.assert_array_equal(
            fitted.score(COLD_A, COLD_A_SUPPORT, items), again.score(COLD_A, COLD_A_SUPPORT, items)
        )

    def test_score_leaves_model_unchanged(self, fitted):
        before = _state(fitted)
        first = fitted.score(COLD_A, COLD_A_SUPPORT, np.arange(N_ITEMS))
        fitted.score(COLD_B, COLD_B_SUPPORT, np.arange(N_ITEMS))
        fitted.recommend(COLD_B, COLD_B_SUPPORT, k=3)
        after = _state(fitted)
        assert before.keys() == after.keys()
        for k in before:
            np.testing.assert_array_equal(before[k], after[k], err_msg=k)
        np.testing.assert_array_equal(
            first, fitted.score(COLD_A, COLD_A_SUPPORT, np.arange(N_ITEMS))
        )

    def test_recommend_candidates_and_exclude(self, fitted):
        items, _ = fitted.recommend(
            COLD_A, COLD_A_SUPPORT, k=3, candidates=np.array([0, 4, 12, 17])
        )
        assert set(items.tolist()) <= {4, 12, 17}
        items, _ = fitted.recommend(
            COLD_A, COLD_A_SUPPORT, k=50, exclude=np.array([], dtype=np.int64)
        )
        assert sorted(items.tolist()) == list(range(N_ITEMS))
        # by default a warm user's training items are left out too, as `metarec recommend`
        # leaves them (the support alone was: 7 of 10 items already rated, review 160)
        train = fitted.train_rows_
        seen = set(train.item_idx[train.user_idx == 0].tolist())
        assert seen and len(seen) < N_ITEMS
        items, _ = fitted.recommend(0, Interactions.empty(), k=N_ITEMS)
        assert not seen & set(items.tolist())
        assert sorted(items.tolist()) == sorted(set(range(N_ITEMS)) - seen)
        # exclude is checked as candidates are: a bool mask or 1.5 was cast to indices
        for bad in (np.zeros(N_ITEMS, dtype=bool), np.array([1.5]), np.array([N_ITEMS])):
            with pytest.raises(MetarecError):
                fitted.recommend(COLD_A, COLD_A_SUPPORT, k=3, exclude=bad)

    def test_a_support_that_is_not_interactions_raises(self, fitted):
        # None or a list of (item, rating) pairs was an AttributeError from inside
        for bad in (None, [(1, 5.0)]):
            with pytest.raises(MetarecError, match="support must be an Interactions"):
                fitted.recommend(COLD_A, bad, k=3)

    def test_bad_item_index_raises(self, fitted):
        with pytest.raises(MetarecError):
            fitted.score(COLD_A, COLD_A_SUPPORT, np.array([N_ITEMS]))


class TestPopularity(ContractTests):
    def make_model(self):
        return Popularity()


class TestItemMean(ContractTests):
    def make_model(self):
        return ItemMean(shrinkage=2.0)


class TestItemMeanUserBias(ContractTests):
    def make_model(self):
        return ItemMeanUserBias(shrinkage=2.0, user_shrinkage=1.0)


class TestBiasedMF(ContractTests):
    def make_model(self):
        return BiasedMF(factors=4, reg=1.0, bias_reg=1.0, iterations=10, seed=3)


class TestItemKNNRating(ContractTests):
    def make_model(self):
        # every neighbour kept (20 items): with 5 per item on this board, group B's
        # strongest residual neighbours include A items, and B's top five held four
        return ItemKNNRating(shrinkage=2.0, user_shrinkage=1.0, sim_shrink=1.0)


class TestEASE(ContractTests):
    def make_model(self):
        return EASE(reg=5.0)


class TestItemKNN(ContractTests):
    def make_model(self):
        return ItemKNN(alpha=0.5)


class TestImplicitALS(ContractTests):
    def make_model(self):
        return ImplicitALS(factors=4, reg=0.1, alpha=5.0, iterations=10, seed=3)


@pytest.mark.skipif(importlib.util.find_spec("lightfm") is None, reason="lightfm not installed")
class TestLightFM(ContractTests):
    def make_model(self):
        return LightFMRanker(no_components=4, epochs=30, seed=3)


class TestTextCosine(ContractTests):
    def make_model(self):
        return TextCosine()


def test_every_registered_baseline_has_a_contract_test():
    tested = {cls.make_model(None).__class__ for cls in ContractTests.__subclasses__()}
    assert set(BASELINES.values()) == tested


# --- known answers ---------------------------------------------------------------------


def tiny() -> tuple[Dataset, Interactions]:
    # 3 users x 3 items: u0 rates i0=5, i1=3; u1 rates i0=4; u2 rates i2=1
    train = inter(0, np.array([0, 1]), np.array([5.0, 3.0]))
    train = Interactions.concat(
        [train, inter(1, np.array([0]), np.array([4.0])), inter(2, np.array([2]), np.array([1.0]))]
    )
    return _four_by_three("tiny", train, "explicit", (1.0, 5.0)), train


def _four_by_three(name: str, train: Interactions, feedback: str, scale) -> Dataset:
    """A Dataset of users a-d and items x-z holding ``train``."""
    users, items = IdMap(np.array(["a", "b", "c", "d"])), IdMap(np.array(["x", "y", "z"]))
    return Dataset(name, train, users, items, feedback, scale, False)


def test_popularity_counts():
    ds, train = tiny()
    np.testing.assert_array_equal(
        Popularity().fit(ds, train).score(3, Interactions.empty(), np.arange(3)), [2, 1, 1]
    )


def test_popularity_counts_only_likes_on_implicit_data():
    # a label 0 is an explicit "no": item 2, turned down by three users and liked by
    # none, was first in the popularity ranking when every row counted
    train = Interactions.concat(
        [
            inter(0, np.array([0, 2]), np.array([1.0, 0.0])),
            inter(1, np.array([1, 2]), np.array([1.0, 0.0])),
            inter(2, np.array([0, 2]), np.array([1.0, 0.0])),
        ]
    )
    ds = _four_by_three("implicit", train, "implicit", (0.0, 1.0))
    pop = Popularity().fit(ds, train).score(3, Interactions.empty(), np.arange(3))
    np.testing.assert_array_equal(pop, [2, 1, 0])
    np.testing.assert_array_equal(popularity_counts(ds, train), [2, 1, 0])
    # explicit data: a rating of any value is an interaction (the tiny set's 1-star row)
    ds_e, train_e = tiny()
    np.testing.assert_array_equal(popularity_counts(ds_e, train_e), [2, 1, 1])


def test_item_mean_and_user_bias_by_hand():
    ds, train = tiny()
    mu = 13 / 4  # 3.25
    m = ItemMean(shrinkage=1.0).fit(ds, train)
    # item 0: residuals 1.75 + 0.75 over (2 + 1)
    expected = [mu + 2.5 / 3, mu + (3 - mu) / 2, mu + (1 - mu) / 2]
    np.testing.assert_allclose(m.score(3, Interactions.empty(), np.arange(3)), expected)
    mb = ItemMeanUserBias(shrinkage=1.0, user_shrinkage=2.0).fit(ds, train)
    # cold user 3 rates item 0 with 2: b_u = (2 - expected[0]) / (1 + 2)
    b_u = (2 - expected[0]) / 3
    got = mb.score(3, inter(3, np.array([0]), np.array([2.0])), np.arange(3))
    np.testing.assert_allclose(got, np.array(expected) + b_u)
    # a warm user's training rows count too: user 1 (rated item 0 with 4)
    b_1 = (4 - expected[0]) / 3
    np.testing.assert_allclose(mb.user_bias(1, Interactions.empty()), b_1)


def _knn_rating_by_hand(train, n_users, n_items, mu, b_i, lam_u, shrink, keep):
    """Dense loops over the definition (no sparse algebra): residuals after mu + b_i + b_u,
    cosine over all users times n / (n + shrink), each row's ``keep`` largest |sim|."""
    r = {
        (int(u), int(i)): float(x)
        for u, i, x in zip(train.user_idx, train.item_idx, train.rating, strict=True)
    }
    b_u = np.zeros(n_users)
    for u in range(n_users):
        mine = [x - mu - b_i[i] for (v, i), x in r.items() if v == u]
        b_u[u] = sum(mine) / (len(mine) + lam_u)
    e = np.zeros((n_users, n_items))
    seen = np.zeros((n_users, n_items))
    for (u, i), x in r.items():
        e[u, i] = x - mu - b_i[i] - b_u[u]
        seen[u, i] = 1.0
    sim = np.zeros((n_items, n_items))
    for j in range(n_items):
        for i in range(n_items):
            nj, ni = np.linalg.norm(e[:, j]), np.linalg.norm(e[:, i])
            n = float(seen[:, j] @ seen[:, i])
            if i != j and nj > 0 and ni > 0:
                sim[j, i] = e[:, j] @ e[:, i] / (nj * ni) * n / (n + shrink)
        order = np.argsort(-np.abs(sim[j]), kind="stable")
        sim[j, order[keep:]] = 0.0
    return sim


@pytest.mark.parametrize("keep", [1, 3, 100])
def test_item_knn_rating_by_hand(board, keep):
    ds, train, _ = board
    m = ItemKNNRating(
        shrinkage=2.0, user_shrinkage=1.0, sim_shrink=3.0, damping=0.5, neighbours=keep
    )
    m.fit(ds, train)
    sim = _knn_rating_by_hand(train, ds.n_users, ds.n_items, m.mu_, m.item_bias_, 1.0, 3.0, keep)
    got = m.sim_.toarray()
    # ties in |sim| may keep either item: compare the kept magnitudes per row, then values
    np.testing.assert_allclose(np.sort(np.abs(got), 1), np.sort(np.abs(sim), 1), atol=1e-12)
    if keep == 100:
        np.testing.assert_allclose(got, sim, atol=1e-12)
    # a cold user's prediction: ItemMean + user bias plus the weighted residuals
    items, ratings = COLD_A_SUPPORT.item_idx, COLD_A_SUPPORT.rating.astype(np.float64)
    b_u = (ratings - m.mu_ - m.item_bias_[items]).sum() / (len(items) + 1.0)
    e = ratings - m.mu_ - m.item_bias_[items] - b_u
    targets = np.arange(N_ITEMS)
    s = got[np.ix_(targets, items)]
    want = m.mu_ + b_u + m.item_bias_[targets] + s @ e / (np.abs(s).sum(1) + 0.5)
    np.testing.assert_allclose(m.rank_scores(COLD_A, COLD_A_SUPPORT, targets), want, atol=1e-12)
    lo, hi = ds.rating_range
    np.testing.assert_allclose(
        m.score(COLD_A, COLD_A_SUPPORT, targets), np.clip(want, lo, hi), atol=1e-12
    )


def test_neighbour_search_is_the_same_a_few_rows_at_a_time(board):
    """Each block of rows is cut to its neighbours before the next (memory bounded by
    ``cells`` co-rated pairs): blocks of 16 rows give the table one block gives."""
    from metarec.baselines import residual_neighbours

    ds, train, _ = board
    m = ItemMeanUserBias().fit(ds, train)
    args = (train, ds.n_users, ds.n_items, m.mu_, m.item_bias_, 5.0, 2.0, 3)
    one = residual_neighbours(*args)
    small = residual_neighbours(*args, cells=1)  # 16-row blocks
    assert (one != small).nnz == 0 and one.getnnz(1).max() == 3
    # user_shrinkage 0: users without rows have no bias, and nothing warns (0/0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        residual_neighbours(train, ds.n_users + 5, ds.n_items, m.mu_, m.item_bias_, 0.0, 2.0, 3)


def test_neighbour_offsets_without_damping_is_quiet_on_a_float32_table():
    """A float32 table and damping 0: a target with no neighbour in the history is 0, not
    a 0/0 warning at every predict (the float64 floor rounded to 0 in float32)."""
    from metarec.baselines import neighbour_offsets

    sim = sp.csr_matrix(np.array([[0, 0.5, 0], [0.5, 0, 0], [0, 0, 0]], dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = neighbour_offsets(sim.T.tocsr(), np.array([0]), np.array([2.0]), np.arange(3), 0.0)
    np.testing.assert_allclose(got, [0.0, 2.0, 0.0])


def test_item_knn_rating_falls_back_to_item_mean_user_bias():
    """No neighbour in the history (an item nobody co-rated, or no history): the offset is 0."""
    ds, train = tiny()
    knn = ItemKNNRating(shrinkage=1.0, user_shrinkage=2.0).fit(ds, train)
    base = ItemMeanUserBias(shrinkage=1.0, user_shrinkage=2.0).fit(ds, train)
    support = inter(3, np.array([2]), np.array([2.0]))  # item z: co-rated with nothing
    np.testing.assert_allclose(
        knn.score(3, support, np.arange(3)), base.score(3, support, np.arange(3)), atol=1e-12
    )
    empty = Interactions.empty()
    np.testing.assert_allclose(
        knn.score(3, empty, np.arange(3)), base.score(3, empty, np.arange(3))
    )


@pytest.mark.parametrize(
    "params",
    [
        {"sim_shrink": -1.0},
        {"sim_shrink": float("nan")},
        {"damping": -0.1},
        {"damping": float("nan")},
        {"damping": 1e308},
        {"neighbours": 0},
        {"neighbours": 2.5},
        {"neighbours": True},
    ],
)
def test_item_knn_rating_rejects_bad_parameters(params):
    with pytest.raises(MetarecError, match="ItemKNN-ratings"):
        ItemKNNRating(**params)


def test_ridge_fold_in_solves_normal_equations():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(7, 3))
    y = rng.normal(size=7)
    reg, bias_reg = 0.7, 0.2
    v, b = ridge_fold_in(f, y, reg, bias_reg)
    # the same ridge problem as an augmented least-squares system
    x = np.hstack([f, np.ones((7, 1))])
    aug_x = np.vstack([x, np.diag(np.sqrt([reg, reg, reg, bias_reg]))])
    aug_y = np.concatenate([y, np.zeros(4)])
    w = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    np.testing.assert_allclose(np.append(v, b), w, atol=1e-10)


def test_biased_mf_fold_in_matches_lstsq_on_history(board):
    ds, train, _ = board
    m = BiasedMF(factors=4, reg=1.0, bias_reg=0.5, iterations=5, seed=0).fit(ds, train)
    v, b = m.fold_in(COLD_A, COLD_A_SUPPORT)
    items, ratings = COLD_A_SUPPORT.item_idx, COLD_A_SUPPORT.rating
    x = np.hstack([m.item_factors_[items], np.ones((4, 1))])
    aug_x = np.vstack([x, np.diag(np.sqrt([1.0] * 4 + [0.5]))])
    aug_y = np.concatenate([ratings.astype(np.float64) - m.mu_ - m.item_bias_[items], np.zeros(5)])
    w = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    np.testing.assert_allclose(np.append(v, b), w, atol=1e-10)
    # a warm user's history is their training rows: user 0 plus nothing
    v0, _ = m.fold_in(0, Interactions.empty())
    row = m.train_ratings_[0]
    target = row.data - m.mu_ - m.item_bias_[row.indices]
    np.testing.assert_allclose(v0, ridge_fold_in(m.item_factors_[row.indices], target, 1.0, 0.5)[0])


def test_biased_mf_is_the_same_model_on_any_rating_scale():
    """Ratings r on 1-5 and 10(r - 1) + 1 on 1-41 are the same taste: the regularisation
    scales with the rating unit in training and in a cold user's fold-in alike, so the
    predictions map back exactly. Every other test uses 1-5, where the unit is 1 and a
    fold-in with the unscaled penalty went unseen (probe 143)."""
    rng = np.random.default_rng(0)
    nu, ni = 30, 20
    u = np.repeat(np.arange(nu), 8)
    it = np.concatenate([rng.choice(ni, 8, replace=False) for _ in range(nu)])
    r = rng.integers(1, 6, len(u)).astype(np.float32)
    sup_items, sup_r = np.array([0, 3, 5]), np.array([5.0, 1.0, 4.0], dtype=np.float32)

    def cold_scores(scale: float) -> np.ndarray:
        to = lambda x: ((x - 1) * scale + 1).astype(np.float32)  # noqa: E731
        train = Interactions(u, it, to(r), np.arange(len(u)), np.zeros(len(u)))
        ds = Dataset(
            "scale",
            train,
            IdMap(np.array([f"u{i}" for i in range(nu + 1)])),
            IdMap(np.array([f"i{i}" for i in range(ni)])),
            "explicit",
            (1.0, 1.0 + 4 * scale),
            True,
        )
        m = BiasedMF(factors=4, iterations=5).fit(ds, train)
        sup = Interactions(np.full(3, nu), sup_items, to(sup_r), np.arange(3), np.zeros(3))
        return (m.score(nu, sup, np.arange(ni)) - 1) / scale + 1

    np.testing.assert_allclose(cold_scores(10.0), cold_scores(1.0), atol=1e-5)


def test_biased_mf_fits_ratings():
    # a rank-1 rating matrix with biases is recovered closely on its observed cells
    rng = np.random.default_rng(0)
    nu, ni = 30, 12
    truth = 3 + 0.5 * np.outer(rng.normal(size=nu), rng.normal(size=ni)) + rng.normal(0, 0.3, ni)
    uu, ii = np.meshgrid(np.arange(nu), np.arange(ni), indexing="ij")
    keep = rng.random((nu, ni)) < 0.7
    train = inter(uu[keep], ii[keep], truth[keep])
    train = Interactions(
        uu[keep], ii[keep], truth[keep], np.zeros(keep.sum()), np.zeros(keep.sum())
    )
    ds = Dataset(
        "r1",
        train,
        IdMap(np.arange(nu).astype(str)),
        IdMap(np.arange(ni).astype(str)),
        "explicit",
        (-10.0, 10.0),
        False,
    )
    m = BiasedMF(factors=2, reg=0.01, bias_reg=0.01, iterations=30).fit(ds, train)
    pred = np.concatenate([m.score(u, Interactions.empty(), ii[u][keep[u]]) for u in range(nu)])
    resid = pred - np.concatenate([truth[u][keep[u]] for u in range(nu)])
    assert np.sqrt(np.mean(resid**2)) < 0.05


def implicit_matrix(x: np.ndarray) -> tuple[Dataset, Interactions]:
    """An implicit dataset whose training rows are the ones of the dense (users, items)
    matrix x, with one more user (index x.shape[0]) who has no training rows."""
    users, items = np.nonzero(x)
    n = len(users)
    train = Interactions(users, items, np.ones(n), np.zeros(n), np.zeros(n))
    ds = Dataset(
        "dense",
        train,
        IdMap(np.arange(x.shape[0] + 1).astype(str)),
        IdMap(np.arange(x.shape[1]).astype(str)),
        "implicit",
        (0.0, 1.0),
        False,
    )
    return ds, train


def test_ease_weights_closed_form_on_tiny_matrix():
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1], [1, 0, 0]], dtype=float)
    ds, train = implicit_matrix(x)
    lam = 2.0
    m = EASE(reg=lam).fit(ds, train)
    g = x.T @ x + lam * np.eye(3)
    p = np.linalg.inv(g)
    expected = np.eye(3) - p @ np.diag(1 / np.diag(p))
    np.testing.assert_allclose(m.weights_, expected, atol=1e-12)
    np.testing.assert_array_equal(np.diag(m.weights_), 0.0)
    # optimality of the constrained ridge: G B - G is diagonal (only the diag(B)=0 multiplier)
    r = g @ m.weights_ - g
    np.testing.assert_allclose(r - np.diag(np.diag(r)), 0.0, atol=1e-12)
    # cold user with history {0}: scores are row 0 of B
    np.testing.assert_allclose(
        m.score(4, inter(4, np.array([0]), np.array([1.0])), np.arange(3)), expected[0]
    )


@pytest.mark.parametrize(("alpha", "damping"), [(0.5, 0.0), (0.3, 1.0), (0.0, 0.5)])
def test_item_knn_by_hand(alpha, damping):
    # sim(i, j) = Σ_u x_ui x_uj / d_u^damping / (n_i n_j)^alpha, from the dense matrix
    x = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=float)
    ds, train = implicit_matrix(x)
    m = ItemKNN(alpha=alpha, damping=damping).fit(ds, train)
    n = np.maximum(x.sum(0), 1) ** alpha
    d = x.sum(1) ** damping
    sim = (x / d[:, None]).T @ x / np.outer(n, n)  # (4, 4)
    # cold user 4 with history {0, 2}: the sum of rows 0 and 2; item 3 (never seen) scores 0
    got = m.score(4, inter(4, np.array([0, 2]), np.array([1.0, 1.0])), np.arange(4))
    np.testing.assert_allclose(got, sim[0] + sim[2], atol=1e-12)
    assert got[3] == 0.0
    # a warm user's training rows are part of the history: user 0 = {0, 1} (+ support 2)
    got = m.score(0, inter(0, np.array([2]), np.array([1.0])), np.arange(4))
    np.testing.assert_allclose(got, sim[0] + sim[1] + sim[2], atol=1e-12)
    # batched ranking equals the per-user scores; an empty history scores 0
    tasks = [Task(4, inter(4, np.array([1]), np.array([1.0])), inter(4, [], [])) for _ in "ab"]
    np.testing.assert_allclose(m.rank_scores_batch(tasks, np.arange(4)), np.stack([sim[1]] * 2))
    empty = inter(4, np.zeros(0, dtype=np.int64), np.zeros(0))
    np.testing.assert_array_equal(m.score(4, empty, np.arange(4)), 0.0)
    # the typical score: median of the nonzero scores of every training user's own history
    own = np.concatenate([(x[u] @ sim)[(x[u] @ sim) > 0] for u in range(4)])
    assert m.median_score() == pytest.approx(np.median(own))


def test_item_knn_rejects_bad_parameters():
    with pytest.raises(MetarecError, match="alpha"):
        ItemKNN(alpha=1.5)
    with pytest.raises(MetarecError, match="damping"):
        ItemKNN(damping=-1)


def test_ease_refuses_huge_catalogue(board):
    ds, train, _ = board
    with pytest.raises(MetarecError, match="max_items"):
        EASE(max_items=5).fit(ds, train)


def test_ease_unseen_item_scores_minus_inf():
    ds, train = tiny()
    train = train.take(train.item_idx != 2)
    m = EASE(reg=1.0).fit(ds, train)
    s = m.score(3, inter(3, np.array([0]), np.array([5.0])), np.arange(3))
    assert s[2] == -np.inf and np.isfinite(s[:2]).all()


def test_als_fold_in_equals_implicit_recalculate_user(board):
    ds, train, _ = board
    m = ImplicitALS(factors=4, reg=0.1, alpha=5.0, iterations=5, seed=0).fit(ds, train)
    items = np.array([0, 1, 2])  # the support's liked items: item 15 was rated 1 (< midpoint 3)
    row = sp.csr_matrix((np.ones(3, dtype=np.float32), (np.zeros(3), items)), shape=(1, N_ITEMS))
    expected = m.model_.recalculate_user(0, row)
    np.testing.assert_allclose(m.fold_in(COLD_A, COLD_A_SUPPORT), expected, rtol=1e-4, atol=1e-5)
    # the closed form itself: normal equations of the confidence-weighted ridge
    y = m.item_vectors_
    c = np.ones(N_ITEMS)
    c[items] = 5.0
    p = np.zeros(N_ITEMS)
    p[items] = 1.0
    direct = np.linalg.solve(y.T @ (c[:, None] * y) + 0.1 * np.eye(4), y.T @ (c * p))
    np.testing.assert_allclose(als_fold_in(y, y.T @ y, items, 0.1, 5.0), direct, atol=1e-10)


def test_text_cosine_by_hand(board):
    ds, train, feats = board
    m = TextCosine().fit(ds, train, feats)
    # history: item 0 rated 5, item 10 rated 1 -> mean 3, only item 0 is liked
    support = inter(COLD_A, np.array([0, 10]), np.array([5.0, 1.0]))
    t = feats.item_text.numpy().astype(np.float64)
    unit = t / np.linalg.norm(t, axis=1, keepdims=True)
    np.testing.assert_allclose(m.score(COLD_A, support, np.arange(N_ITEMS)), unit @ unit[0])


def test_text_cosine_needs_features(board):
    ds, train, _ = board
    with pytest.raises(MetarecError, match="FeatureSet"):
        TextCosine().fit(ds, train, None)


def test_make_baseline_rejects_unknown():
    assert isinstance(make_baseline("ease", reg=10.0), EASE)
    with pytest.raises(MetarecError, match="unknown baseline"):
        make_baseline("nope")
    with pytest.raises(MetarecError, match="bad parameters"):
        make_baseline("ease", lam=3)


def test_history_counts_an_item_in_train_and_support_once():
    # a warm protocol can repeat training rows in the support: user 0 rated item 0 with 5
    ds, train = tiny()
    mb = ItemMeanUserBias(shrinkage=1.0, user_shrinkage=2.0).fit(ds, train)
    again = inter(0, np.array([0]), np.array([5.0]))
    assert mb.user_bias(0, again) == pytest.approx(mb.user_bias(0, Interactions.empty()))
    items, ratings = mb._history(0, inter(0, np.array([0]), np.array([2.0])))
    assert sorted(zip(items.tolist(), ratings.tolist(), strict=True)) == [(0, 2.0), (1, 3.0)]


def test_history_lists_training_rows_in_time_order():
    # user 0 rated items 2, 0, 1 in that time order (item order would be 0, 1, 2); a tie in
    # time keeps the rows' order in train. Models that adapt on the latest interactions
    # only (ModelConfig.max_support) cut the history's end, so it must be the newest rows.
    train = Interactions(
        np.zeros(4, dtype=np.int64),
        np.array([1, 2, 0, 3]),
        np.array([1.0, 2.0, 3.0, 4.0]),
        np.array([30, 10, 20, 30]),  # items 1 and 3 tie at t=30: train order decides
        np.zeros(4),
    )
    ds = Dataset(
        "tiny",
        train,
        IdMap(np.array(["a"])),
        IdMap(np.array(list("xyzw"))),
        "explicit",
        (1.0, 5.0),
        True,
    )
    mb = ItemMeanUserBias().fit(ds, train)
    items, ratings = mb._history(0, Interactions.empty())
    assert items.tolist() == [2, 0, 1, 3] and ratings.tolist() == [2.0, 3.0, 1.0, 4.0]
    items, ratings = mb._history(0, inter(0, np.array([0]), np.array([5.0])))
    assert items.tolist() == [2, 1, 3, 0]  # training rows by time, then the support
    assert ratings.tolist() == [2.0, 1.0, 4.0, 5.0]


def test_biased_mf_batched_half_step_equals_row_by_row_ridge(board):
    ds, train, _ = board
    m = BiasedMF(factors=3, reg=0.8, bias_reg=0.3, iterations=2).fit(ds, train)
    rows = m.train_ratings_  # includes the empty rows of the two cold users
    out, out_bias = np.full((rows.shape[0], 3), 9.0), np.full(rows.shape[0], 9.0)
    m._half_step(rows, m.item_factors_, m.item_bias_, out, out_bias, block=7)
    for u in range(rows.shape[0]):
        cols = rows[u].indices
        if not len(cols):
            assert not out[u].any() and out_bias[u] == 0.0
            continue
        target = rows[u].data - m.mu_ - m.item_bias_[cols]
        v, b = ridge_fold_in(m.item_factors_[cols], target, 0.8, 0.3)
        np.testing.assert_allclose(out[u], v, atol=1e-10)
        assert out_bias[u] == pytest.approx(b)


def test_rating_models_rank_unclipped(board):
    # predictions above the scale are clipped in score() but still ordered by rank_scores()
    ds, train, _ = board
    m = ItemMeanUserBias(shrinkage=0.0, user_shrinkage=0.0).fit(ds, train)
    support = inter(COLD_A, np.array([0]), np.array([5.0]))
    items = np.arange(N_ITEMS)
    assert m.score(COLD_A, support, items).max() <= 5.0
    np.testing.assert_allclose(
        m.rank_scores(COLD_A, support, items) - m.rank_scores(COLD_A, Interactions.empty(), items),
        m.user_bias(COLD_A, support),
    )


@pytest.mark.parametrize(
    "name, params, said",
    [
        ("implicit_als", {"factors": 0}, "factors must be an integer >= 1, got 0"),
        ("implicit_als", {"reg": -1.0}, "reg must be a number >= 0, got -1.0"),
        ("item_mean_user_bias", {"user_shrinkage": -1}, "user_shrinkage must be a number >= 0"),
        ("item_mean", {"shrinkage": float("nan")}, "shrinkage must be a number >= 0, got nan"),
        ("item_mean", {"shrinkage": "x"}, "shrinkage must be a number >= 0, got 'x'"),
        ("ease", {"reg": float("nan")}, "reg must be a number > 0, got nan"),
        ("biased_mf", {"reg": float("nan")}, "reg must be a number > 0, got nan"),
        ("biased_mf", {"factors": 2.5}, "factors must be an integer >= 1, got 2.5"),
        ("item_knn", {"damping": float("inf")}, "damping must be a number >= 0, got inf"),
        ("lightfm", {"learning_rate": 0}, "learning_rate must be a number > 0, got 0"),
    ],
)
def test_bad_baseline_parameters_are_one_line_errors(name, params, said):
    """NaN passed the "< 0" checks (EASE scored every item -inf, ItemMean every item the
    global mean), user_shrinkage -1 divided a one-row history by zero (every item 5.0),
    and ALS with factors 0 printed 67,545 BLAS errors and scored every item 0."""
    with pytest.raises(MetarecError, match=re.escape(said)) as err:
        make_baseline(name, **params)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["ease", "item_knn"])
def test_a_like_threshold_no_training_rating_reaches_is_refused(name):
    ds, train = tiny()  # ratings 1..5
    with pytest.raises(
        MetarecError, match=r"min_rating 99: no training rating reaches it \(the highest is 5\)"
    ):
        make_baseline(name, min_rating=99).fit(ds, train)


@pytest.mark.parametrize("name", ["ease", "item_knn"])
def test_a_scale_midpoint_no_training_rating_reaches_is_refused_too(name):
    """A declared 1-10 scale over ratings of 1-5: the midpoint 5.5 is above every rating.
    The meta-model's fit refused it; EASE scored every item -inf without a word."""
    _, train = tiny()
    ds = _four_by_three("tiny", train, "explicit", (1.0, 10.0))
    with pytest.raises(MetarecError, match=r"the rating scale's midpoint 5.5 \(no min_rating"):
        make_baseline(name).fit(ds, train)


def test_the_global_mean_of_huge_ratings_does_not_overflow():
    """Ratings are float32; their mean summed in float32 overflowed at 720 rows of 3e36
    (the files allow up to 3.4e38), and fit died in an SVD with a traceback (probe 155)."""
    from metarec.baselines import _item_biases

    rating = np.full(720, 3e36, dtype=np.float32)
    train = Interactions(
        np.arange(720) % 30, np.arange(720) % 7, rating, np.arange(720), np.zeros(720, np.int16)
    )
    mu, b = _item_biases(train, 7, 1.0)
    assert mu == pytest.approx(3e36, rel=1e-6) and np.isfinite(b).all()
    # biased MF takes its own global mean: summed in float64 too
    users = IdMap(np.array([f"u{i}" for i in range(30)]))
    ds = Dataset(
        "huge",
        train,
        users,
        IdMap(np.array([f"i{i}" for i in range(7)])),
        "explicit",
        (0.0, 3.4e38),
        True,
    )
    assert BiasedMF(factors=2, iterations=2, seed=0).fit(ds, train).mu_ == pytest.approx(
        3e36, rel=1e-6
    )


def test_interactions_at_a_threshold_float32_rounds_down_are_kept():
    """interaction_mask (the baselines' min_rating: EASE, kNN, ALS) judges a rating as
    metrics.is_relevant does, in float32: a 0.7 rating (held as 0.699999988) counts at a
    min_rating of 0.7, as it is relevant when evaluated (probe 155)."""
    from metarec.baselines import interaction_mask

    rated = np.array([0.7, 0.5], dtype=np.float32)
    assert interaction_mask(rated, 0.7).tolist() == [True, False]
    assert interaction_mask(rated.astype(np.float64), 0.7).tolist() == [True, False]
    assert interaction_mask(rated, None).tolist() == [True, True]
