"""Smaller RUN directories: fp16 weights, or int8 weights with per-row scales.

Our model is a parameter dict, not ``nn.Linear`` modules, so "dynamic quantisation" is done
by hand: every large 2-D float tensor (the MLP weights, the item-ID embedding table, the
item text feature matrix) is stored as int8 ``q`` with one float32 scale per row,
``w ≈ q · scale[:, None]`` with ``scale = max|row| / 127`` (symmetric, zero rows keep scale
1). Other float tensors (biases, 1-D tables, small matrices) are stored as fp16. The
training log (``train.*``), integer tensors and tensors of at most EXACT_MAX_NUMEL values
(the blend's stacking weights among them) are kept exactly.

The exported RUN is an ordinary RUN (same manifest, safetensors, ids) whose ``meta.json``
has an ``export`` entry naming what was compressed; :func:`dequantize` turns the stored
tensors back into float32 at load time (``Predictor.load`` calls it), so serving code
never sees int8. Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metarec.metrics import is_relevant
from metarec.types import MetarecError

DTYPES = ("fp16", "int8")
_Q, _S = "::int8", "::scale"  # suffixes of the stored int8 values and their row scales
INT8_MIN_NUMEL = 1024  # smaller 2-D tensors are not worth a scale vector; they go fp16
# the largest finite float16: a tensor holding larger values stays float32 (spec "fp32")
FP16_MAX = float(torch.finfo(torch.float16).max)


# tensors this small are stored exactly: fp16 would save a few bytes and can cost much.
# The blend's stacking weights (a handful of float64s) multiply inputs on the rating
# scale's own level: on a 1001-1005 log fp16's ~1e-4 rounding of them moved every
# prediction by 0.33 stars (a probe; 1-5 logs moved by < 0.01)
EXACT_MAX_NUMEL = 64


def _kept(name: str, t: torch.Tensor) -> bool:
    """Tensors stored exactly: the training log, anything not floating point, and tensors
    of at most EXACT_MAX_NUMEL values."""
    return name.startswith("train.") or not t.is_floating_point() or t.numel() <= EXACT_MAX_NUMEL


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (rows, cols), scale float32 (rows,)) with w ≈ q * scale[:, None]."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def compress(tensors: dict[str, torch.Tensor], dtype: str) -> tuple[dict, dict]:
    """(stored tensors, export spec for meta.json) for ``dtype`` 'fp16' or 'int8'."""
    if dtype not in DTYPES:
        raise MetarecError(f"export dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out: dict[str, torch.Tensor] = {}
    spec: dict = {"dtype": dtype, "int8": [], "fp16": []}
    for name, t in tensors.items():
        if _Q in name or _S in name:
            raise MetarecError(f"tensor {name!r}: this RUN is already exported")
        if _kept(name, t):
            out[name] = t
        elif dtype == "int8" and t.ndim == 2 and t.numel() >= INT8_MIN_NUMEL:
            out[name + _Q], out[name + _S] = quantize_rows(t)
            spec["int8"].append(name)
        elif t.numel() and float(t.detach().abs().max()) > FP16_MAX:
            # past fp16's range a value becomes inf: a rating blend's item biases on a
            # 0-1,000,000 scale did, and the exported RUN scored inf (exit 0 all the same)
            out[name] = t
            spec.setdefault("fp32", []).append(name)
        else:
            out[name] = t.detach().to(torch.float16)
            spec["fp16"].append(name)
    for names in spec.values():
        if isinstance(names, list):
            names.sort()
    return out, spec


def dequantize(tensors: dict[str, torch.Tensor], spec: dict | None) -> dict[str, torch.Tensor]:
    """Float32 tensors back from :func:`compress`'s output; ``spec`` None: unchanged."""
    if not spec:
        return tensors
    lists = [spec.get(k, []) for k in ("int8", "fp16")] if isinstance(spec, dict) else []
    if not lists or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in lists
    ):
        raise MetarecError("exported RUN: meta.json's export record is damaged")
    out = dict(tensors)
    try:
        for name in spec.get("int8", []):
            q, scale = out.pop(name + _Q), out.pop(name + _S)
            if q.ndim != 2 or scale.shape != (q.shape[0],):
                raise MetarecError(
                    f"exported RUN: tensor {name!r} has {tuple(scale.shape)} scales for "
                    f"{tuple(q.shape)} int8 weights"
                )
            if not torch.isfinite(scale).all():
                raise MetarecError(f"exported RUN: tensor {name!r} has a non-finite scale")
            out[name] = q.float() * scale.float()[:, None]
        for name in spec.get("fp16", []):
            out[name] = out[name].float()
    except KeyError as err:
        raise MetarecError(f"exported RUN is missing tensor {err}") from None
    return out


