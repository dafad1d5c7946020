"""evaluate(): hand-computed metrics for a model with fixed scores, naming, NaN exclusion,
bootstrap intervals, agreement with recommend(), and aggregate_seeds."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from metarec import evaluate as evaluation
from metarec import metrics as M
from metarec.evaluate import EvalResult, aggregate_seeds, evaluate
from metarec.recommender import Recommender
from metarec.types import Dataset, IdMap, Interactions, MetarecError, Task

ITEM_SCORES = np.array([5.0, 4.5, 3.0, 3.5, 1.0, 4.8])  # the stub's score of items 0..5


class FixedScores(Recommender):
    """Scores every user with the same fixed vector, whatever the support."""

    name = "Fixed"

    def __init__(self, values: np.ndarray, predicts_ratings: bool = True):
        self.values = values
        self.predicts_ratings = predicts_ratings

    def fit(self, dataset, train, features=None):
        self._set_fitted(dataset, train)
        return self

    def score(self, user_idx, support, item_idx):
        return self.values[self._check_items(item_idx)]


def inter(user, items, ratings) -> Interactions:
    n = len(items)
    return Interactions(np.full(n, user), items, ratings, np.arange(n), np.zeros(n))


def dataset(feedback="explicit") -> Dataset:
    return Dataset(
        "toy",
        Interactions.empty(),
        IdMap(np.array(["a", "b", "c"])),
        IdMap(np.array([f"i{k}" for k in range(6)])),
        feedback,
        (1.0, 5.0) if feedback == "explicit" else (0.0, 1.0),
        False,
    )


TASKS = (
    # user 0: support item 0; query items 1, 2, 3 rated 5, 2, 4 (items 1 and 3 are relevant)
    Task(
        0,
        inter(0, np.array([0]), np.array([5.0])),
        inter(0, np.array([1, 2, 3]), np.array([5.0, 2.0, 4.0])),
    ),
    # user 1: no support; query items 4, 5 rated 1, 2 (nothing relevant)
    Task(1, Interactions.empty(), inter(1, np.array([4, 5]), np.array([1.0, 2.0]))),
)


@pytest.fixture
def result() -> EvalResult:
    ds = dataset()
    rec = FixedScores(ITEM_SCORES).fit(ds, Interactions.empty())
    return evaluate(rec, ds, TASKS, ks=(1, 3), query_ks=(1, 2), bootstrap=200, seed=0)


def test_pointwise_metrics_by_hand(result):
    m = result.metrics
    # user 0 predictions (4.5, 3.0, 3.5) vs (5, 2, 4); user 1 predictions (1.0, 4.8) vs (1, 2)
    assert m["MAE"] == pytest.approx((2 / 3 + 1.4) / 2)
    assert m["RMSE"] == pytest.approx((math.sqrt(0.5) + math.sqrt(2.8**2 / 2)) / 2)
    # user 0: true (T, F, T), predicted >= 4 (T, F, F); user 1: true (F, F), predicted (F, T)
    assert m["Accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["Precision"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["Recall"] == pytest.approx(0.5) and result.n_users["Recall"] == 1
    assert m["F1"] == pytest.approx((2 / 3 + 0.0) / 2)
    # AUC is undefined for user 1 (one class): averaged over user 0 only
    assert m["AUC"] == 1.0 and result.n_users["AUC"] == 1
    assert math.isnan(result.per_user["AUC"][1])
    assert "Logloss" not in m  # explicit data: no probabilities


def test_mae_rounded_by_hand_and_only_on_a_scale_of_few_ratings():
    # the scale's levels are the ratings the data holds: 1..5 here
    rows = inter(2, np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    ds = dataclasses.replace(dataset(), interactions=rows)
    rec = FixedScores(ITEM_SCORES).fit(ds, Interactions.empty())
    m = evaluate(rec, ds, TASKS, ks=(1,), query_ks=(1,), bootstrap=0).metrics
    # user 0: (4.5, 3.0, 3.5) -> (4, 3, 3) (halfway goes down) vs (5, 2, 4): 1, 1, 1
    # user 1: (1.0, 4.8) -> (1, 5) vs (1, 2): 0, 3
    assert m["MAE (rounded)"] == pytest.approx((1.0 + 1.5) / 2)
    assert m["MAE"] == pytest.approx((2 / 3 + 1.4) / 2)  # unchanged beside it
    # a continuous scale (more than 20 distinct ratings): nothing to round to, no column
    many = inter(2, np.arange(5).repeat(5), np.linspace(1, 5, 25))
    ds = dataclasses.replace(dataset(), interactions=many)
    rec = FixedScores(ITEM_SCORES).fit(ds, Interactions.empty())
    m = evaluate(rec, ds, TASKS, ks=(1,), query_ks=(1,), bootstrap=0).metrics
    assert "MAE (rounded)" not in m and "MAE" in m


def test_query_ndcg_by_hand(result):
    # user 0: top-1 is item 1 (rating 5) = ideal; top-2 items 1, 3 (5, 4) vs ideal (5, 4)
    # user 1: order (5, 4) with ratings (2, 1) = ideal
    assert result.metrics["nDCG@1 (query)"] == 1.0
    assert result.metrics["nDCG@2 (query)"] == 1.0
    assert result.n_users["nDCG@2 (query)"] == 2


def test_full_catalogue_by_hand(result):
    # user 0 ranks items 5, 1, 3, 2, 4 (item 0 is support); relevant {1, 3}
    m = result.metrics
    assert m["HR@1 (full)"] == 0.0
    assert m["HR@3 (full)"] == 1.0
    assert m["Recall@3 (full)"] == 1.0
    assert m["nDCG@3 (full)"] == pytest.approx((1 / math.log2(3) + 1 / 2) / (1 + 1 / math.log2(3)))
    assert m["MRR (full)"] == 0.5
    # user 1 has no relevant item: excluded from every full-catalogue mean
    assert result.n_users["MRR (full)"] == 1
    assert result.primary_metric == "nDCG@3 (full)" and result.greater_is_better


def test_exclude_leaves_items_out_beside_the_support():
    # exclude adds to the support (evaluation.ranking_seen), it does not replace it: with
    # item 5 excluded, user 0 ranks 1, 3, 2, 4 and the support's item 0 (the stub's best
    # score) stays out; taken as the support's stand-in, item 0 led and HR@1 was 0
    ds = dataset()
    rec = FixedScores(ITEM_SCORES).fit(ds, Interactions.empty())
    excl = {0: np.array([5])}
    r = evaluate(rec, ds, TASKS[:1], ks=(1,), query_ks=(1,), bootstrap=0, exclude=excl)
    assert r.metrics["HR@1 (full)"] == 1.0 and r.metrics["MRR (full)"] == 1.0


def test_bootstrap_interval(result):
    lo, hi = result.ci95["MAE"]
    assert 2 / 3 <= lo <= result.metrics["MAE"] <= hi <= 1.4
    assert result.ci95["AUC"] == (1.0, 1.0)  # one user: every resample is the same


def test_full_catalogue_agrees_with_recommend():
    # no ties: evaluate ranks exactly as recommend() does
    ds = dataset()
    values = np.array([1.0, 2.5, 2.0, 1.1, 1.9, 0.5])
    rec = FixedScores(values, predicts_ratings=False).fit(ds, Interactions.empty())
    res = evaluate(rec, ds, TASKS, ks=(1, 2), query_ks=(1,), bootstrap=0)
    items, _ = rec.recommend(0, TASKS[0].support, k=2)
    assert items.tolist() == [1, 2]
    assert res.per_user["HR@1 (full)"][0] == M.hr_at_k(items, [1, 3], 1) == 1.0
    assert res.per_user["Recall@2 (full)"][0] == 0.5
    assert "MAE" not in res.metrics and "AUC" in res.metrics  # rank-only model
    assert math.isnan(res.ci95["AUC"][0])  # bootstrap disabled


def test_full_ranking_ties_are_broken_at_random_not_by_item_index():
    """An all-tied scorer ranks at random: over many users its HR@1 is the chance rate,
    not 1 (item index order would put the relevant item 0 first every time)."""
    ds = dataset()
    rec = FixedScores(np.zeros(6), predicts_ratings=False).fit(ds, Interactions.empty())
    tasks = tuple(
        Task(0, Interactions.empty(), inter(0, np.array([0]), np.array([5.0]))) for _ in range(600)
    )
    res = evaluate(rec, ds, tasks, ks=(1,), query_ks=(1,), bootstrap=0, seed=3)
    hr = res.per_user["HR@1 (full)"]
    assert abs(hr.mean() - 1 / 6) < 0.05  # 600 draws: std of the mean is 0.015
    again = evaluate(rec, ds, tasks, ks=(1,), query_ks=(1,), bootstrap=0, seed=3)
    assert np.array_equal(again.per_user["HR@1 (full)"], hr)  # seeded: reproducible
    assert rec.recommend(0, Interactions.empty(), k=1)[0].tolist() == [0]  # serving: by index


def test_candidates_restrict_ranking_and_relevant():
    ds = dataset()
    rec = FixedScores(ITEM_SCORES).fit(ds, Interactions.empty())
    res = evaluate(rec, ds, TASKS, ks=(1,), candidates=np.array([2, 3, 4]), bootstrap=0)
    # user 0 ranks 3, 2, 4; relevant within candidates: {3}
    assert res.per_user["HR@1 (full)"][0] == 1.0
    assert res.per_user["MRR (full)"][0] == 1.0
    # the relevant items outside the candidates do not count: HR and MRR could not tell
    assert res.per_user["Recall@1 (full)"][0] == 1.0
    # a mask or float ids were cast silently (an all-True mask became the items 0 and 1)
    mask = np.zeros(ds.n_items, dtype=bool)
    mask[[2, 3, 4]] = True
    for bad, said in (
        (mask, "boolean mask; pass item indices"),
        (np.array([2.9, 3.0]), "must be integer item indices"),
        (np.array([2, ds.n_items]), "must be item indices in"),
    ):
        with pytest.raises(MetarecError, match=said):
            evaluate(rec, ds, TASKS, ks=(1,), candidates=bad, bootstrap=0)
    same = evaluate(rec, ds, TASKS, ks=(1,), candidates=np.flatnonzero(mask), bootstrap=0)
    assert np.array_equal(same.per_user["MRR (full)"], res.per_user["MRR (full)"], equal_nan=True)


def test_implicit_logloss_and_threshold():
    ds = dataset("implicit")
    probs = np.array([0.9, 0.8, 0.3, 0.6, 0.1, 0.2])
    rec = FixedScores(probs).fit(ds, Interactions.empty())
    tasks = (
        Task(0, Interactions.empty(), inter(0, np.array([1, 2, 3]), np.array([1.0, 0.0, 1.0]))),
    )
    res = evaluate(rec, ds, tasks, full_catalogue=False, bootstrap=0)
    assert res.metrics["Logloss"] == pytest.approx(-(np.log(0.8) + np.log(0.7) + np.log(0.6)) / 3)
    assert res.metrics["Accuracy"] == 1.0  # 0.8, 0.6 >= 0.5 and 0.3 < 0.5
    assert "MAE" not in res.metrics
    assert res.primary_metric == "nDCG@5 (query)"


def test_implicit_queries_of_positives_only_leave_the_query_metrics_undefined():
    # every query row a purchase: Precision and query nDCG came out 1.0 for any scorer,
    # Accuracy equal to Recall; they are undefined (NaN, 0 users), the full ranking is not
    ds = dataset("implicit")
    rec = FixedScores(np.array([0.9, 0.8, 0.3, 0.6, 0.1, 0.2])).fit(ds, Interactions.empty())
    tasks = (
        Task(0, Interactions.empty(), inter(0, np.array([1, 2]), np.array([1.0, 1.0]))),
        Task(1, Interactions.empty(), inter(1, np.array([3]), np.array([1.0]))),
    )
    res = evaluate(rec, ds, tasks, ks=(2,), bootstrap=0)
    for name in ("Logloss", "Accuracy", "Precision", "Recall", "F1", "nDCG@3 (query)", "AUC"):
        assert np.isnan(res.metrics[name]) and res.n_users[name] == 0, name
    assert res.metrics["HR@2 (full)"] == 0.5  # top two 0, 1 for both: user 0 liked 1
    # per user: a query with a negative is scored, the positives-only one beside it is not
    mixed = inter(1, np.array([3, 4]), np.array([1.0, 0.0]))
    res = evaluate(rec, ds, (tasks[0], Task(1, Interactions.empty(), mixed)), ks=(2,), bootstrap=0)
    assert res.n_users["Precision"] == 1 and res.metrics["Accuracy"] == 1.0  # 0.6 yes, 0.1 no
    assert np.isnan(res.per_user["nDCG@3 (query)"][0]) and res.per_user["nDCG@3 (query)"][1] == 1


def test_aggregate_seeds():
    def fake(v):
        return EvalResult("m", {"MAE": v, "AUC": 1 - v}, {}, {}, {}, np.zeros(0), "AUC", True)

    agg = aggregate_seeds([fake(0.5), fake(0.7), fake(0.9)])
    assert agg["MAE"] == pytest.approx((0.7, 0.2))
    assert agg["AUC"] == pytest.approx((0.3, 0.2))
    assert aggregate_seeds([fake(0.5)])["MAE"] == (0.5, 0.0)
    bad = EvalResult("m", {"MAE": 1.0}, {}, {}, {}, np.zeros(0), "MAE", False)
    with pytest.raises(MetarecError):
        aggregate_seeds([fake(0.5), bad])


def test_bad_model_output_raises():
    ds = dataset()

    class Broken(FixedScores):
        def score(self, user_idx, support, item_idx):
            return np.zeros(1)

    rec = Broken(ITEM_SCORES).fit(ds, Interactions.empty())
    with pytest.raises(MetarecError, match="score returned"):
        evaluate(rec, ds, TASKS, bootstrap=0)
    with pytest.raises(MetarecError, match="no tasks"):
        evaluate(rec, ds, (), bootstrap=0)


def _scaled(lo: float, hi: float) -> Dataset:
    return Dataset(
        "toy",
        Interactions.empty(),
        IdMap(np.array(["a", "b"])),
        IdMap(np.array([f"i{k}" for k in range(6)])),
        "explicit",
        (lo, hi),
        False,
    )


def test_query_ndcg_on_a_scale_with_negative_ratings_stays_in_0_1():
    # gains are the ratings moved up by 2 on a -2..2 scale: raw ratings as gains gave
    # nDCG@1 of -1 and -2, and dropped a user whose ideal DCG came out negative
    ds = _scaled(-2.0, 2.0)
    rec = FixedScores(np.array([0.0, 2.0, -1.0, 1.5, 0.0, 0.0])).fit(ds, Interactions.empty())
    tasks = [
        Task(0, Interactions.empty(), inter(0, np.array([1, 2, 3]), np.array([-2.0, 2.0, 1.0]))),
        Task(1, Interactions.empty(), inter(1, np.array([1, 3]), np.array([-2.0, 1.0]))),
    ]
    r = evaluate(rec, ds, tasks, threshold=1.0, ks=(1,), query_ks=(1, 2), bootstrap=0)
    # user 0 ranks items 1 (gain 0), 3 (gain 3), 2 (gain 4): nDCG@1 = 0 / 4
    # user 1 ranks 1 (gain 0), 3 (gain 3): nDCG@2 = (3 / log2 3) / 3
    assert r.per_user["nDCG@1 (query)"].tolist() == [0.0, 0.0]
    assert r.per_user["nDCG@2 (query)"][1] == pytest.approx(1 / math.log2(3))
    assert r.n_users["nDCG@2 (query)"] == 2


def test_a_rating_exactly_at_a_fractional_threshold_is_relevant():
    # ratings are float32: 0.7 compared in float64 sat below a 0.7 threshold
    ds = _scaled(0.0, 1.0)
    rec = FixedScores(np.array([0.2, 0.7, 0.1, 0.9, 0.0, 0.0])).fit(ds, Interactions.empty())
    task = Task(
        0,
        Interactions.empty(),
        inter(0, np.array([1, 2]), np.array([0.7, 0.1], dtype=np.float32)),
    )
    r = evaluate(rec, ds, [task], threshold=0.7, ks=(2,), query_ks=(1,), bootstrap=0)
    assert r.metrics["AUC"] == 1.0 and r.metrics["Precision"] == 1.0
    assert r.n_users["HR@2 (full)"] == 1
    # a prediction is cut into positive/negative by the same test: a model's float32 0.7
    # (0.699999988 once widened) for that 0.7 rating was a negative, and a perfect rating
    # predictor scored Recall 0 and Accuracy 0.5 here (review 160)
    exact = np.array([0.2, 0.7, 0.1, 0.9, 0.0, 0.0], dtype=np.float32)
    rec = FixedScores(exact).fit(ds, Interactions.empty())
    r = evaluate(rec, ds, [task], threshold=0.7, ks=(2,), query_ks=(1,), bootstrap=0)
    assert r.metrics["MAE"] == 0.0
    for m in ("Accuracy", "Precision", "Recall", "F1"):
        assert r.metrics[m] == 1.0, m


def test_nan_scores_and_empty_cutoffs_are_errors():
    ds = dataset()

    class NaNFor1(FixedScores):
        def score(self, user_idx, support, item_idx):
            s = super().score(user_idx, support, item_idx)
            return np.full(len(s), np.nan) if user_idx == 1 else s

    rec = NaNFor1(ITEM_SCORES).fit(ds, Interactions.empty())
    with pytest.raises(MetarecError, match="score returned NaN for user index 1"):
        evaluate(rec, ds, list(TASKS), bootstrap=0)
    # an infinite rating made MAE inf and the report cell "inf ± nan"; a ranking-only
    # scorer may say -inf ("never") for a query item
    inf = ITEM_SCORES.astype(np.float64).copy()
    inf[1] = np.inf
    with pytest.raises(MetarecError, match="infinite rating for user index 0"):
        evaluate(FixedScores(inf).fit(ds, Interactions.empty()), ds, list(TASKS), bootstrap=0)
    inf[1] = -np.inf
    ranker = FixedScores(inf, predicts_ratings=False).fit(ds, Interactions.empty())
    assert np.isfinite(evaluate(ranker, ds, list(TASKS), bootstrap=0).metrics["AUC"])
    fine = FixedScores(ITEM_SCORES).fit(ds, Interactions.empty())
    with pytest.raises(MetarecError, match="ks is empty"):
        evaluate(fine, ds, list(TASKS), ks=(), bootstrap=0)
    with pytest.raises(MetarecError, match="query_ks is empty"):
        evaluate(fine, ds, list(TASKS), query_ks=(), full_catalogue=False, bootstrap=0)


def test_queries_the_model_was_fitted_on_are_refused():
    """A model fitted on rows that hold a task's query (another seed's split, or the
    whole log) scored MAE 0.46 and AUC 0.91 against 0.72 and 0.66 on its own split, and
    nothing said so. One line naming the count; cold users and other rows pass."""
    ds = dataset()
    # user 0's query row (item 3, time 2) is a training row: one of its query rows is known
    row = Interactions([0, 0], [0, 3], [5.0, 4.0], [0, 2], [0, 0])
    rec = FixedScores(ITEM_SCORES).fit(ds, row)
    with pytest.raises(MetarecError, match=r"1 of 5 query rows \(1 users\) are in Fixed's"):
        evaluate(rec, ds, TASKS, ks=(1, 3), query_ks=(1, 2), bootstrap=0)
    # the support's item in training is the user's history, not a leak; so is an earlier
    # rating of a query item (a log kept with its re-ratings: dedupe = false)
    for train in (
        inter(0, np.array([0]), np.array([5.0])),
        Interactions([0], [3], [2.0], [-5], [0]),
    ):
        fine = FixedScores(ITEM_SCORES).fit(ds, train)
        assert evaluate(fine, ds, TASKS, ks=(1, 3), query_ks=(1, 2), bootstrap=0).n_users


@pytest.mark.parametrize(
    "items, ratings, said",
    [
        ([0.7, 1.9], [5, 4], "Interactions.item_idx must hold whole numbers, got 0.7"),
        ([np.nan, 1], [5, 4], "Interactions.item_idx must hold whole numbers, got nan"),
        ([0, 1], ["x", 4], "Interactions.rating: not float32 values"),
    ],
)
def test_interactions_refuse_indices_numpy_would_truncate(items, ratings, said):
    # item 0.7 became item 0: a user was adapted on the wrong items without a word
    with pytest.raises(MetarecError) as err:
        Interactions([0, 0], items, ratings, [0, 0], [0, 0])
    assert said in str(err.value)
    whole = Interactions([0, 0], [0.0, 1.0], [5, 4], [0, 0], [0, 0])  # whole floats are taken
    assert whole.item_idx.tolist() == [0, 1] and whole.item_idx.dtype == np.int64


@pytest.mark.parametrize(
    "kwargs, said",
    [
        (
            {"threshold": 100},
            "threshold 100 is outside the ratings of 'toy' (1..5): relevant is rating >= threshold, so no rating would be relevant",
        ),
        ({"threshold": 1.0}, "so every rating would be"),
        ({"threshold": float("nan")}, "threshold nan is outside the ratings"),
        ({"ks": [2.5]}, "ks must hold integers >= 1, got 2.5"),
        ({"query_ks": [0]}, "query_ks must hold integers >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"bootstrap": -1}, "bootstrap must be an integer >= 0, got -1"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"threshold": "4"}, "threshold must be a number, got '4'"),
    ],
)
def test_evaluate_refuses_settings_that_give_nan_or_a_traceback(kwargs, said):
    """threshold 100 returned NaN for every hit metric without a word (metarec evaluate
    refused it); ks=[2.5] and batch_size=0 were a TypeError and a ValueError from deep
    inside; bootstrap=-1 was taken as 0."""
    ds = dataset()
    rec = FixedScores(ITEM_SCORES).fit(ds, Interactions.empty())
    with pytest.raises(MetarecError, match=re.escape(said)):
        evaluate(rec, ds, list(TASKS), **kwargs)


def test_a_threshold_above_every_rating_the_data_holds_is_refused():
    """Inside a declared 1..10 scale but above the data's 1..5: every hit metric was
    empty (NaN), with exit 0 from metarec evaluate."""
    import dataclasses

    ds = dataclasses.replace(
        dataset(),
        interactions=inter(0, np.array([0, 1]), np.array([1.0, 5.0])),
        rating_range=(1.0, 10.0),
    )
    rec = FixedScores(ITEM_SCORES).fit(ds, Interactions.empty())
    with pytest.raises(
        MetarecError, match=re.escape("threshold 7: no rating of 'toy' reaches it (they run 1..5)")
    ):
        evaluate(rec, ds, list(TASKS), threshold=7)
    assert np.isfinite(evaluate(rec, ds, list(TASKS), threshold=5, bootstrap=0).metrics["AUC"])


def test_a_threshold_the_top_rating_reaches_in_float32_is_not_refused():
    """Ratings are held in float32: a top rating of 0.7 (0.699999988) reaches a threshold
    of 0.7 as relevance judges it, but the checks compared in float64 and refused the
    threshold as out of reach (review 156); EASE's min_rating likewise."""
    from metarec.baselines import liked_threshold
    from metarec.data.raw import RawData, build_dataset, make_ratings_frame
    from metarec.metrics import is_relevant

    rows = [
        (f"u{u}", f"i{i}", [0.1, 0.3, 0.5, 0.7][(u + i) % 4], u * 10 + i)
        for u in range(6)
        for i in range(5)
    ]
    ds = build_dataset(
        RawData("toy", make_ratings_frame(*zip(*rows, strict=True)), "explicit", (0.0, 1.0), True)
    )
    assert is_relevant(ds.interactions.rating, 0.7).sum() > 0
    evaluation.check_threshold(ds, 0.7)  # no refusal
    assert liked_threshold(ds, ds.interactions, 0.7) == 0.7
    with pytest.raises(MetarecError, match="no rating of 'toy' reaches it"):
        evaluation.check_threshold(ds, 0.8)


