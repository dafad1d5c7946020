"""Closed-form companions of the meta-model and the blends fitted on validation users.

The meta-model learns from text and IDs; the closed-form collaborative models are hard to
beat on the items they know well. :class:`MetaRecommender` therefore stacks them:

* **rating** (explicit data): ``r̂ = c + w_meta · meta + Σ_j w_j · f_j`` with ``f`` the
  ItemMean+UserBias, BiasedMF fold-in and item-kNN-on-residuals predictions
  (``rating_inputs``), least squares on the validation users' query ratings; with
  ``rating_intercept=False`` c = 0 and the weights of the whole-rating inputs sum to 1 (a
  weighted average of ratings plus offset terms such as the like-model's logit), shrunk
  toward one input alone (by default the one that orders the validation users' items
  best, chosen at fit: see ``BlendConfig.rating_shrink`` and ``rating_prior``);
* **ranking**: ``s = w_meta · logit + Σ_j w_j · g_j`` with ``g`` the EASE score and the log
  popularity (``rank_inputs``; on catalogues too large for EASE the item-kNN score
  instead, ``large_rank_inputs``; the implicit-ALS fold-in score is another option),
  fitted by maximising the softmax likelihood of each
  validation user's liked query items over the catalogue (with several domains: the
  queries' domain) minus the support, the full ranking the model is judged on (or, with
  ``rank_fit="ndcg"``, searched from there for the best validation nDCG@k).

Both weight vectors are fitted on *validation* users only (the tasks ``fit`` early-stops
on), and the closed-form models on the meta-model's training interactions only, so neither
ever sees a test user. Every input is a pure function of the user's history, so adaptation
stays pure and a fitted blend is a few arrays (saved with the model, no refit at load).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from metarec.baselines import (
    EASE,
    KNN_RATING_MAX,
    MAX_FACTORS,
    BiasedMF,
    ImplicitALS,
    ItemKNN,
    ItemMeanUserBias,
    als_fold_in,
    knn_norms,
    knn_scores,
    neighbour_offsets,
    popularity_counts,
    presence_matrix,
    residual_neighbours,
    ridge_fold_in,
    shrunk_user_bias,
)
from metarec.config import coerce_fields
from metarec.metrics import is_relevant
from metarec.types import Dataset, Interactions, MetarecError

# whole predictions, or their user-level and item-level parts as separate inputs (so the
# stack can weight a user's level and the order of items within the user differently)
RATING_INPUTS = (
    "item_mean_user_bias",  # mu + b_u + b_i
    "biased_mf",  # mu + b_u' + b_i' + q_i · p_u
    "user_bias",  # b_u (ItemMean+UserBias)
    "item_bias",  # b_i (ItemMean+UserBias)
    "mf_user",  # b_u' (BiasedMF fold-in)
    "mf_item",  # b_i' + q_i · p_u (BiasedMF fold-in)
    "popularity",  # log(1 + training interactions of the item)
    # mu + b_u + b_j + the history's residuals weighted by item j's neighbours
    # (:class:`metarec.baselines.ItemKNNRating`; BlendConfig.rating_knn_*)
    "item_knn_rating",
)
# the whole closed-form ratings among them: what a rating prior may be, and what
# rating_prior = "auto" chooses from (the meta model's own rating is left out: its
# validation order is measured on the users that stopped its training, so it would look
# better than it is)
PRIOR_CANDIDATES = frozenset({"item_mean_user_bias", "biased_mf", "item_knn_rating"})
# "als": implicit-feedback ALS item factors (the ``implicit`` package, metarec[baselines]),
# the history folded in closed form; "knn": item-kNN co-occurrence scores of the history
# (:class:`metarec.baselines.ItemKNN`). Unlike EASE both cost linear in the catalogue.
# "content": the content-collaborative bilinear score (:func:`content_map`), the only
# input that tells cold items (no training interactions) apart besides the meta logit
# (on large catalogues beside kNN, BlendConfig.large_rank_inputs; over held-out items
# an option only: see BlendConfig.cold_rank_inputs for why). "side": the items' numeric
# side columns (z-scored as the meta-model sees them, :func:`metarec.features.
# numeric_features`), one input and one weight per column, named "side:<column>" in a
# fitted blend: a user-independent prior over items that the blend can weigh where the
# items themselves are new (BlendConfig.cold_rank_inputs).
RANK_INPUTS = ("ease", "popularity", "biased_mf", "als", "knn", "content", "side")
RANK_FITS = ("softmax", "ndcg", "cv", "auto")
N_TIE_SEED = 20261205  # the nDCG search's fixed tie order (ndcg_of_weights)


def increasing_sizes(cuts) -> bool:
    """Whether ``cuts`` are history sizes a blend can route by: integers >= 1 (not bools),
    strictly increasing (BlendConfig.rating_short_histories, a saved blend's rating_cuts)."""
    return all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in cuts) and (
        list(cuts) == sorted(set(cuts))
    )


