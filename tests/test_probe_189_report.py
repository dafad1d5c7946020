"""Probe 189: report.md checked against results.json and against its own protocol text.

One tiny experiment (3 seeds, MetaRec and EASE, no K-curve) is run once for the module;
the tests read what it wrote. The first two checks hold on the current code (a regression
guard for what the probe verified by hand); the last two fail: report.md shows "mean ±
std over seeds" and "95% bootstrap CI" without saying which std (the code takes the sample
std, ddof = 1) or how many resamples each interval took (1,000 per method, 10,000 paired).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from metarec import experiment as E

TINY = Path(__file__).parent / "tiny_experiment.toml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe189") / "run"
    cfg = E.load_config(TINY, ["seeds=[0,1,2]", "shots=[]"], only=["MetaRec", "ease"])
    E.run(cfg, out, progress=False)
    return out


def _main_rows(md: str) -> dict[str, dict[str, str]]:
    block = md.split("## Main table")[1].split("\n\n|")[1].split("\n\n")[0]
    lines = ("|" + block).splitlines()
    head = [h.strip().rstrip(" ↑↓") for h in lines[0].strip("|").split(" | ")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def test_main_table_cells_are_results_json_mean_and_sample_std_of_per_seed_means(run_dir):
    md = (run_dir / "report.md").read_text()
    res = json.loads((run_dir / "results.json").read_text())
    table = res["scenarios"][0]["methods"]
    for name, row in _main_rows(md).items():
        for metric, cell in row.items():
            if metric in ("method", "kind") or cell == "–":
                continue
            mean, std = (float(x) for x in re.findall(r"\d+\.\d+", cell)[:2])
            got = table[name][metric]
            assert mean == pytest.approx(got["mean"], abs=5e-5)
            assert std == pytest.approx(got["std"], abs=5e-5)
            per_seed = np.array(got["per_seed"], dtype=float)
            assert got["mean"] == pytest.approx(per_seed.mean())
            assert got["std"] == pytest.approx(per_seed.std(ddof=1))


def test_paired_mean_is_the_mean_over_seeds_of_per_user_differences(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    runs = {}
    for f in (run_dir / "partial").glob("*.json"):
        for r in json.loads(f.read_text())["runs"]:
            runs[(r["method"], r["seed"])] = r["result"]
    metric = "nDCG@10 (full)"
    diffs = []
    for seed in (0, 1, 2):
        a, b = runs[("MetaRec", seed)], runs[("ease", seed)]
        assert a["user_idx"] == b["user_idx"]
        diffs.append(np.nanmean(np.subtract(a["per_user"][metric], b["per_user"][metric])))
    got = res["scenarios"][0]["paired_vs_default"]["methods"]["ease"][metric]
    assert got["mean"] == pytest.approx(np.mean(diffs))


def test_report_says_which_std_the_plus_minus_is(run_dir):
    """The cells are mean ± the *sample* std over seeds (experiment._aggregate, ddof=1);
    with 3 seeds that is 1.22x the population std, and neither report.md nor the README
    says which one a reader is looking at."""
    md = (run_dir / "report.md").read_text()
    assert re.search(r"sample (standard deviation|std)|ddof\s*=\s*1|n\s*[−-]\s*1", md), (
        "report.md says 'mean ± std over seeds' without saying it is the sample std"
    )


def test_report_states_how_many_bootstrap_resamples_its_intervals_took(run_dir):
    """The paired intervals take paired_bootstrap = 10,000 resamples and the per-method
    ones bootstrap = 1,000 (README); report.md says '95% bootstrap CI' with no count."""
    md = (run_dir / "report.md").read_text()
    res = json.loads((run_dir / "results.json").read_text())
    n_paired = res["config"]["paired_bootstrap"]
    assert n_paired == 10_000
    assert re.search(r"10[,\u202f ]?000 (bootstrap )?resamples", md), (
        "report.md gives paired 95% bootstrap CIs without the number of resamples"
    )
