"""Evaluate a fitted Recommender on cold-start tasks: per-user metrics, averaged over users.

Metric names follow one scheme: ``<Metric>[@k][ (<scope>)]``.

* No scope: pointwise metrics on each user's query items, from ``score``:
  ``MAE``, ``MAE (rounded)``, ``RMSE``, ``Accuracy``, ``Precision``, ``Recall``, ``F1``, ``Logloss`` (only for
  models with ``predicts_ratings``; Logloss on implicit data only; MAE (rounded), the
  predictions moved to the nearest rating the data holds, on scales of at most
  ``MAX_RATING_LEVELS`` distinct ratings) and ``AUC`` (all models).
  Labels: rating >= ``threshold`` (explicit) or label > 0 (implicit); predictions are
  positive when the predicted rating >= ``threshold`` (explicit) or probability >= 0.5.
* ``(query)``: ranking of the user's query items by ``score``, graded relevance = true
  rating (MeLU/TaNP protocol): ``nDCG@1 (query)``, ``nDCG@3 (query)``, ...
* ``(full)``: ranking of the whole catalogue (or ``candidates``) minus the user's support
  (and ``exclude``'s items: a warm user's training history, which ``recommend`` leaves
  out by default) by ``rank_scores`` (what ``recommend`` ranks by); relevant = the
  positive query items the ranking can hold (:func:`rankable_relevant`): ``HR@10 (full)``, ``Recall@10 (full)``, ``nDCG@10 (full)``, ``MRR (full)``.

Each metric is computed per user; users where it is undefined (NaN: one-class AUC, no
relevant item, ...) are left out of its average and counted in ``EvalResult.n_users``.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from metarec import metrics as M
from metarec.errors import exact_g
from metarec.metrics import is_relevant
from metarec.recommender import Recommender, check_tasks
from metarec.types import IMPLICIT_POSITIVE, Dataset, Interactions, MetarecError, Task

LOWER_IS_BETTER = frozenset({"MAE", "MAE (rounded)", "RMSE", "Logloss"})
# more distinct ratings than this: a continuous scale, with no "nearest rating" to round to
MAX_RATING_LEVELS = 20


def rating_levels(dataset: Dataset) -> np.ndarray | None:
    """(L,) the distinct ratings of an explicit dataset, sorted; None for implicit data or
    a scale of more than MAX_RATING_LEVELS values."""
    if dataset.feedback != "explicit" or not len(dataset.interactions):
        return None
    levels = np.unique(np.asarray(dataset.interactions.rating, dtype=np.float64))
    return levels if len(levels) <= MAX_RATING_LEVELS else None


def greater_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Averages, per-user values and bootstrap intervals of every metric for one model."""

    model: str
    metrics: dict[str, float]  # name -> mean over users where defined (NaN if none)
    per_user: dict[str, np.ndarray]  # name -> (n_tasks,) float64, NaN where undefined
    ci95: dict[str, tuple[float, float]]  # name -> bootstrap percentile 95% interval of the mean
    n_users: dict[str, int]  # name -> users the mean is over
    user_idx: np.ndarray  # (n_tasks,) int64, aligned with per_user
    primary_metric: str
    greater_is_better: bool  # direction of primary_metric

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric]


def ranking_seen(task: Task, exclude: Mapping[int, np.ndarray] | None) -> np.ndarray:
    """Items a task's full ranking leaves out: its support and ``exclude``'s items for its
    user (a warm user's training history)."""
    seen = task.support.item_idx
    if exclude is not None and task.user_idx in exclude:
        seen = np.concatenate([seen, exclude[task.user_idx]])
    return seen


