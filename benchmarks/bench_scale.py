"""Scale benchmark: ``python benchmarks/bench_scale.py --json OUT.json [--users N ...]``.

Stages, each timed, with the process's peak RSS after each:

1. ``synth``  write a skewed synthetic log (default 10^6 users, 10^5 items, 5·10^7 events)
   to Parquet in chunks (skipped when ``--work`` already holds one of the same config);
2. ``index``  pass one of the stream: per-user offsets from the user-sorted log;
3. ``embed``  the item-text embedding cache for every item, built in chunks with progress,
   *interrupted* half way (``stop_after_chunks``) and resumed: the JSON records that the
   resumed run encoded only the missing texts, and that a third run encodes nothing;
4. ``train``  meta-training from the Parquet stream (a few row groups in memory at a time)
   for ``--steps`` outer steps; tasks/s counts every task of every meta-batch, I/O included;
5. ``train_in_memory_baseline``  the same training with the in-memory sampler over the
   first ``--baseline-groups`` row groups, measured in the same run: the ratio
   ``stream_over_memory`` is what streaming costs per step.

Both rates are the N-step run's time beyond a 1-step run of the same kind (each train()
has a fixed start: the in-memory sampler sorts its rows, the stream reads its first row
groups), so the ratio no longer moves with ``--steps``.

The target: peak RSS <= 4 GB at full size. ``--users/--items/--interactions`` give a
reduced size (the test of this script runs a tiny one).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from metarec.benchmarking import ScriptParser, json_path, positive_int, run_script, write_figures


def _rss_gb() -> float:
    # ru_maxrss is in KiB on Linux: the peak resident set of this process so far
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


MARKER = ".bench_scale"  # in a --work folder this benchmark made or used


def _rate(steps: int, batch: int, dt: float, dt_one: float) -> float | None:
    """Tasks/s of the steps past the first: (steps - 1) x batch over the N-step run's time
    beyond the 1-step run's. None (with a warning) where that difference is under a fifth
    of the run: at small sizes it is noise (three identical runs read 0.74 to 1.42)."""
    extra = dt - dt_one
    if steps < 2 or extra < 0.2 * dt:
        print(
            f"bench_scale: warning: the steps took {extra:.3f} s of a {dt:.3f} s run, too "
            "little to time apart from its start; rate left null (raise --steps)",
            file=sys.stderr,
        )
        return None
    return round((steps - 1) * batch / extra, 1)


def run(args) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from metarec.features import FeatureSet
    from metarec.meta import MetaConfig
    from metarec.models.scorer import ScorerConfig
    from metarec.streaming import ParquetTaskStream, embed_resumable, index_log
    from metarec.synth import SynthConfig, generate
    from metarec.text import make_encoder
    from metarec.text.cache import EmbeddingCache
    from metarec.train import TrainConfig, train
    from metarec.types import Interactions, Split

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # marks the folder as this benchmark's before anything is written (a run stopped while
    # generating the log left no synth.json, and the next was refused its own folder)
    (work / MARKER).touch()
    cfg = SynthConfig(
        n_users=args.users,
        n_items=args.items,
        n_interactions=args.interactions,
        users_per_chunk=args.users_per_chunk,
        seed=args.seed,
    )
    res: dict = {"config": asdict(cfg), "threads": args.threads, "stages": {}}
    stages = res["stages"]

    # 1. synthetic log (reused when the same config was written before)
    stamp = work / "synth.json"
    log, items = work / "log.parquet", work / "items.parquet"
    t0 = time.perf_counter()
    if not (stamp.is_file() and json.loads(stamp.read_text()) == asdict(cfg) and log.is_file()):
        stamp.unlink(missing_ok=True)
        generate(cfg, work, progress=args.progress)
        stamp.write_text(json.dumps(asdict(cfg)))
        stages["synth"] = {"seconds": round(time.perf_counter() - t0, 2), "reused": False}
    else:
        stages["synth"] = {"seconds": 0.0, "reused": True}
    stages["synth"].update(
        rows=args.interactions, parquet_mb=round(log.stat().st_size / 2**20, 1), rss_gb=_rss_gb()
    )

    # 2. pass one: per-user offsets
    t0 = time.perf_counter()
    ix = index_log(log, n_items=args.items)
    dt = time.perf_counter() - t0
    stages["index"] = {
        "seconds": round(dt, 2),
        "rows_per_s": round(ix.n_rows / dt),
        "row_groups": ix.n_groups,
        "users": ix.n_users,
        "items_seen": int((ix.item_count > 0).sum()),
        "rss_gb": _rss_gb(),
    }

    # 3. embedding cache: interrupted half way, resumed, then fully cached
    titles = pq.read_table(items, columns=["title"]).column("title").to_pylist()
    encoder = make_encoder(args.encoder)
    cache_dir = work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache = EmbeddingCache(cache_dir)
    # at least 2 chunks, so that the interrupt happens: with --items 5000 and the default
    # 10,000-text chunk there was one, stop_after_chunks was 0, and "interrupted and
    # resumed" was recorded for a stage that was neither
    chunk = min(args.chunk, max(1, (len(titles) + 1) // 2))
    n_chunks = (len(titles) + chunk - 1) // chunk
    t0 = time.perf_counter()
    _, first = embed_resumable(
        titles, encoder, cache, chunk, progress=args.progress, stop_after_chunks=n_chunks // 2
    )
    if len(titles) > 1 and not first["chunks_done"]:
        raise SystemExit("bench_scale: the embedding stage was not interrupted")
    t1 = time.perf_counter()
    vecs, resumed = embed_resumable(titles, encoder, cache, chunk, progress=args.progress)
    t2 = time.perf_counter()
    _, warm = embed_resumable(titles, encoder, cache, chunk)
    t3 = time.perf_counter()
    stages["embed"] = {
        "encoder": encoder.fingerprint,
        "texts": len(titles),
        "chunk": chunk,
        "interrupted_after_chunks": first["chunks_done"],
        "encoded_before_interrupt": first["encoded"],
        "encoded_on_resume": resumed["encoded"],
        "hits_on_resume": resumed["hits"],
        "encoded_when_complete": warm["encoded"],
        "seconds_first": round(t1 - t0, 2),
        "seconds_resume": round(t2 - t1, 2),
        "seconds_warm": round(t3 - t2, 2),
        "texts_per_s_cold": round(len(titles) / max(t2 - t0, 1e-9)),
        "rss_gb": _rss_gb(),
    }

    # 4. meta-training from the stream
    feats = FeatureSet(
        torch.from_numpy(np.ascontiguousarray(vecs, dtype=np.float32)),  # (n_items, d)
        torch.zeros(args.items, 0),
        torch.zeros(args.users + 1, 0),  # no user side features; +1: the unknown user row
        encoder.fingerprint,
    )
    sc = ScorerConfig(
        d_item_text=feats.item_text.shape[1],
        n_items=args.items,
        embed_dim=32,
        hidden=(64, 64),
        head="rating",
        output_offset=3.5,
    )
    meta = MetaConfig(algorithm=args.algorithm, inner_steps=args.inner_steps, inner_lr=0.05)
    tcfg = TrainConfig(
        steps=args.steps,
        meta_batch=args.meta_batch,
        eval_every=max(args.steps, 1),
        checkpoint_every=0,
        seed=args.seed,
    )
    # the in-memory baseline's rows: those of the first row groups (what fits in memory)
    n_base = int(ix.group_start[min(args.baseline_groups, ix.n_groups)])
    base = pq.ParquetFile(log).read_row_groups(
        list(range(min(args.baseline_groups, ix.n_groups))),
        columns=["user_idx", "item_idx", "rating", "timestamp"],
    )
    inter = Interactions(
        *(base.column(c).to_numpy() for c in ("user_idx", "item_idx", "rating", "timestamp")),
        np.zeros(n_base),
    )
    del base
    mem_split = Split("memory", inter, (), (), args.seed, args.k, args.q)
    # warm-up, untimed: the first train() of a process pays torch's one-time set-up, and
    # timed first the stream looked 2-6x slower than memory (0.16 at 20 steps) for it
    warm = dataclasses.replace(tcfg, steps=min(3, max(args.steps, 1)), eval_every=1)
    train(mem_split, feats, sc, meta, warm, device=args.device, progress=False)

    empty = Split("stream", Interactions.empty(), (), (), args.seed, args.k, args.q)

    def stream_train(cfg, progress):
        """(TrainResult, seconds, the stream) of one streamed train() from a fresh stream."""
        stream = ParquetTaskStream(
            ix, k_shot=args.k, n_query=args.q, head="rating", seed=args.seed, buffer_groups=2
        )
        t0 = time.perf_counter()
        out = train(
            empty,
            feats,
            sc,
            meta,
            cfg,
            device=args.device,
            progress=progress,
            sampler=stream,
            known_items=ix.item_count > 0,
        )
        return out, time.perf_counter() - t0, stream

    # rates are (N - 1) steps over the time an N-step run takes beyond a 1-step one: each
    # train() has a fixed start (the in-memory one sorts and groups its rows, 1.2-1.4 s at
    # 2M rows; the stream reads its first row groups), and timing it whole made the ratio
    # depend on --steps (2.46 at 20 steps, 1.75 at 300)
    one = dataclasses.replace(tcfg, steps=1, eval_every=1)
    _, dt_one, _ = stream_train(one, False)
    result, dt, stream = stream_train(tcfg, args.progress)
    stages["train"] = {
        "algorithm": args.algorithm,
        "inner_steps": args.inner_steps,
        "device": args.device,
        "steps": result.steps_done,
        "meta_batch": args.meta_batch,
        "seconds": round(dt, 2),
        "seconds_one_step_run": round(dt_one, 2),
        "tasks_per_s": _rate(result.steps_done, args.meta_batch, dt, dt_one),
        "train_loss": result.history[-1]["train_loss"] if result.history else None,
        "epochs_started": stream.epoch + 1,
        "rss_gb": _rss_gb(),
    }

    # baseline in the same run: the in-memory sampler of train() over the rows of the first
    # row groups, same model and steps (both timed warm); the ratio is the streaming cost
    t0 = time.perf_counter()
    train(mem_split, feats, sc, meta, one, device=args.device, progress=False)
    dt_mem_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem = train(mem_split, feats, sc, meta, tcfg, device=args.device, progress=False)
    dt_mem = time.perf_counter() - t0
    mem_tps = _rate(mem.steps_done, args.meta_batch, dt_mem, dt_mem_one)
    stages["train_in_memory_baseline"] = {
        "rows": n_base,
        "seconds": round(dt_mem, 2),
        "seconds_one_step_run": round(dt_mem_one, 2),
        "tasks_per_s": mem_tps,
        "stream_over_memory": (
            round(stages["train"]["tasks_per_s"] / mem_tps, 3)
            if mem_tps and stages["train"]["tasks_per_s"]
            else None
        ),
        "rss_gb": _rss_gb(),
    }
    res["peak_rss_gb"] = _rss_gb()
    res["rss_target_gb"] = 4.0
    res["rss_ok"] = res["peak_rss_gb"] <= 4.0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = ScriptParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=json_path, help="write the figures to this JSON file")
    ap.add_argument("--work", default=None, help="folder for the log and cache (default: temp)")
    ap.add_argument("--users", type=positive_int, default=1_000_000)
    ap.add_argument("--items", type=positive_int, default=100_000)
    ap.add_argument("--interactions", type=positive_int, default=50_000_000)
    ap.add_argument(
        "--users-per-chunk", type=positive_int, default=20_000, help="users per row group"
    )
    ap.add_argument("--encoder", default="hashing:64", help="hashing:64 or a MiniLM name")
    ap.add_argument("--chunk", type=positive_int, default=10_000, help="texts per cache shard")
    ap.add_argument("--algorithm", default="fomaml")
    ap.add_argument("--inner-steps", type=positive_int, default=2)
    ap.add_argument(
        "--steps",
        type=positive_int,
        default=100,
        help="meta-training steps (>= 2: a rate is an N-step run's time beyond a 1-step one)",
    )
    ap.add_argument("--meta-batch", type=positive_int, default=64)
    ap.add_argument("--k", type=positive_int, default=10)
    ap.add_argument("--q", type=positive_int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--baseline-groups",
        type=positive_int,
        default=2,
        help="row groups for the in-memory baseline",
    )
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error(f"--steps must be >= 2, got {args.steps}")
    if args.work is not None:
        work = Path(args.work)
        if work.exists() and not work.is_dir():
            ap.error(f"--work {work} is not a folder")
        # it replaces log.parquet and deletes cache/ there: only in a folder it made
        if work.is_dir() and any(work.iterdir()) and not (work / MARKER).is_file():
            ap.error(
                f"--work {work} holds files this benchmark did not write (it replaces "
                "log.parquet and deletes cache/ there); give an empty or new folder"
            )
    # see bench_meta.py: passive OpenMP waits keep figures stable on shared cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    tmp = None
    if args.work is None:
        tmp = tempfile.mkdtemp(prefix="metarec-scale-")
        args.work = tmp
    try:
        res = run(args)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=2))
    if args.json:
        write_figures(args.json, res)
    return 0 if res["rss_ok"] else 1


if __name__ == "__main__":
    run_script(main)
