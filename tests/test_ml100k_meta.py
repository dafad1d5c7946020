"""Issue #4's done-when on real data: a short MAML run on MovieLens-100K user cold-start
lowers the validation loss below the no-adaptation models' (data test; hashing features
keep it cheap). Slow: run with `pytest -m slow`."""

import os

import numpy as np
import pytest
import torch

from metarec.meta.algorithms import MetaConfig, MetaLearner
from metarec.meta.episodes import build_inputs, episode_from_task, pad_episodes
from metarec.models.scorer import Scorer, ScorerConfig
from metarec.train import TrainConfig, evaluate_loss, train

pytestmark = [pytest.mark.data, pytest.mark.slow]  # ~1-5 min on 2 cores


def _setup():
    if not os.environ.get("METAREC_DATA_DIR"):
        pytest.skip("METAREC_DATA_DIR is unset: MovieLens-100K is not available")
    from metarec.data import load_dataset
    from metarec.features import build_features
    from metarec.splits import make_split
    from metarec.text import make_encoder

    ds = load_dataset("movielens-100k")
    split = make_split(ds, "user-cold", k_shot=10, n_query=10, seed=0)
    known = np.zeros(ds.n_items, bool)
    known[split.train.item_idx] = True
    feats = build_features(ds, make_encoder("hashing:64"), fit_items=known)
    sc = ScorerConfig(
        d_item_text=feats.item_text.shape[1],
        d_item_side=feats.item_side.shape[1],
        d_user_side=feats.user_side.shape[1],
        n_items=ds.n_items,
        head="rating",
        output_offset=float(split.train.rating.mean()),
    )
    return ds, split, feats, sc


def _no_adapt_loss(learner, params, feats, tasks, known):
    eps = [episode_from_task(t, head="rating", n_items=feats.n_items) for t in tasks]
    x = build_inputs(learner.scorer, feats, pad_episodes(eps), known)
    with torch.no_grad():
        return float(learner.query_losses(params, x).mean())


def test_maml_beats_no_adaptation_on_validation_users():
    torch.manual_seed(0)
    ds, split, feats, sc = _setup()
    tcfg = TrainConfig(steps=150, eval_every=50, meta_batch=32, seed=0)
    maml = MetaConfig(algorithm="maml", inner_steps=3, inner_lr=0.05)
    res = train(split, feats, sc, maml, tcfg, progress=False)
    learner = MetaLearner(Scorer(sc), maml)
    known = torch.from_numpy(res.known_items)
    eps = [episode_from_task(t, head="rating", n_items=feats.n_items) for t in split.valid]
    adapted = evaluate_loss(learner, res.params, feats, eps, known)
    # (a) the same meta-learned weights used without adapting to the support
    frozen = _no_adapt_loss(learner, res.params, feats, split.valid, known)
    # (b) a pooled model: same architecture and budget, trained without an inner loop
    pooled_cfg = MetaConfig(algorithm="maml", inner_steps=0)
    pooled = train(split, feats, sc, pooled_cfg, tcfg, progress=False)
    pooled_loss = _no_adapt_loss(
        MetaLearner(Scorer(sc), pooled_cfg), pooled.params, feats, split.valid, known
    )
    print(
        f"valid MSE: MAML adapted {adapted:.4f}, MAML unadapted {frozen:.4f}, pooled {pooled_loss:.4f}"
    )
    assert adapted < frozen - 0.01
    assert adapted < pooled_loss
