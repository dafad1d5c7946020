"""Meta-training throughput benchmark: ``python benchmarks/bench_meta.py --json OUT.json``.

JSON keys: maml2_tasks_per_s, fomaml_tasks_per_s (batched production path), loop2_tasks_per_s,
loop1_tasks_per_s (per-task reference loop), max_grad_diff (batched vs loop meta-gradients),
adapt_score_p99_ms (one user: 5 inner steps on 10 items + scoring 1,682 items), and more.
"""

from __future__ import annotations

import os

from metarec.benchmarking import (
    ScriptParser,
    json_path,
    positive_float,
    positive_int,
    run_script,
    write_figures,
)


def main(argv: list[str] | None = None) -> int:
    ap = ScriptParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=json_path, help="write the figures to this JSON file")
    ap.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument(
        "--seconds", type=positive_float, default=2.0, help="minimum time per measurement"
    )
    args = ap.parse_args(argv)

    # Busy-waiting OpenMP threads collapse throughput when the 2 cores are shared with other
    # processes (we measured 10-50x slow-downs of the batched path); passive waiting keeps the
    # figures stable. Must be set before torch is imported; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from metarec.meta.bench import format_table, run_meta_benchmark

    res = run_meta_benchmark(threads=args.threads, min_seconds=args.seconds)
    res["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    print(format_table(res))
    if args.json:
        write_figures(args.json, res)
    return 0


if __name__ == "__main__":
    run_script(main)
