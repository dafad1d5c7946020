"""Mutation audit 181 (46d8cc7..HEAD): each test kills a mutant of the change set that
the tests added with it let live. Small synthetic data, seconds each."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec import baselines as B
from metarec import cli
from metarec import experiment as E
from metarec import metrics as M
from metarec.data.files import log_frame
from metarec.evaluate import evaluate
from metarec.meta.algorithms import MetaConfig
from metarec.meta.episodes import training_cut
from metarec.model import MetaRecommender
from metarec.splits import make_split
from metarec.train import TrainConfig, _TaskSampler
from metarec.types import Interactions, MetarecError, Split
from test_api_misuse import _fast, _implicit
from test_model import _world as _rating_world

TINY = Path(__file__).parent / "tiny_experiment.toml"


# --- cli: every path flag, ~ expanded; --cache "" is the default cache ---------------------


@pytest.mark.parametrize(
    ("argv", "command", "flags"),
    [
        (["serve", "--run", "~/R", "--feedback-db", "~/fb"], "cmd_serve", ["run", "feedback_db"]),
        (
            ["predict", "--run", "~/R", "--support", "~/S.csv", "--query", "~/Q.csv",
             "--users", "~/U.csv", "--out", "~/P.csv"],
            "cmd_predict",
            ["run", "support", "query", "users", "out"],
        ),
        (
            ["update", "--run", "~/R", "--feedback", "~/fb", "--out", "~/R2"],
            "cmd_update",
            ["run", "feedback", "out"],
        ),
    ],
)  # fmt: skip
def test_every_path_flag_expands_a_tilde(monkeypatch, tmp_path, argv, command, flags):
    # `--feedback-db=~/fb` is not expanded by the shell; serve checked user_path(~/fb) for
    # a RUN but opened Path("~/fb"), a "~" folder in the working folder
    monkeypatch.setenv("HOME", str(tmp_path))
    seen = {}
    monkeypatch.setattr(cli, command, lambda args: seen.update(vars(args)) or 0)
    assert cli.main(argv) == 0
    for flag in flags:
        assert seen[flag] == str(tmp_path / Path(seen[flag]).name), flag


def test_an_empty_feedback_db_is_named_as_its_flag_is_spelled(capsys):
    assert cli.main(["serve", "--run", "R", "--feedback-db", ""]) == 2
    assert "--feedback-db is empty" in capsys.readouterr().err


def test_an_empty_cache_flag_is_the_default_cache(monkeypatch, tmp_path, capsys):
    # --cache is the one path flag whose empty value means something: the default cache
    home = tmp_path / "home"
    monkeypatch.setenv("METAREC_HOME", str(home))
    log = tmp_path / "log.csv"
    pd.DataFrame(
        {"user_id": ["u0", "u0", "u1"], "item_id": ["a", "b", "a"], "rating": [4, 2, 5]}
    ).to_csv(log, index=False)
    items = tmp_path / "I.csv"
    pd.DataFrame({"item_id": ["a", "b"], "title": ["space", "garden"]}).to_csv(items, index=False)
    argv = ["embed", "csv", "--path", str(log), "--items", str(items), "--text-cols", "title"]
    code = cli.main([*argv, "--model", "hashing:16", "--cache", "", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert str(home) in out


# --- Python frames: a bool label is 0/1, a bool among ratings is refused ------------------


def test_a_bool_label_in_a_python_frame_is_one_or_zero():
    frame = pd.DataFrame({"user_id": ["x", "x"], "item_id": ["a", "b"], "label": [True, False]})
    ratings, feedback, _ = log_frame(frame)
    assert feedback == "implicit"
    assert ratings["rating"].tolist() == [1.0, 0.0]


def test_a_bool_among_numbers_in_a_python_rating_column_is_refused():
    # [4, True] is an object column: True read as a 1-star rating, as a bool column was
    frame = pd.DataFrame({"user_id": ["x", "x"], "item_id": ["a", "b"], "rating": [4, True]})
    with pytest.raises(MetarecError, match="not a number"):
        log_frame(frame)


# --- the csv loader: a time or domain column named for another role ----------------------


@pytest.mark.parametrize("flag", ["--time-col", "--domain-col"])
def test_a_time_or_domain_column_is_not_taken_for_a_second_role(tmp_path, capsys, flag):
    p = tmp_path / "m.csv"
    p.write_text("uid,iid,stars\n1,a,5\n1,b,3\n2,a,4\n")
    argv = ["info", "csv", "--path", str(p), "--user-col", "uid", "--item-col", "iid"]
    assert cli.main([*argv, "--rating-col", "stars", flag, "uid"]) == 2
    assert "'uid' is named as" in capsys.readouterr().err


# --- Task checks: evaluate and fit's valid ------------------------------------------------


@pytest.fixture(scope="module")
def rating_world():
    ds = _rating_world(n_users=60)
    return ds, make_split(ds, "user-cold", k_shot=6, n_query=8, seed=0)


def test_evaluate_refuses_tuples_for_tasks_in_a_line(rating_world):
    ds, split = rating_world
    rec = B.Popularity().fit(ds, split.train)
    t = split.test[0]
    with pytest.raises(MetarecError, match="evaluate: tasks must be"):
        evaluate(rec, ds, [(t.user_idx, t.support, t.query)])


def test_fit_refuses_tuples_for_valid_in_a_line(rating_world):
    ds, split = rating_world
    t = split.valid[0]
    with pytest.raises(MetarecError, match="valid: tasks must be"):
        MetaRecommender(_fast()).fit(ds, split.train, valid=[(t.user_idx, t.support, t.query)])


# --- metrics --------------------------------------------------------------------------------


def test_a_single_nan_level_is_refused():
    with pytest.raises(MetarecError, match="levels"):
        M.nearest_level([1.0, 2.0], [np.nan])


def test_a_ranking_metric_refuses_a_2d_ranked_list():
    with pytest.raises(MetarecError, match="1-D"):
        M.hr_at_k(np.array([[1, 2], [3, 4]]), [2], 2)


# --- training episodes --------------------------------------------------------------------


def test_item_age_cut_of_a_short_history_stays_inside_it():
    # n < K + Q: the last K + Q rows are the whole history, support first; a negative start
    # wrapped round and put the newest rows in the support as well as the query
    s, q, _ = training_cut(8, 5, 5, np.random.default_rng(0), time_order=False)
    assert s.tolist() == [0, 1, 2, 3, 4] and q.tolist() == [5, 6, 7]


def test_the_in_memory_sampler_shuffles_at_train_resample_prob():
    n = 30
    rows = Interactions(np.zeros(n), np.arange(n), np.ones(n), np.arange(n), np.zeros(n))
    split = Split("user-cold", rows, (), (), seed=0, k_shot=10, n_query=5)
    cfg = TrainConfig(resample_prob=1.0, episodes="time")
    eps = _TaskSampler(split, "rating", n, cfg).sample(20, np.random.default_rng(0))
    assert all(e.support_items.tolist() != list(range(10)) for e in eps)


# --- MetaRecommender.fit names the model after its scoring model --------------------------


def test_an_implicit_fit_is_named_after_its_ranking_model_as_its_loaded_run_is():
    implicit = _implicit(_rating_world(n_users=60))
    split = make_split(implicit, "user-cold", k_shot=6, n_query=8, seed=0)
    rec = MetaRecommender(_fast(rank_meta=MetaConfig(algorithm="np")))
    rec.fit(implicit, split.train, valid=split.valid)
    assert rec.name == "MetaRec-np"
    state, tensors = rec.state()
    assert MetaRecommender.from_state(state, tensors, split.train).name == rec.name


# --- evaluate: default_method not run, the K-curve's own query sizes -----------------------


def test_a_default_method_not_among_the_methods_is_said():
    methods = 'methods=[{name="Pooled", kind="pooled"}, {name="popularity"}]'
    with pytest.warns(UserWarning, match="default_method 'MetaRec' is not among"):
        E.load_config(TINY, [methods, "default_method='MetaRec'"])


def test_curve_protocol_line_gives_the_k_points_own_query_sizes():
    # at K = 13 every tiny user (16 interactions) has a query of 3 where Q = 4
    cfg = E.load_config(
        TINY, ["curve_same_users=false", "shots=[1,13]", "seeds=[0]"], only=["popularity"]
    )
    import warnings

    from metarec.report import render_markdown

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = E.run(cfg, None, progress=False)
    assert res.protocol["curve_query_sizes"]["13"]["median"] == 3
    md = render_markdown(res, {})
    line = next(ln for ln in md.splitlines() if ln.startswith("*Protocol:*") and "K = 13," in ln)
    assert re.search(r"Q = up to 4 query interactions \(median 3\b", line), line


def test_rank_scores_batch_refuses_tuples_for_tasks_in_a_line(rating_world):
    ds, split = rating_world
    rec = MetaRecommender(_fast()).fit(ds, split.train, valid=split.valid)
    t = split.test[0]
    with pytest.raises(MetarecError, match="rank_scores_batch: tasks must be"):
        rec.rank_scores_batch([(t.user_idx, t.support)], np.arange(3))


# --- Recommender's default score_many / rank_scores_batch check their tasks ---------------


@pytest.mark.parametrize("method", ["score_many", "rank_scores_batch"])
def test_a_baselines_batch_scoring_refuses_tuples_for_tasks_in_a_line(rating_world, method):
    ds, split = rating_world
    rec = B.ItemMean().fit(ds, split.train)  # the base class's score_many and rank_scores_batch
    t = split.test[0]
    args = [t.query.item_idx] if method == "score_many" else t.query.item_idx
    with pytest.raises(MetarecError, match=f"{method}: tasks must be"):
        getattr(rec, method)([(t.user_idx, t.support)], args)


# --- report: a baseline that failed on some seeds is not "failed on every seed" -----------


def test_verdict_names_only_baselines_without_a_row_as_failed_on_every_seed():
    from metarec.report import primary_metric, verdict

    methods = 'methods=[{name="MetaRec", kind="meta"}, {name="popularity"}]'
    cfg = E.load_config(TINY, ["shots=[]", "seeds=[0]", methods])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = E.run(cfg, None, progress=False)
    # popularity failed on a seed but has a row: it is in the comparison
    failure = {"method": "popularity", "seed": 1, "scenario": "main", "error": "x"}
    res = dataclasses.replace(res, failures=(failure,))
    line = verdict(res, res.summary("main"), primary_metric(res))
    assert "best method without meta-learning" in line
    assert "failed on every seed" not in line, line


# --- splits: a bool fraction, a .. target -------------------------------------------------


@pytest.mark.parametrize("key", ["valid_frac", "test_frac"])
def test_a_bool_split_fraction_is_no_number(key):
    ds = _rating_world(n_users=40)
    with pytest.raises(MetarecError, match=f"{key} must be a number"):
        make_split(ds, "user-cold", k_shot=3, n_query=3, **{key: False})


def test_split_overwrite_of_dot_dot_is_refused_before_the_cut(tmp_path, capsys, monkeypatch):
    from test_data_commands import _log, _split

    log = _log(tmp_path / "log.csv")
    here = tmp_path / "here"
    assert _split(log, here) == 0
    (here / "sub").mkdir()
    capsys.readouterr()
    monkeypatch.chdir(here / "sub")
    assert _split(log, "..", "--overwrite") == 2
    assert "a . or .. path" in capsys.readouterr().err
    assert (here / "summary.json").is_file()
