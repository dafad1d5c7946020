"""The experiment runner on tests/tiny_experiment.toml (40 synthetic users, hashing text).

Known answers: every aggregate in results.json is the mean / sample std of its per-seed
values; a baseline's per-seed value equals an independent fit + evaluate on the same
split; grid points are scored on validation users only and the one picked is the best
there; the K-curve evaluates the same users at every K; frozen parameters of a transfer
are bit-identical to the source model's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metarec import evaluate as evaluation
from metarec import experiment as E
from metarec.baselines import ItemMeanUserBias, Popularity
from metarec.types import MetarecError

TINY = Path(__file__).parent / "tiny_experiment.toml"


class _Trained(Exception):
    """Raised by the fit_method :func:`_stop_at_fit` puts in: the run got as far as
    training, past every check before it."""


def _stop_at_fit(monkeypatch) -> None:
    def fit(*a, **k):
        raise _Trained

    monkeypatch.setattr(E, "fit_method", fit)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    cfg = E.load_config(TINY)
    results = E.run(cfg, out, progress=False)
    return cfg, results, out


def test_the_report_says_when_every_seed_scores_the_same_test_tasks(tiny_run, tmp_path):
    """A split by time holds out the same tasks on every seed: ± is then the models'
    spread only, and a deterministic baseline's ± 0.0000 is expected, not a fault. A
    seeded split (item cold-start without times) does not get the sentence."""
    from metarec.report import render_markdown

    cfg, results, out = tiny_run  # user cold-start by time: the same tasks on both seeds
    said = "Every seed scores the same test tasks"
    assert results.protocol["same_test_tasks"] is True
    assert said in (out / "report.md").read_text()
    other = dataclasses.replace(results, protocol={**results.protocol, "same_test_tasks": False})
    assert said not in render_markdown(other, {})
    # two splits that differ by seed: tasks on other items, the same test users or not
    a = E.cut_split(E.load_data(cfg), cfg, 0, 3)
    assert E._tasks_digest(a.test) == E._tasks_digest(E.cut_split(E.load_data(cfg), cfg, 0, 3).test)
    moved = [dataclasses.replace(t, user_idx=t.user_idx) for t in a.test]
    moved[0] = dataclasses.replace(moved[0], query=moved[0].query.take(np.arange(1)))
    assert E._tasks_digest(moved) != E._tasks_digest(a.test)
    # a seeded split (warm: each user's held-out rows are drawn) cuts another split per
    # seed; a cut_split that dropped its seed had scored one split as "± over seeds"
    warm = E.load_config(TINY, ["split.protocol='warm'"])
    w0, w1 = (E.cut_split(E.load_data(warm), warm, s, 3) for s in (0, 1))
    assert (w0.seed, w1.seed) == (0, 1)
    assert E._tasks_digest(w0.test) != E._tasks_digest(w1.test)


def test_writes_results_report_and_pngs(tiny_run):
    _, _, out = tiny_run
    for name in ("results.json", "report.md", "shots.png", "training.png", "methods.png"):
        assert (out / name).is_file(), name
    for png in ("shots.png", "training.png", "methods.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # atomic writes leave no temporary files behind
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    report = (out / "report.md").read_text()
    assert "*Protocol:* dataset **tiny_log (csv)**, split **user-cold**, K = 3" in report
    assert "![" in report and "shots.png" in report
    # the K-curve's query is the largest K's, and its size is said so
    assert "K = 1, Q = the largest K's query (at most 4)" in report
    # each selection metric names the methods it picks for ("primary metric, RMSE" read as
    # if RMSE were the primary metric)
    assert "grids are picked on the validation users' RMSE (item_mean_user_bias)" in report


def test_training_history_holds_every_ensemble_member(tiny_run):
    """The default trains three rating models; the history (results.json, the report's
    training curves) held member 0's alone. Each member's evaluations are there now,
    tagged, and the single ranking model's carry no member."""
    cfg, _, out = tiny_run
    data = json.loads((out / "results.json").read_text())
    for hist in data["fits"]["MetaRec"]["history"]:  # one per seed
        rating = [e for e in hist if e["model"] == "rating"]
        rank = [e for e in hist if e["model"] == "rank"]
        assert sorted({e["member"] for e in rating}) == [0, 1, 2]
        assert rank and all("member" not in e for e in rank)
        # the members trained from their own seeds: their curves differ
        losses = [tuple(e["train_loss"] for e in rating if e["member"] == j) for j in range(3)]
        assert len(set(losses)) == 3


def test_results_json_aggregates_are_mean_and_std_of_seeds(tiny_run):
    cfg, _, out = tiny_run
    data = json.loads((out / "results.json").read_text())
    main = data["scenarios"][0]
    assert main["k_shot"] == 3
    assert list(main["methods"]) == [m.name for m in cfg.methods]
    checked = 0
    for method, metrics in main["methods"].items():
        assert "nDCG@10 (full)" in metrics and "AUC" in metrics, method
        for cell in metrics.values():
            v = np.array([np.nan if x is None else x for x in cell["per_seed"]])
            assert len(v) == 2
            if np.isnan(v).any():
                continue
            assert cell["mean"] == pytest.approx(v.mean(), abs=1e-12)
            assert cell["std"] == pytest.approx(v.std(ddof=1), abs=1e-12)
            lo, hi = cell["ci95"]
            assert lo <= hi
            checked += 1
    assert checked > 20
    # rating metrics exist only for rating models
    assert "RMSE" in main["methods"]["item_mean_user_bias"]
    assert "RMSE" not in main["methods"]["popularity"]
    assert data["config"]["seeds"] == [0, 1]
    env = data["environment"]  # what a rerun needs to tell code from environment changes
    assert env["packages"]["numpy"] == np.__version__
    assert torch.__version__.startswith(env["packages"]["torch"].split("+")[0])
    assert env["python"].count(".") == 2
    assert data["fits"]["MetaRec"]["history"][0], "meta methods record training curves"
    # too few validation users for a blend here: no rating prior to record
    assert "rating_prior" not in data["fits"]["MetaRec"]
    assert "rating_prior" not in data["fits"]["item_mean_user_bias"]
    # ... and the skip itself is recorded per seed, with the count that caused it, and
    # said beside the fit times in report.md (the table's MetaRec figure is then the
    # meta-model's alone)
    skipped = data["fits"]["MetaRec"]["blend_skipped"]
    assert len(skipped) == len(cfg.seeds)
    assert all("fewer than blend.min_valid_users (10)" in s for s in skipped)
    assert "blend_skipped" not in data["fits"]["item_mean_user_bias"]
    report = (out / "report.md").read_text()
    line = next(ln for ln in report.splitlines() if ln.startswith("- MetaRec: fit"))
    assert "blend skipped on seed 0 (" in line and "the meta-model ranks alone" in line


def test_a_blended_models_rating_prior_is_recorded_per_seed(tmp_path):
    cfg = E.load_config(TINY, ["model.blend.min_valid_users=2"], only=["MetaRec"])
    E.run(cfg, tmp_path, progress=False)
    fits = json.loads((tmp_path / "results.json").read_text())["fits"]["MetaRec"]
    assert len(fits["rating_prior"]) == len(cfg.seeds)
    assert "blend_skipped" not in fits  # fitted on every seed
    assert "blend skipped" not in (tmp_path / "report.md").read_text()
    assert set(fits["rating_prior"]) <= {"item_mean_user_bias", "biased_mf", "item_knn_rating"}


def test_baseline_values_match_an_independent_fit(tiny_run):
    cfg, results, _ = tiny_run
    ds = E.load_data(cfg)
    for i, seed in enumerate(cfg.seeds):
        split = E.cut_split(ds, cfg, seed, cfg.split.k_shot)
        pop = Popularity().fit(ds, split.train)
        # the same seed: full-ranking ties are broken at random from it
        ref = evaluation.evaluate(pop, ds, split.test, bootstrap=0, seed=seed)
        got = results.runs_of("popularity", 3)[i].result
        assert got.metrics["nDCG@10 (full)"] == ref.metrics["nDCG@10 (full)"]
        assert got.metrics["AUC"] == ref.metrics["AUC"]
        summary = results.summary()["popularity"]["AUC"]["per_seed"][i]
        assert summary == ref.metrics["AUC"]


def test_k_curve_uses_the_same_users_at_every_k(tiny_run):
    cfg, results, _ = tiny_run
    assert results.curve_ks() == [1, 3]
    for seed in cfg.seeds:
        runs = [r for r in results.runs if r.scenario == "curve" and r.seed == seed]
        users = {r.k_shot: tuple(sorted(r.result.user_idx.tolist())) for r in runs}
        assert users[1] == users[3]
        main = next(r for r in results.runs if r.scenario == "main" and r.seed == seed)
        assert set(users[1]) <= set(main.result.user_idx.tolist())
    # the K = 1 curve point really adapts on one support interaction
    ds = E.load_data(cfg)
    split1 = E.cut_split(ds, cfg, 0, 1)
    assert {len(t.support) for t in split1.test} == {1}
    assert "the query is the same at every K" in results.protocol["curve_query"]
    assert E._curve_query_text("user-cold", {0: True, 1: False}).endswith(
        "on seeds [1] each K scores its own recut's query (a recut trained on other rows)"
    )
    assert "held-out items" in E._curve_query_text("item-cold", {0: True})
    # warm and item-cold keep the supports in training: the report says the curve is
    # flat by construction there (it said "only the support changes")
    for protocol in ("item-cold", "warm"):
        assert "this curve is not a few-shot curve" in E._curve_query_text(protocol, {0: True})
    for protocol in ("user-cold", "user-item-cold", "cross-domain"):
        assert "not a few-shot curve" not in E._curve_query_text(protocol, {0: True})


def test_k_curve_scores_one_query_at_every_k():
    """Each recut's own query is the next Q after the first K; a curve of those scored
    other ratings at each K. The curve's query is the largest K's, at every K."""
    cfg = E.load_config(TINY)
    ds = E.load_data(cfg)
    splits = {k: E.cut_split(ds, cfg, 0, k) for k in (1, 3)}
    users = {t.user_idx for t in splits[1].test} & {t.user_idx for t in splits[3].test}
    tasks, gaps, fixed = E.kcurve_tasks(splits, users)
    assert fixed
    own3 = {t.user_idx: t for t in splits[3].test}
    own1 = {t.user_idx: t for t in splits[1].test}
    moved = 0
    for t1, t3 in zip(tasks[1], tasks[3], strict=True):
        assert t1.user_idx == t3.user_idx
        assert t1.query is t3.query is own3[t1.user_idx].query
        np.testing.assert_array_equal(t1.support.item_idx, own1[t1.user_idx].support.item_idx)
        assert len(t1.support) == 1 and len(t3.support) == 3
        assert not np.isin(t1.support.item_idx, t1.query.item_idx).any()
        moved += not np.array_equal(own1[t1.user_idx].query.item_idx, t1.query.item_idx)
        # the ranking at K = 1 also leaves out the largest support's other items (the
        # user's own next interactions, neither support nor query); at K = 3 nothing more
        widest = own3[t1.user_idx].support.item_idx
        gap = gaps[1][t1.user_idx]
        assert sorted([*gap, *t1.support.item_idx]) == sorted(widest) and len(gap) == 2
        assert len(gaps[3][t1.user_idx]) == 0
    assert moved > 0  # the recut's own K = 1 query was another one
    merged = E._merge_exclusions({0: np.array([1])}, {0: np.array([2]), 5: np.array([3])})
    assert merged[0].tolist() == [1, 2] and merged[5].tolist() == [3]
    assert E._merge_exclusions(None, None) is None
    # a user who rated an item twice (support at K = 1, query after K = 3): the item leaves
    # that user's query at every K, the other users keep theirs
    u = tasks[1][0].user_idx
    twice = own1[u].support.item_idx[0]
    q3 = own3[u].query
    repeat = dataclasses.replace(q3, item_idx=np.concatenate([[twice], q3.item_idx[1:]]))
    patched = dataclasses.replace(
        splits[3],
        test=tuple(
            dataclasses.replace(t, query=repeat) if t.user_idx == u else t for t in splits[3].test
        ),
    )
    rtasks, _, rfixed = E.kcurve_tasks({1: splits[1], 3: patched}, users)
    assert rfixed
    for k in (1, 3):
        t = next(t for t in rtasks[k] if t.user_idx == u)
        np.testing.assert_array_equal(t.query.item_idx, q3.item_idx[1:])
    assert len(rtasks[1]) == len(tasks[1])
    # a recut that trains on other rows (its users' history outside the support) could
    # hold the largest K's query in training: each K keeps its own query
    other = splits[1].train.take(np.arange(len(splits[1].train) - 1))
    moved_rows = {1: dataclasses.replace(splits[1], train=other), 3: splits[3]}
    own, no_gaps, fixed = E.kcurve_tasks(moved_rows, users)
    assert not fixed and no_gaps == {}
    assert [t.query for t in own[1]] == [own1[t.user_idx].query for t in own[1]]


def test_grid_is_picked_on_validation_users_only(monkeypatch):
    cfg = E.load_config(TINY)
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    feats = E.build_split_features(ds, split.train.item_idx, cfg.text)
    seen: list[set[int]] = []
    real = evaluation.evaluate

    def recording(rec, dataset, tasks, **kw):
        seen.append({t.user_idx for t in tasks})
        return real(rec, dataset, tasks, **kw)

    monkeypatch.setattr(evaluation, "evaluate", recording)
    spec = next(m for m in cfg.methods if m.name == "item_mean_user_bias")
    rec, chosen, _ = E.fit_method(spec, cfg, ds, split, feats, seed=0)
    valid_users = {t.user_idx for t in split.valid}
    test_users = {t.user_idx for t in split.test}
    assert len(seen) == 2  # one evaluation per grid point
    assert all(s == valid_users for s in seen)
    assert not any(s & test_users for s in seen)
    # the pick is the lower validation RMSE, recomputed here independently
    rmse = {
        v: real(
            ItemMeanUserBias(shrinkage=v).fit(ds, split.train), ds, split.valid, bootstrap=0
        ).metrics["RMSE"]
        for v in (0.1, 50.0)
    }
    best = min(rmse, key=rmse.get)
    assert chosen["shrinkage"] == best
    assert chosen["_valid_RMSE"] == pytest.approx(rmse[best])
    assert rec.shrinkage == best
    # every point is kept with its validation figure, so the choice can be checked
    assert [t["point"]["shrinkage"] for t in chosen[E.GRID_KEY]] == [0.1, 50.0]
    for t in chosen[E.GRID_KEY]:
        assert t["valid_RMSE"] == pytest.approx(rmse[t["point"]["shrinkage"]])


