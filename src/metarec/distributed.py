"""Data-parallel meta-training across processes started by ``torchrun``.

One process with no torchrun environment is the default and every function here is then a
no-op (world size 1, rank 0). Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT`` set) :func:`init` joins the process group, with NCCL when
training on CUDA and gloo otherwise.

What is sharded: each outer step every rank draws the SAME global meta-batch from the same
seeded generator, keeps tasks ``rank::world`` of it, computes the mean meta-gradient of its
shard, and :func:`all_reduce_mean` combines the shard means weighted by shard size, so the
result equals the single-process mean over the whole batch (up to float summation order).
Every rank then takes the same optimiser step, so parameters stay identical without a
broadcast. Validation tasks are sharded the same way and their loss sums all-reduced, so
every rank sees the same validation loss and takes the same early-stopping decision.

The parameter dict design makes this an explicit all-reduce of a gradient dict; there is no
DistributedDataParallel wrapper (there is no nn.Module to wrap).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from metarec.devices import resolve_device
from metarec.errors import user_path
from metarec.types import MetarecError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" / "nccl"; None on one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world, local_rank) from the torchrun environment; (0, 1, 0) without one."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise MetarecError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise MetarecError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process: its RANK and WORLD_SIZE are set, whatever
    the world size (``--nproc_per_node=1`` is torchrun too: "--distributed needs
    torchrun's environment" was wrong there; one process then trains alone)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_backend(device: str | torch.device) -> str:
    """NCCL for CUDA training when NCCL is built in, gloo otherwise (CPU)."""
    dev = resolve_device(device)
    if dev.type == "cuda" and torch.distributed.is_nccl_available():
        return "nccl"
    return "gloo"


def local_device(device: str | torch.device, ctx: DistContext) -> str:
    """``cuda`` becomes ``cuda:<local_rank>`` (one GPU per process; another explicit index
    is refused); others unchanged."""
    dev = resolve_device(device)  # "auto" too: it was a traceback from torch
    if dev.type == "cuda" and ctx.active:
        if dev.index is not None and dev.index != ctx.local_rank:
            # every process would train on that one GPU: NCCL refuses a duplicate GPU or
            # hangs, and init() has set this process's GPU to its local rank
            raise MetarecError(
                f"--device {dev} under torchrun: every process would use that one GPU; "
                f"give cuda and each takes cuda:<LOCAL_RANK> (cuda:{ctx.local_rank} here)"
            )
        return f"cuda:{ctx.local_rank}"
    return str(dev)


TIMEOUT_ENV = "METAREC_DIST_TIMEOUT"  # seconds any collective (and the start) may wait
DEFAULT_TIMEOUT_S = 1800.0


def timeout_seconds() -> float:
    """How long a process waits for the others (rendezvous, and every collective: the
    others wait in one while rank 0 fills the embedding cache): $METAREC_DIST_TIMEOUT, else
    30 minutes. It was a fixed 600 s, which a cold cache on a large catalogue outlasts."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 7 * 86400:
        raise MetarecError(f"{TIMEOUT_ENV}={raw!r}: give seconds from 1 to 604800")
    return value


def init(device: str | torch.device = "cpu", timeout_s: float | None = None) -> DistContext:
    """Join the torchrun process group (idempotent); a no-op on a single process.
    ``timeout_s``: None = :func:`timeout_seconds`."""
    rank, world, local = env_world()
    if timeout_s is None:
        timeout_s = timeout_seconds()
    if world == 1:
        return DistContext()
    if not torch.distributed.is_available():
        raise MetarecError("this torch build has no torch.distributed")
    dist = torch.distributed
    if not dist.is_initialized():
        backend = pick_backend(device)
        if backend == "nccl":
            torch.cuda.set_device(local)
        if "TORCHELASTIC_RUN_ID" not in os.environ:
            # RANK/WORLD_SIZE set by hand, not by torchrun's agent: the rendezvous below
            # waits up to timeout_s for the other processes, and it waited in silence
            addr = os.environ.get("MASTER_ADDR", "?")
            port = os.environ.get("MASTER_PORT", "?")
            print(
                f"metarec: rank {rank} waiting for {world} processes at {addr}:{port} "
                f"(up to {timeout_s:g} s)",
                file=sys.stderr,
                flush=True,
            )
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        except (ValueError, RuntimeError) as err:
            # MASTER_ADDR unset was a traceback from torch's env:// rendezvous
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MetarecError(f"cannot join the torchrun process group: {first}") from None
    return context()


