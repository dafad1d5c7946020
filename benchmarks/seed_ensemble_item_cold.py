"""ML-100K item cold-start: k MetaRecommender fits averaged, against each fit alone.

    METAREC_DATA_DIR=/work/shared/data python benchmarks/seed_ensemble_item_cold.py \\
        --where backtest --members 3 --seeds 0 1 2 --json OUT.json

Per seed s, ``--members`` default MetaRecommenders are fitted with model seeds s, s + 100,
s + 200, ... (each its own initialisation, tasks, negatives and blend), and the held-out
items are ranked by each fit alone ("single") and by the mean of their blended ranking
scores ("avg"). ``--where valid``: the outer split's validation users over its validation
items; ``--where backtest``: the split repeated inside the outer training rows, as
``backtest_item_cold.py`` does ("near" = inner validation items, "far" = inner test items).
Test users and items are never read. ``model.rank_members`` is the in-model form of this
(one fit, ranking models only); this script measures the upper bound of the idea.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metarec.atomic import write_json  # noqa: E402
from metarec.benchmarking import ScriptParser, embedding_cache, json_path, positive_int, run_script  # noqa: E402
from metarec.data import load_dataset  # noqa: E402
from metarec.evaluate import evaluate  # noqa: E402
from metarec.experiment import build_split_features, ranking_candidates  # noqa: E402
from metarec.model import MetaRecommender, ModelConfig, TextConfig  # noqa: E402
from metarec.recommender import Recommender  # noqa: E402
from metarec.splits import make_split  # noqa: E402
from metarec.types import MetarecError  # noqa: E402

METRICS = ("Recall@10 (full)", "nDCG@10 (full)")


class MeanOfFits(Recommender):
    """evaluate()'s view of several fits: query scores of the first, ranking by the mean.
    A Recommender over fitted models (evaluate takes Recommenders only): their sizes and
    the first fit's training rows, which evaluate's leakage check reads."""

    def __init__(self, fits: list[MetaRecommender]):
        self.fits, self.name = fits, "mean of fits"
        self.predicts_ratings = fits[0].predicts_ratings
        self.n_users_, self.n_items_ = fits[0].n_users_, fits[0].n_items_
        self.train_rows_ = fits[0].train_rows_

    def fit(self, dataset, train, features=None):
        raise MetarecError("MeanOfFits averages fitted models; fit those")

    def score(self, user_idx, support, item_idx):
        return self.fits[0].score(user_idx, support, item_idx)

    def score_many(self, tasks, items):
        return self.fits[0].score_many(tasks, items)

    def rank_scores_batch(self, tasks, cand):
        return np.mean([np.asarray(f.rank_scores_batch(tasks, cand)) for f in self.fits], 0)


def main(argv: list[str] | None = None) -> None:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--where", choices=("valid", "backtest"), required=True)
    p.add_argument("--members", type=positive_int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", default=embedding_cache())
    p.add_argument("--json", type=json_path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset("movielens-100k")
    runs = {}
    for seed in a.seeds:
        outer = make_split(ds, "item-cold", k_shot=10, n_query=10, seed=seed)
        if a.where == "backtest":
            d = dataclasses.replace(ds, interactions=outer.train)
            sp = make_split(d, "item-cold", k_shot=10, n_query=10, seed=seed)
            parts = {
                "near": (sp.valid, ranking_candidates(d, sp, "valid")),
                "far": (sp.test, ranking_candidates(d, sp, "test")),
            }
        else:
            d, sp = ds, outer
            parts = {"valid": (sp.valid, ranking_candidates(d, sp, "valid"))}
        feats = build_split_features(d, sp.train.item_idx, TextConfig(cache=a.cache))
        near = ranking_candidates(d, sp, "valid")
        fits = [
            MetaRecommender(ModelConfig(seed=seed + 100 * j, progress=False)).fit(
                d, sp.train, feats, valid=sp.valid, valid_items=near
            )
            for j in range(a.members)
        ]
        runs[seed] = {}
        for part, (tasks, cand) in parts.items():
            single = [evaluate(f, d, tasks, bootstrap=0, candidates=cand).metrics for f in fits]
            avg = evaluate(MeanOfFits(fits), d, tasks, bootstrap=0, candidates=cand).metrics
            runs[seed][part] = {
                "single": [{m: float(s[m]) for m in METRICS} for s in single],
                "avg": {m: float(avg[m]) for m in METRICS},
            }
            print(seed, part, json.dumps(runs[seed][part]), file=sys.stderr, flush=True)
    report = {
        "protocol": f"ML-100K item cold-start, {a.where}; {a.members} fits per seed (model "
        "seeds s + 100 j); 'avg' ranks by the mean of their blended ranking scores",
        "runs": runs,
    }
    write_json(a.json, report)


if __name__ == "__main__":
    run_script(main)
