"""Item and user text rendered from side tables: what the text encoder reads.

A template is a ``str.format`` string over the side table's columns, e.g.
``"{title} — {genres}"``. Missing values render as empty and the result is cleaned
(empty brackets, dangling separators and repeated spaces removed), so
``"Toy Story (1995) — "`` becomes ``"Toy Story (1995)"``. Multi-valued cells written as
``"a|b|c"`` (the loaders' convention, e.g. MovieLens genres) render as ``"a, b, c"``.

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
ITEM_TEMPLATES: dict[str, tuple[str, ...]] = {
    "movielens": ("{title} — {genres}",),  # title already carries "(1995)"
    "goodbooks": ("{title} ({year}) — {authors} — {shelves}", "{title} ({year}) — {authors}"),
    "amazon-food-kitchen": ("{title}",),
    "amazon-scientific": ("{text}",),
    "lastfm": ("{name} — {tags}", "{name}"),
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


def render(frame: pd.DataFrame, template: str) -> list[str]:
    """Template applied to each row of ``frame``, cleaned. Unknown columns raise."""
    fields = template_fields(template)
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise MetarecError(
            f"text template {template!r} names column(s) {', '.join(missing)} not in the table "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    cols = {f: [_render_value(v, f) for v in frame[f].tolist()] for f in dict.fromkeys(fields)}
    return [clean_text(template.format(**{f: cols[f][i] for f in cols})) for i in range(len(frame))]


def generic_template(columns) -> str:
    """Every given column, joined by " — "; "" when there are none."""
    return SEPARATOR.join(f"{{{c}}}" for c in columns)


def default_item_template(dataset_name: str, table: SideTable) -> str:
    """The dataset family's template when the table has its columns, else the generic one."""
    name = dataset_name.lower()
    for prefix, candidates in ITEM_TEMPLATES.items():
        if not name.startswith(prefix):
            continue
        for tpl in candidates:
            if all(f in table.frame.columns for f in template_fields(tpl)):
                return tpl
    return generic_template(table.text_columns)


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
    if not tpl:
        return [""] * n_items
    return render(table.frame, tpl)


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
        return render(table.frame, generic_template(table.text_columns))
    present = [c for c in DEMOGRAPHIC_COLUMNS if c in table.frame.columns]
    if not present:
        return None
    rows = []
    for rec in table.frame[present].itertuples(index=False):
        vals = {c: _render_value(v, c) for c, v in zip(present, rec, strict=True)}
        parts = [f"age {vals[c]}" if c == "age" else vals[c] for c in present if vals[c]]
        rows.append(", ".join(parts))
    return rows
