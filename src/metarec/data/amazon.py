"""Amazon review-derived sets: Food–Kitchen (cross-domain, C2DSR/LLMCDSR) and Scientific (UniSRec).

Both are implicit (every event is a purchase/review, label 1) and carry only the order of
each user's events, no times: ``timestamp`` is the event's position in the log we build,
which keeps every user's sequence in its chronological order (``has_time=False``).
Item ids are the ASINs, so they are meaningful outside these files and unique across
domains (no ASIN is in both Food and Kitchen).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.raw import RawData, make_ratings_frame
from metarec.data.tabular import id_column, read_delimited, read_text, require_columns, resolve_dir
from metarec.data.tabular import require_file as _require
from metarec.types import MetarecError

FOOD_KITCHEN_DOMAINS = ("food", "kitchen")
# (file stem, user-id prefix): one user per line. The five files are disjoint user sets
# (SOURCE.md: indices restart at 1 per file and no raw ids link them), so the file stem is
# part of the user id; train_overlap/valid/test users hold one merged sequence that mixes
# both domains, which is what links a user's Food and Kitchen events.
FOOD_KITCHEN_SEQUENCES = ("train_A", "train_B", "train_overlap", "valid", "test")


def _item_side(path: Path, domain: str) -> pd.DataFrame:
    frame = read_delimited(path, "\t", quoting=False)
    require_columns(frame, ["global_item_id", "asin", "title"])
    return pd.DataFrame(
        {
            "global_item_id": id_column(frame, "global_item_id").to_numpy(object),
            "item_id": id_column(frame, "asin").to_numpy(object),
            "title": frame["title"].fillna("").astype(str).to_numpy(object),
            "domain": domain,
        }
    )


def _sequences(path: Path) -> tuple[list[str], list[str]]:
    """``user<TAB>id,id,...`` lines -> parallel (user, item) lists in file order."""
    users: list[str] = []
    items: list[str] = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise MetarecError(f"{path}: line {lineno}: expected 'user<TAB>item,item,...'")
        seq = [x.strip() for x in parts[1].strip().strip(",").split(",")]
        if any(not x for x in seq):
            raise MetarecError(f"{path}: line {lineno}: empty item id in the sequence")
        users.extend([parts[0].strip()] * len(seq))
        items.extend(seq)
    return users, items


def read_food_kitchen(path: str | os.PathLike | None = None) -> RawData:
    """Two domains ("food", "kitchen") with overlapping users; items carry ``domain``.

    Users are ``<file>:<index>`` (e.g. ``train_overlap:17``); the 9,398 users of
    train_overlap/valid/test have events in both domains. The valid/test targets (the last
    item of each line) are kept as ordinary events: splitting is :mod:`metarec.splits`' job.
    """
    name = "amazon-food-kitchen"
    folder = resolve_dir(path, "amazon-food-kitchen-cdsr", name)
    side = pd.concat(
        [
            _item_side(_require(folder, "items_A_food.tsv", name), "food"),
            _item_side(_require(folder, "items_B_kitchen.tsv", name), "kitchen"),
        ],
        ignore_index=True,
    )
    if side["global_item_id"].duplicated().any() or side["item_id"].duplicated().any():
        raise MetarecError(f"{name}: item ids repeat across items_A_food.tsv/items_B_kitchen.tsv")
    to_asin = dict(zip(side["global_item_id"], side["item_id"], strict=True))
    to_domain = dict(zip(side["global_item_id"], side["domain"], strict=True))

    users: list[str] = []
    gids: list[str] = []
    for stem in FOOD_KITCHEN_SEQUENCES:
        u, i = _sequences(_require(folder, f"{stem}.txt", name))
        users.extend(f"{stem}:{x}" for x in u)
        gids.extend(i)
    g = pd.Series(gids, dtype=object)
    asin = g.map(to_asin)
    if asin.isna().any():
        bad = g[asin.isna()].iloc[0]
        raise MetarecError(f"{name}: sequence item id {bad!r} is not in the item files")
    ratings = make_ratings_frame(
        users, asin.to_numpy(object), np.ones(len(g)), None, g.map(to_domain).to_numpy(object)
    )
    return RawData(
        name=name,
        ratings=ratings,
        feedback="implicit",
        rating_range=(0.0, 1.0),
        has_time=False,
        items=side[["item_id", "title", "domain"]],
        item_text_columns=("title",),
        item_categorical_columns=("domain",),
        source=str(folder),
    )


def read_unisrec(
    path: str | os.PathLike | None = None,
    *,
    prefix: str = "Scientific",
    name: str = "amazon-scientific",
    folder_name: str = "amazon2018-scientific-unisrec",
) -> RawData:
    """A UniSRec-processed Amazon 2018 category (RecBole atomic files ``<prefix>.*``).

    Each ``.inter`` row is (user, last <=50 items, next item); a user's full sequence is
    the shortest row's history followed by every row's target, rows ordered from shortest
    to longest prefix (train rows are stored longest first, then valid, then test). This
    recovers histories the 50-item cap hides (Scientific: 59,427 events, the published
    count). Users and items are the raw reviewer ids and ASINs. Item text ``text`` is
    "title. categories. brand." as UniSRec wrote it.
    """
    folder = resolve_dir(path, folder_name, name)
    user_ids = _index_map(_require(folder, f"{prefix}.user2index", name))
    item_ids = _index_map(_require(folder, f"{prefix}.item2index", name))

    rows: dict[str, list[tuple[list[str], str]]] = {}
    for split in ("train", "valid", "test"):
        p = _require(folder, f"{prefix}.{split}.inter", name)
        frame = read_delimited(p, "\t", quoting=False)
        frame.columns = [c.split(":")[0] for c in frame.columns]  # "user_id:token" -> "user_id"
        require_columns(frame, ["user_id", "item_id_list", "item_id"])
        u = id_column(frame, "user_id").tolist()
        t = id_column(frame, "item_id").tolist()
        h = frame["item_id_list"].fillna("").astype(str).str.split().tolist()
        block: dict[str, list[tuple[list[str], str]]] = {}
        for uu, hh, tt in zip(u, h, t, strict=True):
            block.setdefault(uu, []).append((hh, tt))
        for uu, rs in block.items():
            # train rows are longest-first in the file; put them shortest-first
            rows.setdefault(uu, []).extend(rs[::-1] if split == "train" else rs)

    users: list[str] = []
    items: list[str] = []
    for uu, rs in rows.items():
        seq = list(rs[0][0])
        for hist, target in rs:
            if hist and hist != seq[-len(hist) :]:
                raise MetarecError(
                    f"{name}: user index {uu}: histories in the .inter files do not form one sequence"
                )
            seq.append(target)
        users.extend([uu] * len(seq))
        items.extend(seq)
    u_idx = pd.Series(users, dtype=object)
    i_idx = pd.Series(items, dtype=object)
    u_raw, i_raw = u_idx.map(user_ids), i_idx.map(item_ids)
    for raw, idx, what in ((u_raw, u_idx, "user"), (i_raw, i_idx, "item")):
        if raw.isna().any():
            raise MetarecError(
                f"{name}: {what} index {idx[raw.isna()].iloc[0]!r} is not in {prefix}.{what}2index"
            )
    ratings = make_ratings_frame(u_raw, i_raw, np.ones(len(users)))

    text = read_delimited(_require(folder, f"{prefix}.text", name), "\t", quoting=False)
    text.columns = [c.split(":")[0] for c in text.columns]
    require_columns(text, ["item_id", "text"])
    item_frame = pd.DataFrame(
        {
            "item_id": id_column(text, "item_id").to_numpy(object),
            "text": text["text"].fillna("").astype(str).str.strip().to_numpy(object),
        }
    )
    return RawData(
        name=name,
        ratings=ratings,
        feedback="implicit",
        rating_range=(0.0, 1.0),
        has_time=False,
        items=item_frame,
        item_text_columns=("text",),
        source=str(folder),
    )


def _index_map(path: Path) -> dict[str, str]:
    """``raw_id<TAB>index`` -> {index: raw_id}."""
    frame = read_delimited(path, "\t", names=["raw", "index"], quoting=False)
    raw, index = id_column(frame, "raw"), id_column(frame, "index")
    if index.duplicated().any():
        raise MetarecError(f"{path}: index {index[index.duplicated()].iloc[0]!r} repeats")
    return dict(zip(index, raw, strict=True))