def test_config_rejects_unknown_keys_and_duplicate_names(tmp_path):
    with pytest.raises(MetarecError, match="unknown config key 'split.kshot'"):
        E.load_config(TINY, ["split.kshot=3"])
    with pytest.raises(MetarecError, match="unknown config key 'methods"):
        E.ExperimentConfig.from_dict({"methods": [{"name": "a", "knd": "meta"}]})
    with pytest.raises(MetarecError, match="used twice"):
        E.ExperimentConfig.from_dict({"methods": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(MetarecError, match="no methods"):
        E.ExperimentConfig.from_dict({})
    # a method without a name names the key, not the dataclass's constructor
    with pytest.raises(MetarecError, match=r"^methods\[0\]: missing required key\(s\) 'name'$"):
        E.ExperimentConfig.from_dict({"methods": [{"kind": "baseline", "baseline": "popularity"}]})
    cfg = E.load_config(TINY, ["seeds=[4]", "split.k_shot=2"])
    assert cfg.seeds == (4,) and cfg.split.k_shot == 2
    assert Path(cfg.base_dir) == TINY.parent.resolve()
    # the [data.preprocess] table is checked with the config, not once the data loads
    with pytest.raises(MetarecError, match="unknown config key 'data.preprocess.kcore'"):
        E.load_config(TINY, ["data.preprocess.kcore=5"])
    cfg = E.load_config(TINY, ["data.preprocess.binarize_threshold=none"])
    assert cfg.data.preprocess == {"binarize_threshold": None}


def test_an_empty_grid_entry_names_its_method():
    cfg = E.load_config(TINY)
    bad = dataclasses.replace(cfg.methods[2], grid={"x": []})
    with pytest.raises(MetarecError, match=r"^method 'popularity': grid 'x': expected a non-empty"):
        E.check_config(dataclasses.replace(cfg, methods=(bad,)))


def test_a_grid_of_tables_may_set_other_keys_of_a_params_table():
    # params' train.steps beside a grid over train tables of eval_every: both are used
    # (the tables merge), so the overlap rule looks at leaves
    m = {"name": "M", "kind": "meta", "params": {"train": {"steps": 2}}}
    ok = {**m, "grid": {"train": [{"eval_every": 1}, {"eval_every": 2}]}}
    assert E.ExperimentConfig.from_dict({"methods": [ok]}).methods[0].name == "M"
    bad = {**m, "grid": {"train": [{"steps": 1}, {"eval_every": 2}]}}
    with pytest.raises(MetarecError, match="'train.steps' is in both params and grid"):
        E.ExperimentConfig.from_dict({"methods": [bad]})


@pytest.mark.parametrize(
    "methods, said",
    [
        # two rows read alike, and --only (which strips) could select one of them only
        (
            [{"name": "popularity"}, {"name": "popularity ", "baseline": "popularity"}],
            "method name 'popularity ' has spaces at an end",
        ),
        # above the bound the pooled model trained, then failed naming meta.inner_steps
        (
            [{"name": "P", "kind": "pooled", "finetune_steps": 1001}],
            "method 'P': finetune_steps must be in [0, 1000], got 1001",
        ),
        # the grid's value won and params' was never used, while results.json listed it
        (
            [{"name": "biased_mf", "params": {"reg": 1.0}, "grid": {"reg": [2.0, 3.0]}}],
            "method 'biased_mf': 'reg' is in both params and grid; give it in one",
        ),
        (
            [
                {
                    "name": "M",
                    "kind": "meta",
                    "params": {"meta": {"inner_lr": 0.1}},
                    "grid": {"meta.inner_lr": [0.01, 0.05]},
                }
            ],
            "'meta.inner_lr' is in both params and grid",
        ),
    ],
)
def test_config_refuses_methods_that_would_run_otherwise_than_written(methods, said):
    with pytest.raises(MetarecError) as err:
        E.ExperimentConfig.from_dict({"methods": methods})
    assert said in str(err.value)


def test_pooled_names_the_meta_settings_it_never_reads():
    # a pooled method's params.meta.algorithm = "ridge" trained as fomaml, inner_steps 7
    # as 0, with no word, while results.json recorded them as given
    from metarec.meta.algorithms import MetaConfig
    from metarec.model import ModelConfig
    from metarec.transfer import PooledRecommender

    # MeLU's SGD loop is kept (it fine-tunes its own groups): not named; Reptile trains
    # as FOMAML (its outer step is zero with 0 inner steps): named
    melu = ModelConfig(meta=MetaConfig(algorithm="melu"))
    assert PooledRecommender(melu, 3)._unused_settings(melu, True) == []
    for algorithm in ("fomaml", "meta_sgd"):  # the same as the default with 0 inner steps
        other = ModelConfig(meta=MetaConfig(algorithm=algorithm))
        said = PooledRecommender(other, 3)._unused_settings(other, True)
        assert said == [
            "meta.algorithm (with 0 inner steps every SGD algorithm but MeLU trains alike)"
        ]
    rep = ModelConfig(meta=MetaConfig(algorithm="reptile"))
    pooled_rep = PooledRecommender(rep, 3)
    assert pooled_rep.config.meta.algorithm == "fomaml"
    assert pooled_rep._unused_settings(rep, True) == [
        "meta.algorithm (the pooled model trains and fine-tunes as fomaml does)"
    ]
    cfg = ModelConfig(meta=MetaConfig(algorithm="ridge", inner_steps=7, inner_lr=0.5))
    said = PooledRecommender(cfg)._unused_settings(cfg, True)
    assert [s.split(" ")[0] for s in said] == [
        "meta.algorithm",
        "meta.inner_steps",
        "meta.inner_lr",
    ]
    # fine-tuning reads inner_lr; the default config names nothing
    assert [s.split(" ")[0] for s in PooledRecommender(cfg, 3)._unused_settings(cfg, True)] == [
        "meta.algorithm",
        "meta.inner_steps",
    ]
    assert PooledRecommender(ModelConfig(), 5)._unused_settings(ModelConfig(), True) == []
    # implicit data: the rating model's table trains nothing
    said = PooledRecommender(cfg, 3)._unused_settings(cfg, False)
    assert said == ["meta.* (no model of this fit trains with it)"]


def test_a_reused_part_was_scored_at_every_cut_off_the_run_computes():
    # another method's select_metric ("HR@7 (full)") adds a cut-off for every method; a
    # part run without that method lacked the figure when --resume reused it
    from metarec import resume

    base = {"methods": [{"name": "popularity"}]}
    more = {
        "methods": [
            *base["methods"],
            {"name": "ease", "grid": {"reg": [10.0, 100.0]}, "select_metric": "HR@7 (full)"},
        ]
    }
    a, b = E.ExperimentConfig.from_dict(base), E.ExperimentConfig.from_dict(more)
    spec = a.methods[0]
    assert resume.fingerprint(a, spec, 0, "d", {}) != resume.fingerprint(b, spec, 0, "d", {})
    same = {"methods": [*base["methods"], {"name": "item_mean"}]}
    c = E.ExperimentConfig.from_dict(same)
    assert resume.fingerprint(a, spec, 0, "d", {}) == resume.fingerprint(c, spec, 0, "d", {})
    # the paired intervals are drawn from the parts at report time: no refit
    d = E.ExperimentConfig.from_dict({**base, "paired_bootstrap": 500})
    assert resume.fingerprint(a, spec, 0, "d", {}) == resume.fingerprint(d, spec, 0, "d", {})
    e = E.ExperimentConfig.from_dict({**base, "bootstrap": 500})  # the parts' own CIs: refit
    assert resume.fingerprint(a, spec, 0, "d", {}) != resume.fingerprint(e, spec, 0, "d", {})


def test_a_part_run_under_only_is_reused_by_the_full_run_and_back(tmp_path):
    """left_out (the methods --only dropped) entered the fingerprint, so a full run with
    --resume refitted every part an --only run had left (README: "--only A followed by a
    full run with --resume reuses A")."""
    from metarec import resume

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[methods]]\nname = "Meta"\nkind = "meta"\n[[methods]]\nname = "popularity"\n'
        '[[methods]]\nname = "ease"\n'
    )
    full, part = E.load_config(cfg), E.load_config(cfg, only=["Meta", "popularity"])
    assert part.left_out == ("ease",)
    for spec in part.methods:
        mine = full.methods[[m.name for m in full.methods].index(spec.name)]
        assert resume.fingerprint(part, spec, 0, "d", {}) == resume.fingerprint(
            full, mine, 0, "d", {}
        )
    with pytest.raises(MetarecError, match="left_out records what --only left out of a run"):
        E.load_config(cfg, ['left_out=["nonexistent"]'])


def test_pooled_trains_without_inner_steps_and_fine_tunes_at_adaptation():
    cfg = E.load_config(TINY)
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    feats = E.build_split_features(ds, split.train.item_idx, cfg.text)
    spec = next(m for m in cfg.methods if m.kind == "pooled")
    rec, _, _ = E.fit_method(spec, cfg, ds, split, feats, seed=0)
    assert rec.config.meta.inner_steps == 0  # plain supervised training
    assert rec.rating_.learner.cfg.inner_steps == 2  # fine-tuning at adaptation
    # with 0 fine-tuning steps, adaptation leaves the trained parameters as they are
    plain = dataclasses.replace(spec, finetune_steps=0)
    rec0, _, _ = E.fit_method(plain, cfg, ds, split, feats, seed=0)
    assert rec0.rating_.learner.cfg.inner_steps == 0
    t = split.test[0]
    s0 = rec0.score(t.user_idx, t.support, t.query.item_idx)
    s2 = rec.score(t.user_idx, t.support, t.query.item_idx)
    assert not np.allclose(s0, s2)  # fine-tuning moved the scores


def _two_domain_config(tmp_path: Path, strategy: str, *extra: str) -> E.ExperimentConfig:
    import pandas as pd

    log = pd.read_csv(TINY.parent / "tiny_log.csv")
    # items i0-i11 are "space" titles, i12-i23 "romance": two domains, every user in both
    log["domain"] = np.where(log["item_id"].str[1:].astype(int) < 12, "space", "romance")
    path = tmp_path / "log2.csv"
    log.to_csv(path, index=False)
    return E.load_config(
        TINY,
        [
            f'data.path="{path}"',
            'data.options.domain_col="domain"',
            'split.protocol="cross-domain"',
            'split.source="space"',
            'split.target="romance"',
            "split.k_shot=2",
            "split.n_query=3",
            "split.valid_frac=0.25",
            "shots=[]",
            "seeds=[0]",
            *extra,
        ],
        methods=[{"name": "T", "kind": "transfer", "strategy": strategy}],
    )


def test_feature_transfer_keeps_the_source_extractor_frozen(tmp_path):
    cfg = _two_domain_config(tmp_path, "feature")
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    feats = E.build_split_features(ds, split.train.item_idx, cfg.text)
    rec, _, _ = E.fit_method(cfg.methods[0], cfg, ds, split, feats, seed=0)
    src, tgt = rec.source_.rating_.params, rec.rating_.params
    assert any(k.startswith("m2.") for k in tgt)  # the default: three rating models
    from metarec.transfer import FROZEN_FOR_FEATURE, param_group_or_meta

    frozen = [k for k in tgt if param_group_or_meta(k) in FROZEN_FOR_FEATURE]
    trained = [k for k in tgt if k not in frozen]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(src[k], tgt[k]), k  # bit-identical: never updated
    assert any(not torch.equal(src[k], tgt[k]) for k in trained)
    # the item ID rows are not extractor: the source model never met a target item (its
    # rows were at their initialisation, biases 0), so the target items' rows learn and
    # the source items' rows, which target training never touches, stay bit-identical
    target = split.train.take(split.train.domain == split.target_domain)
    source_items = np.unique(split.train.take(split.train.domain != split.target_domain).item_idx)
    t_items = torch.as_tensor(np.unique(target.item_idx))
    s_items = torch.as_tensor(source_items)
    for k in ("m0.item_bias", "m0.item_id"):
        assert not torch.equal(src[k][t_items], tgt[k][t_items]), k
        assert torch.equal(src[k][s_items], tgt[k][s_items]), k
    assert not (tgt["m0.item_bias"][t_items] == 0).all()
    # the target model trained on target-domain rows only: its known items are exactly the
    # target items of train
    assert np.array_equal(
        np.flatnonzero(rec.rating_.result.known_items), np.unique(target.item_idx)
    )
    res = evaluation.evaluate(rec, ds, split.test, bootstrap=0)
    assert np.isfinite(res.metrics["RMSE"])


@pytest.mark.parametrize(
    "strategy", ["parameter", "joint", "Pooled", "no direction", "joint, no direction"]
)
def test_cross_domain_validation_queries_meet_target_domain_negatives(
    tmp_path, monkeypatch, strategy
):
    """Every ranking model of a transfer (the source model, the target model, joint's one
    model) and a pooled model given the target's items early-stops on target validation
    queries whose negatives are the target domain's items, what evaluate ranks them over:
    from the training items they were source items only (the source model) or mostly
    (joint), told apart by domain alone. Not the catalogue's never-rated items of no
    domain, which the target ranking never holds. A fit given no direction and no items
    to rank (`metarec fit` on a log with a domain column) keeps the training items; joint
    transfer given no direction takes the one domain its validation supports are in."""
    import pandas as pd

    import metarec.train as T
    from metarec.model import MetaRecommender

    items = pd.read_csv(TINY.parent / "tiny_items.csv")
    extra = pd.DataFrame(
        {"item_id": [f"x{i}" for i in range(6)], "title": ["a never-rated thing"] * 6}
    )
    pd.concat([items, extra]).to_csv(tmp_path / "items2.csv", index=False)
    joint = strategy in ("joint", "no direction", "Pooled", "joint, no direction")
    where = f'data.options.items="{tmp_path / "items2.csv"}"'
    cfg = _two_domain_config(tmp_path, "joint" if joint else strategy, where)
    cfg = dataclasses.replace(cfg, model={**cfg.model, "train": {"steps": 2, "eval_every": 1}})
    if strategy == "Pooled":
        cfg = dataclasses.replace(cfg, methods=[E.MethodSpec(name="P", kind="pooled")])
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    feats = E.build_split_features(ds, split.train.item_idx, cfg.text)
    target = np.flatnonzero(ds.item_domain_names() == ds.domains[split.target_domain])
    assert np.array_equal(target, E.ranking_candidates(ds, split, "valid"))
    assert (ds.item_domain_names() == "default").sum() == 6  # the never-rated items
    pools, real = [], T._valid_episodes

    def spy(tasks, head, n_items, tcfg, negative_pool=None, query_negative_pool=None):
        episodes = real(tasks, head, n_items, tcfg, negative_pool, query_negative_pool)
        if head == "binary" and query_negative_pool is not None:
            own = np.concatenate([t.query.item_idx for t in tasks])
            drawn = np.concatenate([ep.query_items for ep in episodes])
            drawn = drawn[~np.isin(drawn, own)]  # the sampled negatives
            assert len(drawn) and np.isin(drawn, target).all()
        if head == "binary":
            pools.append(query_negative_pool)
        return episodes

    monkeypatch.setattr(T, "_valid_episodes", spy)
    if strategy in ("no direction", "joint, no direction"):
        from metarec.config import deep_merge, to_dict
        from metarec.model import ModelConfig
        from metarec.transfer import TransferRecommender

        mcfg = ModelConfig.from_dict(deep_merge(to_dict(ModelConfig()), cfg.model))
        if strategy == "no direction":
            MetaRecommender(mcfg).fit(ds, split.train, feats, valid=split.valid)
            assert pools == [None]
            return
        TransferRecommender(mcfg, "joint").fit(ds, split.train, feats, valid=split.valid)
        (pool,) = pools
        assert pool is not None and np.array_equal(np.sort(pool), target)
        return
    E.fit_method(cfg.methods[0], cfg, ds, split, feats, seed=0)
    # parameter: the source's ranking model, then the target's; joint, pooled: one model
    assert len(pools) == (2 if strategy == "parameter" else 1)
    for pool in pools:
        assert pool is not None and np.array_equal(np.sort(pool), target)


def test_validation_users_with_training_rows_adapt_on_them_as_served(tmp_path, monkeypatch):
    """Early stopping adapts a validation user on what scoring adapts them on: their
    training rows (cross-domain: the source-domain history), then the support, less the
    query items, the last max_support rows. It had adapted them on the support alone."""
    import metarec.train as T

    cfg = _two_domain_config(tmp_path, "joint")
    cfg = dataclasses.replace(
        cfg,
        model={
            **cfg.model,
            "max_support": 6,
            "history_order": "time",  # the default "item_age" orders by the item's age
            "train": {"steps": 2, "eval_every": 1},
        },
    )
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    feats = E.build_split_features(ds, split.train.item_idx, cfg.text)
    seen, real = [], T._valid_episodes

    def spy(tasks, head, *args, **kwargs):
        seen.append((head, [(t.user_idx, t.support.item_idx.tolist()) for t in tasks]))
        return real(tasks, head, *args, **kwargs)

    monkeypatch.setattr(T, "_valid_episodes", spy)
    E.fit_method(cfg.methods[0], cfg, ds, split, feats, seed=0)
    want = []
    for t in split.valid:
        rows = split.train.take(split.train.user_idx == t.user_idx)
        history = rows.item_idx[np.argsort(rows.timestamp, kind="stable")].tolist()
        history += t.support.item_idx.tolist()
        history = [i for i in history if i not in set(t.query.item_idx.tolist())]
        want.append((t.user_idx, history[-6:]))
    assert {head for head, _ in seen} == {"rating", "binary"}  # every member of both
    for _, got in seen:
        assert got == want
    # the users' source-domain rows are in what they adapt on, and the support is last
    assert any(len(s) > len(t.support) for (_, s), t in zip(want, split.valid, strict=True))
    assert all(s[-1] == t.support.item_idx[-1] for (_, s), t in zip(want, split.valid, strict=True))


