"""One contract, every algorithm (implicit's mixin pattern): each subclass only names it."""

from __future__ import annotations

import numpy as np
import torch

from meta_synthetic import make_problem
from metarec.meta import (
    ALGORITHMS,
    MetaConfig,
    MetaLearner,
    build_inputs,
    make_episode,
    pad_episodes,
)
from metarec.models.scorer import Scorer, ScorerConfig


def test_registry_is_explicit():
    assert set(ALGORITHMS) == {"maml", "fomaml", "reptile", "meta_sgd", "melu", "ridge", "np"}


def _inputs(head: str):
    split, feats = make_problem(0, head)
    sc = Scorer(
        ScorerConfig(
            d_item_text=8,
            n_items=40,
            embed_dim=6,
            hidden=(8,),
            head=head,
            output_offset=3.0 if head == "rating" else 0.0,
        )
    )
    rng = np.random.default_rng(0)
    eps = [
        make_episode(
            t.user_idx,
            t.support.item_idx,
            t.support.rating,
            t.query.item_idx,
            t.query.rating,
            head=head,
            n_items=40,
            rng=rng,
        )
        for t in split.valid
    ]
    return sc, build_inputs(sc, feats, pad_episodes(eps), np.ones(40, dtype=bool))


class MetaContract:
    algorithm: str
    pretrain_steps = 0  # outer steps before the adaptation check (learned adapters need some)

    def learner(self, sc):
        ml = MetaLearner(sc, MetaConfig(algorithm=self.algorithm, inner_steps=3, inner_lr=0.05))
        return ml, ml.init_params(torch.Generator().manual_seed(0))

    def test_adapt_lowers_support_loss(self):
        for head in ("binary", "rating"):
            sc, x = _inputs(head)
            ml, p = self.learner(sc)
            if self.pretrain_steps:
                params = {k: v.clone().requires_grad_(True) for k, v in p.items()}
                opt = torch.optim.Adam(params.values(), lr=1e-2)
                for _ in range(self.pretrain_steps):
                    _, g = ml.meta_grads(params, x)
                    for k, v in params.items():
                        v.grad = g[k]
                    opt.step()
                p = {k: v.detach() for k, v in params.items()}
            before = ml.support_losses(p, x)
            after = ml.support_losses(ml.adapt(p, x), x)
            assert float(after.mean()) < float(before.mean()), head

    def test_adapt_is_pure(self):
        sc, x = _inputs("binary")
        ml, p = self.learner(sc)
        copies = {k: v.clone() for k, v in p.items()}
        ml.adapt(p, x)
        ml.meta_grads(p, x)
        assert all(torch.equal(p[k], copies[k]) for k in p)
        assert all(not v.requires_grad for v in p.values())

    def test_meta_gradients_reach_every_meta_parameter(self):
        sc, x = _inputs("binary")
        ml, p = self.learner(sc)
        loss, grads = ml.meta_grads(p, x)
        assert torch.isfinite(loss)
        assert set(grads) == set(p)
        dead = [k for k, g in grads.items() if not (torch.isfinite(g).all() and g.abs().sum() > 0)]
        assert dead == []

    def test_deterministic(self):
        sc, x = _inputs("rating")
        ml, p = self.learner(sc)
        l1, g1 = ml.meta_grads(p, x)
        l2, g2 = ml.meta_grads(p, x)
        assert torch.equal(l1, l2) and all(torch.equal(g1[k], g2[k]) for k in g1)


class TestMAML(MetaContract):
    algorithm = "maml"


class TestFOMAML(MetaContract):
    algorithm = "fomaml"


class TestReptile(MetaContract):
    algorithm = "reptile"


class TestMetaSGD(MetaContract):
    algorithm = "meta_sgd"


class TestMeLU(MetaContract):
    algorithm = "melu"


class TestRidge(MetaContract):
    algorithm = "ridge"


class TestNeuralProcess(MetaContract):
    algorithm = "np"
    pretrain_steps = 30
