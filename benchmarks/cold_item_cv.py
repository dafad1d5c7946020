"""Item-cold ranking inputs checked by cross-validation over items *and* users.

    METAREC_DATA_DIR=../shared/data python benchmarks/cold_item_cv.py \\
        --config configs/ml100k_item_cold.toml --seeds 0 1 2 --json OUT.json

``tune_blend.py`` scores a blend variant by 2-fold CV over validation users, but in item
cold-start both halves rank the *same* validation items, so an input that describes the
items (the numeric "side" columns) is fitted and scored on the same items' popularity.
Here the validation items are split in two as well: the blend weights are fitted on half
the validation users ranking half the items, and scored (nDCG@10) on the other users
ranking the other items — 3 random item splits x both directions x both user halves per
seed. Variants: the meta logit alone, the logit + the "content" input, and the logit +
each "side:<column>" input. Test users and items are never touched: this is a tool for
making choices.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

import numpy as np  # noqa: E402

from metarec.atomic import write_json  # noqa: E402
from metarec.baselines import LightFMRanker  # noqa: E402
from metarec.benchmarking import ScriptParser, json_path, positive_int, run_script  # noqa: E402
from metarec.blend import BlendConfig, fit_rank_weights, ndcg_of_weights  # noqa: E402
from metarec.experiment import (  # noqa: E402
    build_split_features,
    cut_split,
    fit_method,
    load_config,
    load_data,
    ranking_candidates,
)
from metarec.model import MetaRecommender  # noqa: E402
from metarec.types import Interactions, MetarecError, Task  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--method", default="MetaRec")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--splits", type=positive_int, default=3, help="random item splits per seed")
    p.add_argument("--json", type=json_path, required=True)
    p.add_argument(
        "--lightfm",
        action="store_true",
        help="also score the LightFM baseline (fold-in) alone and beside the logit",
    )
    a = p.parse_args(argv)
    cfg = load_config(a.config, [])
    spec = next((m for m in cfg.methods if m.name == a.method), None)
    if spec is None or spec.kind != "meta":
        names = ", ".join(m.name for m in cfg.methods if m.kind == "meta")
        raise MetarecError(
            f"--method {a.method!r}: not a meta method of {a.config} (meta methods: {names}); "
            "the CV splits the meta-model's ranking logit from the closed-form inputs"
        )
    ds = load_data(cfg)
    runs = []
    for seed in a.seeds:
        split = cut_split(ds, cfg, seed, cfg.split.k_shot)
        feats = build_split_features(ds, split.train.item_idx, cfg.text)
        rec, _, _ = fit_method(spec, cfg, ds, split, feats, seed)
        assert isinstance(rec, MetaRecommender) and rec.rank_ is not None
        tasks = list(split.valid)
        items = np.unique(ranking_candidates(ds, split, "valid"))  # (N,) validation items
        pairs = [(t.user_idx, rec._history_without_query(t)) for t in tasks]
        logit = np.stack(rec._scores(rec.rank_, pairs, items, train_rows=False))  # (U, N)
        col = np.full(ds.n_items, -1)
        col[items] = np.arange(len(items))
        like = rec._like_threshold()
        pos = np.zeros(logit.shape, bool)
        excl = np.zeros(logit.shape, bool)
        for r, t in enumerate(tasks):
            c = col[t.query.item_idx[t.query.rating >= like]]
            pos[r, c[c >= 0]] = True
            c = col[t.support.item_idx]
            excl[r, c[c >= 0]] = True
        # the "content" input (an option, not a default: it won the user-split CV and
        # failed on the test items) and the "side" inputs, as the blend computes them
        closed = rec._closed_form(ds, split, BlendConfig(cold_rank_inputs=("content", "side")))
        hists = [(h.item_idx, h.rating.astype(np.float64)) for _, h in pairs]
        inputs = closed.rank_inputs(closed.rank_names, hists, items)  # (U, N, C)
        variants = {"logit": logit[:, :, None]}
        for j, name in enumerate(closed.rank_names):
            variants[f"logit+{name}"] = np.concatenate(
                [logit[:, :, None], inputs[:, :, j : j + 1]], 2
            )
        if a.lightfm:
            # the LightFM baseline as evaluate fits it (same features, seed), each user folded
            # in on the same history as the logit (passed as the support of a user outside
            # LightFM's training users, so no training row is added): (U, N) scores
            lf = LightFMRanker(seed=seed, min_rating=like).fit(ds, split.train, feats)
            empty = Interactions.empty()
            lfs = lf.rank_scores_batch([Task(lf.n_users_, h, empty) for _, h in pairs], items)
            variants["lightfm"] = lfs[:, :, None]
            variants["logit+lightfm"] = np.concatenate([logit[:, :, None], lfs[:, :, None]], 2)
        rng = np.random.default_rng([seed, 0xC01D])
        users = np.arange(len(tasks))
        halves = (users[0::2], users[1::2])
        scores: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(a.splits):
            perm = rng.permutation(len(items))
            item_halves = (perm[: len(items) // 2], perm[len(items) // 2 :])
            for ia, ib in (item_halves, item_halves[::-1]):
                for ua, ub in (halves, halves[::-1]):
                    for name, x in variants.items():
                        fit_cells = np.ix_(ua, ia)
                        w = fit_rank_weights(x[fit_cells], pos[fit_cells], excl[fit_cells], 1e-2)
                        cells = np.ix_(ub, ib)
                        scores[name].append(
                            ndcg_of_weights(x[cells], pos[cells], excl[cells], w, 10)
                        )
        row = {"seed": seed, "ndcg@10": {k: float(np.mean(v)) for k, v in scores.items()}}
        print(seed, {k: round(v, 4) for k, v in row["ndcg@10"].items()}, file=sys.stderr)
        runs.append(row)
    report = {
        "config": a.config,
        "method": a.method,
        "protocol": "2-fold CV over validation users x 2-fold CV over validation items, "
        f"{a.splits} random item splits; nDCG@10 over the held-out half of the items",
        "runs": runs,
    }
    write_json(a.json, report)
    return 0


if __name__ == "__main__":
    run_script(main)
