"""Every real dataset under $METAREC_DATA_DIR against its published counts (SOURCE.md files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from metarec.data import dataset_info, load_dataset, read_raw
from metarec.types import MetarecError

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def data_dir() -> Path:
    root = os.environ.get("METAREC_DATA_DIR")
    if not root:
        pytest.skip("METAREC_DATA_DIR is not set (point it at the shared data folder)")
    return Path(root)


def _need(data_dir: Path, folder: str) -> Path:
    p = data_dir / folder
    if not p.is_dir():
        pytest.skip(f"{folder}/ not under METAREC_DATA_DIR")
    return p


def test_movielens_100k_published_counts(data_dir):
    ds = load_dataset("movielens-100k", _need(data_dir, "ml-100k"))
    info = dataset_info(ds)
    # u.info / README: 943 users, 1682 items, 100000 ratings, 1997-09-20 .. 1998-04-22
    assert (info["interactions"], info["users"], info["items"]) == (100000, 943, 1682)
    assert info["catalogue_items"] == 1682
    assert info["rating_counts"] == {"1": 6110, "2": 11370, "3": 27145, "4": 34174, "5": 21201}
    assert info["time"] == "unix_seconds" and info["time_range"] == [874724710, 893286638]
    items = ds.item_table.frame
    i543 = ds.items.index("543")
    assert items["title"][i543] == "Misérables, Les (1995)"
    assert items["genres"][ds.items.index("1")] == "Animation|Children's|Comedy"
    users = ds.user_table.frame
    assert (users["gender"] == "M").sum() == 670 and users["occupation"].nunique() == 21


def test_movielens_1m_reports_missing_ratings(data_dir):
    folder = _need(data_dir, "ml-1m")
    if (folder / "ratings.dat").is_file():
        info = dataset_info(load_dataset("movielens-1m", folder))
        assert (info["interactions"], info["users"], info["items"]) == (1000209, 6040, 3706)
        assert info["catalogue_items"] == 3883
    else:
        with pytest.raises(MetarecError, match=r"ratings.dat is required"):
            read_raw("movielens-1m", folder)


def test_goodbooks_sample_folder_matches_bundled(data_dir):
    folder = _need(data_dir, "goodbooks-sample")
    shared = dataset_info(load_dataset("goodbooks-sample", folder))
    bundled = dataset_info(load_dataset("goodbooks-sample"))
    assert (shared["interactions"], shared["users"], shared["items"]) == (49886, 990, 4278)
    assert shared["catalogue_items"] == 10000  # full books.csv; bundled keeps rated books only
    assert bundled["catalogue_items"] == 4278
    for key in ("interactions", "users", "items", "rating_counts"):
        assert shared[key] == bundled[key]


def test_goodbooks_biography_published_counts(data_dir):
    ds = load_dataset("goodbooks-biography", _need(data_dir, "goodbooks-biography"))
    info = dataset_info(ds)
    assert (info["interactions"], info["users"], info["items"]) == (233383, 40836, 399)
    assert info["rating_counts"] == {"1": 5007, "2": 13935, "3": 53645, "4": 87558, "5": 73238}
    assert "shelves" in info["item_text_columns"]
    assert (ds.item_table.frame["shelves"] != "").all()


def test_amazon_food_kitchen_published_counts(data_dir):
    info = dataset_info(
        load_dataset("amazon-food-kitchen", _need(data_dir, "amazon-food-kitchen-cdsr"))
    )
    assert info["users"] == 53061 and info["overlapping_users"] == 9398
    dom = {d["name"]: d for d in info["domains"]}
    assert (dom["food"]["interactions"], dom["food"]["items"]) == (98316, 8661)
    assert (dom["kitchen"]["interactions"], dom["kitchen"]["items"]) == (337811, 27637)
    assert info["items"] == info["catalogue_items"] == 8661 + 27637
    assert info["feedback"] == "implicit" and info["time"] == "order"


def test_amazon_scientific_published_counts(data_dir):
    info = dataset_info(
        load_dataset("amazon-scientific", _need(data_dir, "amazon2018-scientific-unisrec"))
    )
    # UniSRec paper: 8,442 users, 4,385 items, 59,427 interactions
    assert (info["interactions"], info["users"], info["items"]) == (59427, 8442, 4385)


def test_lastfm_published_counts(data_dir):
    ds = load_dataset("lastfm-hetrec", _need(data_dir, "hetrec2011-lastfm-2k"))
    info = dataset_info(ds)
    # readme.txt: 1892 users, 17632 artists, 92834 user-artist relations
    assert (info["interactions"], info["users"], info["items"]) == (92834, 1892, 17632)
    assert info["item_text_columns"] == ["name", "tags"]
    raw = read_raw("lastfm-hetrec", _need(data_dir, "hetrec2011-lastfm-2k"), plays="log")
    # sum of listening counts, readme.txt: 69,183,975
    assert round(float(np.expm1(raw.ratings["rating"].to_numpy()).sum())) == 69183975
    top = float(raw.ratings["rating"].max())
    assert raw.rating_range == (0.0, top)  # the scale runs to the largest: one user's
    # an experiment declares it (evaluate refuses a scale only test queries reach)
    folder = _need(data_dir, "hetrec2011-lastfm-2k")
    wide = read_raw("lastfm-hetrec", folder, plays="log", rating_range=(0, 20))
    assert wide.rating_range == (0.0, 20.0)
    with pytest.raises(MetarecError, match=r"outside rating_range 0\.\.5"):
        read_raw("lastfm-hetrec", folder, plays="log", rating_range=(0, 5))
    # below the bottom too: one play is log1p(1) = 0.69, under a scale from 1
    with pytest.raises(MetarecError, match=r"log play count 0\.69.* outside rating_range 1\.\.20"):
        read_raw("lastfm-hetrec", folder, plays="log", rating_range=(1, 20))
    with pytest.raises(MetarecError, match="with plays='log' only"):
        read_raw("lastfm-hetrec", folder, rating_range=(0, 20))


def test_the_files_datasets_checks_for_are_in_every_loadable_release(data_dir):
    # `metarec datasets` says "found" only when these are there: a list naming a file a
    # real release lacks would call a good folder incomplete (ml-1m here lacks ratings.dat,
    # and is incomplete: its loader refuses it)
    from metarec.data import DATASETS

    checked = 0
    for spec in DATASETS.values():
        folder = data_dir / spec.folder if spec.folder else None
        if folder is None or not folder.is_dir() or spec.name == "movielens-1m":
            continue
        assert spec.files and spec.missing(folder) == [], spec.name
        checked += 1
    assert checked >= 4


def test_split_of_a_named_dataset_names_it_in_what_preprocessing_removed(
    data_dir, tmp_path, capsys
):
    # `split amazon-scientific` (no --path) said "291 of 59427 rows of None" (review 135)
    from metarec.cli import main

    _need(data_dir, "amazon2018-scientific-unisrec")
    argv = ["split", "amazon-scientific", "--protocol", "user-cold", "--k", "2", "--query", "2"]
    assert main([*argv, "--out", str(tmp_path / "sp")]) == 0
    err = capsys.readouterr().err
    assert "rows of amazon-scientific removed by preprocessing step 'dedupe'" in err
