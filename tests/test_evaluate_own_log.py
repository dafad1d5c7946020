"""`metarec evaluate` as a user runs it on their own log: the defects black-box probe 179
found, each on the tiny experiment (tests/tiny_experiment.toml) in seconds."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import pandas as pd

from metarec import experiment as E
from metarec.report import render_markdown

TINY = Path(__file__).parent / "tiny_experiment.toml"


def _quiet_run(cfg, out=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return E.run(cfg, out, progress=False)


def test_curve_protocol_line_does_not_claim_a_full_q_where_queries_are_shorter():
    """README: "The protocol line says when queries hold fewer than Q interactions (a
    query is the next Q, or what remains ...)". With curve_same_users = false each K
    scores the next Q after its own K support: at K = 13 every tiny user (16
    interactions) has a query of 3, and the K = 13 protocol line said "Q = 4"."""
    cfg = E.load_config(
        TINY, ["curve_same_users=false", "shots=[1,13]", "seeds=[0]"], only=["popularity"]
    )
    res = _quiet_run(cfg)
    # what was scored at K = 13: queries of 3 interactions, never 4
    ds = E.load_data(cfg)
    assert {len(t.query) for t in E.cut_split(ds, cfg, 0, 13).test} == {3}
    md = render_markdown(res, {})
    line = next(ln for ln in md.splitlines() if ln.startswith("*Protocol:*") and "K = 13," in ln)
    assert not re.search(r"Q = 4[,;]", line), line
    assert "Q = up to 4 query interactions (median 3" in line, line


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _as_toml(config: dict) -> str:
    """results.json's config as README says to feed it back: "none" for a null number or
    table setting, a null text setting left out, no left_out."""

    def clean(node):
        if isinstance(node, dict):
            return {
                k: ("none" if v is None else clean(v))
                for k, v in node.items()
                if not (v is None and k in _TEXT_SETTINGS)
            }
        if isinstance(node, list):
            return [clean(x) for x in node]
        return node

    data = clean({k: v for k, v in config.items() if k != "left_out"})
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items()) + "\n"


# the config's text settings that are null by default (left out when fed back)
_TEXT_SETTINGS = {
    "path",
    "source",
    "target",
    "template",
    "cache",
    "device",
    "baseline",
    "select_metric",
    "strategy",
    "default_method",
}


def test_results_json_of_an_only_run_without_the_default_feeds_back(tmp_path):
    """README: results.json's config "Fed back as a config (TOML, with "none" for a null
    number or table setting and a null text setting left out, and no left_out after an
    --only run), it reruns to the same figures". After `--only Pooled,popularity` (the
    default, MetaRec, left out) results.json's config keeps default_method = "MetaRec"
    with no such method: fed back, load_config refused it ("default_method 'MetaRec' is
    not a meta or transfer method of the config")."""
    cfg = E.load_config(TINY, ["seeds=[0]", "shots=[]"], only=["Pooled", "popularity"])
    out = tmp_path / "run"
    first = _quiet_run(cfg, out)
    doc = json.loads((out / "results.json").read_text())
    fed = tmp_path / "fed_back.toml"
    fed.write_text(_as_toml(doc["config"]))
    again = E.load_config(fed)  # raised MetarecError
    rerun = _quiet_run(again)
    for name in ("Pooled", "popularity"):
        a = first.summary("main")[name]["nDCG@10 (full)"]["per_seed"]
        b = rerun.summary("main")[name]["nDCG@10 (full)"]["per_seed"]
        assert a == b


def test_results_json_records_the_grid_choice_of_a_k_curve_refit(tmp_path):
    """README: results.json "records what the figures came from: ... each grid's every
    point with its validation figure or why it was skipped (fits.<method>.chosen,
    _grid)". On a warm split whose held-out users change with K the K-curve refits each
    method at that K, grid search included (its own validation users, its own pick); only
    the main K's choice reached results.json, so the K = 1 figures' hyperparameters and
    validation figures were nowhere in it (only in the resume cache, partial/)."""
    log = pd.read_csv(TINY.parent / "tiny_log.csv")
    order = {u: i for i, u in enumerate(log.user_id.unique())}
    rank = log.groupby("user_id").cumcount()
    # histories of 2..16 interactions: warm's pool (users with more than K) changes with K
    short = log[rank < log.user_id.map(lambda u: 2 + order[u] % 15)]
    path = tmp_path / "short.csv"
    short.to_csv(path, index=False)
    cfg = E.load_config(
        TINY,
        ["split.protocol='warm'", f"data.path='{path}'", "shots=[1,3]", "seeds=[0]"],
        only=["item_mean_user_bias"],
    )
    res = _quiet_run(cfg)
    main = next(r for r in res.runs if r.scenario == "main")
    refits = [r for r in res.runs if r.scenario == "curve" and r.chosen != main.chosen]
    assert refits, "the K = 1 recut trains on other rows and is refitted with its own grid"
    doc = json.dumps(E.finite_json(res.to_json()))
    for r in refits:
        figure = next(v for k, v in r.chosen.items() if k.startswith("_valid_"))
        assert repr(figure) in doc, f"K = {r.k_shot}'s grid choice {r.chosen} not recorded"


def test_verdict_says_a_baseline_that_failed_on_every_seed_is_not_in_its_comparison(
    monkeypatch,
):
    """A baseline whose fit fails on every seed (a missing optional package is "recorded as
    a failed fit", a singular solve) has no row, and the verdict named "the best method
    without meta-learning" among the others without a word of it. The same gap after
    `--only` is said ("of those in this run: --only left out ..."; experiment.py's
    left_out: "the verdict's 'best method without meta-learning' is then the best of
    those that ran, and says so"): a failure shrinks the comparison set just the same,
    and the verdict line is all `evaluate` prints of it on stdout."""
    from metarec.report import primary_metric, verdict
    from metarec.types import MetarecError

    fit = E.fit_method

    def failing(spec, *a, **k):
        if spec.name == "ease":
            raise MetarecError("singular")
        return fit(spec, *a, **k)

    monkeypatch.setattr(E, "fit_method", failing)
    methods = (
        'methods=[{name="MetaRec", kind="meta"}, '
        '{name="Pooled", kind="pooled", finetune_steps=2}, {name="ease"}]'
    )
    cfg = E.load_config(TINY, ["shots=[]", methods])
    res = _quiet_run(cfg)
    assert {f["method"] for f in res.failures} == {"ease"}
    line = verdict(res, res.summary("main"), primary_metric(res))
    assert "best method without meta-learning" in line
    assert "ease failed on every seed" in line, line
    # and with every method without meta-learning failed: no verdict, saying why
    alone = dataclasses.replace(res, runs=tuple(r for r in res.runs if r.method != "Pooled"))
    alone = dataclasses.replace(
        alone, failures=(*res.failures, {**res.failures[0], "method": "Pooled"})
    )
    line = verdict(alone, alone.summary("main"), primary_metric(alone))
    assert "no verdict" in line and "ease, Pooled failed on every seed" in line, line
