"""Evaluation metrics as pure numpy functions, one user at a time.

Three families, each named with its cut-off where it has one:

* pointwise, on a user's query items: :func:`accuracy`, :func:`precision`, :func:`recall`,
  :func:`f1` (on boolean labels), :func:`auc`, :func:`logloss`, :func:`mae`, :func:`rmse`,
  :func:`mae_rounded` (each prediction moved to the nearest rating the scale holds);
* ranking *within* the query items with graded relevance (MeLU / TaNP protocol):
  :func:`ndcg_graded_at_k`, relevance = the true rating, ideal order = true ratings sorted;
* full-catalogue ranking, from a ranked list of item indices and the set of relevant items:
  :func:`hr_at_k`, :func:`recall_at_k`, :func:`ndcg_at_k` (binary gains), :func:`mrr`.

Undefined values are ``NaN``, never 0: AUC with one class, precision with no predicted
positive, recall or any full-catalogue metric with an empty relevant set, nDCG whose ideal
DCG is 0. Callers (``metarec.evaluate``) exclude NaN users from averages and count them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.stats import rankdata

from metarec.types import MetarecError


def is_relevant(rating: np.ndarray, threshold: float) -> np.ndarray:
    """Which ``rating`` values count as relevant (or liked) at ``threshold`` (bool, same
    shape). Ratings are held in float32: compared in float64, a 0.7 rating sat below a 0.7
    threshold (0.699999988) and the one item a user liked was not relevant. Evaluation's
    relevance, its cut of predictions into positives (rating >= 4, probability >= 0.5)
    and fit's like threshold all compare through this one test: a prediction cut in
    float64 took an exact 0.7 prediction of a 0.7 rating for a negative."""
    return np.asarray(rating, dtype=np.float32) >= np.float32(threshold)


def _pair(y_true, y_pred, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Two equal 1-D arrays of numbers. A NaN is refused, as scikit-learn refuses it: it
    had been rounded to a rating level (mae_rounded 2.0 for NaN predictions), ranked as
    a score (nDCG 0.95) or turned AUC NaN without a word; ±inf stays a score ("never")."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise MetarecError(f"{what}: y_true {t.shape} and y_pred {p.shape} must be equal 1-D")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.dtype.kind not in "biuf":
            raise MetarecError(f"{what}: {name} must hold numbers, got dtype {a.dtype}")
        if a.dtype.kind == "f" and np.isnan(a).any():
            raise MetarecError(
                f"{what}: {name} holds NaN at position {int(np.flatnonzero(np.isnan(a))[0])}"
            )
    return t, p


def _labels(t: np.ndarray, what: str) -> np.ndarray:
    """Boolean labels from bool or 0/1 values; anything else is refused: -1/1 labels made
    -1 a positive (AUC NaN), and a label of 5 gave logloss a negative cross-entropy."""
    if t.dtype == bool:
        return t
    off = ~np.isin(t, (0, 1))
    if off.any():
        raise MetarecError(f"{what}: labels must be 0/1 or bool, got {t[off][0].item()!r}")
    return t.astype(bool)


def _check_k(k: object, what: str) -> None:
    # a cut-off of 2.5 failed inside a slice, True was taken for 1
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise MetarecError(f"{what}: k must be an integer >= 1, got {k!r}")


# --- classification on boolean labels --------------------------------------------------


def _confusion(y_true, y_pred) -> tuple[int, int, int, int]:
    t, p = _pair(y_true, y_pred, "confusion")
    t = _labels(t, "confusion (y_true)")
    p = _labels(p, "confusion (y_pred)")
    return int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum()), int((~t & ~p).sum())


def accuracy(y_true, y_pred) -> float:
    """Share of correct boolean predictions; NaN for no items."""
    tp, fp, fn, tn = _confusion(y_true, y_pred)
    n = tp + fp + fn + tn
    return (tp + tn) / n if n else float("nan")


def precision(y_true, y_pred) -> float:
    """TP / (TP + FP); NaN when nothing is predicted positive."""
    tp, fp, _, _ = _confusion(y_true, y_pred)
    return tp / (tp + fp) if tp + fp else float("nan")


def recall(y_true, y_pred) -> float:
    """TP / (TP + FN); NaN when there is no true positive."""
    tp, _, fn, _ = _confusion(y_true, y_pred)
    return tp / (tp + fn) if tp + fn else float("nan")


def f1(y_true, y_pred) -> float:
    """2TP / (2TP + FP + FN); NaN when there are neither true nor predicted positives."""
    tp, fp, fn, _ = _confusion(y_true, y_pred)
    d = 2 * tp + fp + fn
    return 2 * tp / d if d else float("nan")


# --- scores against labels --------------------------------------------------------------


def auc(y_true, scores) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count half.

    Computed from average ranks (Mann-Whitney U). NaN when the labels hold one class only.
    """
    t, s = _pair(y_true, scores, "auc")
    t = _labels(t, "auc")
    n_pos = int(t.sum())
    n_neg = len(t) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks: a tie between a positive and a negative counts half
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def logloss(y_true, prob, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    t, p = _pair(y_true, prob, "logloss")
    if len(t) == 0:
        return float("nan")
    if ((p < 0) | (p > 1)).any():
        # a score is not a probability: 1.5 and 2.0 were clipped to 1 and gave 8.06
        raise MetarecError(
            f"logloss: prob must be in [0, 1], got {float(p[(p < 0) | (p > 1)][0])!r}"
        )
    t = _labels(t, "logloss").astype(np.float64)
    p = np.clip(p.astype(np.float64), eps, 1 - eps)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))


