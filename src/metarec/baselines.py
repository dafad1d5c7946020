"""Non-meta-learned baselines, all under the :class:`metarec.recommender.Recommender` contract.

Each adapts to a user's history (training rows + support) in closed form, so a cold user
with K support ratings is handled without refitting:

=====================  ============================================  =================
name (``BASELINES``)   adaptation to the history                     ``predicts_ratings``
=====================  ============================================  =================
``popularity``         none (train interaction counts)               False
``item_mean``          none (shrunk item mean)                       True
``item_mean_user_bias`` shrunk user bias on the history              True
``biased_mf``          ridge fold-in of user vector + bias           True
``item_knn_rating``    user bias + neighbours' residuals on history  True
``ease``               history row times item-item weights B         False
``item_knn``           sum of co-occurrence similarities to history  False
``implicit_als``       ridge fold-in (implicit's recalculate_user)    False
``lightfm``            ridge fold-in against LightFM item vectors     False
``text_cosine``        mean text vector of liked history items        False
=====================  ============================================  =================

Rank-only models (``predicts_ratings = False``) do not invent ratings: evaluation reports
only the order-based metrics (AUC, nDCG, HR, Recall, MRR) for them.

The implicit-feedback rankers (EASE, ALS, LightFM) learn from *liked* rows: label > 0 on
implicit data; on explicit data rating >= ``min_rating``, by default the midpoint of the
rating range (3 on 1-5), so a cold user's 1-star support rating does not pull the user
towards that item's neighbours (see :func:`interaction_mask`). Popularity counts every row
of explicit data (a rating of any value is an interaction) and the liked rows of implicit
data (a label 0 is an explicit "no", not a sign of popularity: :func:`popularity_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import scipy.sparse as sp

from metarec.features import FeatureSet
from metarec.metrics import is_relevant
from metarec.recommender import Recommender
from metarec.types import IMPLICIT_POSITIVE, Dataset, Interactions, MetarecError, Task

MAX_FACTORS = 4096  # latent factors of BiasedMF / ImplicitALS (and the blend's inputs)
LIGHTFM_LOSSES = ("warp", "bpr", "logistic", "warp-kos")


def _check_number(
    who: str, name: str, v, lo: float = 0.0, *, above: bool = False, integer: bool = False
) -> None:
    """A baseline parameter: a finite real number (an integer where ``integer``) at least
    ``lo`` (above it where ``above``). NaN passed the old "< 0" checks (EASE scored every
    item -inf, ItemMean every item the global mean), a text was a TypeError deep in a fit,
    and ALS with factors 0 printed 67,545 BLAS errors and scored every item 0."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    bad = isinstance(v, bool) or not isinstance(v, kinds) or not np.isfinite(v)
    if bad or (v <= lo if above else v < lo):
        rule = f"{'an integer' if integer else 'a number'} {'>' if above else '>='} {lo:g}"
        raise MetarecError(f"{who}: {name} must be {rule}, got {v!r}")


def liked_threshold(dataset: Dataset, train: Interactions, min_rating: float | None) -> float:
    """:func:`like_threshold`, refusing one no training rating reaches: EASE then scored
    every item -inf and item-kNN every item 0, without a word. The scale's midpoint too
    (a declared 1-10 scale over a log of 1s and 4s), as the meta-model's fit refuses it."""
    like = like_threshold(dataset, min_rating)
    if dataset.feedback == "explicit" and len(train):
        top = float(train.rating.max())
        if not is_relevant(train.rating, like).any():  # as the likes are judged (float32)
            what = (
                f"min_rating {like:g}"
                if min_rating is not None
                else f"the rating scale's midpoint {like:g} (no min_rating given)"
            )
            raise MetarecError(
                f"{what}: no training rating reaches it (the highest is {top:g}), so "
                "nothing counts as liked; give a min_rating the ratings reach"
            )
    return like


def like_threshold(dataset: Dataset, min_rating: float | None) -> float:
    """Smallest rating that counts as liked: ``min_rating``, else the scale's midpoint.

    Implicit data: anything above 0 (labels are 0/1).
    """
    if dataset.feedback != "explicit":
        return 0.5
    if min_rating is not None:
        return float(min_rating)
    lo, hi = dataset.rating_range
    return (lo + hi) / 2


def interaction_mask(rating: np.ndarray, threshold: float | None) -> np.ndarray:
    """Rows that count as interactions: rating >= threshold, or every row for None."""
    rating = np.asarray(rating)
    return np.ones(len(rating), dtype=bool) if threshold is None else is_relevant(rating, threshold)


def presence_matrix(
    dataset: Dataset, train: Interactions, threshold: float | None
) -> sp.csr_matrix:
    """(n_users, n_items) binary CSR of training rows with rating >= threshold (None: all)."""
    keep = interaction_mask(train.rating, threshold)
    x = sp.csr_matrix(
        (np.ones(int(keep.sum())), (train.user_idx[keep], train.item_idx[keep])),
        shape=(dataset.n_users, dataset.n_items),
    )
    x.data[:] = 1.0  # duplicates would have summed
    return x


def popularity_counts(dataset: Dataset, train: Interactions, distinct: bool = False) -> np.ndarray:
    """(n_items,) each item's training count (of rows, or of distinct users where
    ``distinct``): every row on explicit data, the label-1 rows on implicit data. Counting
    a label 0 put the items every user turned down at the top of a popularity ranking (a
    black-box probe's log of rejected items)."""
    keep = None if dataset.feedback == "explicit" else IMPLICIT_POSITIVE
    if distinct:
        return np.asarray(presence_matrix(dataset, train, keep).sum(0)).ravel()
    return np.bincount(
        train.item_idx[interaction_mask(train.rating, keep)], minlength=dataset.n_items
    )


