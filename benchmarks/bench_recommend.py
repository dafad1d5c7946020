"""``recommend`` over a 36k-item catalogue for 1,000 cold users: the CLI contract's speed.

    METAREC_DATA_DIR=../shared/data python benchmarks/bench_recommend.py --json OUT.json \\
        [--users 1000] [--steps 30] [--encoder hashing]

Fits ``metarec fit``'s default model on Amazon Food-Kitchen (36,298 items, both domains;
read from ``$METAREC_DATA_DIR``) three times: the default blend, whose large-catalogue
ranking inputs are item-kNN and the content score; kNN alone
(``blend.large_rank_inputs=["knn"]``); and the inputs it had before both, popularity and
ALS (``blend.large_rank_inputs=["popularity", "als"]``), the baseline measured in the same
run. Then times
``Predictor.recommend`` (what ``metarec recommend`` runs) for ``--users`` cold users, each
with a 5-interaction support taken from a training user's history under a new id, top-10
over the whole catalogue with the history excluded. Prints and writes users/s for both
and the ratios to the baseline; then the default model once more with its item side
computed per task (the path before it was shared across users), the baseline of that
change, and with 8192-item scoring chunks (before chunks were bounded by task x item
cells). Meta-training is cut to ``--steps`` steps: recommend's cost does not
depend on how long the model trained.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pandas as pd

from metarec.benchmarking import (
    ScriptParser,
    json_path,
    nonnegative_int,
    positive_int,
    run_script,
    write_figures,
)


def supports(pred, n: int, k: int, seed: int) -> pd.DataFrame:
    """First k training rows of n random training users (with > k rows), as new users."""
    tr = pred.train
    counts = np.bincount(tr.user_idx)
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(counts > k)
    if n > len(eligible):
        from metarec.errors import MetarecError

        raise MetarecError(f"--users {n}: only {len(eligible)} training users have > {k} rows")
    users = rng.choice(eligible, size=n, replace=False)
    rows = []
    for i, u in enumerate(users):
        for r in np.flatnonzero(tr.user_idx == u)[:k]:
            rows.append((f"bench-{i}", pred.items.ids[tr.item_idx[r]], float(tr.rating[r])))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "label"])


def timed_with(pred, frame: pd.DataFrame, owner, attr: str, replacement):
    """(recommendations, {"recommend_seconds", "users_per_second"}) of ``pred.recommend``
    over ``frame`` (top 10) with ``owner.attr`` replaced: a same-run baseline."""
    from unittest import mock

    with mock.patch.object(owner, attr, replacement):
        t0 = time.perf_counter()
        recs, _ = pred.recommend(frame, k=10)
        secs = time.perf_counter() - t0
    users = frame["user_id"].nunique()
    return recs, {
        "recommend_seconds": round(secs, 2),
        "users_per_second": round(users / secs, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = ScriptParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=json_path, required=True)
    ap.add_argument("--users", type=positive_int, default=1000)
    ap.add_argument("--steps", type=nonnegative_int, default=30)
    ap.add_argument("--encoder", default="hashing", help="text encoder (hashing: no model)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data_dir = os.environ.get("METAREC_DATA_DIR")
    if not data_dir:
        print(
            "bench_recommend: set METAREC_DATA_DIR (the Amazon Food-Kitchen data)", file=sys.stderr
        )
        return 2

    from metarec.data import read_raw
    from metarec.model import ModelConfig
    from metarec.predictor import fit_raw

    raw = read_raw("amazon-food-kitchen")  # from $METAREC_DATA_DIR/amazon-food-kitchen-cdsr
    out: dict = {
        "users": args.users,
        "k": 10,
        "support": 5,
        "steps": args.steps,
        "encoder": args.encoder,
        "seed": args.seed,
    }
    frame = None
    variants = (
        ("popularity+als", {"large_rank_inputs": ["popularity", "als"]}),
        ("knn", {"large_rank_inputs": ["knn"]}),
        ("default", {}),
    )
    for label, blend in variants:
        cfg = ModelConfig.from_dict(
            {
                "text": {"model": args.encoder},
                "train": {"steps": args.steps, "eval_every": max(args.steps, 1)},
                "blend": blend,
                "progress": False,
            }
        )
        t0 = time.perf_counter()
        pred = fit_raw(raw, cfg)
        fit_s = time.perf_counter() - t0
        assert pred.model.blend_ is not None
        if frame is None:
            frame = supports(pred, args.users, 5, args.seed)
        pred.recommend(frame.head(50), k=10)  # warm-up (lazy structures, allocator)
        t0 = time.perf_counter()
        recs, _ = pred.recommend(frame, k=10)
        secs = time.perf_counter() - t0
        out[label] = {
            "rank_inputs": list(pred.model.blend_.rank_inputs),
            "n_items": int(pred.model.n_items_),
            "fit_seconds": round(fit_s, 1),
            "recommend_seconds": round(secs, 2),
            "users_per_second": round(args.users / secs, 1),
            "rows": len(recs),
        }
        print(label, out[label], flush=True)
    # the same default model, its item side computed per task as before it was shared
    # (Scorer.item_side_shared forced False): the baseline of that change, same run
    from metarec.model import MetaRecommender
    from metarec.models.scorer import Scorer

    _, out["default_item_side_per_task"] = timed_with(
        pred, frame, Scorer, "item_side_shared", lambda self, params, base: False
    )
    print("default, item side per task", out["default_item_side_per_task"], flush=True)
    # the same default model scored 8192 items at a time, the fixed chunk before chunks
    # were bounded by (task, item) cells (model._CHUNK_CELLS): the baseline of that change
    real_predict = MetaRecommender._predict

    def fixed_chunk(self, part, fast, user_x, items, item_chunk=None):
        return real_predict(self, part, fast, user_x, items, 8192)

    old_recs, timing = timed_with(pred, frame, MetaRecommender, "_predict", fixed_chunk)
    out["default_fixed_8192_chunk"] = {
        **timing,
        "same_recommendations": bool(old_recs.equals(recs)),
    }
    print("default, 8192-item chunks", out["default_fixed_8192_chunk"], flush=True)
    base = out["popularity+als"]["recommend_seconds"]
    out["knn_over_als_time"] = round(out["knn"]["recommend_seconds"] / base, 2)
    out["default_over_als_time"] = round(out["default"]["recommend_seconds"] / base, 2)
    print(f"recommend time, kNN / popularity + ALS blend: {out['knn_over_als_time']}x")
    print(
        f"recommend time, default (kNN + content) / popularity + ALS: {out['default_over_als_time']}x"
    )
    out["shared_over_per_task_time"] = round(
        out["default"]["recommend_seconds"]
        / out["default_item_side_per_task"]["recommend_seconds"],
        2,
    )
    print(f"recommend time, item side shared / per task: {out['shared_over_per_task_time']}x")
    out["cell_chunks_over_fixed_time"] = round(
        out["default"]["recommend_seconds"] / out["default_fixed_8192_chunk"]["recommend_seconds"],
        2,
    )
    print(f"recommend time, cell-bounded / 8192-item chunks: {out['cell_chunks_over_fixed_time']}x")
    write_figures(args.json, out)
    return 0


if __name__ == "__main__":
    run_script(main)
