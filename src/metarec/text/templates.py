"""Item and user text rendered from side tables: what the text encoder reads.

A template is a string with ``{column}`` fields over the side table's columns, e.g.
``"{title} — {genres}"``. Missing values render as empty and the template's own text is
cleaned of what they leave behind (empty brackets, dangling separators), so
``"Toy Story (1995) — "`` becomes ``"Toy Story (1995)"``; runs of whitespace become one
space. The cells' own text is never edited: a title "-273.15" or "Episode IV -- A New
Hope" reaches the encoder as written (the cleaning once ran over the cells too and dropped
their minus signs). Multi-valued cells written as ``"a|b|c"`` (the loaders' convention,
e.g. MovieLens genres) render as ``"a, b, c"``. A field names a column verbatim: ``{a.b}``
is the column "a.b" (not ``str.format``'s attribute access).

Built-in templates per dataset family are used only when the table has all their columns;
otherwise the generic default joins every text column. A template given by the user must
name existing columns, or :class:`~metarec.types.MetarecError` says which one is missing.
"""

from __future__ import annotations

import math
import re
import string

import numpy as np
import pandas as pd

from metarec.types import MetarecError, SideTable

# Dataset-name prefix -> candidate item templates, first whose columns all exist wins.
# Columns are those the loaders in metarec.data write.
_MOVIELENS = ("{title} — {genres}",)  # title already carries "(1995)"
_GOODBOOKS = ("{title} ({year}) — {authors} — {shelves}", "{title} ({year}) — {authors}")
# by the named loaders' exact dataset names: a prefix had matched a user's own file
# (the csv loader names a dataset after it), so "movielens_log.csv" dropped its
# description column for a genres template, and `embed` and `fit` built different texts
ITEM_TEMPLATES: dict[str, tuple[str, ...]] = {
    "movielens-100k": _MOVIELENS,
    "movielens-1m": _MOVIELENS,
    "goodbooks": _GOODBOOKS,
    "goodbooks-sample": _GOODBOOKS,
    "goodbooks-biography": _GOODBOOKS,
    "amazon-food-kitchen": ("{title}",),
    "amazon-scientific": ("{text}",),
    "lastfm-hetrec": ("{name} — {tags}", "{name}"),
}
SEPARATOR = " — "
DEMOGRAPHIC_COLUMNS = ("age", "gender", "occupation")
_GENDER = {"m": "male", "f": "female"}