def mae(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred, "mae")
    return float(np.mean(np.abs(t - p))) if len(t) else float("nan")


def nearest_level(values, levels) -> np.ndarray:
    """Each value moved to the nearest of ``levels`` (sorted, distinct, (L,)); a value
    exactly halfway between two levels goes to the lower one."""
    v = np.asarray(values, dtype=np.float64)
    lv = np.asarray(levels, dtype=np.float64)
    # NaN levels fail the order check by name: `diff <= 0` is False for NaN
    if lv.ndim != 1 or len(lv) == 0 or not (np.diff(lv) > 0).all() or np.isnan(lv).any():
        raise MetarecError("nearest_level: levels must be sorted, distinct and non-empty")
    if len(lv) == 1:
        return np.full(v.shape, lv[0])
    hi = np.clip(np.searchsorted(lv, v), 1, len(lv) - 1)  # the first level >= v, within
    lo = hi - 1
    pick_hi = np.abs(lv[hi] - v) < np.abs(v - lv[lo])
    return np.where(pick_hi, lv[hi], lv[lo])


def mae_rounded(y_true, y_pred, levels) -> float:
    """MAE of the predictions rounded to the nearest rating level (a 1-5 star scale: the
    nearest whole star). Why a metric: on whole-number ratings the point that minimises
    the expected absolute error is a median, a whole number, so rounding a mean-like
    prediction lowers MAE for every rating model alike; this column shows the methods
    compared that way, beside MAE of the predictions as they are."""
    t, p = _pair(y_true, y_pred, "mae_rounded")
    return mae(t, nearest_level(p, levels)) if len(t) else float("nan")


def rmse(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred, "rmse")
    return float(np.sqrt(np.mean((t - p) ** 2))) if len(t) else float("nan")


# --- ranking within the query items (graded relevance) --------------------------------------


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(n) + 2.0)  # position 0 -> 1/log2(2) = 1


