"""Dataset registry: an explicit name -> loader table, plus summaries of loaded data.

Each loader parses files into :class:`~metarec.data.raw.RawData`; :func:`load_dataset`
turns that into a re-indexed :class:`~metarec.types.Dataset` (optionally after a
preprocessing function). Names are looked up exactly; there is no guessing.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metarec.data.amazon import read_food_kitchen, read_unisrec
from metarec.data.download import fetch
from metarec.data.goodbooks import read_goodbooks, read_goodbooks_biography, read_goodbooks_sample
from metarec.data.lastfm import read_lastfm
from metarec.data.movielens import ML_1M_URL, ML_100K_URL, read_movielens_1m, read_movielens_100k
from metarec.data.raw import RawData, build_dataset
from metarec.data.tabular import DATA_DIR_ENV, read_table
from metarec.types import Dataset, MetarecError

__all__ = [
    "DATA_DIR_ENV",
    "DATASETS",
    "DatasetSpec",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "read_raw",
]

_GROUPLENS = "GroupLens terms: research use only, no redistribution, cite Harper & Konstan 2015"
_AMAZON = "Amazon review data (McAuley lab): research use only, not redistributable"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    license: str
    read: Callable[..., RawData]  # read(path, **options) -> RawData
    folder: str | None = None  # default sub-folder of $METAREC_DATA_DIR; None: path required
    needs_path: bool = True  # False only for data shipped inside the package
    url: str | None = None  # public download (zip) for read_raw(..., download=True)
    # files the folder must hold, each a tuple of alternatives (goodbooks: ratings.csv or
    # ratings_prefix.csv): what `metarec datasets` checks before saying "found"
    files: tuple[tuple[str, ...], ...] = ()

    def missing(self, folder: Path) -> list[str]:
        """The required files ``folder`` lacks ("a or b" for alternatives)."""
        return [
            " or ".join(alts)
            for alts in self.files
            if not any((folder / f).is_file() for f in alts)
        ]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "goodbooks-sample",
            "goodbooks-10k, first 49,886 ratings (990 users, 4,278 books, 1-5); bundled",
            "CC BY-SA 4.0 (goodbooks-10k, Zygmunt Zając)",
            read_goodbooks_sample,
            needs_path=False,
        ),
        DatasetSpec(
            "movielens-100k",
            "MovieLens 100K: 100,000 ratings 1-5, 943 users, 1,682 movies, titles, genres, demographics",
            _GROUPLENS,
            read_movielens_100k,
            folder="ml-100k",
            url=ML_100K_URL,
            files=(("u.data",), ("u.item",), ("u.user",)),
        ),
        DatasetSpec(
            "movielens-1m",
            "MovieLens 1M: 1,000,209 ratings 1-5, 6,040 users, titles, genres, demographics",
            _GROUPLENS,
            read_movielens_1m,
            folder="ml-1m",
            url=ML_1M_URL,
            files=(("ratings.dat",), ("movies.dat",)),
        ),
        DatasetSpec(
            "goodbooks",
            "goodbooks-10k ratings 1-5 with book titles/authors (ratings.csv + books.csv)",
            "CC BY-SA 4.0 (goodbooks-10k, Zygmunt Zając)",
            read_goodbooks,
            folder="goodbooks-10k",
            files=(("ratings.csv", "ratings_prefix.csv"),),
        ),
        DatasetSpec(
            "goodbooks-biography",
            "goodbooks-10k biography/memoir subset: 233,383 ratings, 399 books, top shelves",
            "CC BY-SA 4.0 (goodbooks-10k, Zygmunt Zając)",
            read_goodbooks_biography,
            folder="goodbooks-biography",
            files=(("ratings.csv", "ratings_prefix.csv"),),
        ),
        DatasetSpec(
            "amazon-food-kitchen",
            "Amazon Food-Kitchen (C2DSR): 2 domains, 9,398 overlapping users, implicit, titles",
            _AMAZON,
            read_food_kitchen,
            folder="amazon-food-kitchen-cdsr",
            files=tuple(
                (f,)
                for f in (
                    "train_A.txt",
                    "train_B.txt",
                    "train_overlap.txt",
                    "valid.txt",
                    "test.txt",
                    "items_A_food.tsv",
                    "items_B_kitchen.tsv",
                )
            ),
        ),
        DatasetSpec(
            "amazon-scientific",
            "Amazon 2018 Industrial & Scientific (UniSRec): implicit, title+categories+brand",
            _AMAZON,
            read_unisrec,
            folder="amazon2018-scientific-unisrec",
            files=tuple(
                (f"Scientific.{x}",)
                for x in (
                    "user2index",
                    "item2index",
                    "train.inter",
                    "valid.inter",
                    "test.inter",
                    "text",
                )
            ),
        ),
        DatasetSpec(
            "lastfm-hetrec",
            "HetRec 2011 Last.fm: 92,834 user-artist pairs (implicit), artist names + top tags",
            "Last.fm/HetRec 2011: non-commercial use, cite Last.fm and HetRec'11",
            read_lastfm,
            folder="hetrec2011-lastfm-2k",
            files=(("user_artists.dat",), ("artists.dat",)),
        ),
        DatasetSpec(
            "csv",
            "your own CSV/TSV log: --path FILE plus column options (user_col, item_col, ...)",
            "yours",
            read_table,
        ),
        DatasetSpec(
            "parquet",
            "your own Parquet log: --path FILE plus column options (user_col, item_col, ...)",
            "yours",
            read_table,
        ),
    )
}


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise MetarecError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def list_datasets() -> list[dict]:
    """One dict per registered dataset: name, description, license, needs_path, folder."""
    return [
        {
            "name": s.name,
            "description": s.description,
            "license": s.license,
            "needs_path": s.needs_path,
            "folder": s.folder,
            "url": s.url,
        }
        for s in DATASETS.values()
    ]


def read_raw(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    download: bool = False,
    sha256: str | None = None,
    allow_unverified: bool = False,
    **options,
) -> RawData:
    """Parse dataset ``name`` into RawData.

    ``path`` defaults to ``$METAREC_DATA_DIR/<folder>``. With ``download=True`` and no
    path, datasets with a public URL are fetched into the cache (``sha256`` required unless
    ``allow_unverified=True``). ``options`` go to the loader (e.g. the column mapping of
    ``csv``); an option the loader does not take is an error.
    """
    spec = _spec(name)
    if path is None and download:
        if spec.url is None:
            raise MetarecError(f"{name}: no public download; give the data's path")
        path = fetch(spec.url, sha256, allow_unverified=allow_unverified)
    if path is None and spec.folder is None and spec.needs_path:
        raise MetarecError(
            f"{name}: no path to the file to load (--path, or path in an experiment's [data])"
        )
    accepted = inspect.signature(spec.read).parameters
    unknown = sorted(k for k in options if k not in accepted or k == "path")
    if unknown:
        allowed = ", ".join(k for k in accepted if k != "path") or "none"
        raise MetarecError(f"{name}: unknown option(s) {', '.join(unknown)} (allowed: {allowed})")
    options = _typed_options(name, spec.read, options)
    raw = spec.read(path, **options)
    if spec.folder is not None or not spec.needs_path:  # a named release, not csv/parquet
        _check_rated_ids_have_rows(name, raw)
    return raw


def _typed_options(name: str, read: Callable, options: dict) -> dict:
    """``options`` checked and converted against the loader's annotations, as a config
    table is (:func:`metarec.config.from_dict`): an experiment's ``[data].options`` is
    an untyped table, and ``rating_range = "1-5"``, ``sep = 5`` or ``label_col = 1``
    reached the loader and failed inside it or pandas with a traceback."""
    import codecs
    import typing

    from metarec.config import _coerce

    hints = typing.get_type_hints(read)
    out = {
        k: _coerce(v, hints[k], f"{name}: option {k}") if k in hints else v
        for k, v in options.items()
    }
    if "encoding" in out:
        try:
            codecs.lookup(out["encoding"])
        except LookupError:
            raise MetarecError(
                f"{name}: option encoding: unknown encoding {out['encoding']!r}"
            ) from None
    return out


def _check_rated_ids_have_rows(name: str, raw: RawData) -> None:
    """A named release describes every item it rates (each SOURCE.md says so): a rated
    item with no row in the item file means that file was cut short or swapped, and it
    had loaded silently, the item left without text (882 of ML-100K's 1,682 movies with
    u.item cut to 800 lines)."""
    # and every rating user in the user file, where the release has one: a u.user cut
    # to 900 lines loaded with 43 users' age, gender and occupation silently missing
    for kind, table in (("item", raw.items), ("user", raw.users)):
        key = f"{kind}_id"
        if table is None or key not in table.columns:
            continue
        known = set(table[key].astype(str))
        rated = dict.fromkeys(raw.ratings[key].astype(str))
        missing = [i for i in rated if i not in known]
        if missing:
            raise MetarecError(
                f"{name}: {len(missing)} {kind}(s) with ratings have no row in the {kind} "
                "file (e.g. "
                f"{', '.join(map(repr, missing[:3]))}): is it truncated or from another "
                "release?"
            )


def load_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    preprocess: Callable[[RawData], tuple[RawData, tuple[dict, ...] | list[dict]]] | None = None,
    **options,
) -> Dataset:
    """read_raw, then ``preprocess(raw) -> (raw, report)`` if given, then build_dataset."""
    raw = read_raw(name, path, **options)
    report: tuple[dict, ...] = ()
    if preprocess is not None:
        raw, rep = preprocess(raw)
        report = (rep,) if isinstance(rep, dict) else tuple(rep)
    return build_dataset(raw, report)


def dataset_info(dataset: Dataset) -> dict:
    """Counts and ranges for ``metarec info``; JSON-serialisable.

    ``users``/``items`` count those with at least one interaction; ``catalogue_items``
    (``catalogue_users``) is every indexed item (user), including side-table-only ones.
    """
    inter = dataset.interactions
    n = len(inter)
    rating = inter.rating
    ts = inter.timestamp
    domains = []
    for d, dname in enumerate(dataset.domains):
        mask = inter.domain == d
        domains.append(
            {
                "name": dname,
                "interactions": int(mask.sum()),
                "users": int(np.unique(inter.user_idx[mask]).size),
                "items": int(np.unique(inter.item_idx[mask]).size),
            }
        )
    if len(dataset.domains) > 1:
        # users with events in two domains or more: the ones cross-domain transfer can
        # use. "In every domain" said so only of two domains: on four it counted 47 of
        # the 150 a joint fit transfers through, and a feedback row on a never-rated
        # domain dropped it to 1 (probe 163)
        per_user = np.zeros((dataset.n_users, len(dataset.domains)), dtype=bool)
        per_user[inter.user_idx, inter.domain] = True
        overlapping = int((per_user.sum(axis=1) >= 2).sum())
    else:
        overlapping = None
    it, ut = dataset.item_table, dataset.user_table
    values, counts = np.unique(rating, return_counts=True)
    return {
        "name": dataset.name,
        "interactions": n,
        "users": int(np.unique(inter.user_idx).size),
        "items": int(np.unique(inter.item_idx).size),
        "catalogue_users": dataset.n_users,
        "catalogue_items": dataset.n_items,
        "density": float(n / max(1, dataset.n_users * dataset.n_items)),
        "feedback": dataset.feedback,
        "rating_range": [float(dataset.rating_range[0]), float(dataset.rating_range[1])],
        "observed_ratings": [float(rating.min()), float(rating.max())] if n else None,
        # a histogram only makes sense for a small set of distinct values (1-5 stars, 0/1)
        "rating_counts": {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)}
        if len(values) <= 20
        else None,
        "time": "unix_seconds" if dataset.has_time else "order",
        "time_range": [int(ts.min()), int(ts.max())] if n else None,
        "domains": domains,
        "overlapping_users": overlapping,
        "item_text_columns": list(it.text_columns) if it else [],
        "item_categorical_columns": list(it.categorical_columns) if it else [],
        "item_numeric_columns": list(it.numeric_columns) if it else [],
        "user_text_columns": list(ut.text_columns) if ut else [],
        "user_categorical_columns": list(ut.categorical_columns) if ut else [],
        "user_numeric_columns": list(ut.numeric_columns) if ut else [],
    }