def template_fields(template: str) -> list[str]:
    """Column names a template refers to, in order ("{title} ({year})" -> [title, year])."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise MetarecError(f"bad text template {template!r}: {err}") from err
    fields = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise MetarecError(f"bad text template {template!r}: use named fields like {{title}}")
        if spec or conv:
            raise MetarecError(f"bad text template {template!r}: format specs are not supported")
        fields.append(name)
    return fields


def _render_value(v, column: str) -> str:
    """One cell as text: missing -> "", 1995.0 -> "1995", "a|b" -> "a, b"."""
    if v is None or v is pd.NA or v is pd.NaT:
        return ""
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return ""
        return str(int(v)) if float(v).is_integer() else f"{float(v):g}"
    if isinstance(v, list | tuple | np.ndarray):
        return ", ".join(_render_value(x, column) for x in v if _render_value(x, column))
    s = str(v).strip()
    if column == "gender":
        s = _GENDER.get(s.lower(), s)
    return s.replace("|", ", ")


_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]|\{\s*\}")
_SPACES = re.compile(r"\s+")
_REPEATED_SEP = re.compile(r"\s*([—,;:|-])(?:\s*[—,;:|-])+\s*")
_EDGE_SEP = re.compile(r"^[\s—,;:|-]+|[\s—,;:|-]+$")


def clean_text(s: str) -> str:
    """Remove what empty fields leave behind: "A () —  — B, " -> "A — B"."""
    s = _EMPTY_BRACKETS.sub("", s)
    s = _SPACES.sub(" ", s)
    # "A — — B" or "A, , B": keep the first separator of a run
    s = _REPEATED_SEP.sub(lambda m: " — " if m.group(1) == "—" else f"{m.group(1)} ", s)
    s = _EDGE_SEP.sub("", s)
    return _SPACES.sub(" ", s).strip()


# stands for a non-empty cell while the template's own text is cleaned (a private-use
# code point: no separator, bracket or space pattern matches it)
_HOLE = "\ue000"


def _parts(template: str) -> list[tuple[str, str | None]]:
    """(literal text, column after it or None) pairs of a template, checked."""
    fields = iter(template_fields(template))
    return [
        (literal.replace(_HOLE, ""), None if name is None else next(fields))
        for literal, name, _, _ in string.Formatter().parse(template)
    ]


def check_columns(template: str, fields: list[str], columns, hint: str = "") -> None:
    """Refuse a template whose ``fields`` (:func:`template_fields`) name a column not in
    ``columns``, in one line (``hint``, if given, says how to mend it where the caller
    knows more: `embed --text-cols`)."""
    missing = [f for f in dict.fromkeys(fields) if f not in columns]
    if missing:
        raise MetarecError(
            f"text template {template!r} names column(s) {', '.join(missing)} not in the table "
            f"(columns: {', '.join(map(str, columns))})" + (f"; {hint}" if hint else "")
        )


def _render_parts(frame: pd.DataFrame, parts: list[tuple[str, str | None]]) -> list[str]:
    fields = [f for _, f in parts if f is not None]
    template = "".join(lit + ("" if f is None else f"{{{f}}}") for lit, f in parts)
    check_columns(template, fields, frame.columns)
    cols = {f: [_render_value(v, f) for v in frame[f].tolist()] for f in dict.fromkeys(fields)}
    out = []
    for i in range(len(frame)):
        values = [cols[f][i] for f in fields]
        skeleton = "".join(
            lit + (_HOLE if f is not None and cols[f][i] else "") for lit, f in parts
        )
        # the cleaned skeleton keeps every hole, in order: fill them with the cells
        pieces = clean_text(skeleton).split(_HOLE)
        cells = [v for v in values if v]
        text = pieces[0] + "".join(c + p for c, p in zip(cells, pieces[1:], strict=True))
        out.append(_SPACES.sub(" ", text).strip())
    return out


def render(frame: pd.DataFrame, template: str) -> list[str]:
    """Template applied to each row of ``frame``, cleaned. Unknown columns raise."""
    return _render_parts(frame, _parts(template))


def generic_parts(columns) -> list[tuple[str, str | None]]:
    """Every given column, joined by " — " (as parts: a column's name is used verbatim,
    whatever characters it holds; pasted into a format string, "desc.long" or "notes[0]"
    had raised a KeyError and "a:b" a template error nobody wrote)."""
    return [("" if i == 0 else SEPARATOR, c) for i, c in enumerate(columns)]


def default_item_template(dataset_name: str, table: SideTable) -> str | None:
    """The dataset family's template when the table has its columns, else None (the
    generic join of every text column: :func:`generic_parts`)."""
    for tpl in ITEM_TEMPLATES.get(dataset_name, ()):
        if all(f in table.frame.columns for f in template_fields(tpl)):
            return tpl
    return None


def item_texts(
    dataset_name: str, table: SideTable | None, n_items: int, template: str | None = None
) -> list[str]:
    """One text per item index (length n_items); "" where an item has no text."""
    if table is None:
        if template:
            raise MetarecError(
                f"{dataset_name}: a text template was given but there is no item table"
            )
        return [""] * n_items
    tpl = template or default_item_template(dataset_name, table)
    parts = _parts(tpl) if tpl else generic_parts(table.text_columns)
    if not parts:
        return [""] * n_items
    return _render_parts(table.frame, parts)


def user_texts(table: SideTable | None, template: str | None = None) -> list[str] | None:
    """One text per user index, or None when users have nothing to say.

    Default: the user table's text columns when it has some, else demographics
    ("age 24, male, technician") from whichever of age/gender/occupation exist.
    """
    if table is None:
        if template:
            raise MetarecError("a user text template was given but the dataset has no user table")
        return None
    if template:
        return render(table.frame, template)
    if table.text_columns:
        return _render_parts(table.frame, generic_parts(table.text_columns))
    present = [c for c in DEMOGRAPHIC_COLUMNS if c in table.frame.columns]
    if not present:
        return None
    rows = []
    for rec in table.frame[present].itertuples(index=False):
        vals = {c: _render_value(v, c) for c, v in zip(present, rec, strict=True)}
        parts = [f"age {vals[c]}" if c == "age" else vals[c] for c in present if vals[c]]
        rows.append(", ".join(parts))
    return rows
