"""Distributed meta-training: sharding arithmetic, the weighted all-reduce, train() on two
simulated ranks (threads sharing a fake all-reduce) against one process, and the end-to-end
claim that ``torchrun --nproc_per_node=2 -m metarec fit`` (gloo) writes a RUN whose
predictions equal the single-process run's (same global meta-batch and seed) to 1e-3.

The two multi-process tests start fresh Python interpreters (torch import dominates their
time on a loaded 2-core box), so they are marked slow; the threaded test keeps the sharding
logic of ``train`` in the default suite.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from meta_synthetic import make_problem
from metarec import distributed
from metarec.distributed import DistContext, all_reduce_mean, shard, shard_size
from metarec.meta import MetaConfig
from metarec.models.scorer import ScorerConfig
from metarec.train import TrainConfig, train
from metarec.types import MetarecError
from test_cli_contract import cold_support, fit_argv, make_world

# few steps, small batch: the point is equivalence, not quality
ARGS = [
    "--set",
    "text.model='hashing:64'",
    "--set",
    "text.pca_dim=16",
    "--set",
    "train.steps=12",
    "--set",
    "train.eval_every=4",
    "--set",
    "train.meta_batch=8",
    "--set",
    "progress=false",
]


def test_shards_cover_every_task_once():
    n, world = 11, 3
    got = sorted(i for r in range(world) for i in range(n)[shard(n, DistContext(r, world))])
    assert got == list(range(n))
    assert [shard_size(n, DistContext(r, world)) for r in range(world)] == [4, 4, 3]
    assert shard(5, DistContext()) == slice(0, None, 1)  # one process: everything


def test_batch_smaller_than_world_is_refused():
    with pytest.raises(MetarecError, match="meta-batch of 2 tasks"):
        shard(2, DistContext(0, 3))


def test_single_process_is_a_no_op(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init("cpu") == DistContext()
    assert distributed.context() == DistContext()
    g = {"w": torch.tensor([1.0, 2.0])}
    loss, out = all_reduce_mean(torch.tensor(0.5), g, 3, DistContext())
    assert float(loss) == 0.5 and torch.equal(out["w"], g["w"])


def test_backend_and_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU needed
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.pick_backend("cpu") == "gloo"
    ctx = DistContext(rank=1, world=2, local_rank=1, backend="nccl")
    assert distributed.local_device("cuda", ctx) == "cuda:1"
    assert distributed.local_device("cuda:1", ctx) == "cuda:1"  # its own GPU, named
    # another rank's GPU: every process would have trained on cuda:0 (probe 144)
    with pytest.raises(MetarecError, match=r"--device cuda:0 under torchrun.*cuda:1 here"):
        distributed.local_device("cuda:0", ctx)
    assert distributed.local_device("cuda:0", DistContext()) == "cuda:0"  # one process
    assert distributed.local_device("cpu", ctx) == "cpu"
    with pytest.raises(MetarecError, match="unknown device 'tpu9'"):
        distributed.local_device("tpu9", DistContext())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_one_line_error():
    with pytest.raises(MetarecError, match="no CUDA GPU is available"):
        distributed.local_device("cuda", DistContext())


def test_distributed_flag_without_torchrun_fails_loudly(monkeypatch, tmp_path):
    from metarec.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    paths, _ = make_world(tmp_path, n_users=10)
    code = main([*fit_argv(paths, tmp_path / "R"), "--distributed", *ARGS])
    assert code == 2 and not (tmp_path / "R").exists()


def test_torchrun_with_one_process_fits_alone(monkeypatch, tmp_path, capsys):
    # torchrun --nproc_per_node=1 sets WORLD_SIZE=1: "--distributed needs torchrun's
    # environment" was wrong there
    from metarec.cli import main

    for var, value in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(var, value)
    assert distributed.launched_by_torchrun()
    paths, _ = make_world(tmp_path, n_users=10)
    t = pd.read_csv(paths["T"])
    pd.concat([t, t.head(3)]).to_csv(paths["T"], index=False)  # 3 repeated rows
    assert main([*fit_argv(paths, tmp_path / "R"), "--distributed", *ARGS]) == 0
    assert (tmp_path / "R" / "manifest.json").is_file()
    # what preprocessing removed is said under torchrun too (only one process said it)
    assert "removed by preprocessing step 'dedupe'" in capsys.readouterr().err


class _ThreadGroup:
    """A stand-in process group for ranks run as threads of this process: all_reduce sums
    every rank's tensor (in rank order) behind a barrier."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=60)
        self.buf: dict[int, torch.Tensor] = {}
        self.local = threading.local()

    def context(self) -> DistContext:
        r = self.local.rank
        return DistContext(r, self.world, r, "gloo")

    def all_reduce(self, t: torch.Tensor, op=None) -> None:
        self.buf[self.local.rank] = t.clone()
        self.barrier.wait()
        total = sum(self.buf[r] for r in range(self.world))
        self.barrier.wait()  # everyone has read before anyone writes the next round
        t.copy_(total)

    def all_gather(self, out: list[torch.Tensor], t: torch.Tensor) -> None:
        self.buf[self.local.rank] = t.clone()
        self.barrier.wait()
        for r in range(self.world):
            out[r].copy_(self.buf[r])
        self.barrier.wait()


