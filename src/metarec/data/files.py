"""The CLI contract's files: training log T, item table I, user table U, support S, query Q.

``metarec fit --train T --items I [--users U]`` and ``predict``/``recommend`` read these.
Column names are fixed by the contract (README, "Your own data"):

* T and S: ``user_id, item_id`` and ``rating`` (explicit) or ``label`` (0/1, implicit),
  optional ``timestamp`` and ``domain``. Any other column is an error (a typo such as
  ``ratings`` would otherwise be silently ignored).
* I: ``item_id`` plus any side columns, optional ``domain``. Column roles are inferred:
  numeric columns are numeric features; string columns are free text when long or mostly
  distinct (titles, descriptions), else categories (genres, brand).
* U: ``user_id`` plus side columns, roles inferred the same way.
* Q: ``user_id, item_id``; ``rating``/``label``/``timestamp``/``domain`` may be present and
  are ignored (e.g. held-out truth kept beside the query).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.raw import RawData, make_ratings_frame
from metarec.data.tabular import (
    _at,
    _read_any,
    _timestamps,
    _where,
    check_declared_scale,
    check_float32,
    check_range_span,
    clip,
    first_outside,
    header_comment_hint,
    id_column,
    number_cells,
    number_column,
    optional_number,
    other_separator,
    require_columns,
    strip_columns,
    unique_id_column,
)
from metarec.errors import exact_g
from metarec.types import MetarecError

LOG_COLUMNS = ("user_id", "item_id", "rating", "label", "timestamp", "domain")


def _read(path: str | Path) -> pd.DataFrame:
    frame = strip_columns(_read_any(Path(path), None, "utf-8"))
    # one column named "user_id\titem_id\trating": the wrong separator
    name = other_separator(str(frame.columns[0]), None) if len(frame.columns) == 1 else None
    if name is not None:
        raise MetarecError(
            f"{path}: the header {frame.columns[0]!r} looks {name}-separated; files "
            "are read comma-separated (.csv), tab-separated (.tsv) or as Parquet"
        )
    return _drop_empty_unnamed(frame)


def _unnamed(frame: pd.DataFrame) -> list:
    return [c for c in frame.columns if re.fullmatch(r"Unnamed: \d+", str(c)) or not str(c).strip()]


def _drop_empty_unnamed(frame: pd.DataFrame) -> pd.DataFrame:
    """Without the columns that have no name and no value: a trailing comma on every
    line, as spreadsheets export. The items file took it and T, S and Q refused it as an
    unknown column (probe 132). One with values stays, for the reader to refuse."""
    empty = [
        c for c in _unnamed(frame) if frame[c].astype("string").str.strip().fillna("").eq("").all()
    ]
    if not empty:
        return frame
    attrs = dict(frame.attrs)
    frame = frame.drop(columns=empty)
    frame.attrs.update(attrs)
    return frame


def _column_name(c) -> str:
    """A header cell as an error names it: pandas names an empty one "Unnamed:
    <position>" (a trailing comma makes one), a name nobody wrote."""
    m = re.fullmatch(r"Unnamed: (\d+)", str(c))
    if m:
        return f"an empty name (column {int(m.group(1)) + 1})"
    return "an empty name" if not str(c).strip() else repr(clip(c, 40))


def _check_log_columns(frame: pd.DataFrame, allowed=LOG_COLUMNS) -> None:
    unknown = [c for c in frame.columns if c not in allowed]
    if unknown:
        raise MetarecError(
            f"{_where(frame)}: unknown column(s) {', '.join(map(_column_name, unknown[:5]))} "
            f"(expected {', '.join(allowed)}){header_comment_hint(frame)}"
        )
    require_columns(frame, ["user_id", "item_id"])
    if "rating" in frame.columns and "label" in frame.columns:
        raise MetarecError(f"{_where(frame)}: give either a rating or a label column, not both")
    if "rating" not in frame.columns and "label" not in frame.columns:
        raise MetarecError(f"{_where(frame)}: missing column rating (or label for 0/1 data)")