def test_validation_over_new_items_adapts_on_the_support_alone(monkeypatch):
    """Item cold-start validation users are warm, but early stopping adapts them on their
    support alone: adapted on their history, the backtest's far items ranked worse
    (model._adapting_as_served)."""
    import metarec.train as T

    cfg = E.load_config(TINY, ['split.protocol="item-cold"', "seeds=[0]", "shots=[]"])
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    assert T.validates_new_items(split)
    feats = E.build_split_features(ds, split.train.item_idx, cfg.text)
    seen, real = [], T._valid_episodes

    def spy(tasks, head, *args, **kwargs):
        seen.append([t.support.item_idx.tolist() for t in tasks])
        return real(tasks, head, *args, **kwargs)

    monkeypatch.setattr(T, "_valid_episodes", spy)
    E.fit_method(cfg.methods[0], cfg, ds, split, feats, seed=0)
    want = [t.support.item_idx.tolist() for t in split.valid]
    assert seen and all(got == want for got in seen)
    # these users do have training rows the history would have added
    assert np.isin([t.user_idx for t in split.valid], split.train.user_idx).any()


def test_parameter_transfer_starts_from_the_source_model(tmp_path):
    cfg = _two_domain_config(tmp_path, "parameter")
    cfg = dataclasses.replace(cfg, model={**cfg.model, "train": {"steps": 0, "eval_every": 1}})
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    feats = E.build_split_features(ds, split.train.item_idx, cfg.text)
    rec, _, _ = E.fit_method(cfg.methods[0], cfg, ds, split, feats, seed=0)
    # zero target steps: the target model is exactly the source model
    for k, v in rec.source_.rating_.params.items():
        assert torch.equal(v, rec.rating_.params[k]), k


