"""The feedback store: one SQLite file (WAL mode), appended to by ``POST /feedback``.

SQLite is embedded (no server), survives restarts and a killed process (every ``add`` is
one committed transaction; WAL with ``synchronous=NORMAL`` loses nothing on a process
crash, only possibly the last transactions on power loss), and serialises concurrent
writers itself (``busy_timeout``). A connection is opened per call: they are cheap, and it
keeps the store safe to use from the server's worker threads and from other processes.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.tabular import MAX_UNIX_SECONDS
from metarec.types import MetarecError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rating REAL NOT NULL,
    timestamp INTEGER,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_user ON feedback (user_id, seq);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO store_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
"""
DEFAULT_NAME = "feedback.sqlite3"
_CREATE_LOCK = threading.Lock()  # re-creating a deleted store file: one thread at a time
# timestamp bounds for /feedback, /recommend (serve.schemas) and a stored row alike: the
# CLI's files' range (a stored 2**63 - 1 made the next update's "newest + 1" overflow
# int64, and ±2**62, once taken here, was written into the RUN by update while predict
# refused it in a file)
TIMESTAMP_MIN, TIMESTAMP_MAX = -MAX_UNIX_SECONDS, MAX_UNIX_SECONDS


class StoreDamaged(MetarecError):
    """A stored row holds what ``POST /feedback`` never writes (text or inf as a rating, a
    timestamp that is not an integer unix time): a damaged store, not a bad request. The
    server answers 503 naming it; ``metarec serve`` at start and ``metarec update`` stop
    with one line."""


# the largest rating a row may hold: ratings are held in float32 (serve.schemas bounds
# requests by it too)
RATING_MAX = float(np.finfo(np.float32).max)