def context() -> DistContext:
    """The current process group as a DistContext (world 1 when none is initialised)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    _, _, local = env_world()
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


def shutdown() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """One line for a collective that failed: a process that died or stopped answering
    left the others with a 30-line gloo traceback ("Connection reset by peer")."""
    try:
        yield
    except RuntimeError as err:  # torch.distributed.DistError and gloo's plain ones
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise MetarecError(
            f"{what} across the processes failed: another process died or stopped "
            f"answering within {TIMEOUT_ENV}'s limit ({first[:300]})"
        ) from None


def barrier(ctx: DistContext | None = None) -> None:
    ctx = ctx or context()
    if ctx.active:
        with _collective("a barrier"):
            torch.distributed.barrier()


@contextmanager
def main_first(ctx: DistContext | None = None) -> Iterator[bool]:
    """Rank 0 runs the block first (e.g. filling the embedding cache), then the others run
    it (reading the cache). Yields ``ctx.is_main``."""
    ctx = ctx or context()
    if not ctx.is_main:
        barrier(ctx)
    yield ctx.is_main
    if ctx.is_main:
        barrier(ctx)


def shard(n: int, ctx: DistContext) -> slice:
    """This rank's share ``rank::world`` of ``n`` items (every item on exactly one rank)."""
    if ctx.active and n < ctx.world:
        raise MetarecError(
            f"meta-batch of {n} tasks cannot be split over {ctx.world} processes "
            "(raise train.meta_batch to at least the number of processes)"
        )
    return slice(ctx.rank, None, ctx.world)


def shard_size(n: int, ctx: DistContext) -> int:
    return len(range(n)[shard(n, ctx)])


def all_reduce_mean(
    loss: torch.Tensor,
    grads: Mapping[str, torch.Tensor],
    n_local: int,
    ctx: DistContext,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Combine per-rank shard means into the global mean over all ranks' tasks.

    loss: scalar mean over this rank's ``n_local`` tasks; grads: its gradient dict (each the
    mean over the shard). Returns (Σ_r n_r·loss_r / N, {k: Σ_r n_r·g_r / N}). The gradients
    are flattened into ONE buffer so the step costs one all-reduce, not one per tensor.
    """
    if not ctx.active:
        return loss, dict(grads)
    keys = list(grads)
    w = float(n_local)
    flat = torch.cat(
        [grads[k].detach().reshape(-1) * w for k in keys]
        + [(loss.detach().reshape(1) * w).to(grads[keys[0]].device if keys else "cpu")]
        # the gradients' dtype, not torch's default (float64 under set_default_dtype: the
        # averaged gradients came back float64 for float32 parameters)
        + [
            torch.tensor(
                [w],
                device=grads[keys[0]].device if keys else "cpu",
                dtype=grads[keys[0]].dtype if keys else torch.float32,
            )
        ]
    )
    with _collective("the meta-gradient all-reduce"):
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    total = flat[-1]
    flat = flat / total
    out, a = {}, 0
    for k in keys:
        n = grads[k].numel()
        out[k] = flat[a : a + n].view_as(grads[k])
        a += n
    return flat[a].cpu(), out


def all_reduce_sum(values: list[float], ctx: DistContext, device: str = "cpu") -> list[float]:
    """Element-wise sum of small float lists over ranks (validation loss sums and counts).
    float64 so the sum does not depend on precision lost in transit."""
    if not ctx.active:
        return list(values)
    dev = device if ctx.backend == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    with _collective("an all-reduce"):
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def _gather_int(value: int, ctx: DistContext) -> list[int]:
    """Every rank's ``value`` (an int64), in rank order, on every rank."""
    mine = torch.tensor([value], dtype=torch.int64)
    dev = f"cuda:{ctx.local_rank}" if ctx.backend == "nccl" else "cpu"
    got = [torch.zeros_like(mine, device=dev) for _ in range(ctx.world)]
    with _collective("an all-gather"):
        torch.distributed.all_gather(got, mine.to(dev))
    return [int(g.item()) for g in got]


def _gather_or_fail(
    value: int,
    ctx: DistContext,
    failed: Exception | None,
    failed_value: int,
    what: str,
    then: str = "",
) -> list[int]:
    """Every rank's ``value`` on every rank, where one rank's own ``failed`` error travels
    as ``failed_value``: that rank raises its error, the others one line naming it (they
    were left in the collective, or got gloo's "connection reset"). Every rank calls the
    collective, so none is left waiting."""
    values = _gather_int(failed_value if failed is not None else value, ctx)
    if failed is not None:
        raise failed
    broken = [r for r, k in enumerate(values) if k == failed_value]
    if broken:
        raise MetarecError(f"rank(s) {broken} could not {what} (their own error says why){then}")
    return values


