"""Synthetic interaction logs at scale, for scale tests and benchmarks only (never for metrics).

The generator mimics the skew of real logs:

* users: activity follows a power law (a few heavy users, a long tail with >= 2 events);
* items: popularity follows a Zipf law within each of ``n_topics`` topics;
* preferences: each user favours 3 topics; each event picks a favourite topic (or, with
  ``explore`` probability, any topic by its popularity), then an item of that topic by
  popularity; the rating is ``3 + 1.5·tanh(z_u · x_i) + noise`` rounded to 1..5, where the
  latent vectors of users and items are noisy copies of their topics' centroids;
* text: item titles from templates whose words depend on the topic, so a text encoder can
  see the structure that ratings follow.

The log is written **sorted by (user_idx, timestamp)**, in chunks of users, one Parquet row
group per chunk, so memory stays bounded by the chunk size whatever the log size. Columns:
``user_idx`` int32, ``item_idx`` int32, ``rating`` float32, ``timestamp`` int64. The item
table (``item_idx``, ``item_id``, ``title``, ``topic``) is a second Parquet file.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metarec.atomic import atomic_path
from metarec.progress import bar as progress_bar
from metarec.types import MAX_SEED, MetarecError

_ADJ = "gripping quiet bold tender dark witty epic gentle strange bright".split()
_FORM = "novel story guide saga memoir album film series collection anthology".split()
_WORDS = (
    "space garden ocean city forest desert mountain river castle robot dragon detective "
    "chef jazz war love ghost island winter summer train music art science history "
    "family school night empire pirate"
).split()


@dataclass(frozen=True)
class SynthConfig:
    n_users: int = 1_000
    n_items: int = 500
    n_interactions: int = 20_000
    n_topics: int = 32
    d_latent: int = 8
    user_exponent: float = 1.2  # Pareto shape of user activity (smaller: heavier tail)
    item_exponent: float = 1.0  # Zipf exponent of item popularity within a topic
    explore: float = 0.2  # chance an event ignores the user's favourite topics
    users_per_chunk: int = 50_000  # one row group per chunk
    seed: int = 0

    def __post_init__(self) -> None:
        # every field checked here, before generate writes anything: users_per_chunk 0
        # left items.parquet without a log, -5 wrote an empty log while n_rows said 200,
        # and the float ones were numpy's tracebacks
        ints = ("n_users", "n_items", "n_interactions", "n_topics", "d_latent")
        for name in (*ints, "users_per_chunk", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise MetarecError(f"SynthConfig: {name} must be an integer, got {value!r}")
        if min(self.n_users, self.n_items, self.n_topics, self.d_latent) < 1:
            raise MetarecError("SynthConfig: n_users, n_items, n_topics, d_latent must be >= 1")
        if self.users_per_chunk < 1:
            raise MetarecError(
                f"SynthConfig: users_per_chunk must be >= 1, got {self.users_per_chunk}"
            )
        if not 0 <= self.seed <= MAX_SEED:
            raise MetarecError(f"SynthConfig: seed must be in [0, {MAX_SEED}], got {self.seed}")
        # the Pareto shape must be > 0; a Zipf exponent of 0 is uniform popularity
        for name, least_open in (("user_exponent", True), ("item_exponent", False)):
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and math.isfinite(value)
            ok = ok and (value > 0 if least_open else value >= 0)
            if not ok:
                bound = "> 0" if least_open else ">= 0"
                raise MetarecError(
                    f"SynthConfig: {name} must be a finite number {bound}, got {value!r}"
                )
        if not (isinstance(self.explore, numbers.Real) and 0.0 <= self.explore <= 1.0):
            raise MetarecError(f"SynthConfig: explore must be in [0, 1], got {self.explore!r}")
        if self.n_interactions < 2 * self.n_users:
            raise MetarecError(
                f"SynthConfig: n_interactions ({self.n_interactions}) must be >= 2 * n_users "
                f"({2 * self.n_users}): every user gets at least 2 events"
            )


@dataclass(frozen=True)
class SynthLog:
    log: Path  # user-sorted interaction Parquet
    items: Path  # item table Parquet
    n_rows: int
    config: SynthConfig


def topic_names(n_topics: int) -> list[str]:
    """Two words per topic, e.g. 'space detective'; deterministic."""
    w = len(_WORDS)
    return [f"{_WORDS[t % w]} {_WORDS[(7 * t + 3) % w]}" for t in range(n_topics)]


def item_titles(topic: np.ndarray, seed: int = 0) -> list[str]:
    """Template titles: '<adjective> <topic words> <form> no. <i>'."""
    rng = np.random.default_rng([seed, 11])
    names = topic_names(int(topic.max()) + 1 if len(topic) else 1)
    adj = rng.integers(len(_ADJ), size=len(topic))
    form = rng.integers(len(_FORM), size=len(topic))
    return [
        f"{_ADJ[a]} {names[t]} {_FORM[f]} no. {i}"
        for i, (t, a, f) in enumerate(zip(topic, adj, form, strict=True))
    ]


def user_counts(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_users,) events per user, >= 2 each, summing to n_interactions; power-law."""
    w = rng.pareto(cfg.user_exponent, size=cfg.n_users) + 1.0
    w /= w.sum()
    extra = cfg.n_interactions - 2 * cfg.n_users
    return rng.multinomial(extra, w).astype(np.int64) + 2


