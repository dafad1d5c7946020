"""HetRec 2011 Last.fm (hetrec2011-lastfm-2k): who listened to which artist, artist names, tags.

Feedback choice: the data are play counts, not ratings, and the RawData layout has one
value column, so each (user, artist) pair is an implicit event with label 1 (a user's top
50 artists are by construction things they like). The play count is not a rating: it
spans 1..352,698 with a heavy tail, and its scale varies per user. ``plays="log"`` keeps
it instead, as ``log1p(count)`` with ``feedback="explicit"`` and the observed range, for
callers who want graded relevance. Rows have no time (``has_time=False``; the file is
sorted by user, then artist, so "order" here is not chronological).

Item text: the artist name plus its most-used tags (from user_taggedartists.dat, counted
over all users). Tags are user-generated, so in a strict item cold-start protocol they are
side information from the same users; the splits module should treat them as such.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.raw import RawData, make_ratings_frame
from metarec.data.tabular import (
    _bad_cell,
    check_declared_scale,
    check_range_span,
    first_outside,
    id_column,
    number_column,
    optional_file,
    read_delimited,
    require_columns,
    require_file,
    resolve_dir,
    unique_id_column,
)
from metarec.types import MetarecError

N_TAGS = 5  # tags per artist in the text; beyond five they are mostly one-user noise


def read_lastfm(
    path: str | os.PathLike | None = None,
    *,
    plays: str = "label",
    rating_range: tuple[float, float] | None = None,
) -> RawData:
    """``plays="log"``: ratings log1p(play count), on the scale ``rating_range`` (default
    0 to the largest; an experiment names it, since the largest may be a test user's)."""
    name = "lastfm-hetrec"
    if plays not in ("label", "log"):
        raise MetarecError(f"{name}: plays must be 'label' or 'log', got {plays!r}")
    if rating_range is not None and plays != "log":
        raise MetarecError(f"{name}: rating_range is read with plays='log' only (labels are 0/1)")
    folder = resolve_dir(path, "hetrec2011-lastfm-2k", name)
    ua = read_delimited(require_file(folder, "user_artists.dat", name), "\t", quoting=False)
    require_columns(ua, ["userID", "artistID", "weight"])
    weight = number_column(ua, "weight")
    if (weight <= 0).any():
        # a play count: the release's are all >= 1; 0 or less read as a play (label) or
        # gave NaN and -inf ratings (plays="log")
        pos = int(np.flatnonzero(weight <= 0)[0])
        raise MetarecError(
            _bad_cell(
                ua, pos, "weight", ua["weight"].iloc[pos], "is not a play count (must be >= 1)"
            )
        )
    if plays == "label":
        value, feedback, rng = np.ones(len(ua)), "implicit", (0.0, 1.0)
    else:
        value = np.log1p(weight)
        feedback, rng = "explicit", (0.0, float(value.max()))
        if rating_range is not None:
            lo, hi = (float(v) for v in rating_range)
            check_declared_scale(lo, hi)
            pos = first_outside(value, lo, hi)
            if pos is not None:
                raise MetarecError(
                    f"{name}: log play count {value[pos]:g} (weight {weight[pos]:g}) is "
                    f"outside rating_range {lo:g}..{hi:g}"
                )
            check_range_span(name, float(value.min()), float(value.max()), lo, hi)
            rng = (lo, hi)
    ratings = make_ratings_frame(id_column(ua, "userID"), id_column(ua, "artistID"), value)

    art = read_delimited(require_file(folder, "artists.dat", name), "\t", quoting=False)
    require_columns(art, ["id", "name"])
    items = pd.DataFrame(
        {
            "item_id": unique_id_column(art, "id", str(folder / "artists.dat")).to_numpy(object),
            "name": art["name"].fillna("").astype(str).to_numpy(object),
        }
    )
    text_cols: tuple[str, ...] = ("name",)
    tags = optional_file(folder, "tags.dat", name)
    tagged = optional_file(folder, "user_taggedartists.dat", name)
    if tags is not None and tagged is not None:
        items["tags"] = _top_tags(tags, tagged, items["item_id"])
        text_cols += ("tags",)
    else:
        # the release ships both; without them the artists are their names alone
        missing = " and ".join(
            f for f, p in (("tags.dat", tags), ("user_taggedartists.dat", tagged)) if p is None
        )
        warnings.warn(
            f"{name}: {missing} missing from {str(folder)!r}: the artists load without "
            "their 'tags' text",
            stacklevel=2,
        )
    return RawData(
        name=name,
        ratings=ratings,
        feedback=feedback,
        rating_range=rng,
        has_time=False,
        items=items,
        item_text_columns=text_cols,
        source=str(folder),
    )


def _top_tags(tags_path: Path, tagged_path: Path, artist_ids: pd.Series) -> np.ndarray:
    """Per artist: its N_TAGS most-assigned tag names, comma-separated ("" when untagged)."""
    tags = read_delimited(tags_path, "\t", encoding="latin-1", quoting=False)
    uta = read_delimited(tagged_path, "\t", quoting=False)
    require_columns(tags, ["tagID", "tagValue"])
    require_columns(uta, ["artistID", "tagID"])
    counts = uta.groupby(["artistID", "tagID"], sort=False).size().rename("n").reset_index()
    counts["tag"] = counts["tagID"].map(dict(zip(tags["tagID"], tags["tagValue"], strict=True)))
    counts = counts.dropna(subset=["tag"])
    # Most-assigned first; ties broken by tag name so the text is reproducible.
    counts = counts.sort_values(["artistID", "n", "tag"], ascending=[True, False, True])
    top = counts.groupby("artistID", sort=False)["tag"].agg(lambda s: ", ".join(s.iloc[:N_TAGS]))
    return artist_ids.map(top).fillna("").to_numpy(object)
