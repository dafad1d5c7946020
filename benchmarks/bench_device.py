"""Meta-training throughput per device: ``python benchmarks/bench_device.py --json OUT.json``.

Runs the production loop (:func:`metarec.train.train`, in-memory sampler) on a synthetic
log (:mod:`metarec.synth`) for ``--steps`` outer steps on the CPU and, when a GPU exists, on
``cuda``, with the same seed, and reports tasks/s per device and their ratio. It also checks
that both devices reach the same parameters (max abs difference after training), which is
the test that nothing on the training path is pinned to the CPU. Nothing here requires a
GPU: without one only the CPU row is reported.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from metarec.benchmarking import ScriptParser, json_path, positive_int, run_script, write_figures


def _split(n_users: int, n_items: int, n_inter: int, work: Path, k: int, q: int):
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from metarec.features import FeatureSet
    from metarec.synth import SynthConfig, generate
    from metarec.text import make_encoder
    from metarec.types import Interactions, Split

    out = generate(SynthConfig(n_users=n_users, n_items=n_items, n_interactions=n_inter), work)
    f = pq.read_table(out.log).to_pandas()
    n = len(f)
    train = Interactions(
        f.user_idx.to_numpy(), f.item_idx.to_numpy(), f.rating.to_numpy(),
        f.timestamp.to_numpy(), np.zeros(n),
    )  # fmt: skip
    titles = pq.read_table(out.items).column("title").to_pylist()
    enc = make_encoder("hashing:64")
    feats = FeatureSet(
        torch.from_numpy(enc.encode(titles)),  # (n_items, 64)
        torch.zeros(n_items, 0),
        torch.zeros(n_users + 1, 0),
        enc.fingerprint,
    )
    return Split("synthetic", train, (), (), 0, k, q), feats


def run(args) -> dict:
    import torch

    from metarec.meta import MetaConfig
    from metarec.models.scorer import ScorerConfig
    from metarec.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        split, feats = _split(args.users, args.items, args.interactions, Path(tmp), 10, 10)
    sc = ScorerConfig(
        d_item_text=64, n_items=args.items, embed_dim=32, hidden=(64, 64), head="rating",
        output_offset=3.5,
    )  # fmt: skip
    meta = MetaConfig(algorithm=args.algorithm, inner_steps=args.inner_steps, inner_lr=0.05)
    cfg = TrainConfig(
        steps=args.steps,
        meta_batch=args.meta_batch,
        eval_every=max(args.steps, 1),
        checkpoint_every=0,
    )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    res: dict = {
        "algorithm": args.algorithm,
        "inner_steps": args.inner_steps,
        "meta_batch": args.meta_batch,
        "steps": args.steps,
        "threads": args.threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "devices": {},
    }
    final = {}
    for dev in devices:
        # warm-up (CUDA context, kernels), then the timed run from the same seed
        train(split, feats, sc, meta, TrainConfig(steps=2, meta_batch=args.meta_batch),
              device=dev, progress=False)  # fmt: skip
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = train(split, feats, sc, meta, cfg, device=dev, progress=False)
        if dev == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        final[dev] = r.final_params
        res["devices"][dev] = {
            "seconds": round(dt, 3),
            "tasks_per_s": round(r.steps_done * args.meta_batch / dt, 1),
            "train_loss": r.history[-1]["train_loss"] if r.history else None,
        }
    if "cuda" in final:
        res["gpu_over_cpu"] = round(
            res["devices"]["cuda"]["tasks_per_s"] / res["devices"]["cpu"]["tasks_per_s"], 2
        )
        res["max_param_diff_cpu_vs_cuda"] = max(
            float((final["cpu"][k] - final["cuda"][k]).abs().max()) for k in final["cpu"]
        )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = ScriptParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=json_path)
    ap.add_argument("--users", type=positive_int, default=20_000)
    ap.add_argument("--items", type=positive_int, default=5_000)
    ap.add_argument("--interactions", type=positive_int, default=500_000)
    ap.add_argument("--algorithm", default="maml")
    ap.add_argument("--inner-steps", type=positive_int, default=2)
    ap.add_argument("--meta-batch", type=positive_int, default=64)
    ap.add_argument("--steps", type=positive_int, default=50)  # 0 had no loss to report
    ap.add_argument("--threads", type=positive_int, default=2)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_meta.py
    res = run(args)
    print(json.dumps(res, indent=2))
    if args.json:
        write_figures(args.json, res)
    return 0


if __name__ == "__main__":
    run_script(main)
