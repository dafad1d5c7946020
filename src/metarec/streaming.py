"""Meta-training tasks streamed from a Parquet interaction log too large to load whole.

Two passes over a log **sorted by user_idx (then time)**, as :mod:`metarec.synth` writes and
as ``sort_log`` style tools produce:

1. :func:`index_log` scans only the ``user_idx`` and ``item_idx`` columns, batch by batch,
   and keeps per-user offsets (first row, count) and per-item counts: O(n_users + n_items)
   memory, never O(n_rows). It checks that the log is user-sorted.
2. :class:`ParquetTaskStream` visits row groups in a seeded random order, takes this rank's
   share of them (``rank::world``), reads a few at a time (``buffer_groups``), and serves
   the users that *start* in those groups (a user spilling into the next group is read
   whole from both) as episodes in shuffled order. Each user is served once per epoch.

Memory is bounded by ``buffer_groups`` row groups plus the index. The stream has the
``sample(n, rng)`` interface of the in-memory sampler, so :func:`metarec.train.train` runs
on it unchanged (``sampler=stream``); with several ranks it is ``rank_sharded``: each rank
reads different row groups and draws its own share of each meta-batch.

Also :func:`embed_resumable`: an item-text embedding cache build in chunks, each chunk its
own cache shard, so an interrupted build restarts where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metarec.meta.episodes import Episode, make_episode, training_cut
from metarec.progress import bar as progress_bar
from metarec.text.cache import EmbeddingCache, text_key
from metarec.text.encoder import TextEncoder
from metarec.train import auto_negatives, popularity_pool
from metarec.types import MAX_SEED, MetarecError

STREAM_NEGATIVE_SOURCES = ("auto", "catalogue", "popularity")  # ParquetTaskStream negatives
# the popularity pool's bound (int64 entries: 128 MiB): a log of 10^8 events over 10^5
# items would otherwise repeat items some 5·10^7 times in all (see popularity_pool)
STREAM_POPULAR_POOL_MAX = 1 << 24


@dataclass(frozen=True, eq=False)
class LogIndex:
    """Pass one over a user-sorted log: where each user's rows are."""

    path: Path
    n_rows: int
    user_start: np.ndarray  # (n_users,) int64 first row of each user (users with no rows too)
    user_count: np.ndarray  # (n_users,) int64
    item_count: np.ndarray  # (n_items,) int64 events per item
    group_start: np.ndarray  # (n_groups + 1,) int64 first row of each row group, then n_rows
    columns: tuple[str, str, str] = ("user_idx", "item_idx", "rating")  # user, item, rating

    @property
    def n_users(self) -> int:
        return len(self.user_count)

    @property
    def n_items(self) -> int:
        return len(self.item_count)

    @property
    def n_groups(self) -> int:
        return len(self.group_start) - 1


# Ids index dense per-user and per-item arrays (16 and 8 bytes an id), so one stray huge id
# (10**10: some 75 GiB) must be refused before np.bincount allocates for it. Ids made by
# metarec are dense (0..n-1): at most one new user or item per row, plus gaps for those
# with no rows in this log (a shard of a larger log, cold items). Up to 4 ids a row, and
# never under 2**24 (at most 384 MiB of index), covers that; a larger id space is declared
# with n_users / n_items.
_MIN_ID_LIMIT = 1 << 24
_IDS_PER_ROW = 4


