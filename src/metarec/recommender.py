"""The Recommender contract every baseline and meta-learned model implements.

The contract is written once, here; implementations inherit these docstrings. It follows
the cold-start episode of :class:`metarec.types.Task`: a model is fitted on the training
interactions, then for each user it *adapts* to that user's support set and scores items.
Adaptation is a pure computation: ``score``/``recommend`` never change the fitted model,
so the same fitted object can serve many users, in any order, from many threads.

A user's *history* is the user's rows in ``train`` in time order (or a model's own order:
:meth:`Recommender._history_order`; none for a cold user, or a user index beyond the training
users) followed by the ``support`` passed in (an item in both counts once, with the
support's rating); models adapt to the history, so warm and cold users go through the same
code path.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Self

import numpy as np
import scipy.sparse as sp

from metarec.errors import exact_g
from metarec.features import FeatureSet
from metarec.metrics import first_occurrences
from metarec.types import Dataset, Interactions, MetarecError, Task


class Recommender(abc.ABC):
    """Base class of all metarec recommenders.

    Attributes
    ----------
    name : str
        Short display name, used as the model's key in result tables (e.g. ``"EASE"``).
    predicts_ratings : bool
        True when :meth:`score` is on the dataset's scale: a predicted rating on the rating
        scale for explicit data, a probability in [0, 1] for implicit data. Evaluation then
        also reports the pointwise metrics (MAE, RMSE, Accuracy, Precision, Recall, F1,
        Logloss). False for models that only rank (popularity, EASE, ALS): their ``score``
        is an arbitrary relevance score and only order-based metrics are reported for them.
    personalized : bool
        True when the ranking depends on the user's history (False for popularity and
        item-mean models, whose ranking is the same for everyone).
    """

    name: str = "recommender"
    predicts_ratings: bool = False
    personalized: bool = True

    # set by _set_fitted
    n_users_: int = 0
    # users a view knows beyond the fitted ones (MetaRecommender.with_new_users): indices
    # n_users_ + 1 .. n_users_ + new_users_, each with their own side features
    new_users_: int = 0
    n_items_: int = 0

    # --- the contract ------------------------------------------------------------------

    @abc.abstractmethod
    def fit(
        self, dataset: Dataset, train: Interactions, features: FeatureSet | None = None
    ) -> Self:
        """Fit the model on the training interactions.

        Parameters
        ----------
        dataset : Dataset
            The whole dataset; used for its sizes (``n_users``, ``n_items``), its feedback
            kind and rating range, never for its interactions (which include test data).
        train : Interactions
            The interactions the model may learn from (``Split.train``).
        features : FeatureSet, optional
            Item/user feature matrices; required by content-based models, ignored by others.

        Returns
        -------
        Recommender
            ``self``, fitted. Fitting is deterministic given the constructor's ``seed``.

        Notes
        -----
        An implementation calls ``self._set_fitted(dataset, train)`` before it learns: it
        records the sizes every check reads, the training rows that form each user's
        history (:meth:`_history`) and that evaluation refuses to score as queries (a model
        fitted on test rows is refused, not flattered), and it marks the model fitted.
        """

    @abc.abstractmethod
    def score(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        """Adapt to one user's history, then score the given items.

        Parameters
        ----------
        user_idx : int
            The user's index; the user may be absent from ``train`` (cold start).
        support : Interactions
            The user's support interactions (possibly empty), added to the user's training
            rows to form the history the model adapts to.
        item_idx : np.ndarray
            (n,) int64 items to score.

        Returns
        -------
        np.ndarray
            (n,) float64 scores, aligned with ``item_idx``. A predicted rating on the rating
            scale for explicit data (probability for implicit) when ``predicts_ratings``,
            else a relevance score where larger means more relevant. The model is unchanged.
        """

    def rank_scores(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        """Scores used to *rank* items for :meth:`recommend` (same shapes as :meth:`score`).

        Defaults to :meth:`score`. Models whose rating predictions rank badly over the whole
        catalogue (e.g. a rating regressor that ranks obscure items with one 5-star rating
        first) override this with a dedicated ranking score; ``recommend`` and the
        full-catalogue metrics always use this method, the pointwise metrics use ``score``.
        """
        return self.score(user_idx, support, item_idx)

    def score_many(
        self, tasks: Sequence[Task], item_idx_per_task: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """:meth:`score` for several tasks (each task's support, each its own items).

        The default loops over tasks; models with a vectorised path override it, and must
        return what the loop would, up to float32 rounding (a batched matrix product sums
        in another order: MetaRecommender's differ by ~5e-7 on a 1-5 scale; the contract
        tests compare at 1e-5).
        """
        tasks = check_tasks(tasks, "score_many")
        if len(tasks) != len(item_idx_per_task):
            raise MetarecError(
                f"score_many: {len(tasks)} tasks but {len(item_idx_per_task)} item arrays"
            )
        return [
            self.score(t.user_idx, t.support, it)
            for t, it in zip(tasks, item_idx_per_task, strict=True)
        ]

    def rank_scores_batch(self, tasks: Sequence[Task], item_idx: np.ndarray) -> np.ndarray:
        """:meth:`rank_scores` of the same items for several tasks: (n_tasks, n_items) float64.

        The default loops; models that can score a batch with matrix products override it
        (the full-catalogue evaluation calls this with every item).
        """
        tasks = check_tasks(tasks, "rank_scores_batch")
        item_idx = np.asarray(item_idx, dtype=np.int64)
        out = np.empty((len(tasks), len(item_idx)), dtype=np.float64)
        for row, t in enumerate(tasks):
            out[row] = self._checked_rank_scores(t.user_idx, t.support, item_idx)
        return out

    def _checked_rank_scores(
        self, user_idx: int, support: Interactions, item_idx: np.ndarray
    ) -> np.ndarray:
        """:meth:`rank_scores` held to its contract: one score per item. Written into a
        row of a batch, one number broadcast over every item (a random ranking: nDCG@10
        0.0018 for 0.1002) and a wrong length was numpy's broadcast error naming no model
        (probe 164)."""
        s = np.asarray(self.rank_scores(user_idx, support, item_idx), dtype=np.float64)
        if s.shape != (len(item_idx),):
            raise MetarecError(
                f"{self.name}: rank_scores returned shape {s.shape} for {len(item_idx)} items"
            )
        return s

    def recommend(
        self,
        user_idx: int,
        support: Interactions,
        k: int = 10,
        candidates: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for a user, ranked by :meth:`rank_scores`.

        Parameters
        ----------
        user_idx, support
            As in :meth:`score`.
        k : int
            How many items to return (fewer if fewer candidates remain).
        candidates : np.ndarray, optional
            Item indices to choose from; all items when None.
        exclude : np.ndarray, optional
            Item indices never returned; when None, the user's history: their training
            items (a warm user's) and the support's, as ``metarec recommend`` and the
            server leave them out (pass an empty array to exclude nothing).

        Returns
        -------
        (item_idx, scores) : tuple of np.ndarray
            (k,) int64 items, best first, and their (k,) float64 ranking scores. Ties are
            broken by position in ``candidates`` (lower item index first by default).
        """
        self._check_fitted()
        self._check_support(support)
        check_k(k)
        cand = first_occurrences(self._candidates(candidates))
        # checked like candidates: a bool mask or 19.9 was cast to indices (0/1, 19) silently.
        # The default had been the support alone: a warm user asked with an empty support
        # got 7 of 10 items they had rated in training (review 160)
        excl = (
            self._history(user_idx, support)[0] if exclude is None else self._check_items(exclude)
        )
        cand = cand[~np.isin(cand, excl)]
        s = self._checked_rank_scores(user_idx, support, cand)
        if np.isnan(s).any():  # evaluate refuses them; NaN items sank to the end unsaid
            raise MetarecError(f"{self.name}: rank_scores returned NaN for user index {user_idx}")
        top = top_k(s, k)
        return cand[top], s[top]

    # --- shared helpers for implementations --------------------------------------------

    def _set_fitted(self, dataset: Dataset, train: Interactions) -> None:
        """Record sizes and the training rows per user (the warm part of each history)."""
        if len(train) and (train.item_idx.max() >= dataset.n_items or train.item_idx.min() < 0):
            raise MetarecError(f"{self.name}: train has item indices outside the dataset")
        if len(train) and (train.user_idx.max() >= dataset.n_users or train.user_idx.min() < 0):
            raise MetarecError(f"{self.name}: train has user indices outside the dataset")
        self.n_users_ = dataset.n_users
        self.n_items_ = dataset.n_items
        # the rows themselves (a reference, no copy): evaluate refuses tasks whose query
        # rows are among them (metarec.evaluate._refuse_queries_in_training)
        self.train_rows_ = train
        self.feedback_ = dataset.feedback
        self.rating_range_ = tuple(float(x) for x in dataset.rating_range)
        self._index_training_rows(train)

    def _index_training_rows(self, train: Interactions) -> None:
        """The per-user lookup of ``train`` that :meth:`_history` reads (needs n_users_,
        n_items_): ``train_ratings_``, the (n_users, n_items) CSR of training ratings
        (one entry per user and item, the latest row), and ``train_order_``, a CSR of the same
        pattern holding each row's 1-based position in :meth:`_history_order` (1-based so
        no stored value is an implicit zero). A CSR row's columns are sorted by item index,
        and a history's order matters: models that adapt on at most
        ``ModelConfig.max_support`` interactions keep the history's end."""
        self.train_ratings_, self.train_order_ = self._rows_index(train)

    def _rows_index(self, train: Interactions) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(ratings, order): the two CSRs :meth:`_index_training_rows` describes, of any
        set of training rows (:meth:`_history` reads another set given as ``rows``)."""
        shape = (self.n_users_, self.n_items_)
        order = self._history_order(train)
        # one row per (user, item), the latest in history order: a CSR sums repeated
        # coordinates, and a 5 and a 4 of one item (a log fitted without dedupe) became
        # one rating of 9 in a history
        key = train.user_idx[order].astype(np.int64) * max(self.n_items_, 1)
        key += train.item_idx[order]
        _, from_end = np.unique(key[::-1], return_index=True)
        rows = order[np.sort(len(order) - 1 - from_end)]  # train rows, in history order
        coords = (train.user_idx[rows], train.item_idx[rows])
        ratings = sp.csr_matrix((train.rating[rows].astype(np.float64), coords), shape=shape)
        position = np.arange(1, len(rows) + 1, dtype=np.float64)
        return ratings, sp.csr_matrix((position, coords), shape=shape)

    def _history_order(self, train: Interactions) -> np.ndarray:
        """(n,) int64 permutation of ``train``'s rows: the order of a user's training rows
        in a history, the last kept longest. Time order; ties keep their order in train."""
        return np.argsort(train.timestamp, kind="stable")

    def _check_fitted(self) -> None:
        if not self.n_items_:
            raise MetarecError(
                f"{self.name}: call fit() before scoring (a Recommender's fit records the "
                "data with self._set_fitted(dataset, train))"
            )

    def _history(
        self,
        user_idx: int,
        support: Interactions,
        rows: tuple[sp.csr_matrix, sp.csr_matrix] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, ratings) of the user's training rows (in :meth:`_history_order`), then the
        support rows; ``rows``: another set of training rows (:meth:`_rows_index`) than the
        ones fit indexed."""
        self._check_fitted()
        self._check_user(user_idx)
        self._check_support(support)
        items = np.asarray(support.item_idx, dtype=np.int64)
        ratings = np.asarray(support.rating, dtype=np.float64)
        if len(items) and (items.min() < 0 or items.max() >= self.n_items_):
            raise MetarecError(f"{self.name}: support has item indices outside the catalogue")
        self._check_support_ratings(ratings)
        if 0 <= user_idx < self.n_users_:
            r, pos = rows if rows is not None else (self.train_ratings_, self.train_order_)
            a, b = r.indptr[user_idx], r.indptr[user_idx + 1]
            if b > a:
                # both CSRs share one pattern (built from the same coordinates)
                order = np.argsort(pos.data[a:b], kind="stable")
                cols, vals = r.indices[a:b][order], r.data[a:b][order]
                # a warm protocol may put the support in train too: count such items once
                keep = ~np.isin(cols, items)
                items = np.concatenate([cols[keep].astype(np.int64), items])
                ratings = np.concatenate([vals[keep], ratings])
        return items, ratings

    def _check_support(self, support: object) -> None:
        # None or a list of pairs reached support.item_idx: an AttributeError
        if not isinstance(support, Interactions):
            raise MetarecError(
                f"{self.name}: support must be an Interactions (Interactions.empty() for "
                f"none), got {type(support).__name__}"
            )

    def _check_user(self, user_idx: int) -> None:
        """A training user (0..n_users-1) or the cold user n_users (anyone else), or one of
        a view's new users (n_users+1 .. n_users+new_users)."""
        if isinstance(user_idx, bool) or not isinstance(user_idx, int | np.integer):
            raise MetarecError(f"{self.name}: user_idx must be an integer, got {user_idx!r}")
        top = self.n_users_ + self.new_users_
        if not 0 <= user_idx <= top:
            raise MetarecError(
                f"{self.name}: user_idx {user_idx} is outside 0..{top} "
                f"({self.n_users_} = a user the model was not fitted on)"
            )

    def _check_support_ratings(self, ratings: np.ndarray) -> None:
        """Support ratings the model can adapt on: finite, and on the fitted rating scale
        for explicit data (:func:`off_scale`). Outside it adaptation returned NaN scores
        without a word."""
        if not len(ratings):
            return
        if not np.isfinite(ratings).all():
            raise MetarecError(f"{self.name}: a support rating is not a finite number")
        if getattr(self, "feedback_", None) == "explicit":
            bad = off_scale(ratings, self.rating_range_)
            if len(bad):
                lo, hi = self.rating_range_
                raise MetarecError(
                    f"{self.name}: support rating {exact_g(bad[0])} is outside the fitted "
                    f"rating scale [{lo:g}, {hi:g}]"
                )

    def _check_items(self, item_idx: np.ndarray) -> np.ndarray:
        # every scoring path checks its items first: an unfitted baseline's score() died
        # on its first fitted attribute (AttributeError: 'rating_range_')
        self._check_fitted()
        raw = np.asarray(item_idx)
        if raw.ndim != 1:
            raise MetarecError(f"{self.name}: item indices must be 1-D, got shape {raw.shape}")
        if raw.dtype.kind == "f" and len(raw) and not np.all(np.mod(raw, 1) == 0):
            # int64 conversion would truncate 0.7 to item 0
            raise MetarecError(f"{self.name}: item indices must be integers, got {raw[:3]}")
        if raw.dtype.kind not in "iuf" and len(raw):
            raise MetarecError(f"{self.name}: item indices must be integers, got {raw.dtype}")
        item_idx = raw.astype(np.int64)
        if len(item_idx) and (item_idx.min() < 0 or item_idx.max() >= self.n_items_):
            raise MetarecError(f"{self.name}: item indices outside 0..{self.n_items_ - 1}")
        return item_idx

    def _candidates(self, candidates: np.ndarray | None) -> np.ndarray:
        if candidates is None:
            return np.arange(self.n_items_, dtype=np.int64)
        return self._check_items(candidates)


def check_tasks(tasks: Sequence[Task], where: str) -> tuple[Task, ...]:
    """``tasks`` as a tuple of :class:`~metarec.types.Task` objects (a generator read once,
    here): a (user, support) tuple or a frame died on ``t.user_idx`` as a bare
    AttributeError deep inside."""
    tasks = tuple(tasks)
    bad = next((t for t in tasks if not isinstance(t, Task)), None)
    if bad is not None:
        raise MetarecError(
            f"{where}: tasks must be metarec.types.Task objects (user_idx, support, query), "
            f"got {type(bad).__name__}"
        )
    return tasks


def check_k(k: int) -> None:
    """``recommend``'s k: an integer >= 1 (a bool, 2.5 or "3" is a one-line error)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise MetarecError(f"recommend: k must be an integer >= 1, got {k!r}")


def off_scale(ratings: np.ndarray, rating_range: tuple[float, float]) -> np.ndarray:
    """The ratings outside ``rating_range``, compared in float32, the precision ratings
    are held in (the range itself came from float32 ratings): in float64 a support's 0.7
    sat below a range of [0.7f, ...] and the scale's own bottom was refused."""
    lo, hi = (np.float32(x) for x in rating_range)
    r32 = np.asarray(ratings).astype(np.float32)
    return np.asarray(ratings)[(r32 < lo) | (r32 > hi)]


def top_k(scores: np.ndarray, k: int, finite: bool = False) -> np.ndarray:
    """Positions of the k largest scores, best first; ties keep the lower position first:
    exactly ``np.argsort(-scores, kind="stable")[:k]``. ``finite``: leave out -inf scores
    (excluded items), so fewer than k may come back.

    One place for every top-k (Recommender.recommend, Predictor.recommend_many, serve):
    a full sort of a 36k catalogue per user was a tenth of recommend's time, and serve's
    argpartition shortcut picked an arbitrary member of a tie at the k-th place."""
    scores = np.asarray(scores)
    k = min(k, int(np.isfinite(scores).sum()) if finite else len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    neg = -scores
    if k < len(scores) // 4:
        kth = np.partition(neg, k - 1)[k - 1]  # the k-th best score, negated
        if np.isnan(kth):  # fewer than k scores are numbers: the sort's order for NaN
            return np.argsort(neg, kind="stable")[:k].astype(np.int64)
        # every score strictly better than the k-th, then the tied ones in position order
        better = np.flatnonzero(neg < kth)
        tied = np.flatnonzero(neg == kth)[: k - len(better)]
        part = np.concatenate([better, tied])
        return part[np.lexsort((part, neg[part]))].astype(np.int64)
    return np.argsort(neg, kind="stable")[:k].astype(np.int64)
