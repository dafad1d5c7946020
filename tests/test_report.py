"""report.md rendering on hand-made results: bold best cells, the honest verdict, the
single-seed format and the missing-matplotlib error."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from metarec import report
from metarec.evaluate import EvalResult
from metarec.experiment import ExperimentConfig, MethodRun, Results
from metarec.types import MetarecError

NDCG = "nDCG@10 (full)"


def _result(name: str, rmse: float, ndcg: float, per_user_ndcg=None) -> EvalResult:
    pu = np.array(per_user_ndcg if per_user_ndcg is not None else [ndcg, ndcg])
    return EvalResult(
        model=name,
        metrics={"RMSE": rmse, NDCG: ndcg},
        per_user={"RMSE": np.array([rmse, rmse]), NDCG: pu},
        ci95={"RMSE": (rmse - 0.1, rmse + 0.1), NDCG: (ndcg - 0.05, ndcg + 0.05)},
        n_users={"RMSE": 2, NDCG: 2},
        user_idx=np.array([7, 8]),
        primary_metric=NDCG,
        greater_is_better=True,
    )


def _results(values: dict[str, list[tuple[float, float]]], kinds: dict[str, str]) -> Results:
    seeds = len(next(iter(values.values())))
    cfg = ExperimentConfig.from_dict(
        {
            "seeds": list(range(seeds)),
            "shots": [],
            "metrics": ["RMSE", NDCG],
            "methods": [{"name": n, "kind": kinds[n]} for n in values],
        }
    )
    runs = tuple(
        MethodRun(n, kinds[n], s, 10, _result(n, r, d), 1.0, {}, ())
        for n, vals in values.items()
        for s, (r, d) in enumerate(vals)
    )
    protocol = {"dataset": "toy", "protocol": "user-cold", "n_query": 10, "text": {}}
    return Results(cfg, {"name": "toy", "feedback": "explicit"}, protocol, runs, 3.0)


def test_table_bolds_the_best_mean_in_each_direction_and_says_when_meta_loses():
    res = _results(
        {"Meta": [(1.0, 0.1), (1.2, 0.2)], "Base": [(0.9, 0.3), (0.9, 0.3)]},
        {"Meta": "meta", "Base": "baseline"},
    )
    table = res.summary()
    assert table["Meta"]["RMSE"]["mean"] == pytest.approx(1.1)
    assert table["Meta"]["RMSE"]["std"] == pytest.approx(np.std([1.0, 1.2], ddof=1))
    md = report.markdown_table(res, table, ["RMSE", NDCG])
    lines = md.splitlines()
    assert lines[0] == "| method | kind | RMSE ↓ | nDCG@10 (full) ↑ |"
    assert lines[2] == "| Meta | meta | 1.1000 ± 0.1414 | 0.1500 ± 0.0707 |"
    # lower RMSE is better, higher nDCG is better: both best cells are the baseline's
    assert lines[3] == "| Base | baseline | **0.9000 ± 0.0000** | **0.3000 ± 0.0000** |"
    v = report.verdict(res, table, NDCG)
    assert v.startswith(
        "**The default meta-learned method does not beat the best method without "
        "meta-learning on nDCG@10"
    )
    assert "Meta = 0.1500, Base = 0.3000" in v
    text = report.render_markdown(res, {})
    assert "*Protocol:* dataset **toy**, split **user-cold**, K = 10" in text
    assert v in text


def test_a_pipe_in_a_method_name_keeps_its_row_in_its_columns():
    res = _results(
        {"pop|ular": [(1.0, 0.1)], "Base": [(0.9, 0.3)]},
        {"pop|ular": "baseline", "Base": "baseline"},
    )
    row = report.markdown_table(res, res.summary(), [NDCG]).splitlines()[2]
    assert row.startswith("| pop\\|ular | baseline | ")
    assert row.replace("\\|", "").count("|") == 4  # three cells, as the header has


def test_verdict_when_meta_wins_flags_overlapping_spread():
    res = _results(
        {"Meta": [(1.0, 0.30), (1.0, 0.40)], "Base": [(1.0, 0.32), (1.0, 0.32)]},
        {"Meta": "meta", "Base": "baseline"},
    )
    v = report.verdict(res, res.summary(), NDCG)
    assert v.startswith("The default meta-learned method, Meta, beats the best method without")
    assert "0.3500 vs 0.3200" in v
    assert "not a clear win" in v  # 0.03 gap < std 0.0707


def test_one_seed_shows_the_bootstrap_interval():
    res = _results(
        {"Meta": [(1.0, 0.1)], "Base": [(0.9, 0.3)]}, {"Meta": "meta", "Base": "baseline"}
    )
    md = report.markdown_table(res, res.summary(), [NDCG])
    # a single run keeps evaluate's own interval (ndcg ± 0.05 in the fake results)
    assert "| Meta | meta | 0.1000 [0.050, 0.150] |" in md
    text = report.render_markdown(res, {})
    # one seed: no "mean ± std over seeds" before the sentence that says cells are CIs
    assert "One seed only" in text and "mean ± std over seeds" not in text
    assert "Relevant = rating >= " in text and "label 1 (implicit)" not in text  # explicit
    implicit = dataclasses.replace(res, dataset={"name": "toy", "feedback": "implicit"})
    said = report.render_markdown(implicit, {})
    assert "Relevant = label 1;" in said and "rating >=" not in said
    assert "not calibrated" not in said  # no cut-off metric has a value here

    # the cut-off metrics of an uncalibrated like score are flagged where shown
    def renamed(r: EvalResult) -> EvalResult:
        return dataclasses.replace(
            r,
            **{
                f: {("Logloss" if k == "RMSE" else k): v for k, v in getattr(r, f).items()}
                for f in ("metrics", "per_user", "ci95", "n_users")
            },
        )

    logloss = dataclasses.replace(
        implicit,
        config=dataclasses.replace(implicit.config, metrics=("Logloss", NDCG)),
        runs=tuple(dataclasses.replace(r, result=renamed(r.result)) for r in implicit.runs),
    )
    said = report.render_markdown(logloss, {})
    assert "Relevant = label 1. Accuracy, Precision, Recall, F1 and Logloss read" in said
    assert "is not calibrated, so read the order-based metrics" in said


def test_plots_without_matplotlib_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    res = _results({"Meta": [(1.0, 0.1)]}, {"Meta": "meta"})
    with pytest.raises(MetarecError, match=r"metarec\[plots\]"):
        report.write_plots(res, tmp_path)


def test_verdict_judges_the_default_not_the_best_variant_on_test():
    """The first meta method is the default; a better variant on test is named, not chosen;
    the pooled twin counts among the methods to beat."""
    res = _results(
        {
            "Meta": [(1.0, 0.30), (1.0, 0.30)],
            "Meta-b": [(1.0, 0.50), (1.0, 0.50)],
            "Pooled": [(1.0, 0.40), (1.0, 0.40)],
            "Base": [(1.0, 0.20), (1.0, 0.20)],
        },
        {"Meta": "meta", "Meta-b": "meta", "Pooled": "pooled", "Base": "baseline"},
    )
    v = report.verdict(res, res.summary(), NDCG)
    assert "does not beat" in v and "Meta = 0.3000, Pooled = 0.4000" in v
    assert "Variant Meta-b scores 0.5000 on test" in v and "selecting on test" in v


def test_a_run_without_the_configs_default_gives_no_verdict_on_it(tmp_path):
    # --only "MetaRec-np,popularity" judged MetaRec-np as "the default meta-learned
    # method": the first meta method left. load_config keeps the full config's default
    from metarec.experiment import load_config

    res = _results(
        {"Meta-b": [(1.0, 0.50), (1.0, 0.50)], "Base": [(1.0, 0.20), (1.0, 0.20)]},
        {"Meta-b": "meta", "Base": "baseline"},
    )
    gone = dataclasses.replace(res, config=dataclasses.replace(res.config, default_method="Meta"))
    v = report.verdict(gone, gone.summary(), NDCG)
    assert v.startswith("The config's default meta-learned method, Meta, is not in this run")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[methods]]\nname = "Meta"\nkind = "meta"\n[[methods]]\nname = "Meta-b"\n'
        'kind = "meta"\n[[methods]]\nname = "popularity"\n'
    )
    assert load_config(cfg).default_method == "Meta"
    assert load_config(cfg, only=["Meta-b", "popularity"]).default_method == "Meta"
    with pytest.raises(MetarecError, match="default_method 'popularity' is not a meta"):
        load_config(cfg, ["default_method='popularity'"])


def test_the_verdict_says_when_only_left_methods_without_meta_learning_out(tmp_path):
    """A rerun of the meta rows with Pooled alone beside them called Pooled "the best
    method without meta-learning", where LightFM (left out by --only) scored higher."""
    from metarec.experiment import load_config

    res = _results(
        {"Meta": [(1.0, 0.50), (1.0, 0.50)], "Pooled": [(1.0, 0.20), (1.0, 0.20)]},
        {"Meta": "meta", "Pooled": "pooled"},
    )
    assert "--only" not in report.verdict(res, res.summary(), NDCG)
    part = dataclasses.replace(res, config=dataclasses.replace(res.config, left_out=("lightfm",)))
    v = report.verdict(part, part.summary(), NDCG)
    assert v.startswith(
        "The default meta-learned method, Meta, beats the best method without meta-learning "
        "(of those in this run: --only left out lightfm), Pooled, on nDCG@10"
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[methods]]\nname = "Meta"\nkind = "meta"\n[[methods]]\nname = "Meta-b"\n'
        'kind = "meta"\n[[methods]]\nname = "Pooled"\nkind = "pooled"\n'
        '[[methods]]\nname = "popularity"\n'
    )
    # nothing without meta-learning ran: no verdict, and it says why (it said nothing)
    alone = _results({"Meta": [(1.0, 0.50), (1.0, 0.50)]}, {"Meta": "meta"})
    alone = dataclasses.replace(
        alone, config=dataclasses.replace(alone.config, left_out=("Pooled", "popularity"))
    )
    assert report.verdict(alone, alone.summary(), NDCG) == (
        "No method without meta-learning is in this run (--only left out Pooled, "
        "popularity): no verdict on the default."
    )
    assert load_config(cfg).left_out == ()
    # a left-out meta variant is not a method without meta-learning
    assert load_config(cfg, only=["Meta", "Pooled"]).left_out == ("popularity",)
    assert load_config(cfg, only=["Meta", "popularity"]).left_out == ("Pooled",)


