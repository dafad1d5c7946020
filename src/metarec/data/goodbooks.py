"""goodbooks-10k (Zygmunt Zając, CC BY-SA 4.0) and its subsets, including the bundled sample.

Layout: ``ratings.csv`` (or ``ratings_prefix.csv``) with ``user_id,book_id,rating`` in time
order (the upstream README says the file is sorted by time, there are no timestamps), and
``books.csv`` keyed by ``book_id``. When ``book_tags.csv`` + ``tags.csv`` are present
(goodbooks-biography), each book also gets its top shelf names as a text column.
"""

from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.raw import RawData, make_ratings_frame
from metarec.data.tabular import (
    id_column,
    number_column,
    optional_file,
    optional_number,
    read_delimited,
    require_columns,
    resolve_dir,
    unique_id_column,
)
from metarec.types import MetarecError

RATING_FILES = ("ratings.csv", "ratings_prefix.csv")
N_SHELVES = 10  # top shelves per book kept as text; more adds noise ("to-read", "owned")
# Goodreads shelves that say nothing about the book itself.
_GENERIC_SHELVES = frozenset(
    {"to-read", "currently-reading", "favorites", "favourites", "owned", "books-i-own",
     "owned-books", "default", "my-books", "my-library", "library", "kindle", "ebook",
     "ebooks", "to-buy", "wish-list", "wishlist", "i-own", "audiobook", "audiobooks"}
)  # fmt: skip


def bundled_sample_dir() -> Path:
    """Folder of the goodbooks-sample files shipped inside the package."""
    return Path(str(resources.files("metarec.data") / "bundled" / "goodbooks-sample"))


def _top_shelves(folder: Path, books: pd.DataFrame, name: str) -> pd.Series | None:
    """Per book_id: its N_SHELVES most-used non-generic shelf names, comma-separated."""
    bt_path = optional_file(folder, "book_tags.csv", name, whole_lines=False)
    tags_path = optional_file(folder, "tags.csv", name, whole_lines=False)
    if bt_path is None or tags_path is None:
        if bt_path is not None:
            # the shelves assigned, their names missing: the release ships tags.csv with
            # book_tags.csv (the samples hold tags.csv alone, or neither: no shelves)
            warnings.warn(
                f"{name}: tags.csv is missing from {str(folder)!r}: the books load "
                "without their 'shelves' text",
                stacklevel=3,
            )
        return None
    if "goodreads_book_id" not in books.columns:
        return None
    bt = read_delimited(bt_path, ",")
    tags = read_delimited(tags_path, ",")
    require_columns(bt, ["goodreads_book_id", "tag_id", "count"])
    require_columns(tags, ["tag_id", "tag_name"])
    name_of = dict(zip(tags["tag_id"], tags["tag_name"], strict=True))
    # a count that is not a number is refused with its line (it had been dropped)
    bt = bt.assign(tag=bt["tag_id"].map(name_of), count=number_column(bt, "count"))
    bt = bt.dropna(subset=["tag"])  # a tag id tags.csv does not name: no shelf to show
    bt = bt[~bt["tag"].isin(_GENERIC_SHELVES)]
    # Highest count first; ties by tag name so the text is reproducible.
    bt = bt.sort_values(["goodreads_book_id", "count", "tag"], ascending=[True, False, True])
    top = bt.groupby("goodreads_book_id", sort=False)["tag"].agg(
        lambda s: ", ".join(s.iloc[:N_SHELVES])
    )
    by_book = books["goodreads_book_id"].map(top)
    return pd.Series(by_book.fillna("").to_numpy(object), index=books.index)


def read_goodbooks(path: str | os.PathLike | None = None, *, name: str = "goodbooks") -> RawData:
    """Ratings 1-5 in log order (``has_time=False``) and the books as item side data.

    Items: text ``title``, ``original_title``, ``authors`` (and ``shelves`` when the folder
    has book_tags.csv); numeric ``year`` (original publication year); categorical
    ``language_code``.
    """
    folder = resolve_dir(path, "goodbooks-10k" if name == "goodbooks" else name, name)
    # goodbooks files are quoted CSV and need not end with a newline (the bundled
    # prefix does not): checked for compression only
    rfile = next(
        (p for f in RATING_FILES if (p := optional_file(folder, f, name, whole_lines=False))),
        None,
    )
    if rfile is None:
        raise MetarecError(
            f"{name}: no ratings file in {str(folder)!r} (expected one of {', '.join(RATING_FILES)})"
        )
    r = read_delimited(rfile, ",")
    require_columns(r, ["user_id", "book_id", "rating"])
    rating = number_column(r, "rating")
    off = (rating < 1) | (rating > 5)
    if off.any():
        pos = int(np.flatnonzero(off)[0])
        raise MetarecError(f"{rfile}: line {pos + 2}: rating {rating[pos]:g} is outside 1..5")
    ratings = make_ratings_frame(id_column(r, "user_id"), id_column(r, "book_id"), rating)

    items = None
    text_cols: tuple[str, ...] = ()
    books = optional_file(folder, "books.csv", name, whole_lines=False)
    if books is None:
        # the ratings alone still load (popularity, MF, EASE need nothing else), but every
        # text model then runs on empty texts: said, not silent
        warnings.warn(
            f"{name}: books.csv is missing from {str(folder)!r}: the books load without "
            "titles, authors or any other text or side column",
            stacklevel=2,
        )
    else:
        b = read_delimited(books, ",")
        require_columns(b, ["book_id", "title"])
        items = pd.DataFrame(
            {"item_id": unique_id_column(b, "book_id", str(books)).to_numpy(object)}
        )
        for col in ("title", "original_title", "authors"):
            if col in b.columns:
                items[col] = b[col].fillna("").astype(str).to_numpy(object)
                text_cols += (col,)
        shelves = _top_shelves(folder, b, name)
        if shelves is not None:
            items["shelves"] = shelves.to_numpy(object)
            text_cols += ("shelves",)
        year = b["original_publication_year"] if "original_publication_year" in b else None
        items["year"] = optional_number(year) if year is not None else np.nan
        lang = b["language_code"] if "language_code" in b else pd.Series([pd.NA] * len(b))
        items["language_code"] = lang.to_numpy(object)
    return RawData(
        name=name,
        ratings=ratings,
        feedback="explicit",
        rating_range=(1.0, 5.0),
        has_time=False,
        items=items,
        item_text_columns=text_cols,
        item_categorical_columns=("language_code",) if items is not None else (),
        item_numeric_columns=("year",) if items is not None else (),
        source=str(folder),
    )


def read_goodbooks_sample(path: str | os.PathLike | None = None) -> RawData:
    """The bundled sample (first 49,886 ratings of goodbooks-10k); no path, no network."""
    return read_goodbooks(bundled_sample_dir() if path is None else path, name="goodbooks-sample")


def read_goodbooks_biography(path: str | os.PathLike | None = None) -> RawData:
    return read_goodbooks(path, name="goodbooks-biography")