def _threaded(monkeypatch, world: int, work) -> tuple[dict, list]:
    """Run work(rank) on ``world`` threads sharing a _ThreadGroup: (results, errors)."""
    group = _ThreadGroup(world)
    monkeypatch.setattr(distributed, "context", group.context)
    monkeypatch.setattr(torch.distributed, "all_reduce", group.all_reduce)
    monkeypatch.setattr(torch.distributed, "all_gather", group.all_gather)
    results, errors = {}, []

    def rank_main(rank: int) -> None:
        group.local.rank = rank
        try:
            results[rank] = work(rank)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append((rank, err))
            if not isinstance(err, MetarecError):  # one raised alone: free the others
                group.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_ranks_resuming_from_different_checkpoints_are_refused_on_every_rank(monkeypatch, tmp_path):
    # rank 1 found no checkpoint (a node-local folder) and trained from step 0 while rank
    # 0 went on from step 6: their gradients were averaged into one model, exit 0
    split, feats = make_problem(0, "binary")
    sc = ScorerConfig(d_item_text=8, n_items=40, embed_dim=8, hidden=(16,), head="binary")
    meta = MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.1)
    cfg = TrainConfig(steps=10, meta_batch=4, eval_every=3, checkpoint_every=3, seed=3)
    train(
        split, feats, sc, meta, cfg, progress=False, checkpoint_dir=str(tmp_path / "r0"), stop_at=6
    )
    (tmp_path / "r1").mkdir()

    def work(rank):
        d = str(tmp_path / f"r{rank}")
        return train(split, feats, sc, meta, cfg, progress=False, checkpoint_dir=d, resume=True)

    results, errors = _threaded(monkeypatch, 2, work)
    assert not results and len(errors) == 2
    for _, err in errors:
        assert isinstance(err, MetarecError)
        assert "different steps (rank 0: 6, rank 1: 0)" in str(err)