def test_bars_skip_a_metric_no_method_has(tmp_path):
    """Implicit data with all-positive queries has no AUC/RMSE for anyone: the bar chart
    leaves that panel out instead of failing (an Amazon run lost its report to this)."""
    res = _results(
        {"Meta": [(float("nan"), 0.1), (float("nan"), 0.2)], "Base": [(float("nan"), 0.3)] * 2},
        {"Meta": "meta", "Base": "baseline"},
    )
    assert res.summary()["Meta"]["RMSE"]["mean"] is None
    files = report.write_plots(res, tmp_path)
    assert (tmp_path / "methods.png").read_bytes()[:4] == b"\x89PNG"
    assert "methods.png" in files.values()


def test_equal_looking_means_are_both_bold_and_never_a_win():
    # 0.17481800766283523 against ...526: both print 0.1748, one was bolded and the
    # verdict would have called the difference a win
    a, b = 0.17481800766283523, 0.17481800766283526
    res = _results(
        {"Meta": [(1.0, a), (1.0, a)], "Base": [(1.0, b), (1.0, b)]},
        {"Meta": "meta", "Base": "baseline"},
    )
    table = res.summary()
    lines = report.markdown_table(res, table, [NDCG]).splitlines()
    assert lines[2].endswith("| **0.1748 ± 0.0000** |") and lines[3].endswith(
        "| **0.1748 ± 0.0000** |"
    )
    v = report.verdict(res, table, NDCG)
    assert "does not beat" in v and "level at four decimals" in v


