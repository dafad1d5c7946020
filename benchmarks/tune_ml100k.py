"""MovieLens-100K user cold-start: the default MetaRecommender against every baseline.

    METAREC_DATA_DIR=/work/shared/data python benchmarks/tune_ml100k.py \\
        --seeds 0 1 2 --json /tmp/tune_ml100k.json [--cache /tmp/ec1] [--set key=value ...]

Protocol (issue #5): ``make_split(ds, "user-cold", k_shot=10, n_query=10, seed)``; users are
split by first-rating time, so the split is the same for every seed and the seed changes the
models (initialisation, sampling). Features: MiniLM text vectors, PCA-64 fitted on training
items; the same FeatureSet for every model. Per seed:

1. every baseline is fitted on ``split.train`` and evaluated on validation and test users;
2. the default ``MetaRecommender(ModelConfig())`` (plus any ``--set`` overrides) is fitted
   on ``split.train`` with ``valid=split.valid`` (early stopping and the blend weights);
3. **choices** are compared on validation users only, by 2-fold cross-validation over them
   (the blend weights are fitted on one half and scored on the other, both ways): the
   meta-model alone, and blends with other input sets / relevance thresholds, all sharing
   the one fitted meta-model;
4. the fitted default is evaluated once on test users (``--no-test``: not at all; a run
   for making a choice then computes, logs and keeps validation figures only).

The JSON holds per-seed metrics, the mean ± std over seeds, the margins of the default over
the best baseline per metric, the validation table of choices and the fit times.
"""

from __future__ import annotations

import os

# shared cores: idle OpenMP threads sleep instead of spinning (set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tune_blend import cv_blend  # noqa: E402  (benchmarks/, beside this script)

from metarec.atomic import write_json  # noqa: E402
from metarec.baselines import make_baseline  # noqa: E402
from metarec.benchmarking import ScriptParser, embedding_cache, json_path, positive_int, run_script  # noqa: E402
from metarec.blend import BlendConfig  # noqa: E402
from metarec.config import apply_overrides, from_dict, to_dict  # noqa: E402
from metarec.data import load_dataset  # noqa: E402
from metarec.evaluate import evaluate  # noqa: E402
from metarec.experiment import ranking_candidates  # noqa: E402
from metarec.model import MetaRecommender, ModelConfig  # noqa: E402
from metarec.splits import make_split  # noqa: E402

METRICS = ("MAE", "RMSE", "AUC", "nDCG@3 (query)", "Recall@10 (full)", "nDCG@10 (full)")
GOAL_METRICS = ("MAE", "nDCG@3 (query)", "AUC", "Recall@10 (full)")
BASELINES = (
    "item_mean_user_bias",
    "biased_mf",
    "ease",
    "implicit_als",
    "lightfm",
    "popularity",
)
# blend variants compared on validation users (the default is BlendConfig())
SPLIT = ("user_bias", "item_bias", "mf_user", "mf_item")


def _plain(**kw) -> BlendConfig:
    """A variant as labelled: least squares without shrinkage unless it says so (the
    default's shrinkage toward ItemMean+UserBias is the "default blend" row), and the
    labelled shrink variants toward BiasedMF, as they were first run."""
    return BlendConfig(**{"rating_shrink": 0.0, "rating_prior": "biased_mf", **kw})