def test_train_on_two_ranks_equals_one_process(monkeypatch):
    split, feats = make_problem(0, "binary")
    sc = ScorerConfig(d_item_text=8, n_items=40, embed_dim=8, hidden=(16,), head="binary")
    meta = MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.1)
    # id_dropout > 0: the rng must be consumed identically on every rank
    cfg = TrainConfig(steps=10, meta_batch=7, outer_lr=3e-3, eval_every=3, id_dropout=0.2, seed=3)
    one = train(split, feats, sc, meta, cfg, progress=False)
    results, errors = _threaded(
        monkeypatch, 2, lambda rank: train(split, feats, sc, meta, cfg, progress=False)
    )
    assert not errors, errors
    r0, r1 = results[0], results[1]
    for k, v in one.final_params.items():
        assert torch.equal(r0.final_params[k], r1.final_params[k]), k  # ranks never drift
        assert torch.allclose(r0.final_params[k], v, atol=1e-5), k
    assert [h["step"] for h in r0.history] == [3, 6, 9, 10]
    for a, b in zip(r0.history, one.history, strict=True):
        assert abs(a["valid_loss"] - b["valid_loss"]) < 1e-5
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    assert r0.best_step == one.best_step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weighted_mean_worker() -> None:
    # run inside torchrun-like env by the test below: 2 ranks, 3 and 1 tasks
    distributed.init("cpu")
    ctx = distributed.context()
    n_local = 3 if ctx.rank == 0 else 1
    g = {"w": torch.full((2,), 1.0 if ctx.rank == 0 else 5.0)}
    loss, out = all_reduce_mean(torch.tensor(float(ctx.rank)), g, n_local, ctx)
    # (3*1 + 1*5) / 4 = 2; loss (3*0 + 1*1) / 4 = 0.25
    assert torch.allclose(out["w"], torch.tensor([2.0, 2.0])), out
    assert abs(float(loss) - 0.25) < 1e-7, loss
    (s,) = distributed.all_reduce_sum([ctx.rank + 1.0], ctx)
    assert s == 3.0
    distributed.shutdown()


@pytest.mark.slow
def test_all_reduce_weights_by_shard_size(tmp_path):
    _two_ranks("import test_distributed as t; t._weighted_mean_worker()")


def _same_inputs_worker(differ: str) -> None:
    # 2 ranks; ``differ`` names what rank 1 changes: "" (nothing), "rating", "config",
    # "fail" (its data could not be prepared)
    import dataclasses

    import numpy as np

    from metarec.model import ModelConfig
    from metarec.types import Dataset, IdMap, Interactions

    ctx = distributed.init("cpu")
    rating = np.array([5.0, 3.0, 4.0])
    if differ == "rating" and ctx.rank == 1:
        rating = rating[::-1].copy()  # the same shapes, other values
    rows = Interactions(
        np.array([0, 0, 1]), np.array([0, 1, 1]), rating, np.arange(3.0), np.zeros(3, int)
    )
    ds = Dataset(
        "d",
        rows,
        IdMap(np.array(["a", "b"])),
        IdMap(np.array(["x", "y"])),
        "explicit",
        (1.0, 5.0),
        True,
    )
    cfg = ModelConfig()
    if differ == "config" and ctx.rank == 1:
        cfg = dataclasses.replace(cfg, seed=7)
    if ctx.rank == 1:
        cfg = dataclasses.replace(cfg, progress=False)  # as fit_distributed sets it
    failed = MetarecError("rank 1 could not read it") if differ == "fail" and ctx.rank else None
    try:
        distributed.check_same_inputs(ds, cfg, ctx, failed)
    except MetarecError as err:
        print(f"REFUSED {err}", flush=True)
    else:
        print("SAME", flush=True)
    distributed.shutdown()


def _two_ranks(code: str) -> list[str]:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PYTHONPATH": str(Path(__file__).parent),
        }
        # output to files, not pipes: the pipes were drained one process at a time, and a
        # rank whose stderr filled its pipe (gloo's retry lines under load) blocked there
        # while the other waited for it in a collective; the test hung until its timeout
        logs = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", code], env=env, stdout=logs[0], stderr=logs[1]
                ),
                logs,
            )
        )
    outs = []
    try:
        for p, _ in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                # a hang said with what each rank had written (a CI run on a loaded
                # machine timed out here once with nothing to go on)
                tails = []
                for q, (_, err) in procs:
                    err.seek(0)
                    tails.append(f"rank rc={q.poll()}: {err.read()[-1500:]}")
                pytest.fail("two-rank run timed out after 120 s\n" + "\n".join(tails))
        for p, (out, err) in procs:
            out.seek(0)
            err.seek(0)
            assert p.returncode == 0, err.read()[-2000:]
            outs.append(out.read().strip())
    finally:
        for p, logs in procs:
            if p.poll() is None:  # a hung rank is not left running after the test
                p.kill()
                p.wait()
            for f in logs:
                f.close()
    return outs


