"""Reading delimited/Parquet files into frames, with one-line errors that name file and line.

Two layers live here:

* small file helpers every loader uses (:func:`resolve_dir`, :func:`read_text`,
  :func:`read_delimited`, :func:`require_columns`, :func:`id_column`, :func:`number_column`):
  they turn pandas' parser exceptions, decoding errors and missing values into
  :class:`MetarecError` with the file, column and 1-based line number;
* :func:`read_table`, the generic loader for a user's own interaction log (CSV/TSV or
  Parquet) plus an optional item side file, driven by a column mapping.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.raw import RawData, make_ratings_frame
from metarec.errors import user_path
from metarec.types import MAX_ID_CHARS, MetarecError

DATA_DIR_ENV = "METAREC_DATA_DIR"


# ----------------------------------------------------------------------------- file helpers


def resolve_dir(path: str | os.PathLike | None, folder: str, name: str) -> Path:
    """The dataset folder: ``path`` if given, else ``$METAREC_DATA_DIR/<folder>``."""
    if path is None:
        root = os.environ.get(DATA_DIR_ENV)
        if not root:
            raise MetarecError(
                f"{name}: no data path given; pass --path /dir/{folder} (in an experiment "
                f"config: data.path) or set {DATA_DIR_ENV} to the folder that contains {folder}/"
            )
        p = user_path(root) / folder
    else:
        p = user_path(path)
    if p.exists() and not p.is_dir():
        raise MetarecError(f"{name}: data path {str(p)!r} is a file, not a folder")
    if not p.is_dir():
        raise MetarecError(f"{name}: data folder {str(p)!r} does not exist")
    return p


def require_file(folder: Path, filename: str, name: str) -> Path:
    """A named dataset's release file, which must exist and end with a newline: every file
    of the releases metarec reads does, and one cut mid-line had loaded silently (u.data's
    last timestamp 879959583 read as 87995, a rating from 1970; a title cut short)."""
    p = folder / filename
    if not p.is_file():
        raise MetarecError(f"{name}: required file {filename!r} not found in {str(folder)!r}")
    return _whole_file(p, name)


def optional_file(
    folder: Path, filename: str, name: str, *, whole_lines: bool = True
) -> Path | None:
    """A named dataset's optional release file (side text, tags, user demographics): None
    where it is absent, else checked as :func:`require_file` checks a required one. A side
    file cut mid-line had loaded silently, its last row's value cut short.
    ``whole_lines=False`` skips the final-newline check, for releases whose files may
    lack one (goodbooks: the bundled sample's ratings prefix ends without it)."""
    p = folder / filename
    return _whole_file(p, name, whole_lines) if p.is_file() else None


def _whole_file(p: Path, name: str, whole_lines: bool = True) -> Path:
    """``p``, refused if it is compressed or binary (named as such: a gzip file was called
    "truncated") or, with ``whole_lines``, ends in the middle of a line."""
    with open(p, "rb") as fh:
        head = fh.read(16)
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 4))  # the last 4 bytes (all of a shorter file)
        tail = fh.read()
    for looks_like, kind, _ in _BINARY_FILES:
        if looks_like(head if size <= 16 else head + tail):
            raise MetarecError(
                f"{name}: {p} is {kind}, not the release's text file (decompress it, or "
                "unpack the release again)"
            )
    if whole_lines and size and tail[-1:] not in (b"\n", b"\r"):
        raise MetarecError(
            f"{name}: {p} ends in the middle of a line (no final newline: truncated?)"
        )
    return p


# (is it, what the file is, what to do): formats a text reader cannot take, told by their
# magic bytes (bzip2 and Parquet by more than their first letters, which a text header
# could begin with)
_BINARY_FILES = (
    (
        lambda b: b.startswith(b"\x1f\x8b"),
        "a gzip-compressed file",
        "decompress it first (gunzip), or write Parquet",
    ),
    (
        lambda b: b.startswith(b"BZh") and b[4:10] == b"1AY&SY",
        "a bzip2-compressed file",
        "decompress it first (bunzip2), or write Parquet",
    ),
    (
        lambda b: b.startswith(b"\xfd7zXZ\x00"),
        "an xz-compressed file",
        "decompress it first (unxz), or write Parquet",
    ),
    (
        lambda b: b.startswith(b"(\xb5/\xfd"),
        "a zstd-compressed file",
        "decompress it first (unzstd), or write Parquet",
    ),
    (
        lambda b: b.startswith(b"PK\x03\x04"),
        "a zip archive (or an .xlsx / .ods spreadsheet)",
        "unzip it, or export the sheet as CSV",
    ),
    (
        lambda b: b.startswith(b"\xd0\xcf\x11\xe0"),
        "an old Excel (.xls) workbook",
        "export the sheet as CSV",
    ),
    (
        lambda b: b.startswith(b"PAR1") and b.endswith(b"PAR1"),
        "a Parquet file",
        "name it .parquet (the reader goes by the suffix)",
    ),
)


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Whole file decoded strictly; a bad byte becomes an error naming its line.

    Decoding ourselves (instead of letting pandas do it) is what makes the line number
    available: pandas reports undecodable bytes by chunk offset only.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MetarecError(f"file not found: {str(path)!r}") from None
    except OSError as err:
        raise MetarecError(f"cannot read {str(path)!r}: {err.strerror}") from None
    for looks_like, kind, hint in _BINARY_FILES:
        if looks_like(data):
            # a compressed or binary file read as text failed on its first odd byte with
            # "cannot decode byte 0x8b as utf-8 (save the file as UTF-8)"
            raise MetarecError(f"{path} is {kind}, not a text CSV/TSV file: {hint}")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise MetarecError(
            f"{path}: line {line}: cannot decode byte 0x{data[err.start]:02x} as {encoding} "
            "(save the file as UTF-8; an experiment's csv loader also takes an `encoding` "
            "option)"
        ) from None
    if not text.strip():
        raise MetarecError(f"{path}: file is empty")
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the header