def run_size(path: str | Path) -> int:
    """Bytes of all files under a RUN directory."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def export_run(
    run: str | Path,
    out: str | Path,
    dtype: str,
    max_users: int = 256,
    n_negatives: int = 20,
) -> dict:
    """Write a compressed copy of RUN to ``out`` and report sizes and validation metrics.

    Validation users are the ones the fit held out for early stopping (the newest
    ``valid_frac`` of users; see ``MetaRecommender._training_split``), at most
    ``max_users``; each is scored as a cold user on its support (the first K events), so
    its query rows, which are also in the RUN's training log, cannot leak in.
    Metrics on the query: RMSE of the rating model (explicit data) and mean per-user AUC of
    the ranking model for the query items against ``n_negatives`` sampled unseen items.
    """
    import dataclasses

    from metarec.artifacts import check_derived_run, check_run_target, load_run, save_run
    from metarec.predictor import Predictor

    check_derived_run(out, run, "export")
    check_run_target(out)  # before the work, as fit checks it
    src = load_run(run)
    if src.meta.get("export"):
        record = src.meta["export"]
        dtype_was = record.get("dtype", "?") if isinstance(record, dict) else "?"
        raise MetarecError(f"{run}: already an exported RUN ({dtype_was})")
    # measured first: a RUN that cannot be loaded or scored fails before anything is written
    before = validation_metrics(Predictor.from_run(src), max_users, n_negatives)
    tensors, spec = compress(src.tensors, dtype)
    meta = {**src.meta, "export": spec}
    # the export loads (and scores a user over the catalogue) and is measured before it
    # is written: a broken one used to replace a good RUN at --out, with exit 0
    try:
        exported = Predictor.from_run(dataclasses.replace(src, tensors=tensors, meta=meta))
    except MetarecError as err:
        raise MetarecError(
            f"export {dtype}: the exported model does not load ({err}); nothing was written"
        ) from None
    after = validation_metrics(exported, max_users, n_negatives) if before else None
    if after is not None and not all(
        v is None or np.isfinite(v) for k, v in after.items() if k != "users"
    ):
        raise MetarecError(
            f"export {dtype}: the exported model scores the validation users NaN or inf "
            f"({', '.join(f'{k} {v}' for k, v in after.items() if k != 'users')}); "
            "nothing was written"
        )
    save_run(out, config=src.config, tensors=tensors, ids=src.ids, meta=meta)
    size_in, size_out = run_size(run), run_size(out)
    report = {
        "run": str(run),
        "out": str(out),
        "dtype": dtype,
        "bytes_before": size_in,
        "bytes_after": size_out,
        "ratio": round(size_out / max(size_in, 1), 4),
        "int8_tensors": spec["int8"],
        "validation_users": before["users"] if before else 0,
    }
    if before is None:
        # an export is still an export: only the comparison is missing
        return {
            **report,
            "metrics_before": None,
            "metrics_after": None,
            "metric_change": None,
            "note": "the RUN has no validation users with a support and a query to "
            "compare the two on",
        }
    assert after is not None
    extra = {}
    if src.meta.get("update"):
        # update trains on every user of the merged log, these included: the two sets of
        # figures compare the export with its source, on users the model has seen
        extra["note"] = (
            "this RUN was updated, and update trained on every user: the validation "
            "users are in-sample, so the metrics compare the export with its source only"
        )
    elif (src.config.get("model") or {}).get("refit"):
        # model.refit trains again on every training user once the steps are chosen,
        # the validation users included
        extra["note"] = (
            "this RUN was refitted (model.refit), which trains on the validation users "
            "too: they are in-sample, so the metrics compare the export with its source only"
        )
    return {
        **report,
        **extra,
        "metrics_before": {k: v for k, v in before.items() if k != "users"},
        "metrics_after": {k: v for k, v in after.items() if k != "users"},
        "metric_change": {
            k: (None if before[k] is None else after[k] - before[k]) for k in before if k != "users"
        },
    }


def validation_metrics(pred, max_users: int = 256, n_negatives: int = 20) -> dict | None:
    """{"users", "rmse" (explicit only, else None), "auc", "mean_score"} on the fit's
    validation users (None when it has none with a support and a query); see
    :func:`export_run`."""
    import dataclasses

    from metarec.metrics import auc, rmse
    from metarec.types import Dataset

    model = pred.model
    ds = Dataset(
        pred.info.get("dataset", "run"),
        pred.train,
        pred.users,
        pred.items,
        "explicit" if pred.explicit else "implicit",
        tuple(model.rating_range_),
        True,
    )
    split = model._training_split(ds, pred.train, None)
    cold = len(pred.users)  # scored as cold users: their training rows stay out
    tasks = [dataclasses.replace(t, user_idx=cold) for t in split.valid[:max_users]]
    tasks = [t for t in tasks if len(t.support) and len(t.query)]
    if not tasks:
        return None
    rng = np.random.default_rng(0)
    y, s, aucs = [], [], []
    scores = model.score_many(tasks, [t.query.item_idx for t in tasks])
    like = model._like_threshold()
    for t, sc in zip(tasks, scores, strict=True):
        y.append(t.query.rating)
        s.append(sc)
        seen = np.r_[t.support.item_idx, t.query.item_idx]
        pool = np.setdiff1d(np.arange(len(pred.items)), seen)
        neg = rng.choice(pool, size=min(n_negatives, len(pool)), replace=False)
        cand = np.r_[t.query.item_idx, neg]
        label = np.r_[is_relevant(t.query.rating, like), np.zeros(len(neg), bool)].astype(float)
        if 0 < label.sum() < len(label):
            ranks = model.rank_scores(cold, t.support, cand)
            # NaN stays NaN (the metrics refuse it): export_run's check then names the
            # export and says nothing was written
            aucs.append(auc(label, ranks) if np.isfinite(ranks).all() else float("nan"))
    y_all, s_all = np.concatenate(y), np.concatenate(s)
    finite = bool(np.isfinite(s_all).all())
    return {
        "users": len(tasks),
        "rmse": (float(rmse(y_all, s_all)) if finite else float("nan")) if pred.explicit else None,
        "auc": float(np.mean(aucs)) if aucs else None,
        "mean_score": float(np.mean(s_all)),
    }
