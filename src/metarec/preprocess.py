"""Cleaning a RawData before re-indexing (the design's step 1).

Every step is a pure function ``step(raw, config) -> (RawData, report)``: it never mutates its
input, and its report is a JSON-ready dict that names the step, counts rating rows before and
after, and counts what it removed or changed. :func:`preprocess` runs the steps in this fixed
order (the order matters; reasons in brackets):

1. ``missing_ids``     drop rating rows whose user id, item id or rating is missing
                       [nothing below can use such a row].
2. ``timestamps``      drop rows whose timestamp is not a finite number (a negative one,
                       before 1970, is kept and counted).
3. ``rating_range``    drop rows whose rating lies outside ``raw.rating_range``.
4. ``dedupe``          keep the last event (by time; ties: later in the log) per
                       (user, item, domain) [after 2: needs valid times].
5. ``side_missing``    missing side values: keep, fill (mean/median/mode) or drop the entity
                       (its side row and its interactions) [before k-core so the core is
                       computed on what survives].
6. ``unknown_items``   drop interactions whose item is not in the catalogue (opt-in).
7. ``straight_liners`` drop users with >= N ratings that are all equal (opt-in, explicit only).
8. ``k_core``          iteratively drop users/items with too few interactions (opt-in).
9. ``normalize``       z-score or min-max the numeric side columns (opt-in; fit on the
                       cleaned side tables, stats reported).
10. ``binarize``       rating >= t -> 1 else 0; feedback becomes implicit (opt-in, last so
                       the filters above still see the explicit scale).

Re-indexing is :func:`metarec.data.raw.build_dataset`; :func:`prepare` runs both. The default
config only removes malformed rows and exact-key duplicates, so clean data (MovieLens-100K)
comes through unchanged.

Entities removed *by a filter* (5 with ``drop``, 7, 8) are also removed from the side tables,
so they do not come back as unrated catalogue items; rows removed as malformed (1-4, 6) leave
the catalogue alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from metarec.config import coerce_fields, from_dict
from metarec.data.raw import RawData, build_dataset
from metarec.metrics import is_relevant
from metarec.types import Dataset, MetarecError

FILL_STRATEGIES = ("keep", "drop", "mean", "median", "mode")
NORMALIZERS = ("none", "zscore", "minmax")


@dataclass(frozen=True)
class PreprocessConfig:
    """What :func:`preprocess` does. Defaults leave clean data untouched."""

    dedupe: bool = True  # keep the last event per (user, item, domain)
    drop_bad_timestamps: bool = True  # non-numeric timestamps (a negative one is pre-1970)
    drop_out_of_range: bool = True  # ratings outside raw.rating_range
    # Missing side values, by column role; ``missing_columns`` overrides single columns.
    missing_numeric: str = "keep"
    missing_categorical: str = "keep"
    missing_text: str = "keep"  # only keep/drop/mode make sense for text
    missing_columns: tuple[tuple[str, str], ...] = ()  # ((column, strategy), ...)
    drop_unknown_items: bool = False  # needs raw.items (the catalogue)
    straight_liner_min_ratings: int = 0  # 0 = off; else drop users with >= N equal ratings
    user_min_count: int = 0  # k-core: 0 or 1 = off
    item_min_count: int = 0
    normalize: str = "none"  # none | zscore | minmax, for numeric side columns
    binarize_threshold: float | None = None  # None = keep the explicit ratings

    def __post_init__(self) -> None:
        cols = self.missing_columns
        if isinstance(cols, Mapping):  # {column: strategy}, as a TOML table gives it
            object.__setattr__(self, "missing_columns", tuple(cols.items()))
        coerce_fields(self)  # built directly too, as from_dict builds it
        cols = self.missing_columns
        for name, strategy in (
            ("missing_numeric", self.missing_numeric),
            ("missing_categorical", self.missing_categorical),
            ("missing_text", self.missing_text),
            *((f"missing_columns[{c!r}]", s) for c, s in cols),
        ):
            if strategy not in FILL_STRATEGIES:
                raise MetarecError(
                    f"preprocess: {name}={strategy!r}; expected one of {', '.join(FILL_STRATEGIES)}"
                )
        if self.missing_text in ("mean", "median"):
            raise MetarecError(
                f"preprocess: missing_text={self.missing_text!r} is not defined for text"
            )
        if self.normalize not in NORMALIZERS:
            raise MetarecError(
                f"preprocess: normalize={self.normalize!r}; expected one of {', '.join(NORMALIZERS)}"
            )
        for name in ("straight_liner_min_ratings", "user_min_count", "item_min_count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise MetarecError(f"preprocess: {name} must be an integer >= 0, got {v!r}")
        if self.straight_liner_min_ratings == 1:
            raise MetarecError("preprocess: straight_liner_min_ratings=1 would drop every user")

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "data.preprocess") -> PreprocessConfig:
        """Build from a plain mapping (an experiment's ``[data.preprocess]`` table) as every
        config is built (:func:`metarec.config.from_dict`: unknown keys raise, "none" unsets
        an optional value, a number or boolean written as text reads as one);
        ``missing_columns`` may be a ``{column: strategy}`` table. Its own parser had
        refused ``binarize_threshold = "none"``, which the README gives for unsetting."""
        data = dict(d) if isinstance(d, Mapping) else d
        if isinstance(data, dict) and isinstance(data.get("missing_columns"), Mapping):
            data["missing_columns"] = [[c, s] for c, s in data["missing_columns"].items()]
        return from_dict(cls, data, where)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["missing_columns"] = dict(self.missing_columns)
        return d


Report = dict
Step = Callable[[RawData, PreprocessConfig], tuple[RawData, Report]]


def _report(step: str, before: RawData, after: RawData, enabled: bool = True, **counts) -> Report:
    # Plain ints/floats/str only: reports are written to JSON as they are.
    return {
        "step": step,
        "enabled": bool(enabled),
        "rows_before": int(len(before.ratings)),
        "rows_after": int(len(after.ratings)),
        **counts,
    }


def _is_missing_id(s: pd.Series) -> pd.Series:
    """True where an id is missing: NA, or a blank string."""
    return s.isna() | (s.astype(str).str.strip() == "")


def _drop_entities(raw: RawData, users: pd.Index, items: pd.Index) -> tuple[RawData, int, int]:
    """Remove users/items everywhere: their interactions and their side-table rows.

    Returns the new raw and how many side rows (users, items) went.
    """
    r = raw.ratings
    keep = ~(r["user_id"].isin(users) | r["item_id"].isin(items))
    out = raw.with_ratings(r[keep])
    n_user_rows = n_item_rows = 0
    if raw.users is not None and len(users):
        m = raw.users["user_id"].astype(str).isin(users)
        n_user_rows = int(m.sum())
        out = replace(out, users=raw.users[~m])
    if raw.items is not None and len(items):
        m = raw.items["item_id"].astype(str).isin(items)
        n_item_rows = int(m.sum())
        out = replace(out, items=raw.items[~m])
    return out, n_user_rows, n_item_rows


# --- 1-4: malformed rows and duplicates ----------------------------------------------------


def drop_missing_ids(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Drop rating rows with a missing user id, item id or rating (always on)."""
    r = raw.ratings
    bad_user = _is_missing_id(r["user_id"])
    bad_item = _is_missing_id(r["item_id"])
    bad_rating = pd.to_numeric(r["rating"], errors="coerce").isna()
    out = raw.with_ratings(r[~(bad_user | bad_item | bad_rating)])
    return out, _report(
        "missing_ids",
        raw,
        out,
        missing_user_id=int(bad_user.sum()),
        missing_item_id=int(bad_item.sum()),
        missing_rating=int(bad_rating.sum()),
    )


def drop_bad_timestamps(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Drop rows whose timestamp is not a finite number; cast to int64.

    A negative timestamp is a date before 1970 and is kept (counted as ``before_1970``):
    dropping them removed every rating of a log's early users without a word, and a log
    dated wholly before 1970 ended in "preprocessing removed every interaction"."""
    r = raw.ratings
    if pd.api.types.is_datetime64_any_dtype(r["timestamp"]):
        # Loaders convert to unix seconds; nanoseconds would pass as numbers, silently wrong.
        raise MetarecError(
            f"{raw.name}: ratings column 'timestamp' holds datetimes, not unix seconds"
        )
    ts = pd.to_numeric(r["timestamp"], errors="coerce").astype("float64")
    not_number = ~np.isfinite(ts.to_numpy())
    negative = ts.to_numpy() < 0
    if not config.drop_bad_timestamps:
        if not_number.any():
            # Cannot build a dataset from them; refuse rather than guess an order.
            i = int(np.flatnonzero(not_number)[0])
            raise MetarecError(
                f"{raw.name}: ratings row {i} has timestamp {r['timestamp'].iloc[i]!r} "
                "(set drop_bad_timestamps=true to drop such rows)"
            )
        return raw, _report(
            "timestamps", raw, raw, enabled=False, not_a_number=0, before_1970=int(negative.sum())
        )
    keep = ~not_number
    kept = r[keep].copy()
    kept["timestamp"] = ts[keep].to_numpy().astype(np.int64)
    out = raw.with_ratings(kept)
    return out, _report(
        "timestamps",
        raw,
        out,
        not_a_number=int(not_number.sum()),
        before_1970=int(negative[keep].sum()),
    )


def drop_out_of_range(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Drop ratings outside the declared ``raw.rating_range`` (inclusive)."""
    lo, hi = raw.rating_range
    rating = pd.to_numeric(raw.ratings["rating"], errors="coerce")
    below, above = rating < lo, rating > hi
    if not config.drop_out_of_range:
        return raw, _report(
            "rating_range", raw, raw, enabled=False, below=int(below.sum()), above=int(above.sum())
        )
    out = raw.with_ratings(raw.ratings[~(below | above)])
    return out, _report(
        "rating_range",
        raw,
        out,
        range=[float(lo), float(hi)],
        below=int(below.sum()),
        above=int(above.sum()),
    )


def dedupe(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Keep the latest event per (user, item, domain); ties go to the later log row."""
    r = raw.ratings
    if not config.dedupe:
        # counted though kept: a hard-coded 0 read as "there are none" (probe 165)
        n_dup = int(r.duplicated(["user_id", "item_id", "domain"]).sum())
        return raw, _report("dedupe", raw, raw, enabled=False, duplicates=n_dup)
    # Positions, not index labels (a loader's index need not be unique): stable-sort by
    # time, flag all but the last of each key, and keep the survivors in log order.
    order = np.argsort(r["timestamp"].to_numpy(), kind="stable")
    dup = r.iloc[order].duplicated(["user_id", "item_id", "domain"], keep="last").to_numpy()
    drop = np.zeros(len(r), dtype=bool)
    drop[order[dup]] = True
    kept = r[~drop]
    out = raw.with_ratings(kept)
    return out, _report("dedupe", raw, out, duplicates=int(len(r) - len(kept)))


# --- 5: missing side values ----------------------------------------------------------------


def _column_strategies(
    config: PreprocessConfig, text: tuple, categorical: tuple, numeric: tuple
) -> dict[str, str]:
    out = {c: config.missing_text for c in text}
    out.update({c: config.missing_categorical for c in categorical})
    out.update({c: config.missing_numeric for c in numeric})
    out.update({c: s for c, s in config.missing_columns if c in out})
    return out


def _fill_side(
    frame: pd.DataFrame,
    key: str,
    strategies: dict[str, str],
    numeric: tuple,
    table: str,
    text: tuple = (),
) -> tuple[pd.DataFrame, pd.Index, dict]:
    """Fill or flag missing values of one side table.

    Returns the filled frame, the ids to drop (strategy ``drop``) and per-column counts.
    """
    frame = frame.copy()
    drop_mask = np.zeros(len(frame), dtype=bool)
    counts: dict = {}
    for col, strategy in strategies.items():
        miss = frame[col].isna().to_numpy().copy()
        if col in text:
            # loaders read an empty text cell as "": counted as present, missing_text
            # (and missing_columns of a text column) did nothing to a file (probe 165)
            miss |= (frame[col].astype(str).str.strip() == "").to_numpy()
        n = int(miss.sum())
        counts[col] = {"strategy": strategy, "missing": n}
        if strategy == "keep" or n == 0:
            continue
        if strategy == "drop":
            drop_mask |= miss
            continue
        if strategy in ("mean", "median"):
            if col not in numeric:
                raise MetarecError(
                    f"preprocess: {table} column {col!r} is not numeric; cannot {strategy}-fill it"
                )
            values = pd.to_numeric(frame[col], errors="coerce")
            value = values.mean() if strategy == "mean" else values.median()
        else:  # mode; ties go to the smallest value so the fill is deterministic
            modes = frame.loc[~miss, col].dropna().mode()
            value = modes.iloc[0] if len(modes) else np.nan
        if pd.isna(value):
            raise MetarecError(
                f"preprocess: {table} column {col!r} is entirely missing; cannot {strategy}-fill it"
            )
        frame.loc[miss, col] = value
        counts[col]["filled"] = n
        counts[col]["value"] = value.item() if hasattr(value, "item") else value
    ids = pd.Index(frame.loc[drop_mask, key].astype(str).unique())
    return frame, ids, counts


def fill_missing(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Missing side values: keep, fill (mean/median/mode) or drop the entity entirely."""
    out = raw
    details: dict = {}
    drop_users = drop_items = pd.Index([])
    for table, key, text, cat, num in (
        (
            "items",
            "item_id",
            raw.item_text_columns,
            raw.item_categorical_columns,
            raw.item_numeric_columns,
        ),
        (
            "users",
            "user_id",
            raw.user_text_columns,
            raw.user_categorical_columns,
            raw.user_numeric_columns,
        ),
    ):
        frame = getattr(raw, table)
        if frame is None:
            continue
        cols = tuple(c for c in (*text, *cat, *num) if c in frame.columns)
        strategies = _column_strategies(
            config, *(tuple(c for c in g if c in cols) for g in (text, cat, num))
        )
        filled, ids, counts = _fill_side(frame, key, strategies, num, table, text)
        out = replace(out, **{table: filled})
        details[table] = counts
        if table == "items":
            drop_items = ids
        else:
            drop_users = ids
    # a column override naming no side column (a typo) had been dropped without a word
    known = {c for t in details.values() for c in t}
    stray = [c for c, _ in config.missing_columns if c not in known]
    if stray:
        raise MetarecError(
            f"preprocess: missing_columns names {stray[0]!r}, which is no side column "
            f"(the side columns: {', '.join(sorted(map(str, known))) or 'none'})"
        )
    enabled = any(
        s != "keep" for t in details.values() for s in (c["strategy"] for c in t.values())
    )
    out, n_user_rows, n_item_rows = _drop_entities(out, drop_users, drop_items)
    # and what those drops empty, as the other filters do: an item rated only by a dropped
    # user stayed an unrated catalogue item (review 169)
    emptied_u = _vanished(raw.ratings, out.ratings, "user_id").difference(drop_users)
    emptied_i = _vanished(raw.ratings, out.ratings, "item_id").difference(drop_items)
    if len(emptied_u) or len(emptied_i):
        out, _, _ = _drop_entities(out, emptied_u, emptied_i)
        drop_users, drop_items = drop_users.append(emptied_u), drop_items.append(emptied_i)
    return out, _report(
        "side_missing",
        raw,
        out,
        enabled=enabled,
        dropped_users=int(len(drop_users)),
        dropped_items=int(len(drop_items)),
        dropped_user_rows=n_user_rows,
        dropped_item_rows=n_item_rows,
        columns=details,
    )


# --- 6-8: filters --------------------------------------------------------------------------


def drop_unknown_items(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Drop interactions whose item is not in the catalogue ``raw.items``."""
    if not config.drop_unknown_items:
        return raw, _report("unknown_items", raw, raw, enabled=False, unknown_items=0)
    if raw.items is None:
        raise MetarecError(
            f"{raw.name}: drop_unknown_items needs an item catalogue, and there is none"
        )
    known = raw.ratings["item_id"].isin(raw.items["item_id"].astype(str))
    out = raw.with_ratings(raw.ratings[known])
    n_unknown = int(raw.ratings.loc[~known, "item_id"].nunique())
    return out, _report("unknown_items", raw, out, unknown_items=n_unknown)


def drop_straight_liners(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Drop users with at least N ratings that are all the same value (zero variance)."""
    n_min = config.straight_liner_min_ratings
    if n_min == 0:
        return raw, _report("straight_liners", raw, raw, enabled=False, dropped_users=0)
    if raw.feedback != "explicit":
        raise MetarecError(
            f"{raw.name}: straight_liner_min_ratings needs explicit ratings; this data is implicit"
        )
    g = raw.ratings.groupby("user_id", sort=False)["rating"]
    stats = pd.DataFrame({"n": g.size(), "distinct": g.nunique()})
    users = pd.Index(stats.index[(stats["n"] >= n_min) & (stats["distinct"] == 1)].astype(str))
    r = raw.ratings
    kept = r[~r["user_id"].astype(str).isin(users)]
    # items rated only by the dropped users go too, as k_core's do
    items = _vanished(r, kept, "item_id")
    out, n_user_rows, n_item_rows = _drop_entities(raw, users, items)
    return out, _report(
        "straight_liners",
        raw,
        out,
        min_ratings=n_min,
        dropped_users=int(len(users)),
        dropped_items=int(len(items)),
        dropped_user_rows=n_user_rows,
        dropped_item_rows=n_item_rows,
    )


def _vanished(before: pd.DataFrame, after: pd.DataFrame, key: str) -> pd.Index:
    """The ``key`` ids (users or items) with rating rows in ``before`` and none in
    ``after``: a filter removed them, and they leave the side tables with their rows."""
    had = pd.Index(before[key].astype(str).unique())
    return had.difference(pd.Index(after[key].astype(str).unique()), sort=False)


def k_core(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Iteratively drop users with < user_min_count and items with < item_min_count rows.

    Repeats until both hold for every remaining user and item (removing an item can push
    a user below the threshold and the other way round).
    """
    u_min, i_min = config.user_min_count, config.item_min_count
    if u_min <= 1 and i_min <= 1:
        return raw, _report("k_core", raw, raw, enabled=False, dropped_users=0, dropped_items=0)
    r = raw.ratings
    dropped_users: list = []
    dropped_items: list = []
    iterations = 0
    while True:
        iterations += 1
        uc = r["user_id"].value_counts()
        ic = r["item_id"].value_counts()
        bad_u = uc.index[uc < u_min]
        bad_i = ic.index[ic < i_min]
        if len(bad_u) == 0 and len(bad_i) == 0:
            break
        dropped_users.extend(bad_u.tolist())
        dropped_items.extend(bad_i.tolist())
        r = r[~(r["user_id"].isin(bad_u) | r["item_id"].isin(bad_i))]
    # every user and item whose rows all went, the thresholds' own and those emptied by
    # the other side's removals: only the first were counted and dropped, and an item
    # rated only by dropped users stayed as an unrated catalogue item (probe 165:
    # goodbooks-biography's 20-core kept 2 such books in the full ranking)
    users, items = _vanished(raw.ratings, r, "user_id"), _vanished(raw.ratings, r, "item_id")
    out, n_user_rows, n_item_rows = _drop_entities(raw.with_ratings(r), users, items)
    return out, _report(
        "k_core",
        raw,
        out,
        user_min_count=u_min,
        item_min_count=i_min,
        iterations=iterations,
        dropped_users=int(len(users)),
        dropped_items=int(len(items)),
        dropped_user_rows=n_user_rows,
        dropped_item_rows=n_item_rows,
    )


# --- 9-10: transforms ----------------------------------------------------------------------


def normalize(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """Z-score or min-max the numeric side columns; missing values stay missing.

    A constant column maps to 0 (its std or range is 0, so there is nothing to scale by).
    """
    if config.normalize == "none":
        return raw, _report("normalize", raw, raw, enabled=False, stats={})
    out = raw
    stats: dict = {}
    for table, numeric in (
        ("items", raw.item_numeric_columns),
        ("users", raw.user_numeric_columns),
    ):
        frame = getattr(raw, table)
        if frame is None:
            continue
        frame = frame.copy()
        for col in (c for c in numeric if c in frame.columns):
            x = pd.to_numeric(frame[col], errors="coerce").astype("float64")
            if config.normalize == "zscore":
                center, scale = float(x.mean()), float(x.std(ddof=0))
                stats[f"{table}.{col}"] = {"mean": center, "std": scale}
            else:
                center, scale = float(x.min()), float(x.max() - x.min())
                stats[f"{table}.{col}"] = {"min": center, "max": center + scale}
            frame[col] = (x - center) / scale if scale > 0 else x * 0.0
        out = replace(out, **{table: frame})
    return out, _report("normalize", raw, out, method=config.normalize, stats=stats)


def binarize(raw: RawData, config: PreprocessConfig) -> tuple[RawData, Report]:
    """rating >= threshold -> 1, else 0; the data becomes implicit with range (0, 1)."""
    t = config.binarize_threshold
    if t is None:
        return raw, _report("binarize", raw, raw, enabled=False, positives=0, negatives=0)
    if raw.feedback != "explicit":
        raise MetarecError(
            f"{raw.name}: binarize_threshold is set but the data is already implicit"
        )
    lo, hi = (float(v) for v in raw.rating_range)
    if not lo < float(t) <= hi:
        # 0.5 on a 1-5 log made every row a positive without a word, 10 every row a
        # negative, said as "every label is 0" of labels nobody gave (probe 165)
        every = "positive" if float(t) <= lo else "negative"
        raise MetarecError(
            f"{raw.name}: binarize_threshold {t:g} is outside the rating scale "
            f"{lo:g}..{hi:g} (a rating >= it is a positive): every row would be {every}"
        )
    r = raw.ratings.copy()
    # in float32, as the ratings are held and every like and relevance is judged
    pos = pd.Series(is_relevant(pd.to_numeric(r["rating"]).to_numpy(np.float64), t), index=r.index)
    if len(pos) and (pos.all() or not pos.any()):
        # inside the declared scale, the ratings left may still sit on one side of it
        # (review 169): the error named labels, not the threshold that made them
        every = "positive" if pos.all() else "negative"
        raise MetarecError(
            f"{raw.name}: binarize_threshold {t:g} makes every rating a {every} (the "
            f"ratings left run {r['rating'].min():g}..{r['rating'].max():g})"
        )
    r["rating"] = pos.astype(np.float64)
    out = replace(raw, ratings=r, feedback="implicit", rating_range=(0.0, 1.0))
    return out, _report(
        "binarize",
        raw,
        out,
        threshold=float(t),
        positives=int(pos.sum()),
        negatives=int((~pos).sum()),
    )


STEPS: tuple[tuple[str, Step], ...] = (
    ("missing_ids", drop_missing_ids),
    ("timestamps", drop_bad_timestamps),
    ("rating_range", drop_out_of_range),
    ("dedupe", dedupe),
    ("side_missing", fill_missing),
    ("unknown_items", drop_unknown_items),
    ("straight_liners", drop_straight_liners),
    ("k_core", k_core),
    ("normalize", normalize),
    ("binarize", binarize),
)


def removed_counts(reports) -> list[tuple[str, int]]:
    """(step, rating rows it removed) for each step of ``reports`` that removed any (the
    re-index step only renumbers): what fit, evaluate, split and the report say."""
    out = []
    for step in reports:
        if not isinstance(step, dict) or step.get("step") == "reindex":
            continue
        gone = step.get("rows_before", 0) - step.get("rows_after", 0)
        if gone > 0:
            out.append((step["step"], gone))
    return out


def removed_rows(reports, source: object) -> list[str]:
    """One line per step of ``reports`` that removed rating rows of ``source`` (a file or
    dataset name): what `metarec fit`, `evaluate` and `split` say, so that counts which
    shrank are explained."""
    first = next((r for r in reports if isinstance(r, dict)), {})
    total = first.get("rows_before", 0)
    return [
        f"{gone} of {total} rows of {source} removed by preprocessing step {step!r}"
        + (" (a repeated user-item row keeps its newest)" if step == "dedupe" else "")
        for step, gone in removed_counts(reports)
    ]


def preprocess(
    raw: RawData, config: PreprocessConfig | None = None
) -> tuple[RawData, list[Report]]:
    """Run every step of :data:`STEPS` in order; returns the cleaned raw and one report each."""
    config = PreprocessConfig() if config is None else config
    reports: list[Report] = []
    for name, step in STEPS:
        had = len(raw.ratings)
        raw, rep = step(raw, config)
        reports.append(rep)
        if had and not len(raw.ratings):
            # said here, with the step and its settings: the step reports it pointed to
            # were never written, the run having stopped (probe 165)
            settings = {
                k: v for k, v in rep.items() if k.endswith(("_count", "_ratings", "threshold"))
            }
            shown = ", ".join(f"{k}={v}" for k, v in settings.items())
            raise MetarecError(
                f"{raw.name}: preprocessing step {name!r} removed every interaction "
                f"({had} rows before it{'; ' + shown if shown else ''})"
            )
    if len(raw.ratings) == 0:
        raise MetarecError(f"{raw.name}: the log holds no interaction")
    return raw, reports


def prepare(raw: RawData, config: PreprocessConfig | None = None) -> Dataset:
    """preprocess + re-index: the Dataset every later step starts from, report attached."""
    clean, reports = preprocess(raw, config)
    ds = build_dataset(clean)
    reports.append(
        {
            "step": "reindex",
            "enabled": True,
            "rows_before": int(len(clean.ratings)),
            "rows_after": int(len(ds.interactions)),
            "users": ds.n_users,
            "items": ds.n_items,
            "domains": list(ds.domains),
        }
    )
    return replace(ds, report=tuple(reports))