def test_one_seed_without_bootstrap_claims_no_clear_win():
    # with no interval measured the verdict said "beats" and pointed at CIs not there
    res = _results(
        {"Meta": [(1.0, 0.4)], "Base": [(1.0, 0.2)]}, {"Meta": "meta", "Base": "baseline"}
    )
    runs = tuple(
        dataclasses.replace(
            r, result=dataclasses.replace(r.result, ci95={k: (None, None) for k in r.result.ci95})
        )
        for r in res.runs
    )
    res = dataclasses.replace(res, runs=runs, config=dataclasses.replace(res.config, bootstrap=0))
    v = report.verdict(res, res.summary(), NDCG)
    assert "no interval was measured" in v and "cannot be called a clear win" in v


def _users_results(meta: list[list[float]], base: list[list[float]]) -> Results:
    """Per seed, per-user nDCG values of two methods over the same users 0..n-1."""

    def run(name, kind, seed, vals):
        v = np.asarray(vals, dtype=np.float64)
        r = dataclasses.replace(
            _result(name, 1.0, float(v.mean())),
            per_user={"RMSE": np.ones(len(v)), NDCG: v},
            n_users={"RMSE": len(v), NDCG: len(v)},
            user_idx=np.arange(len(v)),
        )
        return MethodRun(name, kind, seed, 10, r, 1.0, {}, ())

    res = _results(
        {"Meta": [(1.0, 0.0)] * len(meta), "Base": [(1.0, 0.0)] * len(base)},
        {"Meta": "meta", "Base": "baseline"},
    )
    runs = tuple(run("Meta", "meta", s, v) for s, v in enumerate(meta)) + tuple(
        run("Base", "baseline", s, v) for s, v in enumerate(base)
    )
    return dataclasses.replace(res, runs=runs)