def check_same_start(step: int, ctx: DistContext, failed: Exception | None = None) -> None:
    """A one-line error on every rank unless every rank starts training at the same
    ``step`` (0, or the step of the checkpoint it resumed from). Each rank decides alone
    whether it has a checkpoint: one that found none (a node-local folder) trained from
    0 while the others went on, and their averaged gradients made one model of both.
    ``failed``: this rank's own error in resuming, sent as -1 so the others raise too."""
    if not ctx.active:
        if failed is not None:
            raise failed
        return
    steps = _gather_or_fail(step, ctx, failed, -1, "resume from their checkpoint")
    if len(set(steps)) > 1:
        raise MetarecError(
            "resume: the processes start from different steps ("
            + ", ".join(f"rank {r}: {k}" for r, k in enumerate(steps))
            + "): every rank must see the same checkpoint folder"
        )


def check_same_inputs(dataset, config, ctx: DistContext, failed: Exception | None = None) -> None:
    """A one-line error on every rank where the ranks' prepared data or settings differ.

    Nothing else compares them: ranks that read other ratings (the same shapes) trained
    one model on a mix of both with exit 0, and another catalogue or step count ended in
    a gloo abort ("collective mismatch") or a reset connection. Each rank all-gathers
    the first 8 bytes of sha256(data, config JSON); every rank sees the same list, so
    every rank raises together and none is left waiting in a collective. ``failed``: this
    rank's own error in preparing the data, sent as the key 0 so that the other ranks
    raise too (they were left in the gather, or got gloo's "connection reset")."""
    if not ctx.active:
        if failed is not None:
            raise failed
        return
    from metarec.config import to_dict
    from metarec.resume import data_hash

    value = 0  # the key of a rank that failed
    if failed is None:
        cfg = to_dict(config)
        cfg.pop("progress", None)  # only rank 0 shows progress bars
        key = hashlib.sha256(
            (data_hash(dataset) + json.dumps(cfg, sort_keys=True, default=str)).encode()
        ).digest()
        value = int.from_bytes(key[:8], "little", signed=True) or 1
    keys = _gather_or_fail(
        value,
        ctx,
        failed,
        0,
        "prepare the training data",
        "; every process must read the same files",
    )
    differ = [r for r, k in enumerate(keys) if k != keys[0]]
    if differ:
        raise MetarecError(
            f"rank(s) {differ}'s training data or settings differ from rank 0's (after "
            "preprocessing): every process must read the same files and the same "
            "--config/--set"
        )


def fit_distributed(raw, config, on_prepared=None):
    """What ``metarec fit`` runs under torchrun: every rank fits, rank 0 gets the result.

    raw: :class:`metarec.data.raw.RawData`; config: :class:`metarec.model.ModelConfig`.
    Preprocessing and the split are deterministic, so every rank builds the same dataset.
    Rank 0 embeds the texts into the cache (``config.text.cache``, else the default
    folder) first; the others wait, then read the cache.
    Returns the fitted :class:`metarec.predictor.Predictor` on rank 0 and None on the
    others (only rank 0 writes artifacts). The process group is shut down on return.
    ``on_prepared(dataset)`` runs on rank 0 once the data is prepared (the CLI's notes
    on rows preprocessing removed).
    """
    import dataclasses

    if not launched_by_torchrun():
        raise MetarecError(
            "--distributed needs torchrun's environment (RANK, WORLD_SIZE); launch with "
            "`torchrun --nproc_per_node=N -m metarec fit ...`"
        )
    ctx = init(config.device)
    try:
        with warnings.catch_warnings():
            if not ctx.is_main:
                config = dataclasses.replace(config, progress=False)
                # rank 0 says it: every rank printed each warning (3 "blend skipped" on 3)
                warnings.simplefilter("ignore")
            return _fit_ranks(raw, config, on_prepared, ctx)
    finally:
        shutdown()


def _fit_ranks(raw, config, on_prepared, ctx: DistContext):
    """:func:`fit_distributed`'s work, in the joined group."""
    from metarec.features import embed_dataset
    from metarec.model import default_embedding_dir
    from metarec.predictor import Predictor
    from metarec.preprocess import prepare
    from metarec.text import make_encoder

    dataset, failed = None, None
    try:
        dataset = prepare(raw)
    except MetarecError as err:  # sent to the others, then raised here
        failed = err
    check_same_inputs(dataset, config, ctx, failed)
    if ctx.is_main and on_prepared is not None:
        on_prepared(dataset)
    t = config.text
    with main_first(ctx):
        # the folder Predictor.fit reads (build_features): text.cache, else the default
        root = user_path(t.cache or default_embedding_dir())
        encoder = make_encoder(t.model, device=t.device)
        # user texts only where the fit reads them (text.user_text): they were
        # encoded and cached, then left unused
        embed_dataset(
            dataset,
            encoder,
            root,
            template=t.template,
            show_progress=False,
            users=t.user_text,
        )
    pred = Predictor.fit(dataset, config)
    barrier(ctx)
    return pred if ctx.is_main else None
