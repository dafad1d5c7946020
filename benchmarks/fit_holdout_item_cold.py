"""`metarec fit`'s own validation for new items: ``valid_holdout`` "users" vs "new_items".

    METAREC_DATA_DIR=/work/shared/data python benchmarks/fit_holdout_item_cold.py \\
        --seeds 0 1 2 --json OUT.json

A user who fits on their log and then serves new items gives ``fit`` no validation tasks:
it holds out the newest users ("users", the default) or the newest items ("new_items")
for early stopping and the blend. Per seed, on ML-100K's item cold-start split, both are
fitted on the split's training rows alone (no validation tasks given) and scored on the
split's validation users over its validation items: movies newer than every training
row, as new items would be. Test users and items are never read.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metarec.atomic import write_text  # noqa: E402
from metarec.data import load_dataset  # noqa: E402
from metarec.evaluate import evaluate  # noqa: E402
from metarec.experiment import build_split_features, ranking_candidates  # noqa: E402
from metarec.model import VALID_HOLDOUTS, MetaRecommender, ModelConfig, TextConfig  # noqa: E402
from metarec.splits import make_split  # noqa: E402

METRICS = ("MAE", "AUC", "nDCG@3 (query)", "Recall@10 (full)", "nDCG@10 (full)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/metarec/embeddings"))
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset("movielens-100k")
    runs: dict = {h: {} for h in VALID_HOLDOUTS}
    for seed in a.seeds:
        split = make_split(ds, "item-cold", k_shot=10, n_query=10, seed=seed)
        feats = build_split_features(ds, split.train.item_idx, TextConfig(cache=a.cache))
        cand = ranking_candidates(ds, split, "valid")
        for holdout in VALID_HOLDOUTS:
            cfg = ModelConfig(seed=seed, progress=False, valid_holdout=holdout)
            rec = MetaRecommender(cfg).fit(ds, split.train, feats)  # no validation given
            m = evaluate(rec, ds, split.valid, bootstrap=0, candidates=cand).metrics
            runs[holdout][seed] = {k: float(m[k]) for k in METRICS}
            print(seed, holdout, json.dumps(runs[holdout][seed]), file=sys.stderr, flush=True)
    mean = {h: {k: float(np.mean([r[k] for r in runs[h].values()])) for k in METRICS} for h in runs}
    for h, row in mean.items():
        print(f"{h:10s} " + "  ".join(f"{k}={v:.4f}" for k, v in row.items()))
    report = {
        "protocol": "ML-100K item-cold split; fit on its training rows with no validation "
        "given; scored on its validation users over its validation items",
        "runs": runs,
        "mean": mean,
    }
    write_text(a.json, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