def test_a_gap_two_seeds_agree_on_is_no_clear_win_when_users_split_on_it():
    # two seeds within 0.0015 of each other called a win on the seeds' spread alone, while
    # the paired difference over the same users ran from -0.03 to +0.06 (probe 119)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 40)
    noise = rng.normal(0, 0.3, 40)
    noise -= noise.mean()  # the gap is the 0.02 added, spread over users by the noise
    meta = [base + noise + 0.02, base + noise + 0.021]
    res = _users_results(meta, [base, base])
    v = report.verdict(res, res.summary(), NDCG)
    assert v.startswith("The default meta-learned method, Meta, beats")
    assert "paired 95% CI [" in v
    assert "such that the paired 95% interval over users holds 0, so it is not a clear win" in v


def test_a_gap_every_user_shows_is_a_clear_win_and_seed_spread_still_counts():
    base = np.linspace(0.1, 0.9, 40)
    res = _users_results([base + 0.05, base + 0.06], [base, base])
    v = report.verdict(res, res.summary(), NDCG)
    assert "paired 95% CI [+0.0550, +0.0550]" in v and "not a clear win" not in v
    # the same users' gap, but the seeds disagree: the seeds' spread still says no
    res = _users_results([base + 0.10, base - 0.04], [base, base])
    v = report.verdict(res, res.summary(), NDCG)
    assert "within one standard deviation across seeds, so it is not a clear win" in v


def test_the_baselines_spread_over_seeds_counts_toward_one_standard_deviation():
    # mutation audit, probe 147: judging the gap against the meta-model's std alone
    # survived. Here the meta seeds agree (std 0.0071) and the baseline's do not (std
    # 0.0707); the 0.055 gap is under their sum though every user shows it, paired
    base = np.linspace(0.1, 0.9, 40)
    res = _users_results([base + 0.05, base + 0.06], [base + 0.05, base - 0.05])
    table = res.summary()
    assert table["Meta"][NDCG]["std"] == pytest.approx(0.01 / np.sqrt(2))
    assert table["Base"][NDCG]["std"] == pytest.approx(0.1 / np.sqrt(2))
    v = report.verdict(res, table, NDCG)
    assert v.startswith("The default meta-learned method, Meta, beats")
    assert "(± 0.0071 vs ± 0.0707 over seeds; " in v and "paired 95% CI [+0.0550, +0.0550]" in v
    assert "within one standard deviation across seeds, so it is not a clear win" in v


