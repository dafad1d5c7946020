"""MetaRecommender: the meta-learned model behind ``metarec fit`` as a :class:`Recommender`.

What it puts together (each piece lives in its own module):

* features (``features.build_features``): pretrained-encoder text vectors of every item
  (PCA fitted on training items only), item side features, user side features;
* a **rating model** (explicit data): the scorer with the rating head, meta-trained so that
  adapting to a user's support predicts that user's ratings (MAE/RMSE, query ranking);
* a **ranking model**: the scorer with the binary head P(y=1 | u, c) = P(u likes c),
  meta-trained on likes (rating >= ``like_threshold``; every event for implicit data) against
  disliked items and sampled negatives. ``recommend`` and the full-catalogue metrics rank
  with it, because a rating regressor ranks the catalogue badly (it favours obscure items
  with a few high ratings). For implicit data it is the only model and also gives
  ``score`` (a probability).

* a **blend** (``blend.py``, ``ModelConfig.blend``): the rating is stacked with closed-form
  ItemMean+UserBias / BiasedMF fold-ins / item-kNN on residuals (and the like-model's
  logit; by default a weighted average of the four ratings, no intercept, plus the logit
  term, shrunk toward the closed-form rating that orders validation users best), the
  ranking logit with EASE and popularity scores; the weights are fitted on the validation
  users after meta-training, the closed-form models on the meta-training interactions
  only.

Validation users for early stopping are carved out of ``train`` itself (the newest users by
first interaction, like the test protocol) unless ``fit`` is given validation tasks; test
users are never seen. ``score``/``recommend`` adapt per call and never change the model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp
import torch

from metarec.blend import (
    PRIOR_CANDIDATES,
    Blend,
    BlendConfig,
    ClosedForm,
    apply_rating_weights,
    best_ordering_input,
    fit_rank_blend,
    fit_rating_weights,
    rank_columns,
    rating_design,
)
from metarec.config import check_field_types, deep_merge, from_dict, to_dict
from metarec.devices import resolve_device
from metarec.errors import user_path
from metarec.features import TEXT_REDUCERS, FeatureSet, build_features, numeric_features
from metarec.meta.algorithms import ALGORITHMS, MetaConfig, MetaLearner
from metarec.meta.ensemble import EnsembleLearner, member_params, member_prefix, merge_members
from metarec.meta.episodes import (
    Episode,
    build_inputs,
    make_episode,
    pad_episodes,
)
from metarec.metrics import is_relevant
from metarec.models.scorer import LOSSES, Scorer, ScorerConfig
from metarec.recommender import Recommender, check_tasks
from metarec.train import (
    MAX_NEGATIVES,
    MetaLossDiverged,
    TrainConfig,
    TrainResult,
    resolve_episodes,
    train,
    validates_new_items,
)
from metarec.types import (
    IMPLICIT_POSITIVE,
    MAX_SEED,
    Dataset,
    Interactions,
    MetarecError,
    Split,
    Task,
)
from metarec.user_side import UserFeatures

HISTORY_ORDERS = ("time", "item_age")  # ModelConfig.history_order
VALID_HOLDOUTS = ("users", "new_items")  # ModelConfig.valid_holdout


@dataclass(frozen=True)
class TextConfig:
    model: str = "default"  # sentence-transformers name/path, "default" (MiniLM), "hashing:64"
    template: str | None = None  # item text template, e.g. "{title} by {authors}"
    pca_dim: int | None = 64  # PCA of text vectors fitted on training items; None = raw
    whiten: bool = False  # PCA axes equalised at their mean variance (TextProjection)
    # how text vectors come down to pca_dim: "pca" (closed form), or "autoencoder": the
    # code of an encoder/decoder trained to rebuild the training items' vectors
    # (models/autoencoder.py), a non-linear reduction
    reduce: str = "pca"
    cache: str | None = None  # embedding cache folder; default $METAREC_HOME/embeddings
    user_text: bool = False  # also embed user side text (demographics) as a user feature
    device: str | None = None  # encoder device: cpu (default), cuda, auto

    def __post_init__(self) -> None:
        check_field_types(self)
        # checked with the config, before anything trains (an experiment used to reach
        # every method, fail each, and only then say why)
        if self.pca_dim is not None and self.pca_dim < 1:
            raise MetarecError(f"text.pca_dim must be >= 1 or unset, got {self.pca_dim}")
        if self.reduce not in TEXT_REDUCERS:
            raise MetarecError(f"text.reduce: {self.reduce!r} is not one of {TEXT_REDUCERS}")
        if self.reduce == "autoencoder" and (self.pca_dim is None or self.whiten):
            raise MetarecError(
                "text.reduce = 'autoencoder' needs text.pca_dim (the code size) and no "
                "text.whiten (whitening is a PCA's)"
            )
        if self.model == "hashing" or self.model.startswith("hashing:"):
            from metarec.text import make_encoder

            make_encoder(self.model)  # "hashing:0", "hashing:x": one line now


# fit halves meta.inner_lr this many times at most when meta-training's loss goes
# non-finite (0.05 -> 0.00625); see MetaRecommender._train_part
INNER_LR_BACKOFFS = 3
MAX_MEMBERS = 16  # model.rank_members: each member is a full training run

# widest embedding or hidden layer accepted: a typo (embed_dim=3200000) otherwise asks for
# an (n_items, width) table of tens of GB before anything says why
MAX_WIDTH = 65_536
# the most weights one hidden-to-hidden layer may have (2^26: 256 MB in float32)
MAX_LAYER_WEIGHTS = 1 << 26


@dataclass(frozen=True)
class ScorerOptions:
    """The user-facing part of :class:`ScorerConfig` (widths come from the features)."""

    embed_dim: int = 32
    hidden: tuple[int, ...] = (64, 64)
    use_item_id: bool = True
    use_item_bias: bool = True
    use_profile: bool = True
    user_vector: bool = True
    interaction: bool = True

    def __post_init__(self) -> None:
        check_field_types(self)  # built directly: hidden=(2.5,) failed deep inside torch


@dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = field(default_factory=TextConfig)
    scorer: ScorerOptions = field(default_factory=ScorerOptions)
    # the rating model's meta-algorithm. MAML over ridge on ML-100K user-cold validation
    # users (3 seeds, blend fitted on them): MAE 0.812 vs 0.818, AUC 0.657 vs 0.652,
    # nDCG@3 (query) 0.839 vs 0.841; FOMAML 0.816 / 0.656 / 0.837, NP 0.821 / 0.659 / 0.842
    meta: MetaConfig = field(default_factory=lambda: MetaConfig(algorithm="maml"))
    # ema 0.98 (Polyak averaging, TrainConfig.ema) over 0 (the raw parameters): validation
    # users, mean of seeds 0-2 (Amazon: the seeds shown), nDCG@10 (full), 0 -> 0.98 —
    # ML-100K item cold 0.2088 -> 0.2488 (Recall@10 0.3163 -> 0.3466, AUC 0.592 -> 0.608);
    # ML-100K user cold 0.1865 -> 0.1824 (AUC 0.6681 -> 0.6698, MAE 0.8184 -> 0.8187);
    # goodbooks 0.1831 -> 0.1858; Amazon (Transfer-joint) Kitchen->Food 0.0984 -> 0.0986,
    # Food->Kitchen 0.0360 -> 0.0356. One large gain, the rest within noise (ema 0.995 on
    # item cold: 0.2406). On the item cold test movies it did not hold (README verdict)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=600, eval_every=50, ema=0.98)
    )
    rank_model: bool = True  # explicit data: also train the binary ranking model
    # the ranking (like) model's meta-algorithm (None: same as meta). The neural process
    # (amortised: one encoder pass adapts, no gradient steps) over ridge and FOMAML on
    # validation users, 3 seeds: ML-100K user cold Recall@10 (full) 0.215 vs 0.205 / 0.203,
    # nDCG@10 (full) 0.185 vs 0.179 / 0.172; item cold 0.316 vs 0.311 (nDCG@10 0.212 vs
    # 0.221); Amazon Food->Kitchen (seed 0, blend CV) nDCG@10 0.0163 vs 0.0151
    rank_meta: MetaConfig | None = field(default_factory=lambda: MetaConfig(algorithm="np"))
    rank_negatives: int = 4  # sampled negatives per positive for the ranking model
    # ranking models trained from different seeds and scored as one (the mean logit;
    # metarec.meta.ensemble); 1 = a single model. Each member costs one more training run
    # and one more adaptation per request. ML-100K item cold, nDCG@10 (full), seeds 0-2
    # (mean), 1 vs 3: validation items 0.2619 vs 0.2609 (Recall@10 0.3976 vs 0.3946),
    # backtest far items 0.1582 vs 0.1737: validation did not choose it (README)
    rank_members: int = 1
    # rating models trained from different seeds and scored as one (the mean predicted
    # rating), as rank_members is for the ranking model; 1 = a single model. 3 over 1 on
    # validation users (2-fold CV, seeds 0-2, mean; docs/defaults.md): ML-100K user cold
    # MAE 0.8059 -> 0.8039, AUC 0.6753 -> 0.6802, nDCG@3 0.8453 -> 0.8460 (each on 3 seeds
    # of 3); item cold MAE 0.8529 -> 0.8492, AUC 0.6097 -> 0.6135; goodbooks MAE 0.6923 ->
    # 0.6909, AUC 0.6612 -> 0.6635, nDCG@3 0.8806 -> 0.8788. Costs three rating-model
    # trainings per fit and three adaptations per rated user (not recommend's ranking)
    rating_members: int = 3
    # rank_members where the validation tasks test new items (item cold-start, as
    # cold_rank_id_dropout); None = rank_members. 3 with ID dropout 0.99, ML-100K item
    # cold, nDCG@10 (full), mean of seeds 0-4, 1 vs 3 members: validation items 0.2797 vs
    # 0.2764 (Recall@10 0.4082 vs 0.4114), backtest far items 0.1504 vs 0.1816 (5 of 5);
    # the rule written before seeds 3-4 ran needed validation nDCG@10 too, so None
    cold_rank_members: int | None = None
    # the ranking model's loss: "bce" (each item alone) or "softmax" (each like against its
    # episode's negatives, ScorerConfig.loss; with the NP ranking model only)
    rank_loss: str = "bce"
    # item-ID dropout of the ranking (like) model; None = train.id_dropout. 0.5 over 0.1 on
    # ML-100K validation users, 3 seeds: item cold Recall@10 (full) 0.165 vs 0.144, user
    # cold 0.205 vs 0.201; the rating model keeps 0.1 (its AUC / nDCG@3 were better there)
    rank_id_dropout: float | None = 0.5
    # the ranking model's item-ID dropout where the validation tasks test new items (item
    # cold-start in `metarec evaluate`, metarec.train.validates_new_items: every item it is
    # judged on has no ID row, so it trains as if items were new nearly always); None =
    # rank_id_dropout. ML-100K item cold, nDCG@10 (full), seeds 0/1/2 (mean):
    #   dropout   validation items (Recall@10)          backtest far items
    #   0.5       0.2742 / 0.2415 / 0.2701 (0.2619; 0.3976)   0.1561 / 0.1249 / 0.1936 (0.1582)
    #   0.8       0.2914 / 0.2564 / 0.2635 (0.2704; 0.4092)   0.1614 / 0.1270 / 0.2041 (0.1642)
    #   0.95      0.2955 / 0.2584 / 0.2648 (0.2729; 0.4116)   0.1649 / 0.1311 / 0.2040 (0.1667)
    #   0.99      0.2967 / 0.2594 / 0.2671 (0.2744; 0.4133)   0.1654 / 0.1301 / 0.2027 (0.1661)
    # (LightFM on the validation items: 0.2623; 0.3747.) Validation picks 0.99; the
    # backtest, which reads no validation or test row, agrees on 3 seeds of 3 against 0.5
    cold_rank_id_dropout: float | None = 0.99
    # explicit data: a rating >= this is a "like" (label 1) for the ranking model, a lower
    # rating an explicit negative (label 0); None = the middle of the rating scale
    like_threshold: float | None = None
    # support size of meta-training episodes, and of fit's own validation users: always
    # this one, in `metarec evaluate` too, where the split's k_shot sets the test users'
    # support but not training's (the Amazon configs repeat K = 5 under [model])
    k_shot: int = 10
    n_query: int = 10  # query size of meta-training episodes
    valid_frac: float = 0.1  # share of training users (or items) held out for early stopping
    # what fit holds out of `train` for early stopping and the blend when it is given no
    # validation tasks (`metarec fit`): "users", the newest valid_frac of users (their
    # first K interactions as support, the next Q as query: new users), or "new_items",
    # the newest valid_frac of items by first interaction (each user's first K other
    # interactions as support, their rows on those items as query: new items). With
    # "new_items" those items' rows leave meta-training and they are served as new items;
    # the item cold-start settings follow (train.episodes "auto", cold_rank_id_dropout,
    # train.valid_negatives "auto")
    valid_holdout: str = "users"
    # after early stopping on the validation tasks fit holds out of its input (above),
    # train each part again from its initialisation on *all* of the input's rows for the
    # number of steps validation chose, and refit the blend's closed-form models on all
    # rows (its weights stay as the validation tasks fitted them). Without it the held-out
    # rows (the newest users' or items') never reach meta-training or the ID tables. Only
    # where fit holds out its own validation (`metarec fit`): in `metarec evaluate` the
    # validation users' rows would reach the meta-model and not the baselines. Doubles the
    # training time.
    refit: bool = False
    max_support: int = 64  # adapt on at most this many of a user's history's last rows
    # which training rows come last in a history, so that a history longer than
    # max_support keeps them (the support passed in is always last): "time" a user's
    # latest interactions, "item_age" the interactions with the newest items (by the
    # item's first training interaction; then by time). Only warm users with long
    # histories are cut: on the benchmarks, item cold-start (ML-100K users, median ~65
    # ratings); user cold-start has no training rows, cross-domain ~1% of users over 64.
    # ML-100K item cold, validation users over the validation items, mean of seeds 0-2,
    # MAE / AUC / Recall@10 / nDCG@10 (full):
    #   "time", max_support 64        0.8596 / 0.6059 / 0.3478 / 0.2550
    #   "time", max_support 256       0.8566 / 0.6002 / 0.3480 / 0.2545
    #   "time", max_support 1024      0.8562 / 0.5998 / 0.3478 / 0.2542
    #   "item_age", max_support 32    0.8510 / 0.6060 / 0.3495 / 0.2561
    #   "item_age", max_support 64    0.8522 / 0.6053 / 0.3502 / 0.2557
    # (MAE better on 3 seeds of 3 than "time" at any cap): for new items, a user's
    # ratings of the newest items say more than their latest ratings, or all of them
    history_order: str = "item_age"
    # stacking with closed-form models, weights fitted on validation users (blend.py)
    blend: BlendConfig = field(default_factory=BlendConfig)
    device: str = "cpu"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0 < self.valid_frac < 1:
            raise MetarecError(f"model.valid_frac must be in (0, 1), got {self.valid_frac}")
        for name in ("k_shot", "n_query", "max_support"):
            if getattr(self, name) < 1:
                raise MetarecError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.valid_holdout not in VALID_HOLDOUTS:
            raise MetarecError(
                f"model.valid_holdout: {self.valid_holdout!r} is not one of {VALID_HOLDOUTS}"
            )
        if self.history_order not in HISTORY_ORDERS:
            raise MetarecError(
                f"model.history_order: {self.history_order!r} is not one of {HISTORY_ORDERS}"
            )
        for name in ("rank_id_dropout", "cold_rank_id_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise MetarecError(f"model.{name} must be in [0, 1), got {value}")
        if not 0 <= self.seed <= MAX_SEED:
            raise MetarecError(f"model.seed must be in [0, {MAX_SEED}], got {self.seed}")
        if self.rank_loss not in LOSSES:
            raise MetarecError(f"model.rank_loss: {self.rank_loss!r} is not one of {LOSSES}")
        rank_algo = (self.rank_meta or self.meta).algorithm
        if self.rank_loss != "bce" and rank_algo != "np":
            raise MetarecError(
                f"model.rank_loss {self.rank_loss!r} needs the neural-process ranking model "
                f"(rank_meta.algorithm = 'np'), not {rank_algo!r}"
            )
        for name in ("rank_members", "cold_rank_members", "rating_members"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_MEMBERS:
                raise MetarecError(f"model.{name} must be in [1, {MAX_MEMBERS}], got {value}")
        if not 1 <= self.rank_negatives <= MAX_NEGATIVES:
            raise MetarecError(
                f"model.rank_negatives must be in [1, {MAX_NEGATIVES}], got {self.rank_negatives}"
            )
        if self.like_threshold is not None and not math.isfinite(self.like_threshold):
            raise MetarecError(f"model.like_threshold must be finite, got {self.like_threshold}")
        if not 0 < self.train.positive_threshold <= 1:
            # the ranking model trains on likes as 0/1 labels (_as_likes): a threshold
            # above 1 left it no positive, and it learned "always no" with exit 0
            raise MetarecError(
                f"train.positive_threshold must be in (0, 1], got "
                f"{self.train.positive_threshold:g}: the ranking model trains on likes as "
                "0/1 labels (model.like_threshold moves what counts as a like)"
            )
        widths = (self.scorer.embed_dim, *self.scorer.hidden)
        if (
            self.scorer.embed_dim < 0
            or any(h < 1 for h in self.scorer.hidden)
            or max(widths) > MAX_WIDTH
        ):
            raise MetarecError(
                f"model.scorer: embed_dim >= 0, every hidden width >= 1, all <= {MAX_WIDTH}, "
                f"got embed_dim={self.scorer.embed_dim}, hidden={list(self.scorer.hidden)}"
            )
        hidden = self.scorer.hidden
        largest = max((a * b for a, b in zip(hidden, hidden[1:], strict=False)), default=0)
        if largest > MAX_LAYER_WEIGHTS:
            # each width passed on its own, and [65536, 65536] asked for a 17 GB layer
            # (with its meta-gradient and Adam state, several times that)
            raise MetarecError(
                f"model.scorer.hidden {list(hidden)}: a layer of {largest:,} weights; "
                f"adjacent widths may multiply to at most {MAX_LAYER_WEIGHTS:,}"
            )

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """A config from a (partial) table, laid over the defaults key by key, as
        ``--set`` and ``MetaRecommender(**overrides)`` are: built from the bare classes,
        ``{"train": {"steps": 100}}`` had dropped this config's own nested defaults
        (train.ema 0.98 became 0, and a partial ``rank_meta`` table turned the
        neural-process ranking model into MAML; probe 139)."""
        if not isinstance(data, dict):
            return from_dict(cls, data, "")  # its one-line "expected a table"
        return from_dict(cls, deep_merge(to_dict(cls()), data), "")

    def rank_members_for(self, held_out: bool) -> int:
        """How many ranking models fit trains (``cold_rank_members`` where the validation
        items are ``held_out``)."""
        if held_out and self.cold_rank_members is not None:
            return self.cold_rank_members
        return self.rank_members

    def rank_train(self, train: TrainConfig, held_out: bool = False) -> TrainConfig:
        """``train`` as the ranking model trains: sampled negatives, its own ID dropout
        (``cold_rank_id_dropout`` when the validation items are ``held_out``; fit and
        ``metarec update`` both derive it here)."""
        drop = train.id_dropout if self.rank_id_dropout is None else self.rank_id_dropout
        if held_out and self.cold_rank_id_dropout is not None:
            drop = self.cold_rank_id_dropout
        return dataclasses.replace(train, n_negatives=self.rank_negatives, id_dropout=drop)


# below this share of training ratings at or above the like threshold, fit warns: the
# ranking model has almost nothing to learn a user's taste from (ML-100K at the scale's
# middle: 82% liked; goodbooks: 94%; raw play counts at theirs: 0.008%)
MIN_LIKED_SHARE = 0.01


def _like_hint(ratings: np.ndarray) -> float | None:
    """The rating to suggest as like threshold when too few reach the current one: of the
    ratings that leave at least MIN_LIKED_SHARE of the rows liked and some disliked, the
    one whose liked share is nearest a half; None where none does (100 ones and one 5)."""
    r = np.sort(np.asarray(ratings, dtype=np.float64))
    values = np.unique(r)
    share = 1.0 - np.searchsorted(r, values, side="left") / len(r)  # rows >= each value
    ok = (share >= MIN_LIKED_SHARE) & (share < 1.0)
    if not ok.any():
        return None
    return float(values[ok][np.argmin(np.abs(share[ok] - 0.5))])


def _like_how(given: bool) -> str:
    """How the like threshold was set, for its messages."""
    return "model.like_threshold" if given else "the like threshold, the rating scale's middle,"


def _like_fix(ratings: np.ndarray) -> str:
    """How to fix a like threshold no or every rating reaches, naming a value from
    ``ratings`` (a fixed 4 was outside a 0-1 scale, and fit refused it). It sorts the
    ratings: built only for a message that is given."""
    hint = _like_hint(ratings)
    if hint is None:  # one rating value, or too few above the rest: the lowest likes all
        hint = float(np.min(ratings))
    # fit's --set names the key bare; an experiment holds it in its [model] table
    return (
        f"set the like threshold to a rating the log has (fit: --set like_threshold={hint:g}; "
        f"evaluate: --set model.like_threshold={hint:g}), or give the scale it rates on"
    )


def refuse_unliked(threshold: float, given: bool, ratings: np.ndarray) -> None:
    """Refuse a like threshold above every one of ``ratings``: the ranking model would
    have no like to learn from. Fit checks its training rows; an experiment checks the
    whole log before anything trains (each seed's fit had failed, exit 0)."""
    ratings = np.asarray(ratings, dtype=np.float32)
    if len(ratings) and not is_relevant(ratings, threshold).any():
        raise MetarecError(
            f"{_like_how(given)} {threshold:g} is above every training rating (they run "
            f"{float(ratings.min()):g}..{float(ratings.max()):g}): the ranking model would "
            f"have no like to learn from; {_like_fix(ratings)}"
        )


def check_np_user_vector(cfg: ModelConfig, explicit: bool) -> None:
    """The 'np' algorithm needs the scorer's user vector: checked for the models a fit
    trains (the rating model on explicit data, the ranking model where ``rank_model`` or
    the data is implicit), before either trains. It was found when that model began
    (after the rating model had trained), naming no key; a config-time check refused
    configs whose np model never trains, and the RUNs saved with them."""
    if cfg.scorer.user_vector:
        return
    trains = []
    if explicit:
        trains.append(("meta.algorithm", cfg.meta.algorithm))
    if cfg.rank_model or not explicit:
        name = "rank_meta.algorithm" if cfg.rank_meta is not None else "meta.algorithm"
        trains.append((name, (cfg.rank_meta or cfg.meta).algorithm))
    np_keys = list(dict.fromkeys(k for k, a in trains if a == "np"))
    if np_keys:
        raise MetarecError(
            f"model.scorer.user_vector = false, and {' and '.join(np_keys)} is 'np', "
            "which needs it: set scorer.user_vector = true or another algorithm"
        )


# the MetaConfig fields each kind of inner loop reads (besides "algorithm"); ridge_target
# only where the head is binary (the ranking model)
_META_READS = {
    "sgd": {"rating": {"inner_steps", "inner_lr", "adapt_groups", "first_order"}},
    "ridge": {"rating": {"ridge_lambda"}, "binary": {"ridge_lambda", "ridge_target"}},
    "np": {"rating": {"np_hidden"}},
}


# model-level keys read only by one of the two models (the rest are shared)
_RANK_ONLY = (
    "rank_members",
    "cold_rank_members",
    "rank_negatives",
    "rank_loss",
    "rank_id_dropout",
    "cold_rank_id_dropout",
)
_RATING_BLEND = (
    "rating_inputs",
    "rating_loss",
    "rating_like",
    "rating_intercept",
    "rating_shrink",
    "rating_prior",
    "rating_knn_shrink",
    "rating_knn_damping",
    "rating_knn_neighbours",
    "rating_short_histories",
    "rating_short_requery",
)


def unused_model_settings(cfg: ModelConfig, explicit: bool) -> list[str]:
    """Model-level settings ``cfg`` changes from their defaults that no model of the fit
    reads: the rating model's and its stack's on implicit data (there is no rating model),
    the ranking model's with ``rank_model = false`` (none trains). They were taken and
    silently did nothing (a probe's ``rating_members = 5`` on labels)."""
    d = ModelConfig()
    out = []
    if cfg.train.checkpoint_every != d.train.checkpoint_every:
        # fit keeps no training checkpoints (metarec.train.train(checkpoint_dir=...) does)
        out.append("train.checkpoint_every (fit writes no training checkpoints)")
    if cfg.train.positive_threshold != d.train.positive_threshold:
        # every value (0, 1] allows splits the 0/1 likes the ranking model trains on alike
        out.append(
            "train.positive_threshold (the ranking model trains on 0/1 likes; "
            "model.like_threshold moves what counts as a like)"
        )
    if not explicit:
        if cfg.rating_members != d.rating_members:
            out.append("rating_members (implicit data: no rating model)")
        if cfg.rank_model != d.rank_model:
            # implicit data trains the ranking model whatever it says (probe 184)
            out.append("rank_model (implicit data: the ranking model is the only model)")
        out += [
            f"blend.{k} (implicit data: no rating stack)"
            for k in _RATING_BLEND
            if getattr(cfg.blend, k) != getattr(d.blend, k)
        ]
    elif not cfg.rank_model:
        out += [
            f"{k} (rank_model = false: no ranking model trains)"
            for k in _RANK_ONLY
            if getattr(cfg, k) != getattr(d, k)
        ]
    return out


def trained_meta_tables(cfg: ModelConfig, explicit: bool) -> list[tuple[str, MetaConfig, str]]:
    """(key prefix, MetaConfig, head) of each model a fit of ``cfg`` trains: the rating
    model on explicit data, and the ranking model (with rank_meta, or meta where that is
    unset) unless ``rank_model = false`` on explicit data."""
    parts = []
    if explicit:
        parts.append(("meta", cfg.meta, "rating"))
    if cfg.rank_model or not explicit:
        prefix = "rank_meta" if cfg.rank_meta is not None else "meta"
        parts.append((prefix, cfg.rank_meta or cfg.meta, "binary"))
    return parts


def unused_meta_settings(cfg: ModelConfig, explicit: bool) -> list[str]:
    """The meta settings ``cfg`` changes from their defaults that no model of this fit
    reads, each with why: a field its algorithm does not use (``rank_meta.inner_lr`` of
    the default neural process), or a whole config no model trains with (``meta.*`` on
    implicit data, where only the ranking model trains and ``rank_meta`` is set). Such
    keys were accepted and silently did nothing."""
    defaults = ModelConfig()
    parts = trained_meta_tables(cfg, explicit)
    out = []
    trained = {p for p, _, _ in parts}
    if "meta" not in trained and cfg.meta != defaults.meta:
        out.append("meta.* (on implicit data only the ranking model trains, with rank_meta.*)")
    if (
        cfg.rank_meta is not None
        and "rank_meta" not in trained
        and cfg.rank_meta != defaults.rank_meta
    ):
        out.append("rank_meta.* (model.rank_model = false: no ranking model trains)")
    base = MetaConfig()
    for prefix in dict.fromkeys(p for p, _, _ in parts):
        used = [(m, head) for p, m, head in parts if p == prefix]
        meta = used[0][0]
        inner = ALGORITHMS[meta.algorithm].inner
        reads = set().union(
            *(_META_READS[inner].get(head, _META_READS[inner]["rating"]) for _, head in used)
        )
        for f in dataclasses.fields(MetaConfig):
            if f.name == "algorithm" or f.name in reads:
                continue
            if getattr(meta, f.name) != getattr(base, f.name):
                out.append(f"{prefix}.{f.name} ({meta.algorithm!r} does not use it)")
    return out


def _validation_ranked(
    dataset: Dataset, split: Split, domain: int | None = None
) -> np.ndarray | None:
    """(n_cand,) items a validation user's ranking runs over where it is one domain's of
    several, else None: the ranking model's validation queries draw their negatives from
    them (``train.valid_negative_pool``). That is cross-domain: the items given to fit to
    rank validation users over (``split.valid_cold_items``: evaluate's target-domain
    candidates), or ``domain``'s items (a transfer's target: the catalogue's items of that
    domain and any rated there in training). From the training items, a transfer's source model met
    only source-domain negatives, and a joint model mostly those, beside target-domain
    positives. Not a guess from where the validation queries fall: on a log of several
    domains whose newest users happen to rate one, ``recommend`` still ranks them all."""
    if not split.valid:
        return None
    if len(split.valid_cold_items):  # new items are handled first (held_out)
        return np.asarray(split.valid_cold_items, dtype=np.int64)
    if domain is None:
        return None
    # the training rows, not the held-out ones
    return _items_of_domains(dataset, split.train, np.array([domain]))


def _items_of_domains(dataset: Dataset, rows: Interactions, doms: np.ndarray) -> np.ndarray:
    """(n,) sorted int64: the catalogue's items of the domains ``doms`` (indices into
    ``dataset.domains``: the items file's ``domain``) and any item ``rows`` rate there (a
    log whose items file names no domain)."""
    rated = rows.item_idx[np.isin(rows.domain, doms)]
    names = [dataset.domains[int(d)] for d in doms]
    listed = np.flatnonzero(np.isin(dataset.item_domain_names(), names))
    return np.union1d(rated, listed).astype(np.int64)


def _blend_rank_items(dataset: Dataset, split: Split) -> np.ndarray:
    """(n_cand,) items the ranking blend is fitted over: the split's validation items when
    it holds items out (item cold-start: a validation user's full ranking runs over them),
    else the whole catalogue, or with several domains the items of the domains the
    validation queries are in (the catalogue's items of those domains, rated or not, and
    any rated there). Cross-domain, that is the target domain, which is what evaluate and
    ``recommend --domain`` rank: the weights are fitted on the ranking they are judged on.
    (Rated items alone, as before 2026-12-06, left out what ``recommend`` ranks too: items
    nobody rated. Fitted without them the popularity weight could go negative, and on a
    CLI fit with a domain column a never-rated item then topped every list.) Items of
    domains only the items file has (no log row) are added too: only an unfiltered
    recommend ranks them, and left out of the fit they rose the same way; with them the
    fit set can hold items evaluate and ``recommend --domain`` never rank."""
    if len(split.valid_cold_items):
        return np.asarray(split.valid_cold_items, dtype=np.int64)
    tasks = split.valid
    if len(dataset.domains) < 2 or not tasks:
        return np.arange(dataset.n_items, dtype=np.int64)
    doms = np.unique(np.concatenate([t.query.domain for t in tasks]))
    # and the items of domains only the items file has (nobody rated any): an unfiltered
    # recommend ranks them too, and fitted without them the popularity weight went
    # negative and lifted them, never rated, into most top-10s (531 of 800 slots)
    item_doms = dataset.item_domain_names()
    unreached = np.flatnonzero(~np.isin(item_doms, list(dataset.domains)))
    items = np.union1d(_items_of_domains(dataset, dataset.interactions, doms), unreached)
    items = items.astype(np.int64)
    return items if len(items) else np.arange(dataset.n_items, dtype=np.int64)


# stack inputs that are whole ratings (the rest are offsets or other scales)
_RATING_SCALE = frozenset({"meta"}) | PRIOR_CANDIDATES
# the keys MetaRecommender.state() writes (from_state refuses any other)
_STATE_KEYS = frozenset(
    {
        "model",
        "parts",
        "n_users",
        "n_items",
        "feedback",
        "rating_range",
        "rating_offset",
        "encoder_fingerprint",
        "blend",
    }
)
# (task, item) cells scored at once on CPU (MetaRecommender._predict): a hidden activation
# of width 64 is then 8 MB, below glibc's 32 MB mmap ceiling, so its buffers are reused
_CHUNK_CELLS = 32_768


def episode_sizes(train: Interactions, k_shot: int, n_query: int) -> tuple[int, int]:
    """(K, Q) of the episodes fit (and update) draw from ``train``: short histories (a
    small log) shrink the episodes instead of failing, K and Q capped at half the median
    history length, so most users yield an episode."""
    lengths = np.bincount(train.user_idx)
    half = max(1, int(np.median(lengths[lengths > 0])) // 2)
    return min(k_shot, half), min(n_query, half)


def default_embedding_dir() -> Path:
    """The embedding cache folder: ``$METAREC_HOME/embeddings`` (``~/.cache/metarec/...``)."""
    from metarec.data.download import cache_root

    return cache_root() / "embeddings"


@dataclass(frozen=True, eq=False)
class _Part:
    """One trained scorer (rating or ranking) and what is needed to run it."""

    learner: MetaLearner
    params: dict[str, torch.Tensor]
    result: TrainResult | None  # None after load()
    # trained with the item cold-start settings (the validation tasks tested new items:
    # train.episodes "auto" -> "newest_items"; the ranking model's cold_rank_id_dropout);
    # `metarec update` and model.refit continue training with the same settings
    new_items: bool = False
    # an ensemble's members' validated best steps and validation losses, member order
    # (``result`` is member 0's alone); () after load()
    member_steps: tuple[int, ...] = ()
    member_valid: tuple[float | None, ...] = ()
    # members 1.. 's training histories (TrainResult.history; member 0's is result's), for
    # the report's training curves; () for a single model and after load()
    member_histories: tuple[tuple[dict, ...], ...] = ()
    # the ranking model's training negatives as train.negatives resolved ("catalogue" or
    # "popularity"; "" for the rating model and after load())
    negatives: str = ""

    @property
    def members(self) -> int:
        """Models trained from their own seeds and scored as one (model.rating_members /
        rank_members; an :class:`EnsembleLearner`), 1 for a single model."""
        return getattr(self.learner, "members", 1)


@dataclass(frozen=True, eq=False)
class Adapted:
    """One user's adapted model (from :meth:`MetaRecommender.adapt_user`)."""

    which: str  # "rank" or "score": the part it was adapted from
    params: dict[str, torch.Tensor]  # adapted keys carry a leading task dim of 1
    user_x: torch.Tensor  # (1, d_user_in) user inputs (side features, history profile)
    seen: np.ndarray  # (n,) int64 items in the user's history + support, sorted unique
    # (items, ratings) of the history, for the closed-form part of a fitted blend
    history: tuple[np.ndarray, np.ndarray] | None = None
    # the like-model adapted too, when the rating blend stacks its logit: (params, user_x)
    like: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
    # "rank": the raw ranking score (blend applied) of every catalogue item, (n_items,)
    # float64, computed once at adaptation so a cached user's request is one gather
    catalogue: np.ndarray | None = None


def own_bytes(params: Mapping[str, torch.Tensor], base: _Part) -> int:
    """Bytes of ``params`` not held in ``base.params``' memory. By storage, not by object:
    adapt returns the unadapted tensors as new detached views of the base's storage, so an
    ``id`` test counted every one (the item ID table included) as a user's own, and the
    serving cache, sized by it, held ~800 users where 4,096 fit."""
    shared = {v.untyped_storage().data_ptr() for v in base.params.values()}
    return sum(
        v.numel() * v.element_size()
        for v in params.values()
        if v.untyped_storage().data_ptr() not in shared
    )


class MetaRecommender(Recommender):
    """Meta-learned scorer over pretrained text features; see the module docstring."""

    name = "MetaRec"
    predicts_ratings = True
    # a blend skipped for want of validation users is warned about; a transfer's source
    # model, whose blend is never served, turns it off
    _say_blend_skipped = True
    # whose parts these are, in the retry warnings ("source ", "target " in a transfer):
    # the source's and the target's warnings read alike, and Python's warning filter
    # showed the first of each text only, so a target's retries went unsaid
    _part_label = ""

    def __init__(self, config: ModelConfig | None = None, **overrides) -> None:
        cfg = config or ModelConfig()
        if not isinstance(cfg, ModelConfig):
            raise MetarecError(
                f"MetaRecommender: config must be a ModelConfig, got {type(cfg).__name__} "
                "(ModelConfig.from_dict turns a table into one)"
            )
        if overrides:
            # a table merges into the config's own table key by key, as --set does:
            # text={"pca_dim": 8} changes pca_dim only, not text.model back to its default
            cfg = from_dict(ModelConfig, deep_merge(to_dict(cfg), overrides))
        self.config = cfg
        self.name = f"MetaRec-{cfg.meta.algorithm}"
        self._auto_name = self.name  # the name this class gave: a refit may rename it
        self.rating_: _Part | None = None
        self.rank_: _Part | None = None
        self.features_: FeatureSet | None = None
        self.known_items_: np.ndarray | None = None
        # the one domain a validation user's ranking runs over (a transfer's target), where
        # fit is given no items to rank them over: their negatives come from it
        self._ranked_domain: int | None = None
        # how fit encoded the users file's rows, for users who bring theirs later (a RUN
        # keeps it in meta.json: Predictor.save / from_run); None: no users file
        self.user_features_: UserFeatures | None = None
        self.blend_: Blend | None = None
        # why the last fit has no blend though it asked for one ("" = fitted, or off):
        # an experiment's results.json and report.md carry it per seed
        self.blend_skipped_ = ""
        self.rank_blend_skipped_ = ""
        self.rating_blend_skipped_ = ""

    # --- fitting -----------------------------------------------------------------------
    def fit(
        self,
        dataset: Dataset,
        train: Interactions,
        features: FeatureSet | None = None,
        valid: Sequence[Task] | None = None,
        valid_items: np.ndarray | None = None,
    ) -> Self:
        """``valid`` tasks drive early stopping and the blend (default: carved out of
        ``train``); ``valid_items`` are the items their full ranking is judged on (item
        cold-start: the validation items, none of them in ``train``), so the ranking blend
        is fitted on the ranking it will serve (default: the whole catalogue, or the
        validation queries' domains)."""
        cfg = self.config
        if valid is not None:  # a tuple of Tasks: a generator is read once, here
            valid = check_tasks(valid, f"{self.name}.fit: valid")
        if valid_items is not None and len(valid_items) and not valid:
            # they name the items the given validation tasks are ranked over: without
            # tasks they were dropped without a word (and never checked)
            raise MetarecError(
                f"{self.name}.fit: valid_items are the items validation tasks rank over; "
                "give the tasks too (valid=split.valid)"
            )
        if cfg.refit and valid:
            raise MetarecError(
                "model.refit retrains on the validation rows fit holds out itself; with "
                "validation tasks given (metarec evaluate) it would train the meta-model on "
                "the validation users' rows and not the baselines: leave refit off there"
            )
        # the library's one-line error, not an AttributeError deep inside ("'str' object
        # has no attribute 'item_idx'")
        if not isinstance(dataset, Dataset):
            raise MetarecError(f"{self.name}.fit: expected a Dataset, got {type(dataset).__name__}")
        if not isinstance(train, Interactions):
            raise MetarecError(
                f"{self.name}.fit: train must be Interactions (e.g. split.train), got "
                f"{type(train).__name__}"
            )
        if features is not None and not isinstance(features, FeatureSet):
            raise MetarecError(
                f"{self.name}.fit: features must be a FeatureSet (build_features), got "
                f"{type(features).__name__}"
            )
        if len(train) == 0:  # a NaN from deep inside the split code otherwise
            raise MetarecError(f"{self.name}: train has no interactions to fit on")
        finite = np.isfinite(np.asarray(train.rating, dtype=np.float64))
        if not finite.all():
            # the file readers refuse these; built in Python, one reached the scorer's
            # config check, which named ScorerConfig.output_offset and not the rating
            raise MetarecError(
                f"{self.name}.fit: train row {int(np.flatnonzero(~finite)[0])} has a rating "
                "that is not finite"
            )
        resolve_device(cfg.device)  # before the text is embedded, not after ("auto" is fine)
        # a second fit starts clean: a rating part left from an explicit fit would go on
        # scoring (and be saved) after a refit on implicit data
        self.rating_ = self.rank_ = self.blend_ = None
        self.features_ = self.known_items_ = self.user_features_ = None
        self.blend_skipped_ = ""
        self.rank_blend_skipped_ = ""
        self.rating_blend_skipped_ = ""
        self.new_users_ = 0  # a view's new users: their rows go with the old features
        if self.name == getattr(self, "_auto_name", None):
            # a loaded implicit RUN ("MetaRec-np") refitted on ratings kept that name
            self.name = self._auto_name = f"MetaRec-{cfg.meta.algorithm}"
        self._set_fitted(dataset, train)
        if dataset.feedback != "explicit" and cfg.like_threshold is not None:
            warnings.warn(
                f"model.like_threshold {cfg.like_threshold:g} has no effect: the data is "
                "implicit, and a label 1 is a like whatever the threshold",
                stacklevel=2,
            )
        if dataset.feedback == "explicit" and cfg.like_threshold is not None:
            lo, hi = self.rating_range_
            if not lo < cfg.like_threshold <= hi:
                # at or below the bottom every rating is a like, above the top none is:
                # the ranking model would have one class only
                raise MetarecError(
                    f"model.like_threshold {cfg.like_threshold:g} is outside the ratings' "
                    f"range ({lo:g}, {hi:g}]"
                )
        if dataset.feedback == "explicit" and len(train) and cfg.rank_model:
            self._check_likes(train.rating)
        check_np_user_vector(cfg, dataset.feedback == "explicit")
        unused = self._unused_settings(cfg, dataset.feedback == "explicit")
        if unused:
            warnings.warn(f"settings with no effect: {'; '.join(unused)}", stacklevel=2)
        relevant = cfg.blend.relevant_threshold
        if dataset.feedback == "explicit" and relevant is not None:
            lo, hi = self.rating_range_
            if not lo < relevant <= hi:
                # above the top the ranking blend had no positive and was dropped, while
                # the summary said "blend": true
                raise MetarecError(
                    f"blend.relevant_threshold {relevant:g} is outside the ratings' range "
                    f"({lo:g}, {hi:g}]"
                )
        split = self._training_split(dataset, train, valid)
        known = np.zeros(dataset.n_items, dtype=bool)
        known[train.item_idx] = True
        # items fit holds out as new (valid_holdout = "new_items") are met as new items:
        # the PCA and side statistics are fitted without them (they were fitted on them,
        # so validation judged items the features had already seen)
        known[split.cold_items] = False
        known[split.valid_cold_items] = False
        # the users side statistics are fitted on: those with training rows
        users = np.zeros(dataset.n_users, dtype=bool)
        users[train.user_idx] = True
        if features is None:
            features = self.build_features(dataset, known, users)
        elif (features.n_items, features.n_users) != (dataset.n_items, dataset.n_users):
            # a FeatureSet of another dataset indexed the wrong rows, or past the end
            raise MetarecError(
                f"{self.name}: the FeatureSet has {features.n_items} items and "
                f"{features.n_users} users, the dataset {dataset.n_items} and {dataset.n_users}"
            )
        # a fitted model lives on the CPU (train() returns its parameters there; `to()`
        # moves both): features the caller placed on a GPU met CPU parameters in the blend
        self.features_ = _with_unknown_user_row(features.to("cpu"))
        # how the users file's rows became features, for users who bring theirs later
        self.user_features_ = UserFeatures.fit(self, dataset, np.flatnonzero(users))
        # the items whose ID rows meta-training learns: those of split.train. Held-out
        # validation users are carved out of `train` when no validation is given, and an
        # item only they rated (23 of 1,682 on ML-100K) keeps an untrained row: it is
        # scored through the trained unknown row, as training scored it (train() derives
        # its known items from split.train too)
        self.known_items_ = np.zeros(dataset.n_items, dtype=bool)
        self.known_items_[split.train.item_idx] = True
        if valid and valid_items is not None and len(valid_items):
            split = dataclasses.replace(
                split, valid_cold_items=self._check_items(np.asarray(valid_items))
            )
        explicit = dataset.feedback == "explicit"
        # model.seed also seeds meta-training (init, task sampling); seed 0 keeps train.seed
        train_cfg = dataclasses.replace(cfg.train, seed=cfg.train.seed + 1_000_003 * cfg.seed)
        # the validation tasks test new items: the item cold-start settings apply (both
        # parts: train.episodes "auto"; the ranking model: cold_rank_id_dropout, ...)
        new_items = validates_new_items(split)
        adapting = self._adapting_as_served(split)
        if explicit:
            self._rating_offset = None  # from this fit's rating range (rating_offset)
            rating_split = _in_rating_units(adapting, self.rating_unit, self.rating_offset)
            part = self._train_part(
                rating_split, "rating", cfg.meta, train_cfg, dataset, members=cfg.rating_members
            )
            self.rating_ = dataclasses.replace(part, new_items=new_items)
        if cfg.rank_model or not explicit:
            part = self._train_part(
                _as_likes(adapting, self._like_threshold()),
                "binary",
                cfg.rank_meta or cfg.meta,
                cfg.rank_train(train_cfg, held_out=new_items),
                dataset,
                members=cfg.rank_members_for(new_items),
            )
            self.rank_ = dataclasses.replace(part, new_items=new_items)
            self._say_unused_for_split(new_items, part.negatives)
        self.blend_ = self._fit_blend(dataset, split)
        self.predicts_ratings = True
        if cfg.refit:
            self._refit(dataset, split, train, train_cfg)
        self.name_after_scoring_model()
        return self

    def _refit(self, dataset: Dataset, split: Split, rows: Interactions, tcfg: TrainConfig) -> None:
        """``model.refit``: each part trained again on every row fit was given, for the
        steps its validation chose, with the settings validation resolved (item cold-start
        training tasks and ID dropout where the held-out validation tested new items);
        then the blend's closed-form models on every row, its weights kept."""
        full = Split("refit", rows, (), (), split.seed, split.k_shot, split.n_query)
        # the item cold-start settings as fit resolved them from its validation tasks (the
        # refit has none to resolve them from); fit recorded them on both parts
        fitted = self.rank_ or self.rating_
        assert fitted is not None
        new_items = fitted.new_items
        tcfg = resolve_episodes(tcfg, new_items)
        cfg = self.config
        # each member is trained again for the steps its own validation chose; the part
        # keeps its validated run's results (best steps, validation losses, curve): what
        # the refit's length was chosen by; the refit itself has no validation
        if self.rating_ is not None:
            assert self.rating_.result is not None
            part = self._train_part(
                _in_rating_units(full, self.rating_unit, self.rating_offset),
                "rating",
                _trained_meta(cfg.meta, self.rating_),
                tcfg,
                dataset,
                members=cfg.rating_members,
                member_steps=self.rating_.member_steps,
            )
            self.rating_ = dataclasses.replace(
                self.rating_, learner=part.learner, params=part.params, new_items=new_items
            )
        if self.rank_ is not None:
            assert self.rank_.result is not None
            part = self._train_part(
                _as_likes(full, self._like_threshold()),
                "binary",
                _trained_meta(cfg.rank_meta or cfg.meta, self.rank_),
                cfg.rank_train(tcfg, held_out=new_items),
                dataset,
                members=cfg.rank_members_for(new_items),
                member_steps=self.rank_.member_steps,
            )
            self.rank_ = dataclasses.replace(
                self.rank_,
                learner=part.learner,
                params=part.params,
                new_items=new_items,
                negatives=part.negatives,
            )
        self.known_items_ = np.zeros(dataset.n_items, dtype=bool)
        self.known_items_[rows.item_idx] = True
        if self.blend_ is not None:
            self.blend_ = dataclasses.replace(
                self.blend_, closed=self._closed_form(dataset, full, cfg.blend)
            )

    def _closed_form(self, dataset: Dataset, split: Split, cfg: BlendConfig) -> ClosedForm:
        """The blend's closed-form models for ``cfg``, fitted on ``split.train``, with this
        model's item text + side vectors as the "content" input's features and the item
        table's numeric columns as the "side" inputs."""
        feats = self.features_
        assert feats is not None
        return ClosedForm.fit(
            dataset,
            split.train,
            cfg,
            self._like_threshold(),
            self.config.seed,
            item_features=torch.cat([feats.item_text, feats.item_side], 1).cpu().numpy(),
            cold=len(split.valid_cold_items) > 0,
            # scaled on the meta-training items (build_features scales the model's inputs
            # on fit's training items: the same set unless fit carved validation users
            # out of them, then a few items fewer)
            item_numeric=numeric_features(
                dataset.item_table, dataset.n_items, np.flatnonzero(self.known_items_)
            ),
        )

    def _fit_blend(self, dataset: Dataset, split: Split) -> Blend | None:
        """Closed-form models on the meta-training interactions, stacking weights on the
        validation tasks. Each validation user is seen exactly as a test user is scored:
        their training rows + support (item cold-start users are warm, with long histories
        in ``split.train``), minus the task's query items (a warm protocol's query may sit
        in them). Fitting on the support alone while scoring on the
        full history gave weights for the wrong inputs (item cold: MAE 0.92 -> 0.97)."""
        b = self.config.blend
        explicit = dataset.feedback == "explicit"
        use_rating = b.rating and explicit and self.rating_ is not None
        use_rank = b.rank and self.rank_ is not None
        if not (use_rating or use_rank):
            return None
        if len(split.valid) < b.min_valid_users:
            self.blend_skipped_ = (
                f"{len(split.valid)} validation users, fewer than blend.min_valid_users "
                f"({b.min_valid_users})"
            )
            # said wherever it happens (fit, evaluate, quickstart, Python): without the
            # blend the ranking model ranks alone, and it never met a never-rated item as a
            # negative (they are drawn from rated items), so such items can fill top-k (a
            # reduced quickstart scored nDCG@10 0.0000, its top tens 95% unrated books).
            # Not where no validation user is left (fit has said so) or for a transfer's
            # source model (its blend is never served)
            if len(split.valid) and self._say_blend_skipped:
                ranked = _blend_rank_items(dataset, split)  # what recommend ranks
                unrated = 0
                if not len(split.valid_cold_items):  # new items are the point there
                    unrated = int((~np.isin(ranked, split.train.item_idx)).sum())
                warnings.warn(
                    f"blend skipped: {self.blend_skipped_}; the meta-model scores alone"
                    + (
                        f", and {unrated} of the {len(ranked)} items it ranks have no "
                        "training rows and may crowd its lists (it never met them as "
                        "negatives)"
                        if unrated and use_rank
                        else ""
                    ),
                    stacklevel=3,
                )
            return None
        closed = self._closed_form(dataset, split, b)
        tasks = list(split.valid)
        # a validation user's training rows are those of split.train: fit's own held-out
        # users are left out of it, and they are indexed for serving with all their rows
        # (the ones after the query too), which made every history long (never a short
        # one) and fitted the weights on rows a cold user does not have
        rows = self._rows_index(split.train)
        pairs = [(t.user_idx, self._history_without_query(t, rows)) for t in tasks]
        rating_w = rank_w = None
        rank_fit = "softmax"
        rating_like = b.rating_like and self.rank_ is not None
        # the short fits' "next interactions" exist where a validation query follows its
        # support in time over the whole catalogue; with held-out validation items (user-
        # and item-cold) the query is the user's first rows on those items, and what
        # follows the first support item is warm rows the blend is not fitted over
        follows = len(split.valid_cold_items) == 0
        rating_short = None
        rating_prior = ""
        if use_rating:
            rating_w, rating_prior = self._fit_rating_stack(closed, tasks, pairs, rating_like)
            falls = self._stack_falls_with_ratings(closed, tasks, pairs, rating_w, rating_like)
            if falls is not None:
                self.rating_blend_skipped_ = (
                    f"its stack predicted lower ratings for users who rate higher "
                    f"({falls[0]:+.3g} from every history rated {self.rating_range_[0]:g} to "
                    f"every one rated {self.rating_range_[1]:g}; the meta-model {falls[1]:+.3g})"
                )
                # the record (the cli summary's rating_blend_skipped) and the warning say
                # one thing: the warning adds how many users the stack was fitted on
                warnings.warn(
                    f"blend: the rating stack fitted on {len(tasks)} validation users: "
                    f"{self.rating_blend_skipped_}; ratings are the meta-model's alone "
                    "(the ranking blend is kept)",
                    stacklevel=3,
                )
                rating_w, rating_prior = None, ""
                use_rating = False
        if use_rating:
            # the short weights lean on the same input (one prior per RUN, as it records)
            shorts = []
            why = ""
            for n in b.rating_short_histories:
                cut, cut_pairs = self._short_tasks(
                    tasks, n, b.rating_short_requery and follows, rows
                )
                if len(cut) < b.min_valid_users:
                    # this cut and every longer one: the split's K weights
                    why = (
                        f"fewer than {b.min_valid_users} validation users whose whole "
                        "history cuts to that size"
                    )
                    break
                w, _ = self._fit_rating_stack(closed, cut, cut_pairs, rating_like, rating_prior)
                if self._stack_falls_with_ratings(closed, cut, cut_pairs, w, rating_like):
                    # as above, for these histories
                    why = f"those fitted for {n} predict lower ratings for users who rate higher"
                    break
                shorts.append(w)
            if shorts:
                rating_short = np.stack(shorts)  # (n_cuts, n_weights)
            if len(shorts) < len(b.rating_short_histories):
                warnings.warn(
                    f"blend.rating_short_histories: no own rating weights for histories of "
                    f"{list(b.rating_short_histories[len(shorts) :])} items ({why}); they "
                    "are rated with the weights of the longest histories",
                    stacklevel=2,
                )
        rank_inputs = closed.rank_names
        rank_w_short = None
        if use_rank and rank_inputs:
            assert self.rank_ is not None
            items = _blend_rank_items(dataset, split)  # (n_cand,)
            rank_w, rank_fit = self._fit_rank_blend(closed, rank_inputs, tasks, pairs, items)
            if rank_w is None:
                # the closed-form ranking inputs (EASE, kNN, popularity) were dropped in
                # silence, and fit's summary said "blend": true for the rating half
                rel = b.relevant_threshold
                self.rank_blend_skipped_ = (
                    "no validation query item reaches the like threshold "
                    f"{self._like_threshold() if rel is None else rel:g}"
                )
                if self._say_blend_skipped:
                    warnings.warn(
                        f"ranking blend skipped: {self.rank_blend_skipped_}, so there is "
                        "nothing to fit its weights on; recommend ranks by the ranking model "
                        "alone",
                        stacklevel=3,
                    )
            if rank_w is not None and b.rank_short_history > 0:
                # the same users as if they had only their first few interactions: each
                # support cut to rank_short_history items, kept where the whole history
                # (training rows too) is then that short, as the users ranked with it are
                cut, cut_pairs = self._short_tasks(
                    tasks, b.rank_short_history, b.rank_short_requery and follows, rows
                )
                if len(cut) >= b.min_valid_users:
                    rank_w_short, _ = self._fit_rank_blend(
                        closed, rank_inputs, cut, cut_pairs, items
                    )
                elif b.rank_short_history > 1:
                    # the default 1 says nothing where no validation history is that short
                    # (warm users in item cold-start and cross-domain); a longer cut is a
                    # request someone made
                    warnings.warn(
                        f"blend.rank_short_history={b.rank_short_history}: fewer than "
                        f"{b.min_valid_users} validation users have a history that short "
                        "once cut; histories of any length share one set of ranking weights",
                        stacklevel=2,
                    )
        return Blend(
            closed,
            b.rating_inputs,
            rating_w,
            rank_inputs,
            rank_w,
            rating_like,
            rank_fit,
            b.rank_short_history if rank_w_short is not None else 0,
            rank_w_short,
            b.rating_short_histories[: len(rating_short)] if rating_short is not None else (),
            rating_short,
            rating_prior,
            self.rating_unit if use_rating else 1.0,
        )

    def _short_tasks(
        self,
        tasks: Sequence[Task],
        n: int,
        requery: bool = False,
        rows: tuple[sp.csr_matrix, sp.csr_matrix] | None = None,
    ) -> tuple[list[Task], list[tuple[int, Interactions]]]:
        """The validation ``tasks`` as if their users had only their first ``n``
        interactions: each support cut to ``n`` items, kept where the whole history
        (training rows too) is then that short, as the users scored with it are; with each
        kept task's history without the query. The query stays, or with ``requery`` is
        the interactions right after the ``n`` (the rest of the support, then the query;
        as many as the query held), each item once and none of the cut support's."""
        cut = []
        for t in tasks:
            if len(t.support) <= n:
                continue
            support, query = t.support.take(np.arange(n)), t.query
            if requery:
                rest = Interactions.concat([t.support.take(np.arange(n, len(t.support))), query])
                # a repeated item (preprocess.dedupe off) counts once, at its first row,
                # and an item of the cut support is history, not something to predict
                _, first = np.unique(rest.item_idx, return_index=True)
                at = np.sort(first)
                at = at[~np.isin(rest.item_idx[at], support.item_idx)]
                query = rest.take(at[: len(t.query)])
            cut.append(Task(t.user_idx, support, query))
        pairs = [(t.user_idx, self._history_without_query(t, rows)) for t in cut]
        keep = [i for i, (_, h) in enumerate(pairs) if len(h) <= n]
        return [cut[i] for i in keep], [pairs[i] for i in keep]

    def _fit_rating_stack(
        self,
        closed: ClosedForm,
        tasks: Sequence[Task],
        pairs: Sequence[tuple[int, Interactions]],
        rating_like: bool,
        prior: str | None = None,
    ) -> tuple[np.ndarray, str]:
        """Rating-stack weights fitted on validation ``tasks`` whose histories without the
        query are ``pairs``: (2 + rating_like + n_inputs,) meta, [like], inputs, intercept;
        and the input they were shrunk toward ("" without a shrink). ``prior``: that input
        (default: ``blend.rating_prior``, "auto" chosen here)."""
        b = self.config.blend
        queries = [t.query.item_idx for t in tasks]
        design, x = self._stack_design(closed, pairs, queries, rating_like)
        y = np.concatenate([t.query.rating for t in tasks]).astype(np.float64)
        # column names: the rating-scale columns (whole predicted ratings) are the ones
        # summing to 1 when the stack has no intercept; the offsets (like logit, bias
        # parts, popularity) stay free. The ridge's prior is one input alone.
        names = ["meta", *(["like"] if rating_like else []), *b.rating_inputs]
        if prior is None:
            prior = b.rating_prior if b.rating_shrink > 0 else ""
        if prior == "auto":
            # the closed-form rating that orders these validation users' queries best
            offered = [n for n in b.rating_inputs if n in PRIOR_CANDIDATES]
            cols_of = [b.rating_inputs.index(n) for n in offered]
            sizes = [len(q) for q in queries]
            prior = best_ordering_input(offered, x[:, cols_of], y, sizes)
        # fitted in stars (divided by one star of the scale: unit 1 changes nothing), so
        # that the shrink means on any scale what it means on 1-5 stars and the system
        # stays well scaled (on 1000-5000 the KKT solve lost the third decimal); the
        # weights hold on the data's scale as they are, but for the intercept, in stars
        unit = self.rating_unit
        w = fit_rating_weights(
            design / unit if unit != 1.0 else design,
            y / unit if unit != 1.0 else y,
            b.rating_loss,
            intercept=b.rating_intercept,
            summed=np.array([n in _RATING_SCALE for n in names]),
            shrink=b.rating_shrink,
            prior=np.array([float(n == prior) for n in names]),
        )
        if unit != 1.0:
            w[-1] *= unit
        return w, prior

    def _stack_design(
        self,
        closed: ClosedForm,
        pairs: Sequence[tuple[int, Interactions]],
        queries: Sequence[np.ndarray],
        rating_like: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rating stack's design over ``queries`` of histories ``pairs``:
        ((n_rows, 1 + like + n_inputs), the closed-form inputs (n_rows, n_inputs))."""
        assert self.rating_ is not None
        b = self.config.blend
        hists = [(h.item_idx, h.rating.astype(np.float64)) for _, h in pairs]
        meta = np.concatenate(
            self._scores(self.rating_, pairs, queries, train_rows=False)
        )  # (n_rows,) raw meta ratings of every query item
        x = np.concatenate(
            [
                closed.rating_inputs(b.rating_inputs, *h, q)
                for h, q in zip(hists, queries, strict=True)
            ]
        )  # (n_rows, n_inputs)
        like = None
        if rating_like:
            assert self.rank_ is not None
            like = np.concatenate(self._scores(self.rank_, pairs, queries, train_rows=False))
        # (n_rows, 1 + like + n_inputs); the unitless columns in stars of this scale
        return rating_design(meta, like, x, b.rating_inputs, self.rating_unit), x

    def _stack_falls_with_ratings(
        self,
        closed: ClosedForm,
        tasks: Sequence[Task],
        pairs: Sequence[tuple[int, Interactions]],
        w: np.ndarray,
        rating_like: bool,
    ) -> tuple[float, float] | None:
        """(stack, meta-model) mean change of the predicted ratings of validation queries
        when every history rating goes from the scale's bottom to its top, where the stack
        falls while the meta-model alone rises; else None. Fitted on validation users with
        nothing to find, a stack turned the meta-model against itself: a user's 5 on an
        item predicted 1.84 there, their 1 3.42 (probe 155)."""
        lo, hi = self.rating_range_
        # up to 64 validation tasks, evenly spread
        keep = np.unique(np.linspace(0, len(tasks) - 1, min(len(tasks), 64)).round().astype(int))
        queries = [tasks[i].query.item_idx for i in keep]
        at = {}
        for name, value in (("lo", lo), ("hi", hi)):
            flat = [
                (u, dataclasses.replace(h, rating=np.full(len(h), value, dtype=np.float32)))
                for u, h in (pairs[i] for i in keep)
            ]
            design, _ = self._stack_design(closed, flat, queries, rating_like)
            at[name] = (apply_rating_weights(w, design), design[:, 0])  # as Blend.rating
        stack = float(np.mean(at["hi"][0] - at["lo"][0]))
        meta = float(np.mean(at["hi"][1] - at["lo"][1]))
        return (stack, meta) if stack < 0 < meta else None

    def _fit_rank_blend(
        self,
        closed: ClosedForm,
        rank_inputs: tuple[str, ...],
        tasks: Sequence[Task],
        pairs: Sequence[tuple[int, Interactions]],
        items: np.ndarray,
    ) -> tuple[np.ndarray | None, str]:
        """Ranking weights over ``items`` (n_cand,) for validation ``tasks`` whose histories
        without the query are ``pairs``; (None, "softmax") when no query item is liked."""
        assert self.rank_ is not None
        b = self.config.blend
        most = max(b.min_valid_users, b.rank_fit_cells // max(1, len(items)))
        if len(tasks) > most:  # an evenly spread subset: deterministic, no time order bias
            keep = np.linspace(0, len(tasks) - 1, most).round().astype(np.int64)
            tasks, pairs = [tasks[i] for i in keep], [pairs[i] for i in keep]
        col = np.full(self.n_items_, -1, dtype=np.int64)
        col[items] = np.arange(len(items))
        hists = [(h.item_idx, h.rating.astype(np.float64)) for _, h in pairs]
        logits = np.stack(self._scores(self.rank_, pairs, items, train_rows=False))
        x = rank_columns(
            logits, closed.rank_inputs(rank_inputs, hists, items)
        )  # (n_tasks, n_cand, 1 + n_inputs)
        like = self._like_threshold()
        rel = like if b.relevant_threshold is None else b.relevant_threshold
        pos = np.zeros((len(tasks), len(items)), dtype=bool)
        excl = np.zeros_like(pos)
        for r, (t, (_, h)) in enumerate(zip(tasks, pairs, strict=True)):
            c = col[t.query.item_idx[is_relevant(t.query.rating, rel)]]
            pos[r, c[c >= 0]] = True
            # the whole history left out of the ranking, as evaluate and recommend leave it
            # out: a warm validation user's training items were negatives here (the
            # support alone was), so the weights were fitted on another ranking
            c = col[h.item_idx]
            excl[r, c[c >= 0]] = True
        if not pos.any():
            return None, "softmax"
        return fit_rank_blend(
            x,
            pos & ~excl,
            excl,
            b.weight_decay,
            b.large_rank_fit if closed.large and b.large_rank_fit else b.rank_fit,
            b.rank_k,
            b.rank_search_users,
            b.rank_fit_head,
        )

    def _adapting_as_served(self, split: Split) -> Split:
        """``split`` with each validation task's support replaced by what scoring adapts
        that user on: their training rows in ``split.train``, then the support, less the
        query items, the last ``max_support`` of them (:meth:`_episodes`). Early stopping
        then judges the adaptation that is served. Validation users with training rows
        are the warm protocol's (warm users) and cross-domain's (their source-domain
        history); a cold user's support is theirs as it was, less any item it shares
        with the query and cut to ``max_support`` rows, as scoring cuts it. Validation
        over new items (item cold-start, ``valid_holdout="new_items"``) keeps the support
        alone (the backtest below). Before the seventh session of 2026-12-07 every
        validation user adapted on the support alone."""
        if not split.valid or validates_new_items(split):
            # validation over new items (item cold-start, valid_holdout="new_items") keeps
            # the support alone: chosen on benchmarks/backtest_item_cold.py (ML-100K, the
            # training rows only: early stopping on the near items, scored on the far
            # ones, seeds 0/1/2). Adapted on the history, the near items' ranking rose
            # (Recall@10 0.142/0.157/0.137 -> 0.242/0.297/0.222, in sample) and the far
            # items' fell on 2 seeds of 3 (0.246/0.182/0.259 -> 0.173/0.244/0.160), MAE
            # level (0.8757 -> 0.8749 on the mean): the model fits the newest items of its
            # time and carries less further out. (The test run had shown the same fall
            # before this backtest was run: Recall@10 0.2043 -> 0.1907.)
            return split
        rows = self._rows_index(split.train)
        m = self.config.max_support
        tasks = []
        for t in split.valid:
            history = self._history_without_query(t, rows)
            tasks.append(dataclasses.replace(t, support=history.take(np.arange(len(history))[-m:])))
        return dataclasses.replace(split, valid=tuple(tasks))

    def _history_without_query(
        self, task: Task, rows: tuple[sp.csr_matrix, sp.csr_matrix] | None = None
    ) -> Interactions:
        """A validation task's adaptation set as scoring builds it (training rows, then the
        support) without the task's query items, as one support in that order; ``rows``:
        the training rows to take (:meth:`_rows_index` of the fit's split.train; default
        the rows fit indexed)."""
        items, ratings = self._history(task.user_idx, task.support, rows)
        keep = ~np.isin(items, task.query.item_idx)
        items, ratings = items[keep], ratings[keep]
        n = len(items)
        return Interactions(
            np.full(n, task.user_idx, dtype=np.int64),
            items,
            ratings.astype(np.float32),
            np.arange(n, dtype=np.int64),  # history order: training rows, then support
            np.zeros(n, dtype=np.int16),
        )

    def _unused_settings(self, cfg: ModelConfig, explicit: bool) -> list[str]:
        """The meta settings of ``cfg`` no model of this fit reads (fit warns of them);
        the pooled subclass judges its own (it rewrites its meta configs)."""
        return unused_meta_settings(cfg, explicit) + unused_model_settings(cfg, explicit)

    def _check_likes(self, ratings: np.ndarray) -> None:
        """The like threshold must split the training ratings. A declared rating range
        whose middle no rating reaches (a 1-10 range over a log of 1s and 5s) left the
        ranking model without a positive: `recommend` then ignored every user's taste,
        and nothing said so. Every rating a like is allowed (unrated items are the
        negatives) but said: dislikes then count as likes."""
        thr = self._like_threshold()
        given = self.config.like_threshold is not None
        refuse_unliked(thr, given, ratings)
        liked = is_relevant(ratings, thr)
        r_lo, r_hi = float(np.min(ratings)), float(np.max(ratings))
        # the suggested thresholds sort every training rating: built only for a warning
        # that is given (every fit built one, and the low-share warning a second)
        how = _like_how(given)
        if liked.mean() < MIN_LIKED_SHARE:
            # play counts read as ratings (1..320,725 plays: the middle, 160,363, reached
            # by 6 of 78,710 rows) trained the ranking model on 6 likes; recommend gave
            # every user the same list, 300x worse than popularity, and nothing said so
            median = float(np.median(ratings))
            hint = _like_hint(ratings)
            fix_it = (
                f"set the like threshold nearer the ratings' median (fit: --set "
                f"like_threshold={hint:g}; evaluate: --set model.like_threshold={hint:g}), "
                "or log-scale counts first"
                if hint is not None
                else "no threshold leaves 1% of them likes and some dislikes: give the "
                "data as labels (a label column of 1 for what was taken)"
            )
            warnings.warn(
                f"{how} {thr:g} is reached by {int(liked.sum())} of {len(liked)} training "
                f"ratings ({100 * liked.mean():.2g}%; they run {r_lo:g}..{r_hi:g}, median "
                f"{median:g}): the ranking model that recommend uses learns from those "
                f"likes alone; {fix_it}",
                stacklevel=3,
            )
        if liked.all():
            warnings.warn(
                f"{how} {thr:g} is at or below every training rating (they run "
                f"{r_lo:g}..{r_hi:g}): every rating counts as a like, dislikes included; "
                f"{_like_fix(ratings)}",
                stacklevel=3,
            )

    def _like_threshold(self) -> float:
        if self.feedback_ != "explicit":
            return IMPLICIT_POSITIVE  # implicit labels are already 0/1
        if self.config.like_threshold is not None:
            return float(self.config.like_threshold)
        lo, hi = self.rating_range_
        return (lo + hi) / 2.0

    def build_features(
        self, dataset: Dataset, fit_items: np.ndarray, fit_users: np.ndarray | None = None
    ) -> FeatureSet:
        t = self.config.text
        from metarec.text import make_encoder

        return build_features(
            dataset,
            make_encoder(t.model, device=t.device),
            cache=user_path(t.cache) if t.cache else default_embedding_dir(),
            text_template=t.template,
            pca_dim=t.pca_dim,
            whiten=t.whiten,
            reduce=t.reduce,
            fit_items=fit_items,
            fit_users=fit_users,
            user_text=t.user_text,
            show_progress=self.config.progress,
        )

    def _training_split(
        self, dataset: Dataset, train: Interactions, valid: Sequence[Task] | None
    ) -> Split:
        """Meta-training tasks come from ``train``; validation tasks for early stopping are
        the given ones, or the newest ``valid_frac`` of train's users (first K / next Q),
        or of its items (``valid_holdout = "new_items"``)."""
        cfg = self.config
        if valid:
            return Split("given", train, tuple(valid), (), cfg.seed, cfg.k_shot, cfg.n_query)
        from metarec.splits import item_cold, user_cold

        view = dataclasses.replace(dataset, interactions=train)
        protocol = item_cold if cfg.valid_holdout == "new_items" else user_cold
        k_shot, n_query = episode_sizes(train, cfg.k_shot, cfg.n_query)
        while True:
            split = protocol(
                view,
                k_shot=k_shot,
                n_query=n_query,
                valid_frac=cfg.valid_frac,
                test_frac=0.0,
                seed=cfg.seed,
            )
            # the held-out users are the newest, and new sign-ups have short histories:
            # when none has more than K rows, K halves rather than leave fit with no
            # validation (it trained every step, with no early stopping and no blend,
            # and said nothing)
            if split.valid or k_shot == 1:
                break
            k_shot = max(1, k_shot // 2)
        if protocol is user_cold:
            # held-out users too short for an episode validate nothing: their rows go back
            # to training (they were dropped from it, 10% of the users on such a log)
            scored = np.array([t.user_idx for t in split.valid], dtype=np.int64)
            idle = ~np.isin(train.user_idx, split.train.user_idx) & ~np.isin(train.user_idx, scored)
            if idle.any():
                split = dataclasses.replace(
                    split, train=Interactions.concat([split.train, train.take(idle)])
                )
        why = "no held-out user has more than one row"
        if split.valid and not (np.bincount(split.train.user_idx) >= 2).any():
            # the held-out (newest) users were the only ones with a support and a query:
            # training had no task left and fit failed ("no user in split.train has 2 or
            # more interactions") on a log it can train on; they go back to training
            held = "items" if protocol is item_cold else "users"
            why = (
                f"holding out the newest {cfg.valid_frac:.0%} of the {held} for it left no "
                "user with two or more training rows, so they train instead"
            )
            none = np.zeros(0, dtype=np.int64)
            split = dataclasses.replace(
                split, train=train, valid=(), cold_items=none, valid_cold_items=none
            )
        if not split.valid:
            warnings.warn(
                f"fit: no validation users ({why}): training runs every train.steps step "
                "with no early stopping, and the blend is off",
                stacklevel=3,
            )
        return split

    def _train_part(
        self,
        split: Split,
        head: str,
        meta: MetaConfig,
        tcfg: TrainConfig,
        dataset: Dataset,
        members: int = 1,
        member_steps: Sequence[int] = (),
    ) -> _Part:
        """``members`` models from their own seeds; ``member_steps`` (refit) gives member
        j ``member_steps[j]`` training steps instead of ``tcfg.steps``."""
        feats = self.features_
        assert feats is not None
        o = self.config.scorer
        offset = float(np.mean(split.train.rating)) if head == "rating" else 0.0
        sc = ScorerConfig(
            d_item_text=feats.item_text.shape[1],
            d_item_side=feats.item_side.shape[1],
            d_user_side=feats.user_side.shape[1],
            n_items=dataset.n_items,
            embed_dim=o.embed_dim,
            use_item_id=o.use_item_id,
            use_item_bias=o.use_item_bias,
            use_profile=o.use_profile,
            user_vector=o.user_vector,
            interaction=o.interaction,
            hidden=o.hidden,
            head=head,
            output_offset=offset,
            loss=self.config.rank_loss if head == "binary" else "bce",
        )
        kwargs = self._train_kwargs(head)
        meta = self._start_meta(head, meta)
        ranked = (
            _validation_ranked(dataset, split, self._ranked_domain) if head == "binary" else None
        )
        for backoff in range(INNER_LR_BACKOFFS + 1):
            try:
                results = [
                    train(
                        split,
                        feats,
                        sc,
                        meta,
                        # member j: its own seed (initialisation, tasks, negatives, ID dropout)
                        dataclasses.replace(
                            tcfg,
                            seed=tcfg.seed + 7_919 * j,
                            steps=member_steps[j] if member_steps else tcfg.steps,
                        ),
                        device=self.config.device,
                        progress=self.config.progress,
                        valid_ranked=ranked,
                        **_member_kwargs(kwargs, j, members),
                    )
                    for j in range(members)
                ]
                break
            except MetaLossDiverged as err:
                # the meta-loss went non-finite (one-row supports on a 2- or 3-item
                # catalogue at the default 0.05: at step 1, before any outer update, or a
                # few steps in): training starts again with a halved inner step, kept in
                # the part's MetaConfig, which the RUN stores and every later adaptation
                # uses. Only SGD inner loops have a step to halve; after INNER_LR_BACKOFFS
                # halvings the error stands.
                # (the pooled model trains with 0 inner steps: no step to blame there)
                algo = ALGORITHMS[meta.algorithm]
                sgd = algo.inner == "sgd" and meta.inner_steps > 0
                # Meta-SGD's step sizes are parameters: a transfer target starts from the
                # source model's learned ones, which inner_lr does not reach
                fixed = algo.learn_step_sizes and "init" in kwargs
                if backoff == INNER_LR_BACKOFFS or not sgd or fixed:
                    if self._part_label:  # which model of a transfer failed
                        raise MetaLossDiverged(
                            f"the {self._part_label}{head} model: {err}", err.step
                        ) from None
                    raise
                lowered = dataclasses.replace(meta, inner_lr=meta.inner_lr / 2)
                warnings.warn(
                    f"the {self._part_label}{head} model's meta-loss was not finite at "
                    f"training step "
                    f"{err.step} with meta.inner_lr {meta.inner_lr:g}; training again "
                    f"with meta.inner_lr {lowered.inner_lr:g}",
                    stacklevel=2,
                )
                meta = lowered
        if members == 1:
            learner, params = MetaLearner(Scorer(sc), meta), results[0].params
        else:
            learner = EnsembleLearner(Scorer(sc), meta, members)
            params = merge_members([r.params for r in results])
        # the first member's result stands for the training history (curves, best step);
        # every member's best step and loss are kept beside it
        return _Part(
            learner,
            params,
            results[0],
            member_steps=tuple(r.best_step for r in results),
            member_valid=tuple(r.best_valid for r in results),
            member_histories=tuple(r.history for r in results[1:]),
            negatives=results[0].negatives if head == "binary" else "",
        )

    def _say_unused_for_split(self, new_items: bool, negatives: str) -> None:
        """Ranking-model settings that only a split's shape switches on, said where this
        fit's did not (probe 136: they were taken and changed nothing, and fit's summary
        called the negatives age-matched): the item cold-start settings where the
        validation tasks test no new items, and age-matched negatives where the training
        tasks are not newest-items ones."""
        cfg, d = self.config, ModelConfig()
        unused = []
        if not new_items:
            unused += [
                f"{k} (the validation tasks test no new items: the item cold-start "
                "settings apply only where they do)"
                for k in ("cold_rank_members", "cold_rank_id_dropout")
                if getattr(cfg, k) != getattr(d, k)
            ]
        if cfg.train.negatives == "age_matched" and negatives != "age_matched":
            unused.append(
                "train.negatives = 'age_matched' (it applies to 'newest_items' training "
                f"tasks; these were not, and drew {negatives} negatives)"
            )
        if unused:
            warnings.warn(f"settings with no effect: {'; '.join(unused)}", stacklevel=3)

    def _start_meta(self, head: str, meta: MetaConfig) -> MetaConfig:
        """The MetaConfig the ``head`` part starts training with: the configured one
        (a transfer target starts at the inner step its source model trained with)."""
        return meta

    def lowered_settings(self) -> dict[str, float]:
        """Settings this fit trained with that differ from its config: the inner step of
        a part whose meta-loss diverged and was retried lower, as "rating model
        meta.inner_lr" / "ranking model rank_meta.inner_lr" -> the step used. A RUN
        keeps them in config.json's ``parts``; an experiment's results.json lists them
        (its config alone had named a step that never trained)."""
        cfg = self.config
        out = {}
        rank_key = "rank_meta" if cfg.rank_meta is not None else "meta"
        for what, key, configured, part in (
            ("rating model", "meta", cfg.meta, self.rating_),
            ("ranking model", rank_key, cfg.rank_meta or cfg.meta, self.rank_),
        ):
            if part is not None and part.learner.cfg.inner_lr != configured.inner_lr:
                out[f"{self._part_label}{what} {key}.inner_lr"] = part.learner.cfg.inner_lr
        return out

    def _train_kwargs(self, head: str) -> dict:
        """Extra keyword arguments for :func:`metarec.train.train` when training the
        ``head`` part ("rating" or "binary"): subclasses pass ``init``/``trainable`` here
        (transfer starts from a source model and may freeze its extractor)."""
        return {}

    # --- scoring -----------------------------------------------------------------------
    def _check_model(self) -> None:
        self._check_fitted()
        if self.features_ is None or (self.rating_ is None and self.rank_ is None):
            raise MetarecError(f"{self.name}: call fit() before scoring")

    def _history_order(self, train: Interactions) -> np.ndarray:
        if self.config.history_order == "time":
            return super()._history_order(train)
        # "item_age": by the item's first training interaction (its age in the catalogue),
        # then by time; lexsort is stable and sorts by its last key first
        first = train.item_first_time(self.n_items_)
        return np.lexsort((train.timestamp, first[train.item_idx]))

    def _full_history(
        self, user_idx: int, support: Interactions, train_rows: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, ratings float64) of the history, or of the support alone."""
        if train_rows:
            return self._history(user_idx, support)
        return (
            np.asarray(support.item_idx, dtype=np.int64),
            np.asarray(support.rating, dtype=np.float64),
        )

    def _feature_user(self, user_idx: int) -> int:
        # users outside the fitted user table (cold users from a new file) use the zero row;
        # a view from with_new_users has their own rows after it
        top = self.n_users_ + self.new_users_
        return user_idx if 0 <= user_idx <= top else self.n_users_

    def with_new_users(
        self, side: np.ndarray, fitted: Mapping[int, np.ndarray] | None = None
    ) -> MetaRecommender:
        """A view of this fitted model that also knows m users it was not fitted with, by
        their feature rows ``side`` (m, d_user), as :attr:`user_features_` encodes them:
        user index n_users_ + 1 + j scores user j (n_users_ stays the featureless cold
        user). ``fitted``: fitted user index -> a row that replaces theirs (a training
        user the users file did not describe, who brings side data now: their index, and
        so their training history, stays). Parameters, blend and training rows are
        shared, not copied; the model itself is left as it is."""
        self._check_model()
        feats = self.features_
        assert feats is not None
        width = feats.user_side.shape[1]
        side = np.asarray(side, dtype=np.float32)
        if side.size == 0:
            side = side.reshape(0, width)
        if side.ndim != 2 or side.shape[1] != width:
            raise MetarecError(
                f"{self.name}.with_new_users: expected ({width},)-wide user feature rows, "
                f"got shape {side.shape}"
            )
        base = feats.user_side[: self.n_users_ + 1]  # a view's own extra rows are dropped
        table = torch.cat([base, torch.from_numpy(side).to(base)], 0)
        for idx, row in (fitted or {}).items():
            if not 0 <= idx < self.n_users_:
                raise MetarecError(f"{self.name}.with_new_users: {idx} is no fitted user")
            table[idx] = torch.as_tensor(np.asarray(row, dtype=np.float32)).to(table)
        view = copy.copy(self)
        view.features_ = dataclasses.replace(feats, user_side=table)
        view.new_users_ = len(side)
        return view

    def _episodes(
        self, part: _Part, tasks: Sequence[tuple[int, Interactions]], train_rows: bool = True
    ) -> list[Episode]:
        head = part.learner.scorer.cfg.head
        out = []
        for user_idx, support in tasks:
            history, ratings = self._full_history(user_idx, support, train_rows)
            # adapt on the latest max_support rows, but sample negatives outside the whole
            # history: a long history's older likes are not "no" (training excludes them too)
            m = self.config.max_support
            items, ratings = history[-m:], ratings[-m:]
            if head == "binary":
                ratings = is_relevant(ratings, self._like_threshold()).astype(np.float32)
            elif self.rating_unit != 1.0 or self.rating_offset != 0.0:
                ratings = ((ratings - self.rating_offset) / self.rating_unit).astype(np.float32)
            # sampled negatives for the binary support, seeded by the support itself so the
            # same request always gets the same scores
            rng = np.random.default_rng([self.config.seed, len(items), int(items.sum())])
            out.append(
                make_episode(
                    self._feature_user(user_idx),
                    items,
                    ratings,
                    np.zeros(0, np.int64),
                    np.zeros(0, np.float32),
                    head=head,
                    n_items=self.n_items_,
                    rng=rng,
                    n_negatives=self.config.rank_negatives if head == "binary" else 0,
                    positive_threshold=0.5,
                    exclude=history,
                    negative_pool=self._negative_pool(),
                )
            )
        return out

    def _negative_pool(self) -> np.ndarray | None:
        """Items the adaptation's sampled negatives come from: those seen in training."""
        if self.known_items_ is None or not self.known_items_.any():
            return None
        return np.flatnonzero(self.known_items_)  # (n_known,), microseconds

    def _known_t(self) -> torch.Tensor:
        """known_items_ as a bool tensor on the features' device."""
        return torch.from_numpy(self.known_items_).to(self.features_.item_text.device)

    def to(self, device: str | torch.device) -> Self:
        """Place the fitted model's tensors (features, parameters) on ``device`` ("cpu",
        "cuda", "auto") for adaptation and scoring. Only placement changes; scores are
        returned as numpy arrays either way."""
        dev = resolve_device(device)
        self._check_model()
        self.features_ = self.features_.to(dev)
        for key in ("rating_", "rank_"):
            part = getattr(self, key)
            if part is not None:
                params = {k: v.to(dev) for k, v in part.params.items()}
                setattr(self, key, dataclasses.replace(part, params=params))
        return self

    def _adapt(
        self, part: _Part, tasks: Sequence[tuple[int, Interactions]], train_rows: bool = True
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(per-task adapted params, user inputs (T, d_user_in)); base params untouched."""
        learner = part.learner
        batch = pad_episodes(self._episodes(part, tasks, train_rows))
        x = build_inputs(learner.scorer, self.features_, batch, self._known_t())
        with torch.enable_grad():
            fast = learner.adapt(part.params, x)  # per-task params, detached
        return fast, x.user_x

    @torch.no_grad()
    def _predict(
        self,
        part: _Part,
        fast: dict[str, torch.Tensor],
        user_x: torch.Tensor,
        items: np.ndarray | Sequence[np.ndarray],
        item_chunk: int | None = None,
    ) -> list[np.ndarray]:
        """Raw head outputs per task with adapted ``fast`` params (see :meth:`_scores`).

        ``item_chunk`` items are scored at a time; None: on CPU as many as keep a chunk at
        ``_CHUNK_CELLS`` (task, item) cells, on CUDA 8192."""
        feats = self.features_
        learner = part.learner
        scorer = learner.scorer
        known = self._known_t()
        dev = feats.item_text.device
        n_tasks = user_x.shape[0]
        if item_chunk is None:
            # a fixed 8192 items made each hidden activation (T, 8192, 64) float32: 67 MB
            # for recommend's 32 tasks, 1.2 GB for the blend fit's ~550 validation users.
            # Above glibc's mmap threshold every chunk mapped fresh pages and gave them
            # back: recommend spent 60% of its time in page faults and fit peaked at
            # 4.8 GB on a 36k catalogue. Bounding the cells keeps activations in cache-
            # sized, reused buffers (bench_recommend: 43.6 s -> 13.4 s, same recommendations)
            item_chunk = 8192 if dev.type == "cuda" else max(64, _CHUNK_CELLS // max(1, n_tasks))
        if isinstance(items, np.ndarray):
            # a copy: item arrays of frozen Interactions are read-only
            it = torch.from_numpy(np.array(items, dtype=np.int64)).to(dev)
            # item side the same for every task (the neural process adapts only user_vec):
            # (1, N) item inputs, broadcast, so recommend's catalogue-wide scoring builds
            # the items' representation once per chunk rather than once per task
            shared = learner.item_side_shared(fast, part.params)
            cols = []
            for a in range(0, len(it), item_chunk):
                chunk = it[a : a + item_chunk]
                q = chunk.unsqueeze(0)
                if not shared:
                    q = q.expand(n_tasks, -1)  # (T, N)
                q_x = scorer.item_inputs(feats, q)  # (T, N, d_item_in)
                rows = scorer.item_rows(q, known)
                cols.append(learner.predict(fast, user_x, q_x, rows))
            s = torch.cat(cols, 1) if cols else torch.zeros(n_tasks, 0)
            return [self._from_units(part, row.cpu().numpy().astype(np.float64)) for row in s]
        # one array per task: pad to a common width, score in one batch, cut the padding
        lens = [len(i) for i in items]
        q = np.zeros((n_tasks, max(1, max(lens, default=0))), dtype=np.int64)
        for t, it_np in enumerate(items):
            q[t, : lens[t]] = it_np
        qt = torch.from_numpy(q).to(dev)
        s = learner.predict(
            fast, user_x, scorer.item_inputs(feats, qt), scorer.item_rows(qt, known)
        )
        s = s.cpu()
        return [
            self._from_units(part, s[t, : lens[t]].numpy().astype(np.float64))
            for t in range(n_tasks)
        ]

    @property
    def rating_unit(self) -> float:
        """Ratings enter the rating model as (rating - rating_offset) / rating_unit and its
        outputs leave as raw * rating_unit + rating_offset: the unit is a quarter of the
        rating range and the offset puts the bottom of the scale at 1, so any scale (1-10,
        0-100, -2..2) trains exactly as 1-5 stars do (unit 1, offset 0: unchanged), on the
        footing the one inner_lr and the other defaults were chosen on. Unscaled, ratings on
        20-100 made MAML diverge at step 1; unshifted, a scale with negative ratings gave
        the history profile (rating-weighted, features.history_profile) weights summing
        to about 0, and NaN."""
        lo, hi = self.rating_range_
        return (hi - lo) / 4.0 if hi > lo else 1.0

    _rating_offset: float | None = None  # set from a RUN's state; None: from the range

    @property
    def rating_offset(self) -> float:
        """See :attr:`rating_unit`: the rating that maps to 0 (one unit below the scale's
        bottom). RUNs written before the offset existed scaled without shifting (0)."""
        if self._rating_offset is not None:
            return self._rating_offset
        return self.rating_range_[0] - self.rating_unit

    def _from_units(self, part: _Part, raw: np.ndarray) -> np.ndarray:
        """A rating model's raw outputs back on the data's rating scale (see rating_unit)."""
        if part.learner.scorer.cfg.head == "rating" and (
            self.rating_unit != 1.0 or self.rating_offset != 0.0
        ):
            return raw * self.rating_unit + self.rating_offset
        return raw

    def _scores(
        self,
        part: _Part,
        tasks: Sequence[tuple[int, Interactions]],
        items: np.ndarray | Sequence[np.ndarray],
        item_chunk: int | None = None,
        train_rows: bool = True,
    ) -> list[np.ndarray]:
        """Raw head outputs (rating or logit) per task, before any blend. ``items`` is one
        array shared by all tasks, or one array per task."""
        fast, user_x = self._adapt(part, tasks, train_rows)
        return self._predict(part, fast, user_x, items, item_chunk)

    def _finish(self, part: _Part, raw: np.ndarray) -> np.ndarray:
        if part.learner.scorer.cfg.head == "rating":
            lo, hi = self.rating_range_
            return np.clip(raw, lo, hi)
        return 1.0 / (1.0 + np.exp(-raw))

    @property
    def _score_part(self) -> _Part:
        part = self.rating_ or self.rank_
        assert part is not None
        return part

    @property
    def scoring_algorithm(self) -> str:
        """The meta-algorithm of the model that scores (predict, /score): the rating
        model's, or the ranking model's where there is none (implicit data)."""
        return self._score_part.learner.cfg.algorithm

    @property
    def rank_algorithm(self) -> str | None:
        """The ranking model's meta-algorithm (None without one)."""
        return None if self.rank_ is None else self.rank_.learner.cfg.algorithm

    @property
    def ranks_by_rating(self) -> bool:
        """Whether :meth:`rank_scores` are unclipped ratings (a RUN fitted with
        ``rank_model = false``: its rating model ranks) rather than like-logits."""
        self._check_model()
        return self._rank_part.learner.scorer.cfg.head == "rating"

    def shown_rank_scores(self, values: np.ndarray) -> np.ndarray:
        """The score column recommend shows for ranked items (``values`` from
        :meth:`score_adapted` of a "rank" adaptation): as they are, except where the rating
        model ranks, whose unclipped rating orders the items but is shown clipped to the
        scale, as predict gives it (a 5.25 on a 1-5 run beside predict's 5.0)."""
        values = np.asarray(values, dtype=np.float64)
        if self.ranks_by_rating:
            lo, hi = self.rating_range_
            return np.clip(values, lo, hi)
        return values

    @property
    def _rank_part(self) -> _Part:
        part = self.rank_ or self.rating_
        assert part is not None
        return part

    def _blended_ratings(
        self,
        part: _Part,
        pairs: Sequence[tuple[int, Interactions]],
        items: Sequence[np.ndarray],
    ) -> list[np.ndarray]:
        """Raw outputs of the scoring part per task, stacked with the closed-form rating
        models when a rating blend was fitted (before clipping)."""
        raws = self._scores(part, pairs, items)
        blend = self.blend_
        if blend is None or part.learner.scorer.cfg.head != "rating":
            return raws
        likes: list = [None] * len(raws)
        if blend.rating_like and self.rank_ is not None:
            likes = self._scores(self.rank_, pairs, items)
        return [
            blend.rating(r, self._history(u, s), it, lk)
            for r, (u, s), it, lk in zip(raws, pairs, items, likes, strict=True)
        ]

    def _blended_ranks(self, pairs: Sequence[tuple[int, Interactions]], items: np.ndarray):
        """(T, n) ranking scores: the like-model's logits, plus the fitted rank blend; or,
        where the rating model ranks (``rank_model = false``), the rating ``score`` gives,
        unclipped (its rating stack applied: ranked by the raw meta rating, recommend's
        order and scores disagreed with predict's, a top-10 overlap of 2 in one probe)."""
        part = self._rank_part
        if part is not self.rank_:
            rated = self._blended_ratings(part, pairs, [items] * len(pairs))
            return np.stack(rated) if rated else np.zeros((0, len(items)))
        raws = self._scores(part, pairs, items)
        logits = np.stack(raws) if raws else np.zeros((0, len(items)))
        if self.blend_ is None or part is not self.rank_:
            return logits
        return self.blend_.rank(logits, [self._history(u, s) for u, s in pairs], items)

    def score(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        self._check_model()
        item_idx = self._check_items(item_idx)
        part = self._score_part
        return self._finish(part, self._blended_ratings(part, [(user_idx, support)], [item_idx])[0])

    def score_many(self, tasks, item_idx_per_task):
        self._check_model()
        tasks = check_tasks(tasks, "score_many")
        if len(tasks) != len(item_idx_per_task):
            raise MetarecError(
                f"score_many: {len(tasks)} tasks but {len(item_idx_per_task)} item arrays"
            )
        part = self._score_part
        out: list[np.ndarray] = []
        for a in range(0, len(tasks), 64):
            chunk = tasks[a : a + 64]
            raws = self._blended_ratings(
                part,
                [(t.user_idx, t.support) for t in chunk],
                [self._check_items(i) for i in item_idx_per_task[a : a + 64]],
            )
            out += [self._finish(part, r) for r in raws]
        return out

    def rank_scores(self, user_idx: int, support: Interactions, item_idx: np.ndarray) -> np.ndarray:
        self._check_model()
        item_idx = self._check_items(item_idx)
        return self._blended_ranks([(user_idx, support)], item_idx)[0]

    def rank_scores_batch(self, tasks: Sequence[Task], item_idx: np.ndarray) -> np.ndarray:
        self._check_model()
        tasks = check_tasks(tasks, "rank_scores_batch")
        item_idx = self._check_items(item_idx)
        rows = [np.zeros((0, len(item_idx)))]
        for a in range(0, len(tasks), 32):
            chunk = tasks[a : a + 32]
            rows.append(self._blended_ranks([(t.user_idx, t.support) for t in chunk], item_idx))
        return np.concatenate(rows, 0)

    # --- serving: adapt once, score many times ------------------------------------------
    def _part_named(self, which: str) -> _Part:
        if which == "rank":
            return self._rank_part
        if which == "score":
            return self._score_part
        raise MetarecError(f"unknown model part {which!r} (rank or score)")

    def adapt_user(self, user_idx: int, support: Interactions, which: str = "rank") -> Adapted:
        """Adapt the ranking (``"rank"``) or scoring (``"score"``) model to one user's
        history + support, once; :meth:`score_adapted` then scores any items with it. The
        result holds per-user copies of the adapted keys only, so a cache of these costs
        little; the other keys of ``params`` are the model's own tensors, not copies: read
        them, never write to them in place (that would change the model itself)."""
        self._check_model()
        part = self._part_named(which)
        fast, user_x = self._adapt(part, [(user_idx, support)])
        seen, ratings = self._history(user_idx, support)
        like = None
        if which == "score" and self.blend_ is not None and self.blend_.rating_like:
            assert self.rank_ is not None
            like = self._adapt(self.rank_, [(user_idx, support)])
        catalogue = None
        if which == "rank":
            every = np.arange(self.n_items_, dtype=np.int64)
            catalogue = self._predict(part, fast, user_x, every)[0]
            if self.blend_ is not None and part is self.rank_:
                catalogue = self.blend_.rank(catalogue[None, :], [(seen, ratings)], every)[0]
            elif self.blend_ is not None and part.learner.scorer.cfg.head == "rating":
                # the rating model ranks: by the rating score() gives (see _blended_ranks)
                catalogue = self.blend_.rating(catalogue, (seen, ratings), every)
        return Adapted(which, fast, user_x, np.unique(seen), (seen, ratings), like, catalogue)

    def probe_support(self) -> tuple[int, Interactions]:
        """(a cold user's index, a one-item support: item 0 at the top of the scale, or a
        like): what the load-time smoke test and :meth:`adapted_bytes` adapt to."""
        _, hi = self.rating_range_
        value = hi if self.feedback_ == "explicit" else 1.0
        cold = self.n_users_
        support = Interactions(
            np.array([cold], dtype=np.int64),
            np.array([0], dtype=np.int64),
            np.array([value], dtype=np.float32),
            np.zeros(1, dtype=np.int64),
            np.zeros(1, dtype=np.int16),
        )
        return cold, support

    def adapted_bytes(self) -> int:
        """Bytes one :meth:`adapt_user` result holds beyond the shared base tensors and
        its catalogue scores, the larger of a ranking and a scoring adaptation, measured
        on a cold user's one-item support: what a serving cache entry costs besides its
        scores. It grows with ensembles (model.rating_members: three adapted rating
        models) and with the adapted layers, which a fixed guess did not follow."""
        self._check_model()
        cold, support = self.probe_support()

        sizes = []
        for which, part in (("rank", self.rank_), ("score", self.rating_ or self.rank_)):
            if part is None:
                continue
            a = self.adapt_user(cold, support, which)
            n = own_bytes(a.params, part) + a.user_x.numel() * a.user_x.element_size()
            if a.like is not None and self.rank_ is not None:
                n += own_bytes(a.like[0], self.rank_)
            sizes.append(n)
        return max(sizes, default=0)

    def score_adapted(self, adapted: Adapted, item_idx: np.ndarray) -> np.ndarray:
        """Scores of ``item_idx`` for an :meth:`adapt_user` result: P(like) for the ranking
        model, the rating (clipped to the scale) or probability for the scoring model.

        With a fitted blend the same blend as :meth:`score` / :meth:`rank_scores` applies:
        the scoring model's rating equals :meth:`score`; the ranking model returns
        sigmoid(:meth:`rank_scores`), the same order in (0, 1) (not a calibrated P(like))."""
        part = self._part_named(adapted.which)
        item_idx = self._check_items(item_idx)
        if adapted.catalogue is not None:  # the whole catalogue was scored at adaptation
            raw = adapted.catalogue[item_idx]
            if part.learner.scorer.cfg.head == "rating":
                return raw  # a rating model ranking on its own: its unclipped rating
            return self._finish(part, raw)
        raw = self._predict(part, adapted.params, adapted.user_x, item_idx)[0]
        blend, hist = self.blend_, adapted.history
        if blend is not None and hist is not None:
            if adapted.which == "score" and part.learner.scorer.cfg.head == "rating":
                like = None
                if adapted.like is not None and self.rank_ is not None:
                    like = self._predict(self.rank_, *adapted.like, item_idx)[0]
                raw = blend.rating(raw, hist, item_idx, like)
            elif adapted.which == "rank" and part is self.rank_:
                raw = blend.rank(raw[None, :], [hist], item_idx)[0]
        if adapted.which == "rank" and part.learner.scorer.cfg.head == "rating":
            return raw  # a rating model ranking on its own: its unclipped rating
        return self._finish(part, raw)

    @torch.no_grad()
    def explain(
        self, user_idx: int, support: Interactions, item_idx: np.ndarray, which: str = "rank"
    ) -> np.ndarray:
        """Influence of each support row on each item's score, by exact leave-one-out
        re-adaptation: w[i, j] = s(i | support) − s(i | support without row j), in logit
        units for the ranking model (rating units for a rating head). (n_items, n_support).
        Rows older than the ``max_support`` the meta-model adapts on count too: the blend's
        closed-form inputs read the whole history, and the sampled negatives avoid it (they
        had weight 0 while their removal moved the blended score by up to 0.85 logits, and
        the rows shown were not the top ones; probe 157).

        Each leave-one-out support is adapted to exactly as a request holding it would be:
        its own sampled negatives (seeded by the support, as every adaptation is), and for
        the ranking model with a fitted blend, s is the blended logit :meth:`rank_scores`
        returns (/recommend's score is its sigmoid), the closed-form inputs recomputed
        without row j. (The weights were once the meta-model's logit alone, with the full
        support's negatives kept fixed: they disagreed with re-requesting without the row,
        0.037 against 0.045.) Every leave-one-out is blended with the whole support's
        weights (the one-item weights only where the support itself is one item), so a
        weight measures the row, not a switch of blend weights. The scoring model's
        weights are the meta-model's own, before its rating blend, except where it ranks
        (``rank_model = false``, ``which="rank"``): there they are of the blended rating
        recommend ranks by."""
        self._check_model()
        part = self._part_named(which)
        item_idx = self._check_items(item_idx)
        n_sup = len(support)
        out = np.zeros((len(item_idx), n_sup))
        if n_sup == 0 or len(item_idx) == 0:
            return out
        # task 0: the whole support; task 1 + j: the support without row j
        tasks = [(user_idx, support)] + [
            (user_idx, support.take(np.delete(np.arange(n_sup), j))) for j in range(n_sup)
        ]
        # adapted in chunks: a request may hold 1,000 rows, each a leave-one-out
        s = np.concatenate(
            [
                np.stack(self._predict(part, *self._adapt(part, tasks[lo : lo + 256]), item_idx))
                for lo in range(0, len(tasks), 256)
            ]
        )  # (1 + n_sup, n_items)
        if self.blend_ is not None and part is self.rank_:
            hists = [self._history(u, sup) for u, sup in tasks]
            # every leave-one-out takes the whole support's blend weights: a two-row
            # support left one row short fell to the one-item weights, another score
            # scale, and each weight measured that switch (-5.5 logits), not the row
            short = np.full(len(tasks), self.blend_.is_short(hists[0]))
            s = self.blend_.rank(s, hists, item_idx, short)
        elif self.blend_ is not None and which == "rank" and self.rank_ is None:
            # the rating model ranks (rank_model = false): by its blended rating, which
            # is what recommend orders and shows (see _blended_ranks)
            hists = [self._history(u, sup) for u, sup in tasks]
            # every leave-one-out with the whole support's weights, as the ranking branch
            n = len(hists[0][0])
            s = np.stack(
                [
                    self.blend_.rating(r, h, item_idx, n_history=n)
                    for r, h in zip(s, hists, strict=True)
                ]
            )
        return (s[0][None, :] - s[1:]).T

    # --- persistence -------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able config, tensors) describing the fitted model completely."""
        self._check_model()
        if self.new_users_:
            # their rows would be saved and their ids not (the Predictor holds those): a
            # loaded copy scored them as cold users without a word
            raise MetarecError(
                f"{self.name}: this is a view with {self.new_users_} user(s) given side data "
                "after fit (with_users / with_new_users); save the model it came from, and "
                "give their side data again when scoring"
            )
        feats = self.features_
        assert feats is not None and self.known_items_ is not None
        tensors = {
            "features.item_text": feats.item_text,
            "features.item_side": feats.item_side,
            "features.user_side": feats.user_side,
            "known_items": torch.from_numpy(self.known_items_.astype(np.uint8)),
        }
        parts = {}
        for key, part in (("rating", self.rating_), ("rank", self.rank_)):
            if part is None:
                continue
            parts[key] = {
                "scorer": to_dict(part.learner.scorer.cfg),
                "meta": to_dict(part.learner.cfg),
                "members": part.members,
                "new_items": part.new_items,
            }
            tensors.update({f"{key}.{k}": v for k, v in part.params.items()})
        blend = None
        if self.blend_ is not None:
            blend, blend_tensors = self.blend_.state()
            tensors.update({f"blend.{k}": v for k, v in blend_tensors.items()})
        cfg = {
            "model": to_dict(self.config),
            "parts": parts,
            "n_users": self.n_users_,
            "n_items": self.n_items_,
            "feedback": self.feedback_,
            "rating_range": list(self.rating_range_),
            "rating_offset": self.rating_offset,
            "encoder_fingerprint": feats.encoder_fingerprint,
            "blend": blend,
        }
        return cfg, tensors

    @classmethod
    def from_state(
        cls, cfg: dict, tensors: dict[str, torch.Tensor], train: Interactions
    ) -> MetaRecommender:
        # every key is one this version writes, as in the nested configs: an unknown one
        # (a newer version's) loaded silently, and a feedback other than these two was
        # scored as implicit
        unknown = sorted(set(cfg) - _STATE_KEYS)
        if unknown:
            raise MetarecError(f"unknown config key {unknown[0]!r}")
        if cfg["feedback"] not in ("explicit", "implicit"):
            raise MetarecError(f"feedback {cfg['feedback']!r} is neither explicit nor implicit")
        # a RUN's config is whole: read as written, no default laid under it
        rec = cls(from_dict(ModelConfig, cfg["model"], ""))
        rec.n_users_, rec.n_items_ = int(cfg["n_users"]), int(cfg["n_items"])
        rec.feedback_ = cfg["feedback"]
        rec.rating_range_ = tuple(float(x) for x in cfg["rating_range"])
        # RUNs written before the offset was recorded divided by the unit only
        rec._rating_offset = float(cfg.get("rating_offset", 0.0))
        # the rows it serves, as fit records them (evaluate refuses queries among them)
        rec.train_rows_ = train
        rec._index_training_rows(train)
        rec.features_ = FeatureSet(
            tensors["features.item_text"],
            tensors["features.item_side"],
            tensors["features.user_side"],
            cfg.get("encoder_fingerprint", ""),
        )
        rec.known_items_ = tensors["known_items"].numpy().astype(bool)
        for key, spec in cfg["parts"].items():
            sc = from_dict(ScorerConfig, spec["scorer"], "scorer")
            meta = from_dict(MetaConfig, spec["meta"], "meta")
            prefix = f"{key}."
            params = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            members = int(spec.get("members", 1))
            learner = (
                MetaLearner(Scorer(sc), meta)
                if members == 1
                else EnsembleLearner(Scorer(sc), meta, members)
            )
            # RUNs written before "new_items" was recorded: the settings update then used
            part = _Part(learner, params, None, new_items=bool(spec.get("new_items", False)))
            setattr(rec, f"{key}_", part)
        if cfg.get("blend") is not None:
            blend_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("blend.")}
            rec.blend_ = Blend.from_state(cfg["blend"], blend_tensors)
        rec.name_after_scoring_model()
        return rec

    def name_after_scoring_model(self) -> None:
        """A default name ("MetaRec-<meta.algorithm>") made the scoring model's: an implicit
        fit has no rating model, and /info and /recommend called its neural-process ranking
        model "MetaRec-maml". A name someone gave (evaluate's method names) stays."""
        default = self.name == f"MetaRec-{self.config.meta.algorithm}"
        if default and self.rating_ is None and self.rank_ is not None:
            self.name = self._auto_name = f"MetaRec-{self.scoring_algorithm}"


def _trained_meta(configured: MetaConfig, part: _Part) -> MetaConfig:
    """The MetaConfig a refit trains ``part`` again with: the configured one at the inner
    step fit trained with (lowered there if its meta-loss diverged). Not the part's
    learner config itself: the pooled model's holds its fine-tuning steps, and a refit
    with it meta-trained instead of training the pooled model."""
    return dataclasses.replace(configured, inner_lr=part.learner.cfg.inner_lr)


def _member_kwargs(kwargs: dict, j: int, members: int) -> dict:
    """:meth:`MetaRecommender._train_kwargs` for ensemble member j: an ``init`` taken
    from an ensemble (transfer's source model) gives member j its own member's values."""
    init = kwargs.get("init")
    if members == 1 or not init or not any(k.startswith(member_prefix(0)) for k in init):
        return kwargs
    mine = member_params(init, j)
    if not mine:
        raise MetarecError(f"the initial model has no ensemble member {j} to start member {j} from")
    return {**kwargs, "init": mine}


def _with_unknown_user_row(feats: FeatureSet) -> FeatureSet:
    """Append one zero row to user_side: the features of a user outside the user table."""
    us = feats.user_side
    return FeatureSet(
        feats.item_text,
        feats.item_side,
        torch.cat([us, us.new_zeros(1, us.shape[1])], 0),
        feats.encoder_fingerprint,
    )


def _map_ratings(split: Split, fn) -> Split:
    """``split`` with every rating (training rows, validation and test tasks) mapped by
    ``fn`` ((n,) float32 -> (n,) float32)."""

    def mapped(inter: Interactions) -> Interactions:
        return Interactions(
            inter.user_idx, inter.item_idx, fn(inter.rating), inter.timestamp, inter.domain
        )

    def task(t: Task) -> Task:
        return Task(t.user_idx, mapped(t.support), mapped(t.query))

    return dataclasses.replace(
        split,
        train=mapped(split.train),
        valid=tuple(task(t) for t in split.valid),
        test=tuple(task(t) for t in split.test),
    )


def _as_likes(split: Split, threshold: float) -> Split:
    """Labels for the ranking model: 1 where rating >= threshold (a like), else 0 (an
    explicit dislike, kept as a negative beside the sampled ones)."""
    return _map_ratings(split, lambda r: is_relevant(r, threshold).astype(np.float32))


def _in_rating_units(split: Split, unit: float, offset: float) -> Split:
    """Ratings as the rating model trains on them, (r - offset) / unit
    (:attr:`MetaRecommender.rating_unit`); the split itself for 1-5 stars (1, 0)."""
    if unit == 1.0 and offset == 0.0:
        return split
    return _map_ratings(split, lambda r: ((r - offset) / unit).astype(np.float32))
