"""Tiny synthetic cold-start problem shared by the meta-learning tests.

Items have random text vectors x_i (8-dim); each user has a hidden taste vector z_u, and
rates item i as positive (rating 1) when z_u · x_i > 0. The taste is only visible through
the user's own interactions, so adapting to the support set is what makes the query
predictable: a known structure that meta-learning must find.
"""

from __future__ import annotations

import numpy as np
import torch

from metarec.features import FeatureSet
from metarec.types import Interactions, Split, Task

N_USERS, N_ITEMS, D_TEXT, PER_USER = 48, 40, 8, 14


def make_problem(seed: int = 0, head: str = "binary") -> tuple[Split, FeatureSet]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_ITEMS, D_TEXT)).astype(np.float32)
    z = rng.normal(size=(N_USERS, D_TEXT)).astype(np.float32)
    rows = []
    for u in range(N_USERS):
        items = rng.choice(N_ITEMS, PER_USER, replace=False)
        score = x[items] @ z[u]
        if head == "binary":
            rating = (score > 0).astype(np.float32)
        else:  # 1..5 stars
            rating = np.clip(np.round(3 + 1.5 * np.tanh(score)), 1, 5).astype(np.float32)
        for j, (i, r) in enumerate(zip(items, rating, strict=True)):
            rows.append((u, i, r, j))
    a = np.array(rows, dtype=np.float64)
    inter = Interactions(a[:, 0], a[:, 1], a[:, 2], a[:, 3], np.zeros(len(a)))
    is_valid_user = inter.user_idx >= N_USERS - 8  # the last 8 users are held out
    train = inter.take(~is_valid_user)
    valid = []
    for u in range(N_USERS - 8, N_USERS):
        mine = inter.take(inter.user_idx == u).sorted_by_time()
        valid.append(Task(u, mine.take(np.arange(5)), mine.take(np.arange(5, 10))))
    split = Split("user_cold", train, tuple(valid), (), seed, k_shot=5, n_query=5)
    feats = FeatureSet(
        torch.from_numpy(x), torch.zeros(N_ITEMS, 0), torch.zeros(N_USERS, 0), "synthetic"
    )
    return split, feats