VARIANTS = {
    "meta alone": None,
    "default blend": BlendConfig(),
    "rating free intercept +like": _plain(rating_intercept=True),
    "rating l2 (imub+mf)": _plain(rating_intercept=True, rating_like=False),
    "rating l1": _plain(rating_intercept=True, rating_loss="l1", rating_like=False),
    "rating l2 +like": _plain(rating_intercept=True, rating_like=True),
    "rating l2 split": _plain(rating_intercept=True, rating_inputs=SPLIT, rating_like=False),
    "rating l2 split +like": _plain(rating_intercept=True, rating_inputs=SPLIT, rating_like=True),
    "rating l2 split +pop +like": _plain(
        rating_intercept=True, rating_inputs=(*SPLIT, "popularity"), rating_like=True
    ),
    "rating l2 imub only": _plain(rating_intercept=True, rating_inputs=("item_mean_user_bias",)),
    "rating l2 mf only": _plain(rating_intercept=True, rating_inputs=("biased_mf",)),
    "rating affine +like": _plain(rating_intercept=False),
    "rating affine l1 +like": _plain(rating_intercept=False, rating_loss="l1"),
    "rating affine (imub+mf)": _plain(rating_intercept=False, rating_like=False),
    "rating shrink 0.1 +like": _plain(rating_intercept=True, rating_shrink=0.1),
    "rating shrink 1 +like": _plain(rating_intercept=True, rating_shrink=1.0),
    "rating affine shrink 0.1 +like": _plain(rating_intercept=False, rating_shrink=0.1),
    "rating affine shrink 1 +like": _plain(rating_intercept=False, rating_shrink=1.0),
    "rating shrink imub 0.03": BlendConfig(rating_shrink=0.03),
    "rating shrink imub 0.1": BlendConfig(rating_shrink=0.1),
    "rating affine +like +pop": _plain(
        rating_intercept=False, rating_inputs=("item_mean_user_bias", "biased_mf", "popularity")
    ),
    "rating affine +like +item_bias": _plain(
        rating_intercept=False, rating_inputs=("item_mean_user_bias", "biased_mf", "item_bias")
    ),
    "rating affine +like +mf_item": _plain(
        rating_intercept=False, rating_inputs=("item_mean_user_bias", "biased_mf", "mf_item")
    ),
    "rating affine imub +like": _plain(rating_inputs=("item_mean_user_bias",)),
    "rating affine imub": _plain(rating_inputs=("item_mean_user_bias",), rating_like=False),
    "rank ease": BlendConfig(rank_inputs=("ease",)),
    "rank ease+pop": BlendConfig(rank_inputs=("ease", "popularity")),
    "rank ease+pop+mf": BlendConfig(rank_inputs=("ease", "popularity", "biased_mf")),
    "rank ease+pop+als": BlendConfig(rank_inputs=("ease", "popularity", "als")),
    "rank pop+als": BlendConfig(rank_inputs=("popularity", "als")),
    "rank relevant >= 4": BlendConfig(relevant_threshold=4.0),
    "rank decay 1e-3": BlendConfig(weight_decay=1e-3),
    "rank decay 1e-2": BlendConfig(weight_decay=1e-2),
    "rank decay 1e-1": BlendConfig(weight_decay=1e-1),
    "rank ease reg 250": BlendConfig(ease_reg=250.0),
    "rank ease reg 1000": BlendConfig(ease_reg=1000.0),
}


def _metrics(result) -> dict[str, float]:
    return {k: float(result.metrics.get(k, float("nan"))) for k in METRICS}


def _cv_blend(rec: MetaRecommender, ds, split, blend: BlendConfig | None) -> dict[str, float]:
    """Validation metrics of a blend variant by 2-fold CV over validation users (the one
    implementation in tune_blend.py; validation users rank their own candidates)."""
    got = cv_blend(rec, ds, split, blend, ranking_candidates(ds, split, "valid"), 4.0)
    return {k: float("nan") if got.get(k) is None else got[k] for k in METRICS}


def run_seed(
    seed: int,
    cache: str,
    overrides: list[str],
    log,
    baselines: list[str],
    variants: list[str],
    protocol: str = "user-cold",
    score_test: bool = True,
) -> dict:
    ds = load_dataset("movielens-100k")
    split = make_split(ds, protocol, k_shot=10, n_query=10, seed=seed)
    known = np.zeros(ds.n_items, dtype=bool)
    known[split.train.item_idx] = True
    # item-cold: the full ranking runs over the part's held-out items, as in evaluate
    cands_v, cands_t = ranking_candidates(ds, split, "valid"), ranking_candidates(ds, split)
    # the model's config first: its [text] table (say text.reduce) decides the features
    # every method gets (MiniLM, PCA-64 fitted on the training items by default)
    base = to_dict(ModelConfig(seed=seed, progress=False))
    base["text"]["cache"] = cache
    cfg = from_dict(ModelConfig, apply_overrides(base, overrides))
    feats = MetaRecommender(cfg).build_features(ds, known)
    out: dict = {"seed": seed, "valid": {}, "test": {}, "fit_s": {}, "choices": {}}
    for name in baselines:
        kw = {"seed": seed} if name in ("biased_mf", "implicit_als", "lightfm") else {}
        t0 = time.perf_counter()
        model = make_baseline(name, **kw).fit(ds, split.train, feats)
        out["fit_s"][name] = time.perf_counter() - t0
        out["valid"][name] = _metrics(
            evaluate(model, ds, split.valid, bootstrap=0, candidates=cands_v)
        )
        if score_test:
            out["test"][name] = _metrics(
                evaluate(model, ds, split.test, bootstrap=0, candidates=cands_t)
            )
            log(f"seed {seed} {name:22s} test {out['test'][name]}")
    t0 = time.perf_counter()
    # valid_items as `metarec evaluate` passes them: the ranking blend is fitted over the
    # items the validation users are ranked on (item cold: the validation items)
    rec = MetaRecommender(cfg).fit(ds, split.train, feats, valid=split.valid, valid_items=cands_v)
    out["fit_s"]["MetaRec"] = time.perf_counter() - t0
    out["best_step"] = {
        "rating": rec.rating_.result.best_step if rec.rating_ else None,
        "rank": rec.rank_.result.best_step if rec.rank_ else None,
    }
    log(f"seed {seed} MetaRec fit {out['fit_s']['MetaRec']:.1f}s steps {out['best_step']}")
    for label in variants:
        variant = VARIANTS[label]
        out["choices"][label] = _cv_blend(rec, ds, split, variant)
        log(f"seed {seed} valid-CV {label:24s} {out['choices'][label]}")
    out["valid"]["MetaRec"] = _metrics(
        evaluate(rec, ds, split.valid, bootstrap=0, candidates=cands_v)
    )
    log(f"seed {seed} MetaRec valid {out['valid']['MetaRec']}")
    if not score_test:  # --no-test: choices are made on validation; test users stay unread
        del out["test"]
        return _with_blend_weights(out, rec.blend_)
    out["test"]["MetaRec"] = _metrics(
        evaluate(rec, ds, split.test, bootstrap=0, candidates=cands_t)
    )
    log(f"seed {seed} MetaRec test {out['test']['MetaRec']}")
    # for the record (not used for any choice): the meta-model alone on test
    blend, rec.blend_ = rec.blend_, None
    out["test"]["MetaRec (no blend)"] = _metrics(
        evaluate(rec, ds, split.test, bootstrap=0, candidates=cands_t)
    )
    rec.blend_ = blend
    return _with_blend_weights(out, blend)


