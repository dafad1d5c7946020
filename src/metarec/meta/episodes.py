"""Episodes: one user's support/query items and labels, padded into batched tensors.

A :class:`Task` (from ``splits``) holds raw interactions. Meta-learning wants, per task,
arrays of (item, label) with the labels the head needs (ratings, or 0/1 with sampled
negatives for the binary head), and wants T tasks of unequal length stacked into (T, K)
tensors with a 0/1 mask so one batched inner loop can run over them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metarec.features import FeatureSet
from metarec.metrics import is_relevant
from metarec.models.scorer import Scorer
from metarec.types import MetarecError, Task


@dataclass(frozen=True, eq=False)
class Episode:
    user_idx: int
    support_items: np.ndarray  # (Ks,) int64
    support_y: np.ndarray  # (Ks,) float32: rating, or 0/1 label
    query_items: np.ndarray  # (Kq,) int64
    query_y: np.ndarray  # (Kq,) float32


def sample_negatives(
    n: int,
    n_items: int,
    exclude: np.ndarray,
    rng: np.random.Generator,
    pool: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` item indices drawn uniformly (with replacement) from the entries of ``pool``
    (item indices; an item repeated in it is drawn in proportion, as "popularity"
    negatives are; default: all ``n_items`` once each) that are not in ``exclude``.

    Training passes the items of its training interactions as the pool: an item no one
    rated in training (a held-out cold item) drawn as a negative again and again would
    teach the text tower that *its* text means "no" — exactly the items item cold-start
    is judged on.

    A user who has interacted with every item of the pool has no negatives to draw: none
    are returned (their episode keeps its positives and explicit dislikes). That is valid
    data, a heavy user on a small catalogue; it used to stop ``fit``."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if pool is not None:
        pool = np.asarray(pool, dtype=np.int64)
        # a pool of unique items can only be used up by at least as many excluded items:
        # the set difference (a sort of the pool, per episode) runs only then
        if len(exclude) >= len(pool) and len(np.setdiff1d(pool, exclude)) == 0:
            return np.zeros(0, dtype=np.int64)
    elif len(np.unique(exclude)) >= n_items:
        return np.zeros(0, dtype=np.int64)
    out: list[np.ndarray] = []
    need = n
    while need > 0:
        cand = (
            rng.integers(0, n_items, size=2 * need + 8)
            if pool is None
            else pool[rng.integers(0, len(pool), size=2 * need + 8)]
        )
        cand = cand[~np.isin(cand, exclude)][:need]
        if not len(cand) and pool is not None and not len(np.setdiff1d(pool, exclude)):
            # a pool that repeats items is used up by fewer excluded items than it has
            # entries, which the check above does not see: nothing is left to draw
            return np.zeros(0, dtype=np.int64)
        out.append(cand)
        need -= len(cand)
    return np.concatenate(out).astype(np.int64)


def labels_for(head: str, rating: np.ndarray, positive_threshold: float) -> np.ndarray:
    """Targets for the head: the rating itself, or 1.0 where rating >= threshold else 0.0."""
    r = np.asarray(rating, dtype=np.float32)
    return r if head == "rating" else is_relevant(r, positive_threshold).astype(np.float32)


def make_episode(
    user_idx: int,
    support_items: np.ndarray,
    support_rating: np.ndarray,
    query_items: np.ndarray,
    query_rating: np.ndarray,
    *,
    head: str,
    n_items: int,
    rng: np.random.Generator | None = None,
    n_negatives: int = 1,
    positive_threshold: float = 0.5,
    exclude: np.ndarray | None = None,
    negative_pool: np.ndarray | None = None,
    query_negative_pool: np.ndarray | None = None,
) -> Episode:
    """Episode with head-specific labels. For the binary head, ``n_negatives`` sampled items
    (label 0, from ``negative_pool`` (default: every item), never in ``exclude``, default
    the episode's own items) are appended per positive in the support and in the query;
    ``query_negative_pool`` replaces ``negative_pool`` for the query's negatives (the
    query is what the loss judges: its negatives can be the items it is ranked among)."""
    s_items = np.asarray(support_items, dtype=np.int64)
    q_items = np.asarray(query_items, dtype=np.int64)
    s_y = labels_for(head, support_rating, positive_threshold)
    q_y = labels_for(head, query_rating, positive_threshold)
    if head == "binary" and n_negatives > 0:
        if rng is None:
            raise MetarecError("make_episode: the binary head needs an rng to sample negatives")
        excl = np.concatenate([s_items, q_items]) if exclude is None else np.asarray(exclude)
        ns = sample_negatives(int(s_y.sum()) * n_negatives, n_items, excl, rng, negative_pool)
        q_pool = negative_pool if query_negative_pool is None else query_negative_pool
        # the query's negatives may repeat the support's (label 0 on both sides): at test
        # time the support's sampled negatives are catalogue items the ranking scores too,
        # so the overlap happens at its natural rate there as well
        nq = sample_negatives(int(q_y.sum()) * n_negatives, n_items, excl, rng, q_pool)
        s_items = np.concatenate([s_items, ns])
        s_y = np.concatenate([s_y, np.zeros(len(ns), np.float32)])
        q_items = np.concatenate([q_items, nq])
        q_y = np.concatenate([q_y, np.zeros(len(nq), np.float32)])
    return Episode(int(user_idx), s_items, s_y, q_items, q_y)


def training_cut(
    n: int,
    k: int,
    q: int,
    rng: np.random.Generator,
    *,
    min_support: int = 0,
    resample_prob: float = 0.0,
    time_order: bool = True,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Where a training episode cuts a user's n-row history (oldest first): (support
    positions, query positions, whether they were drawn at random). The support is at most
    K rows and leaves one for the query; with ``min_support`` its size is drawn from
    [min_support, K] (as test supports vary); with probability ``resample_prob`` the rows
    are shuffled first, else support and query are the first K and the next Q
    (``time_order``, the test protocol) or the last K + Q. The in-memory and the streaming
    sampler both cut here: the same draws, in the same order, from ``rng``."""
    ks = min(k, n - 1)
    if 0 < min_support < ks:  # drawn only when on: no shift of the stream
        ks = int(rng.integers(min_support, ks + 1))
    resampled = bool(rng.random() < resample_prob)
    if resampled:
        idx = rng.permutation(n)
    elif time_order:
        idx = np.arange(n)
    else:  # the last K + Q in item-age order: the query on the newest items
        idx = np.arange(max(0, n - ks - q), n)
    return idx[:ks], idx[ks : ks + q], resampled