def read_delimited(
    path: Path,
    sep: str,
    *,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
) -> pd.DataFrame:
    """All columns as strings (``dtype=str``), so ids keep their spelling ("007" stays "007").

    ``names=None`` means the first line is a header. Every row must have the same number
    of fields; a ragged row raises naming its line.
    """
    text = read_text(path, encoding)
    kwargs = {}
    if not quoting:
        kwargs["quoting"] = 3  # csv.QUOTE_NONE: titles like 12" Vinyl keep their quote marks
    try:
        with warnings.catch_warnings():
            # with index_col=False pandas only *warns* when the first data row has more
            # fields than the header, and drops them; later rows raise. Both are errors.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text),
                sep=sep,
                header=None if names is not None else 0,
                names=names,
                dtype=str,
                keep_default_na=False,  # "NA" / "null" are valid titles and ids, not missing
                na_values=[""],
                skip_blank_lines=True,
                index_col=False,
                **kwargs,
            )
    except pd.errors.ParserWarning:
        raise MetarecError(
            f"{path}: malformed line (the first data row has more fields than the "
            f"{'names' if names is not None else 'header'}){_header_hint(text, names, sep)}"
        ) from None
    except pd.errors.ParserError as err:
        raise MetarecError(
            f"{path}: malformed line ({_short(err)}){_header_hint(text, names, sep)}"
        ) from None
    except pd.errors.EmptyDataError:
        raise MetarecError(f"{path}: file is empty") from None
    if len(frame) == 0:
        raise MetarecError(f"{path}: file is empty (a header but no rows)")
    if names is None:
        _check_header(path, text, sep, quoting)
    frame.attrs["header_lines"] = 0 if names is not None else 1
    frame.attrs["source"] = str(path)
    frame.attrs["delimited"] = (sep, encoding, quoting, names is None)
    return frame


_SEPARATORS = (("\t", "tab"), (";", "semicolon"), ("|", "pipe"), (",", "comma"))
_SEPARATOR_NAMES = dict(_SEPARATORS)


def separator_name(sep: str) -> str:
    """ "tab", "comma", ... for a separator; its repr for any other."""
    return _SEPARATOR_NAMES.get(sep, repr(sep))


def other_separator(header: str, own: str | None) -> str | None:
    """The name of a separator other than ``own`` that ``header`` holds (tab first, then
    semicolon, pipe, comma), or None: the one check behind every "looks X-separated"."""
    return next((name for s, name in _SEPARATORS if s != own and s in header), None)


def _header_hint(text: str, names: list[str] | None, sep: str) -> str:
    """Why the rows failed against the header, where its first line says: a comment
    ("# exported 2024"), Excel's "sep=;" line, or a header split by another separator
    (a semicolon file whose titles hold commas failed on its first comma, "Expected 3
    fields in line 13, saw 4", and the separator hint after a successful read never
    came). The bare message named a data line, not the header's fault."""
    if names is not None:
        return ""
    first = next((line for line in text.splitlines() if line.strip()), "").strip()
    if first.startswith("#"):
        return (
            f"; the first line, {clip(first, 60)!r}, was read as the header: remove comment lines"
        )
    if first.lower().startswith("sep=") and len(first) <= 6:
        return f"; the first line, {first!r}, is Excel's separator line: remove it"
    name = other_separator(first, sep) if sep not in first else None
    if name is not None:
        return (
            f"; the header {clip(first, 60)!r} looks {name}-separated, and the file was read "
            f"{separator_name(sep)}-separated (a .csv file comma-, a .tsv file tab-separated)"
        )
    return ""


def _check_header(path: Path, text: str, sep: str, quoting: bool) -> None:
    """pandas renames a repeated header name ("year,year" reads as year, year.1): in a
    side file the copy became a feature of its own, silently. Repeats are an error."""
    import csv

    first = next((line for line in text.splitlines() if line.strip()), "")
    quote = csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE
    try:
        header = next(csv.reader([first], delimiter=sep, quoting=quote), [])
    except csv.Error:  # a field past csv's size limit: pandas read it; leave it to later checks
        return
    _refuse_repeats([h.strip() for h in header if h.strip()], str(path))


def _refuse_repeats(names: list[str], where: str) -> None:
    """A header that names a column twice (names compared stripped) is an error."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise MetarecError(
                f"{where}: column {clip(name)!r} appears twice in the header (names are "
                "compared with surrounding spaces stripped)"
            )
        seen.add(name)


def _short(err: Exception) -> str:
    # pandas: "Error tokenizing data. C error: Expected 3 fields in line 4, saw 5\n"
    msg = str(err).strip().splitlines()[0]
    return msg.removeprefix("Error tokenizing data. C error: ")


def _at(frame: pd.DataFrame, pos: int) -> str:
    """Where row position ``pos`` is: "line N" of a text file (1-based, counting the
    header, blank lines and the lines a quoted field spans), or "row N" of a Parquet
    file, which has no lines."""
    if frame.attrs.get("rows_not_lines"):
        return f"row {pos + 1}"
    spec = frame.attrs.get("delimited")
    if spec is not None:
        line = _physical_line(Path(frame.attrs["source"]), pos, *spec)
        if line is not None:
            return f"line {line}"
    return f"line {pos + 1 + int(frame.attrs.get('header_lines', 0))}"


def _physical_line(path: Path, pos: int, sep: str, encoding: str, quoting: bool, header: bool):
    """The file line on which data row ``pos`` starts, found by reading the file again
    (an error path only): the row count alone was off after a blank line or a quoted
    field with a newline in it. None when the file cannot be re-read the same way."""
    import csv

    try:
        text = read_text(path, encoding)
        reader = csv.reader(
            io.StringIO(text),
            delimiter=sep,
            quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
        )
        row = -1 if header else 0
        start = 1
        for fields in reader:
            if fields:  # pandas skips blank lines, and so does this count
                if row == pos:
                    return start
                row += 1
            start = reader.line_num + 1
    except (csv.Error, MetarecError, OSError):
        return None
    return None


def _bad_cell(frame: pd.DataFrame, pos: int, column: str, value: object, problem: str) -> str:
    """The error line for a cell: an empty one (or a row cut short, which the reader fills
    with NaN) says so, rather than "value nan is not a number"."""
    where = f"{_where(frame)}: {_at(frame, pos)}: column {column!r}"
    if isinstance(value, np.generic):  # a Parquet cell: 1e+19, not np.float64(1e+19)
        value = value.item()
    # pd.NA / NaT: a Parquet null in a nullable or string column
    empty = value is None or value is pd.NA or value is pd.NaT
    empty = empty or (isinstance(value, float) and np.isnan(value))
    if empty or (isinstance(value, str) and not value.strip()):
        if frame.attrs.get("rows_not_lines"):  # Parquet: no fields to fall short of
            return f"{where} is empty"
        return f"{where} is empty (or the row has fewer fields than the header)"
    return f"{where} value {clip(repr(value), 100)} {problem}"


def _where(frame: pd.DataFrame) -> str:
    return frame.attrs.get("source", "input")


def header_comment_hint(frame: pd.DataFrame) -> str:
    """Where a read header's first name starts with "#", the header was a comment line
    ("# exported 2024, by tool" above the real one): say so beside the column error it
    causes. A comment with as many commas as the header parses without a malformed line,
    so :func:`_header_hint` never sees it."""
    if len(frame.columns) and str(frame.columns[0]).lstrip().startswith("#"):
        first = clip(str(frame.columns[0]).strip(), 40)
        return (
            f"; the header was read from a comment line (its first name is {first!r}): "
            "remove comment lines"
        )
    return ""


def _one_column_hint(frame: pd.DataFrame) -> str:
    """A file read as one column whose name holds another separator was split by the
    wrong one ("item_id,title" read ";"-separated: an items file beside a ";" log)."""
    spec = frame.attrs.get("delimited")
    if len(frame.columns) != 1 or spec is None:
        return ""
    word = other_separator(str(frame.columns[0]), spec[0])
    if word is None:
        return ""
    return (
        f"; its header looks {word}-separated, and it was read {separator_name(spec[0])}-separated"
    )


def require_columns(frame: pd.DataFrame, columns: list[str] | tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        have = ", ".join(clip(c, 40) for c in frame.columns[:12])
        raise MetarecError(
            f"{_where(frame)}: missing column(s) {', '.join(missing)} (columns are: {have})"
            f"{header_comment_hint(frame) or _one_column_hint(frame)}"
        )


def strip_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Column names with surrounding spaces stripped; two that then read the same (or a
    Parquet file's exact repeats) are an error: frame[name] became a DataFrame, and every
    command died with a traceback on "rating,rating " or "item_id, item_id"."""
    names = [str(c).strip() for c in frame.columns]
    _refuse_repeats(names, _where(frame))
    frame.columns = names
    return frame