def test_a_transfers_source_model_curve_is_in_results_and_the_training_plot(tmp_path):
    """results.json's history held the target model's training alone: a parameter
    transfer's source model (trained first, on the source domain) now follows, tagged
    "stage": "source", and the report's training plot gives it a panel of its own."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    cfg = _two_domain_config(tmp_path, "parameter")
    panels = []
    real = plt.subplots

    def counting(*a, **k):
        fig, axes = real(*a, **k)
        panels.append(axes)
        return fig, axes

    import unittest.mock

    with unittest.mock.patch.object(plt, "subplots", counting):
        E.run(cfg, tmp_path / "out", progress=False)
    hist = json.loads((tmp_path / "out" / "results.json").read_text())["fits"]["T"]["history"][0]
    source = [e for e in hist if e.get("stage") == "source"]
    target = [e for e in hist if "stage" not in e]
    assert source and target
    assert {e["model"] for e in source} == {e["model"] for e in target} == {"rating", "rank"}
    axes = {ax.get_title(): ax for a in panels for ax in a.flat if ax.get_visible()}
    assert {"T", "T: source model"} <= set(axes)
    # the target's panel draws the target's entries alone (dotted: training losses)
    dotted = [line for line in axes["T"].get_lines() if line.get_linestyle() == ":"]
    assert sum(len(line.get_xdata()) for line in dotted) == len(target)


def test_partial_model_tables_keep_model_defaults():
    from metarec.model import ModelConfig

    default = ModelConfig()
    got = E._model_config({"train": {"patience": 2}}, {"meta": {"inner_steps": 3}}, 5, False)
    assert got.train.steps == default.train.steps  # ModelConfig's own default, not TrainConfig's
    assert got.train.eval_every == default.train.eval_every
    assert got.train.patience == 2 and got.train.seed == 5 and got.seed == 5
    assert got.meta.algorithm == default.meta.algorithm and got.meta.inner_steps == 3


def test_cli_evaluate_only_runs_the_named_methods(tmp_path, capsys):
    from metarec.cli import main

    cfg = E.load_config(TINY)
    keep = [cfg.methods[-1].name]
    out = tmp_path / "only"
    assert (
        main(
            [
                "evaluate",
                "--config",
                str(TINY),
                "--out",
                str(out),
                "--quiet",
                "--only",
                keep[0],
                "--set",
                "seeds=[0]",
                "--set",
                "shots=[]",
            ]
        )
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    assert list(data["scenarios"][0]["methods"]) == keep
    capsys.readouterr()
    # a name the config does not have: one line, exit 2, nothing written
    bad = tmp_path / "bad"
    assert main(["evaluate", "--config", str(TINY), "--out", str(bad), "--only", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--only" in err and "nope" in err and len(err.splitlines()) == 1
    assert not bad.exists()


def test_a_dangling_link_as_out_is_refused_before_the_run(tmp_path):
    # taken for a missing folder, it passed; the whole run finished and then making the
    # folder failed on the link ("File exists"), losing the results
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "not_yet_made")
    with pytest.raises(MetarecError, match="which does not exist; make that folder"):
        E.check_output_dir(link)
    (tmp_path / "not_yet_made").mkdir()
    E.check_output_dir(link)  # a link to a folder: written through


def test_model_keys_evaluate_sets_itself_or_cannot_run_fail_at_load(monkeypatch):
    # accepted, a [model] seed was ignored and still recorded in results.json, and refit or
    # a missing CUDA device failed every fit with exit 0
    for key, named in (
        ("model.seed=5", "[model]: seed is not read by evaluate"),
        ("model.valid_frac=0.5", "[model]: valid_frac is not read"),
        ("model.refit=true", "[model]: refit is not read"),
        # probe 136: set per run from --quiet, the bars showed anyway
        ("model.progress=false", "[model]: progress is not read by evaluate"),
    ):
        with pytest.raises(MetarecError, match=re.escape(named)):
            E.load_config(TINY, [key])
    # with split.valid_frac = 0 the model holds out its own validation users: read then
    cfg = E.load_config(
        TINY, ["split.valid_frac=0", "model.valid_frac=0.5", "model.refit=true"], only=["MetaRec"]
    )
    assert cfg.model["valid_frac"] == 0.5 and cfg.model["refit"] is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MetarecError, match=r"\[model\]: .*cuda"):
        E.load_config(TINY, ['model.device="cuda"'])


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("seeds = [-1]", "seeds must be in [0, 2147483647]"),
        ("seeds = [9223372036854775807]", "seeds must be in [0, 2147483647]"),
        (
            '[[methods]]\nname = "imub2"\nbaseline = "item_mean_user_bias"\ngrid = { shrinkage = [-5.0] }',
            ">= 0",
        ),
        (
            '[[methods]]\nname = "imub3"\nbaseline = "item_mean_user_bias"\ngrid = { shrinkage = [nan] }',
            "finite",
        ),
        (
            '[[methods]]\nname = "imub4"\nbaseline = "item_mean_user_bias"\nparams = { shrinkage = inf }',
            "finite",
        ),
        ('[[methods]]\nname = "implicit_als"\nparams = { factors = 0 }', "must be >= 1"),
        ('[[methods]]\nname = "M4"\nkind = "meta"\ngrid = { "train.outer_lr" = [nan] }', "finite"),
        ("seeds = [0, 0]", "seeds repeat"),
        ("bootstrap = -5", "bootstrap must be 0 (no CIs) or 100 to 100,000"),
        ("bootstrap = 2", "bootstrap must be 0 (no CIs) or 100 to 100,000"),
        ("bootstrap = 1000000000", "bootstrap must be 0 (no CIs) or 100 to 100,000"),
        ("paired_bootstrap = 50", "paired_bootstrap must be 0 (no CIs) or 100 to 100,000"),
        ('[[methods]]\nname = ""', "a method name must be a non-empty string"),
        ('[[methods]]\nname = "Meta, small"\nkind = "meta"', "has a comma or a non-printing"),
        ('[[methods]]\nname = "two\\nlines"\nkind = "meta"', "has a comma or a non-printing"),
        ('[[methods]]\nname = "M5"\nkind = "meta"\nparams = { seed = 5 }', "seed is not read by"),
        (
            '[[methods]]\nname = "M6"\nkind = "meta"\nparams = { train = { seed = 7 } }',
            "train.seed is not read by evaluate",
        ),
        ('[[methods]]\nname = "M7"\nkind = "meta"\ngrid = { "train.seed" = [1, 2] }', "train.seed"),
        ('[[methods]]\nname = "M8"\nkind = "pooled"\nparams = { valid_frac = 0.5 }', "valid_frac"),
        ('[[methods]]\nname = "M9"\nkind = "meta"\nparams = { refit = true }', "refit is not read"),
        ('metrics = ["Bogus@7"]', "unknown metric 'Bogus@7'"),
        # the README's prose says "logloss": the error gives the key's spelling
        ('metrics = ["logloss"]', "did you mean 'Logloss'?"),
        ('[[methods]]\nname = "biased_mf"\nselect_metric = "RMSEE"', "unknown metric 'RMSEE'"),
        ('[[methods]]\nname = "biased_mf"\ngrid = { reg = ["a", "b"] }', "should be a float"),
        ('[[methods]]\nname = "implicit_als"\nparams = { factors = "many" }', "should be a int"),
        (
            '[[methods]]\nname = "biased_mf"\nparams = { factors = 2.5 }',
            "params factors = 2.5 should be an integer",
        ),
        (
            '[[methods]]\nname = "item_knn_rating"\ngrid = { neighbours = [20, 7.5] }',
            "grid neighbours = 7.5 should be an integer",
        ),
        ('[[methods]]\nname = "biased_mf"\nparams = { regg = 3 }', "'regg' is not a parameter"),
        # popularity's signature is (*args, **kwargs): it read "(args, kwargs)"
        (
            '[[methods]]\nname = "pop2"\nbaseline = "popularity"\nparams = { nope = 1 }',
            "of popularity (it takes",
        ),
        ('[[methods]]\nname = "nope"', "unknown baseline 'nope'"),
        ('[[methods]]\nname = "M2"\nkind = "meta"\nparams = { train = { stepz = 3 } }', "stepz"),
        ('[[methods]]\nname = "M3"\nkind = "meta"\ngrid = { "train.steps" = [5, -1] }', "M3"),
    ],
)
def test_bad_experiment_values_fail_when_the_config_loads(tmp_path, extra, named):
    """Caught when the config loads, not after the methods before them have trained."""
    text = TINY.read_text().replace("seeds = [0, 1]\n", "")
    # top-level keys must precede the first table; methods are appended at the end
    text = text + "\n" + extra + "\n" if extra.startswith("[[") else extra + "\n" + text
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.load_config(path, base_dir=str(TINY.parent))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("shots=[1,1]", "shots repeat"),
        ('split.source="a"', "read by the cross-domain protocol only, not 'user-cold'"),
    ],
)
def test_repeated_shots_and_a_stray_source_are_refused(override, named):
    """A repeated K was fitted and listed twice; a source on a user-cold split was taken
    and the report said "user-cold from a to None" (`metarec split` refused it)."""
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.load_config(TINY, [override])


def test_a_shot_too_large_for_the_data_is_named_as_a_shot(tmp_path):
    cfg = dataclasses.replace(E.load_config(TINY), seeds=(0,), shots=(1, 900))
    with pytest.raises(MetarecError, match=r"shots: K = 900: split: k_shot=900"):
        E.run(cfg, tmp_path / "o", progress=False)


def test_a_whole_number_float_count_is_taken_as_an_integer():
    """factors = 8.0 in a baseline's params (TOML has one number syntax for both, and a
    grid may be written 8.0): cast to 8, as fit's typed config casts, where it used to
    reach BiasedMF.fit as a float and fail there with a traceback."""
    cfg = E.load_config(TINY, [], only=["MetaRec"])
    spec = E.MethodSpec(name="biased_mf", params={"factors": 8.0, "iterations": 2})
    rec = E.make_method(spec, cfg, 0, {}, progress=False)
    assert rec.factors == 8 and isinstance(rec.factors, int)
    spec = E.MethodSpec(name="item_knn_rating", grid={"neighbours": [20.0]})
    rec = E.make_method(spec, cfg, 0, {"neighbours": 20.0}, progress=False)
    assert rec.neighbours == 20 and isinstance(rec.neighbours, int)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("text.pca_dim=0", "text.pca_dim must be >= 1"),
        ("text.model='hashing:0'", "hashing"),
        ("split.valid_frac=0.0", "split.valid_frac is 0"),  # the tiny config has a grid
        # no test users: it failed after the first fit with "no tasks to evaluate"
        ("split.test_frac=0.0", "split.test_frac must be > 0"),
        ("split.max_test_users=0", "split.max_test_users must be >= 1"),
        (
            "methods=[{name='T', kind='transfer', strategy='joint'}]",
            'kind transfer needs split.protocol = "cross-domain"',
        ),
    ],
)
def test_settings_that_failed_every_method_fail_when_the_config_loads(override, named):
    """These used to pass the load, fail every method in turn and only then stop."""
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.load_config(TINY, [override])


def test_only_narrows_the_check_to_the_methods_run():
    # a grid needs validation users; a run of popularity alone does not
    with pytest.raises(MetarecError, match="split.valid_frac is 0"):
        E.load_config(TINY, ["split.valid_frac=0.0"])
    cfg = E.load_config(TINY, ["split.valid_frac=0.0"], only=["popularity"])
    assert [m.name for m in cfg.methods] == ["popularity"]


@pytest.mark.parametrize(
    ("protocol", "said"),
    [
        ("user-cold", "first K interactions in time order; query: the next Q"),
        ("warm", "query: each held-out user's last Q interactions in time order"),
        ("item-cold", "first Q interactions with the held-out items of their part"),
        ("user-item-cold", "items: the newest items by first interaction"),
    ],
)
def test_the_report_describes_the_protocol_that_ran(tmp_path, protocol, said):
    # every protocol was described as "first K in time order, query the next Q"
    cfg = E.load_config(
        TINY, [f"split.protocol='{protocol}'", "seeds=[0]", "shots=[]"], only=["popularity"]
    )
    results = E.run(cfg, tmp_path, progress=False)
    assert said in results.protocol["support"] + results.protocol["held_out"]
    report = (tmp_path / "report.md").read_text()
    assert said in report and "query = the next Q" not in report


def test_the_protocol_says_when_the_data_has_no_times(tmp_path):
    log = (TINY.parent / "tiny_log.csv").read_text().splitlines()
    header = log[0].split(",")
    keep = [i for i, c in enumerate(header) if c != "timestamp"]
    (tmp_path / "log.csv").write_text(
        "\n".join(",".join(r.split(",")[i] for i in keep) for r in log) + "\n"
    )
    (tmp_path / "tiny_items.csv").write_text((TINY.parent / "tiny_items.csv").read_text())
    cfg = E.load_config(
        TINY,
        [
            "split.protocol='item-cold'",
            "seeds=[0]",
            "shots=[]",
            f"data.path='{tmp_path / 'log.csv'}'",
        ],
        only=["popularity"],
        base_dir=str(tmp_path),
    )
    p = E.run(cfg, tmp_path / "out", progress=False).protocol
    assert "a seeded random share of the rated items" in p["held_out"]
    assert "log order (the data has no times)" in p["support"]


def test_one_seed_without_bootstrap_shows_no_spread(tmp_path):
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]", "bootstrap=0"], only=["popularity"])
    E.run(cfg, tmp_path, progress=False)
    report = (tmp_path / "report.md").read_text()
    assert "± 0.0000" not in report and "no measure of spread" in report


def test_a_folder_in_place_of_a_result_file_fails_before_the_run(tmp_path, capsys):
    from metarec.cli import main

    (tmp_path / "report.md").write_text("old")
    (tmp_path / "results.json").mkdir()
    code = main(["evaluate", "--config", str(TINY), "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "in the way of the results" in err and "results.json" in err
    assert (tmp_path / "report.md").read_text() == "old"


def test_model_table_is_checked_without_meta_methods():
    with pytest.raises(MetarecError, match=r"\[model\]: unknown config key 'trian'"):
        E.load_config(TINY, ["model.trian=1", 'methods=[{name="popularity"}]'])


def test_output_in_the_way_fails_before_the_run(tmp_path, capsys):
    from metarec.cli import main

    afile = tmp_path / "afile"
    afile.write_text("mine")
    code = main(["evaluate", "--config", str(TINY), "--out", str(afile), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert afile.read_text() == "mine"


def test_a_failed_write_leaves_the_previous_results_whole(tiny_run, tmp_path, monkeypatch):
    """Files are staged and renamed together: a failure while writing the report must not
    leave a new results.json beside the old report (and plots)."""
    import shutil

    from metarec import report

    _, results, out = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "render_markdown", boom)
    with pytest.raises(OSError):
        E.write_results(results, copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_without_matplotlib_the_results_and_report_are_still_written(
    tiny_run, tmp_path, monkeypatch
):
    # a run without the plots extra trained every method, then failed writing and left
    # no report ("or run with plots off", which no option did)
    from metarec import report

    _, results, _ = tiny_run
    monkeypatch.setattr(report, "plots_missing", lambda: report.PLOTS_MISSING)
    monkeypatch.setattr(report, "_pyplot", lambda: pytest.fail("plots drawn"))
    out = tmp_path / "noplots"
    E.write_results(results, out)
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json"]
    said = (out / "report.md").read_text()
    assert "Not drawn: matplotlib is not installed: pip install 'metarec[plots]'." in said

    # and a run says so before it trains
    def stop(cfg):
        raise MetarecError("stopped before loading")

    monkeypatch.setattr(E, "load_data", stop)
    with pytest.warns(UserWarning, match=r"plots will not be drawn \(matplotlib is not"):
        with pytest.raises(MetarecError, match="stopped before loading"):
            E.run(results.config, tmp_path / "early")


def test_results_json_is_strict_json(tiny_run):
    _, _, out = tiny_run
    text = (out / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_a_baseline_whose_package_is_missing_is_said_before_any_training(monkeypatch):
    # probe 149: a plain install without the baselines extra found implicit/lightfm
    # missing per seed inside the fit, after the methods before it had trained; with
    # fail_fast that was minutes of training before the stop
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "implicit" else real(name, *a)
    )
    cfg = E.load_config(TINY)
    als = E.MethodSpec(name="ALS", kind="baseline", baseline="implicit_als")
    cfg = dataclasses.replace(cfg, methods=(*cfg.methods, als), shots=(), seeds=(0,))

    class Stopped(Exception):
        pass

    def stop(*a):  # the run's first step after the checks: it stops the run there
        trained.append(1)
        raise Stopped

    trained = []
    monkeypatch.setattr(E, "load_data", stop)
    with pytest.raises(
        MetarecError, match=r"method 'ALS' needs the 'implicit' package, not.*fail_fast: nothing"
    ):
        E.run(dataclasses.replace(cfg, fail_fast=True), None, progress=False)
    assert not trained
    with pytest.warns(
        UserWarning, match="'ALS' needs the 'implicit' package.*recorded as a failed fit"
    ):
        with pytest.raises(Stopped):
            E.run(cfg, None, progress=False)
    assert trained  # without fail_fast the run goes on to its data


def test_a_failed_fit_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    """A method that fails on one seed (a diverged loss) is left out of that seed's means
    and listed in results.json and the report; a method failing on every seed is absent
    from the table; the other methods are unaffected. fail_fast restores the old stop."""
    real = E.fit_method

    def flaky(spec, config, ds, split, feats, seed, progress):
        if spec.name == "MetaRec" and seed == 1:
            raise MetarecError("train: the validation loss was inf at every evaluation")
        if spec.name == "Pooled":
            raise RuntimeError("linalg.solve: The solver failed\nsecond line")
        return real(spec, config, ds, split, feats, seed, progress)

    monkeypatch.setattr(E, "fit_method", flaky)
    cfg = dataclasses.replace(E.load_config(TINY), shots=())
    with pytest.warns(UserWarning) as caught:
        results = E.run(cfg, tmp_path / "out", progress=False)
    # (the tiny config's 8 validation users also skip the blend, said on its own line)
    said = [str(w.message) for w in caught if "blend skipped" not in str(w.message)]
    assert len(said) == 3 and "MetaRec failed on seed 1 (K=3)" in said[1]
    assert [(f["method"], f["seed"]) for f in results.failures] == [
        ("Pooled", 0),
        ("MetaRec", 1),
        ("Pooled", 1),
    ]
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["failures"][0]["error"] == "RuntimeError: linalg.solve: The solver failed"
    assert data["failures"][1]["error"] == "train: the validation loss was inf at every evaluation"
    table = data["scenarios"][0]["methods"]
    assert "Pooled" not in table
    cell = table["MetaRec"]["AUC"]
    assert cell["seeds"] == [0] and len(cell["per_seed"]) == 1
    assert cell["mean"] == pytest.approx(cell["per_seed"][0])
    assert table["popularity"]["AUC"]["seeds"] == [0, 1]
    # each fit's per-seed lists say whose they are (MetaRec's failed seed 1 has none)
    assert data["fits"]["MetaRec"]["seeds"] == [0]
    assert data["fits"]["popularity"]["seeds"] == [0, 1]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| MetaRec (1 of 2 seeds) | meta |" in report
    assert "- MetaRec, seed 1, K = 3: train: the validation loss" in report
    # the old behaviour on request, and an error when nothing at all could be fitted
    # Pooled, seed 0: the first; one line naming the method and seed (it was the bare error)
    with pytest.raises(MetarecError, match="Pooled failed on seed 0 .*solver failed"):
        E.run(dataclasses.replace(cfg, fail_fast=True), None, progress=False)
    monkeypatch.setattr(E, "fit_method", lambda *a: (_ for _ in ()).throw(ArithmeticError("x")))
    with pytest.warns(UserWarning), pytest.raises(MetarecError, match="every method failed"):
        E.run(cfg, None, progress=False)


def test_the_report_states_the_pca_width_used_and_why_it_was_lowered(tmp_path):
    # hashing:16 gives 16-dim vectors: pca_dim 30 is lowered to 16, and the warning blamed
    # the number of items while the report still said "PCA 30"
    cfg = E.load_config(TINY, ["text.pca_dim=30", "seeds=[0]", "shots=[]"], only=["MetaRec"])
    with pytest.warns(UserWarning, match="lowered to 16: the text encoder gives 16-dimensional"):
        results = E.run(cfg, tmp_path, progress=False)
    assert results.protocol["text"]["dim"] == 16
    assert "PCA 30 lowered to 16" in (tmp_path / "report.md").read_text()


def test_a_text_model_that_cannot_load_stops_the_run_once(tmp_path):
    cfg = E.load_config(
        TINY, [f"text.model='{tmp_path / 'no_such_model'}'", "seeds=[0]", "shots=[]"]
    )
    with pytest.raises(MetarecError, match="cannot load text model"):
        E.run(cfg, tmp_path / "out", progress=False)


def test_text_settings_under_model_or_a_method_are_refused():
    # accepted and ignored: evaluate builds the features once, from the top-level [text]
    with pytest.raises(MetarecError, match=r"\[model\] text: .* top-level \[text\]"):
        E.load_config(TINY, ["model.text.pca_dim=2"])
    with pytest.raises(MetarecError, match="text settings are the experiment's"):
        E.load_config(TINY, ["methods=[{name='M', kind='meta', grid={'text.pca_dim'=[2, 4]}}]"])


def test_a_grid_of_tables_reaches_the_model_as_tables():
    # grid values went through JSON and TOML text: tables were refused, "😀" garbled
    cfg = E.load_config(
        TINY,
        [
            "methods=[{name='M', kind='meta', grid={rank_meta=[{algorithm='np'}, {algorithm='ridge'}]}}]",
            "seeds=[0]",
        ],
    )
    (spec,) = cfg.methods
    algos = [
        E.make_method(spec, cfg, 0, point, False).config.rank_meta.algorithm
        for point in E._grid_points(spec.grid)
    ]
    assert algos == ["np", "ridge"]


def test_the_model_table_is_recorded_with_typed_values():
    # results.json took [model] as given: --set model.train.steps=1e0 stored 1.0
    cfg = E.load_config(TINY, ["model.train.steps=1e0", "model.train.ema=0", "model.k_shot=3"])
    assert cfg.model["train"]["steps"] == 1 and isinstance(cfg.model["train"]["steps"], int)
    assert cfg.model["train"]["ema"] == 0.0 and isinstance(cfg.model["train"]["ema"], float)
    assert cfg.model["k_shot"] == 3
    assert set(cfg.model) == {"scorer", "train", "k_shot"}  # only the keys it names


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("split.protocol='usercold'", "unknown protocol 'usercold'"),
        ("split.k_shot=0", "split.k_shot must be >= 1"),
        ("split.n_query=0", "split.n_query must be >= 1"),
        ("split.valid_frac=1.0", "split.valid_frac must be in [0, 1)"),
        ("shots=[0, 5]", "shots must be >= 1"),
        ("metrics=['AUC', 'AUC']", "metric 'AUC' is listed twice"),
    ],
)
def test_split_settings_fail_when_the_config_loads_not_after_the_data(override, named):
    # these were caught by make_split, once the data had loaded (a progress line first)
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.load_config(TINY, [override])


def test_a_metric_with_any_k_is_computed_not_left_empty(tmp_path):
    # "nDCG@50 (full)" passed the check and came out as an empty column: evaluate
    # computed only k = 5, 10, 20 and 1, 3, 5; a grid selected on Recall@50 "failed"
    cfg = E.load_config(
        TINY,
        [
            "seeds=[0]",
            "shots=[]",
            "metrics=['nDCG@50 (full)', 'nDCG@2 (query)', 'HR@1 (full)', 'AUC']",
            "methods=[{name='item_mean_user_bias', grid={shrinkage=[0.1, 50.0]}, "
            "select_metric='Recall@7 (full)'}, {name='popularity'}]",
        ],
    )
    assert cfg.eval_ks() == ((1, 5, 7, 10, 20, 50), (1, 2, 3, 5))
    results = E.run(cfg, tmp_path, progress=False)
    assert not results.failures
    for r in results.runs:
        for m in ("nDCG@50 (full)", "nDCG@2 (query)", "HR@1 (full)"):
            assert np.isfinite(r.result.metrics[m]), (r.method, m)
    chosen = next(r.chosen for r in results.runs if r.method == "item_mean_user_bias")
    assert "_valid_Recall@7 (full)" in chosen


def _implicit_overrides(path: Path) -> list[str]:
    """One seed, no K-curve, and the tiny log at ``path`` read as 0/1 labels."""
    return [
        "seeds=[0]",
        "shots=[]",
        f"data.path='{path}'",
        "data.options={items='tiny_items.csv', text_cols=['title'], label_col='label'}",
    ]


def _implicit_tiny(tmp_path: Path, positives_only: bool = False) -> Path:
    log = (TINY.parent / "tiny_log.csv").read_text().splitlines()
    rows = [r.split(",") for r in log[1:]]
    text = "user_id,item_id,label,timestamp\n" + "".join(
        f"{u},{i},{int(float(r) >= 4)},{t}\n"
        for u, i, r, t in rows
        if float(r) >= 4 or not positives_only
    )
    (tmp_path / "log.csv").write_text(text)
    (tmp_path / "tiny_items.csv").write_text((TINY.parent / "tiny_items.csv").read_text())
    return tmp_path / "log.csv"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["metrics=['MAE', 'AUC']"], "metrics: MAE is computed for explicit feedback only"),
        (
            ["metrics=['MAE (rounded)']"],
            "metrics: MAE (rounded) is computed for explicit feedback only",
        ),
        (
            ["methods=[{name='biased_mf', grid={reg=[0.1, 1.0]}, select_metric='RMSE'}]"],
            "select_metric: RMSE is computed for explicit feedback only",
        ),
    ],
)
def test_a_rating_metric_on_implicit_data_fails_before_anything_trains(
    tmp_path, monkeypatch, overrides, named
):
    path = _implicit_tiny(tmp_path)
    cfg = E.load_config(TINY, [*_implicit_overrides(path), *overrides], base_dir=str(tmp_path))
    monkeypatch.setattr(E, "fit_method", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.run(cfg, None, progress=False)


def test_mae_rounded_on_a_continuous_scale_fails_before_anything_trains():
    from metarec.types import Dataset, IdMap, Interactions

    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]", "metrics=['MAE (rounded)']"])
    n = 30  # 30 distinct ratings: a continuous scale, no nearest rating to round to
    rows = Interactions(
        np.zeros(n, int), np.arange(n), np.linspace(0, 10, n), np.arange(n), np.zeros(n)
    )
    ds = Dataset(
        "cont",
        rows,
        IdMap(np.array(["u"])),
        IdMap(np.arange(n).astype(str)),
        "explicit",
        (0.0, 10.0),
        False,
    )
    with pytest.raises(
        MetarecError, match=re.escape("metrics: MAE (rounded) needs a scale of at most 20")
    ):
        E.check_against_data(cfg, ds)
    few = dataclasses.replace(
        ds, interactions=dataclasses.replace(rows, rating=np.round(rows.rating))
    )
    E.check_against_data(cfg, few)  # 11 levels: fine


def test_a_query_metric_selected_on_a_log_without_negatives_fails_before_training(
    tmp_path, monkeypatch
):
    # purchases only: every query metric is undefined, and a grid selected on one failed
    # only after all of its fits ("every grid point failed")
    path = _implicit_tiny(tmp_path, positives_only=True)
    base = _implicit_overrides(path)
    monkeypatch.setattr(E, "fit_method", lambda *a, **k: pytest.fail("trained"))
    for metric in ("nDCG@3 (query)", "AUC"):
        pick = f"methods=[{{name='item_knn', grid={{alpha=[0.2, 0.5]}}, select_metric='{metric}'}}]"
        cfg = E.load_config(TINY, [*base, pick], base_dir=str(tmp_path))
        with pytest.raises(MetarecError, match=re.escape(f"select_metric {metric} is undefined")):
            E.run(cfg, None, progress=False)


def test_an_implicit_log_without_a_positive_fails_and_a_threshold_there_is_warned_about(
    tmp_path, monkeypatch
):
    path = _implicit_tiny(tmp_path)
    base = [*_implicit_overrides(path), "methods=[{name='popularity'}]"]
    # a threshold means nothing on labels: said, not silently recorded
    cfg = E.load_config(TINY, [*base, "threshold=100.0"], base_dir=str(tmp_path))
    ds = E.load_data(cfg)
    with pytest.warns(UserWarning, match=re.escape("threshold 100 has no effect on")):
        E.check_against_data(cfg, ds)
    # every label 0: fit refuses such a log; evaluate trained and gave an all-NaN table
    zeros = path.read_text().replace(",1,", ",0,")
    path.write_text(zeros)
    monkeypatch.setattr(E, "fit_method", lambda *a, **k: pytest.fail("trained"))
    cfg = E.load_config(TINY, base, base_dir=str(tmp_path))
    with pytest.raises(MetarecError, match="every label of .* is 0"):
        E.run(cfg, None, progress=False)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["threshold=6.0"], "threshold 6 is outside the ratings of 'tiny_log' (1..5)"),
        (["threshold=1.0"], "every rating would be"),
        # a declared 1..10 over ratings 1..5: above every rating the data holds (every
        # hit metric was empty), and the like threshold, the middle 5.5, likewise (each
        # seed's fit failed, exit 0)
        (
            [
                'data.options={items="tiny_items.csv", text_cols=["title"], rating_range=[1, 10]}',
                "threshold=7.0",
                "model.like_threshold=4.0",
            ],
            "threshold 7: no rating of 'tiny_log' reaches it (they run 1..5)",
        ),
        (
            [
                'data.options={items="tiny_items.csv", text_cols=["title"], rating_range=[1, 10]}',
                "threshold=4.0",
            ],
            "method 'MetaRec': the like threshold, the rating scale's middle, 5.5 is above every training rating",
        ),
        (
            ["methods=[{name='ease', select_metric='MAE', grid={reg=[100.0, 500.0]}}]"],
            "select_metric MAE needs predicted ratings, and ease only ranks",
        ),
    ],
)
def test_a_threshold_off_the_scale_or_an_unscorable_selection_fails_before_training(
    monkeypatch, overrides, named
):
    # threshold 4 on a -2..2 scale left every ranking column empty, with exit 0
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]", *overrides])
    monkeypatch.setattr(E, "fit_method", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.run(cfg, None, progress=False)


def test_an_item_the_full_ranking_leaves_out_is_not_relevant(tmp_path):
    """A relevant query item the ranking excludes (warm with re-ratings kept: the user
    rated it before, so it is in their training history) can never be found: it counted
    relevant, a certain miss that held Recall below 1 for a perfect ranker (probe 154).
    With every relevant item excluded, the (full) metrics are undefined for the user."""
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]"], only=["popularity"])
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    t = next(t for t in split.test if (t.query.rating >= 4).sum() >= 2)
    relevant = t.query.item_idx[t.query.rating >= 4]

    class Perfect(Popularity):
        def rank_scores_batch(self, tasks, items):  # the user's relevant items first
            return np.stack([np.isin(items, relevant).astype(np.float64) for _ in tasks])

    rec = Perfect().fit(ds, split.train, None)
    for excluded, want in ((relevant[:1], 1.0), (relevant, None)):
        res = evaluation.evaluate(
            rec, ds, [t], bootstrap=0, ks=(20,), exclude={t.user_idx: excluded}
        )
        got = res.per_user["Recall@20 (full)"][0]
        assert np.isnan(got) if want is None else got == want, (excluded, got)
    # the protocol's count of users with nothing to find says so too
    assert E._no_relevant([t], 4.0, {t.user_idx: relevant}) == 1
    assert E._no_relevant([t], 4.0, {t.user_idx: relevant[:1]}) == 0
    # and the candidates, as evaluate drops relevant items outside them (a cross-domain
    # query item in the other domain): counted by one rule, evaluation.rankable_relevant
    others = np.setdiff1d(np.arange(ds.n_items), relevant)
    assert E._no_relevant([t], 4.0, None, others) == 1
    assert E._no_relevant([t], 4.0, None, np.union1d(others, relevant[:1])) == 0
    res = evaluation.evaluate(rec, ds, [t], bootstrap=0, ks=(20,), candidates=others)
    assert np.isnan(res.per_user["Recall@20 (full)"][0])


def test_the_protocols_count_of_users_with_nothing_to_find_takes_the_exclusions(monkeypatch):
    """describe_protocol's no_relevant_queries counts the relevant items the full ranking
    can hold (ranking_exclusions), as evaluate leaves them out: counted before the
    exclusions, a user whose every relevant query item is excluded read as a user with
    something to find, while each of their full metrics was undefined (probe 154)."""
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]"], only=["popularity"])
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    info = {"name": "tiny", "feedback": "explicit"}
    before = E.describe_protocol(cfg, info, split)["no_relevant_queries"]
    t = next(t for t in split.test if (t.query.rating >= cfg.threshold).any())
    relevant = t.query.item_idx[t.query.rating >= cfg.threshold]
    # and the candidates it is handed (run: ranking_candidates), which evaluate ranks over:
    # t's relevant items outside them leave t with nothing to find
    others = np.setdiff1d(np.arange(ds.n_items), relevant)
    assert E.describe_protocol(cfg, info, split, others)["no_relevant_queries"] > before
    # the ranking leaves out every relevant item of t's query (warm: all in their history)
    monkeypatch.setattr(E, "ranking_exclusions", lambda sp, tasks: {t.user_idx: relevant})
    assert E.describe_protocol(cfg, info, split)["no_relevant_queries"] == before + 1


def test_the_runs_count_of_users_with_nothing_to_find_takes_the_candidates(tmp_path, monkeypatch):
    """run hands describe_protocol the test ranking's candidates: the report's count of
    users with nothing to find is then the users evaluate leaves out of every (full)
    metric (a relevant item outside the candidates is none to find)."""
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]", "bootstrap=0"], only=["popularity"])
    ds = E.load_data(cfg)
    every_third = np.arange(0, ds.n_items, 3, dtype=np.int64)
    monkeypatch.setattr(E, "ranking_candidates", lambda ds, split, part="test": every_third)
    results = E.run(cfg, tmp_path / "out", progress=False)
    n_test = results.protocol["test_users"]
    n_full = results.summary("main")["popularity"]["nDCG@10 (full)"]["n_users"][0]
    assert n_full < n_test  # the candidates leave some user nothing to find
    assert results.protocol["no_relevant_queries"] == n_test - n_full


def test_warm_full_ranking_leaves_out_the_users_training_history(tmp_path):
    # a warm user's earlier items stay in train; the full ranking offered them (recommend
    # never does), and they took 10-20% of popularity's top ten while never relevant
    cfg = E.load_config(
        TINY, ["split.protocol='warm'", "seeds=[0]", "shots=[]"], only=["popularity"]
    )
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    exclude = E.ranking_exclusions(split, split.test)
    for t in split.test:
        history = split.train.item_idx[split.train.user_idx == t.user_idx]
        assert set(exclude[t.user_idx]) == set(history)
        assert set(t.support.item_idx) <= set(history)
    assert E.ranking_exclusions(E.cut_split(ds, E.load_config(TINY), 0, 3), split.test) is None

    class Everything(Popularity):
        seen: list = []

        def rank_scores_batch(self, tasks, items):
            return np.tile(np.arange(len(items), dtype=np.float64)[::-1], (len(tasks), 1))

    rec = Everything().fit(ds, split.train, None)
    res = evaluation.evaluate(
        rec, ds, split.test, bootstrap=0, ks=(20,), exclude=exclude, full_catalogue=True
    )
    plain = evaluation.evaluate(rec, ds, split.test, bootstrap=0, ks=(20,))
    # scores fall with the item index: the top 20 are the 20 lowest indices not excluded
    t = split.test[0]
    seen = set(exclude[t.user_idx])
    top = [i for i in range(ds.n_items) if i not in seen][:20]
    relevant = set(t.query.item_idx[t.query.rating >= 4])
    if relevant:
        want = len(relevant & set(top)) / len(relevant)
        assert res.per_user["Recall@20 (full)"][0] == pytest.approx(want)
    assert res.metrics["Recall@20 (full)"] >= plain.metrics["Recall@20 (full)"]
    # evaluate_split's also_exclude (the K-curve's gaps) adds to the training history, not
    # in its place: the user's 20 lowest items outside both sets
    extra = {t.user_idx: np.array([i for i in range(ds.n_items) if i not in seen][:5])}
    both = {**exclude, t.user_idx: np.concatenate([exclude[t.user_idx], extra[t.user_idx]])}
    got = E.evaluate_split(rec, ds, split, bootstrap=0, ks=(20,), also_exclude=extra)
    want = evaluation.evaluate(rec, ds, split.test, bootstrap=0, ks=(20,), exclude=both)
    np.testing.assert_array_equal(
        got.per_user["Recall@20 (full)"], want.per_user["Recall@20 (full)"]
    )
    only = evaluation.evaluate(rec, ds, split.test, bootstrap=0, ks=(20,), exclude=extra)
    assert not np.array_equal(
        got.per_user["nDCG@20 (full)"], only.per_user["nDCG@20 (full)"], equal_nan=True
    )


def test_identical_per_user_values_get_identical_intervals():
    # one bootstrap stream shared in column order gave two all-tied scorers with the same
    # per-user nDCG different CIs, and a metric's CI moved when columns were added
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]"])
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, 3)
    rec = Popularity().fit(ds, split.train, None)
    a = evaluation.evaluate(rec, ds, split.test, bootstrap=200, ks=(10,), query_ks=(3,))
    b = evaluation.evaluate(rec, ds, split.test, bootstrap=200, ks=(5, 10, 20))
    assert a.ci95["nDCG@10 (full)"] == b.ci95["nDCG@10 (full)"]
    assert a.ci95["AUC"] == b.ci95["AUC"]


def test_a_misspelt_time_column_is_an_error_not_file_order(tmp_path):
    from metarec.data.tabular import read_table

    with pytest.raises(MetarecError, match="time column 'tss' is not in the file"):
        read_table(TINY.parent / "tiny_log.csv", time_col="tss")
    raw = read_table(TINY.parent / "tiny_log.csv", time_col="timestamp")
    assert raw is not None


def test_the_report_says_when_no_pca_was_fitted(tmp_path):
    items = tmp_path / "tiny_items.csv"
    items.write_text("item_id,year\n" + "".join(f"i{i},{1990 + i % 7}\n" for i in range(40)))
    cfg = E.load_config(
        TINY,
        [
            "seeds=[0]",
            "shots=[]",
            f"data.path='{TINY.parent / 'tiny_log.csv'}'",
            f"data.options={{items='{items}', text_cols=[], numeric_cols=['year']}}",
        ],
        only=["popularity"],
    )
    with pytest.warns(UserWarning, match="no item has text .the items file has no text column"):
        E.run(cfg, tmp_path / "out", progress=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "lowered to" not in report and "no PCA: too few training items with text" in report


def test_evaluate_split_ranks_a_cross_domain_user_over_the_target_domain(tmp_path):
    # the README's evaluate(rec, ds, split.test) ranked both domains on a cross-domain
    # split (0.009 against metarec evaluate's 0.203); evaluate_split scores as it does
    cfg = _two_domain_config(tmp_path, "joint")
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, 2)

    class Seen(Popularity):
        ranked: list = []

        def rank_scores_batch(self, tasks, items):
            Seen.ranked.append(np.asarray(items))
            return super().rank_scores_batch(tasks, items)

    rec = Seen().fit(ds, split.train, None)
    res = E.evaluate_split(rec, ds, split, bootstrap=0)
    target = E.ranking_candidates(ds, split)
    assert all(np.array_equal(np.unique(r), np.unique(target)) for r in Seen.ranked)
    assert set(ds.interactions.domain[np.isin(ds.interactions.item_idx, target)]) == {
        split.target_domain
    }
    want = evaluation.evaluate(rec, ds, split.test, bootstrap=0, candidates=target)
    assert res.metrics.keys() == want.metrics.keys()
    np.testing.assert_array_equal(list(res.metrics.values()), list(want.metrics.values()))
    with pytest.raises(MetarecError, match="part must be 'test' or 'valid'"):
        E.evaluate_split(rec, ds, split, "train")

    # also_exclude leaves each user's listed items out of the full ranking, on top of the
    # support: excluding every task's top-ranked candidate is ranking one list shorter
    top = {}
    for t in split.test:
        cands = np.setdiff1d(target, t.support.item_idx)
        s = rec.rank_scores_batch([t], cands)[0]
        top[t.user_idx] = cands[[int(np.argmax(s))]]
    cut = E.evaluate_split(rec, ds, split, bootstrap=0, also_exclude=top)
    want = evaluation.evaluate(rec, ds, split.test, bootstrap=0, candidates=target, exclude=top)
    np.testing.assert_array_equal(list(cut.metrics.values()), list(want.metrics.values()))
    assert cut.metrics != res.metrics


def test_a_write_that_fails_part_way_through_the_renames_keeps_the_previous_results(
    tiny_run, tmp_path, monkeypatch
):
    # results were moved into place one file at a time: a failure after the first left a
    # new report.md beside an old results.json
    import os
    import shutil

    _, results, out = tiny_run
    target = tmp_path / "res"
    shutil.copytree(out, target)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    real = os.replace
    moved = []

    def flaky(src, dst):
        if Path(src).parent.name.startswith(".results.~") and Path(dst).parent == target:
            moved.append(Path(dst).name)  # a new file moving in (not the rollback's)
            if len(moved) == 3:
                raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    changed = dataclasses.replace(results, seconds=results.seconds + 1234.5)
    with pytest.raises(OSError):
        E.write_results(changed, target)
    monkeypatch.setattr(os, "replace", real)
    after = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    assert after == before and len(moved) == 3
    assert not [p for p in target.iterdir() if p.name.startswith(".results.~")]


def test_transfer_needs_two_different_domains(tmp_path):
    # source_domain == target_domain was accepted without a word
    from metarec.transfer import TransferRecommender

    cfg = _two_domain_config(tmp_path, "parameter")
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    rec = TransferRecommender(strategy="parameter")
    with pytest.raises(MetarecError, match="both 1 .* two different domains"):
        rec.fit(ds, split.train, source_domain=1, target_domain=1)
    with pytest.raises(MetarecError, match="target_domain 5 is neither a domain index"):
        rec.fit(ds, split.train, source_domain=0, target_domain=5)


def test_transfer_domains_by_index_or_name_and_one_implies_the_other():
    """One of source_domain / target_domain alone had been ignored, and the direction
    inferred from the validation supports (books -> films for source_domain=films);
    names, which the split and --domain take, were refused."""
    from types import SimpleNamespace

    from metarec.transfer import TransferRecommender

    pick = TransferRecommender._domains
    two = SimpleNamespace(domains=("books", "films"))
    for src, tgt, want in [
        (1, None, (1, 0)),
        (None, 0, (1, 0)),
        ("films", None, (1, 0)),
        (" films ", "books", (1, 0)),
        (0, "films", (0, 1)),
    ]:
        assert pick(two, None, None, src, tgt) == want, (src, tgt)
    with pytest.raises(
        MetarecError, match=r"'music' is neither a domain index .* name \(books, films\)"
    ):
        pick(two, None, None, "music", None)
    three = SimpleNamespace(domains=("a", "b", "c"))
    with pytest.raises(MetarecError, match="pass both .* not only source_domain"):
        pick(three, None, None, 0, None)
    assert pick(three, None, None, "c", 0) == (2, 0)
    # given the wrong way round for the validation users (cold in films), refused: the
    # "target" model had trained on books and scored film users (probe 166)
    from metarec.types import Interactions, Task

    def cold_in(d):
        sup = Interactions(np.zeros(2), np.array([0, 1]), np.ones(2), np.arange(2), np.full(2, d))
        return [Task(0, sup, Interactions.empty())]

    with pytest.raises(MetarecError, match=r"supports are in 'films'.* wrong way round"):
        pick(two, None, cold_in(1), "films", "books")
    assert pick(two, None, cold_in(1), "books", "films") == (0, 1)
    # the experiment's split names are stripped as data cells and --domain are
    split = E.SplitConfig(protocol="cross-domain", source=" books ", target="films\t")
    assert (split.source, split.target) == ("books", "films")
    # refused only when every support is in one other domain: supports in both domains
    # (a user-cold split of a two-domain log) say nothing of the direction, and supports
    # in a third domain are in neither the source nor the target
    sup = Interactions(np.zeros(2), np.array([0, 1]), np.ones(2), np.arange(2), np.array([0, 1]))
    assert pick(two, None, [Task(0, sup, Interactions.empty())], "books", "films") == (0, 1)
    with pytest.raises(MetarecError, match=r"target_domain is 'b' .* supports are in 'c'"):
        pick(three, None, cold_in(2), "a", "b")


def test_nan_scores_on_test_users_fail_the_method_not_the_experiment(tmp_path, monkeypatch):
    # a model whose test-time adaptation diverged (NaN scores) stopped the whole run with
    # exit 2 and no results written
    from metarec.baselines import Popularity

    real = Popularity.score

    def nan_score(self, user_idx, support, item_idx):
        return np.full(len(item_idx), np.nan)

    monkeypatch.setattr(Popularity, "score", nan_score)
    monkeypatch.setattr(Popularity, "rank_scores", nan_score, raising=False)
    cfg = dataclasses.replace(E.load_config(TINY), shots=())
    with pytest.warns(UserWarning, match="popularity failed on seed") as caught:
        results = E.run(cfg, tmp_path / "out", progress=False)
    assert sorted(str(w.message)[:29] for w in caught if "blend skipped" not in str(w.message)) == [
        "popularity failed on seed 0 (",
        "popularity failed on seed 1 (",
    ]
    assert {f["method"] for f in results.failures} == {"popularity"}
    assert "NaN" in results.failures[0]["error"]
    table = json.loads((tmp_path / "out" / "results.json").read_text())["scenarios"][0]
    assert "popularity" not in table["methods"] and "MetaRec" in table["methods"]
    monkeypatch.setattr(Popularity, "score", real)


def test_a_grid_point_that_fails_is_skipped_not_the_method(monkeypatch):
    # one diverging point (outer_lr 1e6) failed the whole method and threw away the good
    # points; the message did not say which point
    cfg = E.load_config(
        TINY,
        [
            "shots=[]",
            "seeds=[0]",
            'methods=[{name="M", kind="meta", grid={"train.outer_lr"=[1e-3, 1e6]}}]',
        ],
    )
    real = E._fit

    def diverge(rec, *a, **k):
        if rec.config.train.outer_lr > 1:
            raise MetarecError("train: meta-loss is nan at step 2")
        return real(rec, *a, **k)

    monkeypatch.setattr(E, "_fit", diverge)
    with pytest.warns(UserWarning, match=r"grid point\(s\) skipped: train.outer_lr=1000000.0"):
        results = E.run(cfg, None, progress=False)
    assert not results.failures
    (run,) = results.runs
    assert run.chosen["train.outer_lr"] == 1e-3
    # the skipped point is in the record, with why (probe 140: stderr alone said so)
    grid = run.chosen[E.GRID_KEY]
    assert grid[1]["point"] == {"train.outer_lr": 1e6}
    assert "meta-loss is nan at step 2" in grid[1]["skipped"]
    from metarec.report import render_markdown

    assert "among 2 grid points per seed, 1 skipped" in render_markdown(results, {})
    monkeypatch.setattr(E, "_fit", lambda *a, **k: (_ for _ in ()).throw(MetarecError("nan")))
    with pytest.warns(UserWarning), pytest.raises(MetarecError, match="every grid point failed"):
        E.run(cfg, None, progress=False)


@pytest.mark.parametrize(
    ("method", "named"),
    [
        ("{name='popularity', finetune_steps=3}", "finetune_steps is read only by kind pooled"),
        ("{name='popularity', strategy='feature'}", "strategy is read only by kind transfer"),
        ("{name='M', kind='meta', baseline='ease'}", "baseline is read only by kind baseline"),
        (
            "{name='M', kind='meta', select_metric='AUC'}",
            "select_metric is read only by a method with a grid",
        ),
    ],
)
def test_a_method_key_its_kind_does_not_read_is_an_error(method, named):
    # accepted and silently ignored, though the config is "checked whole"
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.load_config(TINY, [f"methods=[{method}]"])


def _run_of(seed: int, users: np.ndarray, values: np.ndarray) -> E.MethodRun:
    from metarec.evaluate import EvalResult

    res = EvalResult(
        "m",
        {"AUC": float(np.nanmean(values))},
        {"AUC": values.astype(np.float64)},
        {"AUC": (np.nan, np.nan)},
        {"AUC": int((~np.isnan(values)).sum())},
        users.astype(np.int64),
        "AUC",
        True,
    )
    return E.MethodRun("m", "baseline", seed, 3, res, 0.0, {}, ())


def test_seed_ci_resamples_users_not_seed_user_rows():
    """Three seeds scoring the same 100 users alike are one sample of users, not three: the
    interval must be as wide as one seed's, and centred on the reported mean of seeds."""
    rng = np.random.default_rng(0)
    users = np.arange(100)
    v = rng.normal(size=100)
    one = E._seeds_bootstrap_ci([_run_of(0, users, v)], "AUC", 2000, rng)
    three = E._seeds_bootstrap_ci(
        [_run_of(s, users, v) for s in range(3)], "AUC", 2000, np.random.default_rng(1)
    )
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(three) == pytest.approx(width(one), rel=0.15)
    assert one[0] < v.mean() < one[1]
    # per-seed means 0 (2 users) and 1 (100 users): the reported mean is 0.5, and pooling
    # the rows had given [0.951, 1.0]
    runs = [_run_of(0, np.arange(2), np.zeros(2)), _run_of(1, np.arange(2, 102), np.ones(100))]
    lo, hi = E._seeds_bootstrap_ci(runs, "AUC", 2000, np.random.default_rng(2))
    assert lo <= 0.5 <= hi
    # undefined (NaN) values are left out, not counted as zeros
    w = v.copy()
    w[::2] = np.nan
    lo, hi = E._seeds_bootstrap_ci(
        [_run_of(s, users, w) for s in range(2)], "AUC", 2000, np.random.default_rng(3)
    )
    assert lo < np.nanmean(w) < hi


