"""MovieLens 100K and 1M (GroupLens), parsed from the files of the official zips.

Terms: research use only, no redistribution; load from a user-supplied folder
(or fetch the zip with :mod:`metarec.data.download`).
"""

from __future__ import annotations

import os
import re
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
    read_text,
    require_file,
    resolve_dir,
    unique_id_column,
)
from metarec.types import MetarecError

ML_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML_1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"

# u.genre of ml-100k, in flag order (used when u.genre is absent from the folder).
ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_YEAR = re.compile(r"\((\d{4})\)\s*$")  # "Toy Story (1995)" -> 1995


def title_year(titles: pd.Series) -> np.ndarray:
    """Release year parsed from a trailing "(YYYY)" in the title; NaN where there is none."""
    return optional_number(titles.str.extract(_YEAR, expand=False))


def _zip_prefix(zips: pd.Series) -> np.ndarray:
    # The first digit of a US zip code is a coarse region; non-US codes ("T8H1N") keep
    # their first character, which still separates them from the US ones.
    return zips.fillna("").astype(str).str.strip().str[:1].replace("", pd.NA).to_numpy(object)


def _rows(path, sep: str, encoding: str):
    """(line number, text) of each line the parser turns into a row; for error paths only.

    Lines end as the parser ends them (LF, CRLF or CR); a line of spaces and tabs is
    blank, unless it holds the separator (with tabs as separators it is a row of empty
    fields).
    """
    text = read_text(path, encoding)
    for lineno, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        if sep in line or line.strip(" \t"):
            yield lineno, line


def _row_line(path, pos: int, sep: str, encoding: str) -> int:
    """The line number of row ``pos`` (0-based) of a headerless file; for error paths."""
    for i, (lineno, _) in enumerate(_rows(path, sep, encoding)):
        if i == pos:
            return lineno
    return pos + 1


def _check_fields(frame: pd.DataFrame, sep: str, what: str, encoding: str = "utf-8") -> None:
    """Every row of ``frame`` had exactly ``len(frame.columns)`` ``sep``-separated fields.

    read_delimited's parser pads a row with too few fields with missing values, so a
    damaged line ("garbage", a cut-off last line) would become a record of empty fields.
    Rows with too many fields already raise there and ``quoting=False`` makes every
    separator a field boundary, so the file holds exactly (fields - 1) separators per row
    iff no row is short: one byte count over the file; the lines are only scanned, to
    name the culprit, when that count is off.
    """
    path = frame.attrs["source"]
    n = len(frame.columns)
    with open(path, "rb") as fh:
        if fh.read().count(sep.encode("ascii")) == (n - 1) * len(frame):
            return
    for lineno, line in _rows(path, sep, encoding):
        got = line.count(sep) + 1
        if got != n:
            raise MetarecError(
                f"{path}: line {lineno}: expected {n} {sep!r}-separated fields ({what}), got {got}"
            )
    # not reached for text read_delimited accepted; kept so a mismatch never passes
    raise MetarecError(f"{path}: rows do not all have {n} {sep!r}-separated fields ({what})")


def _read_genres(path) -> list[str]:
    """u.genre: ``name|index`` lines, indices 0, 1, 2, ... = the order of u.item's flags.

    Checked line by line because a damaged u.genre otherwise surfaces as a field-count
    error in u.item (u.item's columns are named from it), blaming the wrong file.
    """
    names: list[str] = []
    for lineno, line in enumerate(re.split(r"\r\n|\r|\n", read_text(path, "latin-1")), 1):
        if not line.strip():
            continue
        name, bar, index = line.rpartition("|")
        if not bar or not name.strip() or index.strip() != str(len(names)):
            raise MetarecError(
                f"{path}: line {lineno}: expected 'genre name|{len(names)}' (genres are "
                f"listed in flag order from 0), got {line[:60]!r}"
            )
        names.append(name)
    return names


