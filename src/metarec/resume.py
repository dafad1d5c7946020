"""Finished parts of ``metarec evaluate``, kept so an interrupted experiment can resume.

An ML-100K or Amazon experiment fits every method on every seed, 12 to 40 minutes on two
cores; a crash, an out-of-memory kill or Ctrl-C near the end used to throw all of it away.
Each (seed, method) that finishes is written at once, atomically, to
``OUT/partial/seed<S>-<hash of the method name>.json``: its evaluations (the main table
and the K-curve), fit times, grid choice and training history. ``run(..., resume=True)``
(``metarec evaluate --resume``) reads them back instead of fitting again.

A part is reused only where it would come out the same: its fingerprint covers the
experiment config (every section but the method list and the other seeds), the method's
own table, the seed, the data (interactions, item and user tables), the text features
as computed, the installed metarec source, the versions of the packages behind the
figures, the platform and whether CUDA is present. Anything else (another ``--set``,
edited data, edited code, another encoder snapshot) refits that part. Failed fits are not kept, so a resume tries them
again. No pickle: plain JSON, NaN written as null.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.atomic import finite_json, write_json
from metarec.config import to_dict
from metarec.evaluate import EvalResult
from metarec.types import Dataset

PARTIAL_DIR = "partial"
# bumped when the part file's layout changes: an old file is then refitted, not misread
# (2: a digest of the runs, and the runs checked against what a fit would give)
FORMAT = 2


@lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 over the installed metarec package's Python sources (path + bytes)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def data_hash(ds: Dataset) -> str:
    """sha256 over the interactions' arrays, the id maps and the item / user side tables."""
    h = hashlib.sha256()
    inter = ds.interactions
    for name in ("user_idx", "item_idx", "rating", "timestamp", "domain"):
        arr = getattr(inter, name, None)
        if arr is not None:
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    for name in ("users", "items"):
        h.update("\n".join(getattr(ds, name).ids.tolist()).encode())
    for name in ("item_table", "user_table"):
        table = getattr(ds, name, None)
        if table is not None:
            h.update(name.encode())
            roles = (table.text_columns, table.categorical_columns, table.numeric_columns)
            h.update(json.dumps([list(map(str, table.frame.columns)), *map(list, roles)]).encode())
            try:
                rows = pd.util.hash_pandas_object(table.frame, index=False).to_numpy().tobytes()
            except TypeError:  # a cell pandas cannot hash (a list): its JSON text instead
                rows = table.frame.to_json(orient="split", default_handler=str).encode()
            h.update(rows)
    meta = [ds.name, ds.feedback, list(ds.rating_range), ds.has_time, list(ds.domains)]
    h.update(json.dumps(meta, default=str).encode())
    return h.hexdigest()


def features_hash(feats) -> str:
    """sha256 over a FeatureSet's tensors and encoder fingerprint: what the text encoder
    actually gave on this machine (a new snapshot of the same model name, another
    embedding cache), which the config's model name alone does not pin."""
    h = hashlib.sha256(str(feats.encoder_fingerprint).encode())
    for name in ("item_text", "item_side", "user_side"):
        t = getattr(feats, name)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(config, spec, seed: int, data: str, env: dict, features: str = "") -> str:
    """What a (seed, method) part's figures depend on, as one sha256."""
    import torch

    shared = {
        k: v
        for k, v in to_dict(config).items()
        # the method list (each part has its own spec), the title, the failure policy,
        # the other seeds and where the config sits (the data are hashed themselves) do
        # not change a method's figures on this seed; leaving them out lets `--only`, an
        # added method or an added seed reuse the parts already run (left_out, the
        # methods `--only` dropped, too: it names what did not run); the paired intervals
        # are drawn from the parts when the report is written
        if k
        not in ("methods", "name", "fail_fast", "seeds", "base_dir", "left_out", "paired_bootstrap")
    }
    payload = {
        "format": FORMAT,
        "config": shared,
        "method": to_dict(spec),
        "seed": int(seed),
        # the cut-offs every method is scored at: another method's select_metric (HR@7)
        # adds one, and a part run without it lacked that figure when reused
        "eval_ks": list(config.eval_ks()),
        "data": data,
        "features": features,
        "code": code_hash(),
        "packages": env.get("packages", {}),
        "python": env.get("python"),
        # a CUDA run differs from a CPU one (README), and float results move in their
        # last bits across machines: "auto" devices and another platform refit
        "platform": env.get("platform"),
        # another processor's kernels round otherwise (probe 149: the quickstart's MetaRec
        # nDCG@10 moved by 0.016 between two machines): its parts are not reused
        "cpu": env.get("cpu"),
        "cuda": bool(torch.cuda.is_available()),
        # sums split over threads round differently: a part run on 2 threads differed
        # in its last bits from a 1-thread rerun, and --resume mixed them (probe 140)
        "threads": torch.get_num_threads(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def part_path(out_dir: str | Path, seed: int, method: str) -> Path:
    # method names hold spaces, "+", "(" (Pooled+FT, "MetaRec (no blend)"): the file name
    # takes a hash of the name, the name itself is inside
    tag = hashlib.sha256(method.encode()).hexdigest()[:12]
    return Path(out_dir) / PARTIAL_DIR / f"seed{int(seed)}-{tag}.json"


def _array(values: Sequence, dtype) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=dtype)


def _result_to_json(r: EvalResult) -> dict:
    return {
        "model": r.model,
        "metrics": dict(r.metrics),
        "per_user": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in r.per_user.items()},
        "ci95": {k: list(v) for k, v in r.ci95.items()},
        "n_users": {k: int(v) for k, v in r.n_users.items()},
        "user_idx": np.asarray(r.user_idx, dtype=np.int64).tolist(),
        "primary_metric": r.primary_metric,
        "greater_is_better": bool(r.greater_is_better),
    }


