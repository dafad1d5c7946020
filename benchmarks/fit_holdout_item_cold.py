"""`metarec fit`'s own validation for new items: ``valid_holdout`` "users" vs "new_items".

    METAREC_DATA_DIR=/work/shared/data python benchmarks/fit_holdout_item_cold.py \\
        --seeds 0 1 2 --json OUT.json

A user who fits on their log and then serves new items gives ``fit`` no validation tasks:
it holds out the newest users ("users", the default) or the newest items ("new_items")
for early stopping and the blend. Per seed, on ML-100K's item cold-start split, both are
fitted on the split's training rows alone (no validation tasks given) and scored on the
split's validation users over its validation items: movies newer than every training
row, as new items would be. Test users and items are never read.
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
from metarec.model import VALID_HOLDOUTS  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", default=embedding_cache())
    p.add_argument("--json", type=json_path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset("movielens-100k")
    variants = {h: {"valid_holdout": h} for h in VALID_HOLDOUTS}
    runs, mean, _ = score_variants(ds, "item-cold", a.seeds, variants, a.cache)
    report = {
        "protocol": "ML-100K item-cold split; fit on its training rows with no validation "
        "given; scored on its validation users over its validation items",
        "runs": runs,
        "mean": mean,
    }
    write_json(a.json, report)


if __name__ == "__main__":
    run_script(main)
