"""Shared by fit_refit.py and fit_holdout_item_cold.py: `metarec fit`'s own path (no
validation tasks given) for several ModelConfig variants, scored on users it never saw.

Per seed, ``make_split(ds, protocol, 10, 10, seed)`` gives the rows to fit on (the split's
training rows) and the users to score (its validation users, over the ranking candidates
evaluate gives them: the validation items in item cold-start). Test users and items are
never read. ``fit`` builds the text and side features itself, as `metarec fit` does: with
``valid_holdout = "new_items"`` it fits them without the items it holds out (before
2026-12-07 this script passed features fitted on every training item, so that path's
figures were of features `metarec fit` no longer builds).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from metarec.evaluate import evaluate
from metarec.experiment import ranking_candidates
from metarec.model import MetaRecommender, ModelConfig, TextConfig
from metarec.splits import make_split
from metarec.types import Dataset

METRICS = ("MAE", "AUC", "nDCG@3 (query)", "Recall@10 (full)", "nDCG@10 (full)")


def score_variants(
    ds: Dataset, protocol: str, seeds: list[int], variants: dict[str, dict], cache: str
) -> tuple[dict, dict, dict]:
    """(runs {variant: {seed: metrics}}, mean {variant: metrics}, fit seconds {variant:
    mean}) for ``variants``: name -> ModelConfig keyword arguments (seed and progress set
    here)."""
    runs: dict = {n: {} for n in variants}
    fit_s: dict = {n: [] for n in variants}
    for seed in seeds:
        split = make_split(ds, protocol, k_shot=10, n_query=10, seed=seed)
        cand = ranking_candidates(ds, split, "valid")
        for name, kw in variants.items():
            cfg = ModelConfig(seed=seed, progress=False, text=TextConfig(cache=cache), **kw)
            t0 = time.perf_counter()
            # no validation and no features given: fit chooses both (the embedding cache
            # makes the text encoding a lookup after the first variant)
            rec = MetaRecommender(cfg).fit(ds, split.train)
            fit_s[name].append(time.perf_counter() - t0)
            m = evaluate(rec, ds, split.valid, bootstrap=0, candidates=cand).metrics
            runs[name][seed] = {k: float(m[k]) for k in METRICS}
            print(seed, name, json.dumps(runs[name][seed]), file=sys.stderr, flush=True)
    mean = {n: {k: float(np.mean([r[k] for r in runs[n].values()])) for k in METRICS} for n in runs}
    for n, row in mean.items():
        print(f"{n:10s} " + "  ".join(f"{k}={v:.4f}" for k, v in row.items()))
    return runs, mean, {n: float(np.mean(v)) for n, v in fit_s.items()}