def test_max_test_users_summary_counts_only_the_users_scored():
    cfg = E.load_config(TINY, overrides=["split.max_test_users=2"])
    ds = E.load_data(cfg)
    full = E.cut_split(
        ds,
        dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, max_test_users=None)),
        0,
        3,
    )
    assert len(full.test) > 2
    split = E.cut_split(ds, cfg, 0, 3)
    s = split.summary
    assert s["test_users"] == 2 == len(split.test)
    assert (
        s["test_support"] == sum(len(t.support) for t in split.test) < full.summary["test_support"]
    )
    assert s["test_query"] == sum(len(t.query) for t in split.test) < full.summary["test_query"]
    info = E.describe_protocol(cfg, {}, split)
    assert "at most the first 2" in info["evaluated_users"]


def test_an_output_folder_that_cannot_be_written_fails_before_training(tmp_path):
    # os.access says yes to root anywhere; /proc (and read-only mounts) then failed only
    # when the results were written, after the whole run
    E.check_output_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # the probe leaves nothing behind
    assert not list(tmp_path.iterdir())
    with pytest.raises(MetarecError, match=r"cannot write results under /proc"):
        E.check_output_dir("/proc/metarec-results")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MetarecError, match="is not a folder"):
        E.check_output_dir(tmp_path / "file")