@dataclass(frozen=True)
class BlendConfig:
    rating: bool = True  # stack the rating model with closed-form rating predictions
    rank: bool = True  # add closed-form ranking scores to the like-model's logit
    # item_knn_rating since 2026-12-06 (with rating_prior "auto"; figures there)
    rating_inputs: tuple[str, ...] = ("item_mean_user_bias", "biased_mf", "item_knn_rating")
    rank_inputs: tuple[str, ...] = ("ease", "popularity")
    # the rating stack's loss: "l2" least squares (the conditional mean), "l1" least
    # absolute deviations (the conditional median, what MAE rewards)
    rating_loss: str = "l2"
    rating_like: bool = True  # also stack the like-model's logit into the rating
    # False: the rating-scale inputs' weights (meta + closed-form ratings, not the like
    # logit) sum to 1 and there is no intercept, so the stack is a weighted average of
    # ratings plus a like-logit term). Default False: on ML-100K validation users (2-fold
    # CV) the free intercept overfits (MAE 0.840/0.846 free vs 0.816/0.823 constrained)
    rating_intercept: bool = False
    # ridge of the rating weights toward "``rating_prior`` alone" (weight 1, the rest 0),
    # λ per validation rating; 0 = plain least squares ("l2" loss only). Why not 0: least
    # squares picks the weights that fit each user's rating *level* best, but AUC and
    # nDCG@3 judge the order of a user's query items, and ItemMean+UserBias orders them
    # best of all the inputs on ML-100K validation users (AUC 0.668, nDCG@3 0.848 alone).
    # 2-fold CV over validation users, mean of seeds 0-2, MAE / AUC / nDCG@3:
    #   λ 0    0.8150 / 0.6566 / 0.8371     λ 0.05 0.8184 / 0.6681 / 0.8433
    #   λ 0.03 0.8172 / 0.6672 / 0.8411     λ 0.1  0.8205 / 0.6696 / 0.8436
    # Rule (the goal, applied on validation): the smallest λ that beats the best
    # validation baseline on the most goal metrics; 0.05 was the smallest beating both
    # BiasedMF's MAE (0.8201) and ItemMean+UserBias's AUC (0.6680). It costs MAE for order.
    # The same rule re-applied once Polyak averaging (TrainConfig.ema 0.98) was the default,
    # same protocol, MAE / AUC / nDCG@3:
    #   λ 0.02 0.8169 / 0.6594 / 0.8409     λ 0.04 0.8181 / 0.6686 / 0.8427
    #   λ 0.03 0.8175 / 0.6655 / 0.8420     λ 0.05 0.8187 / 0.6688 / 0.8442
    #                                       λ 0.07 0.8195 / 0.6686 / 0.8436
    # 0.04 is now the smallest beating both (AUC 0.6686 vs 0.6680: a thin margin)
    rating_shrink: float = 0.04
    # a rating input, "meta", or "auto": the whole-rating closed-form input (ItemMean+
    # UserBias, BiasedMF, item-kNN on residuals) whose predictions order the validation
    # users' query ratings best (blend.pair_order: AUC over every threshold), chosen at
    # fit. Why "auto" (was "item_mean_user_bias"): which input orders best depends on
    # the data. Same protocol, seeds 0-2 (mean), MAE / AUC / nDCG@3, with the item-kNN
    # input added (docs/defaults.md has every variant):
    #   ML-100K    before                 0.8183 / 0.6658 / 0.8422
    #              + item-kNN, auto prior 0.8059 / 0.6753 / 0.8453  (picks item-kNN)
    #   goodbooks  before                 0.6917 / 0.6661 / 0.8792
    #              + item-kNN, auto prior 0.6923 / 0.6612 / 0.8806  (picks either: 25
    #                users per CV half; the inputs order about equally there)
    # while item-kNN as the prior everywhere lost more goodbooks AUC (0.6556)
    rating_prior: str = "auto"
    # the "item_knn_rating" input (ItemKNNRating): similarities shrunk by n / (n + shrink)
    # over n co-rating users, each item's strongest ``neighbours`` kept, the offset's
    # denominator Σ|sim| + damping
    rating_knn_shrink: float = 2.0
    rating_knn_damping: float = 0.5
    rating_knn_neighbours: int = 200
    # support sizes that get their own rating weights: a history of n items uses the
    # weights of the smallest cut >= n, fitted on the validation supports cut to that many
    # items (same queries, kept where the whole history is then that short); longer
    # histories keep the weights fitted at the split's K. () = one set of weights. Why:
    # the weights fitted at K = 10 trust the user-level inputs as 10 ratings allow, and
    # the shrink toward one input does not know how noisy that input is at K = 1 (see
    # docs/defaults.md for the validation figures); the cuts shrink toward the input the
    # K weights chose
    rating_short_histories: tuple[int, ...] = ()
    # the short weights' query: the same as at K (False) or the cut user's next
    # interactions (True: the rest of the support, then the query)
    rating_short_requery: bool = False
    # query ratings >= this are the positives of the ranking fit; None = the like threshold
    relevant_threshold: float | None = None
    mf_factors: int = 32
    mf_reg: float = 5.0
    mf_iterations: int = 15
    ease_reg: float = 500.0
    # EASE is skipped above this many liked training items: its fit costs n³ time and its
    # weights n² floats in the saved model (3000 items: ~36 MB float32, seconds to fit)
    ease_max_items: int = 3000
    # the ranking inputs in place of ``rank_inputs`` when those ask for "ease" but it is
    # skipped (above ease_max_items), so a large catalogue still gets collaborative inputs;
    # () = rank_inputs without "ease". Where EASE fits these are not used: on ML-100K
    # validation users (2-fold CV, 3 seeds) adding ALS to EASE + popularity lowered
    # Recall@10 (full) on 2 seeds of 3. Amazon Food->Kitchen (27,637 ranked items),
    # validation users, 2-fold CV, nDCG@10 (full), seeds 0/1/2:
    #   popularity + ALS (before)             0.0163 / 0.0186 / 0.0327
    #   ALS + kNN (alpha 0.3, damping 0)      0.0249 / 0.0267 / 0.0448
    #   ALS + kNN (alpha 0.3, damping 0.5)    0.0287 / 0.0319 / 0.0460
    #   ALS + kNN (alpha 0.3, damping 1)      0.0298 / 0.0300 / 0.0429
    #   kNN (alpha 0.3, damping 0.5)          0.0287 / 0.0318 / 0.0477   <- default
    #   ALS + kNN + popularity (damping 0.5)  0.0243 / 0.0301 / 0.0447
    # (the meta logit is always in the blend). kNN alone edges ALS + kNN on the mean
    # (0.0361 vs 0.0355: a tie) and needs no optional package (ALS needs ``implicit``).
    # The kNN input is log1p(score / median score); with the raw score, ALS + kNN scored
    # 0.0213 / - / 0.0367 (seeds 0, 2). Then kNN vs kNN + content (the content input
    # maps the profile of the user's source-domain history onto target items' features),
    # nDCG@10 / Recall@10 (full), seeds 0/1/2:
    #   Kitchen->Food  kNN            0.0874 / 0.1020 / 0.0930   0.1049 / 0.1276 / 0.1355
    #                  kNN + content  0.0909 / 0.1050 / 0.0994   0.1209 / 0.1301 / 0.1464
    #   Food->Kitchen  kNN            0.0287 / 0.0318 / 0.0477   0.0376 / 0.0372 / 0.0546
    #                  kNN + content  0.0290 / 0.0319 / 0.0470   0.0334 / 0.0436 / 0.0508
    # better on 3 seeds of 3 one way, a tie the other (mean 0.0360 vs 0.0361); the users
    # are a random draw of the overlap, so validation and test users are alike (unlike
    # item cold-start's newer test items, cold_rank_inputs below)
    large_rank_inputs: tuple[str, ...] = ("knn", "content")
    # the ranking inputs in place of ``rank_inputs`` when the blend is fitted over held-out
    # items (item cold-start: validation users ranked over the validation items, which
    # have no training interactions, so EASE, popularity, kNN and ALS are 0 for every
    # candidate); () = rank_inputs as given. Default () — "content" looked strong on
    # validation and failed on test. ML-100K item cold, validation users, 2-fold CV,
    # Recall@10 / nDCG@10 over the validation items, seeds 0/1/2:
    #   the meta logit alone            0.3352 / 0.3474 / 0.2663   0.2303 / 0.2345 / 0.1618
    #   + content, softmax fit          0.3826 / 0.3742 / 0.3283   0.2673 / 0.2568 / 0.2297
    #   + content, rank_fit "cv"        0.3809 / 0.4074 / 0.3932   0.2742 / 0.2790 / 0.2724
    # but in `metarec evaluate` (seed 0, test users over the test items, which are newer)
    # nDCG@10 (full) fell from 0.1836 (no blend) to 0.1187. A diagnosis on those seed-0 test
    # users: the content score alone drops from Recall@10 0.3905 (validation items) to
    # 0.1507 (test items), and added to the meta logit at equal z-scored weight it still
    # scores 0.2259 vs 0.2282 alone: the item features' link to taste did not carry over
    # to the newer items. Kept as an option, not a default. (Not in rank_inputs either:
    # beside EASE on ML-100K user cold it lowered validation nDCG@10 on 3 seeds of 3,
    # 0.1918 / 0.1918 / 0.1759 -> 0.1853 / 0.1881 / 0.1694.)
    # ("side",), the numeric item columns (ML-100K: the release year) with one weight
    # each, is an option too. Why it was tried: over 90% of the meta logit's variance
    # across held-out items is the item's own term (a popularity guess from features), and
    # a window of newly entering items is ruled by recent releases (1997-98 movies: 21% of
    # the validation items, 64% of their liked ratings; 12% of training ratings).
    # Validation users, 2-fold CV, Recall@10 / nDCG@10 over the validation items, seeds
    # 0/1/2 (with Polyak averaging):
    #   () (the meta logit alone)   0.3506 / 0.3302 / 0.3584   0.2626 / 0.2328 / 0.2510
    #   ("side",)                   0.3496 / 0.3340 / 0.3653   0.2626 / 0.2353 / 0.2557
    # but both CV halves rank the same items there, so an input describing the items is
    # fitted and scored on the same items' popularity. Split over items as well
    # (benchmarks/cold_item_cv.py: weights fitted on half the users ranking half the
    # items, nDCG@10 on the other users over the other items) it lost on 2 seeds of 3:
    # 0.3731 / 0.3313 / 0.3208 alone vs 0.3671 / 0.3199 / 0.3244 with the year. Not a
    # default.
    cold_rank_inputs: tuple[str, ...] = ()
    # item-kNN input (ItemKNN): similarity normalised by (n_i n_j)^knn_alpha, co-occurrences
    # in a history of d items weighted 1 / d^knn_damping (figures above)
    knn_alpha: float = 0.3
    knn_damping: float = 0.5
    # ridge of the "content" input's map, relative to the mean eigenvalue of each side's
    # Gram matrix (content_map). ML-100K item cold, validation users, Recall@10 over the
    # validation items, the content score alone, (reg_profile, reg_item):
    #   (0.01, 0.01) 0.3469   (0.1, 0.01) 0.3657   (1, 0.01) 0.3436
    #   (0.1, 0.001) 0.3665   (0.1, 0.1) 0.3905    (0.1, 1) 0.3736
    # (the meta logit alone: 0.3163 over seeds 0-2), so one value, 0.1, for both sides
    content_reg: float = 0.1
    als_factors: int = 64
    als_reg: float = 0.05
    als_alpha: float = 10.0
    als_iterations: int = 15
    # L2 on the (standardised) ranking weights; 1e-2 over 1e-3 on ML-100K validation users
    # (2-fold CV Recall@10 0.2253 vs 0.2225: equal on 2 seeds of 3, better on the third)
    weight_decay: float = 1e-2
    # how the ranking weights are fitted: "softmax" (the likelihood above, smooth, every
    # validation positive counts), "ndcg" (coordinate search from the softmax weights for
    # the best validation nDCG@rank_k: the top of the list, which the full-ranking metrics
    # judge) or "cv" (whichever of the two scores the better nDCG@rank_k in 2-fold CV
    # over the validation users). Softmax over the search on small validation sets:
    # validation users, 2-fold CV, nDCG@10 (full), softmax vs ndcg —
    #   ML-100K user cold (1,682 items), seeds 0/1/2: 0.1918/0.1918/0.1759 vs
    #     0.1775/0.1781/0.1724 (the search overfits 94 validation users);
    #   Amazon Food->Kitchen (27,637 items), seeds 0/1/2: 0.0163/0.0186/0.0327 vs
    #     0.0194/0.0162/0.0340 (mean +0.0007, one seed of three worse: noise-level).
    # "cv" chose wrongly on ML-100K seed 1 and Amazon seed 0: half of 94 / 233 validation
    # users is too few to tell the two fits apart reliably.
    # "auto": "cv" when at least ``rank_search_users`` validation users enter the fit,
    # else "softmax" — the comparison needs halves large enough to tell the two fits
    # apart. On ML-100K item cold (647 validation users) with the content input "cv"
    # chose the search on 3 seeds of 3 (cold_rank_inputs' figures); not the default,
    # since that choice did not hold on test users.
    rank_fit: str = "softmax"
    # ``rank_fit`` where ``large_rank_inputs`` stand in for EASE (catalogues above
    # ease_max_items); "" = rank_fit there too. A 27k-item catalogue has a long tail: the
    # softmax fit spends weight lifting positives out of it, which the top ten never see,
    # and the nDCG search (started from the softmax weights) takes that back. Amazon,
    # Transfer-joint, validation users, 2-fold CV, nDCG@10 (full), seeds 0/1/2, softmax vs
    # ndcg (tune_blend.py --variant 'ndcg:rank_fit="ndcg"'; docs/results/tune_large_fit/):
    #   Kitchen->Food  0.0912/0.1043/0.1002 vs 0.0966/0.1080/0.1026
    #   Food->Kitchen  0.0292/0.0303/0.0459 vs 0.0307/0.0372/0.0464 (6 of 6)
    # (with the earlier popularity + ALS inputs on Food->Kitchen: 0.0163/0.0186/0.0327 vs
    # 0.0194/0.0162/0.0340). On ML-100K (1,682 items, 94 validation users) the search
    # overfits (figures above), so small catalogues keep rank_fit.
    large_rank_fit: str = "ndcg"
    rank_search_users: int = 300
    # > 0: the ranking fit's softmax runs over each validation user's union of every
    # input's top rank_fit_head items only (fit_rank_blend's ``head``); 0 = all candidates.
    # Amazon validation users (2-fold CV, Transfer-joint), nDCG@10 (full), seeds 0/1/2:
    #   Kitchen->Food  off 0.0907/0.1049/0.1002  100 0.0918/0.1037/0.1026  1000 0.0886/0.1058/0.1008
    #   Food->Kitchen  off 0.0292/0.0310/0.0465  100 0.0282/0.0310/0.0468
    # noise-level, so off
    rank_fit_head: int = 0
    rank_k: int = 10
    # histories of at most this many items (a user with 1 interaction) get their own
    # ranking weights, fitted on the validation supports cut to that many items (same
    # queries); longer histories keep the weights fitted at the split's K, unchanged.
    # 0 = one set of weights. Why: weights fitted at K = 10 lean on EASE / the meta logit
    # as a 10-item history allows; one item does not. Validation users, 2-fold CV,
    # Recall@10 (full) at K = 1, one weight set -> short-history weights: ML-100K user cold
    # seeds 0-2 0.2039 / 0.1905 / 0.1859 -> 0.2222 / 0.2177 / 0.2183; goodbooks seed 0
    # 0.2528 -> 0.3227; K = 10 identical. (A smooth w + w'/n form, fitted on K = 1, 3, 5
    # cuts together, gained at K = 1 too but cost 0.004-0.008 at K = 10.)
    rank_short_history: int = 1
    # the short weights' query: the cut user's next interactions (True: the rest of the
    # support, then the query; what a one-item user is recommended for) or the same query
    # as at K (False, before 2026-12-05). Validation users, 2-fold CV, K = 1, seeds 0-2,
    # Recall@10 / nDCG@10 (full), same query -> next: ML-100K user cold 0.2153 / 0.2007
    # -> 0.2232 / 0.2147 (3 of 3 seeds on both); goodbooks 0.2983 / 0.2820 -> 0.3166 /
    # 0.3043 (2 of 3). K >= 3 unchanged (docs/defaults.md)
    rank_short_requery: bool = True
    # the ranking fit holds (users x candidates) arrays: at most this many cells, so a fit
    # on a large catalogue with thousands of validation users (``metarec fit`` holds out
    # 10% of the users) takes an evenly spread subset of them rather than tens of GB
    # (36k items x 5k users x a few float64 columns). 2e7 cells: ~160 MB per column;
    # every evaluate config in configs/ is below it (Amazon: 233 x 27,637)
    rank_fit_cells: int = 20_000_000
    min_valid_users: int = 10  # fewer validation users: no blend (the meta-model alone)

    def __post_init__(self) -> None:
        coerce_fields(self)  # built directly too, as from_dict builds it
        if self.min_valid_users < 1:
            # -3 and 0 were taken: a blend fitted on whatever validation users there were,
            # none included, where this setting is there to set a floor
            raise MetarecError(f"blend.min_valid_users must be >= 1, got {self.min_valid_users}")
        for name in self.rating_inputs:
            if name not in RATING_INPUTS:
                raise MetarecError(f"blend.rating_inputs: unknown {name!r} ({RATING_INPUTS})")
        for name in self.rank_inputs:
            if name not in RANK_INPUTS:
                raise MetarecError(f"blend.rank_inputs: unknown {name!r} ({RANK_INPUTS})")
        for name in self.cold_rank_inputs:
            if name not in RANK_INPUTS:
                raise MetarecError(f"blend.cold_rank_inputs: unknown {name!r} ({RANK_INPUTS})")
        for name in self.large_rank_inputs:
            if name not in RANK_INPUTS or name == "ease":
                allowed = tuple(n for n in RANK_INPUTS if n != "ease")
                raise MetarecError(f"blend.large_rank_inputs: {name!r} is not one of {allowed}")
        if not 0.0 <= self.knn_alpha <= 1.0:
            raise MetarecError(f"blend.knn_alpha must be in [0, 1], got {self.knn_alpha}")
        if self.knn_damping < 0:
            raise MetarecError(f"blend.knn_damping must be >= 0, got {self.knn_damping}")
        if not self.content_reg > 0:
            raise MetarecError(f"blend.content_reg must be > 0, got {self.content_reg}")
        if self.rating_loss not in ("l1", "l2"):
            raise MetarecError(f"blend.rating_loss: {self.rating_loss!r} is not 'l1' or 'l2'")
        if len(set(self.rating_inputs)) < len(self.rating_inputs):
            raise MetarecError(
                f"blend.rating_inputs names an input twice: {list(self.rating_inputs)}"
            )
        # the prior is a whole rating: the stack's whole-rating weights sum to 1, and an
        # offset input (user_bias, popularity, ...) alone is not a rating
        wholes = [n for n in self.rating_inputs if n in PRIOR_CANDIDATES]
        prior_ok = self.rating_prior in ("meta", "auto") or self.rating_prior in wholes
        if self.rating_shrink > 0 and not prior_ok:
            raise MetarecError(
                f"blend.rating_prior: {self.rating_prior!r} is not 'meta', 'auto' or one of "
                f"the whole-rating inputs of blend.rating_inputs {wholes} (add it, pick "
                "another prior, or set blend.rating_shrink=0)"
            )
        auto = self.rating_prior == "auto" and self.rating_shrink > 0
        if auto and not set(self.rating_inputs) & PRIOR_CANDIDATES:
            raise MetarecError(
                "blend.rating_prior 'auto' picks one of the whole-rating inputs "
                f"{sorted(PRIOR_CANDIDATES)}, and blend.rating_inputs has none (add one, "
                "name the prior, or set blend.rating_shrink=0)"
            )
        cuts = self.rating_short_histories
        if not increasing_sizes(cuts):
            raise MetarecError(
                "blend.rating_short_histories must be increasing support sizes >= 1, "
                f"got {list(cuts)}"
            )
        for key in ("rating_knn_shrink", "rating_knn_damping"):
            v = getattr(self, key)
            if not (np.isfinite(v) and 0 <= v <= KNN_RATING_MAX):
                raise MetarecError(
                    f"blend.{key} must be a number in [0, {KNN_RATING_MAX:g}], got {v!r}"
                )
        n = self.rating_knn_neighbours
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MetarecError(f"blend.rating_knn_neighbours must be an integer >= 1, got {n!r}")
        if self.rating_shrink < 0:
            raise MetarecError(f"blend.rating_shrink must be >= 0, got {self.rating_shrink}")
        if self.rating_shrink > 0 and self.rating_loss != "l2":
            raise MetarecError(
                f"blend.rating_loss {self.rating_loss!r} cannot shrink toward a prior: "
                "set blend.rating_shrink=0 or use rating_loss 'l2'"
            )
        # each key with its value named (probe 136: one line listed every rule, no value)
        for name, rule, ok in (
            ("mf_factors", ">= 1", self.mf_factors >= 1),
            ("mf_reg", "> 0", self.mf_reg > 0),
            ("ease_reg", "> 0", self.ease_reg > 0),
            ("als_factors", ">= 1", self.als_factors >= 1),
            ("als_reg", "> 0", self.als_reg > 0),
            ("als_alpha", ">= 1", self.als_alpha >= 1),
        ):
            if not ok:
                raise MetarecError(f"blend.{name} must be {rule}, got {getattr(self, name)}")
        # unbounded factor counts asked for 149 GiB after the whole meta-training
        for key in ("mf_factors", "als_factors"):
            if getattr(self, key) > MAX_FACTORS:
                raise MetarecError(
                    f"blend.{key} must be <= {MAX_FACTORS}, got {getattr(self, key)}"
                )
        if self.mf_iterations < 0:  # BiasedMF's own error, after training, named no key
            raise MetarecError(f"blend.mf_iterations must be >= 0, got {self.mf_iterations}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            # -1 gave rank weights of 1e161 and a saturated ranking, with exit 0
            raise MetarecError(f"blend.weight_decay must be >= 0, got {self.weight_decay}")
        if self.ease_max_items < 0:  # 0: the large-catalogue inputs on any catalogue
            raise MetarecError(f"blend.ease_max_items must be >= 0, got {self.ease_max_items}")
        for key in ("rank_inputs", "large_rank_inputs", "cold_rank_inputs"):
            names = getattr(self, key)
            if len(set(names)) < len(names):
                raise MetarecError(f"blend.{key} names an input twice: {list(names)}")
        if self.als_iterations < 1:
            raise MetarecError("blend: als_iterations >= 1")
        if self.rank_fit not in RANK_FITS:
            raise MetarecError(f"blend.rank_fit: {self.rank_fit!r} is not one of {RANK_FITS}")
        if self.large_rank_fit and self.large_rank_fit not in RANK_FITS:
            raise MetarecError(
                f"blend.large_rank_fit: {self.large_rank_fit!r} is not one of {RANK_FITS} or ''"
            )
        if self.rank_search_users < 2:
            raise MetarecError(
                f"blend.rank_search_users must be >= 2, got {self.rank_search_users}"
            )
        if self.rank_fit_head < 0:
            raise MetarecError(f"blend.rank_fit_head must be >= 0, got {self.rank_fit_head}")
        if self.rank_k < 1:
            raise MetarecError(f"blend.rank_k must be >= 1, got {self.rank_k}")
        if self.rank_fit_cells < 1:
            raise MetarecError(f"blend.rank_fit_cells must be >= 1, got {self.rank_fit_cells}")
        if self.rank_short_history < 0:
            raise MetarecError(
                f"blend.rank_short_history must be >= 0, got {self.rank_short_history}"
            )


@dataclass(frozen=True, eq=False)
class ClosedForm:
    """Arrays of the closed-form models fitted on training interactions.

    mu, item_bias: ItemMean+UserBias (item offsets shrunk by 10, user offset by 5);
    mf_*: BiasedMF item side (fold-in solves the user side per history);
    ease: (n_active, n_active) float32 item-item weights over ``ease_cols`` (-1 = untrained
    item, scored 0), ``like`` the rating a history row needs to enter EASE;
    log_pop: (n_items,) log(1 + training interactions);
    als_factors: (n_items, d) float32 implicit-ALS item factors (None = not fitted), with
    their gram YᵀY (d, d) and the fold-in's reg / alpha.
    """

    mu: float
    item_bias: np.ndarray
    user_shrinkage: float
    mf_mu: float
    mf_item_bias: np.ndarray
    mf_item_factors: np.ndarray
    mf_reg: float
    mf_bias_reg: float
    ease: np.ndarray | None
    ease_cols: np.ndarray | None
    like: float
    log_pop: np.ndarray
    als_factors: np.ndarray | None = None
    als_gram: np.ndarray | None = None
    als_reg: float = 0.05
    als_alpha: float = 10.0
    # item-kNN (None = not fitted): the liked training matrix both ways, user_items
    # (n_users, n_items) and item_users (n_items, n_users) CSR, and knn_norms' arrays
    knn_user_items: sp.csr_matrix | None = None
    knn_item_users: sp.csr_matrix | None = None
    knn_item_norm: np.ndarray | None = None
    knn_user_norm: np.ndarray | None = None
    knn_alpha: float = 0.3
    knn_damping: float = 0.5
    knn_scale: float = 1.0  # the input is log1p(score / knn_scale)
    # the content input (None = not fitted): score_j = (Σ_{liked history i} content_rows[i])
    # · content_items[j], both (n_items, d) float32 (content_map: rows = F A, items = F)
    content_rows: np.ndarray | None = None
    content_items: np.ndarray | None = None
    # the "side" inputs (None = not fitted): (n_items, d) float32 numeric side features
    # and their column names (inputs "side:<name>")
    side_values: np.ndarray | None = None
    side_columns: tuple[str, ...] = ()
    # the "item_knn_rating" input (None = not fitted): (n_items, n_items) CSR of each
    # item's strongest residual neighbours (residual_neighbours), float32 values
    rknn: sp.csr_matrix | None = None
    rknn_damping: float = 0.5
    # rknn transposed (row i: the items counting i among their neighbours), what a
    # history reads (neighbour_offsets); derived from rknn, not saved
    rknn_t: sp.csr_matrix | None = field(default=None, init=False, repr=False)
    # the ranking inputs this fit was asked for and can compute (fit time only, not saved:
    # a saved Blend keeps the list its weights belong to)
    rank_names: tuple[str, ...] = ()
    # fit time only too: the large-catalogue inputs replaced EASE (BlendConfig.large_rank_fit)
    large: bool = False

    def __post_init__(self) -> None:
        if self.rknn is not None:  # frozen: set once, here, so it cannot disagree
            object.__setattr__(self, "rknn_t", self.rknn.T.tocsr())

    @classmethod
    def fit(
        cls,
        dataset: Dataset,
        train: Interactions,
        cfg: BlendConfig,
        like: float,
        seed: int,
        item_features: np.ndarray | None = None,
        cold: bool = False,
        item_numeric: tuple[np.ndarray, Sequence[str]] | None = None,
    ) -> ClosedForm:
        """``item_features`` (n_items, d): what the "content" input maps (the meta-model's
        item text + side vectors); without them that input is skipped. ``item_numeric``:
        ((n_items, d) values, d column names) of the "side" inputs; without them, or with
        no column, those are skipped. ``cold``: the blend ranks held-out items
        (``cfg.cold_rank_inputs``)."""
        imub = ItemMeanUserBias().fit(dataset, train)
        rknn = None
        # only explicit ratings have residuals to weigh (implicit rows are all positives:
        # every residual is 0)
        explicit = dataset.feedback == "explicit"
        if cfg.rating and explicit and "item_knn_rating" in cfg.rating_inputs:
            rknn = residual_neighbours(
                train,
                dataset.n_users,
                dataset.n_items,
                imub.mu_,
                imub.item_bias_,
                imub.user_shrinkage,
                cfg.rating_knn_shrink,
                cfg.rating_knn_neighbours,
            ).astype(np.float32)
        mf = BiasedMF(
            factors=cfg.mf_factors,
            reg=cfg.mf_reg,
            bias_reg=cfg.mf_reg,
            iterations=cfg.mf_iterations,
            seed=seed,
        ).fit(dataset, train)
        ease = ease_cols = None
        n_liked = len(np.unique(train.item_idx[is_relevant(train.rating, like)]))
        names = cfg.cold_rank_inputs if cold and cfg.cold_rank_inputs else cfg.rank_inputs
        large = "ease" in names and n_liked > cfg.ease_max_items
        if large:
            names = cfg.large_rank_inputs or tuple(n for n in names if n != "ease")
        if "ease" in names and n_liked > 0:
            e = EASE(reg=cfg.ease_reg, min_rating=like).fit(dataset, train)
            ease, ease_cols = e.weights_.astype(np.float32), e.col_of_item_
        als = gram = None
        want_als = "als" in names
        if want_als and importlib.util.find_spec("implicit") is None:
            # an optional extra: the blend goes on without this input (its weight is fitted
            # on validation users either way), but say so once
            warnings.warn(
                "blend: the 'als' rank input is skipped, the 'implicit' package is not "
                "installed (pip install 'metarec[baselines]')",
                stacklevel=2,
            )
        elif want_als:
            a = ImplicitALS(
                factors=cfg.als_factors,
                reg=cfg.als_reg,
                alpha=cfg.als_alpha,
                iterations=cfg.als_iterations,
                seed=seed,
                min_rating=like,
            ).fit(dataset, train)
            als, gram = a.item_vectors_.astype(np.float32), a.gram_
        knn = None
        if "knn" in names:
            knn = ItemKNN(cfg.knn_alpha, cfg.knn_damping, min_rating=like).fit(dataset, train)
        rows = feats = None
        if "content" in names and item_features is not None:
            x = presence_matrix(dataset, train, like)  # (n_users, n_items) liked, binary
            f = np.asarray(item_features, dtype=np.float64)
            rows = (f @ content_map(f, x, cfg.content_reg)).astype(np.float32)
            feats = f.astype(np.float32)
        side = side_cols = None
        if "side" in names and item_numeric is not None and len(item_numeric[1]):
            side = np.asarray(item_numeric[0], dtype=np.float32)
            side_cols = tuple(str(c) for c in item_numeric[1])
            if side.shape != (dataset.n_items, len(side_cols)):
                raise MetarecError(
                    f"blend: item_numeric has shape {side.shape}, expected "
                    f"({dataset.n_items}, {len(side_cols)})"
                )
        fitted = {
            "ease": ease is not None,
            "als": als is not None,
            "knn": knn is not None,
            "content": rows is not None,
            "side": side is not None,
        }
        # "side" stands for one input per numeric column
        rank_names = tuple(
            m
            for n in names
            if fitted.get(n, True)
            for m in ([f"side:{c}" for c in side_cols or ()] if n == "side" else [n])
        )
        return cls(
            mu=imub.mu_,
            item_bias=imub.item_bias_,
            user_shrinkage=imub.user_shrinkage,
            mf_mu=mf.mu_,
            mf_item_bias=mf.item_bias_,
            mf_item_factors=mf.item_factors_,
            mf_reg=mf.reg_,  # the penalties as scaled to the rating scale (BiasedMF.fit)
            mf_bias_reg=mf.bias_reg_,
            ease=ease,
            ease_cols=ease_cols,
            like=like,
            log_pop=np.log1p(popularity_counts(dataset, train)).astype(np.float64),
            als_factors=als,
            als_gram=gram,
            als_reg=cfg.als_reg,
            als_alpha=cfg.als_alpha,
            knn_user_items=knn.user_items_ if knn else None,
            knn_item_users=knn.item_users_ if knn else None,
            knn_item_norm=knn.item_norm_ if knn else None,
            knn_user_norm=knn.user_norm_ if knn else None,
            knn_alpha=cfg.knn_alpha,
            knn_damping=cfg.knn_damping,
            knn_scale=knn.median_score() if knn else 1.0,
            content_rows=rows,
            content_items=feats,
            side_values=side,
            side_columns=side_cols or (),
            rknn=rknn,
            rknn_damping=cfg.rating_knn_damping,
            rank_names=rank_names,
            large=large,
        )

    # --- per-history predictions (pure) ----------------------------------------------------
    def _mf_fold_in(self, items: np.ndarray, ratings: np.ndarray) -> tuple[np.ndarray, float]:
        if not len(items):
            return np.zeros(self.mf_item_factors.shape[1]), 0.0
        target = ratings - self.mf_mu - self.mf_item_bias[items]
        return ridge_fold_in(self.mf_item_factors[items], target, self.mf_reg, self.mf_bias_reg)

    def rating_inputs(
        self, names: Sequence[str], items: np.ndarray, ratings: np.ndarray, targets: np.ndarray
    ) -> np.ndarray:
        """(n_targets, len(names)) predicted ratings of ``targets`` given one history."""
        resid = ratings - self.mu - self.item_bias[items]
        b_u = shrunk_user_bias(resid, self.user_shrinkage)
        p, b = self._mf_fold_in(items, ratings)
        one = np.ones(len(targets))
        mf_item = self.mf_item_bias[targets] + self.mf_item_factors[targets] @ p
        parts = {
            "item_mean_user_bias": lambda: self.mu + b_u + self.item_bias[targets],
            "item_knn_rating": lambda: (
                self.mu
                + b_u
                + self.item_bias[targets]
                + self._knn_offsets(items, resid - b_u, targets)
            ),
            "biased_mf": lambda: self.mf_mu + b + mf_item,
            "user_bias": lambda: b_u * one,
            "item_bias": lambda: self.item_bias[targets],
            "mf_user": lambda: b * one,
            "mf_item": lambda: mf_item,
            "popularity": lambda: self.log_pop[targets],
        }
        cols = [parts[name]() for name in names]
        return np.stack(cols, 1) if cols else np.zeros((len(targets), 0))

    def _knn_offsets(self, items: np.ndarray, resid: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if self.rknn_t is None:
            raise MetarecError("blend: the item_knn_rating input was not fitted")
        return neighbour_offsets(self.rknn_t, items, resid, targets, self.rknn_damping)

    def rank_inputs(
        self,
        names: Sequence[str],
        histories: Sequence[tuple[np.ndarray, np.ndarray]],
        targets: np.ndarray,
    ) -> np.ndarray:
        """(n_histories, n_targets, len(names)) ranking scores of ``targets``."""
        out = np.zeros((len(histories), len(targets), len(names)))
        # each history's liked items, once for every input that reads them
        # compared in float32, as fit's likes are: a history cast to float64 held a 0.7
        # rating as 0.699999988, a dislike here and a like in training (probe 155)
        liked = [np.unique(items[is_relevant(ratings, self.like)]) for items, ratings in histories]
        for c, name in enumerate(names):
            if name == "popularity":
                out[:, :, c] = self.log_pop[targets][None, :]
            elif name == "biased_mf":
                for t, (items, ratings) in enumerate(histories):
                    p, b = self._mf_fold_in(items, ratings)
                    out[t, :, c] = self.mf_item_bias[targets] + self.mf_item_factors[targets] @ p
            elif name == "als" and self.als_factors is not None:
                assert self.als_gram is not None
                y = self.als_factors[targets]  # (n_targets, d)
                for t, li in enumerate(liked):
                    x = als_fold_in(
                        self.als_factors, self.als_gram, li, self.als_reg, self.als_alpha
                    )
                    out[t, :, c] = y @ x
            elif name == "ease" and self.ease is not None:
                assert self.ease_cols is not None
                # score = x_liked @ B: the sum of B's rows of the liked, trained history
                # items, then the target columns. Summing k rows (k x n_active reads) avoids
                # copying the (n_active, n_targets) column block per call (~50 ms per
                # serving cache miss on ML-100K when done as x @ B[:, cols]).
                col = self.ease_cols[targets]
                ok = col >= 0  # untrained targets keep 0
                for t, li in enumerate(liked):
                    rows = self.ease_cols[li]
                    rows = np.unique(rows[rows >= 0])  # binary x: a liked item counts once
                    if len(rows):
                        out[t, ok, c] = self.ease[rows].sum(0, dtype=np.float64)[col[ok]]
            elif name == "knn" and self.knn_user_items is not None:
                assert self.knn_item_users is not None
                assert self.knn_item_norm is not None and self.knn_user_norm is not None
                # log1p(s / median neighbour score): linear in the weak tail, logarithmic
                # above it, so the softmax fit's exp(w · input) is s^w there — a
                # multiplicative mix with the other inputs. Raw s (heavy-tailed) blended
                # worse on Amazon validation users (BlendConfig.large_rank_inputs)
                for t, li in enumerate(liked):
                    s = knn_scores(
                        self.knn_item_users,
                        self.knn_user_items,
                        self.knn_item_norm,
                        self.knn_user_norm,
                        li,
                    )[targets]
                    out[t, :, c] = np.log1p(s / self.knn_scale)
            elif name == "content" and self.content_rows is not None:
                assert self.content_items is not None
                # (T, d) profiles: the sum of the liked history's mapped rows (cold history
                # items count too: they have features), then one (T, d) @ (d, n) product
                prof = np.zeros((len(histories), self.content_rows.shape[1]))
                for t, li in enumerate(liked):
                    if len(li):
                        prof[t] = self.content_rows[li].sum(0, dtype=np.float64)
                out[:, :, c] = prof @ self.content_items[targets].T.astype(np.float64)
            elif name.startswith("side:") and name[5:] in self.side_columns:
                assert self.side_values is not None
                j = self.side_columns.index(name[5:])
                out[:, :, c] = self.side_values[targets, j][None, :]
        return out

    def has_input(self, name: str) -> bool:
        """Whether ranking input ``name`` has its fitted model here (rank_inputs scores an
        input without one as 0 for every item)."""
        needs = {
            "ease": self.ease,
            "als": self.als_factors,
            "knn": self.knn_user_items,
            "content": self.content_rows,
        }
        if name in needs:
            return needs[name] is not None
        if name.startswith("side:"):
            return self.side_values is not None and name[5:] in self.side_columns
        return name in ("popularity", "biased_mf")

    # --- persistence ------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        cfg = {
            "mu": self.mu,
            "user_shrinkage": self.user_shrinkage,
            "mf_mu": self.mf_mu,
            "mf_reg": self.mf_reg,
            "mf_bias_reg": self.mf_bias_reg,
            "like": self.like,
            "als_reg": self.als_reg,
            "als_alpha": self.als_alpha,
            "knn_alpha": self.knn_alpha,
            "knn_damping": self.knn_damping,
            "knn_scale": self.knn_scale,
        }
        tensors = {
            "item_bias": torch.from_numpy(self.item_bias.copy()),
            "mf_item_bias": torch.from_numpy(self.mf_item_bias.copy()),
            "mf_item_factors": torch.from_numpy(self.mf_item_factors.copy()),
            "log_pop": torch.from_numpy(self.log_pop.copy()),
        }
        if self.ease is not None and self.ease_cols is not None:
            tensors["ease"] = torch.from_numpy(self.ease.copy())
            tensors["ease_cols"] = torch.from_numpy(self.ease_cols.copy())
        if self.als_factors is not None and self.als_gram is not None:
            tensors["als_factors"] = torch.from_numpy(self.als_factors.copy())
            tensors["als_gram"] = torch.from_numpy(self.als_gram.copy())
        if self.knn_user_items is not None:
            # the CSR structure of the binary matrix; values are all 1 and the rest (the
            # transpose, the norms) is rebuilt at load
            x = self.knn_user_items
            cfg["knn_shape"] = list(x.shape)
            tensors["knn_indptr"] = torch.from_numpy(x.indptr.astype(np.int64))
            tensors["knn_indices"] = torch.from_numpy(x.indices.astype(np.int64))
        if self.content_rows is not None and self.content_items is not None:
            tensors["content_rows"] = torch.from_numpy(self.content_rows.copy())
            tensors["content_items"] = torch.from_numpy(self.content_items.copy())
        if self.side_values is not None:
            cfg["side_columns"] = list(self.side_columns)
            tensors["side_values"] = torch.from_numpy(self.side_values.copy())
        if self.rknn is not None:
            cfg["rknn_shape"] = list(self.rknn.shape)
            cfg["rknn_damping"] = self.rknn_damping
            # int32 columns: a catalogue has fewer than 2³¹ items; half the RUN's bytes
            tensors["rknn_indptr"] = torch.from_numpy(self.rknn.indptr.astype(np.int64))
            tensors["rknn_indices"] = torch.from_numpy(self.rknn.indices.astype(np.int32))
            tensors["rknn_data"] = torch.from_numpy(self.rknn.data.astype(np.float32))
        return cfg, tensors

    @classmethod
    def from_state(cls, cfg: dict, tensors: dict[str, torch.Tensor]) -> ClosedForm:
        def arr(key: str) -> np.ndarray:
            return tensors[key].numpy()

        knn: dict = {}
        if "knn_indptr" in tensors:
            indices = arr("knn_indices")
            x = sp.csr_matrix(
                (np.ones(len(indices)), indices, arr("knn_indptr")), shape=tuple(cfg["knn_shape"])
            )
            alpha, damping = float(cfg["knn_alpha"]), float(cfg["knn_damping"])
            item_norm, user_norm = knn_norms(x, alpha, damping)
            knn = dict(
                knn_user_items=x,
                knn_item_users=x.T.tocsr(),
                knn_item_norm=item_norm,
                knn_user_norm=user_norm,
                knn_alpha=alpha,
                knn_damping=damping,
                knn_scale=float(cfg["knn_scale"]),
            )
        rknn: dict = {}
        if "rknn_indptr" in tensors:
            bad = MetarecError("blend: the saved item_knn_rating neighbours are malformed")
            try:
                shape = tuple(int(n) for n in cfg["rknn_shape"])
                damping = float(cfg["rknn_damping"])
                indptr, indices = arr("rknn_indptr"), arr("rknn_indices").astype(np.int64)
                data = arr("rknn_data")
            except (KeyError, TypeError, ValueError):
                raise bad from None
            ok = (
                len(shape) == 2
                and shape[0] == shape[1] == len(arr("item_bias"))
                and len(indptr) == shape[0] + 1
                and indptr[0] == 0
                and len(indices) == len(data) == indptr[-1]
                and (len(indices) == 0 or (indices.min() >= 0 and indices.max() < shape[1]))
                and bool(np.all(np.diff(indptr) >= 0))
                and bool(np.isfinite(data).all())
                and np.isfinite(damping)
                and 0 <= damping <= KNN_RATING_MAX
            )
            if not ok:
                raise bad
            m = sp.csr_matrix((data, indices, indptr), shape=shape)
            if not m.has_canonical_format or m.diagonal().any():
                raise bad  # an item twice in a row, rows unsorted, an item its own neighbour
            rknn = dict(rknn=m, rknn_damping=damping)
        return cls(
            mu=float(cfg["mu"]),
            item_bias=arr("item_bias"),
            user_shrinkage=float(cfg["user_shrinkage"]),
            mf_mu=float(cfg["mf_mu"]),
            mf_item_bias=arr("mf_item_bias"),
            mf_item_factors=arr("mf_item_factors"),
            mf_reg=float(cfg["mf_reg"]),
            mf_bias_reg=float(cfg["mf_bias_reg"]),
            ease=arr("ease") if "ease" in tensors else None,
            ease_cols=arr("ease_cols") if "ease_cols" in tensors else None,
            like=float(cfg["like"]),
            log_pop=arr("log_pop"),
            als_factors=arr("als_factors") if "als_factors" in tensors else None,
            als_gram=arr("als_gram") if "als_gram" in tensors else None,
            als_reg=float(cfg.get("als_reg", 0.05)),
            als_alpha=float(cfg.get("als_alpha", 10.0)),
            content_rows=arr("content_rows") if "content_rows" in tensors else None,
            content_items=arr("content_items") if "content_items" in tensors else None,
            side_values=arr("side_values") if "side_values" in tensors else None,
            side_columns=tuple(cfg.get("side_columns", ())),
            **knn,
            **rknn,
        )


def content_map(features: np.ndarray, x: sp.spmatrix, reg: float) -> np.ndarray:
    """(d, d) map A of the content-collaborative score s_uj = (x_u F) A f_j.

    F = ``features`` (n_items, d), x (n_users, n_items) the binary liked matrix. A is the
    two-sided ridge solution of min ||X - X F A Fᵀ||: with P = X F (n_users, d) the
    users' feature profiles, the normal equations Pᵀ P A Fᵀ F = Pᵀ X F = Pᵀ P give
    A = (PᵀP + λ_p I)⁻¹ PᵀP (FᵀF + λ_f I)⁻¹, λ = ``reg`` × the mean eigenvalue of each
    Gram matrix. Without ridge A = (FᵀF)⁻¹: feature similarity whitened by the catalogue;
    the profile-side ridge shrinks the feature directions users' histories hardly vary
    along, which is what the co-occurrences add. Items enter only through their features,
    so items nobody rated are scored like any other (what item cold-start needs), and the
    cost is one d x d solve (d = text + side dimensions), not EASE's n_items³.
    """
    f = np.asarray(features, dtype=np.float64)
    d = f.shape[1]
    p = np.asarray(x @ f)  # (n_users, d)
    m = p.T @ p
    g = f.T @ f
    eye = np.eye(d)
    lam_p = reg * max(float(np.trace(m)) / d, 1e-12)
    lam_f = reg * max(float(np.trace(g)) / d, 1e-12)
    return np.linalg.solve(m + lam_p * eye, m) @ np.linalg.inv(g + lam_f * eye)


def rating_design(
    meta: np.ndarray,
    like: np.ndarray | None,
    x: np.ndarray,
    names: Sequence[str],
    unit: float = 1.0,
) -> np.ndarray:
    """(n, 1 + [1] + len(names)) the rating stack's columns: the meta rating (n,), the
    like logit (n,) where given, the closed-form inputs x (n, len(names)). The unitless
    ones (the like logit, popularity) are multiplied by ``unit``, one star of the rating
    scale, so every weight is in stars: the stack is fitted on this design and the
    ratings divided by ``unit`` (MetaRecommender._fit_rating_stack), and has the same
    weights, and the same shrink toward its prior, on any scale as on 1-5 stars.
    Exactly the columns as they are where unit is 1."""
    x = np.asarray(x, dtype=np.float64)
    if unit != 1.0 and "popularity" in names:
        x = x.copy()
        x[:, list(names).index("popularity")] *= unit
    cols = [np.asarray(meta, dtype=np.float64)[:, None], x]
    if like is not None:
        lk = np.asarray(like, dtype=np.float64)[:, None]
        cols.insert(1, lk * unit if unit != 1.0 else lk)
    return np.hstack(cols)


def fit_rating_weights(
    x: np.ndarray,
    y: np.ndarray,
    loss: str = "l2",
    *,
    intercept: bool = True,
    summed: np.ndarray | None = None,
    shrink: float = 0.0,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Stacking weights: y ≈ x @ w[:-1] + w[-1], by least squares (``"l2"``) or least
    absolute deviations (``"l1"``, an exact linear programme solved by HiGHS).

    x: (n_rows, n_inputs) predictions, y: (n_rows,) true ratings. Returns (n_inputs + 1,).
    ``intercept=False``: w[-1] = 0 and the weights of the inputs marked in ``summed``
    ((n_inputs,) bool; default all) sum to 1. ``shrink`` (l2 only): the ridge penalty
    shrink · n_rows · ||w[:-1] − prior||² (prior (n_inputs,), default 0; the intercept is
    never penalised), solved exactly with the sum constraint as one KKT system.
    """
    n, d_in = x.shape
    if n <= d_in + 1:
        raise MetarecError(f"blend: {n} validation ratings cannot fit {d_in} weights")
    if summed is None:
        summed = np.ones(d_in, dtype=bool)
    x1 = np.hstack([x, np.ones((n, 1))])  # (n, d)
    d = d_in + 1
    # equality constraints a @ w = b: no intercept and Σ summed weights = 1
    a = np.zeros((0, d))
    b = np.zeros(0)
    if not intercept:
        a = np.zeros((2, d))
        a[0, -1] = 1.0
        a[1, :d_in] = summed
        b = np.array([0.0, 1.0])
    if loss == "l2":
        if shrink == 0.0 and intercept:
            return np.linalg.lstsq(x1, y, rcond=None)[0]
        w0 = np.zeros(d)
        if prior is not None:
            w0[:d_in] = prior
        pen = np.full(d, shrink * n)
        pen[-1] = 0.0
        # KKT of min ||y − x1 w||² + Σ pen (w − w0)² s.t. a w = b
        k = a.shape[0]
        lhs = np.zeros((d + k, d + k))
        lhs[:d, :d] = 2 * (x1.T @ x1 + np.diag(pen))
        lhs[:d, d:] = a.T
        lhs[d:, :d] = a
        rhs = np.concatenate([2 * (x1.T @ y + pen * w0), b])
        w = np.linalg.lstsq(lhs, rhs, rcond=None)[0][:d]
        if not intercept:
            w[-1] = 0.0  # exactly, not the solver's ~1e-17
        return w
    if shrink != 0.0:
        raise MetarecError("blend: rating_shrink needs the l2 rating loss")
    from scipy.optimize import linprog

    # min Σ (u⁺ + u⁻) s.t. x1 w + u⁺ − u⁻ = y, a w = b, u± >= 0, w free: [w, u⁺, u⁻]
    eye = np.eye(n)
    cost = np.concatenate([np.zeros(d), np.ones(2 * n)])
    bounds = [(None, None)] * d + [(0, None)] * (2 * n)
    a_eq = np.vstack([np.hstack([x1, eye, -eye]), np.hstack([a, np.zeros((len(a), 2 * n))])])
    b_eq = np.concatenate([y, b])
    res = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if not res.success:
        raise MetarecError(f"blend: the L1 rating stack did not solve ({res.message})")
    w = res.x[:d]
    if not intercept:
        w[-1] = 0.0
    return w


def pair_order(y: np.ndarray, s: np.ndarray) -> float:
    """Fraction of one user's differently rated item pairs that ``s`` orders like ``y``
    (a tie in s counts half; NaN without such a pair): AUC over every rating threshold at
    once, so the choice it drives does not hang on where "liked" starts."""
    dy = np.sign(y[:, None] - y[None, :])  # (n, n)
    ds = np.sign(s[:, None] - s[None, :])
    pairs = dy > 0
    if not pairs.any():
        return float("nan")
    return float(((ds[pairs] > 0) + 0.5 * (ds[pairs] == 0)).mean())


def best_ordering_input(
    names: Sequence[str], x: np.ndarray, y: np.ndarray, groups: Sequence[int]
) -> str:
    """The name in ``names`` (of x's columns, (n_rows, len(names))) whose values order each
    user's ratings ``y`` (n_rows,) best: mean :func:`pair_order` over the users, rows cut
    into users by the sizes ``groups``. The first name wins a tie."""
    bounds = np.cumsum([0, *groups])
    score = []
    for j in range(len(names)):
        per_user = [
            pair_order(y[a:b], x[a:b, j]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        vals = np.array([v for v in per_user if np.isfinite(v)])
        score.append(vals.mean() if len(vals) else -np.inf)
    return names[int(np.argmax(score))]


def apply_rating_weights(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n,) blended predictions of (n, n_inputs) inputs."""
    return x @ w[:-1] + w[-1]


def _standardised(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z, scale): x (U, N, C) divided by each input's std (constant inputs zeroed)."""
    x = np.asarray(x, dtype=np.float64)
    scale = x.reshape(-1, x.shape[-1]).std(0)  # (C,)
    flat = scale <= 1e-12
    scale = np.where(flat, 1.0, scale)
    return np.where(flat, 0.0, x) / scale, scale


def fit_rank_weights(
    x: np.ndarray, positive: np.ndarray, excluded: np.ndarray, weight_decay: float = 1e-3
) -> np.ndarray:
    """Weights w maximising Σ_users Σ_pos log softmax(x_u @ w)[pos] over non-excluded items.

    x: (n_users, n_items, n_inputs) scores of every catalogue item (column 0: the
    meta-model's logit); positive, excluded: (n_users, n_items) bool (liked query items;
    support items, never ranked). Inputs are standardised for the optimiser and the L2
    penalty ``weight_decay``; the returned (n_inputs,) weights apply to the raw inputs.
    Deterministic: L-BFGS (scipy) from the meta-model alone, with the exact gradient
    −(1/P) Σ_u (Σ_pos x_ui − n_u Σ_i p_ui x_ui) + 2 λ v.
    """
    from scipy.optimize import minimize

    positive = positive & ~excluded
    if not positive.any():
        raise MetarecError("blend: no liked validation query item to fit ranking weights on")
    # a constant input cannot change a softmax: it is zeroed so its weight stays exactly 0
    z, scale = _standardised(x)  # (U, N, C), (C,)
    n_pos = positive.sum(1).astype(np.float64)  # (U,)
    total = n_pos.sum()
    pos_sum = np.einsum("un,unc->c", positive.astype(np.float64), z)  # (C,)

    def loss_grad(v: np.ndarray) -> tuple[float, np.ndarray]:
        s = np.where(excluded, -np.inf, z @ v)  # (U, N)
        m = s.max(1, keepdims=True)
        e = np.exp(s - m)
        lse = m[:, 0] + np.log(e.sum(1))  # (U,)
        p = e / e.sum(1, keepdims=True)  # (U, N) softmax, 0 on excluded items
        s_pos = np.where(positive, s, 0.0).sum()
        loss = -(s_pos - (n_pos * lse).sum()) / total + weight_decay * (v @ v)
        expect = np.einsum("un,unc->uc", p, z)  # (U, C) softmax-weighted inputs
        grad = -(pos_sum - (n_pos[:, None] * expect).sum(0)) / total + 2 * weight_decay * v
        return float(loss), grad

    v0 = np.zeros(x.shape[-1])
    v0[0] = scale[0]  # w = (1, 0, ...): the meta-model alone
    res = minimize(
        loss_grad, v0, jac=True, method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-10}
    )
    return res.x / scale


def _tie_order(n: int) -> np.ndarray:
    """The fixed random order of n items that breaks exact ties (ndcg_of_weights)."""
    return np.random.default_rng([N_TIE_SEED, n]).permutation(n)


def ndcg_of_weights(
    z: np.ndarray,
    positive: np.ndarray,
    excluded: np.ndarray,
    v: np.ndarray,
    k: int,
    shuffled: bool = False,
) -> float:
    """Mean binary nDCG@k over the users with a positive, ranking the non-excluded items by
    z @ v (z (U, N, C), positive / excluded (U, N) bool). Exact ties are broken in one
    fixed random order of the items, as evaluate breaks them at random: argpartition's
    order on ties follows the index, and where ids follow popularity (ML-100K) an all-tied
    input scored like a popularity ranking, so the search could favour weights that leave
    many ties (an input's zeros). ``shuffled``: the columns already come in that order
    (:func:`search_rank_weights` permutes them once rather than on each of its calls)."""
    positive = positive & ~excluded
    has = positive.any(1)
    if not has.any():
        return 0.0
    s = np.where(excluded, -np.inf, np.asarray(z, dtype=np.float64) @ v)[has]  # (U', N)
    pos = positive[has]
    if not shuffled:  # the same order on every call (seeded by N)
        order = _tie_order(s.shape[1])
        s, pos = s[:, order], pos[:, order]
    k = min(k, s.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]  # (U', k) unordered top k
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    disc = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = np.take_along_axis(pos, top, 1).astype(np.float64) @ disc
    n_rel = np.minimum(pos.sum(1), k)
    ideal = np.cumsum(disc)[n_rel - 1]
    return float(np.mean(dcg / ideal))


# multiples of the largest standardised weight tried per input by the nDCG search
_SEARCH_GRID = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def search_rank_weights(
    x: np.ndarray,
    positive: np.ndarray,
    excluded: np.ndarray,
    start: np.ndarray,
    k: int = 10,
    sweeps: int = 3,
) -> np.ndarray:
    """Weights for the best validation nDCG@k, by coordinate search from ``start``.

    The softmax fit rewards lifting every positive out of the tail of the catalogue; the
    full-ranking metrics only look at the top k, where a widely spread input (the
    meta-model's logit) can push a strong one (ALS, EASE) out. The ranking is invariant to
    the weights' scale, so in standardised units the start is scaled to a largest |weight|
    of 1 and each input in turn is set to the best of ``_SEARCH_GRID`` (keeping the
    current value on ties), ``sweeps`` times or until nothing changes. Returns (C,)
    weights on the raw inputs, like :func:`fit_rank_weights`."""
    z, scale = _standardised(x)
    # the tie order applied once to the columns (a gather per call added ~40% to each of
    # the search's hundreds of calls on 36k items); nDCG is unchanged by it
    order = _tie_order(z.shape[1])
    z, positive, excluded = z[:, order], positive[:, order], excluded[:, order]
    v = np.asarray(start, dtype=np.float64) * scale
    top = np.abs(v).max()
    v = v / top if top > 0 else np.eye(len(v))[0]
    best = ndcg_of_weights(z, positive, excluded, v, k, shuffled=True)
    for _ in range(sweeps):
        changed = False
        for j in range(len(v)):
            for g in _SEARCH_GRID:
                cand = v.copy()
                cand[j] = g
                if not cand.any():
                    continue
                val = ndcg_of_weights(z, positive, excluded, cand, k, shuffled=True)
                if val > best + 1e-12:
                    best, v, changed = val, cand, True
        if not changed:
            break
    return v / scale


def fit_rank_blend(
    x: np.ndarray,
    positive: np.ndarray,
    excluded: np.ndarray,
    weight_decay: float,
    how: str = "softmax",
    k: int = 10,
    search_users: int = 300,
    head: int = 0,
) -> tuple[np.ndarray, str]:
    """(weights, the fit used): ``how`` as :attr:`BlendConfig.rank_fit` ("auto": "cv"
    with at least ``search_users`` users, rows of x, else "softmax"). "cv" compares the
    softmax fit and the nDCG search by 2-fold CV over the users (rows of x; even rows
    against odd ones, both ways) on nDCG@k, keeps the softmax fit unless the search is
    strictly better, and refits the winner on every user.

    ``head`` > 0: the softmax fit sees, per user, only the union of every input's top
    ``head`` items (positives outside it are dropped), so the weights order the items
    some input already puts near the top rather than pull up positives that no input
    reaches (the top-k metrics never see those); the nDCG scoring is unrestricted."""
    if how not in RANK_FITS:
        raise MetarecError(f"fit_rank_blend: how={how!r} (one of {RANK_FITS})")
    positive = positive & ~excluded
    fit_excl = excluded
    if 0 < head < x.shape[1]:
        near = np.zeros_like(excluded)  # (U, N)
        for c in range(x.shape[2]):
            col = np.where(excluded, -np.inf, x[:, :, c])
            top = np.argpartition(-col, head - 1, axis=1)[:, :head]  # (U, head)
            np.put_along_axis(near, top, True, 1)
        if (positive & near).any():
            fit_excl = excluded | ~near

    def fit(rows: np.ndarray, kind: str) -> np.ndarray:
        pos, ex = positive[rows] & ~fit_excl[rows], fit_excl[rows]
        w = fit_rank_weights(x[rows], pos, ex, weight_decay)
        if kind == "ndcg":
            w = search_rank_weights(x[rows], positive[rows], excluded[rows], w, k)
        return w

    every = np.arange(x.shape[0])
    if how == "auto":
        how = "cv" if x.shape[0] >= search_users else "softmax"
    if how != "cv":
        return fit(every, how), how
    folds = (every[0::2], every[1::2])
    cv = {}
    for kind in ("softmax", "ndcg"):
        score = 0.0
        for a, b in ((0, 1), (1, 0)):
            if not positive[folds[a]].any() or not positive[folds[b]].any():
                return fit(every, "softmax"), "softmax"  # too few users to compare
            w = fit(folds[a], kind)  # raw weights: scored on the raw inputs
            rows = folds[b]
            score += ndcg_of_weights(x[rows], positive[rows], excluded[rows], w, k)
        cv[kind] = score
    kind = "ndcg" if cv["ndcg"] > cv["softmax"] + 1e-12 else "softmax"
    return fit(every, kind), kind


def rank_columns(logits: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """The rank blend's design (T, n, 1 + C): the meta logit (T, n), then the inputs."""
    return np.concatenate([np.asarray(logits, dtype=np.float64)[:, :, None], inputs], 2)


# the fitted weight arrays a Blend saves and loads (None ones are left out)
_WEIGHT_KEYS = ("rating_weights", "rank_weights", "rank_weights_short", "rating_weights_short")


@dataclass(frozen=True, eq=False)
class Blend:
    """A fitted blend: closed-form models plus the weights of each stack (None = unused)."""

    closed: ClosedForm
    rating_inputs: tuple[str, ...]
    # (2 + like + len(rating_inputs),): meta, [like logit], inputs, intercept
    rating_weights: np.ndarray | None
    rank_inputs: tuple[str, ...]
    rank_weights: np.ndarray | None  # (1 + len(rank_inputs),): meta logit, inputs
    rating_like: bool = False  # the like-model's logit is a rating input
    rank_fit: str = "softmax"  # how rank_weights were fitted ("softmax" or "ndcg")
    # histories of at most ``short_history`` items are ranked with ``rank_weights_short``
    short_history: int = 0
    rank_weights_short: np.ndarray | None = None
    # histories of at most rating_cuts[j] items (the smallest such j) are rated with row j
    # of rating_weights_short, (len(rating_cuts), len(rating_weights))
    rating_cuts: tuple[int, ...] = ()
    rating_weights_short: np.ndarray | None = None
    # the input the rating weights were shrunk toward ("" = none: no shrink, no rating
    # stack, or a RUN from before 2026-12-06); with rating_prior "auto", the one fit chose
    rating_prior: str = ""
    # one star of the data's rating scale (a quarter of its range; 1 on 1-5 stars): the
    # stack's unitless columns (the like logit, popularity) enter times it, so that
    # every weight, and the shrink toward the prior, means on any scale what it means on
    # 1-5 stars (see rating_design)
    rating_unit: float = 1.0

    def rating_weights_for(self, n_history: int) -> np.ndarray | None:
        """The rating weights a history of ``n_history`` items is rated with."""
        if self.rating_weights_short is not None:
            for j, cut in enumerate(self.rating_cuts):
                if n_history <= cut:
                    return self.rating_weights_short[j]
        return self.rating_weights

    def rating(
        self,
        meta: np.ndarray,
        history: tuple[np.ndarray, np.ndarray],
        targets: np.ndarray,
        like: np.ndarray | None = None,
        n_history: int | None = None,
    ) -> np.ndarray:
        """(n,) blended rating of ``targets`` from the meta-model's (n,) raw ratings (and
        the like-model's (n,) logits when ``rating_like``). The weights are those of a
        history of ``n_history`` items (default: ``history``'s own length)."""
        if self.rating_weights is None:
            return meta
        w = self.rating_weights_for(len(history[0]) if n_history is None else n_history)
        x = self.closed.rating_inputs(self.rating_inputs, *history, targets)
        if self.rating_like and like is None:
            raise MetarecError("blend: this rating stack needs the like-model's logits")
        design = rating_design(
            meta, like if self.rating_like else None, x, self.rating_inputs, self.rating_unit
        )
        return apply_rating_weights(w, design)

    def is_short(self, history: tuple[np.ndarray, np.ndarray]) -> bool:
        """Whether a history (items, ratings) is ranked with the short-history weights."""
        return len(history[0]) <= self.short_history

    def rank(
        self,
        logits: np.ndarray,
        histories: Sequence[tuple[np.ndarray, np.ndarray]],
        targets: np.ndarray,
        short: np.ndarray | None = None,
    ) -> np.ndarray:
        """(T, n) blended ranking scores from the like-model's (T, n) logits. ``short``
        (T,) bool says which tasks take the short-history weights (default:
        :meth:`is_short` of each history)."""
        if self.rank_weights is None:
            return logits
        x = self.closed.rank_inputs(self.rank_inputs, histories, targets)  # (T, n, C)
        # weights per task, (T, 1 + C); no (T, n, 1 + C) design copy on this hot path
        # (recommend scores whole catalogues with it)
        w = self.rank_weights[None, :]
        if self.rank_weights_short is not None:
            if short is None:
                short = np.array([self.is_short(h) for h in histories])
            w = np.where(np.asarray(short)[:, None], self.rank_weights_short, self.rank_weights)
        return logits * w[:, :1] + (x @ w[:, 1:, None])[..., 0]

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        cfg, tensors = self.closed.state()
        cfg = {
            "closed": cfg,
            "rating_inputs": list(self.rating_inputs),
            "rank_inputs": list(self.rank_inputs),
            "rating_like": self.rating_like,
            "rank_fit": self.rank_fit,
            "short_history": self.short_history,
            "rating_cuts": list(self.rating_cuts),
            "rating_prior": self.rating_prior,
            "rating_unit": self.rating_unit,
        }
        for key in _WEIGHT_KEYS:
            w = getattr(self, key)
            if w is not None:
                tensors[key] = torch.from_numpy(np.asarray(w, dtype=np.float64).copy())
        return cfg, tensors

    @classmethod
    def from_state(cls, cfg: dict, tensors: dict[str, torch.Tensor]) -> Blend:
        def weights(key: str) -> np.ndarray | None:
            return tensors[key].numpy() if key in tensors else None

        closed = ClosedForm.from_state(cfg["closed"], tensors)
        rank_inputs = tuple(cfg["rank_inputs"])
        if "rank_weights" in tensors:
            missing = [n for n in rank_inputs if not closed.has_input(n)]
            if missing:  # a weight for an input that would silently score 0
                raise KeyError(f"blend: the ranking input {missing[0]!r} has no fitted model")
        # every weight is finite: a load-time score touches only the weights of the one
        # history length it tries (the one-item ones), so a NaN in another set served
        # NaN scores, and an unrankable catalogue, at request time
        for key in _WEIGHT_KEYS:
            w = weights(key)
            if w is not None and not np.isfinite(w).all():
                raise ValueError(f"blend: {key} holds NaN or inf")
        raw_cuts = cfg.get("rating_cuts", [])
        if not isinstance(raw_cuts, list) or not increasing_sizes(raw_cuts):
            raise ValueError(
                f"blend: rating_cuts {raw_cuts!r} are not increasing support sizes >= 1"
            )
        short_history = cfg.get("short_history", 0)
        if (
            not isinstance(short_history, int)
            or isinstance(short_history, bool)
            or short_history < 0
        ):
            raise ValueError(f"blend: short_history {short_history!r} is not a size >= 0")
        cuts = tuple(raw_cuts)
        unit = cfg.get("rating_unit", 1.0)  # RUNs before it: columns as they were
        if not isinstance(unit, int | float) or isinstance(unit, bool) or not 0 < unit < math.inf:
            raise ValueError(f"blend: rating_unit {unit!r} is not a finite number > 0")
        short = weights("rating_weights_short")
        if (short is None and cuts) or (short is not None and short.shape[0] != len(cuts)):
            # a cut without its row would fail at the first short user's request
            raise KeyError(
                f"blend: {len(cuts)} rating_cuts but "
                f"{0 if short is None else short.shape[0]} rows of rating_weights_short"
            )
        return cls(
            closed,
            tuple(cfg["rating_inputs"]),
            weights("rating_weights"),
            rank_inputs,
            weights("rank_weights"),
            bool(cfg.get("rating_like", False)),
            str(cfg.get("rank_fit", "softmax")),
            short_history,
            weights("rank_weights_short"),
            cuts,
            short,
            str(cfg.get("rating_prior", "")),
            float(unit),
        )