def _first_row_fields(path, sep: str) -> tuple[int, int] | None:
    """(line number, field count) of a file's first non-blank line; None if it has none."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                return lineno, line.count(sep.encode("ascii")) + 1
    return None


def _ratings_frame(frame: pd.DataFrame) -> pd.DataFrame:
    rating = number_column(frame, "rating")
    off = (rating < 1) | (rating > 5)
    if off.any():
        pos = int(np.flatnonzero(off)[0])
        raise MetarecError(
            f"{frame.attrs['source']}: line {pos + 1}: rating {rating[pos]:g} is outside 1..5"
        )
    return make_ratings_frame(
        id_column(frame, "user_id"),
        id_column(frame, "item_id"),
        rating,
        number_column(frame, "timestamp", integer=True),
    )


def _check_info_count(folder: Path, n_ratings: int) -> None:
    """u.info's "100000 ratings" against the rows read: u.data cut at a line boundary
    (half the log) had loaded silently. A folder without u.info is not checked."""
    info = folder / "u.info"
    if not info.is_file():
        return
    m = re.search(r"^\s*(\d+)\s+ratings\s*$", info.read_text(errors="replace"), re.MULTILINE)
    if m and int(m.group(1)) != n_ratings:
        raise MetarecError(
            f"movielens-100k: {folder / 'u.data'} has {n_ratings} ratings but u.info says "
            f"{m.group(1)} (truncated or replaced file?)"
        )


def read_movielens_100k(path: str | os.PathLike | None = None) -> RawData:
    """ml-100k: u.data (ratings), u.item (titles, dates, 19 genre flags), u.user.

    Items: text ``title`` (with its year, as MovieLens spells it) and ``genres``
    ("Animation|Children's|Comedy"); numeric ``year`` from the title. Users: numeric
    ``age``; categorical ``gender``, ``occupation``, ``zip_prefix`` (first character).
    """
    folder = resolve_dir(path, "ml-100k", "movielens-100k")
    # MovieLens files quote nothing: quoting=False keeps one row per line, which
    # _check_fields' separator count relies on
    data = read_delimited(
        require_file(folder, "u.data", "movielens-100k"),
        "\t",
        names=["user_id", "item_id", "rating", "timestamp"],
        quoting=False,
    )
    _check_fields(data, "\t", "user id, item id, rating, timestamp")
    _check_info_count(folder, len(data))
    ratings = _ratings_frame(data)

    item_path = require_file(folder, "u.item", "movielens-100k")
    genre_names = list(ML_100K_GENRES)
    genre_path = optional_file(folder, "u.genre", "movielens-100k")
    if genre_path is not None:
        genre_names = _read_genres(genre_path)
        first = _first_row_fields(item_path, "|")
        # A u.genre cut at a line boundary is well-formed but too short. With the published
        # 19 genres a disagreeing u.item row is u.item's fault (_check_fields names it).
        if len(genre_names) != len(ML_100K_GENRES) and first and first[1] - 5 != len(genre_names):
            raise MetarecError(
                f"{genre_path}: lists {len(genre_names)} genre(s) but {item_path} line {first[0]} "
                f"has {first[1] - 5} genre flag columns (u.genre must name one genre per flag "
                "column, in order; is it truncated?)"
            )
    flag_cols = [f"g{i}" for i in range(len(genre_names))]
    items = read_delimited(
        item_path,
        "|",
        names=["item_id", "title", "release_date", "video_release_date", "imdb_url", *flag_cols],
        encoding="latin-1",  # 9 titles carry latin-1 accents, e.g. "Misérables, Les (1995)"
        quoting=False,
    )
    _check_fields(
        items,
        "|",
        f"id, title, release date, video release date, url, {len(flag_cols)} genre flags",
        encoding="latin-1",
    )
    flag_values = items[flag_cols]
    ok = flag_values.isin(["0", "1"]).to_numpy()
    if not ok.all():
        # a flag that is neither 0 nor 1 is a damaged row, not "no such genre"
        pos, col = (int(a[0]) for a in np.nonzero(~ok))
        raise MetarecError(
            f"{item_path}: line {_row_line(item_path, pos, '|', 'latin-1')}: genre flag {col + 1} ({genre_names[col]}) is "
            f"{flag_values.iat[pos, col]!r}, expected 0 or 1"
        )
    flags = flag_values.to_numpy() == "1"  # (n_items, 19) bool
    names = np.asarray(genre_names, dtype=object)
    genres = ["|".join(names[row]) for row in flags]
    title = items["title"].fillna("").astype(str)
    item_frame = pd.DataFrame(
        {
            "item_id": unique_id_column(items, "item_id", str(item_path)).to_numpy(object),
            "title": title.to_numpy(object),
            "genres": np.asarray(genres, dtype=object),
            "year": title_year(title),
        }
    )

    users = read_delimited(
        require_file(folder, "u.user", "movielens-100k"),
        "|",
        names=["user_id", "age", "gender", "occupation", "zip"],
        quoting=False,
    )
    _check_fields(users, "|", "user id, age, gender, occupation, zip code")
    user_frame = pd.DataFrame(
        {
            "user_id": unique_id_column(users, "user_id", str(folder / "u.user")).to_numpy(object),
            "age": optional_number(users["age"]),
            "gender": users["gender"].to_numpy(object),
            "occupation": users["occupation"].to_numpy(object),
            "zip_prefix": _zip_prefix(users["zip"]),
        }
    )
    return RawData(
        name="movielens-100k",
        ratings=ratings,
        feedback="explicit",
        rating_range=(1.0, 5.0),
        has_time=True,
        items=item_frame,
        users=user_frame,
        item_text_columns=("title", "genres"),
        item_numeric_columns=("year",),
        user_categorical_columns=("gender", "occupation", "zip_prefix"),
        user_numeric_columns=("age",),
        source=str(folder),
    )


def _split_double_colon(path, names: list[str], encoding: str) -> pd.DataFrame:
    """``a::b::c`` lines. Split by hand: titles contain single colons ("Star Wars: ...")."""
    text = read_text(path, encoding)
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != len(names):
            raise MetarecError(
                f"{path}: line {lineno}: expected {len(names)} '::'-separated fields, got {len(parts)}"
            )
        rows.append(parts)
    frame = pd.DataFrame(rows, columns=names, dtype=object)
    frame.attrs["source"] = str(path)
    frame.attrs["header_lines"] = 0
    return frame


def _read_ml1m_ratings(path) -> pd.DataFrame:
    """ratings.dat (1,000,209 lines) with pandas' C parser: ``::`` read as ``:`` gives
    empty columns between the fields (ratings have no colons inside fields)."""
    expected = "expected 4 '::'-separated fields (user::movie::rating::timestamp)"
    try:
        frame = read_delimited(path, ":", names=[f"c{i}" for i in range(7)])
    except MetarecError as err:
        # pandas counts the ':'-split fields ("Expected 7 fields in line 1251, saw 9")
        m = re.search(r"in line (\d+)", str(err))
        if m is None and "first data row has more fields" not in str(err):
            raise
        raise MetarecError(f"{path}: line {m.group(1) if m else 1}: {expected}") from None
    # a line with fewer fields (tab-separated, or cut) leaves the last columns empty
    bad = frame[["c1", "c3", "c5"]].notna().any(axis=1) | frame[["c2", "c4", "c6"]].isna().any(
        axis=1
    )
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise MetarecError(f"{path}: line {_row_line(path, pos, '::', 'utf-8')}: {expected}")
    frame = frame[["c0", "c2", "c4", "c6"]]
    frame.columns = ["user_id", "item_id", "rating", "timestamp"]
    frame.attrs.update(source=str(path), header_lines=0)
    return frame


def read_movielens_1m(path: str | os.PathLike | None = None) -> RawData:
    """ml-1m: ratings.dat (required), movies.dat (title, genres), users.dat.

    Items: text ``title`` and ``genres``; numeric ``year``. Users: categorical ``gender``,
    ``age`` (the README's age-bucket code: 1, 18, 25, 35, 45, 50, 56), ``occupation``
    (code 0-20) and ``zip_prefix``.
    """
    folder = resolve_dir(path, "ml-1m", "movielens-1m")
    rpath = optional_file(folder, "ratings.dat", "movielens-1m")  # checked whole
    if rpath is None:
        raise MetarecError(
            f"movielens-1m: ratings.dat is required but missing from {str(folder)!r}; "
            f"get it from {ML_1M_URL} and put it beside movies.dat"
        )
    ratings = _ratings_frame(_read_ml1m_ratings(rpath))
    movies = _split_double_colon(
        require_file(folder, "movies.dat", "movielens-1m"),
        ["item_id", "title", "genres"],
        encoding="latin-1",
    )
    item_frame = pd.DataFrame(
        {
            "item_id": unique_id_column(movies, "item_id", str(folder / "movies.dat")).to_numpy(
                object
            ),
            "title": movies["title"].to_numpy(object),
            "genres": movies["genres"].to_numpy(object),
            "year": title_year(movies["title"].astype(str)),
        }
    )
    user_frame = None
    users_path = optional_file(folder, "users.dat", "movielens-1m")
    if users_path is not None:
        users = _split_double_colon(
            users_path, ["user_id", "gender", "age", "occupation", "zip"], "latin-1"
        )
        user_frame = pd.DataFrame(
            {
                "user_id": unique_id_column(users, "user_id", str(users_path)).to_numpy(object),
                "gender": users["gender"].to_numpy(object),
                "age": users["age"].to_numpy(object),
                "occupation": users["occupation"].to_numpy(object),
                "zip_prefix": _zip_prefix(users["zip"]),
            }
        )
    return RawData(
        name="movielens-1m",
        ratings=ratings,
        feedback="explicit",
        rating_range=(1.0, 5.0),
        has_time=True,
        items=item_frame,
        users=user_frame,
        item_text_columns=("title", "genres"),
        item_numeric_columns=("year",),
        user_categorical_columns=("gender", "age", "occupation", "zip_prefix")
        if user_frame is not None
        else (),
        source=str(folder),
    )