def index_log(
    path: str | Path,
    n_items: int | None = None,
    user_col: str = "user_idx",
    item_col: str = "item_idx",
    batch_size: int = 1 << 20,
    rating_col: str = "rating",
    n_users: int | None = None,
) -> LogIndex:
    """Scan ``user_col``/``item_col`` of a user-sorted Parquet log in batches (pass one).

    Checks, each a one-line :class:`MetarecError` naming the file, the column and the row
    (1-based): the three columns exist with numeric types; ids are not null, whole numbers
    (a float column of whole numbers is accepted), not negative, sorted by user, and below
    ``n_users`` / ``n_items`` when given (else below max(2**24, 4 x rows), see
    ``_MIN_ID_LIMIT``). Null ratings are found from the row-group statistics; the rating
    values themselves are checked when the stream reads them (this pass does not read them).
    """
    path = Path(path)
    for name, n in (("n_items", n_items), ("n_users", n_users)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0):
            raise MetarecError(f"index_log: {name} must be an integer >= 0, got {n!r}")
    if batch_size < 1:  # pyarrow's own ValueError otherwise
        raise MetarecError(f"index_log: batch_size must be >= 1, got {batch_size}")
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as err:
        raise MetarecError(f"{path}: cannot read as Parquet ({err})") from None
    _check_columns(path, pf.schema_arrow, user_col, item_col, rating_col)
    md = pf.metadata
    sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    group_start = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    _check_rating_nulls(path, pf, rating_col, group_start)
    limit = max(_MIN_ID_LIMIT, _IDS_PER_ROW * md.num_rows)
    user_count = np.zeros(n_users or 0, np.int64)
    item_count = np.zeros(n_items or 0, np.int64)
    row, last_user = 0, -1
    for batch in _batches(path, pf, batch_size, [user_col, item_col]):
        if batch.num_rows == 0:
            continue
        u = _ids(path, batch.column(user_col), user_col, row)  # (batch,) int64
        i = _ids(path, batch.column(item_col), item_col, row)  # (batch,) int64
        bad = np.flatnonzero(np.diff(u) < 0)
        if u[0] < last_user or len(bad):
            _refuse_negative(path, u, user_col, row)  # a negative id is the real problem
            at = row + (int(bad[0]) + 1 if len(bad) else 0)
            raise MetarecError(
                f"{path}: not sorted by {user_col} at row {at + 1}; sort the log by user first"
            )
        # u is sorted from here: u[0] is its smallest id and u[-1] its largest
        if u[0] < 0:
            _refuse_negative(path, u, user_col, row)
        if i.min() < 0:
            _refuse_negative(path, i, item_col, row)
        _check_bound(path, u, int(u[-1]), user_col, row, n_users, "n_users", limit)
        _check_bound(path, i, int(i.max()), item_col, row, n_items, "n_items", limit)
        last_user = int(u[-1])
        user_count = _add_counts(user_count, np.bincount(u))
        item_count = _add_counts(item_count, np.bincount(i))
        row += len(u)
    if row == 0:
        raise MetarecError(f"{path}: the log has no rows")
    user_start = np.r_[0, np.cumsum(user_count)[:-1]].astype(np.int64)
    cols = (user_col, item_col, rating_col)
    return LogIndex(path, row, user_start, user_count, item_count, group_start, cols)


def _check_columns(path: Path, schema: pa.Schema, user: str, item: str, rating: str) -> None:
    """The user, item and rating columns exist once each, with types numpy reads as numbers."""
    names = schema.names
    missing = [c for c in (user, item, rating) if c not in names]
    if missing:
        near = [n for c in missing for n in names if n.lower() == c.lower()]
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise MetarecError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(names)}){hint}"
        )
    for col in (user, item, rating):
        if names.count(col) > 1:
            raise MetarecError(f"{path}: column {col!r} appears {names.count(col)} times")
        t = schema.field(col).type
        ok = pa.types.is_integer(t) or pa.types.is_floating(t)
        if col == rating and pa.types.is_boolean(t):
            ok = True  # 0/1 feedback
        if not ok:
            want = "numbers" if col == rating else "integer ids"
            raise MetarecError(f"{path}: column {col!r} has type {t}; it must hold {want}")


def _check_rating_nulls(path: Path, pf: pq.ParquetFile, col: str, group_start: np.ndarray) -> None:
    """Null ratings at index time, for free: the row-group statistics count them, so only a
    group that has one is read (to name the row). NaN is not counted there; the stream
    checks rating values as it reads them."""
    md = pf.metadata
    if md.num_row_groups == 0:
        return
    rg0 = md.row_group(0)
    j = next((j for j in range(rg0.num_columns) if rg0.column(j).path_in_schema == col), None)
    if j is None:
        return
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(j).statistics
        if st is not None and st.has_null_count and st.null_count > 0:
            try:
                nulls = pf.read_row_group(g, columns=[col]).column(col).is_null()
            except _READ_ERRORS as err:
                raise _unreadable(path, err, f"row group {g}") from None
            at = int(group_start[g]) + _first(nulls)
            raise MetarecError(f"{path}: row {at + 1}: {col} is null")