def episode_from_task(task: Task, **kw) -> Episode:
    """:func:`make_episode` over a split's Task (support and query as given)."""
    return make_episode(
        task.user_idx,
        task.support.item_idx,
        task.support.rating,
        task.query.item_idx,
        task.query.rating,
        **kw,
    )


@dataclass(frozen=True, eq=False)
class EpisodeBatch:
    """T episodes padded to common support/query lengths; masks are 1 on real rows."""

    user_idx: torch.Tensor  # (T,) int64
    s_items: torch.Tensor  # (T, Ks) int64 (padding: item 0)
    s_y: torch.Tensor  # (T, Ks) float32
    s_mask: torch.Tensor  # (T, Ks) float32
    q_items: torch.Tensor  # (T, Kq)
    q_y: torch.Tensor
    q_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.user_idx)


def _pad(arrays: Sequence[np.ndarray], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max((len(a) for a in arrays), default=0))
    out = np.zeros((len(arrays), width), dtype=dtype)
    mask = np.zeros((len(arrays), width), dtype=np.float32)
    for t, a in enumerate(arrays):
        out[t, : len(a)] = a
        mask[t, : len(a)] = 1.0
    return out, mask


def pad_episodes(episodes: Sequence[Episode]) -> EpisodeBatch:
    if not episodes:
        raise MetarecError("pad_episodes: no episodes")
    s_items, s_mask = _pad([e.support_items for e in episodes], np.int64)
    s_y, _ = _pad([e.support_y for e in episodes], np.float32)
    q_items, q_mask = _pad([e.query_items for e in episodes], np.int64)
    q_y, _ = _pad([e.query_y for e in episodes], np.float32)
    return EpisodeBatch(
        torch.as_tensor(np.array([e.user_idx for e in episodes], dtype=np.int64)),
        *(torch.from_numpy(a) for a in (s_items, s_y, s_mask, q_items, q_y, q_mask)),
    )


