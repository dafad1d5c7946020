"""A synthetic world and a fitted RUN shared by the serving tests (built once per session).

Two tastes: even users like "space" items (rating 5) and dislike "garden" items (rating 1),
odd users the reverse; item titles say the kind (item i is space when i is even). Items
30..39 are never rated (cold items, carried by their text).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import numpy as np
import pandas as pd

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
    rng = np.random.default_rng(seed)
    kinds = np.array(["space", "garden"])[np.arange(n_items) % 2]
    items = pd.DataFrame(
        {
            "item_id": [f"it{i}" for i in range(n_items)],
            "title": [f"{k} adventure volume {i}" for i, k in enumerate(kinds)],
            "category": kinds,
        }
    )
    rows = []
    for u in range(n_users):
        taste = "space" if u % 2 == 0 else "garden"
        for t, i in enumerate(rng.choice(30, size=12, replace=False)):
            rows.append((f"u{u}", f"it{i}", 5 if kinds[i] == taste else 1, 1000 * u + t))
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    paths = {"T": folder / "T.csv", "I": folder / "I.csv"}
    log.to_csv(paths["T"], index=False)
    items.to_csv(paths["I"], index=False)
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