def clip(value: object, most: int = 80) -> str:
    """``value`` as text for an error message, at most ``most`` characters: a 1 MB cell
    or column name was echoed whole into a one-line error."""
    text = str(value)
    return text if len(text) <= most else text[: most - 15] + f"... ({len(text)} chars)"


# float ids beyond this are not exact integers (and past 2^63 the int64 cast wrapped:
# distinct 1e19 and 2e19 became one id, -9223372036854775808)
_MAX_EXACT_ID = 2.0**53


def id_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """Raw ids as str; a missing id raises naming its line. Floats like 12.0 become "12"."""
    s = frame[column]
    bad = s.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise MetarecError(f"{_where(frame)}: {_at(frame, pos)}: column {column!r} has an empty id")
    if pd.api.types.is_float_dtype(s):
        # Parquet/pandas turn int ids with missing values into floats; ours have none now,
        # so a whole float is an int id in disguise -- each one, also in a column with
        # fractional ids (1.0 read "1.0" there and "1" in a whole column: one user, two ids)
        return pd.Series(_float_ids(frame, column, np.arange(len(s))), dtype=object)
    if s.dtype == object:
        # a Python frame mixing types (ids 7 and 100.0 in one column): its float cells
        # follow the same rule ("100.0" was an unknown item, dropped from the support)
        floats = np.flatnonzero(
            s.map(lambda v: isinstance(v, float | np.floating)).to_numpy(dtype=bool)
        )
        if len(floats):
            s = s.copy()
            s.iloc[floats] = _float_ids(frame, column, floats)
    try:
        out = s.astype(str).str.strip()
    except UnicodeDecodeError:
        raise MetarecError(
            f"{_where(frame)}: column {column!r} holds bytes that are not UTF-8 text"
        ) from None
    empty = (out == "").to_numpy()
    if empty.any():
        pos = int(np.flatnonzero(empty)[0])
        raise MetarecError(f"{_where(frame)}: {_at(frame, pos)}: column {column!r} has an empty id")
    _check_id_rule(frame, column, out)
    return out.reset_index(drop=True)


