"""Throughput of the production meta-training path against a per-task reference loop.

Model: the scorer configured as a plain MLP on a 256-dim input (128 user + 128 item
features) -> 64 -> 64 -> 1 with the rating head (MSE); meta-batch of 32 tasks x (10 support
+ 10 query), 5 inner SGD steps. ``MetaLearner.meta_grads`` (what ``train.py`` calls) is timed
for second-order MAML and FOMAML, next to ``MetaLearner.loop_meta_grads`` (one unbatched
model per task, ``torch.autograd.grad`` per step). The two are timed interleaved, so that
on a shared machine both see the same load. Also: one user's adaptation (5 steps on 10
support items, ``MetaLearner.adapt``) plus scoring a 1,682-item catalogue (ML-100K's size,
``MetaLearner.predict``) as p50/p99 latency: the same two calls ``MetaRecommender`` makes to
serve a request. Nothing here calls a path of its own: what is timed is what trains and serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from metarec.meta.algorithms import MetaConfig, MetaLearner
from metarec.meta.episodes import TaskInputs
from metarec.models.scorer import Scorer, ScorerConfig


def bench_scorer(d_user: int = 128, d_item: int = 128) -> Scorer:
    return Scorer(
        ScorerConfig(
            d_item_text=d_item,
            d_user_side=d_user,
            n_items=0,
            embed_dim=0,
            use_profile=False,
            user_vector=False,
            interaction=False,
            hidden=(64, 64),
            head="rating",
            output_offset=3.0,
        )
    )


def synthetic_inputs(
    n_tasks: int, k: int, q: int, d_user: int, d_item: int, seed: int
) -> TaskInputs:
    g = torch.Generator().manual_seed(seed)

    def ratings(n: int) -> torch.Tensor:
        return torch.randint(1, 6, (n_tasks, n), generator=g).float()

    return TaskInputs(
        user_x=torch.randn(n_tasks, d_user, generator=g),
        s_x=torch.randn(n_tasks, k, d_item, generator=g),
        s_rows=torch.zeros(n_tasks, k, dtype=torch.int64),
        s_y=ratings(k),
        s_mask=torch.ones(n_tasks, k),
        q_x=torch.randn(n_tasks, q, d_item, generator=g),
        q_rows=torch.zeros(n_tasks, q, dtype=torch.int64),
        q_y=ratings(q),
        q_mask=torch.ones(n_tasks, q),
    )


def _time(fn: Callable[[], object], min_seconds: float, min_repeats: int = 3) -> np.ndarray:
    """Per-call wall times (s): one warm-up call, then repeat until both minimums are met."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def _time_pair(
    fast: Callable[[], object], slow: Callable[[], object], min_seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-call wall times (s) of two functions measured interleaved: rounds of one ``slow``
    call and as many ``fast`` calls as fill the same time, so that both see the same load
    on a shared machine and their ratio is not skewed by load changing between them."""
    fast()
    slow()
    t_fast: list[float] = []
    t_slow: list[float] = []
    start = time.perf_counter()
    while len(t_slow) < 3 or time.perf_counter() - start < 2 * min_seconds:
        t0 = time.perf_counter()
        slow()
        t_slow.append(time.perf_counter() - t0)
        spent = 0.0
        while spent < t_slow[-1] or not t_fast:
            t0 = time.perf_counter()
            fast()
            t_fast.append(time.perf_counter() - t0)
            spent += t_fast[-1]
    return np.asarray(t_fast), np.asarray(t_slow)


def run_meta_benchmark(
    *,
    threads: int = 2,
    n_tasks: int = 32,
    k_support: int = 10,
    n_query: int = 10,
    inner_steps: int = 5,
    inner_lr: float = 0.01,
    n_catalogue: int = 1682,
    min_seconds: float = 2.0,
    seed: int = 0,
) -> dict:
    """Measure and return the figures (keys documented in benchmarks/bench_meta.py)."""
    torch.set_num_threads(threads)
    scorer = bench_scorer()
    x = synthetic_inputs(n_tasks, k_support, n_query, 128, 128, seed)
    out: dict = {
        "threads": threads,
        "n_tasks": n_tasks,
        "k_support": k_support,
        "n_query": n_query,
        "inner_steps": inner_steps,
        "torch": torch.__version__,
    }
    diffs = []
    for name, key in (("maml", "2"), ("fomaml", "1")):
        ml = MetaLearner(
            scorer, MetaConfig(algorithm=name, inner_steps=inner_steps, inner_lr=inner_lr)
        )
        params = ml.init_params(torch.Generator().manual_seed(seed))
        t_batched, t_loop = _time_pair(
            lambda ml=ml, p=params: ml.meta_grads(p, x),
            lambda ml=ml, p=params: ml.loop_meta_grads(p, x),
            min_seconds,
        )
        prefix = "maml2" if key == "2" else "fomaml"
        out[f"{prefix}_tasks_per_s"] = n_tasks / float(np.median(t_batched))
        out[f"loop{key}_tasks_per_s"] = n_tasks / float(np.median(t_loop))
        out[f"{prefix}_speedup"] = out[f"{prefix}_tasks_per_s"] / out[f"loop{key}_tasks_per_s"]
        _, g_b = ml.meta_grads(params, x)
        _, g_l = ml.loop_meta_grads(params, x)
        diffs.append(max(float((g_b[k] - g_l[k]).abs().max()) for k in g_b))
    out["max_grad_diff"] = max(diffs)

    # one user: adapt on 10 support items, then score the whole catalogue
    ml = MetaLearner(
        scorer, MetaConfig(algorithm="maml", inner_steps=inner_steps, inner_lr=inner_lr)
    )
    params = {k: v.detach() for k, v in ml.init_params(torch.Generator().manual_seed(seed)).items()}
    one = x.select(slice(0, 1))
    g = torch.Generator().manual_seed(seed + 1)
    cat_x = torch.randn(1, n_catalogue, 128, generator=g)
    cat_rows = torch.zeros(1, n_catalogue, dtype=torch.int64)

    def adapt_score() -> torch.Tensor:
        fast = ml.adapt(params, one)
        with torch.no_grad():
            return ml.predict(fast, one.user_x, cat_x, cat_rows)

    lat = _time(adapt_score, min_seconds, min_repeats=200) * 1000.0
    out["adapt_score_p50_ms"] = float(np.percentile(lat, 50))
    out["adapt_score_p99_ms"] = float(np.percentile(lat, 99))
    return out


def format_table(res: dict) -> str:
    rows = [
        ("MAML 2nd order, batched", res["maml2_tasks_per_s"], "tasks/s"),
        ("MAML 2nd order, per-task loop", res["loop2_tasks_per_s"], "tasks/s"),
        ("  speed-up", res["maml2_speedup"], "x"),
        ("FOMAML, batched", res["fomaml_tasks_per_s"], "tasks/s"),
        ("FOMAML, per-task loop", res["loop1_tasks_per_s"], "tasks/s"),
        ("  speed-up", res["fomaml_speedup"], "x"),
        ("max |meta-grad batched - loop|", res["max_grad_diff"], ""),
        ("adapt + score catalogue p50", res["adapt_score_p50_ms"], "ms"),
        ("adapt + score catalogue p99", res["adapt_score_p99_ms"], "ms"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {val:>12.4g} {unit}" for name, val, unit in rows)