def test_k_curve_rankings_leave_out_the_largest_support(monkeypatch):
    """run() passes each K's gap (the largest support minus K's) to the full ranking, so
    every K ranks the same candidates for the same query."""
    cfg = E.load_config(TINY, ["seeds=[0]", "methods=[{name='popularity'}]"])
    seen: list[tuple[int, dict | None]] = []
    real = evaluation.evaluate

    def recording(rec, dataset, tasks, **kw):
        seen.append(({len(t.support) for t in tasks}, kw.get("exclude")))
        return real(rec, dataset, tasks, **kw)

    monkeypatch.setattr(evaluation, "evaluate", recording)
    E.run(cfg, None, progress=False)
    by_k = {min(sizes): excl for sizes, excl in seen if len(sizes) == 1}
    assert by_k[1] and all(len(v) == 2 for v in by_k[1].values())  # K = 3 support minus 1
    assert all(len(v) == 0 for v in by_k[3].values())


@pytest.mark.parametrize("protocol", ["user-cold", "warm", "item-cold", "user-item-cold", "cross"])
def test_a_support_blind_ranker_is_flat_along_the_k_curve(tmp_path, protocol):
    """Popularity ignores the support (beyond leaving it out of the ranking): with one
    query and one candidate set at every K, its curve must not move with K."""
    if protocol == "cross":
        cfg = _two_domain_config(tmp_path, "joint")
        cfg = dataclasses.replace(
            cfg, methods=E.load_config(TINY, only=["popularity"]).methods, shots=(1, 2)
        )
    else:
        cfg = E.load_config(
            TINY, [f"split.protocol='{protocol}'", "seeds=[0]", "shots=[1, 3]"], only=["popularity"]
        )
    results = E.run(cfg, None, progress=False)
    curve = {r.k_shot: r.result for r in results.runs if r.scenario == "curve"}
    assert len(curve) == 2
    lo, hi = sorted(curve)
    fixed = "the query is the same at every K" in results.protocol.get("curve_query", "")
    if protocol == "warm" and not fixed:  # held-out users may differ with K there
        pytest.skip("warm: this split keeps each K's own query")
    assert fixed, results.protocol.get("curve_query")
    for name in ("Recall@10 (full)", "nDCG@10 (full)", "MRR (full)"):
        np.testing.assert_array_equal(curve[lo].user_idx, curve[hi].user_idx)
        np.testing.assert_allclose(
            curve[lo].per_user[name], curve[hi].per_user[name], equal_nan=True, err_msg=name
        )


def test_max_test_users_caps_the_k_curve_after_its_intersection(tmp_path):
    """Each K's own first N users used to be intersected, leaving fewer than N (3 of a
    possible 5 in a probe); the cap now applies to the users shared by every K."""
    import pandas as pd

    log = pd.read_csv(TINY.parent / "tiny_log.csv")
    users = sorted(log["user_id"].unique())
    short = set(users[::2])  # every other user keeps 7 of 16 rows: no episode at K = 12
    log = log[~log["user_id"].isin(short) | (log.groupby("user_id").cumcount() < 7)]
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    (tmp_path / "tiny_items.csv").write_text((TINY.parent / "tiny_items.csv").read_text())
    cfg = E.load_config(
        TINY,
        [
            f"data.path='{path}'",
            "seeds=[0]",
            "shots=[1, 12]",
            "split.max_test_users=3",
            "split.test_frac=0.5",
        ],
        only=["popularity"],
        base_dir=str(tmp_path),
    )
    results = E.run(cfg, None, progress=False)
    curve = [r for r in results.runs if r.scenario == "curve"]
    main = next(r for r in results.runs if r.scenario == "main")
    assert len(main.result.user_idx) == 3
    assert {len(r.result.user_idx) for r in curve} == {3}


# --- resuming an interrupted run (metarec.resume) -------------------------------------------


def _tables(out: Path, timed: bool = True) -> dict:
    """results.json without what a resumed run legitimately changes (its wall time, the
    list of reused parts, the machine it ran on; with ``timed=False`` the fit times too,
    which a refit measures anew)."""
    data = json.loads((out / "results.json").read_text())
    for key in ("seconds", "reused", "environment"):
        data.pop(key)
    if not timed:
        for fit in data["fits"].values():
            fit.pop("fit_seconds"), fit.pop("fit_cpu_seconds")
    return data


def _counting_fits(monkeypatch) -> list[tuple[str, int]]:
    real, calls = E.fit_method, []

    def counted(spec, config, ds, split, feats, seed, progress):
        calls.append((spec.name, seed))
        return real(spec, config, ds, split, feats, seed, progress)

    monkeypatch.setattr(E, "fit_method", counted)
    return calls


def test_a_resumed_run_reuses_every_finished_part_and_writes_the_same_results(
    tiny_run, tmp_path, monkeypatch
):
    import shutil

    cfg, _, out = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    n_parts = len(cfg.seeds) * len(cfg.methods)
    assert len(list((copy / "partial").glob("seed*.json"))) == n_parts
    calls = _counting_fits(monkeypatch)
    results = E.run(cfg, copy, progress=False, resume=True)
    assert calls == []  # nothing was fitted again
    assert len(results.reused) == n_parts
    assert _tables(copy) == _tables(out)
    report = (copy / "report.md").read_text()
    assert f"Resumed run: {n_parts} (seed, method) results were read back" in report
    # without resume the parts are ignored (and rewritten): every method fits again
    E.run(cfg, copy, progress=False)
    assert len(calls) == n_parts
    assert _tables(copy, timed=False) == _tables(out, timed=False)


def test_an_interrupted_run_resumes_where_it_stopped(tiny_run, tmp_path, monkeypatch):
    cfg, _, out = tiny_run
    real = E.fit_method

    class Killed(Exception):  # what a Ctrl-C or a kill does: not a recorded failure
        pass

    def interrupted(spec, config, ds, split, feats, seed, progress):
        if (spec.name, seed) == ("Pooled", 1):
            raise Killed
        return real(spec, config, ds, split, feats, seed, progress)

    monkeypatch.setattr(E, "fit_method", interrupted)
    with pytest.raises(Killed):
        E.run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.setattr(E, "fit_method", real)
    calls = _counting_fits(monkeypatch)
    results = E.run(cfg, tmp_path / "run", progress=False, resume=True)
    names = [m.name for m in cfg.methods]
    # seed 0 and seed 1's MetaRec were kept; Pooled (seed 1) and the rest of seed 1 fit
    assert calls == [(n, 1) for n in names[names.index("Pooled") :]]
    assert {(r["method"], r["seed"]) for r in results.reused} == {
        *((n, 0) for n in names),
        ("MetaRec", 1),
    }
    assert _tables(tmp_path / "run", timed=False) == _tables(out, timed=False)


def test_a_changed_method_or_a_damaged_part_is_fitted_again(tiny_run, tmp_path, monkeypatch):
    import shutil

    cfg, _, out = tiny_run
    shutil.copytree(out, tmp_path / "r")
    first = cfg.methods[0]
    changed = dataclasses.replace(first, params={**first.params, "like_threshold": 3.5})
    cfg2 = dataclasses.replace(cfg, methods=(changed, *cfg.methods[1:]))
    from metarec.resume import part_path

    part_path(tmp_path / "r", 0, cfg.methods[1].name).write_text("{not json")
    calls = _counting_fits(monkeypatch)
    E.run(cfg2, tmp_path / "r", progress=False, resume=True)
    assert sorted(calls) == sorted(
        [(first.name, s) for s in cfg.seeds] + [(cfg.methods[1].name, 0)]
    )
    # another shared setting (the bootstrap) changes every part's figures: all refit
    calls.clear()
    E.run(dataclasses.replace(cfg, bootstrap=200), tmp_path / "r", progress=False, resume=True)
    assert len(calls) == len(cfg.seeds) * len(cfg.methods)


@pytest.mark.parametrize(
    "damage",
    ["not an object", "no runs", "no main run", "a curve point gone", "an edited metric"],
)
def test_a_part_that_is_not_whole_is_fitted_again(tiny_run, tmp_path, monkeypatch, damage):
    """A part that reads as JSON but is not what its fit wrote (a list, runs dropped, a
    figure edited) is refitted: one crashed the resume, and one with its runs gone was
    counted reused while the method dropped out of the table."""
    import shutil

    from metarec.resume import part_path

    cfg, _, out = tiny_run
    shutil.copytree(out, tmp_path / "r")
    name = cfg.methods[1].name
    path = part_path(tmp_path / "r", 0, name)
    part = json.loads(path.read_text())
    assert {r["scenario"] for r in part["runs"]} == {"main", "curve"}
    if damage == "not an object":
        part = []
    elif damage == "no runs":
        part["runs"] = []
    elif damage == "no main run":
        part["runs"] = [r for r in part["runs"] if r["scenario"] != "main"]
    elif damage == "a curve point gone":
        part["runs"] = part["runs"][:-1]
    else:
        part["runs"][0]["result"]["metrics"]["AUC"] = 0.99
    if damage != "not an object" and damage != "an edited metric":
        # the digest recomputed, as a tool rewriting the file would: the runs are checked
        from metarec.resume import _digest

        part["digest"] = _digest(part["runs"])
    path.write_text(json.dumps(part))
    calls = _counting_fits(monkeypatch)
    results = E.run(cfg, tmp_path / "r", progress=False, resume=True)
    assert calls == [(name, 0)]
    assert (name, 0) not in {(r["method"], r["seed"]) for r in results.reused}
    assert _tables(tmp_path / "r", timed=False) == _tables(out, timed=False)


def test_a_failed_fit_is_not_kept_so_a_resume_tries_it_again(tmp_path, monkeypatch):
    cfg = dataclasses.replace(E.load_config(TINY), shots=(), seeds=(0,))
    real = E.fit_method

    def failing(spec, config, ds, split, feats, seed, progress):
        if spec.name == "Pooled":
            raise MetarecError("train: the validation loss was inf at every evaluation")
        return real(spec, config, ds, split, feats, seed, progress)

    monkeypatch.setattr(E, "fit_method", failing)
    with pytest.warns(UserWarning):
        E.run(cfg, tmp_path / "f", progress=False)
    monkeypatch.setattr(E, "fit_method", real)
    calls = _counting_fits(monkeypatch)
    results = E.run(cfg, tmp_path / "f", progress=False, resume=True)
    assert calls == [("Pooled", 0)] and not results.failures


def test_the_data_fingerprint_reads_ratings_ids_and_item_text(tmp_path):
    from metarec.resume import data_hash

    cfg = E.load_config(TINY)
    ds = E.load_data(cfg)
    base = data_hash(ds)
    assert data_hash(E.load_data(cfg)) == base
    inter = ds.interactions
    rating = inter.rating.copy()
    rating[0] = 6 - rating[0]
    edited = dataclasses.replace(ds, interactions=dataclasses.replace(inter, rating=rating))
    assert data_hash(edited) != base
    frame = ds.item_table.frame.copy()
    frame.iloc[0, frame.columns.get_loc("title")] = "another title"
    table = dataclasses.replace(ds.item_table, frame=frame)
    assert data_hash(dataclasses.replace(ds, item_table=table)) != base


def test_an_added_seed_reuses_the_parts_of_the_others(tiny_run, tmp_path, monkeypatch):
    import shutil

    cfg, _, out = tiny_run
    shutil.copytree(out, tmp_path / "r")
    calls = _counting_fits(monkeypatch)
    E.run(dataclasses.replace(cfg, seeds=(*cfg.seeds, 7)), tmp_path / "r", False, resume=True)
    assert {seed for _, seed in calls} == {7} and len(calls) == len(cfg.methods)


def test_a_part_that_cannot_be_kept_is_warned_and_the_run_goes_on(tmp_path):
    cfg = dataclasses.replace(E.load_config(TINY), shots=(), seeds=(0,))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "partial").write_text("a file where the folder goes")
    with pytest.warns(UserWarning, match="could not keep .* .seed 0. in .* for --resume") as said:
        results = E.run(cfg, tmp_path / "o", progress=False)
    assert (tmp_path / "o" / "results.json").is_file() and not results.failures
    kept = [w for w in said if "blend skipped" not in str(w.message)]
    assert len(kept) == len(cfg.methods)  # one warning per method, each naming it


def test_the_features_fingerprint_reads_the_tensors():
    from metarec.resume import features_hash

    cfg = E.load_config(TINY)
    ds = E.load_data(cfg)
    feats = E.build_split_features(ds, ds.interactions.item_idx, cfg.text)
    moved = dataclasses.replace(feats, item_text=feats.item_text + 1e-6)
    assert features_hash(feats) == features_hash(dataclasses.replace(feats))
    assert features_hash(moved) != features_hash(feats)