def test_paired_difference_matches_a_hand_computation():
    from metarec.experiment import paired_difference

    res = _users_results([[0.5, 0.2, 0.9], [0.4, 0.3, 0.8]], [[0.1, 0.2, 0.3], [0.2, 0.2, 0.2]])
    mean, lo, hi = paired_difference(res.runs_of("Meta", 10), res.runs_of("Base", 10), NDCG, 2000)
    # per seed: mean(0.4, 0.0, 0.6) = 1/3 and mean(0.2, 0.1, 0.6) = 0.3
    assert mean == pytest.approx((1 / 3 + 0.3) / 2)
    assert 0.0 <= lo <= mean <= hi <= 0.6 + 1e-12
    # users matched by id, not position: base scored in another order, one user missing
    a = res.runs_of("Meta", 10)
    b = [
        dataclasses.replace(
            r,
            result=dataclasses.replace(
                r.result,
                user_idx=r.result.user_idx[[2, 0]],
                per_user={k: v[[2, 0]] for k, v in r.result.per_user.items()},
            ),
        )
        for r in res.runs_of("Base", 10)
    ]
    mean2, _, _ = paired_difference(a, b, NDCG, 500)
    # per seed over users 0 and 2 only: mean(0.4, 0.6) = 0.5 and mean(0.2, 0.6) = 0.4
    assert mean2 == pytest.approx(0.45)
    # no seed in common: None
    other = _users_results([[0.5]], [[0.1]])
    assert (
        paired_difference(res.runs_of("Meta", 10), other.runs_of("Base", 10)[:0], NDCG, 100) is None
    )


def test_a_metric_valued_on_some_seeds_says_so():
    # Precision undefined on one seed: its single value printed as "1.0000 ± 0.0000"
    cell = {"mean": 1.0, "std": 0.0, "per_seed": [None, 1.0], "ci95": [None, None]}
    assert report._fmt(cell, False) == "1.0000 (1 of 2 seeds)"


def test_the_k_curve_legend_says_when_a_method_has_fewer_seeds(tmp_path, monkeypatch):
    """A method that failed on 2 seeds of 3 was drawn under its bare name beneath a title
    saying "std over 3 seed(s)"; the tables said "(1 of 3 seeds)"."""
    import dataclasses

    import matplotlib.axes

    res = _results(
        {"Meta": [(1.0, 0.1)] * 3, "Base": [(0.9, 0.3)] * 3}, {"Meta": "meta", "Base": "baseline"}
    )
    curve = tuple(
        MethodRun(n, kind, s, k, _result(n, 1.0, 0.2), 1.0, {}, (), "curve")
        for n, kind, seeds in (("Meta", "meta", [0]), ("Base", "baseline", [0, 1, 2]))
        for s in seeds
        for k in (1, 3)
    )
    res = dataclasses.replace(res, runs=res.runs + curve)
    labels = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    report.write_plots(res, tmp_path)
    assert "Meta (1 of 3 seeds)" in labels and "Base" in labels


def test_the_protocol_line_says_when_queries_hold_fewer_than_q():
    # "Q = 10 query interactions per user" where the item cold-start median was 4 and
    # 107 users had one item, whose nDCG (query) is 1.0 for any method (probe 119)
    res = _results(
        {"Meta": [(1.0, 0.3)], "Base": [(1.0, 0.2)]}, {"Meta": "meta", "Base": "baseline"}
    )
    full = {"min": 10, "median": 10.0, "max": 10, "one": 0}
    short = {"min": 1, "median": 4.0, "max": 10, "one": 107}
    said = report.render_markdown(
        dataclasses.replace(res, protocol={**res.protocol, "query_sizes": full}), {}
    )
    assert "Q = 10 query interactions per user" in said
    said = report.render_markdown(
        dataclasses.replace(res, protocol={**res.protocol, "query_sizes": short}), {}
    )
    assert (
        "Q = up to 10 query interactions (median 4, 107 users with one: their nDCG (query) "
        "is 1.0 for every method where defined) per user"
    ) in said
    # implicit data: a one-item query (one positive, or one negative) has no nDCG
    implicit = dataclasses.replace(
        res,
        dataset={**res.dataset, "feedback": "implicit"},
        protocol={**res.protocol, "query_sizes": short},
    )
    assert "107 users with one: their nDCG (query) is undefined and left out)" in (
        report.render_markdown(implicit, {})
    )