def ndcg_graded_at_k(relevance, scores, k: int) -> float:
    """nDCG@k of the query items ordered by ``scores``, gain = true relevance (linear).

    DCG@k = sum over the top-k positions p (0-based) of rel / log2(p + 2); the ideal DCG
    orders the true relevances descending. Tied scores share their positions: every item
    in a tie group gets the group's mean gain (as ``sklearn.metrics.ndcg_score`` with
    ``ignore_ties=False``), so the value does not depend on the order of the input.
    NaN when the ideal DCG is 0 (no item with positive relevance).
    """
    rel, s = _pair(relevance, scores, "ndcg_graded_at_k")
    _check_k(k, "ndcg_graded_at_k")
    rel = rel.astype(np.float64)
    n = len(rel)
    disc = _discounts(n)
    disc[min(k, n) :] = 0.0  # positions past the cut-off count nothing
    ideal = float(np.sort(rel)[::-1] @ disc)
    if ideal <= 0:
        return float("nan")
    # group tied scores: inverse gives each item its group, counts the group sizes
    uniq, inverse, counts = np.unique(
        -s.astype(np.float64), return_inverse=True, return_counts=True
    )
    group_gain = np.bincount(inverse, weights=rel) / counts  # mean gain per group, best first
    cum = np.concatenate([[0.0], np.cumsum(disc)])
    ends = np.cumsum(counts)
    group_disc = cum[ends] - cum[ends - counts]  # sum of discounts over each group's positions
    return float(group_gain @ group_disc / ideal)


# --- full-catalogue ranking ------------------------------------------------------------


def first_occurrences(items) -> np.ndarray:
    """``items`` with each repeat after its first place dropped, order kept: an item listed
    twice is one recommendation, ranked where it first appears."""
    items = np.asarray(items)
    _, first = np.unique(items, return_index=True)
    return items if len(first) == len(items) else items[np.sort(first)]


def _hits(ranked, relevant, k: int | None) -> tuple[np.ndarray, int]:
    # a repeat would count its hit twice (recall above 1)
    if np.ndim(ranked) != 1:
        raise MetarecError(f"ranking metric: ranked must be a 1-D list, got {np.ndim(ranked)}-D")
    ranked = first_occurrences(ranked)
    if np.ndim(relevant) == 0 and isinstance(relevant, Iterable) and not isinstance(relevant, str):
        # np.asarray of a set (or dict keys, a generator) is a 0-d object array that
        # matches nothing: every metric read 0
        relevant = list(relevant)
    rel = np.unique(np.asarray(relevant))
    if k is not None:
        _check_k(k, "ranking metric")
        ranked = ranked[:k]
    return np.isin(ranked, rel), len(rel)


def hr_at_k(ranked, relevant, k: int) -> float:
    """1.0 when any relevant item is among the first k of ``ranked``; NaN if none relevant."""
    hit, n_rel = _hits(ranked, relevant, k)
    return float(hit.any()) if n_rel else float("nan")


def recall_at_k(ranked, relevant, k: int) -> float:
    """(relevant items in the top k) / (number of relevant items); NaN if none relevant."""
    hit, n_rel = _hits(ranked, relevant, k)
    return hit.sum() / n_rel if n_rel else float("nan")


def ndcg_at_k(ranked, relevant, k: int) -> float:
    """Binary-gain nDCG@k: DCG of the hits over the DCG of min(k, |relevant|) hits at the top."""
    hit, n_rel = _hits(ranked, relevant, k)
    if not n_rel:
        return float("nan")
    # discounts for the positions that can count (the list's, and the ideal's): a k far
    # past the list built k of them (k = 1e8: 1.6 GB)
    disc = _discounts(max(len(hit), min(k, n_rel)))
    return float(disc[: len(hit)][hit].sum() / disc[: min(k, n_rel)].sum())


def mrr(ranked, relevant) -> float:
    """1 / (1-based position of the first relevant item in ``ranked``), 0 when none is there.

    Pass the full ranking for the exact value; a truncated list gives MRR@len(ranked).
    NaN if the relevant set is empty.
    """
    hit, n_rel = _hits(ranked, relevant, None)
    if not n_rel:
        return float("nan")
    pos = np.flatnonzero(hit)
    return 1.0 / (pos[0] + 1) if len(pos) else 0.0