def _scale(tag: str) -> tuple[float | None, float | None]:
    """(lo, hi) of a feedback tag "explicit lo..hi" (Predictor.feedback_tag); (None,
    None) for "implicit" or a tag this version does not spell."""
    try:
        lo, hi = tag.removeprefix("explicit ").split("..")
        return float(lo), float(hi)
    except ValueError:
        return None, None


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None (text, bytes, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _checked(path: Path, item_id: object, rating: object, timestamp: object) -> FeedbackRow:
    """A stored row as a FeedbackRow, or StoreDamaged naming the store and the value."""
    r = _number(rating)
    if r is None or abs(r) > RATING_MAX:
        raise StoreDamaged(
            f"{path}: damaged feedback store: stored rating {rating!r} is not a finite "
            "number in float32's range"
        )
    t = timestamp
    if t is not None:
        f = _number(t)
        if f is None or f != int(f) or not TIMESTAMP_MIN <= f <= TIMESTAMP_MAX:
            raise StoreDamaged(
                f"{path}: damaged feedback store: stored timestamp {timestamp!r} is not an "
                f"integer in [{TIMESTAMP_MIN}, {TIMESTAMP_MAX}] (unix seconds)"
            )
        t = int(f)
    return FeedbackRow(str(item_id), r, t)


@dataclass(frozen=True)
class FeedbackRow:
    item_id: str
    rating: float
    timestamp: int | None


class FeedbackStore:
    """Append-only (user_id, item_id, rating, timestamp) rows in SQLite at ``path``.

    ``path`` is a folder (created if needed; the file ``feedback.sqlite3`` inside it is
    used) unless it names an existing file or has a suffix (``fb.sqlite3``, ``x.db``)."""

    def __init__(self, path: str | Path, timeout_s: float = 10.0, read_only: bool = False) -> None:
        p = Path(path)
        if p.exists() and not (p.is_dir() or p.is_file()):
            # /dev/null was taken for a folder to create, and said "File exists"
            raise MetarecError(
                f"{p}: not a folder or a regular file (a device or pipe); give a folder or "
                "an SQLite file path for the feedback store"
            )
        if p.is_dir() or not (p.is_file() or p.suffix):
            p = p / DEFAULT_NAME
        self.path, self.timeout_s, self.read_only = p, timeout_s, read_only
        if read_only:
            # `metarec update` reads a store: it must not create tables (or a journal mode)
            # in whatever file it was pointed at, an unrelated database included
            try:
                with self._connect() as con:
                    found = con.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'feedback'"
                    ).fetchone()
            except sqlite3.DatabaseError as err:
                raise MetarecError(f"{p}: not a usable feedback database ({err})") from None
            if found is None:
                raise MetarecError(f"{p}: not a metarec feedback database (no feedback table)")
            # a table named feedback with other columns (uid, iid, stars) passed and then
            # failed on the first read with an sqlite3 traceback
            with self._connect() as con:
                cols = {r[1] for r in con.execute("PRAGMA table_info(feedback)").fetchall()}
            missing = [
                c for c in ("seq", "user_id", "item_id", "rating", "timestamp") if c not in cols
            ]
            if missing:
                raise MetarecError(
                    f"{p}: not a metarec feedback database (its feedback table has no "
                    f"{', '.join(missing)} column{'s' if len(missing) > 1 else ''})"
                )
            return
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise MetarecError(
                f"{p.parent}: cannot create the feedback store's folder ({err.strerror or err})"
            ) from None
        try:
            with self._connect() as con:
                mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                con.executescript(_SCHEMA)
                # a write, rolled back: a read-only store file passed every step above (the
                # schema was there already) and the server then answered every POST
                # /feedback with a 503; refused at start instead
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.execute(
                        "INSERT INTO feedback (user_id, item_id, rating, received_at) "
                        "VALUES ('', '', 0, 0)"
                    )
                finally:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
        except sqlite3.DatabaseError as err:
            raise MetarecError(f"{p}: not a usable feedback database ({err})") from None
        if str(mode).lower() != "wal":
            raise MetarecError(f"{p}: SQLite refused WAL mode (got {mode!r})")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            con = sqlite3.connect(uri, uri=True, timeout=self.timeout_s, isolation_level=None)
        else:
            # a store file deleted under a running server is made again (connect alone made
            # an empty file, and every request after it failed on "no such table"). One
            # thread at a time makes it: under load a second request saw the first's empty
            # new file, skipped the schema and failed on "no such table"; and the deleted
            # file's -wal/-shm go first ("file is not a database" beside a new main file)
            with _CREATE_LOCK:
                fresh = not self.path.exists()
                if fresh:
                    # its folder too: a folder removed under a running server failed every
                    # request naming a user with a 503 until a restart
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    for side in ("-wal", "-shm"):
                        Path(f"{self.path}{side}").unlink(missing_ok=True)
                con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
                if fresh:
                    con.execute("PRAGMA journal_mode=WAL")
                    con.executescript(_SCHEMA)
        try:
            if not self.read_only:
                con.execute("PRAGMA synchronous=NORMAL")
            yield con
        finally:
            con.close()

    def add(self, user_id: str, rows: Iterable[FeedbackRow], written_for: str | None = None) -> int:
        """Append rows for ``user_id`` in one transaction; returns how many were stored.
        ``written_for`` (``Predictor.feedback_tag``): what the rows' values mean, recorded
        with the store's first rows (see :meth:`written_for`)."""
        now = time.time()
        values = [(str(user_id), str(r.item_id), float(r.rating), r.timestamp, now) for r in rows]
        if not values:
            return 0
        # store_meta exists: a writable store runs the schema when it is opened
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(
                    "INSERT INTO feedback (user_id, item_id, rating, timestamp, received_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    values,
                )
                if written_for is not None:
                    con.execute(
                        "INSERT OR IGNORE INTO store_meta (key, value) VALUES ('written_for', ?)",
                        (written_for,),
                    )
                con.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back on some errors (a full disk): a second
                # ROLLBACK then raised "no transaction is active" and hid the real error
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        return len(values)

    def get(self, user_id: str, limit: int | None = None) -> list[FeedbackRow]:
        """The user's rows in the order they were stored; with ``limit``, the newest
        ``limit`` of them (the server reads at most that many per request: one user with
        200k stored rows took 0.4 s a request otherwise)."""
        with self._connect() as con:
            cur = con.execute(  # LIMIT -1: no limit, in SQLite
                "SELECT item_id, rating, timestamp FROM feedback WHERE user_id = ? "
                "ORDER BY seq DESC LIMIT ?",
                (str(user_id), -1 if limit is None else int(limit)),
            )
            rows = cur.fetchall()
        # checked as frame() checks them for `metarec update`: a text or inf rating, or a
        # timestamp of 1.5, was a 500 with a traceback on every request of the user
        return [_checked(self.path, i, r, t) for i, r, t in reversed(rows)]

    def ratings_outside(self, scale: tuple[float, float] | None) -> list[tuple[str, float]]:
        """(item_id, rating) of the rows whose rating is outside ``scale`` (lo, hi), or with
        ``scale`` None (a run fitted on labels) not 0 or 1: compared in SQL's float64, a
        superset of what a run refuses (``Predictor.unfit_values`` decides, in float32)."""
        with self._connect() as con:
            if scale is None:
                q, args = "SELECT item_id, rating FROM feedback WHERE rating NOT IN (0, 1)", ()
            else:
                q = "SELECT item_id, rating FROM feedback WHERE rating < ? OR rating > ?"
                args = (float(scale[0]), float(scale[1]))
            rows = con.execute(q, args).fetchall()
        # SQLite sorts text above every number: a damaged text rating is "outside" and
        # was a float() traceback at start; an inf was taken for another run's rating
        return [(str(i), _checked(self.path, i, r, None).rating) for i, r in rows]

    def written_for(self) -> str | None:
        """What the values of the store's rows mean (``Predictor.feedback_tag`` of the run
        that stored its first rows: feedback kind and rating scale), or None: no row yet,
        or rows stored before the tag existed. Rows carry no run: a "played" 1 that a run
        on labels stored was read by a 1-5 run as a one-star rating, without a word
        (probe 141)."""
        with self._connect() as con:
            try:
                row = con.execute(
                    "SELECT value FROM store_meta WHERE key = 'written_for'"
                ).fetchone()
            except sqlite3.OperationalError:  # no store_meta table: a store from before
                return None
        return None if row is None else str(row[0])

    def written_for_other(self, tag: str) -> str | None:
        """A warning where the store's rows were stored by a run whose values mean
        something else than ``tag`` (``Predictor.feedback_tag``), else None: what `serve`
        and `metarec update` say before reading them."""
        written = self.written_for()
        if written is None or written == tag:
            return None
        # the example names what is misread this way round (one fixed example was right
        # only for a label store read by a rating run: probe 184)
        if written == "implicit":
            lo, hi = _scale(tag)
            if lo == 1:
                example = "a stored 'played' 1 as a one-star rating"
            elif hi == 1:  # a 0..1 "rating" column: a 1 is its top
                example = "each stored 0/1 label as a rating on this run's scale"
            else:
                scale = tag.removeprefix("explicit ")
                example = f"a stored 'played' 1 as a rating of 1 on this run's {scale} scale"
        elif tag == "implicit":
            if _scale(written)[0] == 1:
                example = "a stored one-star rating, a dislike, as a 'played' 1"
            else:  # on 0..1 a stored 1 is the top rating, not a one-star dislike
                example = "each stored rating as a 0/1 label"
        else:
            example = "each stored rating as a rating on this run's scale"
        return (
            f"feedback store {self.path} holds rows stored by a run on {written} feedback, "
            f"read here as {tag} ({example})"
        )

    def store_id(self) -> str | None:
        """The store's own id: 32 random hex digits written when the store is made, or
        first opened for writing by a version that writes one (None: a store from before,
        only read since). `metarec update` records it with the last row it read, so that an
        update of its RUN from the same store tells the rows folded in already from new
        ones; a store made again at the same path is another store."""
        with self._connect() as con:
            return self._store_id(con)

    @staticmethod
    def _store_id(con: sqlite3.Connection) -> str | None:
        try:
            row = con.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
        except sqlite3.OperationalError:  # no store_meta table: a store from before
            return None
        return None if row is None else str(row[0])

    def snapshot(self) -> tuple[str | None, pd.DataFrame]:
        """(:meth:`store_id`, :meth:`frame`) read in one transaction: one store's id and
        its rows, as they stood at one moment."""
        with self._connect() as con:
            con.execute("BEGIN")
            try:
                return self._store_id(con), self._frame(con)
            finally:
                con.execute("COMMIT")

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def frame(self) -> pd.DataFrame:
        """Every row: user_id, item_id, rating, timestamp (nullable Int64), and seq (int64, the
        row's number in the store: rows are numbered as stored, from 1, and a number is
        never used again), in stored order."""
        with self._connect() as con:
            return self._frame(con)

    def _frame(self, con: sqlite3.Connection) -> pd.DataFrame:
        rows = con.execute(
            "SELECT user_id, item_id, rating, timestamp, seq FROM feedback ORDER BY seq"
        ).fetchall()
        # each row checked as get() checks it (one rule, one message: StoreDamaged names
        # the store and the value); SQLite keeps whatever a column was given, and rows
        # written by /feedback are always numbers
        checked = [_checked(self.path, i, r, t) for _, i, r, t, _ in rows]
        return pd.DataFrame(
            {
                "user_id": pd.Series([str(row[0]) for row in rows], dtype=object),
                "item_id": pd.Series([c.item_id for c in checked], dtype=object),
                "rating": pd.Series([c.rating for c in checked], dtype="float64"),
                "timestamp": pd.array([c.timestamp for c in checked], dtype="Int64"),
                "seq": pd.Series([int(row[4]) for row in rows], dtype="int64"),
            }
        )


def newest_per_item(rows: list[FeedbackRow]) -> list[FeedbackRow]:
    """One row per item, in stored order: the newest of an item's rows. A row without a
    timestamp counts as newer than any with one (it was sent "now", as ``metarec update``
    places untimed rows after everything fitted); among timed rows the largest timestamp
    wins; equal: the later stored. (The server left this to whether every row of the
    request had a timestamp, so one untimed row elsewhere flipped which stored row won.)"""
    best: dict[str, tuple[tuple, int]] = {}
    for pos, r in enumerate(rows):
        key = (r.timestamp is None, r.timestamp or 0, pos)
        if r.item_id not in best or key > best[r.item_id][0]:
            best[r.item_id] = (key, pos)
    keep = sorted(pos for _, pos in best.values())
    return [rows[i] for i in keep]


def open_store(path: str | Path) -> FeedbackStore:
    """Open an existing store for reading (``metarec update``): a missing file is an error."""
    p = Path(path)
    if not (p.is_file() or (p.is_dir() and (p / DEFAULT_NAME).is_file())):
        raise MetarecError(f"{p}: no feedback database there")
    return FeedbackStore(p, read_only=True)
