"""Reusing trained parameters in another setting: pooled training and cross-domain transfer.

* :class:`PooledRecommender`: the meta-model's scorer trained *without* meta-learning (no
  inner loop while training: plain supervised training on every warm user's episodes),
  optionally fine-tuned per user at adaptation time with ``finetune_steps`` SGD steps on
  the support. It answers "does meta-learning help, or just the architecture?".
* :class:`TransferRecommender`, for cross-domain splits (``Split.source_domain`` /
  ``target_domain``), one of three strategies:

  ``joint``      one meta-training on the union: source interactions and the target's warm
                 users in the same task pool (what ``split.train`` already holds).
  ``parameter``  meta-train on the source domain only, then initialise the target model
                 from those parameters and meta-train (fine-tune) on the target's rows.
  ``feature``    as ``parameter``, but the feature extractor (projections, user vector)
                 stays frozen: the decision layers and the target items' ID rows learn on
                 the target.

Both start the target model through :func:`metarec.train.train`'s ``init`` (the source
part's parameters) and ``trainable`` (False for frozen groups) hooks, passed by
:meth:`TransferRecommender._train_kwargs`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Self

import numpy as np
import torch

from metarec.features import FeatureSet
from metarec.meta.algorithms import ALGORITHMS, MAX_INNER_STEPS, MetaConfig
from metarec.model import (
    MetaRecommender,
    ModelConfig,
    _trained_meta,
    trained_meta_tables,
    unused_model_settings,
)
from metarec.models.scorer import param_group
from metarec.types import Dataset, Interactions, MetarecError, Task

Params = dict[str, torch.Tensor]


def _pooled_meta(meta: MetaConfig) -> MetaConfig:
    """A meta table as the pooled model trains with it: 0 inner steps, first-order, and an
    SGD inner loop (fine-tuning needs one; ridge and np adapt without steps) with a
    query-loss outer step (Reptile's outer step is the inner loop's displacement, zero
    with 0 inner steps, so a pooled Reptile barely trained: its validation loss stayed
    flat); anything else becomes FOMAML."""
    a = ALGORITHMS[meta.algorithm]
    algo = meta.algorithm if a.inner == "sgd" and a.outer == "query" else "fomaml"
    return dataclasses.replace(meta, algorithm=algo, inner_steps=0, first_order=True)


class PooledRecommender(MetaRecommender):
    """Same scorer and features as MetaRecommender, trained with ``inner_steps = 0``.

    With zero inner steps the "meta-gradient" is the plain gradient of the query loss at
    the shared parameters, so training is ordinary supervised learning over all warm
    users' episodes. At adaptation the parameters are fine-tuned per user with
    ``finetune_steps`` first-order SGD steps (step size ``meta.inner_lr``) on the support,
    on the groups the algorithm adapts; ``finetune_steps = 0`` scores with the shared
    parameters (the support still enters through the history profile). As every gradient
    adaptation, a user whose steps raise their support loss is fine-tuned again at half
    the step, up to four times, else not at all (``MetaLearner._backtrack``): the pooled
    model was never trained to adapt, and its steps overshot for ~1/5 of ML-100K's warm
    item-cold users.
    """

    def __init__(self, config: ModelConfig | None = None, finetune_steps: int = 0) -> None:
        cfg = ModelConfig() if config is None else config
        if not isinstance(cfg, ModelConfig):  # replace() below: an AttributeError before
            raise MetarecError(
                f"Pooled: config must be a ModelConfig, got {type(cfg).__name__} "
                "(ModelConfig.from_dict turns a table into one)"
            )
        if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int | np.integer):
            # 2.5 ran 2 steps under the name "Pooled+FT2.5"
            raise MetarecError(f"pooled: finetune_steps must be an integer, got {finetune_steps!r}")
        if not 0 <= finetune_steps <= MAX_INNER_STEPS:
            # 1001 was taken, the model trained, and only then the method failed, naming
            # meta.inner_steps, which nobody had set
            raise MetarecError(
                f"pooled: finetune_steps must be in [0, {MAX_INNER_STEPS}], got {finetune_steps}"
            )
        self._given = cfg  # before the rewrite below: what _unused_settings judges
        cfg = dataclasses.replace(
            cfg,
            meta=_pooled_meta(cfg.meta),
            rank_meta=None if cfg.rank_meta is None else _pooled_meta(cfg.rank_meta),
        )
        super().__init__(cfg)
        self.finetune_steps = int(finetune_steps)
        self.name = "Pooled" + (f"+FT{finetune_steps}" if finetune_steps else "")

    def _unused_settings(self, cfg: ModelConfig, explicit: bool) -> list[str]:
        """The meta settings given to the pooled model that it never reads: it trains
        with 0 inner steps by an SGD algorithm and fine-tunes with ``finetune_steps``, so
        a meta table's algorithm, inner_steps, first_order, ridge and neural-process keys
        (and inner_lr and adapt_groups without fine-tuning) were rewritten or ignored,
        while results.json recorded them as given."""
        given, defaults = self._given, ModelConfig()
        trained = {prefix for prefix, _, _ in trained_meta_tables(given, explicit)}
        why = {
            "inner_steps": "it trains with 0 inner steps and fine-tunes with finetune_steps",
            "first_order": "it trains with 0 inner steps",
            "ridge_lambda": "it has no closed-form head",
            "ridge_target": "it has no closed-form head",
            "np_hidden": "it has no neural-process encoder",
        }
        if self.finetune_steps == 0:
            why["inner_lr"] = why["adapt_groups"] = "finetune_steps = 0: no fine-tuning step"
        out = []
        for prefix in ("meta", "rank_meta"):
            mine, base = getattr(given, prefix), getattr(defaults, prefix)
            if mine is None or mine == base:
                continue
            if prefix not in trained:
                out.append(f"{prefix}.* (no model of this fit trains with it)")
                continue
            kept = _pooled_meta(mine).algorithm
            if mine.algorithm != base.algorithm and mine.algorithm != "melu":
                # MeLU's SGD loop is kept: it fine-tunes its own groups. maml, fomaml and
                # meta_sgd train alike with 0 inner steps, first-order (meta_sgd's step
                # sizes get no gradient), and fine-tune by plain SGD
                reason = (
                    "with 0 inner steps every SGD algorithm but MeLU trains alike"
                    if kept == mine.algorithm
                    else f"the pooled model trains and fine-tunes as {kept} does"
                )
                out.append(f"{prefix}.algorithm ({reason})")
            out += [
                f"{prefix}.{key} ({reason})"
                for key, reason in why.items()
                if getattr(mine, key) != getattr(base, key)
            ]
        return out + unused_model_settings(given, explicit)

    def _train_part(self, split, head, meta, tcfg, dataset, members=1, member_steps=()):
        # training ran with 0 inner steps; adaptation (score/recommend, and the validation
        # scores a blend is fitted on, which come after this) uses finetune_steps
        part = super()._train_part(split, head, meta, tcfg, dataset, members, member_steps)
        tuned = dataclasses.replace(part.learner.cfg, inner_steps=self.finetune_steps)
        # replace keeps the learner's class: an ensemble stays one
        return dataclasses.replace(part, learner=dataclasses.replace(part.learner, cfg=tuned))


# --- cross-domain transfer -----------------------------------------------------------------

STRATEGIES = ("joint", "parameter", "feature")
# groups the feature strategy keeps fixed on the target: the shared extractor that maps
# text, side features and users to representations; the decision layers (MLP + head)
# learn, and so do the item ID rows ("embedding"): the source model never met a target
# item, so its rows were still at their initialisation (biases exactly 0) and, frozen,
# target items were told apart by text alone (AUC 0.55 where parameter transfer reached
# 1.0 on a two-domain set with uninformative target text). Only target rows train there:
# the target's episodes and negatives hold target items, and Adam (no weight decay) leaves
# a row with no gradient exactly where it was, so the source items' rows stay as learned
FROZEN_FOR_FEATURE = ("projection", "user")


def _domain_rows(inter: Interactions, domain: int) -> Interactions:
    return inter.take(inter.domain == domain)


class TransferRecommender(MetaRecommender):
    """MetaRecommender fitted by a cross-domain strategy (module docstring)."""

    def __init__(self, config: ModelConfig | None = None, strategy: str = "joint") -> None:
        if strategy not in STRATEGIES:
            raise MetarecError(f"unknown transfer strategy {strategy!r}; known: {STRATEGIES}")
        super().__init__(config)
        self.strategy = strategy
        self.name = f"Transfer-{strategy}"
        self.source_: MetaRecommender | None = None

    def fit(
        self,
        dataset: Dataset,
        train: Interactions,
        features: FeatureSet | None = None,
        valid: Sequence[Task] | None = None,
        *,
        source_domain: int | str | None = None,
        target_domain: int | str | None = None,
    ) -> Self:
        if len(dataset.domains) < 2:
            # joint training fitted a plain MetaRec named "Transfer-joint" without a word,
            # where the other strategies said "pass source_domain/target_domain"
            raise MetarecError(
                f"transfer {self.strategy}: the data has one domain "
                f"({', '.join(map(str, dataset.domains))}); transfer needs a source and a "
                "target domain (a domain column), and MetaRecommender fits one domain"
            )
        if self.strategy == "joint":
            self._ranked_domain = None
            if source_domain is not None or target_domain is not None:
                # joint training reads no direction, but a bad one is still an error
                # (it had been accepted without a look; the other strategies refused it)
                self._ranked_domain = self._domains(
                    dataset, train, valid, source_domain, target_domain
                )[1]
            elif valid:
                # validation users cold in one domain (their supports'): the target, whose
                # items they are ranked over (_validation_ranked)
                doms = np.unique(np.concatenate([t.support.domain for t in valid]))
                self._ranked_domain = int(doms[0]) if len(doms) == 1 else None
            return super().fit(dataset, train, features, valid)
        src, tgt = self._domains(dataset, train, valid, source_domain, target_domain)
        self._ranked_domain = tgt
        source_rows, target_rows = _domain_rows(train, src), _domain_rows(train, tgt)
        if len(source_rows) == 0 or len(target_rows) == 0:
            raise MetarecError(
                f"transfer {self.strategy}: train has {len(source_rows)} source and "
                f"{len(target_rows)} target rows; both must be non-empty"
            )
        # 1. the source model, on source rows only (validation: the target's valid users,
        #    the only held-out users there are; they pick the step to transfer from)
        source = MetaRecommender(self.config)
        source._ranked_domain = tgt  # validated on target users, ranked over target items
        source._say_blend_skipped = False  # its blend is not served: the target's warns
        source._part_label, self._part_label = "source ", "target "
        self.source_ = source.fit(dataset, source_rows, features, valid)
        parts_init: dict[str, Params] = {}
        for head in ("rating_", "rank_"):
            part = getattr(self.source_, head)
            parts_init[head] = dict(part.params) if part is not None else {}
        frozen = FROZEN_FOR_FEATURE if self.strategy == "feature" else ()

        # 2. the target model: same features, each part started from the source's matching
        #    part (and, for feature transfer, with the extractor frozen): _train_kwargs
        self._init_parts = {"rating": parts_init["rating_"], "binary": parts_init["rank_"]}
        self._frozen = frozen
        feats = self.source_.features_
        assert feats is not None
        plain = FeatureSet(  # drop the unknown-user row, fit() appends it again
            feats.item_text, feats.item_side, feats.user_side[:-1], feats.encoder_fingerprint
        )
        super().fit(dataset, target_rows, plain, valid)
        return self

    def _start_meta(self, head: str, meta: MetaConfig) -> MetaConfig:
        # the target starts from the source's parameters, at the inner step the source
        # trained with: from the configured one, a step the source had diverged at, it
        # diverged again (probe 136: three more halvings, or a failed Transfer-parameter)
        part = None
        if self.source_ is not None:
            part = self.source_.rating_ if head == "rating" else self.source_.rank_
        if part is None or part.learner.cfg.inner_lr >= meta.inner_lr:
            return meta
        return _trained_meta(meta, part)

    def lowered_settings(self) -> dict[str, float]:
        source = {} if self.source_ is None else self.source_.lowered_settings()
        return {**source, **super().lowered_settings()}

    def _train_kwargs(self, head: str) -> dict:
        init = getattr(self, "_init_parts", {}).get(head)
        if not init:  # joint strategy, or a part the source model does not have
            return {}
        frozen = self._frozen
        return {"init": init, "trainable": lambda name: param_group_or_meta(name) not in frozen}

    @staticmethod
    def _domains(
        dataset: Dataset,
        train: Interactions,
        valid: Sequence[Task] | None,
        source: int | str | None,
        target: int | str | None,
    ) -> tuple[int, int]:
        """Source/target domain indices (or names): given, else target = the domain of the
        validation supports and source = the other one. One given of two domains implies
        the other; one given of more is refused (it had been ignored without a word, and
        the direction inferred from the validation supports could be the reverse)."""
        n = len(dataset.domains)
        given = {}
        for name, d in (("source_domain", source), ("target_domain", target)):
            if d is None:
                continue
            if isinstance(d, str) and d.strip() in dataset.domains:
                d = list(dataset.domains).index(d.strip())  # a name, as the split takes
            if isinstance(d, bool) or not isinstance(d, int | np.integer) or not 0 <= d < n:
                raise MetarecError(
                    f"transfer: {name} {d!r} is neither a domain index (0..{n - 1}) nor a "
                    f"domain name ({', '.join(dataset.domains)})"
                )
            given[name] = int(d)
        if len(given) == 1 and n != 2:
            raise MetarecError(
                f"transfer: pass both source_domain and target_domain ({n} domains: "
                f"{', '.join(dataset.domains)}), not only {next(iter(given))}"
            )
        # the domains of the validation supports: the target's, where the users are cold
        doms = np.unique(np.concatenate([t.support.domain for t in valid])) if valid else None
        if given:
            # of two domains, the one not given is the other
            source = given.get("source_domain", 1 - given.get("target_domain", 0))
            target = given.get("target_domain", 1 - source)
            if source == target:
                # "transfer" from a domain to itself trained the source model on the
                # target's rows twice, without a word
                raise MetarecError(
                    f"transfer: source_domain and target_domain are both {source} "
                    f"({dataset.domains[source]!r}); transfer needs two different domains"
                )
            if doms is not None and len(doms) == 1 and int(doms[0]) != target:
                # supports all in another domain: the two were given the wrong way round
                # (the "target" model then trained on the source's rows and early-stopped
                # on users it could not know: nDCG@10 0.117 for 0.205, probe 166)
                raise MetarecError(
                    f"transfer: target_domain is {dataset.domains[target]!r} but the "
                    f"validation users' supports are in {dataset.domains[int(doms[0])]!r}, "
                    "the domain they are cold in: source and target the wrong way round?"
                )
            return int(source), int(target)
        if len(dataset.domains) != 2:
            raise MetarecError("transfer: pass source_domain/target_domain (not 2 domains)")
        if doms is None:
            raise MetarecError("transfer: needs validation tasks to tell the target domain")
        if len(doms) != 1:
            raise MetarecError("transfer: validation supports span several domains")
        tgt = int(doms[0])
        return 1 - tgt, tgt


def param_group_or_meta(name: str) -> str:
    """The scorer group of a parameter; algorithm meta-parameters (step sizes, λ, the NP
    encoder) count as 'decision' so they learn on the target. An ensemble member's entry
    (``m<j>.`` + name, metarec.meta.ensemble) is its name's group: unprefixed, every
    member entry read as 'decision', i.e. trainable."""
    name = re.sub(r"^m\d+\.", "", name)
    try:
        return param_group(name)
    except MetarecError:
        return "decision"
