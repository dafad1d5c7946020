"""Metrics against scikit-learn and hand computations, ties and undefined cases included."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from metarec import metrics as M
from metarec.types import MetarecError


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_auc_matches_sklearn_with_ties(rng):
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        s = rng.integers(0, 4, 30).astype(float)  # few distinct values: many ties
        if y.min() == y.max():
            continue
        assert M.auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))


def test_auc_ties_count_half_by_hand():
    # one positive, two negatives; the positive ties one negative and beats the other
    assert M.auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)
    assert M.auc([1, 1, 0, 0], [3, 3, 3, 3]) == pytest.approx(0.5)


def test_auc_single_class_is_nan():
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auc([0, 0], [0.1, 0.2]))


def test_logloss_mae_rmse_match_sklearn(rng):
    y = rng.integers(0, 2, 50)
    p = rng.uniform(0.01, 0.99, 50)
    assert M.logloss(y, p) == pytest.approx(skm.log_loss(y, p))
    r = rng.integers(1, 6, 50).astype(float)
    q = rng.uniform(1, 5, 50)
    assert M.mae(r, q) == pytest.approx(skm.mean_absolute_error(r, q))
    assert M.rmse(r, q) == pytest.approx(math.sqrt(skm.mean_squared_error(r, q)))


def test_nearest_level_by_hand():
    stars = [1.0, 2.0, 3.0, 4.0, 5.0]
    got = M.nearest_level([0.2, 1.5, 1.51, 2.49, 4.7, 9.0], stars)
    assert got.tolist() == [1.0, 1.0, 2.0, 2.0, 5.0, 5.0]  # a halfway value goes down
    halves = np.arange(1, 11) / 2  # 0.5 .. 5.0
    assert M.nearest_level([3.74, 3.76, 0.1], halves).tolist() == [3.5, 4.0, 0.5]
    assert M.nearest_level([7.0, -2.0], [3.0]).tolist() == [3.0, 3.0]
    for bad in ([], [2.0, 1.0], [1.0, 1.0]):
        with pytest.raises(MetarecError, match="levels must be sorted"):
            M.nearest_level([1.0], bad)


def test_mae_rounded_matches_sklearn_on_rounded_predictions(rng):
    r = rng.integers(1, 6, 200).astype(float)
    q = rng.uniform(0.0, 6.0, 200)  # some beyond the scale: clipped to the end stars
    want = skm.mean_absolute_error(r, np.clip(np.round(q), 1, 5))
    assert M.mae_rounded(r, q, [1, 2, 3, 4, 5]) == pytest.approx(want)
    assert math.isnan(M.mae_rounded([], [], [1, 2]))


def test_logloss_clips_certain_wrong_prediction():
    # p = 0 for a positive would be infinite; clipping at 1e-7 gives -log(1e-7)
    assert M.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_classification_metrics_match_sklearn(rng):
    for _ in range(10):
        t = rng.integers(0, 2, 25).astype(bool)
        p = rng.integers(0, 2, 25).astype(bool)
        assert M.accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p))
        assert M.precision(t, p) == pytest.approx(skm.precision_score(t, p))
        assert M.recall(t, p) == pytest.approx(skm.recall_score(t, p))
        assert M.f1(t, p) == pytest.approx(skm.f1_score(t, p))


def test_classification_undefined_cases_are_nan():
    t = np.array([False, False, True])
    nothing_predicted = np.zeros(3, dtype=bool)
    assert math.isnan(M.precision(t, nothing_predicted))
    assert M.recall(t, nothing_predicted) == 0.0
    assert math.isnan(M.recall([False, False], [True, False]))
    assert math.isnan(M.f1([False, False], [False, False]))
    assert M.f1([False, False], [True, False]) == 0.0


def test_relevance_threshold_inclusive():
    np.testing.assert_array_equal(M.is_relevant([3.9, 4.0, 5.0], 4.0), [False, True, True])


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_ndcg_graded_matches_sklearn_with_ties(rng, k):
    for _ in range(20):
        rel = rng.integers(1, 6, 8).astype(float)
        s = rng.integers(0, 3, 8).astype(float)  # heavy ties
        expected = skm.ndcg_score(rel[None], s[None], k=k)
        assert M.ndcg_graded_at_k(rel, s, k) == pytest.approx(expected)


def test_ndcg_graded_by_hand():
    # ratings (5, 3, 1); model ranks item 1 (rating 3) first, then 5, then 1
    rel = [5.0, 3.0, 1.0]
    s = [0.5, 0.9, 0.1]
    dcg = 3 / 1 + 5 / math.log2(3)
    idcg = 5 / 1 + 3 / math.log2(3)
    assert M.ndcg_graded_at_k(rel, s, 2) == pytest.approx(dcg / idcg)
    assert M.ndcg_graded_at_k(rel, s, 1) == pytest.approx(3 / 5)
    # a perfect ordering is 1 at every k
    assert M.ndcg_graded_at_k(rel, [3, 2, 1], 3) == pytest.approx(1.0)


def test_ndcg_graded_all_zero_relevance_is_nan():
    assert math.isnan(M.ndcg_graded_at_k([0.0, 0.0], [0.3, 0.1], 2))


def test_full_catalogue_metrics_by_hand():
    ranked = [7, 3, 9, 1, 4, 8]
    relevant = [9, 4, 100]  # 100 is never ranked
    # hits at positions 2 and 4 (0-based)
    assert M.hr_at_k(ranked, relevant, 2) == 0.0
    assert M.hr_at_k(ranked, relevant, 3) == 1.0
    assert M.recall_at_k(ranked, relevant, 3) == pytest.approx(1 / 3)
    assert M.recall_at_k(ranked, relevant, 5) == pytest.approx(2 / 3)
    # more relevant items than k: the denominator is all of them, not min(k, |relevant|)
    # (which is nDCG's ideal cut-off; every case above had k >= |relevant|)
    assert M.recall_at_k(np.arange(10), np.arange(20), 5) == 0.25
    dcg = 1 / math.log2(4) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at_k(ranked, relevant, 5) == pytest.approx(dcg / idcg)
    assert M.ndcg_at_k(ranked, relevant, 3) == pytest.approx((1 / 2) / idcg)
    # k smaller than |relevant|: the ideal has only k hits
    assert M.ndcg_at_k(ranked, [7, 9, 4], 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert M.mrr(ranked, relevant) == pytest.approx(1 / 3)
    assert M.mrr(ranked, [100]) == 0.0


def test_binary_ndcg_matches_sklearn_on_full_ranking(rng):
    n = 30
    scores = rng.permutation(n).astype(float)
    relevant = rng.choice(n, 5, replace=False)
    ranked = np.argsort(-scores)
    truth = np.isin(np.arange(n), relevant).astype(float)
    for k in (5, 10, 20):
        assert M.ndcg_at_k(ranked, relevant, k) == pytest.approx(
            skm.ndcg_score(truth[None], scores[None], k=k)
        )


def test_full_catalogue_empty_relevant_is_nan():
    for f in (M.hr_at_k, M.recall_at_k, M.ndcg_at_k):
        assert math.isnan(f([1, 2, 3], [], 2))
    assert math.isnan(M.mrr([1, 2], []))


def test_bad_inputs_raise():
    with pytest.raises(MetarecError):
        M.mae([1.0, 2.0], [1.0])
    with pytest.raises(MetarecError):
        M.hr_at_k([1, 2], [1], 0)


def test_a_repeated_item_in_the_ranking_is_one_recommendation():
    # it counted its hit twice: recall 1.0 (above 1 with more repeats) for one of two
    assert M.recall_at_k([1, 1, 2], [1, 3], 2) == 0.5
    assert M.ndcg_at_k([1, 1], [1, 3], 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert M.hr_at_k([2, 2, 1], [1], 2) == 1.0  # the repeat does not push item 1 out


def test_top_k_is_exactly_the_first_k_of_a_stable_sort():
    # one top-k for recommend, Predictor.recommend_many and serve: the partition shortcut
    # must pick ties at the k-th place in position order, as the stable sort does (serve's
    # old argpartition picked an arbitrary member of the tie)
    from metarec.recommender import top_k

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 400))
        s = rng.integers(0, 6, size=n).astype(np.float64)  # many ties
        s[rng.random(n) < 0.2] = -np.inf
        for k in (1, 2, 5, 17, n // 4 - 1, n // 4, n, n + 3):
            if k < 1:
                continue
            want = np.argsort(-s, kind="stable")[:k]
            np.testing.assert_array_equal(top_k(s, k), want)
            finite = want[np.isfinite(s[want])]
            np.testing.assert_array_equal(top_k(s, k, finite=True), finite)
    assert top_k(np.full(5, -np.inf), 3, finite=True).size == 0


@pytest.mark.parametrize(
    "call, said",
    [
        (lambda: M.logloss([0, 5], [0.2, 0.9]), "logloss: labels must be 0/1 or bool, got 5"),
        (lambda: M.auc([-1, 1, 1, -1], [0.1, 0.8, 0.7, 0.3]), "auc: labels must be 0/1"),
        (lambda: M.accuracy([0, 2], [0, 1]), "confusion (y_true): labels must be 0/1"),
        (lambda: M.hr_at_k([1, 2, 3], [2], 2.5), "k must be an integer >= 1, got 2.5"),
        (lambda: M.ndcg_at_k([1, 2, 3], [2], True), "k must be an integer >= 1, got True"),
        (lambda: M.ndcg_graded_at_k([3, 1], [0.2, 0.1], 0), "k must be an integer >= 1, got 0"),
    ],
)
def test_metrics_refuse_labels_that_are_not_0_1_and_cut_offs_that_are_not_whole(call, said):
    # a label of 5 gave logloss -4.23 (a negative cross-entropy); -1/1 labels made -1 a
    # positive and AUC NaN; k = 2.5 failed inside a slice, k = True was taken for 1
    with pytest.raises(MetarecError) as err:
        call()
    assert said in str(err.value)


def test_metrics_take_bool_and_float_0_1_labels_and_numpy_cut_offs():
    y, s = np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.1, 0.8, 0.7, 0.3])
    assert M.auc(y, s) == M.auc(y.astype(bool), s) == 1.0
    assert M.hr_at_k(np.array([1, 2, 3]), [2], np.int64(2)) == 1.0


def test_nan_and_non_numbers_and_scores_as_probabilities_are_refused():
    """NaN predictions were rounded to a rating (mae_rounded 2.0), ranked (nDCG 0.95) or
    made AUC NaN without a word; logloss clipped scores 1.5 and 2.0 to 1 (8.06); strings
    were a numpy UFuncTypeError. scikit-learn refuses each."""
    nan = float("nan")
    with pytest.raises(MetarecError, match=r"mae_rounded: y_pred holds NaN at position 0"):
        M.mae_rounded([1.0, 5.0], [nan, nan], [1, 2, 3, 4, 5])
    with pytest.raises(MetarecError, match=r"ndcg_graded_at_k: y_pred holds NaN at position 0"):
        M.ndcg_graded_at_k([1, 2, 0], [nan, 2, 1], 3)
    with pytest.raises(MetarecError, match=r"auc: y_pred holds NaN at position 1"):
        M.auc([0, 1, 1], [0.1, nan, 0.3])
    with pytest.raises(MetarecError, match=r"logloss: prob must be in \[0, 1\], got 1.5"):
        M.logloss([0, 1], [1.5, 2.0])
    with pytest.raises(MetarecError, match=r"mae: y_true must hold numbers"):
        M.mae(["1", "2"], ["1", "3"])
    # -inf is a score ("never"), not an error
    assert M.auc([0, 1], [-np.inf, 0.3]) == 1.0


def test_relevance_and_the_like_threshold_compare_in_float32():
    # ratings are held in float32: a 0.7 stored rating is 0.699999988, below a float64 0.7.
    # Evaluation's relevance and fit's refusal of a threshold nobody reaches share the test.
    from metarec.metrics import is_relevant
    from metarec.model import refuse_unliked

    stored = np.asarray([0.7, 0.2], dtype=np.float32)
    assert is_relevant(stored, 0.7).tolist() == [True, False]
    refuse_unliked(0.7, True, stored)  # 0.7 is reached: no error
    with pytest.raises(MetarecError, match="above every training rating"):
        refuse_unliked(0.71, True, stored)