def read_log(path: str | Path, enter_run: bool = False) -> tuple[pd.DataFrame, str, bool]:
    """A T or S file as a RawData-style ratings frame, its feedback kind and has_time.
    ``enter_run``: its ids will be a RUN's (fit's T), held to the server's id rule."""
    frame = _read(path)
    frame.attrs["ids_enter_run"] = enter_run
    return log_frame(frame)


def log_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, str, bool]:
    """A T or S table as :func:`read_log` reads it: (RawData-style ratings frame, feedback
    kind "explicit"/"implicit", has_time). The Python API's support frames go through it
    too, so a datetime64 or date-string ``timestamp``, a ``label`` column and a missing
    value column mean there what they mean in a file. The result carries
    ``attrs["feedback"]`` (read back by :class:`~metarec.predictor.Predictor`)."""
    if "source" not in frame.attrs:  # a frame built in Python: its rows have no lines
        frame = frame.copy()
        frame.attrs.update(source="support", rows_not_lines=True)
    _check_log_columns(frame)
    users = id_column(frame, "user_id")
    items = id_column(frame, "item_id")
    if "label" in frame.columns:
        values = number_column(frame, "label", bools=True)  # True / False are 1 / 0
        off = ~np.isin(values, (0.0, 1.0))
        if off.any():
            pos = int(np.flatnonzero(off)[0])
            given = frame["label"].iloc[pos]
            if isinstance(given, np.generic):  # a Parquet cell: 2, not np.int64(2)
                given = given.item()
            raise MetarecError(
                f"{_where(frame)}: {_at(frame, pos)}: label must be 0 or 1, got {given!r}"
            )
        feedback = "implicit"
    else:
        values = number_column(frame, "rating")
        if not np.isfinite(values).all():
            pos = int(np.flatnonzero(~np.isfinite(values))[0])
            raise MetarecError(
                f"{_where(frame)}: {_at(frame, pos)}: column 'rating' has a non-finite value "
                f"({values[pos]:g})"
            )
        check_float32(frame, "rating", values)
        feedback = "explicit"
    has_time = "timestamp" in frame.columns
    ts = _timestamps(frame, "timestamp") if has_time else None
    # names, an empty cell "default", as in the items file (id_column refused empty cells)
    domain = domain_names(frame["domain"]) if "domain" in frame.columns else None
    out = make_ratings_frame(users, items, values, ts, domain)  # row for row
    # where each row came from, so a later check can name a file line (_at)
    where = {k: frame.attrs.get(k) for k in ("header_lines", "delimited", "rows_not_lines")}
    out.attrs.update(
        source=_where(frame), feedback=feedback, **{k: v for k, v in where.items() if v is not None}
    )
    return out, feedback, has_time


def domain_names(s: pd.Series) -> pd.Series:
    """A ``domain`` column as names: stripped strings, a whole float 1.0 as "1" (Parquet),
    an empty cell as "default" (the domain of rows that name none)."""
    if pd.api.types.is_float_dtype(s):
        f = s.to_numpy(np.float64)
        whole = np.isfinite(f) & (f == np.round(f))
        s = pd.Series(
            [
                str(int(v)) if w else (None if np.isnan(v) else str(v))
                for v, w in zip(f, whole, strict=True)
            ],
            dtype=object,
        )
    d = s.astype(object).where(s.notna(), "").astype(str).str.strip()
    return d.where(d != "", "default").reset_index(drop=True)