# what pyarrow raises for a damaged page or a row group the file no longer has ("Couldn't
# deserialize thrift", ArrowInvalid): a multi-line traceback naming no file, before these
_READ_ERRORS = (OSError, ValueError, pa.ArrowException)


def _unreadable(path: Path, err: Exception, what: str) -> MetarecError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return MetarecError(f"{path}: cannot read {what} ({first}); is the file damaged?")


def _batches(path: Path, pf: pq.ParquetFile, batch_size: int, columns: list[str]):
    """pf.iter_batches with a damaged page as one line naming the file."""
    it = pf.iter_batches(batch_size=batch_size, columns=columns)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except _READ_ERRORS as err:
            raise _unreadable(path, err, "the log") from None
        yield batch


def _first(mask: pa.Array | pa.ChunkedArray) -> int:
    """Position of the first true value of a boolean arrow array (there is one)."""
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _ids(path: Path, arr: pa.Array, col: str, row: int) -> np.ndarray:
    """One batch's id column (arr: (batch,) rows from file row ``row`` on) as int64 (batch,).

    Nulls would otherwise become NaN and then INT64_MIN ("negative"), and 0.5 would be
    truncated to 0, so both are refused here, naming the row."""
    if arr.null_count:
        raise MetarecError(f"{path}: row {row + _first(arr.is_null()) + 1}: {col} is null")
    x = arr.to_numpy(zero_copy_only=False)
    if x.dtype.kind == "f":
        # a float column of whole numbers is accepted (pandas writes int ids that once had a
        # missing value as floats, and metarec reads 12.0 as the id 12 elsewhere too);
        # fmod(x, 1) is NaN for NaN and inf, so one test refuses all three; past 2**53 a
        # float is no exact integer (and past 2**63 the cast to int64 would wrap)
        with np.errstate(invalid="ignore"):
            whole = (np.fmod(x, 1) == 0) & (np.abs(x) < 2.0**53)
        if not whole.all():
            k = int(np.flatnonzero(~whole)[0])
            v = float(x[k])
            if np.isnan(v):
                what = "NaN"
            elif np.isfinite(v) and v == int(v):
                what = f"{v!r}, too large for an exact integer id"
            else:
                what = f"{v!r}, not a whole number (ids are integers)"
            raise MetarecError(f"{path}: row {row + k + 1}: {col} is {what}")
    elif x.dtype == np.uint64 and len(x) and x.max() >= 2**63:
        k = int(np.argmax(x >= 2**63))  # the cast to int64 would make it negative
        raise MetarecError(f"{path}: row {row + k + 1}: {col} {int(x[k])} is too large")
    return x.astype(np.int64)


def _refuse_negative(path: Path, ids: np.ndarray, col: str, row: int) -> None:
    """Raise naming the first negative id of the batch, if it has one."""
    neg = np.flatnonzero(ids < 0)
    if len(neg):
        k = int(neg[0])
        raise MetarecError(f"{path}: row {row + k + 1}: {col} {int(ids[k])} is negative")


def _check_bound(
    path: Path,
    ids: np.ndarray,
    top: int,
    col: str,
    row: int,
    n: int | None,
    name: str,
    limit: int,
) -> None:
    """Refuse the batch's largest id ``top`` if it is >= ``n`` (when given) or ``limit``,
    before the counts are allocated for it."""
    bound = n if n is not None else limit
    if top < bound:
        return
    k = int(np.flatnonzero(ids >= bound)[0])
    if n is not None:
        raise MetarecError(f"{path}: row {row + k + 1}: {col} {int(ids[k])} >= {name} ({n})")
    raise MetarecError(
        f"{path}: row {row + k + 1}: {col} {int(ids[k])} is far beyond what a log of this size "
        f"needs (at most {limit - 1}; ids must be dense indices 0..n-1); "
        f"if there really are that many, pass {name}"
    )


def _add_counts(total: np.ndarray, part: np.ndarray) -> np.ndarray:
    if len(part) > len(total):
        total = np.r_[total, np.zeros(len(part) - len(total), np.int64)]
    total[: len(part)] += part
    return total


