"""What the adaptation back-off costs: ``python benchmarks/bench_adapt_guard.py --json OUT``.

``MetaLearner.adapt`` (outside training) checks every task's support loss after the inner
steps and adapts a task whose loss rose again at half the step (``MetaLearner._backtrack``).
This times ``adapt`` on the benchmark scorer (MAML, 5 inner steps, 10 support rows) with the
check and without it (the check replaced by the identity), interleaved in one run so both
see the same machine load, for 1, 64 and 512 tasks. Median milliseconds per call and their
ratio; ``raised`` counts the tasks whose loss the plain steps raised (the untrained
benchmark model raises at most a task or two: the figures are the check's cost, and the
retries of those few).

JSON keys: ``tasks``, per task count ("1", "64", "512") ``guard_ms``, ``plain_ms``,
``ratio``, ``raised``; ``threads``; ``machine``. (Before 2026-12-07 the task counts sat at
the top level beside ``threads``.)
"""

from __future__ import annotations

import os
import time

from metarec.benchmarking import ScriptParser, json_path, positive_int, run_script, write_figures


def _no_check(self, params, out, x):
    """MetaLearner._backtrack replaced: the plain inner loop's result as it is."""
    return out


def main(argv: list[str] | None = None) -> int:
    ap = ScriptParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=json_path, help="write the figures to this JSON file")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--repeats", type=positive_int, default=40, help="calls per mode (default 40)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see bench_meta.py

    import numpy as np
    import torch

    from metarec.meta import MetaConfig, MetaLearner
    from metarec.meta.bench import bench_scorer, synthetic_inputs

    torch.set_num_threads(args.threads)
    scorer = bench_scorer()
    ml = MetaLearner(scorer, MetaConfig(algorithm="maml", inner_steps=5, inner_lr=0.01))
    params = {k: v.detach() for k, v in ml.init_params(torch.Generator().manual_seed(0)).items()}
    real = MetaLearner._backtrack
    out: dict = {"threads": args.threads, "tasks": {}}
    print(f"{'tasks':>6} {'with check ms':>14} {'without ms':>11} {'ratio':>6} {'raised':>7}")
    for n_tasks in (1, 64, 512):
        x = synthetic_inputs(n_tasks, 10, 10, 128, 128, 0)
        times: dict[str, list[float]] = {"guard": [], "plain": []}
        try:
            for _ in range(args.repeats):
                for mode in ("guard", "plain"):
                    MetaLearner._backtrack = real if mode == "guard" else _no_check
                    t0 = time.perf_counter()
                    ml.adapt(params, x)
                    times[mode].append(time.perf_counter() - t0)
            plain_fast = ml.adapt(params, x)  # still without the check: what it would fix
        finally:
            MetaLearner._backtrack = real
        with torch.no_grad():
            after = ml.support_losses(plain_fast, x)
            raised = int((~(after <= ml.support_losses(params, x))).sum())
        guard, plain = (float(np.median(times[m])) * 1e3 for m in ("guard", "plain"))
        row = {
            "guard_ms": round(guard, 3),
            "plain_ms": round(plain, 3),
            "ratio": round(guard / plain, 3),
            "raised": raised,
        }
        out["tasks"][str(n_tasks)] = row
        print(f"{n_tasks:>6} {guard:>14.2f} {plain:>11.2f} {row['ratio']:>6.2f} {raised:>7}")
    if args.json:
        write_figures(args.json, out)
    return 0


if __name__ == "__main__":
    run_script(main)