@dataclass(frozen=True, eq=False)
class TaskInputs:
    """Everything the scorer needs for a meta-batch, with no parameters involved: built
    once per batch, then reused by every inner step."""

    user_x: torch.Tensor  # (T, d_user_in)
    s_x: torch.Tensor  # (T, Ks, d_item_in)
    s_rows: torch.Tensor  # (T, Ks) ID-table rows (unknown row for cold items)
    s_y: torch.Tensor  # (T, Ks)
    s_mask: torch.Tensor  # (T, Ks)
    q_x: torch.Tensor  # (T, Kq, d_item_in)
    q_rows: torch.Tensor
    q_y: torch.Tensor
    q_mask: torch.Tensor

    @property
    def n_tasks(self) -> int:
        return self.user_x.shape[0]

    def select(self, index: slice | torch.Tensor) -> TaskInputs:
        """The sub-batch of tasks ``index`` (keeps the task dimension)."""
        return TaskInputs(*(getattr(self, f)[index] for f in _FIELDS))

    def to(self, device: torch.device | str) -> TaskInputs:
        return TaskInputs(*(getattr(self, f).to(device) for f in _FIELDS))

    def merged(self) -> TaskInputs:
        """Support and query concatenated as the support (Reptile trains on the whole task)."""
        cat = torch.cat
        return TaskInputs(
            self.user_x,
            cat([self.s_x, self.q_x], 1),
            cat([self.s_rows, self.q_rows], 1),
            cat([self.s_y, self.q_y], 1),
            cat([self.s_mask, self.q_mask], 1),
            self.q_x,
            self.q_rows,
            self.q_y,
            self.q_mask,
        )


_FIELDS = ("user_x", "s_x", "s_rows", "s_y", "s_mask", "q_x", "q_rows", "q_y", "q_mask")


def build_inputs(
    scorer: Scorer,
    feats: FeatureSet,
    batch: EpisodeBatch,
    known_items: np.ndarray | torch.Tensor | None = None,
    *,
    id_dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> TaskInputs:
    """Gather features for a padded batch. ``known_items`` (n_items,) bool marks items seen
    in training (others use the unknown ID row). ``id_dropout`` sends that fraction of rows
    to the unknown row at random (training only), so the model learns to score from text
    alone, which is what it must do for cold items."""
    dev = feats.item_text.device
    b = EpisodeBatch(*(getattr(batch, f).to(dev) for f in EpisodeBatch.__dataclass_fields__))
    user_x = scorer.user_inputs(feats, b.user_idx, b.s_items, b.s_y, b.s_mask)
    s_rows = scorer.item_rows(b.s_items, known_items)
    q_rows = scorer.item_rows(b.q_items, known_items)
    if id_dropout > 0 and scorer.cfg.has_ids:
        if rng is None:
            raise MetarecError("build_inputs: id_dropout needs an rng")
        unknown = scorer.cfg.n_items
        drop_s = torch.from_numpy(rng.random(tuple(s_rows.shape)) < id_dropout).to(dev)
        drop_q = torch.from_numpy(rng.random(tuple(q_rows.shape)) < id_dropout).to(dev)
        s_rows = torch.where(drop_s, torch.full_like(s_rows, unknown), s_rows)
        q_rows = torch.where(drop_q, torch.full_like(q_rows, unknown), q_rows)
    return TaskInputs(
        user_x,
        scorer.item_inputs(feats, b.s_items),
        s_rows,
        b.s_y,
        b.s_mask,
        scorer.item_inputs(feats, b.q_items),
        q_rows,
        b.q_y,
        b.q_mask,
    )
