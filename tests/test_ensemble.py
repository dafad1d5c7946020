"""Ranking-model ensembles (model.rank_members, metarec.meta.ensemble).

Known answers: member j is exactly the single model trained with seed + 7919 j, the
ensemble's logits are the mean of its members', the rating model is untouched, and
every path that serves a score (batch scoring, adapt-once serving, explanations, a saved
and loaded model, fine-tuning) agrees with that mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from meta_synthetic import make_problem
from metarec.blend import BlendConfig
from metarec.features import build_features
from metarec.meta import MetaConfig, MetaLearner, build_inputs, pad_episodes
from metarec.meta.ensemble import EnsembleLearner, merge_members
from metarec.model import MetaRecommender, ModelConfig
from metarec.models.scorer import Scorer, ScorerConfig
from metarec.splits import make_split
from metarec.text.encoder import HashingEncoder
from metarec.train import TrainConfig, _valid_episodes
from metarec.transfer import PooledRecommender
from metarec.types import MetarecError
from test_model import _world

NO_BLEND = BlendConfig(rating=False, rank=False)


def _config(seed: int = 0, **kw) -> ModelConfig:
    train = TrainConfig(steps=20, eval_every=10, meta_batch=8, seed=seed, ema=0.9)
    kw.setdefault("rating_members", 1)  # the known answers compare single rating models
    return ModelConfig(train=train, progress=False, blend=NO_BLEND, **kw)


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    ds = _world()
    split = make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)
    known = np.zeros(ds.n_items, bool)
    known[split.train.item_idx] = True
    feats = build_features(
        ds, HashingEncoder(dim=64), cache=tmp_path_factory.mktemp("emb"), fit_items=known
    )

    def fit(cfg: ModelConfig) -> MetaRecommender:
        return MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)

    # member 1 of the ensemble trains with train.seed + 7919: the single model `b`
    ens = fit(_config(rank_members=2))
    return ds, split, fit(_config()), fit(_config(seed=7919)), ens, feats


def test_members_are_the_single_models_and_the_logit_is_their_mean(fits):
    ds, split, a, b, ens, _ = fits
    assert isinstance(ens.rank_.learner, EnsembleLearner) and ens.rank_.learner.members == 2
    for j, single in enumerate((a, b)):
        for k, v in single.rank_.params.items():
            torch.testing.assert_close(ens.rank_.params[f"m{j}.{k}"], v, rtol=0, atol=0)
    assert len(ens.rank_.params) == 2 * len(a.rank_.params)
    # the rating model is one model, the single one's
    assert ens.rating_.params.keys() == a.rating_.params.keys()
    for k, v in a.rating_.params.items():
        torch.testing.assert_close(ens.rating_.params[k], v, rtol=0, atol=0)
    tasks = list(split.test[:5])
    items = np.arange(ds.n_items)
    want = (a.rank_scores_batch(tasks, items) + b.rank_scores_batch(tasks, items)) / 2
    np.testing.assert_allclose(ens.rank_scores_batch(tasks, items), want, rtol=1e-5, atol=1e-6)
    q = [t.query.item_idx for t in tasks]
    for x, y in zip(ens.score_many(tasks, q), a.score_many(tasks, q), strict=True):
        np.testing.assert_array_equal(x, y)


def test_serving_paths_agree_with_the_mean(fits):
    ds, split, a, b, ens, _ = fits
    t = split.test[2]
    items = np.arange(ds.n_items)
    s = ens.rank_scores(t.user_idx, t.support, items)
    p = ens.score_adapted(ens.adapt_user(t.user_idx, t.support, "rank"), items)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-s)), rtol=1e-5)
    # leave-one-out influence is linear in the logit: the members' mean
    w = ens.explain(t.user_idx, t.support, items[:12])
    want = (
        a.explain(t.user_idx, t.support, items[:12]) + b.explain(t.user_idx, t.support, items[:12])
    ) / 2
    np.testing.assert_allclose(w, want, rtol=1e-4, atol=1e-6)
    assert w.shape == (12, len(t.support)) and np.abs(w).sum() > 0


def test_an_ensemble_round_trips_through_state(fits):
    ds, split, _, _, ens, _ = fits
    cfg, tensors = ens.state()
    assert cfg["parts"]["rank"]["members"] == 2 and cfg["parts"]["rating"]["members"] == 1
    assert any(k.startswith("rank.m1.") for k in tensors)
    back = MetaRecommender.from_state(cfg, tensors, split.train)
    assert isinstance(back.rank_.learner, EnsembleLearner)
    tasks = list(split.test[:4])
    items = np.arange(ds.n_items)
    np.testing.assert_array_equal(
        ens.rank_scores_batch(tasks, items), back.rank_scores_batch(tasks, items)
    )


def test_ensemble_learner_is_its_members_side_by_side():
    split, feats = make_problem(0, "binary")
    sc = ScorerConfig(d_item_text=8, n_items=40, embed_dim=8, hidden=(16,), head="binary")
    for algo in ("fomaml", "np"):
        meta = MetaConfig(algorithm=algo, inner_steps=2, inner_lr=0.1)
        one = MetaLearner(Scorer(sc), meta)
        ens = EnsembleLearner(Scorer(sc), meta, 3)
        parts = [one.init_params(torch.Generator().manual_seed(s)) for s in range(3)]
        params = merge_members(parts)
        eps = _valid_episodes(split.valid[:6], "binary", feats.n_items, TrainConfig())
        known = torch.ones(feats.n_items, dtype=torch.bool)
        x = build_inputs(one.scorer, feats, pad_episodes(eps), known)
        loss, grads = ens.meta_grads(params, x)
        singles = [one.meta_grads(p, x) for p in parts]
        torch.testing.assert_close(loss, torch.stack([s[0] for s in singles]).mean())
        for j, (_, g) in enumerate(singles):
            for k, v in g.items():
                torch.testing.assert_close(grads[f"m{j}.{k}"], v)
        fast = ens.adapt(params, x)
        outs = [one.predict(one.adapt(p, x), x.user_x, x.q_x, x.q_rows) for p in parts]
        mean = torch.stack(outs).mean(0)
        torch.testing.assert_close(ens.predict(fast, x.user_x, x.q_x, x.q_rows), mean)
        torch.testing.assert_close(
            ens.query_losses(fast, x), one.scorer.task_losses(mean, x.q_y, x.q_mask)
        )
        assert ens.item_side_shared(fast, params) == one.item_side_shared(
            one.adapt(parts[0], x), parts[0]
        )
        assert set(ens.adapt_keys(params)) == {
            f"m{j}.{k}" for j in range(3) for k in one.adapt_keys(parts[j])
        }
    init = ens.init_params(torch.Generator().manual_seed(0))
    assert {k.split(".", 1)[0] for k in init} == {"m0", "m1", "m2"}
    with pytest.raises(MetarecError, match="member 3"):
        ens.member(init, 3)
    with pytest.raises(MetarecError, match="2 or more"):
        EnsembleLearner(Scorer(sc), meta, 1)


def test_pooled_fine_tuning_keeps_the_ensemble(fits):
    ds, split, _, _, _, feats = fits
    rec = PooledRecommender(_config(rank_members=2), finetune_steps=3)
    rec.fit(ds, split.train, feats, valid=split.valid)
    assert isinstance(rec.rank_.learner, EnsembleLearner)
    assert rec.rank_.learner.cfg.inner_steps == 3 and rec.rating_.learner.cfg.inner_steps == 3
    t = split.test[0]
    assert np.isfinite(rec.rank_scores(t.user_idx, t.support, np.arange(ds.n_items))).all()


@pytest.mark.parametrize("bad", [0, 17])
def test_rank_members_out_of_range_is_an_error(bad):
    with pytest.raises(MetarecError, match="rank_members"):
        dataclasses.replace(ModelConfig(), rank_members=bad)


def test_cli_fit_recommend_and_update_an_ensemble(tmp_path, capsys):
    """`metarec fit --set rank_members=2` writes a RUN that loads as an ensemble, serves
    recommendations, and `metarec update` fine-tunes every member."""
    import json

    import pandas as pd

    from metarec.cli import main
    from metarec.predictor import Predictor
    from metarec.serve.feedback import FeedbackRow, FeedbackStore
    from serve_world import FAST, make_world

    paths = make_world(tmp_path)
    run = tmp_path / "RUN"
    argv = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), "--out", str(run)]
    assert main([*argv, *FAST, "--set", "rank_members=2"]) == 0
    before = Predictor.load(run)
    assert isinstance(before.model.rank_.learner, EnsembleLearner)
    support = pd.DataFrame({"user_id": "new", "item_id": ["it0", "it2"], "rating": [5.0, 5.0]})
    support.to_csv(tmp_path / "S.csv", index=False)
    rec = ["recommend", "--run", str(run), "--support", str(tmp_path / "S.csv"), "-k", "5"]
    assert main([*rec, "--out", str(tmp_path / "R.csv")]) == 0
    got = pd.read_csv(tmp_path / "R.csv", dtype={"item_id": str})
    assert len(got) == 5
    # the service reports the ensemble and serves the same top five
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    c = TestClient(create_app(before))
    assert c.get("/info").json()["rank_members"] == 2
    body = {"interactions": [{"item_id": "it0", "rating": 5}, {"item_id": "it2", "rating": 5}]}
    r = c.post("/recommend", json={**body, "k": 5})
    assert [i["item_id"] for i in r.json()["items"]] == got["item_id"].tolist()
    capsys.readouterr()
    store = FeedbackStore(tmp_path / "fb")
    store.add("u1", [FeedbackRow(f"it{i}", 5.0 if i % 2 == 0 else 1.0, None) for i in range(12)])
    run2 = tmp_path / "RUN2"
    up = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb"), "--out", str(run2)]
    assert main([*up, "--steps", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rank_feedback_loss_in_sample"]["after"] is not None
    p0, p1 = before.model.rank_.params, Predictor.load(run2).model.rank_.params
    assert p0.keys() == p1.keys()
    for j in (0, 1):
        mine = [k for k in p0 if k.startswith(f"m{j}.")]
        assert any(not torch.equal(p0[k], p1[k]) for k in mine), j


def test_feature_transfer_starts_and_freezes_each_member_from_its_source_member(tmp_path):
    from metarec import experiment as E
    from metarec.transfer import FROZEN_FOR_FEATURE, param_group_or_meta
    from test_experiment import _two_domain_config

    cfg = _two_domain_config(tmp_path, "feature")
    cfg = dataclasses.replace(cfg, model={**cfg.model, "rank_members": 2})
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    feats = E.build_split_features(ds, split.train.item_idx, cfg.text)
    rec, _, _ = E.fit_method(cfg.methods[0], cfg, ds, split, feats, seed=0)
    src, tgt = rec.source_.rank_.params, rec.rank_.params
    assert isinstance(rec.rank_.learner, EnsembleLearner) and src.keys() == tgt.keys()
    frozen = [k for k in tgt if param_group_or_meta(k.split(".", 1)[1]) in FROZEN_FOR_FEATURE]
    assert {k.split(".", 1)[0] for k in frozen} == {"m0", "m1"}
    for k in frozen:
        assert torch.equal(src[k], tgt[k]), k
    # the two members differ (their own seeds), so member 1 did not start from member 0
    k = frozen[0]
    assert not torch.equal(src[k], src["m0" + k[2:]] if k.startswith("m1") else src["m1" + k[2:]])


def test_cold_rank_members_apply_only_where_validation_tests_new_items(fits):
    from metarec.types import Task

    ds, split, _, _, _, feats = fits
    cold = np.arange(34, 40)  # never rated in the world
    valid = tuple(
        Task(t.user_idx, t.support, dataclasses.replace(t.query.take(np.arange(6)), item_idx=cold))
        for t in split.valid
    )
    cfg = _config(cold_rank_members=2)
    rec = MetaRecommender(cfg).fit(ds, split.train, feats, valid=valid, valid_items=cold)
    assert isinstance(rec.rank_.learner, EnsembleLearner) and rec.rank_.learner.members == 2
    warm = MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid)
    assert type(warm.rank_.learner) is MetaLearner
    assert cfg.rank_members_for(True) == 2 and cfg.rank_members_for(False) == 1
    assert _config(rank_members=3).rank_members_for(True) == 3  # None: rank_members
    with pytest.raises(MetarecError, match="cold_rank_members"):
        _config(cold_rank_members=0)


def test_rating_members_average_the_single_rating_models(fits):
    """model.rating_members: member j of the rating model is the single model trained with
    seed + 7919 j, the predicted rating is the mean of theirs, the ranking model is one
    model, and the ensemble saves and loads as one."""
    ds, split, a, b, _, feats = fits
    ens = MetaRecommender(_config(rating_members=2)).fit(ds, split.train, feats, valid=split.valid)
    assert isinstance(ens.rating_.learner, EnsembleLearner) and ens.rating_.learner.members == 2
    for j, single in enumerate((a, b)):
        for k, v in single.rating_.params.items():
            torch.testing.assert_close(ens.rating_.params[f"m{j}.{k}"], v, rtol=0, atol=0)
    assert ens.rank_.params.keys() == a.rank_.params.keys()
    tasks = list(split.test[:5])
    q = [t.query.item_idx for t in tasks]
    got = ens.score_many(tasks, q)
    for g, x, y in zip(got, a.score_many(tasks, q), b.score_many(tasks, q), strict=True):
        np.testing.assert_allclose(g, (x + y) / 2, rtol=1e-5, atol=1e-5)
    # a serving cache entry holds both members' adapted rating parameters
    assert ens.adapted_bytes() > a.adapted_bytes()
    cfg, tensors = ens.state()
    back = MetaRecommender.from_state(cfg, tensors, split.train)
    assert isinstance(back.rating_.learner, EnsembleLearner)
    for g, h in zip(got, back.score_many(tasks, q), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-6, atol=1e-6)
    with pytest.raises(MetarecError, match="rating_members"):
        dataclasses.replace(ModelConfig(), rating_members=0)


def test_fit_and_update_with_popularity_negatives(tmp_path, capsys, monkeypatch):
    """train.negatives = "popularity" through fit and `metarec update`: the update's
    feedback users draw their negatives from the log's popularity pool (not by the
    feedback's own counts), and the ranking model moves."""
    import json

    import metarec.update as U
    from metarec.cli import main
    from metarec.predictor import Predictor
    from metarec.serve.feedback import FeedbackRow, FeedbackStore
    from serve_world import FAST, make_world

    paths = make_world(tmp_path)
    run = tmp_path / "RUN"
    argv = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), "--out", str(run)]
    assert main([*argv, *FAST, "--set", 'train.negatives="popularity"']) == 0
    capsys.readouterr()
    made = []
    real = U._TaskSampler

    def spy(*a, **kw):
        made.append(real(*a, **kw))
        return made[-1]

    monkeypatch.setattr(U, "_TaskSampler", spy)
    store = FeedbackStore(tmp_path / "fb")
    store.add("u1", [FeedbackRow(f"it{i}", 5.0 if i % 2 == 0 else 1.0, None) for i in range(12)])
    run2 = tmp_path / "RUN2"
    up = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb"), "--out", str(run2)]
    assert main([*up, "--steps", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["rank_feedback_loss_in_sample"]["after"] is not None
    ranking = [s for s in made if s.head == "binary"]
    assert len(ranking) == 2 and {s.negatives for s in ranking} == {"popularity"}
    assert ranking[1].popular_pool is ranking[0].popular_pool
    p0, p1 = Predictor.load(run).model.rank_.params, Predictor.load(run2).model.rank_.params
    assert any(not torch.equal(p0[k], p1[k]) for k in p0)