def test_ranks_that_read_other_data_or_settings_are_refused_on_every_rank():
    # ratings of the same shapes trained a mixed model with exit 0; another catalogue
    # aborted inside gloo. All three cases in one pair of processes (torch import)
    code = (
        "import test_distributed as t\n"
        "for d in ('', 'rating', 'config', 'fail'): t._same_inputs_worker(d)"
    )
    outs = _two_ranks(code)
    for rank, out in enumerate(outs):
        lines = out.splitlines()
        assert lines[0] == "SAME", out
        for line in lines[1:3]:
            assert line.startswith("REFUSED rank(s) [1]'s training data or settings differ"), out
        # a rank that could not prepare its data: its own error there, named on the others
        # (they were left in the gather, or got gloo's "connection reset")
        said = "could not read it" if rank else "rank(s) [1] could not prepare the training data"
        assert said in lines[3], out


def test_a_hand_made_world_without_master_addr_is_one_line(monkeypatch):
    # RANK and WORLD_SIZE set by hand without MASTER_ADDR: a traceback from torch
    for key in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MetarecError, match="cannot join the torchrun process group: .*MASTER_ADDR"):
        distributed.init("cpu")


def _predict(run: Path, tmp: Path, name: str) -> pd.DataFrame:
    from metarec.cli import main

    q = pd.DataFrame(
        [(u, f"it{i}") for u in ("new_space", "new_garden") for i in range(40)],
        columns=["user_id", "item_id"],
    )
    q.to_csv(tmp / "Q.csv", index=False)
    out = tmp / f"{name}.csv"
    code = main(
        ["predict", "--run", str(run), "--support", str(cold_support(tmp))]
        + ["--query", str(tmp / "Q.csv"), "--out", str(out)]
    )
    assert code == 0
    return pd.read_csv(out)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    paths, _ = make_world(tmp_path)
    common = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), *ARGS]
    env = {**os.environ, "METAREC_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(var, None)
    one = subprocess.run(
        [sys.executable, "-m", "metarec", *common, "--out", str(tmp_path / "RUN1")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "metarec", *common]
        + ["--out", str(tmp_path / "RUN2")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    # rank 0 alone printed the summary (one JSON object) and wrote the RUN
    assert two.stdout.count('"run":') == 1
    p1 = _predict(tmp_path / "RUN1", tmp_path, "P1")
    p2 = _predict(tmp_path / "RUN2", tmp_path, "P2")
    assert (p1[["user_id", "item_id"]].values == p2[["user_id", "item_id"]].values).all()
    assert (p1.score - p2.score).abs().max() < 1e-3
    # the runs trained for real: scores vary across items
    assert p1.score.std() > 0.05


def test_the_wait_limit_comes_from_the_environment(monkeypatch):
    # a fixed 600 s: rank 0 filling a cold embedding cache outlasted it, and the waiting
    # ranks died with a gloo traceback
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_seconds() == 1800.0
    monkeypatch.setenv(distributed.TIMEOUT_ENV, " 7200 ")
    assert distributed.timeout_seconds() == 7200.0
    for bad in ("soon", "0", "-5", "nan", "1e9"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(MetarecError, match="METAREC_DIST_TIMEOUT=.*give seconds from 1"):
            distributed.timeout_seconds()


def test_a_failed_collective_is_one_line():
    # a peer killed mid-training left the others with a 30-line gloo traceback
    with pytest.raises(MetarecError) as err, distributed._collective("an all-gather"):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection reset by peer\nmore")
    said = str(err.value)
    assert said.startswith("an all-gather across the processes failed: another process died")
    assert "Connection reset by peer" in said and "\n" not in said


def test_commands_other_than_fit_refuse_to_run_under_torchrun(monkeypatch, tmp_path, capsys):
    # `torchrun -m metarec evaluate` ran the whole experiment on every rank, all writing
    # the same folder
    from metarec.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["evaluate", "--config", str(tmp_path / "x.toml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "`metarec evaluate` does not run under torchrun (only `fit` is distributed)" in err
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1 is one process
    assert main(["datasets"]) == 0
