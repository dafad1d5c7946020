"""RawData: what a loader returns, before cleaning and re-indexing.

Loaders only parse files. They hand back pandas frames with raw string ids and a fixed
column layout, so preprocessing (``metarec.preprocess``) and re-indexing
(:func:`build_dataset`) are written once for every source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from metarec.types import Dataset, Feedback, IdMap, Interactions, MetarecError, SideTable

# Column layout of RawData.ratings. ``domain`` is always present ("default" when the
# source has one domain); ``timestamp`` is unix seconds or, when has_time is False, the
# row's position in the source log.
RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "domain")


@dataclass(frozen=True, eq=False)
class RawData:
    name: str
    ratings: pd.DataFrame  # columns RATING_COLUMNS; ids as str
    feedback: Feedback
    rating_range: tuple[float, float]
    has_time: bool
    items: pd.DataFrame | None = None  # column item_id (str) + side columns; whole catalogue
    users: pd.DataFrame | None = None  # column user_id (str) + side columns
    item_text_columns: tuple[str, ...] = ()
    item_categorical_columns: tuple[str, ...] = ()
    item_numeric_columns: tuple[str, ...] = ()
    user_text_columns: tuple[str, ...] = ()
    user_categorical_columns: tuple[str, ...] = ()
    user_numeric_columns: tuple[str, ...] = ()
    source: str = ""  # where it was read from (path), for reports

    def __post_init__(self) -> None:
        missing = [c for c in RATING_COLUMNS if c not in self.ratings.columns]
        if missing:
            raise MetarecError(f"{self.name}: ratings lack column(s) {', '.join(missing)}")
        for frame, key in ((self.items, "item_id"), (self.users, "user_id")):
            if frame is not None and key not in frame.columns:
                raise MetarecError(f"{self.name}: side table lacks column {key!r}")

    def with_ratings(self, ratings: pd.DataFrame) -> RawData:
        return replace(self, ratings=ratings)


def _id_strings(values, name: str) -> np.ndarray:
    """(n,) object array of ids as str. Float ids are spelled as every reader spells them
    (a whole 19.0 is "19", :func:`metarec.data.tabular.id_column`): astype(str) made
    "19.0", and a model fitted in Python could not score its own training frame."""
    s = pd.Series(values)
    if pd.api.types.is_float_dtype(s) or s.dtype == object:
        # a float column, or a Python column mixing 7 and 100.0 ("100.0" here, "100" in
        # every reader)
        from metarec.data.tabular import id_column

        return id_column(pd.DataFrame({name: s}), name).to_numpy(dtype=object)
    return s.astype(str).to_numpy(dtype=object)


def make_ratings_frame(
    user_id,
    item_id,
    rating,
    timestamp=None,
    domain=None,
) -> pd.DataFrame:
    """Normalise parsed columns into the RawData.ratings layout (ids as str)."""
    n = len(user_id)
    frame = pd.DataFrame(
        {
            "user_id": _id_strings(user_id, "user_id"),
            "item_id": _id_strings(item_id, "item_id"),
            "rating": pd.to_numeric(pd.Series(rating), errors="coerce").to_numpy(np.float64),
            "timestamp": np.arange(n, dtype=np.int64)
            if timestamp is None
            else pd.Series(timestamp).to_numpy(),
            "domain": "default"
            if domain is None
            else pd.Series(domain).astype(str).to_numpy(object),
        }
    )
    return frame


def _side_table(
    name: str,
    frame: pd.DataFrame | None,
    key: str,
    ids: IdMap,
    text: tuple[str, ...],
    categorical: tuple[str, ...],
    numeric: tuple[str, ...],
) -> SideTable | None:
    if frame is None:
        return None
    f = frame.copy()
    f[key] = f[key].astype(str)
    dup = f[key].duplicated()
    if dup.any():
        # each reader refuses a repeat with its file and line; this is the backstop for
        # any other RawData (a repeat had kept its last row, replacing the first's text)
        raise MetarecError(
            f"{name}: {key} {f[key][dup].iloc[0]!r} has two rows in the dataset's "
            f"{key.removesuffix('_id')} table (each id needs one)"
        )
    f = f.set_index(key)
    # Row i describes index i; ids absent from the side file get missing values.
    f = f.reindex(pd.Index(ids.ids.tolist(), name=key)).reset_index(drop=True)
    keep = [c for c in (*text, *categorical, *numeric) if c in f.columns]
    return SideTable(
        ids=ids,
        frame=f[keep],
        text_columns=tuple(c for c in text if c in f.columns),
        categorical_columns=tuple(c for c in categorical if c in f.columns),
        numeric_columns=tuple(c for c in numeric if c in f.columns),
    )


def build_dataset(raw: RawData, report: tuple[dict, ...] = ()) -> Dataset:
    """Re-index raw ids to contiguous indices and freeze the result.

    Users are indexed in order of first appearance in the (time-sorted) log. Items are the
    union of the catalogue (``raw.items``, in file order) and any rated item not in it, so a
    catalogue item nobody rated still has an index (it is what item cold-start recommends).
    """
    r = raw.ratings
    if len(r) == 0:
        raise MetarecError(f"{raw.name}: no interactions left to build a dataset from")
    r = r.sort_values("timestamp", kind="stable")
    users = IdMap.from_values(r["user_id"])
    if raw.users is not None:
        extra = [u for u in pd.unique(raw.users["user_id"].astype(str)) if u not in users]
        users = IdMap(np.concatenate([users.ids, np.asarray(extra, dtype=object)]))
    if raw.items is not None:
        catalogue = pd.unique(raw.items["item_id"].astype(str))
        rated_extra = pd.Index(pd.unique(r["item_id"])).difference(pd.Index(catalogue), sort=False)
        items = IdMap(
            np.concatenate([np.asarray(catalogue, object), np.asarray(rated_extra, object)])
        )
    else:
        items = IdMap.from_values(r["item_id"])
    domains = tuple(pd.unique(r["domain"].astype(str)).tolist())
    dom_index = {d: i for i, d in enumerate(domains)}
    inter = Interactions(
        user_idx=users.indices(r["user_id"].to_numpy(), "user_id"),
        item_idx=items.indices(r["item_id"].to_numpy(), "item_id"),
        rating=r["rating"].to_numpy(np.float32),
        timestamp=r["timestamp"].to_numpy(np.int64),
        domain=r["domain"].map(dom_index).to_numpy(np.int16),
    )
    return Dataset(
        name=raw.name,
        interactions=inter,
        users=users,
        items=items,
        feedback=raw.feedback,
        rating_range=raw.rating_range,
        has_time=raw.has_time,
        domains=domains,
        item_table=_side_table(
            raw.name,
            raw.items,
            "item_id",
            items,
            raw.item_text_columns,
            raw.item_categorical_columns,
            raw.item_numeric_columns,
        ),
        user_table=_side_table(
            raw.name,
            raw.users,
            "user_id",
            users,
            raw.user_text_columns,
            raw.user_categorical_columns,
            raw.user_numeric_columns,
        ),
        report=tuple(report),
    )