class _RatingModel(Recommender):
    """Models predicting ratings: ``score`` clips to the rating range, ranking does not.

    Subclasses implement ``_predict`` (unclipped). Clipping would tie every item predicted
    above the top of the scale, so ``rank_scores`` uses the unclipped prediction.
    """

    predicts_ratings = True

    def _predict(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        lo, hi = self.rating_range_
        return np.clip(self._predict(user_idx, support, item_idx), lo, hi)

    def rank_scores(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        return self._predict(user_idx, support, self._check_items(item_idx))


# --- non-personalised --------------------------------------------------------------------


class Popularity(Recommender):
    """Number of training interactions of each item; the same ranking for every user."""

    name = "Popularity"
    personalized = False

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        self._set_fitted(dataset, train)
        self.counts_ = popularity_counts(dataset, train, distinct=True)  # (n_items,)
        return self

    def score(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        return self.counts_[item_idx].astype(np.float64)

    def rank_scores_batch(self, tasks: Sequence[Task], item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        row = self.counts_[item_idx].astype(np.float64)
        return np.broadcast_to(row, (len(tasks), len(row))).copy()


def _item_biases(train: Interactions, n_items: int, shrinkage: float) -> tuple[float, np.ndarray]:
    """Global mean mu and shrunk item offsets b_i = sum(r - mu) / (n_i + shrinkage)."""
    _check_number("item biases", "shrinkage", shrinkage)
    # summed in float64: 720 float32 ratings of 3e36 overflowed float32's sum to inf, and
    # fit died in an SVD (probe 155), far below float32's 3.4e38 that the files allow
    mu = float(train.rating.mean(dtype=np.float64)) if len(train) else 0.0
    resid = np.bincount(train.item_idx, weights=train.rating - mu, minlength=n_items)
    n = np.bincount(train.item_idx, minlength=n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(n + shrinkage > 0, resid / (n + shrinkage), 0.0)
    return mu, b


class ItemMean(_RatingModel):
    """Item mean rating shrunk towards the global mean: mu + sum(r - mu) / (n_i + shrinkage)."""

    name = "ItemMean"
    personalized = False

    def __init__(self, shrinkage: float = 10.0):
        _check_number(self.name, "shrinkage", shrinkage)
        self.shrinkage = shrinkage

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        self._set_fitted(dataset, train)
        self.mu_, self.item_bias_ = _item_biases(train, dataset.n_items, self.shrinkage)
        return self

    def _predict(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        return self.mu_ + self.item_bias_[item_idx]


def shrunk_user_bias(resid: np.ndarray, shrinkage: float) -> float:
    """A history's user offset: Σ resid / (len + shrinkage), the ridge solution of
    min Σ (resid − b)² + shrinkage · b²; 0 for an empty history. resid: (h,) ratings minus
    mu + item bias."""
    return float(resid.sum() / (len(resid) + shrinkage)) if len(resid) else 0.0


class ItemMeanUserBias(ItemMean):
    """ItemMean plus a user offset fitted on the history in closed form.

    b_u = sum over history of (r - mu - b_i) / (|history| + user_shrinkage), the ridge
    solution of min sum (r - mu - b_i - b_u)^2 + user_shrinkage * b_u^2.
    """

    name = "ItemMean+UserBias"

    def __init__(self, shrinkage: float = 10.0, user_shrinkage: float = 5.0):
        super().__init__(shrinkage)
        # -1 divided a one-row history by 0: every item at the top of the scale
        _check_number(self.name, "user_shrinkage", user_shrinkage)
        self.user_shrinkage = user_shrinkage

    def user_bias(self, user_idx: int, support: Interactions) -> float:
        items, ratings = self._history(user_idx, support)
        resid = ratings - self.mu_ - self.item_bias_[items]
        return shrunk_user_bias(resid, self.user_shrinkage)

    def _predict(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        return self.mu_ + self.user_bias(user_idx, support) + self.item_bias_[item_idx]


KNN_RATING_MAX = 1e6  # the largest shrink or damping ItemKNNRating takes


def _check_knn_rating_params(who: str, shrink, damping, neighbours) -> None:
    """Neighbour count an integer >= 1, shrink and damping finite and >= 0 (NaN would keep
    every neighbour, or zero every offset, silently)."""
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)):
        raise MetarecError(f"{who}: neighbours must be an integer >= 1, got {neighbours!r}")
    if neighbours < 1:
        raise MetarecError(f"{who}: neighbours must be >= 1, got {neighbours}")
    for name, v in (("shrink", shrink), ("damping", damping)):
        # past 1e6 both only zero every offset (a similarity is at most 1, and there are
        # at most ``neighbours`` of them), and float32 tables overflow further on
        if not (np.isfinite(v) and 0 <= v <= KNN_RATING_MAX):
            raise MetarecError(
                f"{who}: {name} must be a number in [0, {KNN_RATING_MAX:g}], got {v!r}"
            )


def residual_neighbours(
    train: Interactions,
    n_users: int,
    n_items: int,
    mu: float,
    item_bias: np.ndarray,
    user_shrinkage: float,
    shrink: float,
    neighbours: int,
    cells: int = 1 << 22,
) -> sp.csr_matrix:
    """(n_items, n_items) CSR: row j holds item j's ``neighbours`` most similar items i
    (largest |sim|, nonzero only, never j itself; a tie keeps the lower index) with

        sim(j, i) = cos(e_·j, e_·i) · n_ji / (n_ji + shrink)

    over the training residuals e_ui = r_ui − mu − b_i − b_u (b_u the user's shrunk bias
    on their own training rows, as :class:`ItemMeanUserBias` fits a history) and n_ji the
    number of users who rated both. The shrink keeps pairs seen by few users near 0.
    Sparse, a block of rows at a time, each row cut to its neighbours before the next
    block: memory is at most ``cells`` co-rated pairs (about 4M, ~200 MB) plus the
    n_items × neighbours kept, whatever the catalogue (a user who rated every item makes
    every pair co-rated), and the work follows the co-rated pairs (0.5% of the pairs of a
    36k-item catalogue)."""
    _check_knn_rating_params("item-kNN ratings", shrink, 0.0, neighbours)
    resid = train.rating.astype(np.float64) - mu - item_bias[train.item_idx]
    n_u = np.bincount(train.user_idx, minlength=n_users)
    sums = np.bincount(train.user_idx, resid, minlength=n_users)
    # a user without rows has no bias (0/0 with user_shrinkage 0)
    b_u = np.divide(sums, n_u + user_shrinkage, out=np.zeros(n_users), where=n_u > 0)
    e = resid - b_u[train.user_idx]  # (n,)
    coords = (train.user_idx, train.item_idx)
    res = sp.csr_matrix((e, coords), shape=(n_users, n_items))  # summed duplicates: none
    seen = res.copy()
    seen.data = np.ones_like(seen.data)  # the rated pattern, explicit zeros too
    norm = np.sqrt(np.asarray(res.multiply(res).sum(0)).ravel())  # (n_items,)
    inv = np.where(norm > 0, 1.0 / np.maximum(norm, 1e-300), 0.0)
    res_t, seen_t = res.T.tocsr(), seen.T.tocsr()  # (n_items, n_users)
    parts = []
    block = int(np.clip(cells // max(n_items, 1), 16, 4096))  # rows per block
    for lo in range(0, n_items, block):
        hi = min(lo + block, n_items)
        both = (seen_t[lo:hi] @ seen).tocsr()  # (b, n_items) co-rating users, sparse
        dot = (res_t[lo:hi] @ res).tocsr()  # (b, n_items), nonzero only where co-rated
        both.sum_duplicates()  # canonical: sorted by (row, column), so are the keys below
        dot.sum_duplicates()
        rows = np.repeat(np.arange(lo, hi), np.diff(dot.indptr))
        cols = dot.indices.astype(np.int64)
        # each dot cell's co-rating count, looked up by its (row, column) key in both's
        both_keys = np.repeat(np.arange(hi - lo), np.diff(both.indptr)) * n_items + both.indices
        at = np.searchsorted(both_keys, (rows - lo) * n_items + cols)
        n = both.data[at]
        val = dot.data * inv[rows] * inv[cols] * n / np.maximum(n + shrink, 1e-300)
        keep = (val != 0) & (rows != cols)
        rows, cols, val = rows[keep], cols[keep], val[keep]
        # this block's strongest ``neighbours`` per row: sort by (row, −|sim|, column)
        order = np.lexsort((cols, -np.abs(val), rows))
        rows, cols, val = rows[order], cols[order], val[order]
        start = np.searchsorted(rows, np.arange(lo, hi))  # (b,) each row's first cell
        top = np.arange(len(rows)) - start[rows - lo] < neighbours
        parts.append((rows[top], cols[top], val[top]))
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    vals = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
    out = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items))
    out.sort_indices()
    return out


def neighbour_offsets(
    sim_t: sp.csr_matrix, items: np.ndarray, resid: np.ndarray, targets: np.ndarray, damping: float
) -> np.ndarray:
    """(n_targets,) Σ_i sim(j, i) e_i / (Σ_i |sim(j, i)| + damping) over the history's
    items i (``items`` (h,), ``resid`` (h,) their residuals after the user's ItemMean +
    bias prediction); ``sim_t`` is :func:`residual_neighbours`' matrix transposed (CSR,
    row i = the items that count i among their neighbours), so a history reads h rows,
    whatever the number of targets. An item with no neighbour in the history gets 0, so
    the prediction falls back to ItemMean + user bias; ``damping`` > 0 pulls an offset
    built on few or weak neighbours toward 0. A repeated history item counts each time
    (as in ItemMean + user bias's bias; histories are deduplicated by default)."""
    if not len(items) or not len(targets):
        return np.zeros(len(targets))
    rows = sim_t[items].astype(np.float64)  # (h, n_items) sparse; a float32 table too
    num = np.asarray(rows.T @ resid).ravel()[targets]  # (n_targets,)
    den = np.asarray(abs(rows).sum(0)).ravel()[targets] + damping
    out = np.zeros(len(targets))
    np.divide(num, den, out=out, where=den > 0)  # no neighbour and no damping: 0
    return out


class ItemKNNRating(ItemMeanUserBias):
    """Item-based neighbourhood rating model on baseline residuals (the classic "kNN with
    baseline" of the collaborative-filtering literature):

        r̂_uj = mu + b_u + b_j + Σ_{i ∈ history} sim(j, i) e_ui / (Σ_i |sim(j, i)| + damping)

    with e_ui = r_ui − (mu + b_u + b_i) on the user's history and sim from
    :func:`residual_neighbours` (each item's ``neighbours`` strongest, shrunk by co-rating
    count). A cold user adapts in closed form: their bias, then their residuals weight
    the neighbours. Cold items have no neighbours and get ItemMean + user bias.
    """

    name = "ItemKNN-ratings"
    personalized = True  # the neighbours' offsets follow the user's history

    def __init__(
        self,
        shrinkage: float = 10.0,
        user_shrinkage: float = 5.0,
        sim_shrink: float = 2.0,
        damping: float = 0.5,
        neighbours: int = 200,
    ):
        super().__init__(shrinkage, user_shrinkage)
        _check_knn_rating_params("ItemKNN-ratings", sim_shrink, damping, neighbours)
        self.sim_shrink = sim_shrink
        self.damping = damping
        self.neighbours = neighbours

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        super().fit(dataset, train)
        self.sim_ = residual_neighbours(
            train,
            dataset.n_users,
            dataset.n_items,
            self.mu_,
            self.item_bias_,
            self.user_shrinkage,
            self.sim_shrink,
            self.neighbours,
        )
        self.sim_t_ = self.sim_.T.tocsr()  # (n_items, n_items): what a history reads
        return self

    def _predict(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        items, ratings = self._history(user_idx, support)
        resid = ratings - self.mu_ - self.item_bias_[items]  # (h,)
        b_u = shrunk_user_bias(resid, self.user_shrinkage)
        resid = resid - b_u
        off = neighbour_offsets(self.sim_t_, items, resid, item_idx, self.damping)
        return self.mu_ + b_u + self.item_bias_[item_idx] + off


# --- biased matrix factorisation (explicit ratings) -----------------------------------


def ridge_fold_in(
    factors: np.ndarray, target: np.ndarray, reg: float, bias_reg: float
) -> tuple[np.ndarray, float]:
    """Closed-form [vector, bias] = argmin ||target - F v - b||^2 + reg ||v||^2 + bias_reg b^2.

    factors: (n, d) fixed factors of the rows; target: (n,). Solves the normal equations
    (XᵀX + diag(reg,...,reg, bias_reg)) w = Xᵀ target with X = [F, 1]. Returns ((d,), b).
    """
    d = factors.shape[1]
    x = np.hstack([factors, np.ones((len(factors), 1))])  # (n, d + 1)
    lam = np.full(d + 1, float(reg))
    lam[-1] = bias_reg
    a = x.T @ x + np.diag(lam)  # (d + 1, d + 1), positive definite when reg, bias_reg > 0
    w = np.linalg.solve(a, x.T @ target)
    return w[:-1], float(w[-1])


class BiasedMF(_RatingModel):
    """r_ui ~ mu + b_u + b_i + p_u · q_i, fitted by alternating ridge regressions (ALS).

    Each half-step solves every user's (or item's) [vector, bias] exactly with
    :func:`ridge_fold_in`; a new user is folded in by the same solve on the history with the
    item factors fixed, so cold and warm users see one estimator.
    """

    name = "BiasedMF"

    def __init__(
        self,
        factors: int = 32,
        reg: float = 5.0,
        bias_reg: float = 5.0,
        iterations: int = 15,
        init_std: float = 0.1,
        seed: int = 0,
    ):
        _check_number("BiasedMF", "factors", factors, 1, integer=True)
        _check_number("BiasedMF", "iterations", iterations, integer=True)
        for name, v in (("reg", reg), ("bias_reg", bias_reg)):
            _check_number("BiasedMF", name, v, above=True)  # NaN: a LinAlgError at fit
        _check_number("BiasedMF", "init_std", init_std)
        if factors > MAX_FACTORS:  # 10^8 asked for 738 GiB
            raise MetarecError(f"BiasedMF: factors must be <= {MAX_FACTORS}, got {factors}")
        self.factors = factors
        self.reg = reg
        self.bias_reg = bias_reg
        self.iterations = iterations
        self.init_std = init_std
        self.seed = seed

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        self._set_fitted(dataset, train)
        rng = np.random.default_rng(self.seed)
        nu, ni, d = dataset.n_users, dataset.n_items, self.factors
        self.mu_ = float(train.rating.mean(dtype=np.float64)) if len(train) else 0.0
        # The factor penalty is set in 1-5 star units and scaled with the rating scale, so
        # that every scale fits as 1-5 stars do: with ratings times s, the solution scaled
        # (biases times s, factors times sqrt(s), so that their product is times s) is the
        # optimum when the factor penalty is times s; the squared error and the bias
        # penalty both scale by s^2, so the bias penalty stays. Unscaled, the factor
        # penalty faded on a wide scale (goodbooks ratings times 200,000: RMSE 0.894 ->
        # 1.245 stars). A quarter of the explicit range is one star (1 on 1-5 stars:
        # nothing changes there); implicit labels keep the penalties as given.
        lo, hi = dataset.rating_range
        unit = (hi - lo) / 4.0 if dataset.feedback == "explicit" and hi > lo else 1.0
        self.reg_, self.bias_reg_ = self.reg * unit, self.bias_reg
        p = rng.normal(0.0, self.init_std * np.sqrt(unit), (nu, d))  # user factors
        q = rng.normal(0.0, self.init_std * np.sqrt(unit), (ni, d))  # item factors
        bu = np.zeros(nu)
        bi = np.zeros(ni)
        by_user = self.train_ratings_  # (nu, ni) CSR
        by_item = by_user.T.tocsr()  # (ni, nu) CSR
        for _ in range(self.iterations):
            self._half_step(by_user, q, bi, p, bu)
            self._half_step(by_item, p, bu, q, bi)
        self.user_factors_, self.user_bias_ = p, bu
        self.item_factors_, self.item_bias_ = q, bi
        return self

    def _half_step(
        self,
        rows: sp.csr_matrix,
        other: np.ndarray,
        other_bias: np.ndarray,
        out: np.ndarray,
        out_bias: np.ndarray,
        block: int = 4096,
    ) -> None:
        """Solve every row's [vector, bias] given the other side fixed (in place).

        The same normal equations as :func:`ridge_fold_in`, batched: with X = [other, 1]
        (n_other, d + 1), each row's Gram sum_{j in row} x_j x_jᵀ is the row of the sparse
        product (binary rows) @ (flattened x_j x_jᵀ), and Xᵀy is (rows holding y) @ X.
        Rows with no observation get A = diag(lambda), b = 0, hence the zero solution.
        """
        d1 = other.shape[1] + 1
        x = np.hstack([other, np.ones((len(other), 1))])  # (n_other, d + 1)
        outer = (x[:, :, None] * x[:, None, :]).reshape(len(x), d1 * d1)  # (n_other, (d+1)^2)
        lam = np.full(d1, float(self.reg_))
        lam[-1] = self.bias_reg_
        for lo in range(0, rows.shape[0], block):
            r = rows[lo : lo + block]  # (b, n_other) CSR of ratings
            y = r.copy()
            y.data = r.data - self.mu_ - other_bias[r.indices]  # residual targets
            binary = r.copy()
            binary.data = np.ones_like(r.data)
            a = np.asarray(binary @ outer).reshape(-1, d1, d1) + np.diag(lam)  # (b, d+1, d+1)
            rhs = np.asarray(y @ x)  # (b, d + 1)
            w = np.linalg.solve(a, rhs[:, :, None])[:, :, 0]
            out[lo : lo + block] = w[:, :-1]
            out_bias[lo : lo + block] = w[:, -1]

    def fold_in(self, user_idx: int, support: Interactions) -> tuple[np.ndarray, float]:
        """The user's (factors (d,), bias) fitted on the history; stores nothing."""
        items, ratings = self._history(user_idx, support)
        if not len(items):
            return np.zeros(self.factors), 0.0
        target = ratings - self.mu_ - self.item_bias_[items]
        return ridge_fold_in(self.item_factors_[items], target, self.reg_, self.bias_reg_)

    def _predict(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        p, b = self.fold_in(user_idx, support)
        return self.mu_ + b + self.item_bias_[item_idx] + self.item_factors_[item_idx] @ p

    def rank_scores_batch(self, tasks: Sequence[Task], item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        folded = [self.fold_in(t.user_idx, t.support) for t in tasks]
        p = np.stack([f[0] for f in folded]) if folded else np.zeros((0, self.factors))
        b = np.array([f[1] for f in folded])
        # (n_tasks, d) @ (d, n_items) + per-user and per-item biases, unclipped like rank_scores
        return (
            self.mu_ + p @ self.item_factors_[item_idx].T + b[:, None] + self.item_bias_[item_idx]
        )


# --- EASE ----------------------------------------------------------------------------------


class EASE(Recommender):
    """Embarrassingly shallow autoencoder (Steck, 2019): score = x_history @ B.

    B = I - P / diag(P) with P = (XᵀX + reg I)^-1 over the items seen in train (X binary
    user x item), i.e. B_ij = -P_ij / P_jj and diag(B) = 0. Items never seen in train score
    -inf. Memory and time grow as n_items^2 and n_items^3: ``max_items`` guards the fit.
    """

    name = "EASE"

    def __init__(
        self, reg: float = 500.0, max_items: int = 20_000, min_rating: float | None = None
    ):
        _check_number("EASE", "reg", reg, above=True)
        self.reg = reg
        self.max_items = max_items
        self.min_rating = min_rating

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        self._set_fitted(dataset, train)
        self.like_ = liked_threshold(dataset, train, self.min_rating)
        x = presence_matrix(dataset, train, self.like_)
        self.active_ = np.flatnonzero(np.asarray(x.sum(0)).ravel() > 0)  # (n_active,)
        n = len(self.active_)
        if n > self.max_items:
            raise MetarecError(
                f"EASE: {n} training items exceed max_items={self.max_items} "
                "(needs an n_items^2 dense matrix); raise max_items if memory allows"
            )
        # float32 above a few thousand items halves memory; reg keeps P well conditioned
        dtype = np.float64 if n <= 5000 else np.float32
        xa = x[:, self.active_]
        g = (xa.T @ xa).toarray().astype(dtype)  # (n_active, n_active) Gram
        g[np.diag_indices(n)] += self.reg
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]  # column j divided by P_jj
        b[np.diag_indices(n)] = 0.0
        self.weights_ = b  # (n_active, n_active)
        self.col_of_item_ = np.full(dataset.n_items, -1, dtype=np.int64)
        self.col_of_item_[self.active_] = np.arange(n)
        return self

    def _history_rows(self, tasks: Sequence[tuple[int, Interactions]]) -> sp.csr_matrix:
        """(n_tasks, n_active) binary CSR of each history's interacted, trained items."""
        rows, cols = [], []
        for r, (u, support) in enumerate(tasks):
            items, ratings = self._history(u, support)
            c = self.col_of_item_[items[interaction_mask(ratings, self.like_)]]
            c = np.unique(c[c >= 0])
            rows.append(np.full(len(c), r))
            cols.append(c)
        rows_a = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        cols_a = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        return sp.csr_matrix(
            (np.ones(len(rows_a)), (rows_a, cols_a)), shape=(len(tasks), len(self.active_))
        )

    def _scores(self, x: sp.csr_matrix, item_idx: np.ndarray) -> np.ndarray:
        col = self.col_of_item_[item_idx]
        known = col >= 0
        out = np.full((x.shape[0], len(item_idx)), -np.inf)
        out[:, known] = np.asarray(x @ self.weights_[:, col[known]], dtype=np.float64)
        return out

    def score(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        return self._scores(self._history_rows([(user_idx, support)]), item_idx)[0]

    def rank_scores_batch(self, tasks: Sequence[Task], item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        return self._scores(self._history_rows([(t.user_idx, t.support) for t in tasks]), item_idx)


# --- item-item neighbourhood ----------------------------------------------------------------


def knn_scores(
    item_users: sp.csr_matrix,
    user_items: sp.csr_matrix,
    item_norm: np.ndarray,
    user_norm: np.ndarray,
    history: np.ndarray,
) -> np.ndarray:
    """(n_items,) item-kNN scores of one history: s_j = Σ_{i ∈ history} sim(i, j) with
    sim(i, j) = Σ_u X_ui X_uj / user_norm_u / (item_norm_i · item_norm_j).

    X is the binary training matrix, given both ways: item_users (n_items, n_users) and
    user_items (n_users, n_items) CSR. Computed through the users rather than from a stored
    item-item matrix: c_u = Σ_{i ∈ history} X_ui / item_norm_i over the users who share an
    item with the history, then s = Xᵀ (c / user_norm) / item_norm. That costs the
    interactions of those users, and memory for X only (an item-item matrix over a 36k-item
    catalogue can hold far more pairs than X has rows). history: (h,) distinct item indices.
    """
    out = np.zeros(user_items.shape[1])
    if not len(history):
        return out
    sub = item_users[history]  # (h, n_users): the users of each history item
    c = np.asarray(sub.T @ (1.0 / item_norm[history])).ravel()  # (n_users,)
    users = np.flatnonzero(c)
    if len(users):
        out = np.asarray(user_items[users].T @ (c[users] / user_norm[users])).ravel()
    return out / item_norm


def knn_norms(
    user_items: sp.csr_matrix, alpha: float, damping: float
) -> tuple[np.ndarray, np.ndarray]:
    """(item_norm (n_items,), user_norm (n_users,)) of :func:`knn_scores`: n_i ** alpha over
    the items' training counts (alpha 0.5: cosine similarity; lower: popular neighbours
    count for more) and d_u ** damping over the users' (damping 1: a co-occurrence in a
    long history counts less). Counts of 0 give norm 1 (their scores are 0 anyway)."""
    n_i = np.maximum(np.asarray(user_items.sum(0)).ravel(), 1.0)
    d_u = np.maximum(np.asarray(user_items.sum(1)).ravel(), 1.0)
    return n_i**alpha, d_u**damping


class ItemKNN(Recommender):
    """Item-based nearest neighbours on the binary (liked) training matrix, no neighbour cap.

    score_j = Σ_{i ∈ liked history} |U_i ∩ U_j|_w / (n_i n_j)^alpha, the co-occurrence
    counted over users weighted 1 / d_u^damping (see :func:`knn_scores`). alpha = 0.5 and
    damping = 0 is plain cosine similarity. Linear in the interactions (no item-item
    matrix), so it scales to catalogues EASE cannot invert. Items never seen in training
    score 0.
    """

    name = "ItemKNN"

    def __init__(self, alpha: float = 0.3, damping: float = 0.0, min_rating: float | None = None):
        _check_number("ItemKNN", "alpha", alpha)
        if alpha > 1.0:
            raise MetarecError(f"ItemKNN: alpha must be in [0, 1], got {alpha}")
        _check_number("ItemKNN", "damping", damping)
        self.alpha = alpha
        self.damping = damping
        self.min_rating = min_rating

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        self._set_fitted(dataset, train)
        self.like_ = liked_threshold(dataset, train, self.min_rating)
        self.user_items_ = presence_matrix(dataset, train, self.like_)  # (n_users, n_items)
        self.item_users_ = self.user_items_.T.tocsr()  # (n_items, n_users)
        self.item_norm_, self.user_norm_ = knn_norms(self.user_items_, self.alpha, self.damping)
        return self

    def median_score(self, n_histories: int = 256) -> float:
        """Median of the nonzero scores that the training histories of up to
        ``n_histories`` users (evenly spaced over those with liked items, so deterministic)
        give every item: the scale of a typical neighbour's score (1.0 when there is none)."""
        x = self.user_items_
        users = np.flatnonzero(np.diff(x.indptr) > 0)
        users = users[np.linspace(0, len(users) - 1, min(n_histories, len(users))).astype(int)]
        nonzero = []
        for u in users:
            history = x.indices[x.indptr[u] : x.indptr[u + 1]]  # the user's liked items
            v = knn_scores(self.item_users_, x, self.item_norm_, self.user_norm_, history)
            nonzero.append(v[v > 0])
        values = np.concatenate(nonzero) if nonzero else np.zeros(0)
        return float(np.median(values)) if len(values) else 1.0

    def _liked_history(self, user_idx: int, support: Interactions) -> np.ndarray:
        items, ratings = self._history(user_idx, support)
        return np.unique(items[interaction_mask(ratings, self.like_)])

    def score(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        h = self._liked_history(user_idx, support)
        s = knn_scores(self.item_users_, self.user_items_, self.item_norm_, self.user_norm_, h)
        return s[item_idx]

    def rank_scores_batch(self, tasks: Sequence[Task], item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        out = np.zeros((len(tasks), len(item_idx)))
        for r, t in enumerate(tasks):
            out[r] = self.score(t.user_idx, t.support, item_idx)
        return out


# --- implicit-feedback factorisation ---------------------------------------------------------


def als_fold_in(
    item_factors: np.ndarray, gram: np.ndarray, items: np.ndarray, reg: float, alpha: float
) -> np.ndarray:
    """Implicit-feedback user vector for a history, item factors fixed (Hu, Koren & Volinsky).

    Every item has preference 0 with confidence 1 except the history's items, preference 1
    with confidence ``alpha``: x = (YᵀY + (alpha - 1) Y_hᵀY_h + reg I)^-1 alpha Y_hᵀ 1,
    the same normal equations as ``implicit``'s ``recalculate_user``.
    item_factors: (n_items, d); gram: YᵀY (d, d); items: (h,) distinct. Returns (d,).
    """
    d = item_factors.shape[1]
    if not len(items):
        return np.zeros(d)
    yh = item_factors[items]  # (h, d)
    a = gram + (alpha - 1.0) * (yh.T @ yh) + reg * np.eye(d)
    return np.linalg.solve(a, alpha * yh.sum(0))


class _FoldInRanker(Recommender):
    """Shared scoring for models ranking by item_vectors @ folded-in user + item bias."""

    reg: float
    alpha: float
    min_rating: float | None

    def _finish_fit(self, item_vectors: np.ndarray, item_bias: np.ndarray) -> None:
        self.item_vectors_ = np.asarray(item_vectors, dtype=np.float64)  # (n_items, d)
        self.item_bias_ = np.asarray(item_bias, dtype=np.float64)  # (n_items,)
        self.gram_ = self.item_vectors_.T @ self.item_vectors_  # (d, d)

    def fold_in(self, user_idx: int, support: Interactions) -> np.ndarray:
        """The user's vector (d,) fitted on the history's interacted items; stores nothing."""
        items, ratings = self._history(user_idx, support)
        items = np.unique(items[interaction_mask(ratings, self.like_)])
        return als_fold_in(self.item_vectors_, self.gram_, items, self.reg, self.alpha)

    def score(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        u = self.fold_in(user_idx, support)
        return self.item_vectors_[item_idx] @ u + self.item_bias_[item_idx]

    def rank_scores_batch(self, tasks: Sequence[Task], item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        d = self.item_vectors_.shape[1]
        u = (
            np.stack([self.fold_in(t.user_idx, t.support) for t in tasks])
            if tasks
            else np.zeros((0, d))
        )
        return u @ self.item_vectors_[item_idx].T + self.item_bias_[item_idx]


class ImplicitALS(_FoldInRanker):
    """Implicit-feedback ALS from the ``implicit`` package, cold users folded in closed form.

    Trained on the binary interaction matrix scaled by ``alpha`` (implicit's confidence);
    :func:`als_fold_in` reproduces ``AlternatingLeastSquares.recalculate_user``.
    """

    name = "ImplicitALS"

    def __init__(
        self,
        factors: int = 64,
        reg: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 0,
        num_threads: int = 0,
        min_rating: float | None = None,
    ):
        _check_number("ImplicitALS", "factors", factors, 1, integer=True)
        if factors > MAX_FACTORS:
            raise MetarecError(f"ImplicitALS: factors must be <= {MAX_FACTORS}, got {factors}")
        _check_number("ImplicitALS", "reg", reg)
        _check_number("ImplicitALS", "alpha", alpha, above=True)
        _check_number("ImplicitALS", "iterations", iterations, 1, integer=True)
        self.min_rating = min_rating
        self.factors = factors
        self.reg = reg
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self.num_threads = num_threads

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        try:
            from implicit.cpu.als import AlternatingLeastSquares
            from threadpoolctl import threadpool_limits
        except ImportError as e:
            raise MetarecError(
                "ImplicitALS needs the 'implicit' package: pip install 'metarec[baselines]'"
            ) from e
        self._set_fitted(dataset, train)
        self.like_ = liked_threshold(dataset, train, self.min_rating)
        x = presence_matrix(dataset, train, self.like_).astype(np.float32)
        # implicit's solver is multithreaded itself; a multithreaded BLAS underneath slows it
        # (and implicit warns about it when the model is built)
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.reg,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=self.num_threads,
            )
            model.fit(x, show_progress=False)
        self._finish_fit(model.item_factors, np.zeros(dataset.n_items))
        self.model_ = model  # kept for cross-checks against implicit's own recalculate_user
        return self


class LightFMRanker(_FoldInRanker):
    """LightFM (WARP loss) with item text/side features; cold users folded in closed form.

    Items are described by [identity, text vector, side features] (rows L1-normalised, as
    LightFM's Dataset does); users by identity only. A cold user's vector is the implicit
    ridge fold-in (:func:`als_fold_in`) against LightFM's item representations, and scores
    add LightFM's item biases. Needs the optional ``lightfm`` package (``lightfm-next``).

    LightFM's cost grows with the non-zero features per item: on MovieLens-100K, 20 epochs
    took ~205 s with 384-d text vectors and ~16 s with ``build_features(pca_dim=32)``.
    """

    name = "LightFM"

    def __init__(
        self,
        no_components: int = 32,
        loss: str = "warp",
        epochs: int = 20,
        learning_rate: float = 0.05,
        item_alpha: float = 0.0,
        use_features: bool = True,
        reg: float = 1.0,
        alpha: float = 10.0,
        seed: int = 0,
        num_threads: int = 1,
        min_rating: float | None = None,
    ):
        if loss not in LIGHTFM_LOSSES:  # LightFM's own bare AssertionError at fit otherwise
            raise MetarecError(f"LightFM: loss {loss!r} is not one of {LIGHTFM_LOSSES}")
        _check_number("LightFM", "no_components", no_components, 1, integer=True)
        if no_components > MAX_FACTORS:
            raise MetarecError(
                f"LightFM: no_components must be in [1, {MAX_FACTORS}], got {no_components}"
            )
        _check_number("LightFM", "epochs", epochs, 1, integer=True)
        _check_number("LightFM", "learning_rate", learning_rate, above=True)
        for name, v in (("item_alpha", item_alpha), ("reg", reg), ("alpha", alpha)):
            _check_number("LightFM", name, v)
        self.min_rating = min_rating
        self.no_components = no_components
        self.loss = loss
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.item_alpha = item_alpha
        self.use_features = use_features
        self.reg = reg
        self.alpha = alpha
        self.seed = seed
        self.num_threads = num_threads

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        try:
            from lightfm import LightFM
        except ImportError as e:
            raise MetarecError(
                "LightFM baseline needs the optional 'lightfm' package (lightfm-next): "
                "pip install 'metarec[baselines]'"
            ) from e
        self._set_fitted(dataset, train)
        self.like_ = liked_threshold(dataset, train, self.min_rating)
        item_features = None
        if self.use_features and features is not None:
            if features.n_items != dataset.n_items:
                raise MetarecError(
                    f"LightFM: FeatureSet has {features.n_items} items, dataset {dataset.n_items}"
                )
            dense = np.hstack(
                [features.item_text.cpu().numpy(), features.item_side.cpu().numpy()]
            ).astype(np.float32)  # (n_items, d_text + d_side)
            f = sp.hstack([sp.identity(dataset.n_items, format="csr"), sp.csr_matrix(dense)])
            norm = np.asarray(abs(f).sum(1)).ravel()
            item_features = sp.csr_matrix(sp.diags(1.0 / norm) @ f, dtype=np.float32)
        model = LightFM(
            no_components=self.no_components,
            loss=self.loss,
            learning_rate=self.learning_rate,
            item_alpha=self.item_alpha,
            random_state=self.seed,
        )
        x = presence_matrix(dataset, train, self.like_).tocoo().astype(np.float32)
        model.fit(x, item_features=item_features, epochs=self.epochs, num_threads=self.num_threads)
        bias, vectors = model.get_item_representations(item_features)
        self._finish_fit(vectors, bias)
        return self


# --- content-based ------------------------------------------------------------------


class TextCosine(Recommender):
    """Cosine between the user's text profile and each item's text vector.

    Profile = mean text vector of the history items the user liked: label > 0 (implicit) or
    rating >= the user's mean history rating (explicit, so any scale works). Items without
    text (zero vectors), and every item for an empty profile, score 0.
    """

    name = "TextCosine"

    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        if features is None:
            raise MetarecError("TextCosine needs a FeatureSet with item text vectors")
        if features.n_items != dataset.n_items:
            raise MetarecError(
                f"TextCosine: FeatureSet has {features.n_items} items, dataset {dataset.n_items}"
            )
        self._set_fitted(dataset, train)
        t = features.item_text.detach().cpu().numpy().astype(np.float64)  # (n_items, d)
        norm = np.linalg.norm(t, axis=1, keepdims=True)
        self.unit_text_ = np.divide(t, norm, out=np.zeros_like(t), where=norm > 0)
        return self

    def profile(self, user_idx: int, support: Interactions) -> np.ndarray:
        """Unit-norm (d,) profile of the history (zeros when nothing liked has text)."""
        items, ratings = self._history(user_idx, support)
        if self.feedback_ == "explicit":
            liked = items[ratings >= ratings.mean()] if len(items) else items
        else:
            liked = items[ratings > 0]
        v = self.unit_text_[liked].mean(0) if len(liked) else np.zeros(self.unit_text_.shape[1])
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    def score(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        return self.unit_text_[item_idx] @ self.profile(user_idx, support)

    def rank_scores_batch(self, tasks: Sequence[Task], item_idx: np.ndarray) -> np.ndarray:
        item_idx = self._check_items(item_idx)
        prof = np.stack([self.profile(t.user_idx, t.support) for t in tasks]) if tasks else None
        if prof is None:
            return np.zeros((0, len(item_idx)))
        return prof @ self.unit_text_[item_idx].T


# Explicit registry: name -> class. Constructed with keyword hyperparameters.
BASELINES: dict[str, type[Recommender]] = {
    "popularity": Popularity,
    "item_mean": ItemMean,
    "item_mean_user_bias": ItemMeanUserBias,
    "biased_mf": BiasedMF,
    "item_knn_rating": ItemKNNRating,
    "ease": EASE,
    "item_knn": ItemKNN,
    "implicit_als": ImplicitALS,
    "lightfm": LightFMRanker,
    "text_cosine": TextCosine,
}


def make_baseline(name: str, **params) -> Recommender:
    """Instantiate ``BASELINES[name](**params)``; unknown names or parameters raise."""
    if name not in BASELINES:
        raise MetarecError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    try:
        return BASELINES[name](**params)
    except TypeError as e:
        raise MetarecError(f"baseline {name!r}: bad parameters ({e})") from None