def test_another_runs_partial_folder_is_not_an_output_folder(tiny_run):
    cfg, _, out = tiny_run
    with pytest.raises(MetarecError, match="is another run's partial/ folder"):
        E.run(cfg, out / "partial", progress=False)


def test_resume_needs_an_output_folder():
    with pytest.raises(MetarecError, match="resume needs an output folder"):
        E.run(E.load_config(TINY), None, progress=False, resume=True)


def test_cli_evaluate_resume(tmp_path, capsys):
    from metarec.cli import main

    args = ["evaluate", "--config", str(TINY), "--out", str(tmp_path / "o")]
    args += ["--set", "seeds=[0]", "--set", "shots=[]", "--only", "popularity"]
    assert main([*args, "--quiet"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "[seed 0] popularity: reused from partial/" in capsys.readouterr().err


def test_cli_evaluate_names_the_run_shaping_settings_left_to_defaults(tmp_path, capsys):
    """A config without seeds (or shots, or a dataset) ran the defaults without a word."""
    from metarec.cli import main

    text = TINY.read_text().replace("seeds = [0, 1]\n", "")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        text.replace('path = "tiny_log.csv"', f'path = "{TINY.parent / "tiny_log.csv"}"')
    )
    cfg.write_text(
        cfg.read_text().replace(
            'items = "tiny_items.csv"', f'items = "{TINY.parent / "tiny_items.csv"}"'
        )
    )
    args = ["evaluate", "--config", str(cfg), "--out", str(tmp_path / "o"), "--only", "popularity"]
    assert main([*args, "--set", "shots=[]"]) == 0
    err = capsys.readouterr().err
    assert "leaves to the defaults: seeds = 0, 1, 2" in err
    assert "shots" not in err.split("leaves to the defaults:")[1].splitlines()[0]
    # all given (in the file or by --set): no line
    assert main([*args, "--set", "shots=[]", "--set", "seeds=[0]"]) == 0
    assert "leaves to the defaults" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "named"),
    [
        # a baseline seed won on every experiment seed ("± over seeds" of one model)
        ("methods=[{name='biased_mf', params={seed=5}}]", "key 'seed' is not read by evaluate"),
        # an optional number given a string: a ValueError traceback at fit
        ("methods=[{name='ease', params={min_rating='abc'}}]", "should be a number"),
        # LightFM's own bare AssertionError
        ("methods=[{name='lightfm', params={loss='foo'}}]", "LightFM: loss 'foo' is not one of"),
        ("methods=[{name='biased_mf', params={factors=100000000}}]", "factors must be <= 4096"),
        # a seed in a grid of tables: overridden by the experiment's, recorded as chosen
        (
            "methods=[{name='M', kind='meta', grid={train=[{seed=5},{seed=6}]}}]",
            "train.seed is not read by evaluate",
        ),
    ],
)
def test_method_settings_that_failed_late_are_refused_at_load(override, named):
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.load_config(TINY, ["seeds=[0]", "shots=[]", override])


@pytest.mark.parametrize(
    ("method", "named"),
    [
        # min_rating=100 left EASE no liked row: nDCG 0, AUC 0.5, exit 0
        ("{name='ease', params={min_rating=100.0}}", "min_rating 100 is outside the ratings"),
        # np without the user vector: failed per seed (after training), exit 0
        (
            "{name='M', kind='meta', params={scorer={user_vector=false}}}",
            "method 'M': model.scorer.user_vector = false",
        ),
    ],
)
def test_method_settings_the_data_rules_out_fail_before_training(monkeypatch, method, named):
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]", f"methods=[{method}]"])
    monkeypatch.setattr(E, "fit_method", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(MetarecError, match=re.escape(named)):
        E.run(cfg, None, progress=False)


def test_np_without_the_user_vector_is_refused_for_transfer_methods_too():
    # TransferRecommender trains MetaRecommenders: it failed per seed with exit 0
    cfg = E.load_config(
        TINY,
        [
            "seeds=[0]",
            "shots=[]",
            "split.protocol='cross-domain'",
            "split.source='a'",
            "split.target='b'",
            "methods=[{name='T', kind='transfer', strategy='joint', "
            "params={scorer={user_vector=false}}}]",
        ],
    )
    with pytest.raises(MetarecError, match="method 'T': model.scorer.user_vector = false"):
        E.check_against_data(cfg, E.load_data(cfg))


def test_settings_a_fit_can_use_are_not_refused():
    # the bottom of the scale as min_rating (every rated item an interaction), and np
    # without the user vector where no np model trains, were refused by stricter checks
    from metarec.model import ModelConfig, check_np_user_vector

    cfg = E.load_config(
        TINY, ["seeds=[0]", "shots=[]", "methods=[{name='ease', params={min_rating=1.0}}]"]
    )
    E.check_against_data(cfg, E.load_data(cfg))
    no_np = ModelConfig.from_dict({"scorer": {"user_vector": False}, "rank_model": False})
    check_np_user_vector(no_np, explicit=True)  # the ranking model never trains
    with pytest.raises(MetarecError, match="rank_meta.algorithm is 'np'"):
        check_np_user_vector(no_np, explicit=False)  # implicit: it does


def test_a_log_of_one_rating_value_is_named_not_given_an_empty_interval(tmp_path, monkeypatch):
    # "set threshold to a value in (5, 5]": advice nobody could follow
    log = (TINY.parent / "tiny_log.csv").read_text().splitlines()
    rows = [r.split(",") for r in log[1:]]
    (tmp_path / "all5.csv").write_text(
        log[0] + "\n" + "".join(f"{u},{i},5,{t}\n" for u, i, _, t in rows)
    )
    (tmp_path / "tiny_items.csv").write_text((TINY.parent / "tiny_items.csv").read_text())
    cfg = E.load_config(
        TINY,
        [
            "seeds=[0]",
            "shots=[]",
            "threshold=5.0",
            f"data.path='{tmp_path / 'all5.csv'}'",
            "data.options={items='tiny_items.csv', text_cols=['title']}",
            "methods=[{name='popularity'}]",
        ],
        base_dir=str(tmp_path),
    )
    monkeypatch.setattr(E, "fit_method", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(MetarecError, match="every rating of 'all5' is 5: nothing to learn"):
        E.run(cfg, None, progress=False)


def test_a_numbered_domain_is_taken_as_its_name():
    # domains 1 and 2 are "1" and "2" in the files and in `recommend --domain 1`; a bare
    # `--set split.source=1` arrived as a number and was refused ("expected a string")
    from metarec.config import from_dict
    from metarec.experiment import SplitConfig

    cfg = from_dict(SplitConfig, {"protocol": "cross-domain", "source": 1, "target": "2"}, "split")
    assert (cfg.source, cfg.target) == ("1", "2")
    with pytest.raises(MetarecError, match="split.source: expected a string, got True"):
        from_dict(SplitConfig, {"protocol": "cross-domain", "source": True}, "split")


def test_results_go_to_a_folder_of_their_own_not_into_a_run(tmp_path):
    # evaluate wrote results.json, plots and partial/ into a RUN, which the next
    # `fit --out` there then refused as a RUN holding files it did not write
    import json

    run = tmp_path / "RUN"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"format_version": 1, "files": {}}))
    for out in (run, run / "sub"):
        with pytest.raises(MetarecError, match="a metarec RUN|inside the RUN"):
            E.check_output_dir(out)
    E.check_output_dir(tmp_path / "results")


def test_quickstart_refuses_an_empty_shot_and_endless_seeds(tmp_path, capsys):
    from metarec.cli import main

    for flags, said in (
        (["--shots", ",,"], "want comma-separated integers"),
        (["--shots", "1,,3"], "want comma-separated integers"),
        (["--seeds", "100000"], "--seeds must be in [1, 100]"),
    ):
        assert main(["quickstart", "--out", str(tmp_path / "q"), *flags]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1
    assert not (tmp_path / "q").exists()


def test_arguments_that_had_been_dropped_are_checked(tmp_path):
    """valid_items without valid were dropped unchecked; a joint transfer took any
    source_domain without a look; PooledRecommender(finetune_steps=2.5) ran 2 steps as
    "Pooled+FT2.5", and a dict config was an AttributeError."""
    from metarec.model import MetaRecommender
    from metarec.transfer import PooledRecommender, TransferRecommender

    cfg = _two_domain_config(tmp_path, "joint")
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    with pytest.raises(
        MetarecError,
        match=r"valid_items are the items validation tasks rank over; give the tasks too",
    ):
        MetaRecommender().fit(ds, split.train, valid_items=np.array([1, 2]))
    with pytest.raises(MetarecError, match=r"source_domain 'music' is neither a domain index"):
        TransferRecommender(strategy="joint").fit(
            ds, split.train, valid=split.valid, source_domain="music"
        )
    for steps in (2.5, True, "3"):
        with pytest.raises(MetarecError, match=r"finetune_steps must be an integer"):
            PooledRecommender(finetune_steps=steps)
    with pytest.raises(MetarecError, match=r"Pooled: config must be a ModelConfig, got dict"):
        PooledRecommender({"k_shot": 3})
    assert PooledRecommender(finetune_steps=np.int64(2)).name == "Pooled+FT2"


def test_an_experiment_without_validation_users_fits_its_meta_model(tmp_path):
    # valid_frac = 0: no validation tasks, so no validation items are passed with them (item
    # cold-start has held-out items; fit refuses items without tasks)
    cfg = dataclasses.replace(
        E.load_config(
            TINY,
            [
                "split.protocol='item-cold'",
                "split.valid_frac=0",
                "seeds=[0]",
                "shots=[]",
                "model.train.steps=5",
            ],
            only=["MetaRec"],
        )
    )
    results = E.run(cfg, tmp_path, progress=False)
    assert results.runs_of("MetaRec", cfg.split.k_shot)
    # the report's "0 validation users" says where the meta fit's own came from (its
    # blend-skipped note counts those, and read as a contradiction)
    from metarec.report import render_markdown

    said = render_markdown(results, {})
    assert "0 validation users (meta fits hold out their own from the training users)" in said


def test_evaluate_says_what_preprocessing_removed_and_counts_unrated_items(tmp_path):
    """evaluate and split ran the default dedupe (and any k-core) without a word; the
    report's item count left out the catalogue items nobody rated, which "(full)" ranks
    (probe 134)."""
    log = pd.read_csv(TINY.parent / "tiny_log.csv")
    dup = log.head(30).assign(rating=1, timestamp=log.head(30).timestamp + 1)
    pd.concat([log, dup]).to_csv(tmp_path / "log.csv", index=False)
    items = pd.read_csv(TINY.parent / "tiny_items.csv")
    extra = pd.DataFrame({"item_id": ["never1", "never2"], "title": ["Unread A", "Unread B"]})
    pd.concat([items, extra]).to_csv(tmp_path / "items.csv", index=False)
    cfg = E.load_config(
        TINY,
        [
            f'data.path="{tmp_path / "log.csv"}"',
            f'data.options.items="{tmp_path / "items.csv"}"',
            "seeds=[0]",
            "shots=[]",
        ],
        only=["popularity"],
    )
    with pytest.warns(UserWarning, match=r"30 of 670 rows of .*log.csv removed by .*'dedupe'"):
        results = E.run(cfg, tmp_path / "out", progress=False)
    steps = {r["step"]: r for r in results.dataset["preprocessing"]}
    assert steps["dedupe"]["rows_before"] - steps["dedupe"]["rows_after"] == 30
    report = (tmp_path / "out" / "report.md").read_text()
    n = items["item_id"].nunique()
    assert f"{n} items rated, {n + 2} in the catalogue" in report
    assert "preprocessing removed rows: 30 by dedupe" in report


def test_the_report_says_how_many_users_have_no_auc(tiny_run):
    """A query of liked items only (or none) has no AUC; on a log of positives alone
    every AUC cell was "–" and the report did not say why (probe 134)."""
    from metarec.report import render_markdown

    cfg, results, out = tiny_run
    split = E.cut_split(E.load_data(cfg), cfg, cfg.seeds[0], cfg.split.k_shot)
    n = len(split.test)
    for threshold in (cfg.threshold, 5.0):  # at 5 many queries hold no liked item
        liked = [set((t.query.rating >= threshold).tolist()) for t in split.test]
        assert E._one_class(split.test, threshold) == sum(len(v) == 1 for v in liked)
    assert results.protocol["one_class_queries"] == E._one_class(split.test, cfg.threshold)
    some = E._one_class(split.test, 5.0)
    assert 0 < some < n
    for count, tail in ((some, ", and averages the rest"), (n, ": every AUC cell is empty")):
        protocol = {**results.protocol, "one_class_queries": count}
        text = render_markdown(dataclasses.replace(results, protocol=protocol), {})
        assert f"AUC is undefined for {count} of {n} test users (seed 0), whose query " in text
        assert "holds only relevant or only non-relevant items" + tail in text
    none = {**results.protocol, "one_class_queries": 0}
    assert "AUC is undefined" not in render_markdown(
        dataclasses.replace(results, protocol=none), {}
    )


@pytest.mark.parametrize(
    "key, said",
    [
        ("path", "data.options.path: not a loader option; give it as data.path"),
        ("preprocess", "data.options.preprocess: not a loader option; give it as the [data"),
    ],
)
def test_data_options_naming_a_data_key_are_one_line(key, said):
    # probe 137: they collided with load_dataset's own arguments, a TypeError traceback
    cfg = E.load_config(TINY, [f'data.options.{key}="x"'])
    with pytest.raises(MetarecError) as err:
        E.load_data(cfg)
    assert said in str(err.value)


def test_results_never_replace_files_an_earlier_run_did_not_write(tmp_path, tiny_run):
    # probe 137: evaluate --out on a data folder replaced the user's own report.md without
    # a word; an earlier run's results (vouched for by its results.json) are replaced
    _, _, out = tiny_run
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    (mine / "T.csv").write_text("user_id,item_id,rating\n")
    with pytest.raises(MetarecError, match=r"holds report.md, not written by `metarec evaluate`"):
        E.check_output_dir(mine)
    (mine / "results.json").write_text('{"mine": 1}')  # a results.json of one's own too
    with pytest.raises(MetarecError, match=r"holds results.json, report.md, not written"):
        E.check_output_dir(mine)
    (mine / "results.json").unlink()
    (mine / "report.md").unlink()
    E.check_output_dir(mine)  # other files beside the results are left alone
    E.check_output_dir(out)  # an earlier run's results folder: replaced


def test_a_lowered_inner_step_is_recorded_and_a_transfer_target_starts_at_it(tmp_path, monkeypatch):
    # probe 136: results.json's config named the configured inner_lr while the model
    # trained at an eighth of it, and the target of a parameter transfer started again at
    # the step its source had diverged at; its retry warnings read as the source's and
    # Python's filter showed them once
    import warnings

    import metarec.model as M
    from metarec.train import MetaLossDiverged

    cfg = _two_domain_config(tmp_path, "parameter")
    tried, real = [], M.train

    def train(split, feats, sc, meta, tcfg, **kw):
        tried.append((sc.head, "init" in kw, meta.inner_lr))
        if sc.head == "rating" and meta.inner_lr > 0.02:
            raise MetaLossDiverged("train: meta-loss is inf at step 1 (probe)", 1)
        return real(split, feats, sc, meta, tcfg, **kw)

    monkeypatch.setattr(M, "train", train)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("default")
        results = E.run(cfg, tmp_path / "out", progress=False)
    texts = [str(w.message) for w in said]
    assert any(t.startswith("the source rating model's meta-loss") for t in texts), texts
    # the target started at the source's 0.0125: never at the configured 0.05 again
    target = [lr for head, init, lr in tried if head == "rating" and init]
    assert target and set(target) == {0.0125}
    fits = results.to_json()["fits"]["T"]
    assert fits["trained_with"] == [
        {"source rating model meta.inner_lr": 0.0125, "target rating model meta.inner_lr": 0.0125}
    ]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "trained with a lower step than configured" in report
    assert "target rating model meta.inner_lr 0.0125" in report


def test_a_model_key_at_the_top_of_an_experiment_points_to_model():
    # probe 136: `evaluate --set train.steps=5` said only "unknown config key 'train'"
    with pytest.raises(MetarecError, match=r"'train': a model setting, .* under \[model\]"):
        E.load_config(TINY, ["train.steps=5"])


def test_transfer_on_one_domain_is_refused_by_every_strategy():
    # probe 136: joint training fitted a plain MetaRec named Transfer-joint without a word
    from metarec.transfer import TransferRecommender

    cfg = E.load_config(TINY)
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    for strategy in ("joint", "parameter", "feature"):
        with pytest.raises(MetarecError, match=f"transfer {strategy}: the data has one domain"):
            TransferRecommender(strategy=strategy).fit(ds, split.train)


def test_a_split_failing_after_max_users_says_it_may_be_why(tmp_path):
    # probe 136: Amazon's users in both domains come last in file order; any max_users
    # below them failed with "no user has interactions in both", naming no setting
    cfg = _two_domain_config(tmp_path, "joint")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_users=1))
    with pytest.raises(MetarecError, match=r"data.max_users = 1 kept only the first 1 users"):
        E.cut_split(E.load_data(cfg), cfg, 0, cfg.split.k_shot)


