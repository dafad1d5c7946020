"""Shared types passed between metarec's modules.

Every module downstream of the loaders speaks in these frozen dataclasses. Naming rule used
everywhere: ``user_id`` / ``item_id`` are *raw* ids (strings, as the user's files spell them);
``user_idx`` / ``item_idx`` are contiguous int64 indices into an :class:`IdMap`.

Arrays inside frozen dataclasses are treated as read-only by convention (constructors set
``writeable=False`` on them), so a ``Dataset`` can be shared without defensive copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd

from metarec.errors import MetarecError  # re-exported: metarec.types.MetarecError

Feedback = Literal["explicit", "implicit"]


# the largest seed accepted anywhere: fit mixes seeds (train.seed + 1_000_003 * model.seed)
# and torch.manual_seed takes an int64, so an unbounded seed passed the checks and
# overflowed in the middle of a run
MAX_SEED = 2**31 - 1

# implicit labels are 0/1: a label (or predicted probability) at or above this is a like
IMPLICIT_POSITIVE = 0.5


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class IdMap:
    """Bijection raw id (str) <-> index (int64). ``ids[idx]`` is the raw id of ``idx``."""

    ids: np.ndarray  # (n,) object array of str

    def __post_init__(self) -> None:
        ids = np.asarray([str(x) for x in self.ids], dtype=object)
        if len(set(ids.tolist())) != len(ids):
            raise MetarecError("IdMap: raw ids are not unique")
        object.__setattr__(self, "ids", _frozen(ids))

    @classmethod
    def from_values(cls, values: Iterable) -> IdMap:
        """Map of the distinct values in first-appearance order."""
        return cls(np.asarray(pd.unique(pd.Series(list(values), dtype=object).astype(str))))

    @cached_property
    def _lookup(self) -> dict[str, int]:
        return {raw: i for i, raw in enumerate(self.ids.tolist())}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._lookup

    def index(self, raw: object, what: str = "id") -> int:
        try:
            return self._lookup[str(raw)]
        except KeyError:
            raise MetarecError(f"unknown {what} {raw!r}") from None

    def indices(self, raws: Sequence | np.ndarray, what: str = "id") -> np.ndarray:
        """Vectorised lookup; raises MetarecError naming the first unknown id."""
        s = pd.Series(np.asarray(raws, dtype=object)).astype(str)
        out = s.map(self._lookup)
        if out.isna().any():
            bad = s[out.isna()].iloc[0]
            raise MetarecError(f"unknown {what} {bad!r} ({int(out.isna().sum())} unknown in all)")
        return out.to_numpy(dtype=np.int64)

    def lookup_or_missing(self, raws: Sequence | np.ndarray) -> np.ndarray:
        """Like :meth:`indices` but unknown ids give -1 instead of raising."""
        s = pd.Series(np.asarray(raws, dtype=object)).astype(str)
        return s.map(self._lookup).fillna(-1).to_numpy(dtype=np.int64)


def _as_column(values: object, name: str, dtype: type) -> np.ndarray:
    """``values`` as an Interactions column of ``dtype``, or one line naming the column:
    numpy truncated a float index (item 0.7 became item 0, and a user was adapted on the
    wrong items without a word) and raised a bare ValueError for NaN or text."""
    try:
        a = np.asarray(values)
        if np.issubdtype(dtype, np.integer) and a.dtype.kind in "fiu" and a.size:
            if a.dtype.kind == "f":
                bad = ~np.isfinite(a) | (a != np.round(a))
                if bad.any():
                    raise MetarecError(
                        f"Interactions.{name} must hold whole numbers, got "
                        f"{float(a.ravel()[bad.ravel()][0])!r}"
                    )
            # past the column's range numpy wrapped (domain 40000 became -25536) or cast
            # 1e30 to the smallest int64 with only a warning
            info = np.iinfo(dtype)
            lo, hi = a.min(), a.max()
            # a float is compared against 2**63 (int64's max rounds up to it in float64)
            wide = a.dtype.kind == "f" and info.max == 2**63 - 1
            if lo < info.min or hi > info.max or (wide and hi >= 2.0**63):
                raise MetarecError(
                    f"Interactions.{name} must fit {np.dtype(dtype).name} "
                    f"({info.min}..{info.max}), got {(lo if lo < info.min else hi).item()!r}"
                )
        elif np.issubdtype(dtype, np.floating) and a.dtype.kind in "fiu" and a.size:
            v = a.astype(np.float64, copy=False)  # no copy of float64 ratings
            # a finite rating of 1e40 became inf in float32 (an inf given stays inf)
            big = np.isfinite(v) & (np.abs(v) > np.finfo(dtype).max)
            if big.any():
                raise MetarecError(
                    f"Interactions.{name} must fit {np.dtype(dtype).name}, got "
                    f"{float(a.ravel()[big.ravel()][0])!r}"
                )
        return np.asarray(a, dtype=dtype)
    except MetarecError:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise MetarecError(
            f"Interactions.{name}: not {np.dtype(dtype).name} values ({err})"
        ) from None


@dataclass(frozen=True, eq=False)
class Interactions:
    """A set of (user, item, rating) events, as parallel arrays of equal length n.

    ``rating`` holds the explicit rating or the 0/1 label for implicit data.
    ``timestamp`` is unix seconds where the source has times, else the event's position in
    the source log (an order, still usable to sort). ``domain`` indexes ``Dataset.domains``.
    """

    user_idx: np.ndarray  # (n,) int64
    item_idx: np.ndarray  # (n,) int64
    rating: np.ndarray  # (n,) float32
    timestamp: np.ndarray  # (n,) int64
    domain: np.ndarray  # (n,) int16

    def __post_init__(self) -> None:
        n = len(self.user_idx)
        for name, dtype in (
            ("user_idx", np.int64),
            ("item_idx", np.int64),
            ("rating", np.float32),
            ("timestamp", np.int64),
            ("domain", np.int16),
        ):
            raw = getattr(self, name)
            if not (isinstance(raw, np.ndarray) and raw.dtype == dtype):
                raw = _as_column(raw, name, dtype)
            a = np.asarray(raw, dtype=dtype)
            if a.shape != (n,):
                raise MetarecError(f"Interactions.{name} has shape {a.shape}, expected ({n},)")
            object.__setattr__(self, name, _frozen(a))

    @classmethod
    def empty(cls) -> Interactions:
        z = np.zeros(0)
        return cls(z, z, z, z, z)

    def __len__(self) -> int:
        return len(self.user_idx)

    def take(self, index: np.ndarray) -> Interactions:
        """Rows selected by a boolean mask or an integer index array."""
        return Interactions(
            self.user_idx[index],
            self.item_idx[index],
            self.rating[index],
            self.timestamp[index],
            self.domain[index],
        )

    def sorted_by_time(self) -> Interactions:
        """Stable sort by (timestamp, original position): ties keep log order."""
        return self.take(np.argsort(self.timestamp, kind="stable"))

    def item_first_time(self, n_items: int) -> np.ndarray:
        """(n_items,) int64: each item's earliest timestamp here (its age in the catalogue);
        the int64 maximum for an item with no row, so it sorts as the newest."""
        first = np.full(n_items, np.iinfo(np.int64).max)
        np.minimum.at(first, self.item_idx, self.timestamp)
        return first

    @staticmethod
    def concat(parts: Sequence[Interactions]) -> Interactions:
        if not parts:
            return Interactions.empty()
        return Interactions(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("user_idx", "item_idx", "rating", "timestamp", "domain")
            )
        )


@dataclass(frozen=True, eq=False)
class SideTable:
    """Side information, one row per index of ``ids`` (row i describes index i).

    ``frame`` has no id column; its columns are split by role so feature builders know what
    to embed as text, what to one-hot/embed as categories and what to scale as numbers.
    Rows of ids that the source did not describe hold missing values.
    """

    ids: IdMap
    frame: pd.DataFrame
    text_columns: tuple[str, ...] = ()
    categorical_columns: tuple[str, ...] = ()
    numeric_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.frame) != len(self.ids):
            raise MetarecError(f"SideTable has {len(self.frame)} rows for {len(self.ids)} ids")
        for col in (*self.text_columns, *self.categorical_columns, *self.numeric_columns):
            if col not in self.frame.columns:
                raise MetarecError(f"SideTable: declared column {col!r} is missing")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded, cleaned and re-indexed dataset: what every later step starts from."""

    name: str
    interactions: Interactions
    users: IdMap
    items: IdMap
    feedback: Feedback  # explicit ratings or implicit 0/1 labels
    rating_range: tuple[float, float]  # (lo, hi) of the rating scale; (0, 1) for implicit
    has_time: bool  # True: timestamps are unix seconds; False: they are log order
    domains: tuple[str, ...] = ("default",)
    item_table: SideTable | None = None
    user_table: SideTable | None = None
    report: tuple[dict, ...] = ()  # preprocessing report, one dict per step (see preprocess)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def item_domain_names(self) -> np.ndarray:
        """(n_items,) object: each catalogue item's domain name, from the item table's
        ``domain`` column where it has one (a missing value: "default"). Without one: the
        only domain, or with several the domain of each item's first interaction
        ("default" for an item nobody rated)."""
        table = self.item_table
        if table is not None and "domain" in table.frame.columns:
            dom = table.frame["domain"].astype(object)
            return dom.where(dom.notna(), "default").astype(str).to_numpy(object)
        if len(self.domains) < 2:
            return np.full(self.n_items, self.domains[0], dtype=object)
        out = np.full(self.n_items, "default", dtype=object)
        inter = self.interactions
        order = np.argsort(inter.timestamp, kind="stable")
        items, first = np.unique(inter.item_idx[order], return_index=True)
        out[items] = np.asarray(self.domains, dtype=object)[inter.domain[order][first]]
        return out

    def to_frame(self, inter: Interactions | None = None) -> pd.DataFrame:
        """Interactions with raw ids: columns user_id, item_id, rating, timestamp, domain."""
        inter = self.interactions if inter is None else inter
        return pd.DataFrame(
            {
                "user_id": self.users.ids[inter.user_idx],
                "item_id": self.items.ids[inter.item_idx],
                "rating": inter.rating,
                "timestamp": inter.timestamp,
                "domain": np.asarray(self.domains, dtype=object)[inter.domain]
                if len(inter)
                else np.array([], dtype=object),
            }
        )