def test_a_column_whose_users_differ_between_methods_says_so():
    """Precision is undefined for a user a method predicts no positive for, so each
    method's cell averaged over its own users while the bold compared them as like with
    like (probe 154: 126 against 104 of 189 users). The report names the counts."""
    res = _users_results([[0.2, 0.4, 0.6, 0.8]], [[0.1, 0.3, 0.5, 0.7]])
    res = dataclasses.replace(res, protocol={**res.protocol, "test_users": 4})
    runs = []
    for r in res.runs:  # Meta predicts no positive for one user, Base for two
        gone = 1 if r.method == "Meta" else 2
        v = np.r_[np.full(gone, np.nan), np.linspace(0.5, 0.9, 4 - gone)]
        per_user = {**r.result.per_user, "RMSE": v}
        n_users = {**r.result.n_users, "RMSE": 4 - gone}
        metrics = {**r.result.metrics, "RMSE": float(np.nanmean(v))}
        runs.append(
            dataclasses.replace(
                r,
                result=dataclasses.replace(
                    r.result, per_user=per_user, n_users=n_users, metrics=metrics
                ),
            )
        )
    res = dataclasses.replace(res, runs=tuple(runs))
    said = report.uneven_users(res, res.summary(), ["RMSE", NDCG])
    assert said.startswith("RMSE averages over different users for each method")
    assert "(Meta 3, Base 2 of 4 test users, seed 0)" in said
    assert "paired table below" in said and NDCG not in said  # nDCG's users agree
    assert said in report.render_markdown(res, {})
    even = report.uneven_users(res, res.summary(), [NDCG])
    assert even == ""
    # without paired intervals (bootstrap = 0) there is no paired table to point to
    bare = dataclasses.replace(res, config=dataclasses.replace(res.config, bootstrap=0))
    said = report.uneven_users(bare, bare.summary(), ["RMSE"])
    assert said.endswith("compares means over different users.") and "paired" not in said


def test_paired_differences_take_their_own_number_of_resamples():
    """paired_bootstrap (10,000) sets the paired intervals' resamples: at bootstrap's
    1,000 their ends moved by about 0.001 between bootstrap seeds, the size of the gaps
    they judge (probe 154). 0 in either key turns them off."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 60)
    res = _users_results([base + rng.normal(0.01, 0.1, 60)], [base])
    with_n = {
        n: dataclasses.replace(res, config=dataclasses.replace(res.config, paired_bootstrap=n))
        for n in (100, 10_000)
    }
    got = {n: r.paired()["Base"][NDCG] for n, r in with_n.items()}
    d = np.asarray(res.runs[0].result.per_user[NDCG]) - base
    assert got[100]["mean"] == got[10_000]["mean"] == pytest.approx(d.mean())
    assert got[100]["ci95"] != got[10_000]["ci95"]
    # the 10,000 resamples' interval against a large independent bootstrap of the same mean
    draws = np.random.default_rng(9).integers(0, 60, size=(200_000, 60))
    want = np.percentile(d[draws].mean(1), [2.5, 97.5])
    assert np.allclose(got[10_000]["ci95"], want, atol=0.001)
    assert res.config.paired_bootstrap == 10_000  # the default
    for off in ({"paired_bootstrap": 0}, {"bootstrap": 0}):
        none = dataclasses.replace(res, config=dataclasses.replace(res.config, **off))
        assert none.paired() == {}


def test_the_protocol_line_says_when_query_ratings_all_tie():
    """A query whose items all have one rating scores nDCG (query) 1.0 in any order: on
    a log of nearly one rating every method's 1.0000 was bold without a word (probe 155)."""
    res = _results(
        {"Meta": [(1.0, 0.3)], "Base": [(1.0, 0.2)]}, {"Meta": "meta", "Base": "baseline"}
    )
    tied = dataclasses.replace(res, protocol={**res.protocol, "tied_queries": 7, "test_users": 9})
    said = report.render_markdown(tied, {})
    assert (
        "nDCG (query) is 1.0 whatever the order for 7 of 9 test users (seed 0), whose query "
        "items all have one rating"
    ) in said
    assert "whatever the order" not in report.render_markdown(res, {})
    # the note reads ratings: an implicit log's 0/1 labels get none
    labels = dataclasses.replace(tied, dataset={**tied.dataset, "feedback": "implicit"})
    assert "whatever the order" not in report.render_markdown(labels, {})


