"""Amazon review-derived sets: Food–Kitchen (cross-domain, C2DSR/LLMCDSR) and Scientific (UniSRec).

Both are implicit (every event is a purchase/review, label 1) and carry only the order of
each user's events, no times: ``timestamp`` is the event's position in the log we build,
which keeps every user's sequence in its chronological order (``has_time=False``).
Item ids are the ASINs, so they are meaningful outside these files and unique across
domains (no ASIN is in both Food and Kitchen).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.raw import RawData, make_ratings_frame
from metarec.data.tabular import id_column, read_delimited, read_text, require_columns, resolve_dir
from metarec.data.tabular import require_file as _require
from metarec.types import MetarecError

# (file stem, user-id prefix): one user per line. The five files are disjoint user sets
# (SOURCE.md: indices restart at 1 per file and no raw ids link them), so the file stem is
# part of the user id; train_overlap/valid/test users hold one merged sequence that mixes
# both domains, which is what links a user's Food and Kitchen events.
FOOD_KITCHEN_SEQUENCES = ("train_A", "train_B", "train_overlap", "valid", "test")
# SOURCE.md: train_A holds Food ids only, train_B Kitchen ids only; the rest mix both.
FOOD_KITCHEN_SINGLE_DOMAIN = {"train_A": "food", "train_B": "kitchen"}
FOOD_KITCHEN_ITEM_FILES = {"food": "items_A_food.tsv", "kitchen": "items_B_kitchen.tsv"}
# The release's count files (SOURCE.md), one integer a line: num.txt = items per domain,
# instance_num.txt = users (lines) of the three training files. Each is optional (a folder
# rebuilt without it still loads), but when present the files read must agree with it:
# it is what tells a file cut at a line boundary from a complete one.
FOOD_KITCHEN_COUNTS = {
    "num.txt": ("items_A_food.tsv", "items_B_kitchen.tsv"),
    "instance_num.txt": ("train_A", "train_B", "train_overlap"),
}


def _counts(folder: Path, filename: str) -> dict[str, int]:
    """A count file as {counted file: count}; {} when the folder has no such file."""
    path = folder / filename
    if not path.is_file():
        return {}
    what = FOOD_KITCHEN_COUNTS[filename]
    counts: list[int] = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        if not re.fullmatch(r"[0-9]+", line.strip()):
            raise MetarecError(f"{path}: line {lineno}: expected a count, got {line[:40]!r}")
        counts.append(int(line))
    if len(counts) != len(what):
        raise MetarecError(
            f"{path}: expected {len(what)} counts (for {', '.join(what)}), got {len(counts)}"
        )
    return dict(zip(what, counts, strict=True))


def _item_side(path: Path, domain: str, expected: int | None) -> pd.DataFrame:
    frame = read_delimited(path, "\t", quoting=False)
    require_columns(frame, ["global_item_id", "asin", "title"])
    if expected is not None and len(frame) != expected:
        raise MetarecError(
            f"{path}: {len(frame)} items but num.txt says {expected} (truncated or replaced file?)"
        )
    untitled = frame["title"].isna().to_numpy()
    if untitled.any():
        # every item of the release has a title (SOURCE.md); a row without one is a line
        # cut short, whose other fields cannot be trusted either
        pos = int(np.flatnonzero(untitled)[0])
        raise MetarecError(
            f"{path}: line {pos + 2}: no title (expected 'global_item_id<TAB>local_index"
            "<TAB>asin<TAB>title')"
        )
    return pd.DataFrame(
        {
            "global_item_id": id_column(frame, "global_item_id").to_numpy(object),
            "item_id": id_column(frame, "asin").to_numpy(object),
            "title": frame["title"].fillna("").astype(str).to_numpy(object),
            "domain": domain,
        }
    )


def _sequences(path: Path, n_users: int | None) -> tuple[list[str], list[str], list[int]]:
    """``user<TAB>id,id,...`` lines -> parallel (user, item, line number) lists in file order.

    ``n_users``: how many lines (users) the file must have, when a count file says so.
    """
    users: list[str] = []
    items: list[str] = []
    lines: list[int] = []
    seen: set[str] = set()
    text = read_text(path)
    all_lines = text.splitlines()
    for lineno, line in enumerate(all_lines, start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise MetarecError(f"{path}: line {lineno}: expected 'user<TAB>item,item,...'")
        user = parts[0].strip()
        if user in seen:
            # users are file:index, so a repeated index would merge two sequences
            raise MetarecError(f"{path}: line {lineno}: user {user!r} repeats an earlier line")
        seen.add(user)
        seq = [x.strip() for x in parts[1].strip().strip(",").split(",")]
        if any(not x for x in seq):
            raise MetarecError(f"{path}: line {lineno}: empty item id in the sequence")
        users.extend([user] * len(seq))
        items.extend(seq)
        lines.extend([lineno] * len(seq))
    if n_users is not None and len(seen) != n_users:
        raise MetarecError(
            f"{path}: {len(seen)} users (lines) but instance_num.txt says {n_users} "
            "(truncated or replaced file?)"
        )
    # a last line cut off (its last id, "866" of "8661", may still be a valid id of either
    # domain) is refused by require_file, which every release file is read through
    return users, items, lines


def read_food_kitchen(path: str | os.PathLike | None = None) -> RawData:
    """Two domains ("food", "kitchen") with overlapping users; items carry ``domain``.

    Users are ``<file>:<index>`` (e.g. ``train_overlap:17``); the 9,398 users of
    train_overlap/valid/test have events in both domains. The valid/test targets (the last
    item of each line) are kept as ordinary events: splitting is :mod:`metarec.splits`' job.
    train_A/train_B may only hold Food/Kitchen items; num.txt and instance_num.txt, when
    present, must match the item and user counts read.
    """
    name = "amazon-food-kitchen"
    folder = resolve_dir(path, "amazon-food-kitchen-cdsr", name)
    counts = {**_counts(folder, "num.txt"), **_counts(folder, "instance_num.txt")}
    side = pd.concat(
        [
            _item_side(_require(folder, fname, name), domain, counts.get(fname))
            for domain, fname in FOOD_KITCHEN_ITEM_FILES.items()
        ],
        ignore_index=True,
    )
    if side["global_item_id"].duplicated().any() or side["item_id"].duplicated().any():
        raise MetarecError(f"{name}: item ids repeat across items_A_food.tsv/items_B_kitchen.tsv")
    to_asin = dict(zip(side["global_item_id"], side["item_id"], strict=True))
    to_domain = dict(zip(side["global_item_id"], side["domain"], strict=True))

    users: list[str] = []
    asins: list[np.ndarray] = []
    domains: list[np.ndarray] = []
    for stem in FOOD_KITCHEN_SEQUENCES:
        p = _require(folder, f"{stem}.txt", name)
        u, i, lines = _sequences(p, counts.get(stem))
        g = pd.Series(i, dtype=object)
        dom = g.map(to_domain)
        unknown = dom.isna().to_numpy()
        if unknown.any():
            pos = int(np.flatnonzero(unknown)[0])
            raise MetarecError(
                f"{p}: line {lines[pos]}: sequence item id {i[pos]!r} is not in the item files "
                f"({', '.join(FOOD_KITCHEN_ITEM_FILES.values())})"
            )
        want = FOOD_KITCHEN_SINGLE_DOMAIN.get(stem)
        if want is not None:
            off = (dom != want).to_numpy()
            if off.any():
                pos = int(np.flatnonzero(off)[0])
                raise MetarecError(
                    f"{p}: line {lines[pos]}: item id {i[pos]!r} is a {dom.iat[pos]} item, but "
                    f"{stem}.txt holds {want} items only (a cut-off or foreign id?)"
                )
        users.extend(f"{stem}:{x}" for x in u)
        asins.append(g.map(to_asin).to_numpy(object))
        domains.append(dom.to_numpy(object))
    ratings = make_ratings_frame(
        users, np.concatenate(asins), np.ones(len(users)), None, np.concatenate(domains)
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