def rankable_relevant(
    task: Task, relevant_from: float, candidates: np.ndarray | None, seen: np.ndarray
) -> np.ndarray:
    """The relevant query items (rated >= ``relevant_from``, :func:`is_relevant`) a task's
    full ranking can hold: among ``candidates`` (None: every item) and not ``seen``
    (:func:`ranking_seen`). One rule for :func:`evaluate`'s hit metrics and the protocol's
    count of users with nothing to find: a query item the ranking leaves out (one a warm
    user had rated before) was counted relevant and a certain miss."""
    q = task.query
    rel = q.item_idx[is_relevant(q.rating, relevant_from)]
    keep = ~np.isin(rel, seen)
    if candidates is not None:
        keep &= np.isin(rel, candidates)
    return rel[keep]


def _candidate_indices(candidates, n_items: int) -> np.ndarray:
    """``candidates`` as sorted unique item indices: integers in [0, n_items). A boolean
    mask was cast to the indices 0 and 1 and floats were truncated, both silently (an
    all-True mask scored nDCG@10 1.0 over two items)."""
    c = np.asarray(candidates)
    if c.dtype == bool:
        raise MetarecError(
            "evaluate: candidates is a boolean mask; pass item indices (np.flatnonzero(mask))"
        )
    if c.size and not np.issubdtype(c.dtype, np.integer):
        raise MetarecError(f"evaluate: candidates must be integer item indices, got {c.dtype}")
    c = c.astype(np.int64).ravel()
    if c.size and (c.min() < 0 or c.max() >= n_items):
        raise MetarecError(f"evaluate: candidates must be item indices in [0, {n_items})")
    return np.unique(c)


def _refuse_queries_in_training(rec: Recommender, tasks: Sequence[Task]) -> None:
    """Refuse tasks whose query rows the model was fitted on: adapted on a history that
    holds the answers, it scored another seed's split at MAE 0.46 and AUC 0.91 (0.72 and
    0.66 on its own), and nothing said so. Rows are matched by (user, item, timestamp):
    an earlier rating of the same item (a log kept with its re-ratings, dedupe = false)
    is the user's history, not the query. A model that did not record its training rows
    (whose fit does not call ``self._set_fitted``, as the contract asks) is not checked;
    a loaded RUN records the rows it serves from."""
    train = getattr(rec, "train_rows_", None)
    if not isinstance(train, Interactions) or not len(train):
        return
    users_of = np.unique(np.array([t.user_idx for t in tasks], dtype=np.int64))
    mine = np.isin(train.user_idx, users_of)
    seen = set(
        zip(
            train.user_idx[mine].tolist(),
            train.item_idx[mine].tolist(),
            train.timestamp[mine].tolist(),
            strict=True,
        )
    )
    rows = users = 0
    if seen:
        for t in tasks:
            q = t.query
            hit = sum(
                (int(t.user_idx), i, s) in seen
                for i, s in zip(q.item_idx.tolist(), q.timestamp.tolist(), strict=True)
            )
            rows, users = rows + hit, users + bool(hit)
    if rows:
        total = sum(len(t.query) for t in tasks)
        raise MetarecError(
            f"evaluate: {rows} of {total} query rows ({users} users) are in {rec.name}'s "
            "training rows: metrics on them would measure the training data, not "
            "prediction; fit the model on the training part of the split these tasks come "
            "from (split.train)"
        )


def check_threshold(dataset: Dataset, threshold: float) -> None:
    """An explicit dataset's relevance threshold must fall in (lowest, highest rating]:
    above it nothing is relevant and every hit metric is NaN (evaluate() returned them
    without a word), at or below it everything is."""
    if isinstance(threshold, bool) or not isinstance(
        threshold, int | float | np.integer | np.floating
    ):
        raise MetarecError(f"threshold must be a number, got {threshold!r}")
    if dataset.feedback != "explicit":
        return
    lo, hi = (float(v) for v in dataset.rating_range)
    rated = dataset.interactions.rating
    # judged as relevance is (metrics.is_relevant, float32): a top rating of 0.7 held as
    # 0.699999988 was said not to reach a threshold of 0.7 that it reaches
    if lo < threshold <= hi and len(rated) and not is_relevant(rated, threshold).any():
        # inside a declared scale (1..10) but above every rating the data holds (1..5):
        # every hit metric was empty, with exit 0
        raise MetarecError(
            f"threshold {threshold:g}: no rating of {dataset.name!r} reaches it (they run "
            f"{float(rated.min()):g}..{float(rated.max()):g}); set threshold to at most "
            f"{float(rated.max()):g}"
        )
    if not lo < threshold <= hi:
        raise MetarecError(
            f"threshold {threshold:g} is outside the ratings of {dataset.name!r} "
            f"({lo:g}..{hi:g}): relevant is rating >= threshold, so "
            + ("every rating would be" if threshold <= lo else "no rating would be relevant")
            + f"; set threshold to a value in ({lo:g}, {hi:g}]"
        )


