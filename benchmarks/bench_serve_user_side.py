"""What a request's ``user`` (a new user's side data) costs ``metarec serve``, by user count.

Fits a tiny RUN on a synthetic log of ``--users`` users (4 ratings each, 500 items; a users
file with age, occupation and a short bio), then times /score requests in-process
(FastAPI's TestClient, one client, one at a time) over a pool of ``--pool`` new users,
each with a 3-item support:

- ``plain``: no ``user`` field, every request an adapted-cache hit (the pool is warmed
  first): the baseline, measured in the same run;
- ``user_repeat``: the same requests with each user's ``user`` field, sent before (a live
  client sends its user's data with every request): the extra cost of the field. Sent
  alternately with ``plain``'s (one of each per user and round), so that a machine
  growing busier or quieter moves both alike (timed as two phases, their ratio moved
  with the load);
- ``user_first``: a ``user`` field never sent before (a new user's first request): an
  adapted-cache miss, encoding the row, building the view and adapting.

Reports mean / p50 / p99 ms per phase and each phase's mean over ``plain``'s.

    python benchmarks/bench_serve_user_side.py --users 50000 --json figures.json
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from metarec.benchmarking import (
    ScriptParser,
    json_path,
    positive_int,
    run_script,
    write_figures,
)

OCCUPATIONS = ["artist", "baker", "clerk", "doctor", "engineer", "farmer"]


def world(folder: Path, n_users: int, n_items: int = 500, seed: int = 0) -> dict:
    """T.csv, I.csv, U.csv of a log of ``n_users`` users (4 distinct items each)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 4)
    # 4 distinct items per user: a random start and three fixed strides
    start = rng.integers(0, n_items, n_users)
    items = (np.repeat(start, 4) + np.tile([0, 7, 31, 101], n_users)) % n_items
    pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in users],
            "item_id": [f"i{i}" for i in items],
            "rating": rng.integers(1, 6, len(users)),
            "timestamp": np.arange(len(users)),
        }
    ).to_csv(folder / "T.csv", index=False)
    pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"item {i} of kind {i % 7}" for i in range(n_items)],
        }
    ).to_csv(folder / "I.csv", index=False)
    pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_users)],
            "age": rng.integers(18, 70, n_users),
            "occupation": [OCCUPATIONS[u % 6] for u in range(n_users)],
            "bio": [f"likes kind {u % 7} and {u % 13}" for u in range(n_users)],
        }
    ).to_csv(folder / "U.csv", index=False)
    return {k: folder / f"{k}.csv" for k in ("T", "I", "U")}


def timed(client, bodies: list[dict]) -> np.ndarray:
    """Milliseconds of each /score request, in order; any non-200 stops the benchmark."""
    out = np.empty(len(bodies))
    for j, body in enumerate(bodies):
        t0 = time.perf_counter()
        r = client.post("/score", json=body)
        out[j] = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise SystemExit(f"bench_serve_user_side: /score said {r.status_code}: {r.text}")
    return out


def summary(ms: np.ndarray) -> dict:
    return {
        "requests": len(ms),
        "mean_ms": round(float(ms.mean()), 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def main() -> int:
    ap = ScriptParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=positive_int, default=50_000, help="users in the RUN")
    ap.add_argument("--pool", type=positive_int, default=200, help="new users sending requests")
    ap.add_argument("--rounds", type=positive_int, default=5, help="passes over the pool")
    ap.add_argument("--json", type=json_path, help="write the results here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_serve_user_side."))
    try:
        return _bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args, work: Path) -> int:
    from fastapi.testclient import TestClient

    from metarec.cli import main as cli
    from metarec.predictor import Predictor
    from metarec.serve.app import create_app

    paths = world(work, args.users)
    t0 = time.perf_counter()
    argv = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"])]
    argv += ["--users", str(paths["U"]), "--out", str(work / "RUN")]
    argv += ["--set", "text.model='hashing:64'", "--set", "train.steps=20"]
    argv += ["--set", "train.eval_every=20", "--set", "progress=false"]
    with contextlib.redirect_stdout(io.StringIO()):  # fit's summary JSON
        code = cli(argv)
    if code != 0:
        raise SystemExit("bench_serve_user_side: fit failed")
    fit_s = time.perf_counter() - t0
    pred = Predictor.load(work / "RUN")
    client = TestClient(create_app(pred))
    rng = np.random.default_rng(1)
    items = [f"i{i}" for i in range(20)]

    def body(j: int, side: dict | None) -> dict:
        support = [
            {"item_id": f"i{(3 * j + t) % 500}", "rating": 1 + (j + t) % 5} for t in range(3)
        ]
        out = {"user_id": f"new{j}", "interactions": support, "item_ids": items}
        return out if side is None else {**out, "user": side}

    sides = [
        {"age": int(rng.integers(18, 70)), "occupation": OCCUPATIONS[j % 6], "bio": f"likes {j}"}
        for j in range(args.pool)
    ]
    plain = [body(j, None) for j in range(args.pool)]
    with_user = [body(j, sides[j]) for j in range(args.pool)]
    # warm-up: every plain request and every user's first request once
    timed(client, plain)
    first = timed(client, with_user)
    both = timed(
        client, [b for pair in zip(plain, with_user, strict=True) for b in pair] * args.rounds
    )
    repeat_plain, repeat_user = both[0::2], both[1::2]
    # new users' first requests, after the others (the same pool size, other data)
    fresh = [body(args.pool + j, {**sides[j], "bio": f"new {j}"}) for j in range(args.pool)]
    first_again = timed(client, fresh)
    result = {
        "protocol": (
            "in-process TestClient, one request at a time, /score of 20 items, 3-item "
            "supports; plain and user_repeat are adapted-cache hits, sent alternately; "
            "user_first are misses"
        ),
        "users": args.users,
        "user_side_width": int(pred.model.features_.user_side.shape[1]),
        "fit_seconds": round(fit_s, 1),
        "plain": summary(repeat_plain),
        "user_repeat": summary(repeat_user),
        "user_first": summary(np.concatenate([first, first_again])),
    }
    base = result["plain"]["mean_ms"]
    for k in ("user_repeat", "user_first"):
        result[k]["mean_over_plain"] = round(result[k]["mean_ms"] / base, 2)
    for k in ("plain", "user_repeat", "user_first"):
        print(f"{k:12s} {result[k]}")
    if args.json:
        write_figures(args.json, result)
    return 0


if __name__ == "__main__":
    run_script(main)
