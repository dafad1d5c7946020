"""`metarec fit` with and without ``model.refit``, scored on users it never saw.

    METAREC_DATA_DIR=/work/shared/data python benchmarks/fit_refit.py \\
        --protocol user-cold --seeds 0 1 2 --json OUT.json

Without validation tasks (the `metarec fit` path) fit holds out the newest users
(``valid_holdout = "users"``) or items (``"new_items"``) for early stopping and the blend,
and those rows, the newest of the log, never reach meta-training. ``refit`` trains again
on all rows for the validated number of steps. Per seed, on ML-100K's split of the given
protocol, both are fitted on the split's training rows alone (no validation tasks given)
and scored on the split's validation users: over the whole catalogue (user cold-start,
``valid_holdout = "users"``) or over the validation items (item cold-start,
``valid_holdout = "new_items"``). Test users and items are never read.

Decision rule, written before the first run (2026-12-05): refit becomes fit's default if,
on both protocols, the mean over seeds 0-2 improves at least three of the four goal
metrics (MAE, AUC, nDCG@3 (query), Recall@10 (full)).

``--dataset goodbooks-sample --protocol user-cold`` repeats the user cold-start question on
another dataset (run after the rule above had decided: a check, not a second chance).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402

import torch  # noqa: E402
from fit_without_validation import score_variants  # noqa: E402  (benchmarks/, beside this script)

from metarec.atomic import write_json  # noqa: E402
from metarec.benchmarking import ScriptParser, embedding_cache, json_path, run_script  # noqa: E402
from metarec.data import load_dataset  # noqa: E402

HOLDOUT = {"user-cold": "users", "item-cold": "new_items"}


def main(argv: list[str] | None = None) -> None:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--protocol", choices=tuple(HOLDOUT), default="user-cold")
    p.add_argument("--dataset", default="movielens-100k", help="any name load_dataset takes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", default=embedding_cache())
    p.add_argument("--json", type=json_path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset(a.dataset)
    variants = {
        name: {"valid_holdout": HOLDOUT[a.protocol], "refit": name == "refit"}
        for name in ("off", "refit")
    }
    runs, mean, fit_s = score_variants(ds, a.protocol, a.seeds, variants, a.cache)
    report = {
        "protocol": f"{a.dataset} {a.protocol} split; fit on its training rows with no validation "
        f"given (valid_holdout {HOLDOUT[a.protocol]!r}); scored on its validation users",
        "runs": runs,
        "mean": mean,
        "fit_s_mean": fit_s,
    }
    write_json(a.json, report)


if __name__ == "__main__":
    run_script(main)
