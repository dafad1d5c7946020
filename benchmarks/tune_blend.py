"""Compare blend variants of one fitted method on validation users only, for any config.

    METAREC_DATA_DIR=../shared/data python benchmarks/tune_blend.py \\
        --config configs/amazon_food_kitchen.toml --method Transfer-joint --seeds 0 \\
        --variant 'pop:rank_inputs=["popularity"]' \\
        --variant 'pop+als:rank_inputs=["popularity","als"]' --json OUT.json \\
        [--eval-k 1 10]

Per seed the experiment's split and features are cut exactly as ``metarec evaluate`` cuts
them, ``--method`` (a meta / pooled / transfer method of the config) is fitted once on the
training rows (validation users drive its early stopping, as in evaluate), and then every
variant — ``LABEL:key=value,key=value`` overrides of the model's ``BlendConfig`` — is scored
by 2-fold cross-validation over the validation users: its blend weights are fitted on one
half and the metrics taken on the other, both ways. The full ranking runs over the same
candidates as evaluate (held-out items in item cold start, the target domain's items in
cross-domain). ``--eval-k`` scores the same held-out halves with their supports cut to
other sizes (the blend is still fitted at the config's K): each K with its own query,
the next interactions after K (``--eval-query next``), or as the report's K-curve
scores test users (``--eval-query fixed``): every K on the largest K's query, the
items of the largest support left out of the ranking. Test users are never scored:
this is a tool for making choices.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from metarec.atomic import write_json  # noqa: E402
from metarec.benchmarking import ScriptParser, json_path, run_script  # noqa: E402
from metarec.blend import BlendConfig  # noqa: E402
from metarec.config import apply_overrides, from_dict, to_dict  # noqa: E402
from metarec.evaluate import evaluate  # noqa: E402
from metarec.experiment import (  # noqa: E402
    build_split_features,
    cut_split,
    fit_method,
    kcurve_tasks,
    load_config,
    load_data,
    ranking_candidates,
)
from metarec.model import MetaRecommender  # noqa: E402
from metarec.types import MetarecError  # noqa: E402


def parse_variant(text: str, base: BlendConfig) -> tuple[str, BlendConfig | None]:
    """'LABEL:key=value,key=value' -> (LABEL, BlendConfig); 'LABEL:none' = no blend."""
    label, _, body = text.partition(":")
    if not label:
        raise MetarecError(f"--variant {text!r}: needs LABEL:overrides")
    if body.strip() == "none":
        return label, None
    # split on commas outside brackets: rank_inputs=["a","b"],weight_decay=0.1
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += 1 if ch in "[(" else -1 if ch in "])" else 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return label, from_dict(BlendConfig, apply_overrides(to_dict(base), parts), "blend")


def cv_blend(
    rec: MetaRecommender,
    ds,
    split,
    blend: BlendConfig | None,
    cands,
    threshold,
    eval_split=None,
    exclude=None,
):
    """Per-user validation metrics of one blend variant by 2-fold CV (fitted model shared).

    The blend is fitted on one half of ``split``'s validation users and scored on the
    other half's tasks in ``eval_split`` (default ``split``; the same users cut at
    another support size K), both ways."""
    valid = list(split.valid)
    folds = [valid[0::2], valid[1::2]]
    scored = list((eval_split or split).valid)
    held_users = [{t.user_idx for t in folds[1 - k]} for k in (0, 1)]
    held = [[t for t in scored if t.user_idx in held_users[k]] for k in (0, 1)]
    saved_cfg, saved_blend = rec.config, rec.blend_
    per_user: dict[str, list[np.ndarray]] = {}
    try:
        for k in (0, 1):
            if blend is None:
                rec.blend_ = None
            else:
                rec.config = dataclasses.replace(saved_cfg, blend=blend)
                rec.blend_ = rec._fit_blend(ds, dataclasses.replace(split, valid=tuple(folds[k])))
            r = evaluate(
                rec,
                ds,
                held[k],
                threshold=threshold,
                bootstrap=0,
                candidates=cands,
                exclude=exclude,
            )
            for name, v in r.per_user.items():
                per_user.setdefault(name, []).append(np.asarray(v, dtype=np.float64))
    finally:
        rec.config, rec.blend_ = saved_cfg, saved_blend
    out = {}
    for name, vs in per_user.items():
        v = np.concatenate(vs)
        out[name] = float(np.nanmean(v)) if np.isfinite(v).any() else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--method", required=True, help="a meta, pooled or transfer method's name")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--variant", action="append", default=[], help="LABEL:key=value,...")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument(
        "--eval-k",
        type=int,
        nargs="+",
        default=None,
        help="support sizes the variants are scored at (default: the config's K); the "
        "blend is always fitted on the config's K",
    )
    p.add_argument(
        "--eval-query",
        choices=("next", "fixed"),
        default="next",
        help="with --eval-k: each K's own next interactions (next), or the largest K's "
        "query at every K, as the report's K-curve (fixed)",
    )
    p.add_argument("--json", type=json_path, required=True)
    a = p.parse_args(argv)
    # only the method run is checked: a [model]-wide setting that another method of the
    # config cannot take (rank_loss "softmax" with a MAML ranking model) does not stop it
    cfg = load_config(a.config, a.overrides, only=[a.method], only_flag="--method")
    spec = next((m for m in cfg.methods if m.name == a.method), None)
    if spec is None or spec.kind == "baseline":
        # one line and exit 2 through run_script, as every bad flag (SystemExit gave 1)
        raise MetarecError(
            f"--method {a.method!r}: not a meta/pooled/transfer method of the config"
        )
    ds = load_data(cfg)
    runs = []
    for seed in a.seeds if a.seeds is not None else list(cfg.seeds):
        t0 = time.perf_counter()
        split = cut_split(ds, cfg, seed, cfg.split.k_shot)
        feats = build_split_features(ds, split.train.item_idx, cfg.text)
        rec, _, secs = fit_method(spec, cfg, ds, split, feats, seed)
        assert isinstance(rec, MetaRecommender)
        base = rec.config.blend
        variants = [("fitted default", base)] + [parse_variant(v, base) for v in a.variant]
        row = {"seed": seed, "fit_s": secs, "n_valid": len(split.valid), "variants": {}}
        eval_ks = a.eval_k or [cfg.split.k_shot]
        at_k = {k: split if k == cfg.split.k_shot else cut_split(ds, cfg, seed, k) for k in eval_ks}
        gaps: dict[int, dict | None] = dict.fromkeys(eval_ks)
        if a.eval_query == "fixed" and a.eval_k:
            # the K-curve's tasks, built from the validation users as from test users
            as_test = {k: dataclasses.replace(s, test=s.valid) for k, s in at_k.items()}
            users = set.intersection(*({t.user_idx for t in s.valid} for s in at_k.values()))
            tasks, gaps_k, fixed = kcurve_tasks(as_test, users)
            if not fixed:
                raise SystemExit("--eval-query fixed: this split's K recuts differ in rows")
            at_k = {k: dataclasses.replace(s, valid=tasks[k]) for k, s in at_k.items()}
            gaps.update({k: gaps_k.get(k) or None for k in eval_ks})
        for k_eval in eval_ks:
            at = at_k[k_eval]
            cands = ranking_candidates(ds, at, "valid")
            for label, blend in variants:
                name = label if a.eval_k is None else f"{label} @K={k_eval}"
                row["variants"][name] = cv_blend(
                    rec, ds, split, blend, cands, cfg.threshold, eval_split=at, exclude=gaps[k_eval]
                )
                shown = {k: round(v, 4) for k, v in row["variants"][name].items() if v is not None}
                print(f"seed {seed} {name:24s} {shown}", file=sys.stderr, flush=True)
        row["seconds"] = time.perf_counter() - t0
        runs.append(row)
    labels = list(runs[0]["variants"])
    metrics = list(runs[0]["variants"][labels[0]])
    mean = {
        lab: {
            m: float(
                np.mean([r["variants"][lab][m] for r in runs if r["variants"][lab][m] is not None])
            )
            for m in metrics
            if any(r["variants"][lab][m] is not None for r in runs)
        }
        for lab in labels
    }
    report = {
        "config": a.config,
        "method": a.method,
        "overrides": a.overrides,
        "variants": a.variant,
        "protocol": "2-fold CV over validation users; test users never scored",
        "eval_query": a.eval_query if a.eval_k else None,
        "runs": runs,
        "mean_over_seeds": mean,
    }
    write_json(a.json, report)
    for lab, row in mean.items():
        keys = [k for k in row if "(full)" in k or k in ("MAE", "AUC", "nDCG@3 (query)")]
        print(f"{lab:24s} " + "  ".join(f"{k}={row[k]:.4f}" for k in keys))
    return 0


if __name__ == "__main__":
    run_script(main)