class ParquetTaskStream:
    """Episodes from a user-sorted Parquet log, a few row groups in memory at a time.

    The in-memory sampler's time-order recipe (:mod:`metarec.train`, ``episodes =
    "time"``): with probability ``resample_prob`` a random support/query partition of the
    user's history, otherwise the first ``k_shot`` events in time order as support and the
    next ``n_query`` as query; ``min_support`` > 0 draws each support's size from
    [min_support, k_shot] as ``train.min_support`` does. Newest-items episodes (item
    cold-start) need every item's first time over the whole log, which a stream does not
    hold: ``train`` refuses them for a stream.
    ``rank``/``world`` default to the current process group (:mod:`metarec.distributed`).
    """

    def __init__(
        self,
        index: LogIndex,
        *,
        k_shot: int,
        n_query: int,
        head: str = "binary",
        n_negatives: int = 1,
        negatives: str = "auto",
        positive_threshold: float = 0.5,
        resample_prob: float = 0.5,
        min_support: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world: int | None = None,
        buffer_groups: int = 2,
        user_col: str | None = None,
        item_col: str | None = None,
        rating_col: str | None = None,
    ) -> None:
        if rank is None or world is None:
            from metarec.distributed import context

            ctx = context()
            rank, world = ctx.rank, ctx.world
        if not 0 <= rank < world:
            raise MetarecError(f"ParquetTaskStream: rank {rank} outside world {world}")
        if index.n_groups < world:
            raise MetarecError(
                f"{index.path}: {index.n_groups} row groups cannot be shared by {world} ranks "
                "(write the log with more, smaller row groups)"
            )
        if k_shot < 1 or n_query < 1 or buffer_groups < 1:
            raise MetarecError("ParquetTaskStream: k_shot, n_query, buffer_groups must be >= 1")
        # checked here as TrainConfig checks them: a bogus head and a negative count were
        # accepted, and seed -1 was numpy's traceback at the first draw
        if head not in ("binary", "rating"):  # ScorerConfig.head
            raise MetarecError(f"ParquetTaskStream: head {head!r} is not 'binary' or 'rating'")
        if n_negatives < 0:
            raise MetarecError(f"ParquetTaskStream: n_negatives must be >= 0, got {n_negatives}")
        if not 0 <= seed <= MAX_SEED:
            raise MetarecError(f"ParquetTaskStream: seed must be in [0, {MAX_SEED}], got {seed}")
        if not 0.0 <= resample_prob <= 1.0:
            raise MetarecError(
                f"ParquetTaskStream: resample_prob must be in [0, 1], got {resample_prob}"
            )
        if isinstance(min_support, bool) or not isinstance(min_support, int) or min_support < 0:
            raise MetarecError(
                f"ParquetTaskStream: min_support must be an integer >= 0 (0 = every task has "
                f"K), got {min_support!r}"
            )
        if negatives not in STREAM_NEGATIVE_SOURCES:
            raise MetarecError(
                f"ParquetTaskStream: negatives {negatives!r} is not one of "
                f"{STREAM_NEGATIVE_SOURCES}"
            )
        self.index = index
        # negatives from items with events in the log (as the in-memory sampler does)
        self.negative_pool = np.flatnonzero(index.item_count > 0)
        # A query's sampled negatives, as train.negatives draws them in memory: "auto" is
        # "popularity" on more than POPULARITY_MIN_ITEMS items. The in-memory sampler
        # counts liked items; the index reads ids only, so here every item with an event
        # counts, and the weights are event counts. Supports keep the uniform draw.
        if head != "binary":
            negatives = "catalogue"
        elif negatives == "auto":
            negatives = auto_negatives(len(self.negative_pool))
        self.negatives = negatives  # as resolved: train() reports it (TrainResult.negatives)
        self.popular_pool: np.ndarray | None = None  # (n_entries,) see popularity_pool
        if negatives == "popularity":
            self.popular_pool = popularity_pool(
                self.negative_pool,
                index.item_count[self.negative_pool],
                max_entries=STREAM_POPULAR_POOL_MAX,
            )
        self.k, self.q = k_shot, n_query
        self.head, self.n_negatives = head, n_negatives
        self.positive_threshold, self.resample_prob = positive_threshold, resample_prob
        self.min_support = min_support
        self.seed, self.rank, self.world = seed, rank, world
        self.rank_sharded = world > 1
        self.buffer_groups = buffer_groups
        # the columns the log was indexed with, unless named here
        named = (user_col, item_col, rating_col)
        self.cols = [c or d for c, d in zip(named, index.columns, strict=True)]
        try:
            self._file = pq.ParquetFile(index.path)
        except (OSError, ValueError) as err:
            raise MetarecError(f"{index.path}: cannot read as Parquet ({err})") from None
        _check_columns(index.path, self._file.schema_arrow, *self.cols)
        md = self._file.metadata
        if (md.num_rows, md.num_row_groups) != (index.n_rows, index.n_groups):
            # rewritten after index_log: its offsets point at rows that are no longer
            # there (pyarrow's "row_group_indices is 4 ... num_row_groups(2)")
            raise MetarecError(
                f"{index.path}: the file has {md.num_rows} rows in {md.num_row_groups} row "
                f"groups, its index {index.n_rows} in {index.n_groups}: it changed since it "
                "was indexed; index it again (index_log)"
            )
        self.epoch = 0
        self._queue: list[int] = []  # row groups still to read this epoch
        self._ready: list[tuple[int, np.ndarray, np.ndarray]] = []  # (user, items, ratings)
        self._start_epoch()

    # --- reading -----------------------------------------------------------------------
    def _start_epoch(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.index.n_groups)  # the same on every rank
        self._queue = list(order[self.rank :: self.world])

    def _read_rows(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [a, b) of the log: reads only the row groups that overlap them."""
        gs = self.index.group_start
        g0 = int(np.searchsorted(gs, a, side="right")) - 1
        g1 = int(np.searchsorted(gs, b, side="left"))
        try:
            table = self._file.read_row_groups(list(range(g0, g1)), columns=self.cols)
        except _READ_ERRORS as err:
            raise _unreadable(self.index.path, err, f"row groups {g0}..{g1 - 1}") from None
        off = a - int(gs[g0])
        # slicing the arrow columns is free: only rows [a, b) are converted
        user, item, rating = (table.column(c).slice(off, b - a) for c in self.cols)
        r = rating.to_numpy(zero_copy_only=False).astype(np.float32)  # (b - a,)
        # Ratings are checked here, where they are read anyway: the index pass reads only
        # the id columns, and reading this one there too would cost it a third column. A
        # null (NaN once converted) or NaN would only surface as a NaN meta-loss later.
        if not np.isfinite(r).all():
            k = int(np.flatnonzero(~np.isfinite(r))[0])
            v = rating[k].as_py()
            what = "null" if v is None else "NaN" if v != v else f"{v!r}, not a finite float32"
            raise MetarecError(f"{self.index.path}: row {a + k + 1}: {self.cols[2]} is {what}")
        return (
            user.to_numpy(zero_copy_only=False).astype(np.int64),
            item.to_numpy(zero_copy_only=False).astype(np.int64),
            r,
        )

    def users_of_group(self, g: int) -> np.ndarray:
        """Users whose first row lies in row group ``g`` and who have >= 2 events."""
        idx, gs = self.index, self.index.group_start
        lo = np.searchsorted(idx.user_start, gs[g], side="left")
        hi = np.searchsorted(idx.user_start, gs[g + 1], side="left")
        users = np.arange(lo, hi)
        return users[idx.user_count[users] >= 2]

    def _fill(self) -> None:
        if not self._queue:
            self.epoch += 1
            self._start_epoch()
        take, self._queue = self._queue[: self.buffer_groups], self._queue[self.buffer_groups :]
        ready = []
        for g in take:
            users = self.users_of_group(int(g))
            if not len(users):
                continue
            a = int(self.index.user_start[users[0]])
            b = int(self.index.user_start[users[-1]] + self.index.user_count[users[-1]])
            u, items, ratings = self._read_rows(a, b)
            for user in users:
                s = int(self.index.user_start[user]) - a
                n = int(self.index.user_count[user])
                if u[s] != user or u[s + n - 1] != user:
                    raise MetarecError(f"{self.index.path}: changed since it was indexed")
                ready.append((int(user), items[s : s + n], ratings[s : s + n]))
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, len(self._queue)])
        self._ready = [ready[i] for i in rng.permutation(len(ready))]

    def histories(self, n: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The next ``n`` (user, items, ratings) histories of this rank's stream."""
        out: list[tuple[int, np.ndarray, np.ndarray]] = []
        empty_fills = 0
        while len(out) < n:
            if not self._ready:
                self._fill()
                empty_fills = empty_fills + 1 if not self._ready else 0
                if empty_fills > self.index.n_groups + 1:
                    share = (
                        f" in rank {self.rank}'s share of its row groups (of {self.world} "
                        "ranks; write the log with more, smaller row groups, users spread "
                        "over them)"
                        if self.rank_sharded
                        else ""
                    )
                    raise MetarecError(f"{self.index.path}: no user has 2 or more events{share}")
                continue
            k = min(n - len(out), len(self._ready))
            out += self._ready[:k]
            self._ready = self._ready[k:]
        return out

    # --- the sampler interface of metarec.train ----------------------------------------
    def sample(self, n: int, rng: np.random.Generator) -> list[Episode]:
        out = []
        for user, items, ratings in self.histories(n):
            s, q, _ = training_cut(
                len(items),
                self.k,
                self.q,
                rng,
                min_support=self.min_support,
                resample_prob=self.resample_prob,
            )
            out.append(
                make_episode(
                    user,
                    items[s],
                    ratings[s],
                    items[q],
                    ratings[q],
                    head=self.head,
                    n_items=self.index.n_items,
                    rng=rng,
                    n_negatives=self.n_negatives,
                    positive_threshold=self.positive_threshold,
                    exclude=items,
                    negative_pool=self.negative_pool,
                    query_negative_pool=self.popular_pool,
                )
            )
        return out


def embed_resumable(
    texts: Sequence[str],
    encoder: TextEncoder,
    cache: EmbeddingCache | str | Path,
    chunk_size: int = 10_000,
    batch_size: int | None = None,
    progress: bool = False,
    stop_after_chunks: int | None = None,
) -> tuple[np.ndarray | None, dict]:
    """Fill the embedding cache for ``texts`` chunk by chunk, each chunk committed as its
    own cache shard, so an interrupted build (crash, Ctrl-C, ``stop_after_chunks``) resumes
    with only the missing texts encoded.

    Returns (vectors (len(texts), dim) float32, or None when stopped early; stats with
    ``encoded`` (texts sent to the encoder now), ``hits``, ``chunks_done``, ``complete``).
    """
    if chunk_size < 1:
        # 0 was a ZeroDivisionError, and a negative size returned no vector, "complete"
        raise MetarecError(f"embed_resumable: chunk_size must be >= 1, got {chunk_size}")
    if stop_after_chunks is not None and stop_after_chunks < 0:
        raise MetarecError(
            f"embed_resumable: stop_after_chunks must be >= 0, got {stop_after_chunks}"
        )
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    texts = [str(t) for t in texts]
    n_chunks = (len(texts) + chunk_size - 1) // chunk_size
    parts: list[np.ndarray] = []
    stats = {"n_texts": len(texts), "encoded": 0, "hits": 0, "chunks_done": 0, "complete": False}
    # one read of the cache up front: chunks already complete are served from it, so a
    # resumed or warm build does not re-read every shard once per chunk
    found, _, _, _ = cache.lookup(encoder.fingerprint)
    bar = progress_bar(total=len(texts), disable=not progress, desc="embed", unit="text")
    try:
        for c in range(n_chunks):
            if stop_after_chunks is not None and c >= stop_after_chunks:
                return None, stats
            chunk = texts[c * chunk_size : (c + 1) * chunk_size]
            keys = [text_key(t) for t in chunk]
            if all(k in found for k in keys):
                vecs = np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
                s = {"encoded": 0, "hits": len(chunk)}
            else:
                # one shard per chunk, as the resume above reads them
                vecs, s = cache.get_or_compute(encoder, chunk, batch_size, commit_every=chunk_size)
            parts.append(vecs)
            stats["encoded"] += s["encoded"]
            stats["hits"] += s["hits"]
            stats["chunks_done"] = c + 1
            bar.update(len(chunk))
            bar.set_postfix(encoded=stats["encoded"], hits=stats["hits"])
    finally:  # an error or Ctrl-C too: an open bar would glue the error line to it
        bar.close()
    stats["complete"] = True
    out = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)
    return out, stats
