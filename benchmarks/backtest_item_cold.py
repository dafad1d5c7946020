"""Item cold-start backtest: choose settings on items further out in time than validation.

    METAREC_DATA_DIR=/work/shared/data python benchmarks/backtest_item_cold.py \\
        --seeds 0 1 2 --json /tmp/backtest.json \\
        --variant 'time:train.episodes="time"' --variant 'default:'

Why: on ML-100K item cold-start the validation items are the 10% of movies first rated
just before the test movies, and choices that won on them have lost on the test movies
(docs/defaults.md). This script rebuilds that situation from the
*training* part of the real split only, so no validation or test interaction is read:

1. the outer split (``make_split(ds, "item-cold", 10, 10, seed)``) gives ``outer.train``;
2. the inner split is the same protocol on ``outer.train`` alone: its newest 20% of
   training movies are the "far" items, the 10% before them the "near" items;
3. every variant is fitted on the inner training rows, early-stopped (and its blend
   fitted) on the near users and items, and scored on both: near is what validation
   measures, far is how a choice holds one step further out in time, as the test
   movies are from the validation ones.

LightFM (same features) is scored the same way as a reference. ``--refit`` also scores,
on the far items, each model trained again on the inner training rows plus the near items'
rows (``model.refit``'s second pass; LightFM refitted alike): whether choices made on the
near items carry further once their rows are trained on, as a deployment would. The JSON holds per-seed
metrics of each variant on near and far items and their means.
"""

from __future__ import annotations

import os

# shared cores: idle OpenMP threads sleep instead of spinning (set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metarec.atomic import write_json  # noqa: E402
from metarec.benchmarking import ScriptParser, embedding_cache, json_path, positive_int, run_script  # noqa: E402
from metarec.config import apply_overrides, from_dict, to_dict  # noqa: E402
from metarec.data import load_dataset  # noqa: E402
from metarec.evaluate import evaluate  # noqa: E402
from metarec.experiment import build_split_features, ranking_candidates  # noqa: E402
from metarec.model import MetaRecommender, ModelConfig, TextConfig  # noqa: E402
from metarec.splits import make_split  # noqa: E402
from metarec.types import Split  # noqa: E402

METRICS = ("MAE", "AUC", "nDCG@3 (query)", "Recall@10 (full)", "nDCG@10 (full)")


def _metrics(result) -> dict[str, float]:
    return {k: float(result.metrics.get(k, float("nan"))) for k in METRICS}


def _variant(spec: str) -> tuple[str, list[str]]:
    """'name:key=value;key=value' -> (name, overrides); 'name:' is the default. Without
    the ':' the whole spec became a name and the "variant" ran the default settings."""
    name, colon, rest = spec.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(
            f"{spec!r} is not name:key=value;... (give 'name:' for the default settings)"
        )
    return name, [p for p in rest.split(";") if p.strip()]


def run_seed(
    seed: int, variants: list[tuple[str, list[str]]], cache: str, lightfm: bool, refit: bool
):
    ds = load_dataset("movielens-100k")
    outer = make_split(ds, "item-cold", k_shot=10, n_query=10, seed=seed)
    inner_ds = dataclasses.replace(ds, interactions=outer.train)
    inner = make_split(inner_ds, "item-cold", k_shot=10, n_query=10, seed=seed)
    # MiniLM text, PCA-64 fitted on the inner training items (TextConfig's defaults)
    feats = build_split_features(inner_ds, inner.train.item_idx, TextConfig(cache=cache))
    near = ranking_candidates(inner_ds, inner, "valid")
    far = ranking_candidates(inner_ds, inner, "test")
    out: dict = {"seed": seed, "near_users": len(inner.valid), "far_users": len(inner.test)}
    # --refit: every inner training row plus the near items' rows (what a deployment holds
    # once validation is over); the far items' rows stay out
    rows = outer.train.take(~np.isin(outer.train.item_idx, inner.test_cold_items))
    print(
        f"seed {seed}: {len(inner.train)} inner training rows; near {len(near)} items / "
        f"{len(inner.valid)} users, far {len(far)} items / {len(inner.test)} users",
        file=sys.stderr,
        flush=True,
    )
    for name, overrides in variants:
        base = to_dict(ModelConfig(seed=seed, progress=False))
        cfg = from_dict(ModelConfig, apply_overrides(base, overrides))
        rec = MetaRecommender(cfg).fit(
            inner_ds, inner.train, feats, valid=inner.valid, valid_items=near
        )
        out[name] = {
            "near": _metrics(evaluate(rec, inner_ds, inner.valid, bootstrap=0, candidates=near)),
            "far": _metrics(evaluate(rec, inner_ds, inner.test, bootstrap=0, candidates=far)),
        }
        if refit:
            # model.refit's second pass (fit refuses refit with validation given, for
            # evaluate's sake; here the baseline is refitted alike), then the near rows
            # join the users' histories as they would in a deployment
            given = Split("given", inner.train, tuple(inner.valid), (), cfg.seed, 10, 10)
            tcfg = dataclasses.replace(cfg.train, seed=cfg.train.seed + 1_000_003 * cfg.seed)
            rec._refit(inner_ds, given, rows, tcfg)
            rec._index_training_rows(rows)
            out[name]["far_refit"] = _metrics(
                evaluate(rec, inner_ds, inner.test, bootstrap=0, candidates=far)
            )
        print(f"seed {seed} {name:12s} {out[name]}", file=sys.stderr, flush=True)
    if lightfm:
        from metarec.baselines import LightFMRanker

        m = LightFMRanker(seed=seed).fit(inner_ds, inner.train, feats)
        out["lightfm"] = {
            "near": _metrics(evaluate(m, inner_ds, inner.valid, bootstrap=0, candidates=near)),
            "far": _metrics(evaluate(m, inner_ds, inner.test, bootstrap=0, candidates=far)),
        }
        if refit:
            m = LightFMRanker(seed=seed).fit(inner_ds, rows, feats)
            out["lightfm"]["far_refit"] = _metrics(
                evaluate(m, inner_ds, inner.test, bootstrap=0, candidates=far)
            )
        print(f"seed {seed} lightfm      {out['lightfm']}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--variant", action="append", default=[], type=_variant, help="name:key=value;key=value"
    )
    p.add_argument("--lightfm", action="store_true", help="also score LightFM (lightfm-next)")
    p.add_argument("--cache", default=embedding_cache())
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument(
        "--refit",
        action="store_true",
        help="also score each model (and LightFM) trained again on the inner training rows "
        "plus the near items' rows, on the far items",
    )
    p.add_argument("--json", type=json_path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = args.variant or [_variant("default:")]
    runs = [run_seed(s, variants, args.cache, args.lightfm, args.refit) for s in args.seeds]
    parts = ("near", "far", "far_refit") if args.refit else ("near", "far")
    names = [n for n, _ in variants] + (["lightfm"] if args.lightfm else [])
    mean = {
        n: {
            part: {m: float(np.mean([r[n][part][m] for r in runs])) for m in METRICS}
            for part in parts
        }
        for n in names
    }
    for n in names:
        for part in parts:
            row = "  ".join(f"{m}={v:.4f}" for m, v in mean[n][part].items())
            print(f"{n:12s} {part:4s} {row}")
    report = {
        "protocol": "ML-100K item-cold inside the outer split's training rows: near = inner "
        "validation items (early stopping, blend), far = inner test items; K=10, Q=10",
        "variants": {n: o for n, o in variants},
        "runs": runs,
        "mean": mean,
    }
    write_json(args.json, report)


if __name__ == "__main__":
    run_script(main)
