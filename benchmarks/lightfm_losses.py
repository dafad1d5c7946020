"""LightFM's loss on MovieLens-100K item cold-start: what carries its cold-item ranking.

    METAREC_DATA_DIR=../shared/data python benchmarks/lightfm_losses.py \\
        --seeds 0 1 2 --json OUT.json

The LightFM baseline (same features and settings as ``metarec evaluate`` gives it) fitted
with its WARP loss, with BPR, with the logistic loss, and with WARP but without item
features, each scored on the *validation* users ranking the held-out validation items
(Recall@10 and nDCG@10, full ranking), as ``tune_ml100k.py --protocol item-cold`` does.
Test users are never scored: this is a diagnostic for choices about the ranking model's
loss (``model.rank_loss``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

import numpy as np  # noqa: E402

from metarec.atomic import write_json  # noqa: E402
from metarec.baselines import LightFMRanker  # noqa: E402
from metarec.benchmarking import ScriptParser, embedding_cache, json_path, run_script  # noqa: E402
from metarec.data import load_dataset  # noqa: E402
from metarec.evaluate import evaluate  # noqa: E402
from metarec.experiment import build_split_features, ranking_candidates  # noqa: E402
from metarec.model import TextConfig  # noqa: E402
from metarec.splits import make_split  # noqa: E402

VARIANTS = {
    "warp": {},
    "bpr": {"loss": "bpr"},
    "logistic": {"loss": "logistic"},
    "warp_no_features": {"use_features": False},
}
METRICS = ("Recall@10 (full)", "nDCG@10 (full)")


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", default=embedding_cache())
    p.add_argument("--json", type=json_path, required=True)
    a = p.parse_args(argv)
    ds = load_dataset("movielens-100k")
    valid: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
    for seed in a.seeds:
        split = make_split(ds, "item-cold", k_shot=10, n_query=10, seed=seed)
        # MiniLM text, PCA-64 fitted on the training items, as evaluate builds them
        feats = build_split_features(ds, split.train.item_idx, TextConfig(cache=a.cache))
        cands = ranking_candidates(ds, split, "valid")
        for name, kw in VARIANTS.items():
            model = LightFMRanker(seed=seed, **kw).fit(ds, split.train, feats)
            got = evaluate(model, ds, split.valid, bootstrap=0, candidates=cands).metrics
            valid[name].append({m: float(got[m]) for m in METRICS})
            print(seed, name, {m: round(v, 4) for m, v in valid[name][-1].items()}, file=sys.stderr)
    mean = {k: {m: float(np.mean([r[m] for r in v])) for m in METRICS} for k, v in valid.items()}
    for k, v in mean.items():
        print(f"{k:18s}", "  ".join(f"{m}={x:.4f}" for m, x in v.items()))
    report = {
        "protocol": "ML-100K item cold-start, validation users ranking the validation items",
        "seeds": a.seeds,
        "valid": valid,
        "valid_mean": mean,
    }
    write_json(a.json, report)
    return 0


if __name__ == "__main__":
    run_script(main)