def test_a_custom_models_slips_are_one_line_errors():
    """Probe 164: a rank_scores of one number broadcast over the batch row (a random
    ranking, scored without a word), one of the wrong length was numpy's broadcast error
    naming no model, recommend took NaN scores, and evaluate of an unfitted model or of a
    fit that forgot `return self` was an AttributeError."""
    ds = dataset()

    class OneNumber(FixedScores):
        def rank_scores(self, user_idx, support, item_idx):
            return np.array([1.0])

    class Short(FixedScores):
        def rank_scores(self, user_idx, support, item_idx):
            return np.zeros(len(item_idx) - 1)

    class Column(FixedScores):  # the shape is checked, not the size (mutation audit 167)
        def rank_scores(self, user_idx, support, item_idx):
            return self.values[item_idx][:, None]

    class NaNs(FixedScores):
        def rank_scores(self, user_idx, support, item_idx):
            return np.full(len(item_idx), np.nan)

    class OneNaN(FixedScores):  # one NaN is refused as all are
        def rank_scores(self, user_idx, support, item_idx):
            s = self.values[item_idx].copy()
            s[0] = np.nan
            return s

    for cls in (OneNumber, Short, Column):
        rec = cls(ITEM_SCORES).fit(ds, Interactions.empty())
        with pytest.raises(
            MetarecError, match=r"^Fixed: rank_scores returned shape \(\d[\d, ]*\) for"
        ):
            evaluate(rec, ds, TASKS, ks=(1,), bootstrap=0)
        with pytest.raises(MetarecError, match=r"rank_scores returned shape"):
            rec.recommend(0, TASKS[0].support, k=2)
    for cls in (NaNs, OneNaN):
        rec = cls(ITEM_SCORES).fit(ds, Interactions.empty())
        with pytest.raises(
            MetarecError, match=r"^Fixed: rank_scores returned NaN for user index 0"
        ):
            rec.recommend(0, TASKS[0].support, k=2)
    for bad, named in ((None, "NoneType"), ("Fixed", "str")):
        with pytest.raises(MetarecError, match=rf"expected a fitted Recommender, got {named}"):
            evaluate(bad, ds, TASKS)
    with pytest.raises(MetarecError, match=r"call fit\(\) before scoring .*_set_fitted"):
        evaluate(FixedScores(ITEM_SCORES), ds, TASKS)