def _say_if_nearly_numeric(frame: pd.DataFrame, column: str, cells, numbers) -> None:
    """A column whose filled ``cells`` are numbers but for a few words (a year column with
    one "unknown": a missing-value spelling outside MISSING_SPELLINGS) is read as text or
    categories: said, as it silently went into the embedded text. A stray with a digit in
    it is a code, not a missing value (ISBNs ending in X): nothing to say. ``numbers``:
    the cells as numbers, NaN where one is not."""
    n, bad = len(cells), numbers.isna()
    strays = cells[bad]
    if n < 5 or len(strays) > 0.1 * n or strays.str.contains(r"\d").any():
        return
    warnings.warn(
        f"{_where(frame)}: column {column!r} is not read as numbers: {n - len(strays)} of "
        f"{n} filled cells are numbers, not {strays.iloc[0]!r} ({len(strays)} such); if "
        "that spells a missing value, blank those cells to make it a number column",
        stacklevel=3,
    )


def _refuse_unnamed(frame: pd.DataFrame) -> None:
    """A side table's column with values and no name is refused: most often a saved pandas
    index (``to_csv`` without ``index=False``), which had become a numeric feature."""
    held = _unnamed(frame)
    if held:
        raise MetarecError(
            f"{_where(frame)}: a column with values has {_column_name(held[0])}: name every "
            "column (an unnamed first column is often a saved pandas index: write the file "
            "with index=False)"
        )