@dataclass(frozen=True, eq=False)
class Task:
    """One user's episode: adapt on ``support``, evaluate on ``query`` (disjoint rows)."""

    user_idx: int
    support: Interactions
    query: Interactions


@dataclass(frozen=True, eq=False)
class Split:
    """A cold-start experiment: training interactions plus validation and test episodes.

    ``train`` is everything a model may fit on. Validation tasks pick hyperparameters and
    early stopping; test tasks are touched once, at the end. For item cold-start,
    ``cold_items`` lists the item indices that never appear in ``train``.
    """

    protocol: str
    train: Interactions
    valid: tuple[Task, ...]
    test: tuple[Task, ...]
    seed: int
    k_shot: int
    n_query: int
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # the held-out items of each part (their union is cold_items): a test user's full
    # ranking runs over the test items, a validation user's over the validation items
    valid_cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    source_domain: int | None = None
    target_domain: int | None = None
    summary: dict = field(default_factory=dict)


# --- raw ids -------------------------------------------------------------------------
MAX_ID_CHARS = 1024


def id_to_str(v: object) -> object:
    """A raw id as every path reads it (the service's bodies and paths, `metarec update`'s
    store rows): an int as its string; a string stripped, and refused (ValueError) when
    empty, longer than MAX_ID_CHARS, holding a control character or a lone surrogate."""
    # ints (not bools) are ids too; anything else is left for the str check to reject
    if isinstance(v, int) and not isinstance(v, bool):
        # bounded as a string is: a 1,100-digit integer was stored, then refused when
        # read back, and `metarec update` failed on the whole store for that one row
        v = str(v)
        if len(v) > MAX_ID_CHARS:
            raise ValueError(f"id is longer than {MAX_ID_CHARS} characters")
        return v
    if isinstance(v, str):
        # JSON may carry a lone UTF-16 surrogate ("\ud800"): no UTF-8 spelling, so the id
        # tables, SQLite and the response encoder would all fail on it (a 500)
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("id is not valid Unicode (a lone surrogate escape)") from None
        if len(v) > MAX_ID_CHARS:
            raise ValueError(f"id is longer than {MAX_ID_CHARS} characters")
        # ids are stripped, and an empty one refused, as when the CLI reads a file: " a "
        # was another user than "a", and feedback under "" made a user no file can name
        v = v.strip()
        if not v:
            raise ValueError("id is empty")
        # a line break or other control character: stored under such an id, the rows could
        # never be read back (GET /feedback/{id} cannot route a newline)
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("id holds a control character (a line break, a tab, ...)")
    return v