def test_model_key_hints_leave_keys_evaluate_sets_to_their_own_reasons():
    # review 138: "--set seed=1" was sent to model.seed, which evaluate then refuses;
    # the nearest experiment key is named instead
    with pytest.raises(MetarecError, match=r"did you mean 'seeds'"):
        E.load_config(TINY, ["seed=1"])


def test_the_max_users_note_is_left_off_errors_it_cannot_cause(tmp_path):
    cfg = _two_domain_config(tmp_path, "joint")
    split = dataclasses.replace(cfg.split, source="nowhere")
    cfg = dataclasses.replace(cfg, split=split, data=dataclasses.replace(cfg.data, max_users=30))
    with pytest.raises(MetarecError) as err:
        E.cut_split(E.load_data(cfg), cfg, 0, cfg.split.k_shot)
    assert "nowhere" in str(err.value) and "max_users" not in str(err.value)


def test_a_first_write_killed_part_way_leaves_files_a_rerun_may_replace(
    tmp_path, tiny_run, monkeypatch
):
    # review 138: the renames ran in name order, so a kill -9 after the first left a
    # methods.png without results.json, and every rerun there was refused as foreign files
    _, results, _ = tiny_run
    out = tmp_path / "out"
    real, moved = os.replace, []

    def killed_after_one(src, dst):
        real(src, dst)
        moved.append(Path(dst).name)
        if len(moved) == 1:
            raise KeyboardInterrupt  # stands for the kill: the rollback is not looked at

    monkeypatch.setattr(E.os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        E.write_results(results, out)
    monkeypatch.setattr(E.os, "replace", real)
    assert moved == ["results.json"]


def test_the_report_says_how_many_users_the_full_metrics_leave_out(tiny_run):
    # probe 140: the report said "50 test users" beside a verdict metric averaged over 47;
    # users whose query holds no relevant item have no full-catalogue figure
    from metarec.report import render_markdown

    cfg, results, _ = tiny_run
    split = E.cut_split(E.load_data(cfg), cfg, cfg.seeds[0], cfg.split.k_shot)
    want = sum(not (t.query.rating >= cfg.threshold).any() for t in split.test)
    assert results.protocol["no_relevant_queries"] == want
    n_full = results.summary("main")["MetaRec"]["nDCG@10 (full)"]["n_users"][0]
    assert n_full == len(split.test) - want
    text = render_markdown(results, {})
    said = f"undefined for {want} of {len(split.test)} test users"
    assert (said in text) == (want > 0)
    # this split has no such user: the sentence, for a count the report is handed
    two = dataclasses.replace(results, protocol={**results.protocol, "no_relevant_queries": 2})
    assert (
        f"every (full) metric is undefined for 2 of {len(split.test)} test users"
        in render_markdown(two, {})
    )


def test_the_report_says_a_cross_domain_split_leaves_other_domains_out(tiny_run):
    # probe 163: on a 4-domain log a books -> music split trained on books and music only
    # (half the log), and report.md said nothing; `fit` on that log learns from all four
    from metarec.report import render_markdown

    _, results, _ = tiny_run
    cross = {**results.protocol, "source": "books", "target": "music"}
    left = {**cross, "split_summary": {"other_domain_interactions_left_out": 1777}}
    said = "the 1777 interactions in other domains are left out of training"
    assert said in render_markdown(dataclasses.replace(results, protocol=left), {})
    none = {**cross, "split_summary": {"other_domain_interactions_left_out": 0}}
    assert "other domains" not in render_markdown(dataclasses.replace(results, protocol=none), {})


def test_results_record_the_data_code_and_threads_behind_the_figures(tiny_run, tmp_path):
    # probe 140: two logs of the same shape (two ratings swapped) gave other figures under
    # an identical record: sizes, config and package versions (0.1.0 on every commit)
    import torch

    from metarec import resume

    cfg, results, _ = tiny_run
    doc = results.to_json()
    assert doc["dataset"]["sha256"] == resume.data_hash(E.load_data(cfg))
    assert doc["environment"]["metarec_code_sha256"] == resume.code_hash()
    assert doc["environment"]["torch_threads"] == torch.get_num_threads()
    # the processor and torch's kernel set: one code, data and package set gave the
    # quickstart two MetaRec nDCG@10 figures on two machines (probe 149)
    cpu = doc["environment"]["cpu"]
    assert set(cpu) == {"model", "machine", "torch_capability"}
    assert cpu["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    # the recorded config feeds back: left_out = [] (a run without --only) says nothing
    back = E.load_config(TINY, ["left_out=[]"])
    assert back.left_out == ()


def test_a_part_run_on_another_thread_count_is_not_reused(monkeypatch):
    # probe 140: figures move in their last bits with the thread count, and --resume on
    # 1 thread reused parts run on 2 without a word
    import torch

    from metarec import resume

    cfg = E.load_config(TINY)
    spec = cfg.methods[0]
    env = E.environment()
    one = resume.fingerprint(cfg, spec, 0, "d", env)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    assert resume.fingerprint(cfg, spec, 0, "d", env) != one
    monkeypatch.undo()
    # nor one run on another processor's kernels (probe 149)
    other = {**env, "cpu": {**env["cpu"], "torch_capability": "NO-SIMD"}}
    assert resume.fingerprint(cfg, spec, 0, "d", other) != one
    assert resume.fingerprint(cfg, spec, 0, "d", env) == one


def test_a_scale_only_test_queries_reach_is_refused_until_declared(tmp_path, monkeypatch):
    """A csv log's scale is read from its lowest and highest rating, test rows included;
    one test query rated 6 on a 1-5 log moved every model's units, like threshold and
    clipping (probe 153). Refused before any fit, naming data.options.rating_range; with
    the scale declared the run goes on."""
    import shutil

    for f in ("tiny_experiment.toml", "tiny_items.csv"):
        shutil.copy(TINY.parent / f, tmp_path / f)
    log = pd.read_csv(TINY.parent / "tiny_log.csv")
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]"])
    split = E.cut_split(E.load_data(cfg), cfg, 0, cfg.split.k_shot)
    ds = E.load_data(cfg)
    t = split.test[0]
    user, item = ds.users.ids[t.user_idx], ds.items.ids[t.query.item_idx[0]]
    row = (log["user_id"] == user) & (log["item_id"] == item)
    assert row.sum() == 1
    log.loc[row, "rating"] = 6
    log.to_csv(tmp_path / "tiny_log.csv", index=False)
    mine = tmp_path / "tiny_experiment.toml"

    _stop_at_fit(monkeypatch)
    with pytest.raises(MetarecError, match=r"scale 1\.\.6 was read from every row .* seed 0 "):
        E.run(E.load_config(mine, ["seeds=[0]", "shots=[]", "fail_fast=true"]), None)
    declared = 'data.options={items="tiny_items.csv", text_cols=["title"], rating_range=[1, 6]}'
    with pytest.raises(_Trained):
        E.run(E.load_config(mine, ["seeds=[0]", "shots=[]", "fail_fast=true", declared]), None)
    # the untouched log: its ends are in the training rows, nothing to declare
    with pytest.raises(_Trained):
        E.run(E.load_config(TINY, ["seeds=[0]", "shots=[]", "fail_fast=true"]), None)


def test_the_scale_check_covers_every_k_curve_split(monkeypatch):
    """Each K of the curve recuts the split: a test query there may be the only row that
    reaches the scale's end (a K=1 user's query holds what K=3 put in the support), so
    every curve split is checked with the main one, before any fit."""
    curve_made, checked = [], []
    real_curve, real_check = E._curve_split, E._check_scale_from_training

    def curve(*a, **k):
        curve_made.append(real_curve(*a, **k))
        return curve_made[-1]

    def check(ds, config, seed, splits):
        checked.extend(splits)
        return real_check(ds, config, seed, splits)

    monkeypatch.setattr(E, "_curve_split", curve)
    monkeypatch.setattr(E, "_check_scale_from_training", check)
    _stop_at_fit(monkeypatch)
    with pytest.raises(_Trained):
        E.run(E.load_config(TINY, ["seeds=[0]", "shots=[1, 3]", "fail_fast=true"]), None)
    assert curve_made and all(any(s is c for c in checked) for s in curve_made)


def test_the_skipped_blend_names_each_half_that_was_dropped():
    """_blend_skipped, what results.json's fits say was not fitted: the ranking and the
    rating halves are dropped for their own reasons, and where both were, both are said
    (the rating stack's drop is recorded beside the ranking blend's, review 156)."""
    from types import SimpleNamespace

    both = SimpleNamespace(rank_blend_skipped_="no positive", rating_blend_skipped_="it fell")
    assert E._blend_skipped(both) == "ranking blend: no positive; rating blend: it fell"
    rating = SimpleNamespace(rating_blend_skipped_="it fell")
    assert E._blend_skipped(rating) == "rating blend: it fell"
    whole = SimpleNamespace(blend_skipped_="too few users", rating_blend_skipped_="it fell")
    assert E._blend_skipped(whole) == "too few users"
    assert E._blend_skipped(SimpleNamespace()) == ""


def test_lastfm_log_plays_scale_is_checked_as_a_csv_scale():
    """lastfm-hetrec with plays='log' runs its scale to the largest log play count, which
    may be one test user's: checked as a csv log's scale (its rating_range declares it);
    plays='label' is implicit and a csv log with rating_range declared is not checked."""
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]"])
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    t = split.test[0]
    top = dataclasses.replace(t.query, rating=np.full(len(t.query), 6.0, np.float32))
    split = dataclasses.replace(split, test=(dataclasses.replace(t, query=top), *split.test[1:]))
    wide = dataclasses.replace(ds, rating_range=(1.0, 6.0))

    def data(name, **options):
        return dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, name=name, options=options)
        )

    with pytest.raises(MetarecError, match=r"data.options.rating_range = \[1, 6\]"):
        E._check_scale_from_training(wide, data("lastfm-hetrec", plays="log"), 0, [split])
    E._check_scale_from_training(wide, data("lastfm-hetrec", plays="label"), 0, [split])
    E._check_scale_from_training(wide, data("csv", rating_range=[1, 6]), 0, [split])
    with pytest.raises(MetarecError, match="only test queries reach it"):
        E._check_scale_from_training(wide, data("csv"), 0, [split])


def test_the_scale_check_reads_every_rating_the_models_see():
    """_check_scale_from_training refuses a scale's end that only test queries reach. The
    models see the training rows, the validation tasks (support and query) and the test
    supports: an end one of those reaches is not refused. A parquet log's scale is read
    as a csv log's, and checked; an implicit log has none to check; a test query below
    every rating the models see is refused as one above."""
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]"])
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    assert split.valid and len(split.test) > 1

    def rated(t, part, value):
        got = getattr(t, part)
        got = dataclasses.replace(got, rating=np.full(len(got), value, np.float32))
        return dataclasses.replace(t, **{part: got})

    def data(name, **options):
        return dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, name=name, options=options)
        )

    wide = dataclasses.replace(ds, rating_range=(1.0, 6.0))
    top = dataclasses.replace(split, test=(rated(split.test[0], "query", 6.0), *split.test[1:]))
    for name in ("csv", "parquet"):
        with pytest.raises(MetarecError, match="only test queries reach it"):
            E._check_scale_from_training(wide, data(name), 0, [top])
    E._check_scale_from_training(
        dataclasses.replace(wide, feedback="implicit"), data("csv"), 0, [top]
    )
    # 6 reached where the models see it: a validation query, a test user's support
    seen = [
        dataclasses.replace(top, valid=(rated(top.valid[0], "query", 6.0), *top.valid[1:])),
        dataclasses.replace(
            top, test=(top.test[0], rated(top.test[1], "support", 6.0), *top.test[2:])
        ),
    ]
    for sp in seen:
        E._check_scale_from_training(wide, data("csv"), 0, [sp])
    low = dataclasses.replace(split, test=(rated(split.test[0], "query", 0.0), *split.test[1:]))
    with pytest.raises(MetarecError, match=r"rating_range = \[0, 5\]"):
        E._check_scale_from_training(
            dataclasses.replace(ds, rating_range=(0.0, 5.0)), data("csv"), 0, [low]
        )


def test_split_features_fit_the_user_side_on_the_split_training_users(tiny_dataset, tmp_path):
    """build_split_features(train_users=...): the user side statistics are fitted on those
    users alone, as item side ones on the training items. A test user's profile (u2's age
    99) moved every training user's z-scores (probe 153); it moves only its own row."""
    from metarec.model import TextConfig

    text = TextConfig(model="hashing:64", cache=str(tmp_path / "emb"))
    items = np.arange(tiny_dataset.n_items)
    fit = np.array([tiny_dataset.users.index(u) for u in ("u0", "u1")])
    u2 = tiny_dataset.users.index("u2")
    frame = tiny_dataset.user_table.frame.copy()
    frame.loc[u2, "age"] = 99.0
    other = dataclasses.replace(
        tiny_dataset, user_table=dataclasses.replace(tiny_dataset.user_table, frame=frame)
    )
    a = E.build_split_features(tiny_dataset, items, text, fit).user_side.numpy()
    b = E.build_split_features(other, items, text, fit).user_side.numpy()
    np.testing.assert_array_equal(a[fit], b[fit])
    assert not np.array_equal(a[u2], b[u2])


def test_evaluate_fits_the_user_side_statistics_on_the_training_users(monkeypatch):
    """evaluate builds each split's features with the user side statistics fitted on the
    split's training users: on every user, the test users' ages moved the training
    (probe 153). Review 156 found the experiment's path untested."""
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]", "fail_fast=true"])
    split = E.cut_split(E.load_data(cfg), cfg, 0, cfg.split.k_shot)
    seen = []
    real = E.build_split_features

    def spy(ds, train_items, text, train_users=None):
        seen.append(None if train_users is None else set(np.asarray(train_users).tolist()))
        return real(ds, train_items, text, train_users)

    monkeypatch.setattr(E, "build_split_features", spy)
    _stop_at_fit(monkeypatch)
    with pytest.raises(_Trained):
        E.run(cfg, None)
    assert seen and seen[0] == set(split.train.user_idx.tolist())
    assert not seen[0] & {t.user_idx for t in split.test}


def test_one_experiment_writes_to_a_folder_at_a_time(tmp_path, capsys):
    """A second run given a folder another run is writing to is refused in one line
    naming that run's pid, and writes nothing there (both ran, and the later one's files
    replaced the earlier's one by one: one run's results.json beside another's
    report.md). The hold is released at the end, and a run that failed leaves no folder
    it made."""
    import os

    from metarec.atomic import LOCK_NAME, exclusive_folder
    from metarec.cli import main

    out = tmp_path / "busy"
    argv = ["evaluate", "--config", str(TINY), "--out", str(out), "--quiet"]
    argv += ["--set", "seeds=[0]", "--set", "shots=[]", "--only", "popularity"]
    with exclusive_folder(out, "experiment"):
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert (
            err.count("\n") == 0
            and f"being written by another experiment (pid {os.getpid()})" in err
        )
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert not out.exists()  # made by the hold, left empty
    assert main(argv) == 0
    assert (out / "results.json").is_file() and not (out / LOCK_NAME).exists()
    # a run that fails (here: data the config cannot read) leaves no folder it made
    fresh = tmp_path / "fresh"
    bad = ["evaluate", "--config", str(TINY), "--out", str(fresh), "--quiet"]
    assert main([*bad, "--set", "data.path='/nonexistent/log.csv'"]) == 2
    assert not fresh.exists()