def side_roles(frame: pd.DataFrame, key: str) -> tuple[tuple, tuple, tuple, pd.DataFrame]:
    """(text, categorical, numeric) column names of a side table, and the cleaned frame.
    A column with no name that holds values is refused: it is most often a saved pandas
    index (``to_csv`` without ``index=False``), and it had become a numeric feature. One
    with no values (a trailing comma on every line, as spreadsheets export) is dropped."""
    frame = _drop_empty_unnamed(frame)
    _refuse_unnamed(frame)
    out = pd.DataFrame({key: id_column(frame, key).to_numpy(object)})
    text, cat, num = [], [], []
    for c in frame.columns:
        if c == key:
            continue
        s = frame[c]
        listed = s.map(lambda v: isinstance(v, list | tuple | np.ndarray))
        if listed.any():
            # a Parquet list column (genres: ["a", "b"]) is the multi-valued categorical
            # that CSV files spell "a|b"; as strings each list became one category
            out[c] = s.map(
                lambda v: (
                    "|".join(str(x) for x in v if x is not None and str(x) != "")
                    if isinstance(v, list | tuple | np.ndarray)
                    else ("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
                )
            ).to_numpy(object)
            cat.append(c)
            continue
        if c == "domain":
            # names, never numbers: domains 1, 2 must match T's "1" and `--domain 1` (read
            # as numbers they became 1.0); spelled as ids are (stripped, 12.0 is 12) so
            # the items file and T agree on " books" and "books"
            names = domain_names(s)
            if (names == "default").all():
                # a column that names no domain (empty, as a database's null column
                # exports) is no domain column, as in T: T's names, if any, then give the
                # items theirs; kept, it put every item in 'default' against T's names
                continue
            out[c] = names.to_numpy(object)
            cat.append(c)
            continue
        as_num, spelled, filled = number_cells(s)
        if filled.any() and as_num[filled].notna().all():
            out[c] = optional_number(s)
            num.append(c)
            continue
        _say_if_nearly_numeric(frame, c, spelled[filled], as_num[filled])
        strings = s.fillna("").astype(str)
        nonempty = strings[strings != ""]
        long_or_distinct = (
            (nonempty.str.len().mean() > 24 or nonempty.nunique() > 0.5 * max(len(nonempty), 1))
            if len(nonempty)
            else False
        )
        if long_or_distinct:
            out[c] = strings.to_numpy(object)
            text.append(c)
        else:
            out[c] = s.astype("string").to_numpy(object)
            cat.append(c)
    return tuple(text), tuple(cat), tuple(num), out


def read_side(path: str | Path, key: str) -> tuple[pd.DataFrame, tuple, tuple, tuple]:
    """fit's items or users file: (the frame, its text, categorical, numeric columns)."""
    frame = _read(path)
    frame.attrs["ids_enter_run"] = True  # the RUN's ids: the server's id rule holds
    require_columns(frame, [key])
    unique_id_column(frame, key, _where(frame))
    if key == "item_id":
        # "Domain" is legal as a side column, but the header nearly always meant the
        # items' domain: taken as a category, the fit had one domain and the mistake
        # showed only at `recommend --domain` ("unknown domain 'books'; domains: default")
        for c in frame.columns:
            if c != "domain" and str(c).strip().lower() == "domain":
                warnings.warn(
                    f"{path}: column {c!r} is read as an item side column, not as the items' "
                    "domain; name it 'domain' (lowercase) if it says which domain each item is in",
                    stacklevel=2,
                )
    text, cat, num, out = side_roles(frame, key)
    for c in (*text, *cat, *num):
        cells = pd.Series(out[c], dtype=object)
        if not (cells.notna() & (cells.astype(str).str.strip() != "")).any():
            # read as a category with no levels: it adds nothing, and a RUN fitted on a
            # users file of such columns alone later refused `--users` saying "user_id
            # only" of a file that had a column (mutation audit 186)
            warnings.warn(
                f"{path}: column {c!r} has no value on any row; it adds nothing to the model",
                stacklevel=2,
            )
    return out, text, cat, num


def read_users(path: str | Path) -> pd.DataFrame:
    """A users file met after ``fit`` (``predict`` / ``recommend --users``): ``user_id``
    (canonical: stripped, 12.0 is 12; each once) and the side columns as read, their roles
    left to the RUN (:meth:`metarec.user_side.UserFeatures.frame`): a short file is no
    evidence of what a column holds."""
    frame = _drop_empty_unnamed(_read(path))
    require_columns(frame, ["user_id"])
    _refuse_unnamed(frame)
    ids = unique_id_column(frame, "user_id", _where(frame)).to_numpy(object)
    out = frame.assign(user_id=ids)
    out.attrs["source"] = str(path)
    return out


def check_log_domains(
    log: pd.DataFrame, item_frame: pd.DataFrame | None, where: object, items_file: object
) -> None:
    """A log's ``domain`` column must agree with itself (an item in one domain) and with
    the items file's, where both name one: the items file decides an item's domain, so a
    disagreeing row would otherwise be moved to the other domain without a word."""
    if "domain" not in log.columns or not (log["domain"] != "default").any():
        return
    pairs = log[["item_id", "domain"]].drop_duplicates()
    twice = pairs["item_id"].duplicated(keep=False)
    if twice.any():
        item = pairs["item_id"][twice].iloc[0]
        names = sorted(pairs["domain"][pairs["item_id"] == item])
        raise MetarecError(f"{where}: item_id {item!r} is in domains {names}; an item has one")
    if item_frame is None or "domain" not in item_frame.columns:
        return
    theirs = pairs["item_id"].map(item_frame.set_index("item_id")["domain"])
    differ = theirs.notna() & (theirs != pairs["domain"])
    if differ.any():
        i = int(np.flatnonzero(differ.to_numpy())[0])
        raise MetarecError(
            f"{where}: item_id {pairs['item_id'].iloc[i]!r} is in domain "
            f"{pairs['domain'].iloc[i]!r} here but {theirs.iloc[i]!r} in {items_file} "
            f"({int(differ.sum())} such item{'' if int(differ.sum()) == 1 else 's'})"
        )


def join_domains(
    ratings: pd.DataFrame, item_frame: pd.DataFrame, train: object, items: object
) -> bool:
    """Make a log (T) and its items file (I) name the same domains, in place; True when
    ``item_frame`` got a ``domain`` column it did not have (a new categorical column).

    The one rule set for both readers of T + I (`metarec fit`'s and the csv/parquet
    loader behind info, split, embed and evaluate):
    - the log's domains must agree with themselves and with I's (:func:`check_log_domains`);
    - a log that names domains gives them to an I without a domain column (first seen
      wins); an item nobody rated has no row to name one and lands in "default", with a
      warning, since it then never appears in `recommend --domain`;
    - an I that alone names domains gives them to the log's rows (the items file decides
      an item's domain); the log said "default" for every row, and `metarec update` then
      coded feedback on never-rated items by the catalogue and the rest as "default".
    """
    check_log_domains(ratings, item_frame, train, items)
    log_names = "domain" in ratings.columns and (ratings["domain"] != "default").any()
    if log_names and "domain" not in item_frame.columns:
        first = ratings.drop_duplicates("item_id").set_index("item_id")["domain"]
        mapped = item_frame["item_id"].map(first)
        if mapped.isna().any():
            warnings.warn(
                f"{items}: {int(mapped.isna().sum())} items have no rows in {train} to give "
                "their domain and no domain column here: they are in domain 'default' "
                "(add a domain column to the items file)",
                stacklevel=3,
            )
        item_frame["domain"] = mapped.fillna("default").to_numpy(object)
        return True
    if not log_names and "domain" in item_frame.columns:
        ratings["domain"] = (
            ratings["item_id"].map(item_frame.set_index("item_id")["domain"]).to_numpy(object)
        )
    return False


def _warn_mixed_scales(ratings: pd.DataFrame, train: str | Path) -> None:
    """A log whose domains rate on different scales (books 1-5, films 1-10) is fitted on
    one scale: the like threshold (the scale's middle) then sat above every book rating,
    and book predictions ran past 5. Said, since only the user can rescale."""
    if "domain" not in ratings.columns:
        return
    tops = ratings.groupby("domain", sort=True)["rating"].max()
    if len(tops) > 1 and tops.max() > 1.5 * max(tops.min(), 1e-9):
        ranges = ratings.groupby("domain", sort=True)["rating"].agg(["min", "max"])
        said = ", ".join(f"{d} {r['min']:g}..{r['max']:g}" for d, r in ranges.iterrows())
        lo, hi = float(ratings["rating"].min()), float(ratings["rating"].max())
        like = lo + (hi - lo) / 2
        below = [str(d) for d, r in ranges.iterrows() if r["max"] < like]
        # what it costs, said: the like threshold is the shared scale's middle, so a
        # domain rated below it has no likes, and recommend (which ranks by likes) does
        # not transfer from it (a probe's films top-10 fell to chance from book supports)
        cost = (
            f" (the like threshold, its middle {like:g}, is above every rating of "
            f"{', '.join(below)}: `recommend` sees no likes there and cannot transfer from it)"
            if below
            else ""
        )
        warnings.warn(
            f"{train}: the domains' ratings reach different tops ({said}); the model uses "
            f"one rating scale for all{cost}: put the ratings on one scale first",
            stacklevel=3,
        )


def numeric_look_alike(wanted: str, ids: pd.Series, limit: int = 1_000_000) -> str | None:
    """An id of ``ids`` that is the same number as ``wanted`` spelled another way ("42.0",
    "042" for "42"), or None (also where ``wanted`` is not a number)."""
    try:
        target = float(wanted)
    except ValueError:
        return None
    if not np.isfinite(target):
        return None
    values = pd.to_numeric(ids.iloc[:limit], errors="coerce").to_numpy(np.float64)
    hits = np.flatnonzero(values == target)
    return str(ids.iloc[int(hits[0])]) if len(hits) else None


_WHOLE = r"^\s*([+-]?)0*(\d+)(?:\.0*)?\s*$"  # "007", "+7", "7.0" and "7" are one number


def whole_number_spelling(ids: pd.Series) -> pd.Series:
    """Each id that spells a whole number, as its plain digits ("007", "+7", "7.0" ->
    "7"); None elsewhere. Compared as text, not as floats: ids past 2^53 (snowflake ids)
    would otherwise read as one number."""
    parts = ids.astype(str).str.extract(_WHOLE)
    digits = parts[1].where(parts[1] != "", "0")
    sign = parts[0].where(parts[0] == "-", "").where(digits != "0", "")
    return (sign + digits).astype(object).where(parts[1].notna(), None)


def whole_number_pairs(wanted: pd.Series, ids: pd.Series) -> list[tuple[str, str]]:
    """(wanted id, the spelling ``ids`` gives that number) for each ``wanted`` id that is
    a whole number ``ids`` spells (by :func:`whole_number_spelling`; where ``ids`` spells
    a number twice, its later spelling)."""
    spelt = whole_number_spelling(ids)
    theirs = dict(zip(spelt[spelt.notna()], ids[spelt.notna()].astype(str), strict=True))
    if not theirs:
        return []
    mine = whole_number_spelling(wanted)
    return [
        (w, theirs[v])
        for w, v in zip(wanted.tolist(), mine.tolist(), strict=True)
        if v is not None and v in theirs
    ]


def _warn_users_spelt_twice(
    rated: pd.Series, listed: pd.Series, known: pd.Series, train: object, users: object
) -> None:
    """Training users absent from U whose number U spells another way ("7" in T, "007"
    in U): those users get no side features, U's spelling becomes a second, cold user, and
    nothing said so where only some ids differed (a zero-padded U beside an unpadded T:
    ids 0-99 lost their features, 100-199 kept them). ``known``: rated.isin(listed)."""
    missing = pd.Series(pd.unique(rated[~known]), dtype=object)
    pairs = whole_number_pairs(missing, listed) if len(missing) else []
    if pairs:
        shown = ", ".join(f"{a!r} (users file: {b!r})" for a, b in pairs[:3])
        warnings.warn(
            f"{users}: {len(pairs)} training user(s) of {train} are not in it but it spells "
            f"their number another way: {shown}; ids are compared as written, so these "
            "users get no side features from it",
            stacklevel=3,
        )


def check_items_listed(rated: pd.Series, listed: pd.Series, where: object, items: object) -> None:
    """Every rated item id (``rated``, the log's item_id column) must be in ``listed`` (the
    items file's ids), compared as written: a one-line error naming the first missing id,
    how many rows name one, and an id of the items file that is the same number spelled
    another way ("42.0" in I for "42" in T), where there is one."""
    missing = ~rated.isin(set(listed))
    if not missing.any():
        return
    bad = str(rated[missing].iloc[0])
    alike = numeric_look_alike(bad, listed)
    raise MetarecError(
        f"{where}: item_id {bad!r} is not in the items file {items} "
        f"({int(missing.sum())} rows with unknown items)"
        + (f"; the items file has {alike!r}: ids are compared as written" if alike else "")
    )


def read_training_files(
    train: str | Path,
    items: str | Path,
    users: str | Path | None = None,
    name: str = "fit",
    rating_range: tuple[float, float] | list[float] | None = None,
) -> RawData:
    """T + I (+ U) as RawData. Every item of T must be in I (I is the whole catalogue).

    ``rating_range`` (explicit data) is the rating scale; None = T's lowest and highest
    rating, which a small log that lacks the scale's ends gets wrong (a 1-5 log without a
    1 made every later 1-star support rating an error)."""
    if rating_range is not None:
        check_declared_scale(*(float(v) for v in rating_range))
    ratings, feedback, has_time = read_log(train, enter_run=True)
    if rating_range is not None and feedback != "explicit":
        raise MetarecError(f"{train}: a rating range is for ratings; this log has labels (0/1)")
    item_frame, itext, icat, inum = read_side(items, "item_id")
    # ids are compared as written: "42" in T and "42.0" in I (a float column as pandas
    # writes it) are two ids; the message names the other spelling
    check_items_listed(ratings["item_id"], item_frame["item_id"], train, items)
    if join_domains(ratings, item_frame, train, items):
        icat = (*icat, "domain")
    if not itext and not icat and not inum:
        raise MetarecError(f"{items}: the items file has no side columns besides item_id")
    user_frame, utext, ucat, unum = (None, (), (), ())
    if users is not None:
        user_frame, utext, ucat, unum = read_side(users, "user_id")
        if not utext and not ucat and not unum:
            # taken (it lists users), but it gives the model nothing; the items file's
            # counterpart is an error, since items need features to be scored
            warnings.warn(
                f"{users}: the users file has no side columns besides user_id; it adds "
                "nothing to the model",
                stacklevel=2,
            )
        known = ratings["user_id"].isin(set(user_frame["user_id"]))
        _warn_users_spelt_twice(ratings["user_id"], user_frame["user_id"], known, train, users)
        if not known.any():
            # legal (U may describe only users yet to come), but far more often a mismatch
            # of spellings ("5" in T, "5.0" in U): then no training user has side features
            warnings.warn(
                f"{users}: none of its {len(user_frame)} user ids is in {train} (ids are "
                "compared as text: '5' and '5.0' differ); training users get no side "
                "features from it",
                stacklevel=2,
            )
    if feedback == "explicit":
        _warn_mixed_scales(ratings, train)
        lo, hi = float(ratings["rating"].min()), float(ratings["rating"].max())
        if lo == hi:
            raise MetarecError(
                f"{train}: every rating is {lo:g}; nothing to learn from (for interactions "
                "without ratings, use a label column of 0/1)"
            )
        if rating_range is not None:
            s_lo, s_hi = (float(v) for v in rating_range)
            r = ratings["rating"].to_numpy(np.float64)
            pos = first_outside(r, s_lo, s_hi)
            if pos is not None:
                raise MetarecError(
                    f"{train}: {_at(ratings, pos)}: rating {exact_g(r[pos])} is outside the "
                    f"rating range {s_lo:g}..{s_hi:g}"
                )
            check_range_span(str(train), lo, hi, s_lo, s_hi)
            lo, hi = s_lo, s_hi
        rating_range = (lo, hi)
    else:
        if not (ratings["rating"] == 1).any():
            raise MetarecError(f"{train}: every label is 0; nothing to learn from (no positives)")
        rating_range = (0.0, 1.0)
    return RawData(
        name=name,
        ratings=ratings,
        feedback=feedback,
        rating_range=rating_range,
        has_time=has_time,
        items=item_frame,
        users=user_frame,
        item_text_columns=itext,
        item_categorical_columns=icat,
        item_numeric_columns=inum,
        user_text_columns=utext,
        user_categorical_columns=ucat,
        user_numeric_columns=unum,
        source=str(train),
    )


def read_query(path: str | Path) -> pd.DataFrame:
    """Q: (user_id, item_id) rows as str, in file order, and ``domain`` as read where Q
    has it: predict names it and checks it against the RUN's catalogue, as it checks a
    support's.

    Ids are matched as :func:`id_column` normalises them (" 7 " is item "7"); the file's
    own spellings ride along in ``attrs["raw_ids"]`` so that P can give every query row
    back exactly as it came (a client joins P to Q on them). A held-out log may serve as
    Q: its other log columns (rating or label, timestamp) are read past."""
    frame = _read(path)
    _check_query_columns(frame)
    out = pd.DataFrame(
        {
            "user_id": id_column(frame, "user_id").to_numpy(object),
            "item_id": id_column(frame, "item_id").to_numpy(object),
        }
    )
    if "domain" in frame.columns:
        out["domain"] = frame["domain"].to_numpy()
    out.attrs["raw_ids"] = {c: frame[c].to_numpy(object) for c in ("user_id", "item_id")}
    return out


def _check_query_columns(frame: pd.DataFrame) -> None:
    unknown = [c for c in frame.columns if c not in LOG_COLUMNS]
    if unknown:
        extra = ", ".join(c for c in LOG_COLUMNS if c not in ("user_id", "item_id"))
        raise MetarecError(
            f"{_where(frame)}: unknown column(s) {', '.join(map(_column_name, unknown[:5]))} "
            f"(a query file has user_id, item_id, and may have a log's {extra})"
            f"{header_comment_hint(frame)}"
        )
    require_columns(frame, ["user_id", "item_id"])