def test_the_protocol_counts_queries_whose_ratings_all_tie():
    from metarec import experiment as E

    cfg = E.load_config(Path(__file__).parent / "tiny_experiment.toml", ["seeds=[0]"])
    ds = E.load_data(cfg)
    split = E.cut_split(ds, cfg, 0, cfg.split.k_shot)
    info = {"name": "tiny", "feedback": "explicit"}

    def with_ratings(rate):
        test = tuple(
            dataclasses.replace(
                t, query=dataclasses.replace(t.query, rating=rate(len(t.query)).astype(np.float32))
            )
            for t in split.test
        )
        return dataclasses.replace(split, test=test)

    tied = E.describe_protocol(cfg, info, with_ratings(lambda n: np.full(n, 4.0)))
    assert tied["tied_queries"] == sum(len(t.query) > 1 for t in split.test) > 0
    apart = E.describe_protocol(cfg, info, with_ratings(lambda n: 1.0 + np.arange(n) % 5))
    assert apart["tied_queries"] == 0
    # on a -2..2 scale a query all at the bottom has gains 0: nDCG undefined, not 1.0
    low = {**info, "rating_range": [-2.0, 2.0]}
    bottom = E.describe_protocol(cfg, low, with_ratings(lambda n: np.full(n, -2.0)))
    assert bottom["tied_queries"] == 0
    top = E.describe_protocol(cfg, low, with_ratings(lambda n: np.full(n, 2.0)))
    assert top["tied_queries"] == tied["tied_queries"]


def test_a_tie_needs_two_items_and_gains_are_counted_from_0():
    """experiment._tied_queries counts queries of two or more items all rated alike with a
    gain above 0, the gain being the rating less min(scale's bottom, 0) as evaluate's
    graded gain is: a one-item query is no tie, and on a 1-5 scale a query all rated 1
    has gains of 1 (nDCG 1.0 whatever the order), so it counts."""
    from metarec import experiment as E

    cfg = E.load_config(Path(__file__).parent / "tiny_experiment.toml", ["seeds=[0]"])
    split = E.cut_split(E.load_data(cfg), cfg, 0, cfg.split.k_shot)
    tasks = [t for t in split.test if len(t.query) > 1]
    assert tasks

    def rated(t, value, n=None):
        q = t.query if n is None else t.query.take(np.arange(n))
        return dataclasses.replace(
            t, query=dataclasses.replace(q, rating=np.full(len(q), value, np.float32))
        )

    assert E._tied_queries([rated(t, 4.0, 1) for t in tasks], {}) == 0
    assert E._tied_queries([rated(t, 1.0) for t in tasks], {"rating_range": [1, 5]}) == len(tasks)


def test_the_k_curve_counts_users_per_k_where_each_k_has_its_own():
    """curve_same_users = false: each K scores its own users, and "(102-189 users per
    seed)" read as a spread within one seed (probe 157). The count is given per K."""
    res = _results(
        {"Meta": [(1.0, 0.3)], "Base": [(1.0, 0.2)]}, {"Meta": "meta", "Base": "baseline"}
    )

    def curve(run, k, n):
        v = np.linspace(0.1, 0.9, n)
        r = dataclasses.replace(
            run.result,
            per_user={"RMSE": np.ones(n), NDCG: v},
            n_users={"RMSE": n, NDCG: n},
            user_idx=np.arange(n),
        )
        return dataclasses.replace(run, k_shot=k, result=r, scenario="curve")

    main = res.runs
    own = (*main, *(curve(r, k, n) for r in main for k, n in ((1, 9), (5, 6))))
    said = report.render_markdown(dataclasses.replace(res, runs=own), {})
    assert "(K = 1: 9, K = 5: 6 users per seed)" in said
    same = (*main, *(curve(r, k, 6) for r in main for k in (1, 5)))
    assert "(6 users per seed)" in report.render_markdown(dataclasses.replace(res, runs=same), {})