def _nan(v):
    return float("nan") if v is None else float(v)


def _result_from_json(d: dict) -> EvalResult:
    return EvalResult(
        model=d["model"],
        metrics={k: _nan(v) for k, v in d["metrics"].items()},
        per_user={k: _array(v, np.float64) for k, v in d["per_user"].items()},
        ci95={k: (_nan(v[0]), _nan(v[1])) for k, v in d["ci95"].items()},
        n_users={k: int(v) for k, v in d["n_users"].items()},
        user_idx=np.asarray(d["user_idx"], dtype=np.int64),
        primary_metric=d["primary_metric"],
        greater_is_better=bool(d["greater_is_better"]),
    )


def save_part(out_dir: str | Path, method: str, seed: int, key: str, runs: Sequence) -> Path:
    """Write one finished (seed, method): its MethodRuns (main, then the K-curve's)."""
    path = part_path(out_dir, seed, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in runs:
        row = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
        row["result"] = _result_to_json(r.result)
        row["history"] = [dict(h) for h in r.history]
        rows.append(row)
    # the digest is taken over the rows as they will read back (NaN as null)
    rows = json.loads(json.dumps(finite_json(rows), allow_nan=False))
    part = {
        "format": FORMAT,
        "method": method,
        "seed": int(seed),
        "key": key,
        "digest": _digest(rows),
        "runs": rows,
    }
    write_json(path, part, indent=None)  # per-user arrays: compact, ~1 MB on ML-100K
    return path


def _digest(rows) -> str:
    """sha256 of the runs' canonical JSON: a part edited or damaged after it was written
    (a metric changed, a run dropped) no longer matches and is fitted again."""
    text = json.dumps(rows, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load_part(
    out_dir: str | Path,
    method: str,
    seed: int,
    key: str,
    run_type,
    main_k: int | None = None,
    curve_ks: Sequence[int] = (),
) -> list | None:
    """The MethodRuns saved for (seed, method) under fingerprint ``key``, or None (no file,
    another fingerprint, or a file that does not read: each means fit again). A part is
    taken only whole, as a fit would give it: its digest matches, and it holds this
    method's and seed's one main run (at ``main_k`` where given) and a K-curve run at
    each of ``curve_ks``; a part missing one was counted reused while the method dropped
    out of the table."""
    path = part_path(out_dir, seed, method)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict):
            return None
        if d.get("key") != key or d.get("method") != method or d.get("format") != FORMAT:
            return None
        if d.get("digest") != _digest(d["runs"]):
            return None
        out = []
        for row in d["runs"]:
            row = dict(row)
            row["result"] = _result_from_json(row["result"])
            row["history"] = tuple(row["history"])
            out.append(run_type(**row))
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    if any(r.method != method or r.seed != seed for r in out):
        return None
    main = [r for r in out if r.scenario == "main"]
    curve = sorted(r.k_shot for r in out if r.scenario == "curve")
    if len(main) != 1 or (main_k is not None and main[0].k_shot != main_k):
        return None
    if curve != sorted(curve_ks) or len(main) + len(curve) != len(out):
        return None
    return out
