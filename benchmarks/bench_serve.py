"""Throughput and latency of ``metarec serve`` /recommend on MovieLens-100K.

Starts ``python -m metarec serve`` as a subprocess on 127.0.0.1 (a free port), then drives
it with httpx from ``--concurrency`` async clients until ``--requests`` requests are done or
``--time-limit`` seconds pass. Each request is an anonymous (cold) user with a
``--support``-interaction support taken from a real ML-100K user's history (a pool of
``--pool`` distinct supports, so the adapted-params cache sees repeats as a live service
would); the response is the top-10 over the whole catalogue with seen items excluded.

Baseline in the same run: the same client load on ``/health`` (the HTTP stack alone), so
the model's share of the cost is visible as a ratio. Reports req/s, p50/p90/p99/max
latency, errors, the server's RSS before and after, and the cache counters.

    python benchmarks/bench_serve.py --json bench_serve.json            # fits a hashing model
    python benchmarks/bench_serve.py --run RUN --json bench_serve.json  # an existing RUN

The client runs on the same machine as the server: on 2 cores they compete for the CPU, so
by default the server is pinned to one core and the client to the other (``--no-pin`` to
let the OS place them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from metarec.benchmarking import (
    ScriptParser,
    json_path,
    nonnegative_int,
    positive_float,
    positive_int,
    run_script,
    write_figures,
)


def fit_ml100k(data_dir: Path, out: Path, encoder: str, steps: int) -> dict:
    from metarec.data import read_raw
    from metarec.model import ModelConfig
    from metarec.predictor import fit_raw

    t0 = time.perf_counter()
    cfg = ModelConfig.from_dict(
        {"text": {"model": encoder}, "train": {"steps": steps, "eval_every": 50}, "progress": False}
    )
    pred = fit_raw(read_raw("movielens-100k", data_dir), cfg)
    pred.save(out)
    return {"fit_seconds": round(time.perf_counter() - t0, 1), "encoder": encoder, "steps": steps}


def supports(run: Path, n: int, k: int, seed: int, fresh: bool = False) -> list[list[dict]]:
    """``n`` supports of ``k`` (item, rating, timestamp) rows from random users' histories:
    the first k or a random k (alternating). ``fresh``: every support a random k of a
    random user (repeats are then practically impossible: every request is a cache miss)."""
    from metarec.predictor import Predictor

    pred = Predictor.load(run)
    tr = pred.train.sorted_by_time()
    rng = np.random.default_rng(seed)
    users = np.unique(tr.user_idx)
    picked = (
        rng.choice(users, size=n, replace=True)
        if fresh
        else rng.choice(users, size=min(n, len(users)), replace=False)
    )
    out = []
    for u in picked:
        rows = np.flatnonzero(tr.user_idx == u)
        if fresh or len(out) % 2:
            rows = rows[rng.permutation(len(rows))[:k]]
        else:
            rows = rows[:k]
        out.append(
            [
                {
                    "item_id": str(pred.items.ids[tr.item_idx[r]]),
                    "rating": float(tr.rating[r]),
                    "timestamp": int(tr.timestamp[r]),
                }
                for r in rows
            ]
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drive(url: str, bodies: list, n: int, conc: int, limit_s: float) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    counter = iter(range(n))
    t_end = time.perf_counter() + limit_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            if time.perf_counter() > t_end:
                return
            t = time.perf_counter()
            try:
                if bodies:
                    r = await client.post(url, json=bodies[i % len(bodies)])
                else:
                    r = await client.get(url)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            lat.append(time.perf_counter() - t)
            errors += not ok

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(conc)))
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    if not len(ms):  # the time limit ended the phase before any request: nothing to time
        # null, not 0.0: a missing figure is null (0.0 read as a measured rate)
        return {"requests": 0, "errors": errors, "seconds": round(wall, 2), "req_per_s": None}
    return {
        "requests": len(lat),
        "errors": errors,
        "seconds": round(wall, 2),
        "req_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def main() -> int:
    ap = ScriptParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="an existing RUN (default: fit ML-100K here)")
    ap.add_argument("--data-dir", help="ML-100K folder (default $METAREC_DATA_DIR/ml-100k)")
    ap.add_argument("--encoder", default="hashing:64", help="hashing:64 or default (MiniLM)")
    ap.add_argument(
        "--steps", type=nonnegative_int, default=300, help="meta-training steps when fitting"
    )
    ap.add_argument("--requests", type=positive_int, default=10_000)
    ap.add_argument("--health-requests", type=positive_int, default=3_000)
    ap.add_argument(
        "--fresh-requests",
        type=nonnegative_int,
        default=2_000,
        help="extra phase: requests whose supports are all new (cache misses); 0 skips it",
    )
    ap.add_argument("--concurrency", type=positive_int, default=8)
    ap.add_argument("--support", type=positive_int, default=10)
    ap.add_argument("--pool", type=positive_int, default=900, help="distinct supports")
    ap.add_argument("--k", type=positive_int, default=10)
    ap.add_argument("--time-limit", type=positive_float, default=300.0, help="seconds per phase")
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the OS place server and client (default: server on core 0, client on core 1)",
    )
    ap.add_argument("--json", type=json_path, help="write the results here")
    args = ap.parse_args()
    import importlib.util

    # before the fit: without the serve extra it fitted ML-100K for a minute, then crashed
    # on `import httpx`
    missing = [m for m in ("httpx", "fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        ap.error(f"needs the 'serve' extra ({', '.join(missing)}): pip install 'metarec[serve]'")

    work = Path(tempfile.mkdtemp(prefix="bench_serve."))
    try:
        return _bench(args, ap, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # its fitted RUN and feedback store


def _bench(args, ap, work: Path) -> int:
    result: dict = {
        "machine_cores": os.cpu_count(),
        "concurrency": args.concurrency,
        # every setting that moves the figures, so a JSON says how it was measured
        "settings": {
            k: getattr(args, k)
            for k in (
                "requests",
                "health_requests",
                "fresh_requests",
                "support",
                "pool",
                "k",
                "time_limit",
                "pin",
                "encoder",
                "steps",
            )
        },
    }
    if args.run:
        run = Path(args.run)
        # nothing was fitted here: the encoder and steps are the RUN's, not these flags'
        result["settings"]["encoder"] = result["settings"]["steps"] = None
        result["settings"]["run"] = str(run)
    else:
        data = args.data_dir or (
            Path(os.environ["METAREC_DATA_DIR"]) / "ml-100k"
            if "METAREC_DATA_DIR" in os.environ
            else None
        )
        if data is None:
            ap.error("give --run, --data-dir or set METAREC_DATA_DIR")
        run = work / "RUN"
        result["fit"] = fit_ml100k(Path(data), run, args.encoder, args.steps)
    bodies = [
        {"interactions": s, "k": args.k, "exclude_seen": True}
        for s in supports(run, args.pool, args.support, 0)
    ]
    port = free_port()
    cmd = [sys.executable, "-m", "metarec", "serve", "--run", str(run), "--port", str(port)]
    # named, and recorded: the JSON's "machine" block describes this client process
    cmd += ["--torch-threads", "1"]
    result["server"] = {"torch_threads": 1}
    cmd += ["--host", "127.0.0.1", "--feedback-db", str(work / "fb")]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.pin and len(cores) >= 2:
        # One core each: on a 2-core box the Python client needs about as much CPU as the
        # server, and letting the scheduler bounce both across the cores shows up as
        # tail latency that is the client's, not the service's.
        os.sched_setaffinity(server.pid, {cores[0]})
        os.sched_setaffinity(0, set(cores[1:]))
        result["pinned"] = {"server_cores": [cores[0]], "client_cores": cores[1:]}
    else:
        result["pinned"] = None
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        t0 = time.perf_counter()
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.perf_counter() - t0 > 120:
                raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        result["server_start_seconds"] = round(time.perf_counter() - t0, 1)
        result["load_average_before"] = os.getloadavg()
        result["health"] = asyncio.run(
            drive(f"{base}/health", [], args.health_requests, args.concurrency, args.time_limit)
        )
        # warm-up: every support once (fills the cache, as a live service would be)
        asyncio.run(drive(f"{base}/recommend", bodies, len(bodies), args.concurrency, 120))
        result["rss_mb_before"] = round(rss_mb(server.pid), 1)
        before = httpx.get(f"{base}/info").json()["cache"]
        rec = asyncio.run(
            drive(f"{base}/recommend", bodies, args.requests, args.concurrency, args.time_limit)
        )
        after = httpx.get(f"{base}/info").json()["cache"]
        # this phase's own hits and misses: it is the "repeats hit the cache" phase only
        # where the pool fits the cache (900 supports cycled through 608 entries missed
        # every time, and the JSON's one total over all phases could not show it)
        rec["cache_hits"] = after["hits"] - before["hits"]
        rec["cache_misses"] = after["misses"] - before["misses"]
        if len(bodies) > after["max_entries"]:
            print(
                f"bench_serve: warning: --pool {len(bodies)} is larger than the server's "
                f"cache ({after['max_entries']} entries): repeats miss (LRU)",
                file=sys.stderr,
            )
        result["recommend"] = rec
        result["rss_mb_after"] = round(rss_mb(server.pid), 1)
        if args.fresh_requests:
            # every request a support never seen: adaptation on each (the cache's worst case)
            fresh = [
                {"interactions": s, "k": args.k, "exclude_seen": True}
                for s in supports(run, args.fresh_requests, args.support, 1, fresh=True)
            ]
            result["recommend_uncached"] = asyncio.run(
                drive(f"{base}/recommend", fresh, len(fresh), args.concurrency, args.time_limit)
            )
        info = httpx.get(f"{base}/info").json()
        result["cache"] = info["cache"]
        result["model"] = {k: info[k] for k in ("model", "algorithm", "encoder_fingerprint")}
        result["items"] = info["items"]
        result["load_average_after"] = os.getloadavg()
        result["recommend_vs_health_throughput"] = (
            round(rec["req_per_s"] / result["health"]["req_per_s"], 3)
            if result["health"]["req_per_s"] and rec["req_per_s"] is not None
            else None
        )
        result["goal"] = {"req_per_s": 300, "p99_ms": 50, "errors": 0}
        result["goal_met"] = bool(
            (rec["req_per_s"] or 0) >= 300 and rec.get("p99_ms", 1e9) <= 50 and rec["errors"] == 0
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(result, indent=2))
    if args.json:
        write_figures(args.json, result)
    return 0


if __name__ == "__main__":
    run_script(main)
