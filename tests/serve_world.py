"""A synthetic world and a fitted RUN shared by the serving tests (built once per session).

Two tastes: even users like "space" items (rating 5) and dislike "garden" items (rating 1),
odd users the reverse; item titles say the kind (item i is space when i is even). Items
30..39 are never rated (cold items, carried by their text).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

FAST = [
    "--set",
    "text.model='hashing:64'",
    "--set",
    "text.pca_dim=16",
    "--set",
    "train.steps=40",
    "--set",
    "train.eval_every=20",
    "--set",
    "train.meta_batch=16",
    "--set",
    "progress=false",
]


def make_world(folder: Path, n_users: int = 60, n_items: int = 40, seed: int = 0) -> dict:
    """T.csv/I.csv of the two-taste world (the CLI contract tests' generator)."""
    from test_cli_contract import make_world as contract_world

    paths, _ = contract_world(folder, n_users=n_users, n_items=n_items, seed=seed)
    return paths


def is_space(item_id: str) -> bool:
    return int(item_id[2:]) % 2 == 0


def shared_run(tmp_path_factory) -> Path:
    """The fitted RUN, built on first use and reused by every test module of the session."""
    from metarec.cli import main

    root = tmp_path_factory.getbasetemp() / "serve_world"
    root.mkdir(exist_ok=True)
    run = root / "RUN"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "manifest.json").is_file():
            paths = make_world(root)
            argv = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"])]
            assert main([*argv, "--out", str(run), *FAST]) == 0
    return run
