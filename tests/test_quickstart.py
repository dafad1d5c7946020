"""`metarec quickstart` (the README's main job) on a tiny budget: same code path, hashing
text, 3 meta-training steps, the first 120 users of the bundled goodbooks sample."""

from __future__ import annotations

import json

import numpy as np

from metarec import experiment as E
from metarec.cli import main


def test_quickstart_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METAREC_HOME", str(tmp_path / "home"))  # embedding cache
    out = tmp_path / "qs"
    argv = ["quickstart", "--out", str(out), "--model", "hashing:64", "--steps", "3"]
    argv += ["--max-users", "120", "--shots", "1,10", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method | kind | RMSE ↓ |" in printed
    assert "| MetaRec | meta |" in printed

    data = json.loads((out / "results.json").read_text())
    main_table = data["scenarios"][0]
    assert main_table["k_shot"] == 10
    names = ["MetaRec", *E.QUICKSTART_BASELINES]
    assert list(main_table["methods"]) == names
    assert data["config"]["seeds"] == [0]  # one seed by default, said in the report
    assert [s["k_shot"] for s in data["scenarios"]] == [10, 1, 10]

    # the protocol is user cold-start on the bundled data: the same split, recomputed
    cfg = E.quickstart_config(max_users=120, text_model="hashing:64", shots=())
    ds = E.load_data(cfg)
    assert len(np.unique(ds.interactions.user_idx)) == 120
    split = E.cut_split(ds, cfg, 0, 10)
    assert data["protocol"]["test_users"] == len(split.test)
    assert data["protocol"]["protocol"] == "user-cold"
    assert data["dataset"]["name"] == "goodbooks-sample"

    report = (out / "report.md").read_text()
    assert "One seed only" in report
    assert "*Protocol:* dataset **goodbooks-sample**, split **user-cold**, K = 10" in report
    for png in ("shots.png", "training.png", "methods.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_a_reduced_quickstart_says_so_in_its_title():
    # the report's title heads report.md: a 30-step run said nothing of its cap there
    from metarec import experiment as E

    assert E.quickstart_config().name == "quickstart: goodbooks-sample user cold-start"
    cfg = E.quickstart_config(steps=30, max_users=150, text_model="hashing:64")
    assert cfg.name.endswith(
        "(reduced: 30 meta-training steps, first 150 users, text model hashing:64)"
    )