def _with_blend_weights(out: dict, blend) -> dict:
    if blend is not None:
        out["blend_weights"] = {
            "rating_inputs": [
                "meta",
                *(["like logit"] if blend.rating_like else []),
                *blend.rating_inputs,
                "intercept",
            ],
            "rating": None if blend.rating_weights is None else blend.rating_weights.tolist(),
            "rank_inputs": ["meta logit", *blend.rank_inputs],
            "rank": None if blend.rank_weights is None else blend.rank_weights.tolist(),
        }
    return out


def summarise(runs: list[dict], part: str = "test") -> dict:
    models = list(runs[0][part])
    table = {}
    for m in models:
        vals = {k: np.array([r[part][m][k] for r in runs]) for k in METRICS}
        table[m] = {
            k: (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
            for k, v in vals.items()
        }
    margins = {}
    for k in GOAL_METRICS:
        lower = k in ("MAE", "RMSE")
        cands = {b: table[b][k][0] for b in BASELINES if b in table and np.isfinite(table[b][k][0])}
        if not cands:  # e.g. --baselines popularity: nothing to compare MAE with
            continue
        best = (min if lower else max)(cands, key=cands.get)
        ours = table["MetaRec"][k][0]
        margin = (cands[best] - ours) if lower else (ours - cands[best])
        margins[k] = {
            "best_baseline": best,
            "baseline": cands[best],
            "ours": ours,
            "margin": margin,
            "wins": bool(margin > 0),
        }
    mae, rec10 = table["MetaRec"]["MAE"][0], table["MetaRec"]["Recall@10 (full)"][0]
    return {
        f"{part}_mean_std": table,
        "margins": margins,
        "aims": {"MAE <= 0.80": bool(mae <= 0.80), "Recall@10 >= 0.20": bool(rec10 >= 0.20)},
    }


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", default=embedding_cache())
    p.add_argument("--json", type=json_path, required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--baselines", nargs="*", default=list(BASELINES))
    # checked at parse: an unknown name was a KeyError after the whole MetaRec fit
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    # item-cold: the newest items are held out (validation items / test items), see splits
    p.add_argument("--protocol", choices=("user-cold", "item-cold"), default="user-cold")
    # score validation users only (a tuning run: no test figure is computed, logged or kept)
    p.add_argument("--no-test", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    runs = [
        run_seed(s, a.cache, a.overrides, log, a.baselines, a.variants, a.protocol, not a.no_test)
        for s in a.seeds
    ]
    part = "valid" if a.no_test else "test"
    report = {
        "protocol": f"movielens-100k {a.protocol} K=10 Q=10",
        "overrides": a.overrides,
        "runs": runs,
        **summarise(runs, part),
    }
    write_json(a.json, report)
    print(f"{part} users:")
    for m, row in report[f"{part}_mean_std"].items():
        print(f"{m:22s} " + "  ".join(f"{k}={v[0]:.4f}±{v[1]:.4f}" for k, v in row.items()))
    print(json.dumps(report["margins"], indent=1))
    print(json.dumps(report["aims"]))
    return 0


if __name__ == "__main__":
    run_script(main)
