"""Experiment results -> report.md (tables with the protocol stated) and PNG plots.

Plots need matplotlib (extra ``metarec[plots]``), imported lazily with the Agg backend so
nothing opens a window. Tables: one per scenario, methods x key metrics as mean ± std over
seeds, the best mean per metric in bold, and a plain sentence saying whether the best
meta-learned method beats the best baseline on the primary metric.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from metarec.atomic import atomic_path
from metarec.evaluate import greater_is_better
from metarec.types import MetarecError

if TYPE_CHECKING:  # pragma: no cover
    from metarec.experiment import Results

EXPLICIT_METRICS = (
    "RMSE",
    "MAE",
    "MAE (rounded)",
    "AUC",
    "nDCG@3 (query)",
    "nDCG@10 (full)",
    "Recall@10 (full)",
)
IMPLICIT_METRICS = ("AUC", "nDCG@10 (full)", "HR@10 (full)", "Recall@10 (full)", "MRR (full)")
PRIMARY = "nDCG@10 (full)"
META_KINDS = ("meta", "pooled", "transfer")


def key_metrics(results: Results) -> list[str]:
    """The table's columns: the config's list, else a default set for the feedback kind."""
    if results.config.metrics:
        return list(results.config.metrics)
    explicit = results.dataset.get("feedback") == "explicit"
    return list(EXPLICIT_METRICS if explicit else IMPLICIT_METRICS)


def primary_metric(results: Results) -> str:
    first = next(iter(results.runs), None)
    return first.result.primary_metric if first is not None else PRIMARY


def _fmt(cell: dict | None, bold: bool) -> str:
    """mean ± std over seeds; with one seed (no spread to show) mean [bootstrap 95% CI]."""
    if cell is None or cell.get("mean") is None:
        return "–"
    n_valued = _valued(cell)
    if n_valued == 1 and cell["ci95"][0] is not None:
        lo, hi = cell["ci95"]
        txt = f"{cell['mean']:.4f} [{lo:.3f}, {hi:.3f}]"
    elif n_valued == 1:
        # one seed and no bootstrap (bootstrap = 0): no spread was measured, and "± 0"
        # would claim one
        txt = f"{cell['mean']:.4f}"
    else:
        txt = f"{cell['mean']:.4f} ± {cell['std']:.4f}"
    if 1 <= n_valued < len(cell["per_seed"]):
        # the metric has a value on some seeds only (Precision with no positive query on
        # one seed): one value is not a spread of 0
        txt += f" ({n_valued} of {len(cell['per_seed'])} seeds)"
    return f"**{txt}**" if bold else txt


def _valued(cell: dict) -> int:
    """How many seeds gave this cell a value (a seed's metric can be undefined: null)."""
    return sum(v is not None for v in cell.get("per_seed", ()))


def _err(cell: dict) -> float | tuple[float, float]:
    """Error bar half-widths: std over seeds, or the bootstrap CI with one seed."""
    if _valued(cell) == 1:  # one value: its bootstrap CI, or no bar when none was drawn
        if cell["ci95"][0] is None:
            return (0.0, 0.0)
        return (cell["mean"] - cell["ci95"][0], cell["ci95"][1] - cell["mean"])
    return (cell["std"], cell["std"])


def _best(table: dict, metric: str, names: list[str]) -> str | None:
    vals = [
        (n, table[n][metric]["mean"])
        for n in names
        if metric in table.get(n, {}) and table[n][metric]["mean"] is not None
    ]
    if not vals:
        return None
    sign = 1.0 if greater_is_better(metric) else -1.0
    return max(vals, key=lambda nv: sign * nv[1])[0]


def _bests(table: dict, metric: str, names: list[str]) -> set[str]:
    """Every method level with the best mean as the table prints it (4 decimals): a
    1e-16 difference bolded one of two equal-looking cells."""
    top = _best(table, metric, names)
    if top is None:
        return set()
    shown = round(table[top][metric]["mean"], 4)
    return {
        n
        for n in names
        if metric in table.get(n, {})
        and table[n][metric]["mean"] is not None
        and round(table[n][metric]["mean"], 4) == shown
    }


def markdown_table(results: Results, table: dict, metrics: list[str]) -> str:
    """Methods x metrics as a GitHub table, best mean per column in bold."""
    names = [n for n in results.methods() if n in table]
    best = {m: _bests(table, m, names) for m in metrics}
    arrows = [f"{m} {'↑' if greater_is_better(m) else '↓'}" for m in metrics]
    lines = [
        "| method | kind | " + " | ".join(arrows) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    kinds = {m.name: m.kind for m in results.config.methods}
    n_seeds = len(results.config.seeds)
    for n in names:
        cells = [_fmt(table[n].get(m), n in best[m]) for m in metrics]
        # a method that failed on some seeds: its means are over fewer seeds, say so
        first = next(iter(table[n].values()), {})
        have = len(first.get("per_seed", ())) or n_seeds
        label = n if have == n_seeds else f"{n} ({have} of {n_seeds} seeds)"
        # a "|" in a method's name split its row into one cell too many, and every value
        # sat under the next metric's header
        label = label.replace("|", "\\|")
        lines.append(f"| {label} | {kinds[n]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# why a metric can be undefined for a user in a way that depends on the method's scores
_UNDEFINED_BY_METHOD = {
    "Precision": "for whom the method predicts no positive",
    "F1": "whose query holds no positive and for whom the method predicts none",
}


def uneven_users(results: Results, table: dict, metrics: list[str]) -> str:
    """A sentence for each column whose users differ between methods (first seed): a
    method's Precision averages over the users it predicts a positive for, so two cells
    of one column could average over 126 and 104 of 189 users while the bold read as a
    comparison of like with like (probe 154). The paired table pairs users both score."""
    seed = results.config.seeds[0]
    names = [n for n in results.methods() if n in table]
    out = []
    for m in metrics:
        counts = {}
        for n in names:
            cell = table[n].get(m)
            if cell and seed in cell.get("seeds", ()):
                counts[n] = cell["n_users"][cell["seeds"].index(seed)]
        if len(set(counts.values())) < 2:
            continue
        why = _UNDEFINED_BY_METHOD.get(m, "for whom the method's scores give it no value")
        listed = ", ".join(f"{n} {c}" for n, c in counts.items())
        out.append(
            f"{m} averages over different users for each method: it is undefined for a "
            f"user {why}, and a cell averages the rest ({listed} of "
            f"{results.protocol.get('test_users')} test users, seed {seed}), so the column "
            "compares means over different users"
            + (
                "; the paired table below compares each method with the default over the "
                "users both score."
                if results.paired()  # cached: the paired table below draws them anyway
                else "."
            )
        )
    return " ".join(out)


def _named(names) -> str:
    """Up to four names, then how many more."""
    names = list(names)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def verdict(results: Results, table: dict, metric: str) -> str:
    """One honest sentence: does the *default* meta-learned method — the first ``meta`` or
    ``transfer`` method of the config, fixed before any test number was seen — beat the
    best method that is not meta-learned (the baselines and the pooled twin)?

    The best meta variant on test is named beside it for information only: choosing it
    because it wins on test would be selecting on test users."""
    kinds = {m.name: m.kind for m in results.config.methods}
    default = results.default_method
    learned = [n for n in table if kinds.get(n) in ("meta", "transfer")]
    others = [n for n in table if kinds.get(n) in ("baseline", "pooled")]
    if default is None:
        return ""
    if default not in kinds:
        # left out of this run (--only): a variant that ran is not the default
        return (
            f"The config's default meta-learned method, {default}, is not in this run "
            "(left out by --only, or not among the config's methods): no verdict on the "
            "default."
        )
    if default not in table:  # it failed on every seed: no other variant stands in for it
        return f"**The default meta-learned method, {default}, failed on every seed.**"
    dm, bb = default, _best(table, metric, others)
    # methods without meta-learning that failed on every seed have no row: like --only's
    # left out, they are not in the comparison (the verdict named the best of the rest
    # without a word of them)
    failed = [
        n
        for n in dict.fromkeys(f["method"] for f in results.failures)
        if kinds.get(n) in ("baseline", "pooled") and n not in table
    ]
    if bb is None and (results.config.left_out or failed):
        # the report had no verdict and said nothing of why
        why = []
        if results.config.left_out:
            why.append(f"--only left out {_named(results.config.left_out)}")
        if failed:
            why.append(f"{_named(failed)} failed on every seed")
        return (
            f"No method without meta-learning is in this run ({'; '.join(why)}): no "
            "verdict on the default."
        )
    if bb is None or table[dm][metric]["mean"] is None:
        return ""
    vm, vb = table[dm][metric], table[bb][metric]
    # level as the table prints them (4 decimals): a 1e-16 difference is not a win
    level = round(vm["mean"], 4) == round(vb["mean"], 4)
    better = (vm["mean"] > vb["mean"]) == greater_is_better(metric) and not level
    no_interval = False
    # the gap judged two ways where it can be: against the spread over seeds (training
    # chance) and over the same users, paired (which users were drawn: seeds of a time
    # split score the same users, so their spread alone called a 0.015 gap a win that 30%
    # of the users went against). A clear win must pass both
    got = results.paired().get(bb, {}).get(metric)
    paired = None if got is None or got["ci95"][0] is None else (got["mean"], *got["ci95"])
    pair_text = (
        ""
        if paired is None
        else f"the difference over the same users, paired 95% CI "
        f"[{paired[1]:+.4f}, {paired[2]:+.4f}]"
    )
    pair_overlap = paired is not None and paired[1] <= 0.0 <= paired[2]
    pair_why = "such that the paired 95% interval over users holds 0"
    if _valued(vm) > 1:
        spread = f"(± {vm['std']:.4f} vs ± {vb['std']:.4f} over seeds)"
        overlap = abs(vm["mean"] - vb["mean"]) <= vm["std"] + vb["std"]
        why = "within one standard deviation across seeds"
        if paired is not None:
            spread = f"{spread[:-1]}; {pair_text})"
            why = (
                f"{why} and {pair_why}"
                if overlap and pair_overlap
                else why
                if overlap
                else pair_why
            )
            overlap = overlap or pair_overlap
    elif paired is not None:
        spread = f"(one seed; {pair_text})"
        overlap, why = pair_overlap, pair_why
    elif vm["ci95"][0] is None or vb["ci95"][0] is None:
        # one seed and no bootstrap: nothing says how large a gap chance could make
        spread = "(one seed, no bootstrap: no interval was measured)"
        overlap, no_interval = True, True
        why = ""
    else:
        spread = "(one seed; 95% CIs over users in the table)"
        # the meta-model's mean inside the baseline's interval, or the reverse
        overlap = _inside(vm["mean"], vb["ci95"]) or _inside(vb["mean"], vm["ci95"])
        why = "inside the bootstrap confidence intervals"
    if _valued(vm) != _valued(vb):
        # a method that failed on some seeds is averaged over fewer: say so
        spread = f"{spread[:-1]}; {dm} over {_valued(vm)} seed(s), {bb} over {_valued(vb)})"
    # --only left some out: "the best method without meta-learning" is of this run's
    ran_only = ""
    gaps = []
    if results.config.left_out:
        gaps.append(f"--only left out {_named(results.config.left_out)}")
    if failed:
        gaps.append(f"{_named(failed)} failed on every seed")
    if gaps:
        ran_only = f" (of those in this run: {'; '.join(gaps)})"
    if better:
        if no_interval:
            tail = " With no interval measured, it cannot be called a clear win."
        else:
            tail = f" The gap is {why}, so it is not a clear win." if overlap else ""
        line = (
            f"The default meta-learned method, {dm}, beats the best method without "
            f"meta-learning{ran_only}, {bb}, on {metric}: {vm['mean']:.4f} vs "
            f"{vb['mean']:.4f} {spread}.{tail}"
        )
    else:
        level_note = " (level at four decimals)" if level else ""
        line = (
            f"**The default meta-learned method does not beat the best method without "
            f"meta-learning{ran_only} on {metric}:** {dm} = {vm['mean']:.4f}, "
            f"{bb} = {vb['mean']:.4f}"
            f"{level_note} {spread}."
        )
    bv = _best(table, metric, learned)
    if bv is not None and bv != dm and table[bv][metric]["mean"] != vm["mean"]:
        # its mean may stand on fewer seeds than the default's (failed fits): say so
        fewer = (
            f" over {_valued(table[bv][metric])} of {_valued(vm)} seeds"
            if _valued(table[bv][metric]) < _valued(vm)
            else ""
        )
        line += (
            f" (Variant {bv} scores {table[bv][metric]['mean']:.4f}{fewer} on test; it is shown, "
            "not chosen: picking it on these numbers would be selecting on test users.)"
        )
    return line


def _seeds_label(name: str, cell: dict, n_seeds: int) -> str:
    """A method's name, with "(k of n seeds)" when its value stands on fewer seeds."""
    k = _valued(cell)
    return name if k == n_seeds else f"{name} ({k} of {n_seeds} seeds)"


def paired_table(results: Results, metrics: list[str]) -> list[str]:
    """Markdown lines: the default − each other method per metric, mean difference and
    paired 95% CI over the same users (:meth:`Results.paired`); bold where the interval
    leaves out 0 in the default's favour, italic where against it. [] when none."""
    paired, dm = results.paired(), results.default_method
    cols = [m for m in metrics if any(m in cells for cells in paired.values())]
    if not paired or not cols:
        return []

    def cell(c: dict | None, metric: str) -> str:
        if c is None or c["ci95"][0] is None:
            return "–"
        lo, hi = c["ci95"]
        txt = f"{c['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        if lo > 0 or hi < 0:  # the interval leaves 0 out: a gap across users
            good = (lo > 0) == greater_is_better(metric)
            return f"**{txt}**" if good else f"*{txt}*"
        return txt

    head = [f"{m} {'↑' if greater_is_better(m) else '↓'}" for m in cols]
    lines = [
        f"Paired differences, {dm} − each method, over the same test users (per user, "
        "then averaged over users and seeds; 95% bootstrap CI with users resampled, "
        f"{results.config.paired_bootstrap:,} resamples): "
        f"**bold** where the interval leaves out 0 in {dm}'s favour, *italic* where "
        "against it; otherwise the gap is within what the choice of users could make. "
        "Each interval is one comparison at 95%, not adjusted for the number of cells, nor "
        "for the verdict's best baseline being the one with the best mean on these users "
        "(which favours the baseline in a win and the default in a loss): among many "
        "cells, an isolated bold or italic one near 0 is weak evidence.",
        "",
        "| method | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, cells in paired.items():
        label = name.replace("|", "\\|")
        lines.append(f"| {label} | " + " | ".join(cell(cells.get(m), m) for m in cols) + " |")
    return [*lines, ""]


def _inside(v: float, ci: list) -> bool:
    return ci[0] is not None and ci[0] <= v <= ci[1]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _protocol_text(results: Results, k_shot: int, users: str) -> str:
    p, cfg = results.protocol, results.config
    seeds = ", ".join(str(s) for s in cfg.seeds)
    cross = f" from {p.get('source')} to {p.get('target')}" if p.get("source") else ""
    # with three or more domains a cross-domain split trains on the source and target
    # domains only: half a 4-domain log left out, and the report said nothing of it
    # (probe 163), while `fit` with a domain column learns from every domain
    others = (p.get("split_summary") or {}).get("other_domain_interactions_left_out") or 0
    if p.get("source") and others:
        cross += (
            f" (the {others} interactions in other domains are left out of training, "
            "which `fit` on the same log would learn from)"
        )
    one_seed = (
        (
            " One seed only (to fit the time budget): cells show the mean and its bootstrap "
            f"95% CI over test users ({cfg.bootstrap:,} resamples), not seed-to-seed spread "
            "(rerun with more seeds)."
            if cfg.bootstrap
            else " One seed only and no bootstrap: cells show the mean alone, with no "
            "measure of spread (rerun with more seeds or bootstrap > 0)."
        )
        if len(cfg.seeds) == 1
        else ""
    )
    # seeds that score the same test tasks (a split by time) vary the models only: say
    # so, or a ± 0.0000 on every baseline reads as a broken run
    same_split = (
        " Every seed scores the same test tasks (users, supports and queries): ± is the "
        "spread over model seeds, and a method with no randomness shows ± 0 on the query "
        "metrics (its full-ranking metrics can still move: tied scores there are broken "
        "at random, seeded by the run's seed)."
        if p.get("same_test_tasks")
        else ""
    )
    text = p.get("text", {})
    asked, dim = text.get("pca_dim"), text.get("dim")
    if asked is None:
        pca = "raw vectors, no PCA"
    elif dim is None or dim == asked:
        pca = f"PCA {asked}, fitted on training items only"
    elif dim < asked:
        pca = f"PCA {asked} lowered to {dim}, fitted on training items only"
    else:  # features.build_features: too few training items with text to fit a PCA
        pca = f"no PCA: too few training items with text, {dim}-dimensional vectors unprojected"
    # the rule the data's feedback uses, alone: "rating >= 3.0 (explicit) or label 1
    # (implicit)" on implicit data named a threshold that played no part
    feedback = results.dataset.get("feedback")
    # the cut-off metrics read the like-model's sigmoid at 0.5; trained against sampled
    # negatives it ranks well (AUC) but is no calibrated probability (a probe's run: AUC
    # 0.90, Recall 0.006, Accuracy the share of negatives). Said where a method has one of
    # them (not where every query is positives only, as on Amazon: all undefined there)
    main = results.summary("main")
    cut = ("Accuracy", "Precision", "Recall", "F1", "Logloss")
    cut_shown = any(
        (cells.get(m) or {}).get("mean") is not None for cells in main.values() for m in cut
    )
    relevant = (
        "Relevant = label 1"
        + (
            ". Accuracy, Precision, Recall, F1 and Logloss read the like-model's score as a "
            "probability (cut at 0.5); it is trained against sampled negatives and is not "
            "calibrated, so read the order-based metrics (AUC, nDCG, HR, Recall@k, MRR)"
            if cut_shown
            else ""
        )
        if feedback == "implicit"
        else f"Relevant = rating >= {p.get('threshold')}"
        if feedback == "explicit"
        else f"Relevant = rating >= {p.get('threshold')} (explicit) or label 1 (implicit)"
    )
    one_class = p.get("one_class_queries") or 0
    if one_class and "AUC" in key_metrics(results):
        n = p.get("test_users")
        relevant += (
            f"; AUC is undefined for {one_class} of {n} test users (seed {cfg.seeds[0]}), "
            "whose query holds only relevant or only non-relevant items"
            + (": every AUC cell is empty" if one_class == n else ", and averages the rest")
        )
    tied = p.get("tied_queries") or 0
    if tied and feedback == "explicit":
        n = p.get("test_users")
        relevant += (
            f"; nDCG (query) is 1.0 whatever the order for {tied} of {n} test users (seed "
            f"{cfg.seeds[0]}), whose query items all have one rating"
        )
    no_relevant = p.get("no_relevant_queries") or 0
    if no_relevant:
        n = p.get("test_users")
        relevant += (
            f"; every (full) metric is undefined for {no_relevant} of {n} test users (seed "
            f"{cfg.seeds[0]}), whose query holds no relevant item the full ranking can hold "
            "(none, or none among its candidates), and averages the rest"
        )
    return (
        f"*Protocol:* dataset **{p.get('dataset')}**, split **{p.get('protocol')}**{cross}, "
        f"K = {k_shot} support interactions, {_query_words(p, k_shot, results.main_k, results.dataset.get('feedback') == 'explicit')} per "
        f"user, seeds {seeds}"
        f"{' (mean ± sample std over seeds, n − 1 in the denominator)' if len(cfg.seeds) > 1 else ''}."
        f"{one_seed}{same_split} Held out: "
        f"{p.get('held_out')}; evaluated on {users}. Support: {p.get('support')}. "
        f"Hyperparameters: {p.get('selection')}. Text: "
        f"{text.get('model')} ({pca}). {relevant}; (full) metrics rank {p.get('candidates')}."
    )


def _query_words(p: dict, k_shot: int, main_k: int, explicit: bool) -> str:
    """ "Q = 10 query interactions", or where users have fewer (the next Q, or what
    remains) "Q = up to 10 query interactions (median 4, 107 users with one: their
    nDCG (query) is 1.0 for every method)". The sizes are the main table's test users
    (at the main K), or a K-curve point's (``p`` carrying that point's sizes).
    On implicit data a one-item query has no order to score: nDCG (query) is undefined."""
    q = p.get("n_query")
    sizes = p.get("query_sizes") if k_shot == main_k else None
    if not sizes or sizes["min"] >= (q or 0):
        return f"Q = {q} query interactions"
    said = "is 1.0 for every method where defined" if explicit else "is undefined and left out"
    one = f", {sizes['one']} users with one: their nDCG (query) {said}" if sizes["one"] else ""
    return f"Q = up to {q} query interactions (median {sizes['median']:g}{one})"


def _count_range(counts: list[int]) -> str:
    """ "60" where every seed has as many, else "55-60" (it printed "60-60")."""
    lo, hi = min(counts), max(counts)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def render_markdown(results: Results, plots: dict[str, str]) -> str:
    cfg, p = results.config, results.protocol
    metrics = key_metrics(results)
    prim = primary_metric(results)
    lines = [f"# {cfg.name}", ""]
    d = results.dataset
    # items nobody rated are ranked too ("(full)" ranks the catalogue): counted apart
    unrated = (d.get("catalogue_items") or 0) - (d.get("items") or 0)
    items = f"{d.get('items')} items" + (
        f" rated, {d.get('catalogue_items')} in the catalogue" if unrated > 0 else ""
    )
    from metarec.preprocess import removed_counts

    removed = [f"{gone} by {step}" for step, gone in removed_counts(d.get("preprocessing") or [])]
    lines += [
        f"Dataset {d.get('name')}: {d.get('users')} users, {items}, "
        f"{d.get('interactions')} interactions ({d.get('feedback')}"
        + (f"; preprocessing removed rows: {', '.join(removed)}" if removed else "")
        + "). Split: "
        f"{p.get('train_interactions')} training interactions, {p.get('valid_users')} "
        "validation users"
        # with none split off, each meta fit carves its own out of the training users
        # (the blend-skipped notes below count those), and the baselines' grids are unused
        + (
            " (meta fits hold out their own from the training users)"
            if not p.get("valid_users")
            else ""
        )
        + f", {p.get('test_users')} test users (seed {cfg.seeds[0]}). "
        f"Wall time {results.seconds:.0f} s (loading, fits and evaluation; not writing "
        "this report).",
        "",
        f"## Main table (K = {results.main_k})",
        "",
        _protocol_text(
            results,
            results.main_k,
            p.get("evaluated_users") or "every test user with more than K interactions",
        ),
        "",
    ]
    main = results.summary("main")
    lines += [markdown_table(results, main, metrics), ""]
    uneven = uneven_users(results, main, metrics)
    if uneven:
        lines += [uneven, ""]
    v = verdict(results, main, prim)
    if v:
        if prim not in metrics:  # the config's columns leave the judged metric out
            v += f" ({prim} is the experiment's primary metric; it is not a column above.)"
        lines += [v, ""]
    lines += paired_table(results, metrics)
    if results.failures:
        lines += [
            "Failed fits (each seed listed is left out of that method's means and spread):",
            "",
            *(
                f"- {f['method']}, seed {f['seed']}, K = {f['k_shot']}: {f['error']}"
                for f in results.failures
            ),
            "",
        ]
    if results.reused:
        lines += [
            f"Resumed run: {len(results.reused)} (seed, method) results were read back from "
            f"an earlier run with the same config, data, features and code "
            f"(`metarec evaluate --resume`, from `partial/`); their fit times are that run's, and the wall time above "
            "is this run's alone.",
            "",
        ]
    from metarec.experiment import GRID_KEY

    fits = []
    for name in results.methods():
        runs = results.runs_of(name, results.main_k)
        if runs:
            secs = sum(r.fit_seconds for r in runs) / len(runs)
            cpu = sum(r.fit_cpu_seconds for r in runs) / len(runs)
            chosen = [
                {k: v for k, v in r.chosen.items() if k != GRID_KEY} for r in runs if r.chosen
            ]
            extra = f"; picked on validation: {chosen}" if chosen else ""
            grids = [r.chosen.get(GRID_KEY) or [] for r in runs]
            if any(grids):
                # each point's validation figure is in results.json (fits.<m>.chosen)
                skipped = sum(1 for g in grids for t in g if "skipped" in t)
                extra += f" among {max(len(g) for g in grids)} grid points per seed" + (
                    f", {skipped} skipped over all seeds (a failed fit or a NaN "
                    "validation figure; the reasons are in results.json)"
                    if skipped
                    else ""
                )
            skipped = [f"seed {r.seed} ({r.blend_skipped})" for r in runs if r.blend_skipped]
            if skipped:
                # the table's figure is then the meta-model's alone on those seeds
                extra += f"; blend skipped on {', '.join(skipped)}: the meta-model ranks alone"
            lowered = [
                f"seed {r.seed}: " + ", ".join(f"{k} {v:g}" for k, v in r.lowered.items())
                for r in runs
                if r.lowered
            ]
            if lowered:
                # the config's step diverged: what trained is not what results.json's
                # config names
                extra += (
                    f"; trained with a lower step than configured, its meta-loss having "
                    f"diverged ({'; '.join(lowered)})"
                )
            fits.append(f"- {name}: fit {secs:.1f} s wall ({cpu:.1f} CPU s) per seed{extra}")
    lines += ["Fit times (and grid points chosen on validation users):", "", *fits, ""]
    ks = results.curve_ks()
    if ks:
        curve_runs = [r for r in results.runs if r.scenario == "curve"]
        n_curve = [len(r.result.user_idx) for r in curve_runs]
        # a range over K where each K scores its own users (curve_same_users = false):
        # "102-189 users per seed" read as a spread over one seed's runs (probe 157)
        per_k = {}
        for r in curve_runs:
            per_k.setdefault(r.k_shot, []).append(len(r.result.user_idx))
        by_k = len({_count_range(v) for v in per_k.values()}) > 1
        counted = (
            ", ".join(f"K = {k}: {_count_range(v)}" for k, v in sorted(per_k.items()))
            + " users per seed"
            if by_k
            else f"{_count_range(n_curve)} users per seed"
        )
        lines += [
            "## K-curve",
            "",
            f"{_sentence(p.get('curve_recut', 'each K recuts the split with the same seed'))}; "
            f"fitted models are reused when the recut leaves the training rows unchanged. "
            f"Evaluated on "
            f"{p.get('curve_users', '')} ({counted})"
            + (f"; {p['curve_query']}." if p.get("curve_query") else "."),
            "",
        ]
    for k in ks:
        lines += [
            f"### K = {k}",
            "",
            f"*Protocol:* {p.get('dataset')}, {p.get('protocol')}, K = {k}, "
            + (
                f"Q = the largest K's query (at most {p.get('n_query')})"
                if p.get("curve_query_fixed")
                else _query_words(
                    {**p, "query_sizes": (p.get("curve_query_sizes") or {}).get(str(k))},
                    k,
                    k,
                    results.dataset.get("feedback") == "explicit",
                )
            )
            + f", seeds {', '.join(str(s) for s in cfg.seeds)}; the curve's "
            "users; selection and features as in the main table.",
            "",
            markdown_table(results, results.summary("curve", k), metrics),
            "",
        ]
    if plots:
        lines += ["## Plots", ""]
        for title, fname in plots.items():
            lines += [f"### {title}", "", f"![{title}]({fname})", ""]
    elif missing := plots_missing():
        lines += ["## Plots", "", f"Not drawn: {missing}.", ""]
    return "\n".join(lines)


# --- plots ---------------------------------------------------------------------------------


PLOTS_MISSING = "matplotlib is not installed: pip install 'metarec[plots]'"


def plots_missing() -> str:
    """ "" where plots can be drawn, else why not (a run without the extra trained every
    method, then failed writing and left no report)."""
    import importlib.util

    return "" if importlib.util.find_spec("matplotlib") is not None else PLOTS_MISSING


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MetarecError(f"plots need {PLOTS_MISSING}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def write_plots(results: Results, out: Path) -> dict[str, str]:
    """Write the PNGs; returns {title: file name} for the report."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    files: dict[str, str] = {}
    metrics = [m for m in key_metrics(results)]
    prim = primary_metric(results)
    names = results.methods()
    kinds = {m.name: m.kind for m in results.config.methods}

    # 1. metric vs K, one line per method (mean ± std over seeds)
    ks = results.curve_ks()
    if len(ks) >= 2:
        shown = [prim] + [m for m in ("AUC", "RMSE") if m in metrics and m != prim]
        # a metric with no value at any K (AUC on implicit data whose queries are all
        # positive) gets no panel: it was drawn empty
        curve = {k: results.summary("curve", k) for k in ks}  # each call is a deep copy
        shown = [
            m
            for m in shown
            if any(
                (cell := curve[k].get(n, {}).get(m)) and cell["mean"] is not None
                for k in ks
                for n in names
            )
        ]
    if len(ks) >= 2 and shown:
        n_seeds = len(results.config.seeds)
        fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
        for ax, metric in zip(axes[0], shown, strict=True):
            for i, name in enumerate(names):
                xs, ys, es, valued = [], [], [], []
                for k in ks:
                    cell = curve[k].get(name, {}).get(metric)
                    if cell and cell["mean"] is not None:
                        xs.append(k)
                        ys.append(cell["mean"])
                        es.append(cell["std"])
                        valued.append(_valued(cell))
                style = "-" if kinds[name] in META_KINDS else "--"
                ax.errorbar(
                    xs,
                    ys,
                    yerr=es,
                    fmt=style + "o",
                    ms=3,
                    capsize=2,
                    # a method with fewer finished seeds says so, as the tables do (the
                    # title's "std over N seeds" is the config's count)
                    label=name
                    if min(valued, default=n_seeds) == n_seeds
                    else f"{name} ({min(valued)} of {n_seeds} seeds)",
                    color=plt.cm.tab10(i % 10),
                )
            ax.set_xscale("log")
            ax.minorticks_off()  # only the K values themselves are labelled
            ax.set_xticks(ks)
            ax.set_xticklabels([str(k) for k in ks])
            ax.set_xlabel("K (support interactions per user)")
            ax.set_ylabel(metric)
            ax.set_title(f"{metric} vs K")
            ax.grid(alpha=0.3)
        # every method is in the first axis' handles (empty series included)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.suptitle(
            f"solid: meta-learned / pooled, dashed: baselines; error bars: std over {n_seeds} "
            "seed(s)",
            fontsize=8,
        )
        fig.tight_layout()
        _save(fig, out / "shots.png")
        plt.close(fig)
        files["Metrics vs number of support shots K"] = "shots.png"

    # 2. training curves of the meta methods (first seed)
    curves = []
    for name in names:
        runs = results.runs_of(name, results.main_k)
        if runs and runs[0].history:
            # a method that failed on the first seed shows a later one's curve: its title
            # says which (the plot's heading named the first seed for every panel)
            first = results.config.seeds[0]
            tag = "" if runs[0].seed == first else f" (seed {runs[0].seed})"
            # a transfer's source model (parameter, feature) gets a panel of its own
            target = [e for e in runs[0].history if e.get("stage") != "source"]
            source = [e for e in runs[0].history if e.get("stage") == "source"]
            curves.append((name + tag, target))
            if source:
                curves.append((f"{name}{tag}: source model", source))
    if curves:
        n = len(curves)
        cols = min(4, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for ax, (name, hist) in zip(axes.flat, curves, strict=False):
            for model, color in (("rating", "tab:blue"), ("rank", "tab:orange")):
                mine = [e for e in hist if e.get("model") == model]
                members = sorted({e.get("member", 0) for e in mine})
                for j in members:  # an ensemble's members each trained on their own seed
                    h = [e for e in mine if e.get("member", 0) == j]
                    # member 0 labelled (with the member count), the others fainter
                    many = f" ({len(members)} members)" if len(members) > 1 else ""
                    tags = (
                        (f"{model} train{many}", f"{model} valid{many}") if j == 0 else (None,) * 2
                    )
                    alpha = 1.0 if j == 0 else 0.45
                    steps = [e["step"] for e in h]
                    ax.plot(
                        steps,
                        [e["train_loss"] for e in h],
                        ":.",
                        color=color,
                        alpha=alpha,
                        label=tags[0],
                    )
                    val = [(e["step"], e["valid_loss"]) for e in h if e["valid_loss"] is not None]
                    if val:
                        ax.plot(
                            *zip(*val, strict=True),
                            "-o",
                            ms=3,
                            color=color,
                            alpha=alpha,
                            label=tags[1],
                        )
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("meta-training step")
            ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.tight_layout()  # titles ran into the axis labels of the row above
        _save(fig, out / "training.png")
        plt.close(fig)
        files[f"Training curves (seed {results.config.seeds[0]})"] = "training.png"

    # 3. means with error bars at the main K
    main = results.summary("main")
    n_seeds = len(results.config.seeds)
    # a metric no method has a value for (AUC on implicit data with all-positive queries)
    # gets no panel
    shown = [
        m
        for m in metrics
        if any((main.get(n, {}).get(m) or {}).get("mean") is not None for n in names)
    ]
    if shown:
        cols = min(3, len(shown))
        rows = math.ceil(len(shown) / cols)
        height = max(3.0, 0.28 * len(names) + 1.2)
        fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, height * rows), squeeze=False)
        for ax in axes.flat[len(shown) :]:
            ax.set_visible(False)
        for ax, metric in zip(axes.flat, shown, strict=False):
            rows_ = [(n, main[n][metric]) for n in names if main.get(n, {}).get(metric)]
            rows_ = [(n, c) for n, c in rows_ if c["mean"] is not None]
            ys = list(range(len(rows_)))
            colors = ["tab:blue" if kinds[n] in META_KINDS else "tab:gray" for n, _ in rows_]
            errs = np.array([_err(c) for _, c in rows_]).T  # (2, n): below, above
            # dots, not bars: the axis is zoomed to the values, and a bar's length from a
            # cut axis drew 0.79 against 0.83 as 1:8
            for y, (_, c), e_lo, e_hi, color in zip(
                ys, rows_, errs[0], errs[1], colors, strict=True
            ):
                ax.errorbar(
                    c["mean"], y, xerr=[[e_lo], [e_hi]], fmt="o", ms=5, color=color, capsize=3
                )
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_yticks(ys)
            ax.set_yticklabels([_seeds_label(n, c, n_seeds) for n, c in rows_], fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{metric} {'↑' if greater_is_better(metric) else '↓'}", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
            lo = float((np.array([c["mean"] for _, c in rows_]) - errs[0]).min())
            hi = float((np.array([c["mean"] for _, c in rows_]) + errs[1]).max())
            pad = 0.1 * (hi - lo or 1.0)
            ax.set_xlim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
        if n_seeds > 1:
            bars = (
                f"std over the {n_seeds} seeds (a method with one seed's value: its bootstrap "
                "95% CI over users, if drawn)"
            )
        elif results.config.bootstrap:
            bars = "bootstrap 95% CI over users (one seed)"
        else:
            bars = "none (one seed, no bootstrap)"
        fig.suptitle(
            f"K = {results.main_k}: mean, error bars = {bars}; "
            "blue: meta-learned / pooled, gray: baselines",
            fontsize=9,
        )
        # tight_layout leaves the suptitle out: it ran over the first row's panel
        # titles; the panels (titles included) keep below the top 0.35 inch
        fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.35 / fig.get_figheight()))
        _save(fig, out / "methods.png")
        plt.close(fig)
        files[f"Methods at K = {results.main_k}"] = "methods.png"
    return files