def evaluate(
    rec: Recommender,
    dataset: Dataset,
    tasks: Sequence[Task],
    *,
    threshold: float = 4.0,
    ks: Sequence[int] = (5, 10, 20),
    query_ks: Sequence[int] = (1, 3, 5),
    full_catalogue: bool = True,
    candidates: np.ndarray | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
    primary_metric: str | None = None,
    exclude: Mapping[int, np.ndarray] | None = None,
) -> EvalResult:
    """Score every task's query with ``rec`` and compute the metrics in this module's scheme.

    ``candidates`` restricts the full-catalogue ranking (e.g. to cold items); relevant items
    outside it are dropped. ``exclude`` maps a user index to more items its full ranking
    leaves out beside the support (a warm user's training history, as ``recommend`` does).
    ``bootstrap`` resamples users (0 disables intervals), each metric from its own seeded
    stream. The primary metric defaults to ``nDCG@10 (full)`` when computed, else the
    largest query nDCG.
    """
    tasks = check_tasks(tasks, "evaluate")
    if not tasks:
        raise MetarecError("evaluate: no tasks to evaluate")
    # a custom model's slips, said here in a line: an unfitted built-in was an
    # AttributeError from deep inside, a fit without `return self` scored None (probe 164)
    if not isinstance(rec, Recommender):
        raise MetarecError(
            f"evaluate: expected a fitted Recommender, got {type(rec).__name__} (does its "
            "fit return self?)"
        )
    rec._check_fitted()
    # each a one-line error here, not a TypeError from a slice (ks=[2.5]) or a ValueError
    # from range() (batch_size=0); bootstrap=-1 had been taken as 0
    for name, values, least in (("ks", ks, 1), ("query_ks", query_ks, 1)):
        for k in values:
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < least:
                raise MetarecError(f"evaluate: {name} must hold integers >= 1, got {k!r}")
    for name, v, least in (
        ("batch_size", batch_size, 1),
        ("bootstrap", bootstrap, 0),
        ("seed", seed, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < least:
            raise MetarecError(f"evaluate: {name} must be an integer >= {least}, got {v!r}")
    check_threshold(dataset, threshold)
    if full_catalogue and not ks:
        raise MetarecError("evaluate: ks is empty; give the full ranking's cut-offs")
    if not full_catalogue and not query_ks:
        raise MetarecError("evaluate: query_ks is empty and full_catalogue is off: no ranking")
    explicit = dataset.feedback == "explicit"
    levels = rating_levels(dataset)
    pos_threshold = threshold if explicit else IMPLICIT_POSITIVE

    def liked(rating: np.ndarray) -> np.ndarray:
        return is_relevant(rating, pos_threshold)

    # graded nDCG's gains are the ratings, moved up so that none is negative (a -2..2
    # scale gave nDCG below 0); scales starting at 0 or above keep their raw gains
    gain_shift = min(float(dataset.rating_range[0]), 0.0) if explicit else 0.0
    _refuse_queries_in_training(rec, tasks)
    n = len(tasks)
    off_scale = 0  # predicted ratings outside the rating scale, over every query
    cols: dict[str, np.ndarray] = {}

    def col(name: str) -> np.ndarray:
        return cols.setdefault(name, np.full(n, np.nan))

    # --- query items: pointwise and within-query ranking, from score ----------------------
    preds = rec.score_many(tasks, [t.query.item_idx for t in tasks])
    if len(preds) != n:
        raise MetarecError(f"{rec.name}: score_many returned {len(preds)} arrays for {n} tasks")
    for i, (t, pred) in enumerate(zip(tasks, preds, strict=True)):
        y = t.query.rating.astype(np.float64)
        pred = np.asarray(pred, dtype=np.float64)
        if pred.shape != y.shape:
            raise MetarecError(f"{rec.name}: score returned {pred.shape} for {y.shape} query items")
        if np.isnan(pred).any():
            # a NaN is no prediction: left in, MAE and AUC dropped the user as "undefined"
            # and the classification metrics counted a negative, flattering a broken model
            raise MetarecError(f"{rec.name}: score returned NaN for user index {t.user_idx}")
        if rec.predicts_ratings and not np.isfinite(pred).all():
            # a rating (or probability) of +-inf made MAE/RMSE inf and the cell "inf ± nan";
            # ranking-only scores may be -inf ("never"), a predicted rating may not
            raise MetarecError(
                f"{rec.name}: score returned an infinite rating for user index {t.user_idx}"
            )
        if rec.predicts_ratings and explicit:
            lo, hi = dataset.rating_range
            off_scale += int(((pred < lo) | (pred > hi)).sum())
        y_pos = liked(t.query.rating)
        col("AUC")[i] = M.auc(y_pos, pred)
        if rec.predicts_ratings:
            p_pos = liked(pred)  # the prediction cut as the truth is
            if explicit:
                col("MAE")[i] = M.mae(y, pred)
                if levels is not None:
                    col("MAE (rounded)")[i] = M.mae_rounded(y, pred, levels)
                col("RMSE")[i] = M.rmse(y, pred)
            else:
                col("Logloss")[i] = M.logloss(y_pos, pred)
            col("Accuracy")[i] = M.accuracy(y_pos, p_pos)
            col("Precision")[i] = M.precision(y_pos, p_pos)
            col("Recall")[i] = M.recall(y_pos, p_pos)
            col("F1")[i] = M.f1(y_pos, p_pos)
        for k in query_ks:
            col(f"nDCG@{k} (query)")[i] = M.ndcg_graded_at_k(y - gain_shift, pred, k)

    n_pred = sum(len(t.query) for t in tasks)
    if off_scale > n_pred / 2:
        # a model on another scale (0-100, or one that forgot an offset) was scored as if
        # on this one, silently (MAE 68 on 1-5, probe 164); a regressor that is not clipped
        # strays outside now and then, which this leaves alone
        warnings.warn(
            f"{rec.name}: {off_scale} of its {n_pred} predicted ratings lie outside the "
            f"rating scale {exact_g(dataset.rating_range[0])}..{exact_g(dataset.rating_range[1])}"
            ": MAE, RMSE and the cut at the threshold read them as ratings on it",
            stacklevel=2,
        )

    if not explicit:
        # an implicit query of positives only (purchases, plays) has nothing to tell apart:
        # its query nDCG and Precision came out 1.0 whatever the scores, Accuracy equal to
        # Recall, and predicting "yes" for everything won; undefined for that user, not 1
        # (AUC is undefined there already)
        no_negative = np.array([liked(t.query.rating).all() for t in tasks], dtype=bool)
        for name in cols:
            cols[name][no_negative] = np.nan

    # --- full catalogue: rank everything but the support, from rank_scores_batch --------
    if full_catalogue:
        cand = (
            np.arange(dataset.n_items, dtype=np.int64)
            if candidates is None
            else _candidate_indices(candidates, dataset.n_items)
        )
        kmax = max(ks)
        tie_rng = np.random.default_rng([seed, 0x71E])
        for lo in range(0, n, batch_size):
            chunk = tasks[lo : lo + batch_size]
            s = np.asarray(rec.rank_scores_batch(chunk, cand), dtype=np.float64)
            if s.shape != (len(chunk), len(cand)):
                raise MetarecError(f"{rec.name}: rank_scores_batch returned shape {s.shape}")
            if np.isnan(s).any():  # -inf is a valid "never" (EASE's untrained items); NaN is not
                bad = chunk[int(np.flatnonzero(np.isnan(s).any(1))[0])]
                raise MetarecError(
                    f"{rec.name}: rank_scores returned NaN for user index {bad.user_idx}"
                )
            # sort on -score, ties broken at random (seeded). recommend() keeps catalogue
            # order within a tie, but for evaluation that order is information: ML-100K's
            # item ids follow popularity, so an all-tied scorer (popularity on cold items)
            # scored nDCG@10 0.26 on item cold start by id order alone
            tie = tie_rng.random(s.shape, dtype=np.float32)  # (batch, n_cand)
            order = np.lexsort((tie, -s), axis=1)  # (batch, n_cand) positions
            for j, t in enumerate(chunk):
                i = lo + j
                seen = ranking_seen(t, exclude)
                excluded = np.isin(cand[order[j]], seen)
                ranked = cand[order[j][~excluded]]  # (n_cand - |support ∩ cand|,)
                relevant = rankable_relevant(t, pos_threshold, cand, seen)
                top = ranked[:kmax]
                for k in ks:
                    col(f"HR@{k} (full)")[i] = M.hr_at_k(top, relevant, k)
                    col(f"Recall@{k} (full)")[i] = M.recall_at_k(top, relevant, k)
                    col(f"nDCG@{k} (full)")[i] = M.ndcg_at_k(top, relevant, k)
                col("MRR (full)")[i] = M.mrr(ranked, relevant)

    means, cis, counts = {}, {}, {}
    for name, v in cols.items():
        ok = v[~np.isnan(v)]
        counts[name] = len(ok)
        means[name] = float(ok.mean()) if len(ok) else float("nan")
        # a stream per metric (seed, name): one stream shared in column order gave two
        # models with the same per-user values different intervals, and a metric's
        # interval moved when another column was added or dropped
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        cis[name] = _bootstrap_ci(ok, bootstrap, rng)
    if primary_metric is None:
        full_name = f"nDCG@{10 if 10 in ks else max(ks)} (full)"
        primary_metric = full_name if full_name in means else f"nDCG@{max(query_ks)} (query)"
    if primary_metric not in means:
        raise MetarecError(f"evaluate: primary metric {primary_metric!r} was not computed")
    return EvalResult(
        model=rec.name,
        metrics=means,
        per_user=cols,
        ci95=cis,
        n_users=counts,
        user_idx=np.array([t.user_idx for t in tasks], dtype=np.int64),
        primary_metric=primary_metric,
        greater_is_better=greater_is_better(primary_metric),
    )


def _bootstrap_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile 95% interval of the mean over users resampled with replacement."""
    if n_boot <= 0 or len(values) == 0:
        return (float("nan"), float("nan"))
    means = np.empty(n_boot)
    # chunks keep the (chunk, n_users) index matrix small for large user counts
    step = max(1, 2_000_000 // len(values))
    for lo in range(0, n_boot, step):
        idx = rng.integers(0, len(values), size=(min(step, n_boot - lo), len(values)))
        means[lo : lo + len(idx)] = values[idx].mean(1)
    lo_q, hi_q = np.percentile(means, [2.5, 97.5])
    return (float(lo_q), float(hi_q))


def aggregate_seeds(results: Sequence[EvalResult]) -> dict[str, tuple[float, float]]:
    """Metric name -> (mean, sample std) across runs with different seeds (std 0 for one run)."""
    if not results:
        raise MetarecError("aggregate_seeds: no results")
    names = list(results[0].metrics)
    for r in results[1:]:
        if set(r.metrics) != set(names):
            raise MetarecError("aggregate_seeds: results report different metrics")
    out = {}
    for name in names:
        v = np.array([r.metrics[name] for r in results], dtype=np.float64)
        out[name] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out