def _atomic_table(table: pa.Table, out: Path) -> None:
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def generate(cfg: SynthConfig, out_dir: str | Path, progress: bool = False) -> SynthLog:
    """Write ``log.parquet`` and ``items.parquet`` under ``out_dir`` (atomically each)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file at out_dir was a raw FileExistsError
        raise MetarecError(
            f"cannot write the synthetic log in {out}: {err.strerror or err}"
        ) from None
    rng = np.random.default_rng(cfg.seed)
    n_t, d = cfg.n_topics, cfg.d_latent

    # items: topic, Zipf popularity within the topic, latent near the topic centroid
    centroid = rng.normal(size=(n_t, d))  # (n_topics, d)
    item_topic = rng.integers(n_t, size=cfg.n_items)
    item_lat = centroid[item_topic] + 0.5 * rng.normal(size=(cfg.n_items, d))  # (n_items, d)
    pop = 1.0 / (rng.permutation(cfg.n_items) + 1.0) ** cfg.item_exponent
    # items ordered by topic; cdf[j] = topic + cumulative popularity share within the topic,
    # so drawing topic + U(0,1) and a searchsorted gives an item of that topic by popularity
    order = np.argsort(item_topic, kind="stable")
    t_sorted = item_topic[order]
    mass = np.bincount(item_topic, weights=pop, minlength=n_t)
    within = np.cumsum(pop[order])
    starts = np.searchsorted(t_sorted, np.arange(n_t))
    before = np.r_[0.0, within][starts]  # popularity before each topic's first item
    cdf = t_sorted + (within - before[t_sorted]) / np.maximum(mass[t_sorted], 1e-300)
    topic_pop = mass / mass.sum()
    has_items = mass > 0

    counts = user_counts(cfg, rng)
    items_path, log_path = out / "items.parquet", out / "log.parquet"
    titles = item_titles(item_topic, cfg.seed)
    _atomic_table(
        pa.table(
            {
                "item_idx": pa.array(np.arange(cfg.n_items, dtype=np.int32)),
                "item_id": pa.array([f"i{i}" for i in range(cfg.n_items)]),
                "title": pa.array(titles),
                "topic": pa.array(item_topic.astype(np.int32)),
            }
        ),
        items_path,
    )

    schema = pa.schema(
        [
            ("user_idx", pa.int32()),
            ("item_idx", pa.int32()),
            ("rating", pa.float32()),
            ("timestamp", pa.int64()),
        ]
    )
    chunks = range(0, cfg.n_users, cfg.users_per_chunk)
    with (
        atomic_path(log_path) as tmp,
        pq.ParquetWriter(tmp, schema, compression="zstd") as writer,
    ):
        for a in _progress(chunks, progress, "synth log"):
            b = min(a + cfg.users_per_chunk, cfg.n_users)
            writer.write_table(
                _chunk(
                    cfg,
                    a,
                    b,
                    counts[a:b],
                    rng,
                    centroid,
                    item_lat,
                    order,
                    cdf,
                    topic_pop,
                    has_items,
                ),
                row_group_size=1 << 30,
            )
    return SynthLog(log_path, items_path, int(counts.sum()), cfg)


def _chunk(cfg, a, b, counts, rng, centroid, item_lat, order, cdf, topic_pop, has_items):
    """Users a..b-1 (counts (b-a,)): one Arrow table, sorted by (user, timestamp)."""
    n_t = cfg.n_topics
    n_u = b - a
    fav = rng.choice(n_t, size=(n_u, 3), p=topic_pop)  # (U, 3) favourite topics
    u_lat = centroid[fav].mean(1) + 0.5 * rng.normal(size=(n_u, cfg.d_latent))  # (U, d)
    rows = int(counts.sum())
    user = np.repeat(np.arange(n_u), counts)  # (R,) chunk-local user
    slot = rng.choice(3, size=rows, p=[0.5, 0.3, 0.2])
    topic = fav[user, slot]
    explore = rng.random(rows) < cfg.explore
    topic[explore] = rng.choice(n_t, size=int(explore.sum()), p=topic_pop)
    topic = np.where(has_items[topic], topic, int(np.argmax(topic_pop)))
    pos = np.searchsorted(cdf, topic + rng.random(rows), side="right")
    item = order[np.minimum(pos, len(order) - 1)]
    score = np.einsum("rd,rd->r", u_lat[user], item_lat[item]) / np.sqrt(cfg.d_latent)
    rating = np.clip(np.round(3 + 1.5 * np.tanh(score) + 0.5 * rng.normal(size=rows)), 1, 5)
    # per-user increasing timestamps: sorted uniform draws inside the user's block
    ts = rng.integers(0, 10**9, size=rows)
    ts = np.sort(ts + user.astype(np.int64) * 10**9) - user.astype(np.int64) * 10**9
    return pa.table(
        {
            "user_idx": pa.array((user + a).astype(np.int32)),
            "item_idx": pa.array(item.astype(np.int32)),
            "rating": pa.array(rating.astype(np.float32)),
            "timestamp": pa.array(ts.astype(np.int64)),
        }
    )


def _progress(it, show: bool, desc: str):
    if not show:
        return it
    return progress_bar(it, desc=desc)