def unservable_id(ids: pd.Series) -> tuple[int, str] | None:
    """(position, problem) of the first id the server's rule (types.id_to_str) refuses or
    changes, else None: over MAX_ID_CHARS characters, a control character, empty, spaces
    around it (the server strips a request's ids: such an item could never be named), or
    a lone surrogate (no UTF-8 spelling: saving the RUN failed on it). File readers strip
    and decode ids before; a dataset built in Python may hold any string. Checked on the
    distinct ids."""
    distinct = pd.Series(pd.unique(ids.to_numpy(object)), dtype=object)
    # object strings: a string dtype (pyarrow's) cannot hold a lone surrogate at all
    text = pd.Series([str(v) for v in distinct], dtype=object)
    problems = [
        (text.str.len() > MAX_ID_CHARS, f"is longer than {MAX_ID_CHARS} characters"),
        (
            text.str.contains(r"[\x00-\x1f\x7f]", regex=True),
            "holds a control character (a tab, a line break, ...)",
        ),
        (text.str.strip() == "", "is empty"),
        (text != text.str.strip(), "has spaces around it (a request's ids are stripped)"),
        (~text.map(_utf8), "is not valid Unicode (a lone surrogate)"),
    ]
    bad = np.zeros(len(distinct), dtype=bool)
    for mask, _ in problems:
        bad |= mask.to_numpy(dtype=bool)
    if not bad.any():
        return None
    j = int(np.flatnonzero(bad)[0])
    problem = next(p for mask, p in problems if mask.iloc[j])
    value = distinct.iloc[j]
    pos = int(np.flatnonzero((ids == value).to_numpy())[0])
    shown = clip(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return pos, f"the id {shown!r} {problem}, which no request to the server may send back"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_id_rule(frame: pd.DataFrame, column: str, ids: pd.Series) -> None:
    """The server's id rule for ids a RUN will hold (fit's files mark their frames
    ``attrs["ids_enter_run"]``): fit took an item id holding a tab, or 1,025 characters
    long, that /recommend then handed out and /score, /feedback and a support refused
    (probe 186). Ids only looked up (predict's S, Q and users files) are not held to it:
    such an id is an unknown one there, as any other."""
    if not frame.attrs.get("ids_enter_run"):
        return
    found = unservable_id(ids)
    if found is not None:
        pos, problem = found
        raise MetarecError(
            f"{_where(frame)}: {_at(frame, pos)}: column {column!r}: {problem}; change it in "
            "the file"
        )


def _float_ids(frame: pd.DataFrame, column: str, positions: np.ndarray) -> list[str]:
    """The float ids at ``positions`` of ``frame[column]`` as str: a whole one as its int
    ("12"), another as its repr; one that is not finite or past 2^53 (not every integer
    is a float there) raises naming its line."""
    f = np.asarray(frame[column].iloc[positions], dtype=np.float64)
    odd = ~np.isfinite(f) | (np.abs(f) >= _MAX_EXACT_ID)
    if odd.any():
        pos = int(positions[np.flatnonzero(odd)[0]])
        raise MetarecError(
            _bad_cell(
                frame,
                pos,
                column,
                frame[column].iloc[pos],
                "is not an exact id (store ids as text)",
            )
        )
    whole = f == np.round(f)
    return [str(int(v)) if w else repr(float(v)) for v, w in zip(f, whole, strict=True)]


def _bool_cells(raw: pd.Series) -> np.ndarray | None:
    """(n,) which cells are True / False, or None where the column holds none: any bool
    dtype (numpy, nullable, pyarrow), a category of bools, or an object column mixing
    them in (only a column pandas cannot call all strings or all numbers is scanned)."""
    if pd.api.types.is_bool_dtype(raw.dtype):
        return raw.notna().to_numpy(bool)
    if isinstance(raw.dtype, pd.CategoricalDtype):
        cats = raw.cat.categories
        if not any(isinstance(c, bool | np.bool_) for c in cats):
            return None
        return raw.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(bool)
    if raw.dtype != object:
        return None
    kind = pd.api.types.infer_dtype(raw, skipna=True)
    if kind != "boolean" and not kind.startswith("mixed"):
        return None
    return raw.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(bool)


def number_column(
    frame: pd.DataFrame, column: str, *, integer: bool = False, bools: bool = False
) -> np.ndarray:
    """Numeric column; the first non-number raises naming line and value. A True or False
    is no number unless ``bools`` (0/1 labels): in a frame built in Python, True was read
    as a 1-star rating where a file's "True" is refused."""
    raw = frame[column]
    if not bools:
        flags = _bool_cells(raw)
        if flags is not None and flags.any():
            pos = int(np.flatnonzero(flags)[0])
            raise MetarecError(_bad_cell(frame, pos, column, raw.iloc[pos], "is not a number"))
    s = pd.to_numeric(raw, errors="coerce")
    bad = s.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise MetarecError(_bad_cell(frame, pos, column, raw.iloc[pos], "is not a number"))
    values = s.to_numpy(np.float64)
    if integer:
        frac = values != np.round(values)
        if frac.any():
            pos = int(np.flatnonzero(frac)[0])
            raise MetarecError(_bad_cell(frame, pos, column, raw.iloc[pos], "is not an integer"))
        return values.astype(np.int64)
    return values


def check_float32(frame: pd.DataFrame, column: str, values: np.ndarray) -> None:
    """Ratings are held in float32: a 1e39 is finite here and inf there, and training
    then stopped on "meta-loss is nan (lower inner_lr)", blaming the learning rate."""
    huge = np.abs(values) > np.finfo(np.float32).max
    if huge.any():
        pos = int(np.flatnonzero(huge)[0])
        # an inf is no number at all, as fit says; a 1e39 is one float32 cannot hold
        problem = "is not finite" if np.isinf(values[pos]) else "is too large (over 3.4e38)"
        raise MetarecError(_bad_cell(frame, pos, column, frame[column].iloc[pos], problem))


# spellings of a missing value in a numeric side column (compared lower-cased)
MISSING_SPELLINGS = frozenset({"na", "n/a", "#n/a", "nan", "null", "none", "-", "?"})


def number_cells(series: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """A side column read for numbers: (its cells as numbers, NaN where one is not; the
    cells as stripped text; which cells are filled). Empty cells and "NA", "nan", "null"
    (how R, pandas and SQL exports write a missing number) are not filled: one of them
    turned a year column into embedded text."""
    spelled = series.astype(str).str.strip()
    filled = series.notna() & (spelled != "") & ~spelled.str.lower().isin(MISSING_SPELLINGS)
    if pd.api.types.is_datetime64_any_dtype(series):
        # a Parquet timestamp column as Unix seconds, whatever its unit and zone:
        # to_numeric gave the count of its unit, so a users file written later in ns read
        # 1,000 times a fitted us column's values, each clipped to the fitted range
        epoch = pd.Timestamp(0, tz="UTC")
        seconds = (pd.to_datetime(series, utc=True) - epoch) / pd.Timedelta(seconds=1)
        return seconds.astype(np.float64), spelled, filled
    return pd.to_numeric(series, errors="coerce"), spelled, filled


def _named_number_column(side: pd.DataFrame, column: str, where: Path) -> np.ndarray:
    """A column named in ``numeric_cols``, as numbers: cells that are no number (beside
    the missing-value spellings) are missing too, said; a column with no number at all is
    an error (a column of words became all-missing without a word, probe 134)."""
    numbers, spelled, filled = number_cells(side[column])
    values = numbers.to_numpy(np.float64)
    words = spelled[filled & numbers.isna()]
    if len(words) and len(words) == int(filled.sum()):
        raise MetarecError(
            f"{where}: numeric_cols names column {column!r}, which holds no number (first: "
            f"{clip(words.iloc[0], 40)!r}); name it a categorical or text column"
        )
    if len(words):
        warnings.warn(
            f"{where}: numeric column {column!r}: {len(words)} of {int(filled.sum())} "
            f"filled cells are no number (first: {clip(words.iloc[0], 40)!r}) and are read "
            "as missing",
            stacklevel=3,
        )
    return values


def optional_number(series: pd.Series) -> np.ndarray:
    """Side-table numbers: unparseable or empty cells become NaN (missing side info is fine);
    a timestamp column is Unix seconds (:func:`number_cells`)."""
    return number_cells(series)[0].to_numpy(np.float64)


# ----------------------------------------------------------------------------- generic loader


def _side_sep(path: Path, sep: str | None, encoding: str) -> str | None:
    """The separator to read an item table with: the log's ``sep`` where the table's
    header is split by it (a ";" items file beside a ";" log was read comma-separated),
    else its own suffix's (a comma items.csv beside a ";" log loads as before)."""
    if sep is None or path.suffix.lower() in (".parquet", ".pq") or not path.is_file():
        return sep
    try:
        with path.open(encoding=encoding, errors="replace") as fh:
            header = next((line for line in fh if line.strip()), "")
    except OSError:
        return sep  # the read proper says what is wrong
    return sep if sep in header else None


def _read_any(path: Path, sep: str | None, encoding: str) -> pd.DataFrame:
    if sep is not None and (len(sep) != 1 or sep in '"\r\n'):
        # pandas takes longer ones as regular expressions through its Python parser,
        # whose warning read_delimited reports as a malformed line ("" was a traceback)
        raise MetarecError(f"sep must be one character, not a quote or a line break; got {sep!r}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        if path.is_dir():
            raise MetarecError(f"{str(path)!r} is a folder, not a Parquet file")
        if not path.is_file():
            raise MetarecError(f"file not found: {str(path)!r}")
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types for a bad file
            raise MetarecError(
                f"{path}: not a readable Parquet file ({type(err).__name__})"
            ) from None
        if len(frame) == 0:
            raise MetarecError(f"{path}: file has no rows")
        frame.attrs["header_lines"] = 0
        frame.attrs["rows_not_lines"] = True
        frame.attrs["source"] = str(path)
        return frame
    if sep is None:
        sep = "\t" if suffix in (".tsv", ".tab") else ","
    return read_delimited(path, sep, encoding=encoding)


# unix seconds beyond this (about 285 million years) are not times; 2^53 is where a
# float64 stops holding every integer. The service's requests and stored feedback take
# the same range (serve.feedback)
MAX_UNIX_SECONDS = 2**53
_MAX_SECONDS = float(MAX_UNIX_SECONDS)


# formats pandas' guesser does not name (two-digit years: 02/01/20, 13.01.20; 12-hour
# times: 02/01/2020 10:00 PM), tried in this order, month first before day first as
# pandas reads an ambiguous date
_MORE_FORMATS = tuple(
    f"{day}{time}"
    for time in ("", " %H:%M", " %H:%M:%S", " %I:%M %p", " %I:%M:%S %p")
    for day in (
        *(
            f"{a}{sep}{b}{sep}{y}"
            for y in ("%Y", "%y")
            for sep in ("/", ".", "-")
            for a, b in (("%m", "%d"), ("%d", "%m"))
        ),
        "%d %b %Y",
        "%d %b %y",
        "%b %d %Y",
        "%b %d %y",
        "%d %B %Y",
        "%B %d %Y",
        "%B %d, %Y",
        "%b %d, %Y",
    )
)


def _reads_as(value: str, fmt: str) -> bool:
    try:
        pd.to_datetime(value, format=fmt)
    except (ValueError, TypeError):
        return False
    return True


def _guess_formats(value: str) -> list[str]:
    """The strptime formats ``value`` reads as, month first then day first (one, if the
    value says which: 13/01/2020), [] when no format is known for it."""
    try:  # public since pandas 2.2
        from pandas.tseries.api import guess_datetime_format
    except ImportError:  # pragma: no cover - pandas 2.1
        from pandas._libs.tslibs.parsing import guess_datetime_format
    out: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dayfirst in (False, True):
            fmt = guess_datetime_format(value, dayfirst=dayfirst)
            if fmt is not None and fmt not in out:
                out.append(fmt)
        if not out:
            out = [f for f in _MORE_FORMATS if _reads_as(value, f)]
    return out


def _dates(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column of date strings as UTC datetimes (NaT where a cell is no date), read in
    ONE format. pandas' per-cell ("mixed") parsing read 02/01/2020 as 1 February and
    13/01/2020 as 13 January in the same column, so a support's newer rating lost to an
    older one without a word. ISO 8601 first; else the format of the first value, month
    first where it could be either (warned, when every date would read day first too)."""
    raw = frame[column]
    # " 02/01/2020" (a space after the comma) is the date; the formats are strict
    # (string cells only: a Parquet date32 column holds datetime.date objects)
    s = raw.map(lambda v: v.strip() if isinstance(v, str) else v)
    iso = pd.to_datetime(s, errors="coerce", utc=True, format="ISO8601")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' "could not infer format" note
        loose = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
    # cells no reading takes are not dates at all: _timestamps names the first of them
    dateish = loose.notna().to_numpy()
    other = dateish & iso.isna().to_numpy()
    if not other.any():
        return iso
    if iso.notna().any():
        a, b = int(np.flatnonzero(iso.notna().to_numpy())[0]), int(np.flatnonzero(other)[0])
        raise MetarecError(
            f"{_where(frame)}: column {column!r}: dates are written two ways "
            f"({_at(frame, a)} {s.iloc[a]!r} is ISO "
            f"8601, {_at(frame, b)} {s.iloc[b]!r} is not); write every date one way, "
            "ISO 8601 (2020-01-13) is safest"
        )
    first = int(np.flatnonzero(dateish)[0])
    formats = _guess_formats(str(s.iloc[first]).strip())
    if not formats:
        # read cell by cell, 02/01 and 13/01 took different orders in one column
        raise MetarecError(
            _bad_cell(
                frame,
                first,
                column,
                s.iloc[first],
                "is a date in a form whose format cannot be told; write ISO 8601 dates "
                "(2020-01-13) or unix seconds",
            )
        )
    reads = [pd.to_datetime(s, errors="coerce", utc=True, format=f) for f in formats]
    whole = [
        (f, r) for f, r in zip(formats, reads, strict=True) if r.notna().to_numpy()[dateish].all()
    ]
    if not whole:
        fmt, best = formats[0], reads[0]
        pos = int(np.flatnonzero(dateish & best.isna().to_numpy())[0])
        raise MetarecError(
            _bad_cell(
                frame,
                pos,
                column,
                s.iloc[pos],
                f"is not in the date format {fmt} of the column's first date "
                f"{s.iloc[first]!r} ({_at(frame, first)}); write every date one way, "
                "ISO 8601 (2020-01-13) is safest",
            )
        )
    if len(whole) > 1 and not whole[0][1].equals(whole[1][1]):
        warnings.warn(
            f"{_where(frame)}: column {column!r}: dates such as {s.iloc[first]!r} read "
            f"month first ({whole[0][0]}); "
            f"every date in the column would also read day first ({whole[1][0]}). Write "
            "ISO 8601 dates (2020-01-13) to be sure",
            stacklevel=3,
        )
    return whole[0][1]


# unix seconds of the years 1973-2286 lie in [1e8, 1e10); the same instants in
# milliseconds in [1e11, 1e13). A column with values in both mixes the two units
_SECONDS_SPAN, _MILLIS_SPAN = (1e8, 1e10), (1e11, 1e13)


def _refuse_mixed_units(frame: pd.DataFrame, column: str, values: np.ndarray) -> None:
    """Seconds and milliseconds in one time column are an error: read as one unit, every
    millisecond row was 51,000 years in the future, the newest rows of all (which decides
    the held-out users, the support/query order and which repeat is kept), silently.
    Only where the millisecond values, read as seconds, fall among the seconds values
    (within a year: a log that switched units carries on where its seconds stop): a
    relative millisecond clock running for years spans both ranges and is one unit."""
    a = np.abs(values)
    in_secs = (a >= _SECONDS_SPAN[0]) & (a < _SECONDS_SPAN[1])
    in_millis = (a >= _MILLIS_SPAN[0]) & (a < _MILLIS_SPAN[1])
    if not (in_secs.any() and in_millis.any()):
        return
    pad = 365 * 86400
    lo, hi = values[in_secs].min() - pad, values[in_secs].max() + pad
    same_time = in_millis & (values / 1000 >= lo) & (values / 1000 <= hi)
    if same_time.any():
        s, m = int(np.flatnonzero(in_secs)[0]), int(np.flatnonzero(same_time)[0])
        raise MetarecError(
            f"{_where(frame)}: column {column!r} mixes unix seconds ({_at(frame, s)}: "
            f"{frame[column].iloc[s]}) and milliseconds ({_at(frame, m)}: "
            f"{frame[column].iloc[m]}): write one unit"
        )


def _timestamps(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Unix seconds from numbers or from date strings (ISO 8601 and the like)."""
    s = frame[column]
    if pd.api.types.is_datetime64_any_dtype(s):
        parsed = pd.to_datetime(s, utc=True)
    else:
        numeric = pd.to_numeric(s, errors="coerce")
        if not numeric.isna().any():
            seconds = number_column(frame, column, integer=False)
            # past 2^53 a float no longer holds every integer, and past int64 the cast
            # wrapped to the most negative value: a 1e20 became the oldest row, silently
            # reversing "the newest row wins"
            huge = np.abs(seconds) > _MAX_SECONDS
            if huge.any():
                pos = int(np.flatnonzero(huge)[0])
                raise MetarecError(
                    _bad_cell(frame, pos, column, s.iloc[pos], "is out of range for unix seconds")
                )
            _refuse_mixed_units(frame, column, seconds)
            _say_fractions(frame, column, int((seconds != np.trunc(seconds)).sum()))
            return seconds.astype(np.int64)
        # the share among the filled cells: with empty ones counted as "not numbers", a
        # column of one number and two empty cells was read as dates and its one number
        # blamed ("the column's other values are dates")
        filled = s.notna().to_numpy() & (s.astype(str).str.strip() != "").to_numpy()
        mostly_numbers = not filled.any() or numeric[filled].notna().mean() >= 0.5
        if mostly_numbers:
            # mostly unix seconds: the culprits are the values that are not numbers (parsed
            # as dates, the numbers would be the ones blamed)
            parsed = numeric
        else:
            parsed = _dates(frame, column)
    bad = parsed.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        value = s.iloc[pos]
        why = "is neither unix seconds nor a date"
        if not pd.api.types.is_datetime64_any_dtype(s):
            if mostly_numbers and not pd.isna(
                pd.to_datetime(pd.Series([value]), errors="coerce", utc=True, format="mixed")[0]
            ):
                why = "is a date, and the column's other values are unix seconds: use one form"
            elif not mostly_numbers and not pd.isna(numeric.iloc[pos]):
                why = "is a number, and the column's other values are dates: use one form"
        raise MetarecError(_bad_cell(frame, pos, column, value, why))
    # Via a Timedelta: the datetime unit (ns, us, s) differs across pandas versions.
    epoch = pd.Timestamp(0, tz="UTC")
    since = parsed - epoch
    _say_fractions(frame, column, int((since % pd.Timedelta(seconds=1) != pd.Timedelta(0)).sum()))
    return (since // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _say_fractions(frame: pd.DataFrame, column: str, n: int) -> None:
    """Timestamps are whole unix seconds everywhere (int64): a fraction is dropped, and
    two rows of one user within one second tie, the file's order deciding between them
    (a re-rating at 10.1 s listed after one at 10.9 s was kept as the newest, silently;
    probe 191). Said, with the remedy; ordering by the fraction is not done."""
    if n:
        warnings.warn(
            f"{_where(frame)}: column {column!r}: {n} "
            f"{'timestamp has' if n == 1 else 'timestamps have'} a fraction of a second, "
            "which is dropped (times are whole seconds): rows of one user within the same "
            "second are ordered as the file lists them, not by their fractions; sort the "
            "file by time if that order matters",
            stacklevel=3,
        )


# a declared rating range may be at most this many times wider than the span of the log's
# ratings: a 1-5 log on 1..100 is taken, on 1..1000 refused
RANGE_SPAN_MAX = 100


def check_declared_scale(lo: float, hi: float) -> None:
    """A declared rating scale ``lo..hi``: lo < hi, both finite within float32's range
    (ratings are held in float32)."""
    big = float(np.finfo(np.float32).max)
    if not (abs(lo) <= big and abs(hi) <= big and lo < hi):
        raise MetarecError(
            f"rating range {lo:g}..{hi:g}: give LO < HI, both finite (within ±3.4e38)"
        )


def first_outside(values: np.ndarray, lo: float, hi: float) -> int | None:
    """The position of the first of ``values`` outside ``lo..hi``, None where none is."""
    off = (values < lo) | (values > hi)
    return int(np.flatnonzero(off)[0]) if off.any() else None


def check_range_span(where: str, lo: float, hi: float, s_lo: float, s_hi: float) -> None:
    """Refuse a declared rating range ``s_lo..s_hi`` more than RANGE_SPAN_MAX times wider
    than the log's own ratings ``lo..hi``. The model learns in units of the scale: a log
    filling a sliver of it (1..5 on 1..1e6) trained in a band of ~1e-6 units and a
    1-5 user was predicted 6064."""
    if hi > lo and s_hi - s_lo > RANGE_SPAN_MAX * (hi - lo):
        raise MetarecError(
            f"{where}: its ratings span {lo:g}..{hi:g}, less than 1/{RANGE_SPAN_MAX} of "
            f"the rating range {s_lo:g}..{s_hi:g}; give the scale the ratings are on"
        )


def unique_id_column(frame: pd.DataFrame, key: str, where: str) -> pd.Series:
    """:func:`id_column` of a side table's key, refusing an id two rows share once read
    (stripped; 12.0 is 12): such rows would become one item or user, merged silently."""
    ids = id_column(frame, key)
    dup = ids.duplicated()
    if dup.any():
        pos = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero((ids == ids.iloc[pos]).to_numpy())[0])
        raise MetarecError(
            f"{where}: {key} {frame[key].iloc[pos]!r} appears twice ({_at(frame, first)} "
            f"and {_at(frame, pos)}, read as {ids.iloc[pos]!r})"
        )
    return ids


def read_table(
    path: str | os.PathLike,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str = "rating",
    time_col: str | None = "timestamp",
    label_col: str | None = None,
    domain_col: str | None = None,
    sep: str | None = None,
    encoding: str = "utf-8",
    rating_range: tuple[float, float] | None = None,
    items: str | os.PathLike | None = None,
    item_id_col: str | None = None,
    text_cols: tuple[str, ...] | list[str] = (),
    categorical_cols: tuple[str, ...] | list[str] = (),
    numeric_cols: tuple[str, ...] | list[str] = (),
    name: str | None = None,
) -> RawData:
    """A user's own interaction log (CSV/TSV/Parquet) as :class:`RawData`.

    Explicit feedback by default (``rating_col``, range inferred from the data unless
    ``rating_range`` is given). With ``label_col`` the log is implicit: labels must be 0/1;
    a column named ``label`` does so unnamed where the log has no ``rating`` column, as in
    `metarec fit`.
    ``time_col`` is used when the column exists (numbers = unix seconds, or date strings);
    otherwise the row order is the time order (``has_time=False``). Only the default
    ``"timestamp"`` may be absent: another name given and missing is an error. ``domain_col`` tags
    each row with a domain (a column named ``domain`` does so unnamed, as in `metarec fit`); the item side file, if given, then gets each item's domain too.
    ``items`` is that side file (CSV/TSV/Parquet keyed by ``item_id_col``, default
    ``item_col``, or ``item_id`` where it has no such column); ``text_cols``/``categorical_cols``/``numeric_cols`` name its columns;
    with none named, every column's role is inferred as ``metarec fit --items`` infers it.
    ``sep`` (one character) reads the side file too where its header is split by it (else
    its suffix decides, as for the log without ``sep``); ``encoding`` reads both.
    Parameter names match the CLI flags (--items, --text-cols).
    """
    path = Path(path)
    frame = strip_columns(_read_any(path, sep, encoding))
    if (
        label_col is None
        and rating_col == "rating"
        and "label" in frame.columns
        and "rating" not in frame.columns
    ):
        # as `metarec fit` reads T: a label column makes the log implicit without being
        # named (info, split and evaluate's csv loader asked for a rating column). Where
        # the rating column is there too, it is read, as before (--label-col picks the
        # labels)
        label_col = "label"
    value_col = label_col if label_col is not None else rating_col
    require_columns(frame, [user_col, item_col, value_col])
    roles = {"user_col": user_col, "item_col": item_col}
    roles["label_col" if label_col is not None else "rating_col"] = value_col
    if time_col is not None and time_col in frame.columns:
        roles["time_col"] = time_col
    if domain_col is not None:
        roles["domain_col"] = domain_col
    named = list(roles.values())
    twice = next((c for c in named if named.count(c) > 1), None)
    if twice is not None:
        # --item-col uid read the user ids as items, --rating-col uid as ratings, silently
        both = " and ".join(k for k, v in roles.items() if v == twice)
        raise MetarecError(
            f"{path}: column {twice!r} is named as {both}: give each column one role, once"
        )
    if domain_col is None and "domain" in frame.columns:
        # as `metarec fit` reads T: a domain column is the rows' domain without being
        # named (info, split and evaluate's csv loader read every row as "default", and a
        # cross-domain split then found no source domain)
        domain_col = "domain"
    if domain_col is not None:
        require_columns(frame, [domain_col])
    user_ids = id_column(frame, user_col)
    item_ids = id_column(frame, item_col)
    values = number_column(frame, value_col, bools=label_col is not None)  # labels: 1 / 0
    check_float32(frame, value_col, values)
    if label_col is not None:
        off = ~np.isin(values, (0.0, 1.0))
        if off.any():
            pos = int(np.flatnonzero(off)[0])
            raise MetarecError(
                f"{path}: {_at(frame, pos)}: label column {label_col!r} must be 0 or 1, "
                f"got {frame[label_col].iloc[pos]!r}"
            )
        feedback, rng = "implicit", (0.0, 1.0)
    else:
        feedback = "explicit"
        rng = (float(values.min()), float(values.max())) if rating_range is None else rating_range
        lo, hi = float(rng[0]), float(rng[1])
        pos = first_outside(values, lo, hi)
        if pos is not None:
            raise MetarecError(
                f"{path}: {_at(frame, pos)}: rating {values[pos]:g} is outside "
                f"rating_range {lo:g}..{hi:g}"
            )
        if rating_range is not None:
            check_range_span(str(path), float(values.min()), float(values.max()), lo, hi)
        rng = (lo, hi)
    if time_col is not None and time_col != "timestamp" and time_col not in frame.columns:
        # a named time column is meant to be there: a misspelt one silently turned the
        # split from time order to file order (newest users became random users)
        raise MetarecError(
            f"{path}: time column {time_col!r} is not in the file (columns: "
            f"{', '.join(map(str, frame.columns))}); leave it out to use the row order"
        )
    has_time = time_col is not None and time_col in frame.columns
    ts = _timestamps(frame, time_col) if has_time else None
    domain = None
    if domain_col is not None:
        # read as `metarec fit` reads T's: names, an empty cell "default" (id_column
        # refused the empty cell that fit took)
        from metarec.data.files import domain_names

        domain = domain_names(frame[domain_col])
        if not (domain != "default").any():
            # a column that names no domain (empty, or "default", throughout) is none, as
            # `metarec fit` reads T: the items file's domains then reach the log
            domain = None
    ratings = make_ratings_frame(user_ids, item_ids, values, ts, domain)

    item_frame = None
    # one name given as a string is that column ("title"), not its letters t, i, t, l, e
    text_cols, cat_cols, num_cols = (
        (c,) if isinstance(c, str) else tuple(c)
        for c in (text_cols, categorical_cols, numeric_cols)
    )
    named = [*text_cols, *cat_cols, *num_cols]
    twice = next((c for c in named if named.count(c) > 1), None)
    if twice is not None:
        # two columns of one name reached the features as a frame: a traceback (probe 134)
        raise MetarecError(
            f"item column {twice!r} is named {named.count(twice)} times in text_cols, "
            "categorical_cols and numeric_cols: give each column one role, once"
        )
    if items is not None:
        ipath = Path(items)
        # names stripped as the log's are, and refused where two then read the same (a
        # Parquet file's "title" and "title " was a traceback)
        side = strip_columns(_read_any(ipath, _side_sep(ipath, sep, encoding), encoding))
        key = item_id_col or item_col
        if item_id_col is None and key not in side.columns and "item_id" in side.columns:
            # --item-col names the log's column; an items file keyed by the contract's
            # item_id was refused ("missing column(s) iid")
            key = "item_id"
        require_columns(side, [key, *text_cols, *cat_cols, *num_cols])
        # fit refuses an item named twice (files.read_side); split and info took it, the
        # later row silently replacing the earlier one's text
        ids = unique_id_column(side, key, str(ipath))
        # every rated item must be in the items file, as `metarec fit` requires: info,
        # split, embed and evaluate gave the missing ones empty text without a word (a
        # log writing 7 beside an items file writing 007 lost every item's text)
        from metarec.data.files import check_items_listed

        check_items_listed(ratings["item_id"], ids, path, ipath)
        item_frame = pd.DataFrame({"item_id": ids.to_numpy(object)})
        if not (text_cols or cat_cols or num_cols):
            # none named: the roles are inferred as `metarec fit --items` infers them.
            # Every side column used to be dropped, and evaluate then ran its text models
            # on empty texts with only a PCA warning to show for it
            # (imported here: files.py builds on this module)
            from metarec.data.files import side_roles

            # an "item_id" column beside another key column would overwrite the ids
            rest = side.drop(columns="item_id") if key != "item_id" and "item_id" in side else side
            text_cols, cat_cols, num_cols, inferred = side_roles(rest, key)
            for c in (*text_cols, *cat_cols, *num_cols):
                item_frame[c] = inferred[c].to_numpy()
        else:
            unused = [
                c
                for c in side.columns
                if c not in (key, "domain", *text_cols, *cat_cols, *num_cols)
            ]
            if unused:
                # naming some columns turns inference off for the rest: say which are dropped
                warnings.warn(
                    f"{ipath}: items file column(s) {', '.join(map(repr, unused[:8]))} not "
                    "named and not used (name them as text, categorical or numeric columns, "
                    "or name none to have every role inferred)",
                    stacklevel=2,
                )
            for c in text_cols:
                item_frame[c] = side[c].fillna("").astype(str).to_numpy(object)
            for c in cat_cols:
                item_frame[c] = side[c].astype("string").to_numpy(object)
            for c in num_cols:
                item_frame[c] = _named_number_column(side, c, ipath)
            if "domain" in side.columns:
                # the items file's domain is read whether or not its other columns are
                # named, as the inferred roles read it (it was left out of the unused-column
                # warning, yet dropped: a catalogue's unrated items lost their domain), and
                # always as names, named as a column or not (copied raw, an empty cell
                # became a domain NaN or '' in the log)
                from metarec.data.files import domain_names

                names = domain_names(side["domain"])
                text_cols = tuple(c for c in text_cols if c != "domain")
                cat_cols = tuple(c for c in cat_cols if c != "domain")
                item_frame = item_frame.drop(columns="domain", errors="ignore")
                # one that names no domain (empty throughout) is no domain column, as
                # `metarec fit` reads it
                if (names != "default").any():
                    item_frame["domain"] = names.to_numpy(object)
                    cat_cols = (*cat_cols, "domain")
        # the log's and the items file's domains joined by fit's rules (checked to agree,
        # each filling the other's gaps); imported here: files.py builds on this module
        from metarec.data.files import join_domains

        if join_domains(ratings, item_frame, path, ipath):
            cat_cols = (*cat_cols, "domain")
    elif text_cols or cat_cols or num_cols:
        raise MetarecError("item side columns were given but no items file (--items)")
    elif domain is not None:
        # no items file: the log's domains are still checked (an item in one domain)
        from metarec.data.files import check_log_domains

        check_log_domains(ratings, None, path, items)
    if not name:
        from metarec.text.templates import ITEM_TEMPLATES

        # named after the file, but never a named loader's name: a user's goodbooks.csv
        # took that dataset's text template, and its description column left every text
        name = path.name if path.stem in ITEM_TEMPLATES else path.stem
    return RawData(
        name=name,
        ratings=ratings,
        feedback=feedback,
        rating_range=rng,
        has_time=has_time,
        items=item_frame,
        item_text_columns=text_cols,
        item_categorical_columns=cat_cols,
        item_numeric_columns=num_cols,
        source=str(path),
    )