def test_predicted_ratings_mostly_off_the_scale_are_warned_of():
    """A model on another scale (0-100 on a 1-5 log) was scored as ratings without a word
    (MAE 68, probe 164). Most predictions outside the scale: a warning; an unclipped
    regressor that strays now and then: none."""
    import warnings

    ds = dataset()
    for values, warned in (
        (np.array([60.0, 90.0, 20.0, 80.0, 10.0, 40.0]), True),
        (np.array([4.0, 5.2, 2.0, 4.5, 1.5, 2.5]), False),
    ):
        rec = FixedScores(values).fit(ds, Interactions.empty())
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            evaluate(rec, ds, TASKS, ks=(1,), bootstrap=0)
        off = [w for w in said if "outside the rating scale 1..5" in str(w.message)]
        assert bool(off) == warned, [str(w.message) for w in said]


def test_the_off_scale_warning_counts_predictions_and_wants_more_than_half():
    """Not warned of: "mostly off the scale" is over half of the predicted ratings (not of
    the users), and a rating at the scale's ends (a clipped regressor's 1 and 5) is on it."""
    import warnings

    ds = dataset()
    # one user, four query items (1..4): two predicted off the scale is half, not over
    task = Task(0, TASKS[0].support, inter(0, np.array([1, 2, 3, 4]), np.array([5.0, 2, 4, 1])))
    for values, tasks in (
        (np.array([3.0, 6.0, 0.0, 3.0, 3.0, 3.0]), [task]),  # 2 of 4
        (np.array([3.0, 6.0, 3.0, 3.0, 0.0, 3.0]), list(TASKS)),  # 2 of 5, over 2 users
        (np.where(ITEM_SCORES >= 3, 5.0, 1.0), list(TASKS)),  # at the ends: on the scale
    ):
        rec = FixedScores(values).fit(ds, Interactions.empty())
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            evaluate(rec, ds, tasks, ks=(1,), bootstrap=0)
        assert not [w for w in said if "outside the rating scale" in str(w.message)], values


def test_a_repeated_training_row_is_one_history_entry_the_latest():
    """A log fitted without dedupe may hold a user's item twice: the history (what scoring
    adapts on, and early stopping since the seventh session of 2026-12-07) holds it once,
    with its latest rating. The CSR it is read from summed the two: a 5 and a 4 became 9."""

    class Plain(Recommender):
        def fit(self, dataset, train, features=None):
            self._set_fitted(dataset, train)
            return self

        def score(self, user_idx, support, item_idx):
            return np.zeros(len(item_idx))

    rec = Plain()
    rows = Interactions(
        np.array([0, 0, 0, 1]),
        np.array([2, 4, 2, 2]),
        np.array([5.0, 3.0, 4.0, 1.0]),
        np.array([10, 20, 30, 5]),
        np.zeros(4),
    )
    rec._set_fitted(dataset(), rows)
    items, ratings = rec._history(0, Interactions.empty())
    assert items.tolist() == [4, 2] and ratings.tolist() == [3.0, 4.0]  # time order
    items, ratings = rec._history(1, inter(1, np.array([3]), np.array([2.0])))
    assert items.tolist() == [2, 3] and ratings.tolist() == [1.0, 2.0]
