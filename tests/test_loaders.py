"""Loaders on small hand-written files: parsed values, counts and every bad-input error."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pytest

from metarec.data import (
    DATASETS,
    dataset_info,
    list_datasets,
    load_dataset,
    read_raw,
)
from metarec.data.amazon import read_food_kitchen, read_unisrec
from metarec.data.goodbooks import bundled_sample_dir, read_goodbooks
from metarec.data.lastfm import read_lastfm
from metarec.data.movielens import ML_100K_GENRES, read_movielens_1m, read_movielens_100k
from metarec.data.raw import RawData, build_dataset, make_ratings_frame
from metarec.data.tabular import read_table
from metarec.types import MetarecError


def write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# ----------------------------------------------------------------------------- MovieLens


@pytest.fixture
def ml100k(tmp_path):
    d = tmp_path / "ml-100k"
    d.mkdir()
    write(d / "u.data", "1\t10\t5\t900\n2\t10\t3\t800\n1\t20\t4\t1000\n")
    flags_10 = ["0"] * 19
    flags_10[3] = flags_10[4] = flags_10[5] = "1"  # Animation, Children's, Comedy
    flags_20 = ["0"] * 19
    flags_20[8] = "1"  # Drama
    write(
        d / "u.item",
        "10|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags_10) + "\n"
        "20|Misérables, Les (1995)|01-Jan-1995||http://y|" + "|".join(flags_20) + "\n"
        '30|Nobody Rated "This" (1970)|||http://z|' + "|".join(["0"] * 19) + "\n",
        encoding="latin-1",
    )
    write(d / "u.user", "1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    return d


def test_movielens_100k_parses_ratings_items_users(ml100k):
    raw = read_movielens_100k(ml100k)
    assert raw.feedback == "explicit" and raw.has_time and raw.rating_range == (1.0, 5.0)
    assert raw.ratings["timestamp"].tolist() == [900, 800, 1000]
    assert raw.ratings["user_id"].tolist() == ["1", "2", "1"]
    items = raw.items.set_index("item_id")
    assert items.loc["10", "genres"] == "Animation|Children's|Comedy"
    assert items.loc["20", "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert items.loc["30", "title"] == 'Nobody Rated "This" (1970)'  # quotes kept
    assert items["year"].tolist() == [1995.0, 1995.0, 1970.0]
    users = raw.users.set_index("user_id")
    assert users.loc["2", "age"] == 53.0 and users.loc["2", "zip_prefix"] == "T"
    assert raw.item_text_columns == ("title", "genres")


def test_movielens_100k_dataset_info_counts_rated_and_catalogue(ml100k):
    info = dataset_info(build_dataset(read_movielens_100k(ml100k)))
    assert info["interactions"] == 3
    assert info["users"] == 2
    assert info["items"] == 2  # item 30 has no rating
    assert info["catalogue_items"] == 3
    assert info["time"] == "unix_seconds" and info["time_range"] == [800, 1000]
    assert info["rating_counts"] == {"3": 1, "4": 1, "5": 1}
    assert info["domains"] == [{"name": "default", "interactions": 3, "users": 2, "items": 2}]
    assert info["user_categorical_columns"] == ["gender", "occupation", "zip_prefix"]
    assert info["user_numeric_columns"] == ["age"]


def test_movielens_100k_rating_out_of_scale_names_line(ml100k):
    write(ml100k / "u.data", "1\t10\t5\t900\n2\t10\t7\t800\n")
    with pytest.raises(MetarecError, match=r"u.data: line 2: rating 7 is outside 1..5"):
        read_movielens_100k(ml100k)


def test_movielens_100k_non_numeric_timestamp_names_line(ml100k):
    write(ml100k / "u.data", "1\t10\t5\t900\n2\t10\t3\tyesterday\n")
    with pytest.raises(MetarecError, match=r"line 2: column 'timestamp' value 'yesterday'"):
        read_movielens_100k(ml100k)


def test_movielens_100k_missing_file(ml100k):
    (ml100k / "u.user").unlink()
    with pytest.raises(MetarecError, match=r"required file 'u.user' not found"):
        read_movielens_100k(ml100k)


def _append(path, data: bytes):
    with open(path, "ab") as fh:
        fh.write(data)


def test_movielens_100k_item_row_with_too_few_fields_names_line(ml100k):
    # the tester's repro: a garbage line became a phantom catalogue item
    _append(ml100k / "u.item", b"\xff\xfe\x00garbage\tline\n")
    with pytest.raises(
        MetarecError,
        match=r"u.item: line 4: expected 24 '\|'-separated fields \(id, title, release date, "
        r"video release date, url, 19 genre flags\), got 1$",
    ):
        read_movielens_100k(ml100k)


def test_movielens_100k_item_row_missing_one_field_in_the_middle(ml100k):
    lines = (ml100k / "u.item").read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"||", b"|", 1)  # drop the empty video release date: 23 fields
    (ml100k / "u.item").write_bytes(b"\n".join(lines))
    with pytest.raises(MetarecError, match=r"u.item: line 2: expected 24 .* got 23$"):
        read_movielens_100k(ml100k)


def test_movielens_100k_item_row_check_skips_blank_lines_in_the_count(ml100k):
    text = (ml100k / "u.item").read_bytes()
    (ml100k / "u.item").write_bytes(b"\n" + text.replace(b"\n", b"\n\n", 1) + b"40|Cut\n")
    with pytest.raises(MetarecError, match=r"u.item: line 6: expected 24 .* got 2$"):
        read_movielens_100k(ml100k)


def test_movielens_100k_genre_flag_not_0_or_1(ml100k):
    text = (ml100k / "u.item").read_bytes().replace(b"|0\n", b"|x\n", 1)  # item 10's last flag
    (ml100k / "u.item").write_bytes(text)
    with pytest.raises(MetarecError, match=r"u.item: line 1: genre flag 19 \(Western\) is 'x'"):
        read_movielens_100k(ml100k)


@pytest.mark.parametrize(
    "file, line, message",
    [
        ("u.data", "2\t10\t3\n", r"u.data: line 4: expected 4 '\\t'-separated fields .* got 3$"),
        ("u.user", "3|40|F|writer\n", r"u.user: line 3: expected 5 '\|'-separated .* got 4$"),
    ],
)
def test_movielens_100k_short_rows_in_data_and_user_files(ml100k, file, line, message):
    _append(ml100k / file, line.encode())
    with pytest.raises(MetarecError, match=message):
        read_movielens_100k(ml100k)


ML100K_GENRE_FILE = "".join(f"{g}|{i}\n" for i, g in enumerate(ML_100K_GENRES)) + "\n"


def test_movielens_100k_reads_genre_names_from_u_genre(ml100k):
    write(ml100k / "u.genre", ML100K_GENRE_FILE.replace("Children's", "Kids"))
    items = read_movielens_100k(ml100k).items.set_index("item_id")
    assert items.loc["10", "genres"] == "Animation|Kids|Comedy"


@pytest.mark.parametrize(
    "size, message",
    [
        # cut at a line boundary: well-formed, too few genres
        (10, r"u.genre: lists 1 genre\(s\) but .*u.item line 1 has 19 genre flag columns"),
        # cut mid-line: refused as every release file cut mid-line is (the line's own
        # check had named it: "line 2: expected 'genre name|1' ... got 'A'")
        (11, r"u.genre ends in the middle of a line \(no final newline: truncated\?\)$"),
        (len(ML100K_GENRE_FILE) // 2, r"u.genre ends in the middle of a line"),
    ],
)
def test_movielens_100k_damaged_u_genre_is_blamed_not_u_item(ml100k, size, message):
    write(ml100k / "u.genre", ML100K_GENRE_FILE[:size])
    with pytest.raises(MetarecError, match=message):
        read_movielens_100k(ml100k)


def test_movielens_100k_u_genre_with_indices_out_of_order(ml100k):
    write(ml100k / "u.genre", ML100K_GENRE_FILE.replace("Action|1\n", "Action|2\n"))
    with pytest.raises(MetarecError, match=r"u.genre: line 2: expected 'genre name\|1'"):
        read_movielens_100k(ml100k)


def test_movielens_100k_full_u_genre_and_a_wide_item_row_blames_u_item(ml100k):
    # with the published 19 genres, a row with an extra flag is u.item's fault
    write(ml100k / "u.genre", ML100K_GENRE_FILE)
    text = (ml100k / "u.item").read_bytes()
    (ml100k / "u.item").write_bytes(text.replace(b"\n", b"|0\n", 1))
    with pytest.raises(MetarecError, match=r"u.item: malformed line"):
        read_movielens_100k(ml100k)


def test_movielens_100k_consistent_non_standard_genre_count_loads(ml100k):
    # u.genre and u.item agree on 20 flag columns: accepted, the names come from u.genre
    write(ml100k / "u.genre", ML100K_GENRE_FILE.rstrip("\n") + "\nNoir-ish|19\n")
    text = (ml100k / "u.item").read_bytes().replace(b"\n", b"|1\n")
    (ml100k / "u.item").write_bytes(text)
    items = read_movielens_100k(ml100k).items.set_index("item_id")
    assert items.loc["20", "genres"] == "Drama|Noir-ish"


@pytest.fixture
def ml1m(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    write(
        d / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "260::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n",
        encoding="latin-1",
    )
    write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    return d


def test_movielens_1m_without_ratings_says_where_to_get_it(ml1m):
    with pytest.raises(MetarecError, match=r"ratings.dat is required.*ml-1m.zip"):
        read_movielens_1m(ml1m)


def test_movielens_1m_parses_double_colon_files(ml1m):
    write(ml1m / "ratings.dat", "1::260::5::978300760\n2::1::3::978302109\n")
    raw = read_movielens_1m(ml1m)
    assert raw.ratings[["user_id", "item_id"]].values.tolist() == [["1", "260"], ["2", "1"]]
    assert raw.ratings["rating"].tolist() == [5.0, 3.0]
    items = raw.items.set_index("item_id")
    assert items.loc["260", "title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert items.loc["260", "year"] == 1977.0
    assert raw.users.set_index("user_id").loc["2", "age"] == "56"  # age bucket code
    assert raw.has_time


def test_movielens_1m_malformed_ratings_line(ml1m):
    expected = r"line 2: expected 4 '::'-separated fields \(user::movie::rating::timestamp\)$"
    # a field short, tab-separated, a field too many: each named by its line and the
    # format (tabs had read as "column 'rating' is empty", an extra field as pandas'
    # "Expected 7 fields in line 2, saw 9")
    for bad in ("2::1::3", "2\t1\t3\t978300761", "2::1::3::978300761::9"):
        write(ml1m / "ratings.dat", f"1::260::5::978300760\n{bad}\n")
        with pytest.raises(MetarecError, match=r"ratings.dat: " + expected):
            read_movielens_1m(ml1m)
    # cut mid-line (its last timestamp 97830 would read as a date in 1970)
    write(ml1m / "ratings.dat", "1::260::5::978300760\n2::1::3::97830")
    with pytest.raises(MetarecError, match=r"ratings.dat ends in the middle of a line"):
        read_movielens_1m(ml1m)


def test_movielens_1m_malformed_movies_line(ml1m):
    write(ml1m / "ratings.dat", "1::260::5::978300760\n")
    write(ml1m / "movies.dat", "1::Toy Story (1995)\n")
    with pytest.raises(MetarecError, match=r"movies.dat: line 1: expected 3 '::'-separated"):
        read_movielens_1m(ml1m)


# ----------------------------------------------------------------------------- goodbooks


@pytest.fixture
def goodbooks_dir(tmp_path):
    d = tmp_path / "gb"
    d.mkdir()
    write(d / "ratings.csv", "user_id,book_id,rating\n7,1,5\n8,2,3\n7,2,4\n")
    write(
        d / "books.csv",
        "book_id,goodreads_book_id,authors,original_publication_year,original_title,title,language_code\n"
        '1,100,"Collins, S.",2008.0,The Hunger Games,"The Hunger Games (#1)",eng\n'
        "2,200,Anon,,,Untitled,\n"
        "3,300,Nobody,1999.0,X,Never Rated,en-US\n",
    )
    write(
        d / "book_tags.csv",
        "goodreads_book_id,tag_id,count\n100,0,900\n100,1,50\n100,2,70\n200,1,5\n",
    )
    write(d / "tags.csv", "tag_id,tag_name\n0,to-read\n1,dystopia\n2,young-adult\n")
    return d


def test_goodbooks_parses_books_and_top_shelves(goodbooks_dir):
    raw = read_goodbooks(goodbooks_dir)
    assert raw.feedback == "explicit" and not raw.has_time
    assert raw.ratings["timestamp"].tolist() == [0, 1, 2]  # row order
    items = raw.items.set_index("item_id")
    assert items.loc["1", "authors"] == "Collins, S."
    # "to-read" is a generic shelf and is dropped; the rest by count, highest first
    assert items.loc["1", "shelves"] == "young-adult, dystopia"
    assert items.loc["2", "year"] != items.loc["2", "year"]  # NaN: unknown year
    assert items.loc["3", "year"] == 1999.0
    assert raw.item_text_columns == ("title", "original_title", "authors", "shelves")
    info = dataset_info(build_dataset(raw))
    assert (info["users"], info["items"], info["catalogue_items"]) == (2, 2, 3)
    assert info["time"] == "order"


def test_goodbooks_side_files_missing_or_damaged(goodbooks_dir):
    """A missing books.csv or half of the tags pair had loaded without a word (the text
    models then ran on empty or shorter texts), and a count that is not a number was
    dropped with its row."""
    (goodbooks_dir / "tags.csv").rename(goodbooks_dir / "tags.bak")
    with pytest.warns(UserWarning, match=r"tags.csv is missing .* without their 'shelves'"):
        raw = read_goodbooks(goodbooks_dir)
    assert "shelves" not in raw.item_text_columns
    (goodbooks_dir / "book_tags.csv").rename(goodbooks_dir / "book_tags.bak")
    for layout in ("neither", "tags.csv alone"):  # the bundled and shared samples' layouts
        if layout != "neither":
            (goodbooks_dir / "tags.bak").rename(goodbooks_dir / "tags.csv")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert "shelves" not in read_goodbooks(goodbooks_dir).item_text_columns
    (goodbooks_dir / "tags.csv").rename(goodbooks_dir / "tags.bak")
    (goodbooks_dir / "book_tags.bak").rename(goodbooks_dir / "book_tags.csv")
    (goodbooks_dir / "books.csv").rename(goodbooks_dir / "books.bak")
    with pytest.warns(UserWarning, match=r"books.csv is missing .* without titles, authors"):
        assert read_goodbooks(goodbooks_dir).items is None
    (goodbooks_dir / "books.bak").rename(goodbooks_dir / "books.csv")
    (goodbooks_dir / "tags.bak").rename(goodbooks_dir / "tags.csv")
    write(goodbooks_dir / "book_tags.csv", "goodreads_book_id,tag_id,count\n100,1,many\n")
    with pytest.raises(MetarecError, match=r"book_tags.csv: line 2: column 'count' value 'many'"):
        read_goodbooks(goodbooks_dir)


def test_named_loaders_refuse_an_id_their_side_file_repeats(goodbooks_dir, ml100k):
    """The later row had replaced the earlier one's text and side values, exit 0."""
    books = goodbooks_dir / "books.csv"
    books.write_text(books.read_text() + "1,101,Other,2001.0,Y,Impostor,eng\n")
    with pytest.raises(
        MetarecError, match=r"books.csv: book_id '1' appears twice \(line 2 and line 5"
    ):
        read_goodbooks(goodbooks_dir)
    item = ml100k / "u.item"
    item.write_bytes(item.read_bytes() + item.read_bytes().splitlines()[0] + b"\n")  # latin-1
    with pytest.raises(MetarecError, match=r"u.item: item_id '10' appears twice"):
        read_movielens_100k(ml100k)


def test_the_dataset_builder_refuses_a_repeated_side_id():
    raw = RawData(
        name="mine",
        ratings=make_ratings_frame(["u"], ["a"], [1.0]),
        feedback="explicit",
        rating_range=(1.0, 5.0),
        has_time=False,
        items=pd.DataFrame({"item_id": ["a", "a"], "title": ["x", "y"]}),
        item_text_columns=("title",),
    )
    with pytest.raises(
        MetarecError, match=r"mine: item_id 'a' has two rows in the dataset's item table"
    ):
        build_dataset(raw)


def test_goodbooks_accepts_prefix_file_name(goodbooks_dir):
    (goodbooks_dir / "ratings.csv").rename(goodbooks_dir / "ratings_prefix.csv")
    assert len(read_goodbooks(goodbooks_dir).ratings) == 3


def test_goodbooks_without_ratings_file(goodbooks_dir):
    (goodbooks_dir / "ratings.csv").unlink()
    with pytest.raises(MetarecError, match=r"no ratings file .*ratings.csv, ratings_prefix.csv"):
        read_goodbooks(goodbooks_dir)


def test_goodbooks_bad_rating_names_line(goodbooks_dir):
    write(goodbooks_dir / "ratings.csv", "user_id,book_id,rating\n7,1,5\n8,2,0\n")
    with pytest.raises(MetarecError, match=r"ratings.csv: line 3: rating 0 is outside 1..5"):
        read_goodbooks(goodbooks_dir)


def test_goodbooks_missing_column(goodbooks_dir):
    write(goodbooks_dir / "ratings.csv", "user_id,item,rating\n7,1,5\n")
    with pytest.raises(MetarecError, match=r"missing column\(s\) book_id"):
        read_goodbooks(goodbooks_dir)


def test_bundled_sample_loads_without_path_or_env(monkeypatch):
    monkeypatch.delenv("METAREC_DATA_DIR", raising=False)
    t0 = time.perf_counter()
    ds = load_dataset("goodbooks-sample")
    elapsed = time.perf_counter() - t0
    info = dataset_info(ds)
    # published: 49,886 ratings, 990 users, 4,278 books (SOURCE.md of goodbooks-sample)
    assert (info["interactions"], info["users"], info["items"]) == (49886, 990, 4278)
    assert info["catalogue_items"] == 4278
    assert info["rating_counts"] == {"1": 1232, "2": 4089, "3": 13227, "4": 17890, "5": 13448}
    assert ds.item_table.frame["title"].notna().all()
    assert elapsed < 1.0, f"bundled sample took {elapsed:.2f}s"
    lic = (bundled_sample_dir() / "DATA_LICENSE.md").read_text()
    assert "CC BY-SA 4.0" in lic and "zygmuntz/goodbooks-10k" in lic


# ----------------------------------------------------------------------------- Amazon


@pytest.fixture
def food_kitchen(tmp_path):
    d = tmp_path / "fk"
    d.mkdir()
    write(
        d / "items_A_food.tsv",
        'global_item_id\tlocal_index\tasin\ttitle\n0\t0\tF0\tOats\n1\t1\tF1\t12" Tea\n',
    )
    write(
        d / "items_B_kitchen.tsv",
        "global_item_id\tlocal_index\tasin\ttitle\n2\t0\tK0\tPan\n3\t1\tK1\tKnife\n",
    )
    write(d / "train_A.txt", "1\t0,1\n")
    write(d / "train_B.txt", "1\t2,3\n2\t3\n")
    write(d / "train_overlap.txt", "1\t0,2,1\n")
    write(d / "valid.txt", "1\t3,0\n")
    write(d / "test.txt", "1\t1,2,3\n")
    return d


def test_food_kitchen_domains_and_overlap(food_kitchen):
    raw = read_food_kitchen(food_kitchen)
    r = raw.ratings
    assert raw.feedback == "implicit" and not raw.has_time
    assert (r["rating"] == 1.0).all()
    ov = r[r["user_id"] == "train_overlap:1"]
    assert ov["item_id"].tolist() == ["F0", "K0", "F1"]  # merged, order kept
    assert ov["domain"].tolist() == ["food", "kitchen", "food"]
    assert ov["timestamp"].is_monotonic_increasing
    assert raw.items.set_index("item_id").loc["F1", "title"] == '12" Tea'
    assert raw.items["domain"].tolist() == ["food", "food", "kitchen", "kitchen"]
    info = dataset_info(build_dataset(raw))
    # train_A:1, train_B:1, train_B:2, train_overlap:1, valid:1, test:1
    assert info["users"] == info["catalogue_users"] == 6
    assert info["overlapping_users"] == 3
    dom = {d["name"]: d for d in info["domains"]}
    assert dom["food"]["interactions"] == 2 + 2 + 1 + 1
    assert dom["kitchen"]["interactions"] == 3 + 1 + 1 + 2


def test_food_kitchen_unknown_item_in_sequence(food_kitchen):
    write(food_kitchen / "test.txt", "1\t1,99\n")
    with pytest.raises(
        MetarecError, match=r"test.txt: line 1: sequence item id '99' is not in the item files"
    ):
        read_food_kitchen(food_kitchen)


def test_food_kitchen_malformed_sequence_line(food_kitchen):
    write(food_kitchen / "valid.txt", "1\t3,0\n2 3 0\n")
    with pytest.raises(MetarecError, match=r"valid.txt: line 2: expected 'user<TAB>item"):
        read_food_kitchen(food_kitchen)


def _counts(d, items=(2, 2), users=(1, 2, 1)):
    """num.txt / instance_num.txt as the release writes them, for the fixture's files."""
    write(d / "num.txt", "".join(f"{n}\n" for n in items))
    write(d / "instance_num.txt", "".join(f"{n}\n" for n in users))


def test_food_kitchen_with_count_files_loads_the_same(food_kitchen):
    before = read_food_kitchen(food_kitchen).ratings
    _counts(food_kitchen)
    pd.testing.assert_frame_equal(read_food_kitchen(food_kitchen).ratings, before)


@pytest.mark.parametrize(
    "file, content, message",
    [
        # the tester's repro in small: a cut-off id of the other domain in a one-domain file
        ("train_B.txt", "1\t2,3\n2\t3,0\n", r"train_B.txt: line 2: item id '0' is a food item, "),
        ("train_A.txt", "1\t0,3\n", r"train_A.txt: line 1: item id '3' is a kitchen item, but "),
    ],
)
def test_food_kitchen_single_domain_files_hold_their_domain_only(
    food_kitchen, file, content, message
):
    write(food_kitchen / file, content)
    with pytest.raises(MetarecError, match=message):
        read_food_kitchen(food_kitchen)


def test_food_kitchen_truncated_file_is_an_error(food_kitchen):
    # cut mid-line: "2\t3" survives of "2\t3,2\n"; 3 is a Kitchen id, so only the missing
    # final newline gives the cut away
    write(food_kitchen / "train_B.txt", "1\t2,3\n2\t3,2\n")
    data = (food_kitchen / "train_B.txt").read_bytes()
    (food_kitchen / "train_B.txt").write_bytes(data[:9])
    with pytest.raises(MetarecError, match=r"train_B.txt ends in the middle of a line"):
        read_food_kitchen(food_kitchen)
    # cut at a line boundary: only instance_num.txt tells
    (food_kitchen / "train_B.txt").write_bytes(data[:6])
    read_food_kitchen(food_kitchen)  # without the count file nothing can tell
    _counts(food_kitchen, users=(1, 2, 1))
    with pytest.raises(
        MetarecError, match=r"train_B.txt: 1 users \(lines\) but instance_num.txt says 2"
    ):
        read_food_kitchen(food_kitchen)


def test_food_kitchen_item_file_shorter_than_num_txt(food_kitchen):
    _counts(food_kitchen, items=(2, 3))
    with pytest.raises(
        MetarecError, match=r"items_B_kitchen.tsv: 2 items but num.txt says 3 \(truncated"
    ):
        read_food_kitchen(food_kitchen)


def test_food_kitchen_item_row_cut_short(food_kitchen):
    write(
        food_kitchen / "items_B_kitchen.tsv",
        "global_item_id\tlocal_index\tasin\ttitle\n2\t0\tK0\tPan\n3\t1\tK1\n",
    )
    with pytest.raises(MetarecError, match=r"items_B_kitchen.tsv: line 3: no title"):
        read_food_kitchen(food_kitchen)


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("instance_num.txt", "1\n2\n", r"instance_num.txt: expected 3 counts .* got 2$"),
        ("instance_num.txt", "1\ntwo\n1\n", r"instance_num.txt: line 2: expected a count"),
        ("num.txt", "2\n2\n2\n", r"num.txt: expected 2 counts \(for items_A_food.tsv, "),
    ],
)
def test_food_kitchen_malformed_count_files(food_kitchen, file, content, message):
    _counts(food_kitchen)
    write(food_kitchen / file, content)
    with pytest.raises(MetarecError, match=message):
        read_food_kitchen(food_kitchen)


def test_food_kitchen_repeated_user_in_a_file(food_kitchen):
    write(food_kitchen / "train_B.txt", "1\t2,3\n1\t3\n")
    with pytest.raises(MetarecError, match=r"train_B.txt: line 2: user '1' repeats"):
        read_food_kitchen(food_kitchen)


def _unisrec(d, seqs: dict[int, list[int]], cap: int = 50):
    """Write RecBole/UniSRec files for full sequences, capping histories like UniSRec."""
    d.mkdir()
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    parts = {"train": [], "valid": [], "test": []}
    for u, seq in seqs.items():
        n = len(seq)
        for k in range(n - 3, 0, -1):  # train rows longest first, target seq[k]
            parts["train"].append((u, seq[max(0, k - cap) : k], seq[k]))
        parts["valid"].append((u, seq[max(0, n - 2 - cap) : n - 2], seq[n - 2]))
        parts["test"].append((u, seq[max(0, n - 1 - cap) : n - 1], seq[n - 1]))
    for split, rows in parts.items():
        body = "".join(f"{u}\t{' '.join(map(str, h))}\t{t}\n" for u, h, t in rows)
        write(d / f"Scientific.{split}.inter", header + body)
    items = sorted({i for s in seqs.values() for i in s})
    write(d / "Scientific.item2index", "".join(f"ASIN{i}\t{i}\n" for i in items))
    write(d / "Scientific.user2index", "".join(f"REV{u}\t{u}\n" for u in seqs))
    write(
        d / "Scientific.text",
        "item_id:token\ttext:token_seq\n"
        + "".join(f"ASIN{i}\tThing {i}. Tools. Acme. \n" for i in items),
    )


def test_unisrec_recovers_full_sequences_beyond_the_history_cap(tmp_path):
    long_seq = list(range(100, 153))  # 53 items: the test row's history is capped at 50
    _unisrec(tmp_path / "sci", {0: [1, 2, 3, 4, 5], 1: long_seq})
    raw = read_unisrec(tmp_path / "sci")
    r = raw.ratings
    assert r[r["user_id"] == "REV0"]["item_id"].tolist() == [f"ASIN{i}" for i in (1, 2, 3, 4, 5)]
    assert r[r["user_id"] == "REV1"]["item_id"].tolist() == [f"ASIN{i}" for i in long_seq]
    assert len(r) == 5 + 53
    assert raw.items.set_index("item_id").loc["ASIN3", "text"] == "Thing 3. Tools. Acme."


def test_unisrec_inconsistent_histories(tmp_path):
    _unisrec(tmp_path / "sci", {0: [1, 2, 3, 4, 5]})
    write(
        tmp_path / "sci" / "Scientific.test.inter",
        "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t1 2 9 4\t5\n",
    )
    with pytest.raises(MetarecError, match=r"do not form one sequence"):
        read_unisrec(tmp_path / "sci")


def test_unisrec_unknown_item_index(tmp_path):
    _unisrec(tmp_path / "sci", {0: [1, 2, 3, 4, 5]})
    write(tmp_path / "sci" / "Scientific.item2index", "ASIN1\t1\n")
    with pytest.raises(MetarecError, match=r"item index '2' is not in Scientific.item2index"):
        read_unisrec(tmp_path / "sci")


# ----------------------------------------------------------------------------- Last.fm


@pytest.fixture
def lastfm(tmp_path):
    d = tmp_path / "lfm"
    d.mkdir()
    write(
        d / "user_artists.dat", "userID\tartistID\tweight\r\n2\t51\t99\r\n3\t51\t1\r\n3\t52\t7\r\n"
    )
    write(d / "artists.dat", "id\tname\turl\tpictureURL\r\n51\tBjörk\tu\tp\r\n52\tABBA\tu\tp\r\n")
    write(
        d / "tags.dat", "tagID\ttagValue\r\n1\tpop\r\n2\tislandaise\r\n3\telectronic\r\n", "latin-1"
    )
    write(
        d / "user_taggedartists.dat",
        "userID\tartistID\ttagID\tday\tmonth\tyear\r\n"
        + "".join(f"{u}\t51\t{t}\t1\t1\t2009\r\n" for u, t in [(2, 3), (3, 3), (2, 2), (2, 1)]),
    )
    return d


def test_lastfm_implicit_with_name_and_top_tags(lastfm):
    raw = read_lastfm(lastfm)
    assert raw.feedback == "implicit" and raw.ratings["rating"].tolist() == [1.0, 1.0, 1.0]
    items = raw.items.set_index("item_id")
    assert items.loc["51", "name"] == "Björk"
    # electronic x2 first, then the one-count tags by name; latin-1 decoded
    assert items.loc["51", "tags"] == "electronic, islandaise, pop"
    assert items.loc["52", "tags"] == ""


def test_lastfm_log_plays_option(lastfm):
    raw = read_lastfm(lastfm, plays="log")
    assert raw.feedback == "explicit"
    np.testing.assert_allclose(raw.ratings["rating"], np.log1p([99, 1, 7]))
    assert raw.rating_range == (0.0, pytest.approx(np.log1p(99)))
    with pytest.raises(MetarecError, match=r"plays must be 'label' or 'log'"):
        read_lastfm(lastfm, plays="raw")
    # a declared scale is held to the span rule the csv loader and fit apply: these log
    # plays span 0.69..4.6, under 1/100 of 0..1000
    assert read_lastfm(lastfm, plays="log", rating_range=(0, 300)).rating_range == (0.0, 300.0)
    with pytest.raises(MetarecError, match=r"less than 1/100 of the rating range 0\.\.1000"):
        read_lastfm(lastfm, plays="log", rating_range=(0, 1000))


def test_release_file_checks_on_tiny_and_blank_lined_files(tmp_path, lastfm, ml1m):
    from metarec.data.tabular import require_file

    # 1-3 byte files that end in a newline are whole (the last-bytes read had been empty)
    for body in ("\n", "x\n", "ab\n", "abc\n"):
        (tmp_path / "a.txt").write_text(body)
        assert require_file(tmp_path, "a.txt", "demo") == tmp_path / "a.txt"
    (tmp_path / "a.txt").write_text("ab")
    with pytest.raises(MetarecError, match="ends in the middle of a line"):
        require_file(tmp_path, "a.txt", "demo")
    # a blank line before the bad weight: the error names the file's own line
    path = lastfm / "user_artists.dat"
    path.write_text(path.read_text().replace("3\t52\t7", "\n3\t52\t0"))
    with pytest.raises(
        MetarecError, match=r"user_artists.dat: line 5: column 'weight' value '0' is not"
    ):
        read_lastfm(lastfm)
    # an extra field on ml-1m's first line gets the format, as later lines do
    write(ml1m / "ratings.dat", "1::260::5::978300760::9\n")
    with pytest.raises(MetarecError, match=r"ratings.dat: line 1: expected 4 '::'-separated"):
        read_movielens_1m(ml1m)


@pytest.mark.parametrize("weight", ["0", "-3"])
def test_lastfm_weights_must_be_play_counts(lastfm, weight):
    # 0 and -3 had read as plays (a like under "label"; NaN and -inf ratings under "log")
    path = lastfm / "user_artists.dat"
    path.write_text(path.read_text().replace("3\t52\t7", f"3\t52\t{weight}"))
    for plays in ("label", "log"):
        with pytest.raises(
            MetarecError,
            match=rf"user_artists.dat: line 4: column 'weight' value '{weight}' is not a play "
            r"count \(must be >= 1\)$",
        ):
            read_lastfm(lastfm, plays=plays)


def test_lastfm_without_its_tag_files_says_so(lastfm):
    (lastfm / "tags.dat").unlink()
    with pytest.warns(UserWarning, match=r"tags.dat missing from .* without their 'tags' text"):
        raw = read_lastfm(lastfm)
    assert raw.item_text_columns == ("name",)


# ----------------------------------------------------------------------------- generic table


def test_csv_explicit_with_string_ids_and_dates(tmp_path):
    p = write(
        tmp_path / "log.csv",
        "user_id,item_id,rating,timestamp\n"
        "u007,A,4,2020-01-01T00:00:00Z\n12,B,2.5,2020-01-02\n12,A,5,1970-01-01T00:01:40Z\n",
    )
    raw = read_table(p)
    assert raw.ratings["user_id"].tolist() == ["u007", "12", "12"]
    assert raw.ratings["timestamp"].tolist() == [1577836800, 1577923200, 100]
    assert raw.has_time and raw.rating_range == (2.5, 5.0) and raw.feedback == "explicit"


def _stamps(tmp_path, *dates: str):
    rows = "".join(f"u,i{k},3,{d}\n" for k, d in enumerate(dates))
    return read_table(write(tmp_path / "d.csv", "user_id,item_id,rating,timestamp\n" + rows))


def test_a_date_column_is_read_in_one_format(tmp_path):
    """pandas' per-cell parsing read 02/01/2020 month first and 13/01/2020 day first in
    one column, so a user's 13 January rating could lose to their 3 January one."""
    day = 86400
    jan3 = 1578009600
    # day first, told by 13/01: every cell day first
    raw = _stamps(tmp_path, "03/01/2020", "13/01/2020")
    assert raw.ratings["timestamp"].tolist() == [jan3, jan3 + 10 * day]
    raw = _stamps(tmp_path, "13/01/2020", "03/01/2020")
    assert raw.ratings["timestamp"].tolist() == [jan3 + 10 * day, jan3]
    # month first where the first value says so (US dates)
    raw = _stamps(tmp_path, "01/03/2020", "01/13/2020")
    assert raw.ratings["timestamp"].tolist() == [jan3, jan3 + 10 * day]
    # ISO 8601 in its forms (a Z, a time, a date alone) is one format
    raw = _stamps(tmp_path, "2020-01-03", "2020-01-13T00:00:00Z")
    assert raw.ratings["timestamp"].tolist() == [jan3, jan3 + 10 * day]


def test_dates_pandas_cannot_name_a_format_for_are_still_read_in_one(tmp_path):
    """Two-digit years and 12-hour times had no guessed format and fell back to reading
    each cell alone: 02/01/20 month first beside 13/01/20 day first."""
    jan2, jan13 = 1577923200, 1578873600
    for pair in (("02/01/20", "13/01/20"), ("02.01.20", "13.01.20"), ("2 Jan 20", "13 Jan 20")):
        assert _stamps(tmp_path, *pair).ratings["timestamp"].tolist() == [jan2, jan13]
    pm = _stamps(tmp_path, "02/01/2020 10:00 PM", "13/01/2020 9:00 AM")
    assert pm.ratings["timestamp"].tolist() == [jan2 + 22 * 3600, jan13 + 9 * 3600]
    # a space beside the comma is not part of the date
    assert _stamps(tmp_path, " 02/01/2020", "13/01/2020 ").ratings["timestamp"].tolist() == [
        jan2,
        jan13,
    ]


def test_a_parquet_date_column_is_read(tmp_path):
    """A Parquet date32 column arrives as datetime.date objects: stripping the cells as
    strings raised AttributeError (a traceback) before they were read as dates."""
    import datetime

    path = tmp_path / "T.parquet"
    days = [datetime.date(2020, 1, 2), datetime.date(2020, 1, 13)]
    frame = pd.DataFrame({"user_id": "u", "item_id": ["a", "b"], "rating": 3, "timestamp": days})
    frame.to_parquet(path)
    assert read_table(path).ratings["timestamp"].tolist() == [1577923200, 1578873600]


def test_a_parquet_null_timestamp_is_named_empty(tmp_path):
    # a nullable string column's null is pd.NA: it read "value <NA> is neither unix
    # seconds nor a date"
    path = tmp_path / "T.parquet"
    stamps = pd.array(["2020-01-02", None], dtype="string")
    frame = pd.DataFrame({"user_id": "u", "item_id": ["a", "b"], "rating": 3, "timestamp": stamps})
    frame.to_parquet(path)
    with pytest.raises(MetarecError, match="row 2: column 'timestamp' is empty"):
        read_table(path)


def test_dates_written_two_ways_are_refused_and_ambiguous_ones_warned(tmp_path):
    with pytest.raises(MetarecError, match=r"dates are written two ways \(line 2 '2020-01-03'"):
        _stamps(tmp_path, "2020-01-03", "13/01/2020")
    with pytest.raises(MetarecError, match=r"line 3: .*'Jan 13 2020' is not in the date format"):
        _stamps(tmp_path, "02/01/2020", "Jan 13 2020")
    # every date reads either way: month first (pandas' reading), with a warning
    with pytest.warns(UserWarning, match="read month first .*would also read day first"):
        raw = _stamps(tmp_path, "02/01/2020", "03/01/2020")
    assert raw.ratings["timestamp"].tolist() == [1580515200, 1583020800]
    # junk is still named as not a date at all
    with pytest.raises(MetarecError, match="'banana' is neither unix seconds nor a date"):
        _stamps(tmp_path, "13/01/2020", "banana")


def test_csv_without_time_column_uses_order(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,2,3\n4,5,1\n")
    raw = read_table(p)
    assert not raw.has_time and raw.ratings["timestamp"].tolist() == [0, 1]


def test_csv_label_domain_and_item_side_file(tmp_path):
    p = write(
        tmp_path / "log.tsv",
        "uid\tiid\tclicked\tcat\n1\tx\t1\tbooks\n1\ty\t0\tfilms\n2\tx\t1\tbooks\n",
    )
    side = write(tmp_path / "items.csv", "iid,name,price\nx,Dune,9.5\ny,Alien,oops\n")
    raw = read_table(
        p,
        user_col="uid",
        item_col="iid",
        label_col="clicked",
        domain_col="cat",
        items=side,
        text_cols=["name"],
        numeric_cols=["price"],
    )
    assert raw.feedback == "implicit" and raw.rating_range == (0.0, 1.0)
    assert raw.ratings["rating"].tolist() == [1.0, 0.0, 1.0]
    assert raw.ratings["domain"].tolist() == ["books", "films", "books"]
    items = raw.items.set_index("item_id")
    assert items.loc["x", "name"] == "Dune" and items.loc["x", "domain"] == "books"
    assert items.loc["x", "price"] == 9.5 and np.isnan(items.loc["y", "price"])
    info = dataset_info(build_dataset(raw))
    assert [(d["name"], d["interactions"]) for d in info["domains"]] == [("books", 2), ("films", 1)]
    assert info["item_text_columns"] == ["name"]


def test_parquet_with_integer_ids(tmp_path):
    p = tmp_path / "log.parquet"
    pd.DataFrame(
        {"user_id": [1, 2], "item_id": [10, 20], "rating": [3.0, 4.0], "timestamp": [5, 6]}
    ).to_parquet(p)
    raw = read_raw("parquet", p)
    assert raw.ratings["item_id"].tolist() == ["10", "20"]
    assert raw.ratings["timestamp"].tolist() == [5, 6]


def test_parquet_nan_id_names_row(tmp_path):
    p = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": [1.0, np.nan], "item_id": [10, 20], "rating": [3.0, 4.0]}).to_parquet(
        p
    )
    with pytest.raises(MetarecError, match=r"row 2: column 'user_id' has an empty id"):
        read_table(p)


def test_parquet_not_parquet(tmp_path):
    p = write(tmp_path / "log.parquet", "user_id,item_id\n1,2\n")
    with pytest.raises(MetarecError, match=r"not a readable Parquet file"):
        read_table(p)


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("user,item_id,rating\n1,2,3\n", {}, r"log.csv: missing column\(s\) user_id"),
        ("user_id,item_id,rating\n1,2,3\n4,5,6,7\n", {}, r"log.csv: malformed line.*line 3"),
        # the first data row too (pandas only warned there, and dropped the extra field)
        ("user_id,item_id,rating\n1,2,3,9\n4,5,6\n", {}, r"log.csv: malformed line.*more"),
        ("", {}, r"log.csv: file is empty"),
        ("  \n\n", {}, r"log.csv: file is empty"),
        ("user_id,item_id,rating\n", {}, r"log.csv: file is empty \(a header but no rows\)"),
        ("user_id,item_id,rating\n1,2,3\n,5,4\n", {}, r"line 3: column 'user_id' has an empty id"),
        ("user_id,item_id,rating\n1,2,3\n1,5,good\n", {}, r"line 3: column 'rating' value 'good'"),
        (
            "user_id,item_id,rating\n1,2,3\n1,5,9\n",
            {"rating_range": (1, 5)},
            r"line 3: rating 9 is outside rating_range 1..5",
        ),
        (  # a sliver of the declared scale: refused as `fit --rating-range` refuses it
            "user_id,item_id,rating\n1,2,3\n1,5,5\n",
            {"rating_range": (1, 1000)},
            r"log.csv: its ratings span 3..5, less than 1/100 of the rating range 1..1000",
        ),
        (
            "user_id,item_id,click\n1,2,1\n1,5,2\n",
            {"label_col": "click"},
            r"line 3: label column 'click' must be 0 or 1",
        ),
        (
            "user_id,item_id,rating,timestamp\n1,2,3,2020-01-01\n1,5,4,soon\n",
            {},
            r"line 3: column 'timestamp' value 'soon' is neither",
        ),
        ("user_id,item_id,rating\n1,2,3\n", {"domain_col": "cat"}, r"missing column\(s\) cat"),
        (
            "user_id,item_id,rating\n1,2,3\n",
            {"text_cols": ["title"]},
            r"item side columns were given but no items file",
        ),
    ],
)
def test_csv_bad_input(tmp_path, content, kwargs, message):
    p = write(tmp_path / "log.csv", content)
    with pytest.raises(MetarecError, match=message):
        read_table(p, **kwargs)


def test_csv_undecodable_byte_names_line(tmp_path):
    p = tmp_path / "log.csv"
    p.write_bytes(b"user_id,item_id,rating\n1,2,3\n1,caf\xe9,4\n")
    with pytest.raises(MetarecError, match=r"log.csv: line 3: cannot decode byte 0xe9 as utf-8"):
        read_table(p)
    assert read_table(p, encoding="latin-1").ratings["item_id"].tolist() == ["2", "café"]


def test_csv_missing_file(tmp_path):
    with pytest.raises(MetarecError, match=r"file not found"):
        read_table(tmp_path / "nope.csv")


def test_item_side_file_missing_declared_column(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,2,3\n")
    side = write(tmp_path / "items.csv", "item_id,name\n2,x\n")
    with pytest.raises(MetarecError, match=r"items.csv: missing column\(s\) title"):
        read_table(p, items=side, text_cols=["title"])


def test_one_column_name_given_as_a_string_is_that_column(tmp_path):
    # text_cols="title" was iterated as letters: "missing column(s) t, i, t, l, e"
    p = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,2,3\n")
    side = write(tmp_path / "items.csv", "item_id,title,year\n2,Dune,1965\n")
    raw = read_table(p, items=side, text_cols="title", numeric_cols="year")
    info = dataset_info(build_dataset(raw))
    assert info["item_text_columns"] == ["title"] and info["item_numeric_columns"] == ["year"]


def test_a_column_named_in_two_roles_or_twice_is_refused(tmp_path):
    # two columns of one name reached the features as a frame: a traceback (probe 134)
    p = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,2,3\n")
    side = write(tmp_path / "items.csv", "item_id,title,genre\n2,Dune,sf\n")
    for roles in (
        {"text_cols": ["title"], "categorical_cols": ["title"]},
        {"text_cols": ["title", "title"]},
        {"categorical_cols": ["genre"], "numeric_cols": ["genre"]},
    ):
        with pytest.raises(MetarecError, match=r"item column '(title|genre)' is named 2 times"):
            read_table(p, items=side, **roles)


def test_a_numeric_column_of_words_is_refused_and_stray_words_are_said(tmp_path):
    # numeric_cols naming a column of words made it all-missing without a word (probe 134)
    p = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,2,3\n1,3,4\n1,4,5\n")
    side = write(
        tmp_path / "items.csv",
        "item_id,genre,year\n2,sf,1965\n3,crime,unknown\n4,sf,NA\n",
    )
    with pytest.raises(MetarecError, match=r"numeric_cols names column 'genre', which holds no"):
        read_table(p, items=side, numeric_cols=["genre", "year"])
    with pytest.warns(UserWarning, match=r"'year': 1 of 2 filled cells are no number .*'unknown'"):
        raw = read_table(p, items=side, categorical_cols=["genre"], numeric_cols=["year"])
    assert np.isnan(raw.items["year"].to_numpy()[1:]).all() and raw.items["year"].iloc[0] == 1965
    with warnings.catch_warnings():  # a true number column with a missing cell says nothing
        warnings.simplefilter("error")
        write(tmp_path / "items.csv", "item_id,genre,year\n2,sf,1965\n3,crime,\n4,sf,NA\n")
        read_table(p, items=side, categorical_cols=["genre"], numeric_cols=["year"])


def test_an_items_file_with_no_columns_named_has_its_roles_inferred_as_fit_does(tmp_path):
    """The csv loader (evaluate, info, split) dropped every side column when none was
    named: evaluate then embedded empty texts. Now roles are inferred as fit infers them."""
    from metarec.data.files import read_side

    p = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,2,3\n1,3,4\n")
    rows = "".join(
        f"{i},A long title about subject number {i},g{i % 2},{1900 + i}\n" for i in range(2, 8)
    )
    side = write(tmp_path / "items.csv", "item_id,title,genre,year\n" + rows)
    info = dataset_info(build_dataset(read_table(p, items=side)))
    _, text, cat, num = read_side(side, "item_id")
    assert info["item_text_columns"] == list(text) == ["title"]
    assert info["item_categorical_columns"] == list(cat) == ["genre"]
    assert info["item_numeric_columns"] == list(num) == ["year"]
    raw = read_table(p, items=side)
    assert raw.items["title"].tolist()[0] == "A long title about subject number 2"
    # naming one column keeps the old meaning: only what is named is used
    with pytest.warns(UserWarning, match=r"column\(s\) 'genre', 'year' not named and not used"):
        named = read_table(p, items=side, text_cols=["title"])
    assert named.item_categorical_columns == () and named.item_numeric_columns == ()
    # keyed by another column, an "item_id" column of the side file is not a feature
    # (inferred, it overwrote the ids)
    keyed = write(tmp_path / "I3.csv", "movie_id,item_id,title\n2,x9,Dune\n3,x8,Emma\n")
    raw = read_table(p, items=keyed, item_id_col="movie_id")
    assert raw.items["item_id"].tolist() == ["2", "3"]
    assert "item_id" not in (*raw.item_text_columns, *raw.item_categorical_columns)


def test_the_csv_loader_checks_the_items_files_domains_against_the_log(tmp_path):
    """As `metarec fit` does: an item the log puts in one domain and the items file in
    another is refused, named; the items file's domain is read whether or not its other
    columns are named (it was dropped when they were, yet left out of the unused warning)."""
    p = write(tmp_path / "log.csv", "user_id,item_id,rating,domain\n1,2,3,books\n1,3,4,films\n")
    good = write(
        tmp_path / "I.csv", "item_id,title,domain\n2,Dune,books\n3,Heat,films\n4,Ran,films\n"
    )
    bad = write(tmp_path / "J.csv", "item_id,title,domain\n2,Dune,films\n3,Heat,films\n")
    for named in ((), ("title",)):
        raw = read_table(p, domain_col="domain", items=good, text_cols=named)
        # the unrated item 4 keeps its domain from the items file
        assert raw.items.set_index("item_id")["domain"].to_dict() == {
            "2": "books",
            "3": "films",
            "4": "films",
        }
        with pytest.raises(
            MetarecError, match=r"item_id '2' is in domain 'books' here but 'films'"
        ):
            read_table(p, domain_col="domain", items=bad, text_cols=named)


def test_a_domain_column_of_the_log_is_read_unnamed_as_fit_reads_it(tmp_path):
    # info, split and evaluate's csv loader read every row as "default" unless domain_col
    # was named, and a cross-domain split then knew only the domain "default"
    p = write(tmp_path / "log.csv", "user_id,item_id,rating,domain\n1,2,3,books\n1,3,4,films\n")
    raw = read_table(p)
    assert sorted(raw.ratings["domain"].unique()) == ["books", "films"]
    assert dataset_info(build_dataset(raw))["domains"][0]["name"] in ("books", "films")
    # read as fit reads it: an empty cell is "default" (it was refused as an empty id),
    # and an item in two domains is refused (it was put in the first seen)
    blank = write(tmp_path / "b.csv", "user_id,item_id,rating,domain\n1,2,3,books\n1,3,4,\n")
    assert read_table(blank).ratings["domain"].tolist() == ["books", "default"]
    two = write(tmp_path / "t.csv", "user_id,item_id,rating,domain\n1,2,3,books\n2,2,4,films\n")
    with pytest.raises(MetarecError, match=r"item_id '2' is in domains \['books', 'films'\]"):
        read_table(two)


def test_a_label_column_of_the_log_is_read_unnamed_as_fit_reads_it(tmp_path):
    # info, split and evaluate's csv loader asked for a rating column
    p = write(tmp_path / "log.csv", "user_id,item_id,label\n1,2,1\n1,3,0\n")
    raw = read_table(p)
    ds = build_dataset(raw)
    assert ds.feedback == "implicit" and ds.interactions.rating.tolist() == [1.0, 0.0]
    # both columns: the ratings are read, as before (--label-col picks the labels)
    both = write(tmp_path / "b.csv", "user_id,item_id,rating,label\n1,2,4,1\n1,3,2,0\n")
    assert build_dataset(read_table(both)).feedback == "explicit"
    assert build_dataset(read_table(both, label_col="label")).feedback == "implicit"
    # a rating column named and missing stays an error (not the labels read instead)
    with pytest.raises(MetarecError, match="missing column"):
        read_table(p, rating_col="stars")


def test_items_keyed_by_item_id_are_read_beside_a_renamed_log_column(tmp_path):
    # --item-col iid for the log: the items file keyed by item_id was refused
    p = write(tmp_path / "log.csv", "uid,iid,stars\n1,2,3\n1,3,4\n")
    items = write(tmp_path / "items.csv", "item_id,title\n2,a book\n3,another\n")
    raw = read_table(p, user_col="uid", item_col="iid", rating_col="stars", items=items)
    assert build_dataset(raw).n_items == 2


def test_float_ids_in_an_object_column_follow_the_float_rule():
    # a Python frame mixing 7 and 100.0 in one id column: "100.0" was an unknown id
    from metarec.data.tabular import id_column

    frame = pd.DataFrame({"item_id": pd.Series([7, 100.0, " x ", 3.5], dtype=object)})
    assert id_column(frame, "item_id").tolist() == ["7", "100", "x", "3.5"]
    frame = pd.DataFrame({"item_id": pd.Series([7, float("inf")], dtype=object)})
    with pytest.raises(MetarecError, match="is not an exact id"):
        id_column(frame, "item_id")


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_dataset_explicitly():
    names = [d["name"] for d in list_datasets()]
    assert names == list(DATASETS)
    assert {
        "goodbooks-sample",
        "movielens-100k",
        "movielens-1m",
        "goodbooks",
        "amazon-food-kitchen",
        "amazon-scientific",
        "lastfm-hetrec",
        "csv",
        "parquet",
    } <= set(names)
    no_path = [d["name"] for d in list_datasets() if not d["needs_path"]]
    assert no_path == ["goodbooks-sample"]
    assert all(d["description"] and d["license"] for d in list_datasets())


def test_unknown_dataset_name_is_not_guessed():
    with pytest.raises(MetarecError, match=r"unknown dataset 'MovieLens-100k'; known: "):
        read_raw("MovieLens-100k")


def test_missing_path_and_env_tells_what_to_do(monkeypatch):
    monkeypatch.delenv("METAREC_DATA_DIR", raising=False)
    with pytest.raises(
        MetarecError,
        match=r"pass --path .*ml-100k .in an experiment config: data.path. or set METAREC_DATA_DIR",
    ):
        read_raw("movielens-100k")
    with pytest.raises(
        MetarecError, match=r"csv: no path to the file to load \(--path, or path in"
    ):
        read_raw("csv")


def test_env_data_dir_is_used(monkeypatch, tmp_path, ml100k):
    monkeypatch.setenv("METAREC_DATA_DIR", str(ml100k.parent))
    assert len(read_raw("movielens-100k").ratings) == 3
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(MetarecError, match=r"data folder .*ml-100k' does not exist"):
        read_raw("movielens-100k")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MetarecError, match=r"data path .*a_file' is a file, not a folder"):
        read_raw("movielens-100k", tmp_path / "a_file")


def test_unknown_option_is_an_error(ml100k):
    with pytest.raises(MetarecError, match=r"movielens-100k: unknown option\(s\) min_rating"):
        read_raw("movielens-100k", ml100k, min_rating=3)


def test_csv_options_pass_through(tmp_path):
    p = write(tmp_path / "log.csv", "u,i,r\n1,2,3\n")
    raw = read_raw("csv", p, user_col="u", item_col="i", rating_col="r")
    assert raw.ratings["item_id"].tolist() == ["2"] and raw.name == "log"


def test_load_dataset_applies_preprocess_and_keeps_report(ml100k):
    def keep_high(raw):
        r = raw.ratings
        return raw.with_ratings(r[r["rating"] >= 4]), {"step": "keep_high", "dropped": 1}

    ds = load_dataset("movielens-100k", ml100k, preprocess=keep_high)
    assert len(ds.interactions) == 2
    assert ds.report == ({"step": "keep_high", "dropped": 1},)
    assert sorted(ds.to_frame()["rating"].tolist()) == [4.0, 5.0]


def test_parquet_datetime_column_becomes_unix_seconds(tmp_path):
    p = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "item_id": ["x", "y"],
            "rating": [1.0, 2.0],
            "timestamp": pd.to_datetime(["1970-01-02T00:00:00", "2020-01-01T00:00:01"]),
        }
    ).to_parquet(p)
    assert read_table(p).ratings["timestamp"].tolist() == [86400, 1577836801]


@pytest.mark.parametrize("bad", ["yesterday", "2020-01-01", ""])
def test_one_bad_timestamp_among_unix_seconds_is_the_one_named(tmp_path, bad):
    """Mostly unix seconds: the error names the bad row, not the first number."""
    from metarec.data.files import read_log

    rows = [f"u{i},i{i},4,{1600000000 + i}" for i in range(8)]
    rows[5] = f"u5,i5,4,{bad}"
    path = tmp_path / "T.csv"
    path.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(rows) + "\n")
    with pytest.raises(MetarecError) as err:
        read_log(path)
    msg = str(err.value)
    assert "line 7" in msg and "1600000000" not in msg


def test_an_empty_or_cut_short_cell_says_so(tmp_path):
    # a row with fewer fields than the header is read with NaN in the missing cells; the
    # error said "value nan is not a number"
    p = write(tmp_path / "log.csv", "user_id,item_id,rating,timestamp\nu1,i1,5,100\nu1,i2\n")
    with pytest.raises(
        MetarecError, match=r"line 3: column 'rating' is empty \(or the row has fewer"
    ):
        read_table(p)
    p = write(tmp_path / "log2.csv", "user_id,item_id,rating,timestamp\nu1,i1,5,100\nu1,i2,4,\n")
    with pytest.raises(MetarecError, match=r"line 3: column 'timestamp' is empty"):
        read_table(p)


def test_a_parquet_list_column_is_a_multi_valued_category(tmp_path):
    # ["a", "b"] is what a CSV spells "a|b"; as a string each list was one category
    from metarec.data.files import read_side

    p = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["i0", "i1", "i2"], "genres": [["a", "b"], ["c"], []]}).to_parquet(p)
    frame, text, cat, num = read_side(p, "item_id")
    assert cat == ("genres",) and text == () and num == ()
    assert frame["genres"].tolist() == ["a|b", "c", ""]


def test_a_release_file_cut_mid_line_or_short_is_refused(ml100k):
    # u.data cut mid-line loaded its last timestamp 879959583 as 87995 (a 1970 rating); cut
    # at a line boundary, half the log loaded although u.info counts all of it
    data = (ml100k / "u.data").read_bytes()
    (ml100k / "u.data").write_bytes(data[:-3])
    with pytest.raises(MetarecError, match=r"u.data ends in the middle of a line"):
        read_movielens_100k(ml100k)
    (ml100k / "u.data").write_bytes(data)
    n = data.count(b"\n")
    (ml100k / "u.info").write_text(f"3 users\n40 items\n{n + 7} ratings\n")
    with pytest.raises(MetarecError, match=rf"has {n} ratings but u.info says {n + 7}"):
        read_movielens_100k(ml100k)
    (ml100k / "u.info").write_text(f"3 users\n40 items\n{n} ratings\n")
    read_movielens_100k(ml100k)


def test_a_rated_item_missing_from_a_release_item_file_is_refused(ml100k):
    # u.item cut to fewer rows: the rated movies past the cut silently had no text
    from metarec.data import read_raw

    lines = (ml100k / "u.item").read_bytes().splitlines(keepends=True)
    (ml100k / "u.item").write_bytes(lines[0] + lines[2])  # movie 20, rated, has no row
    with pytest.raises(
        MetarecError, match=r"1 item\(s\) with ratings have no row in the item file .*'20'"
    ):
        read_raw("movielens-100k", ml100k)


def test_a_rating_user_missing_from_a_release_user_file_is_refused(ml100k):
    # u.user cut short: the users past the cut silently lost their age, gender, occupation
    from metarec.data import read_raw

    lines = (ml100k / "u.user").read_bytes().splitlines(keepends=True)
    (ml100k / "u.user").write_bytes(b"".join(lines[:-1]))
    with pytest.raises(
        MetarecError, match=r"1 user\(s\) with ratings have no row in the user file"
    ):
        read_raw("movielens-100k", ml100k)


@pytest.mark.parametrize(
    "kind, named",
    [
        ("gzip", "a gzip-compressed file"),
        ("bz2", "a bzip2-compressed file"),
        ("xz", "an xz-compressed file"),
        ("zip", "a zip archive"),
        ("parquet", "a Parquet file, not a text CSV/TSV file: name it .parquet"),
    ],
)
def test_a_compressed_or_binary_file_named_csv_says_what_it_is(tmp_path, kind, named):
    """It was "line 1: cannot decode byte 0x8b as utf-8 (save the file as UTF-8)"."""
    import bz2
    import gzip
    import lzma
    import zipfile

    text = b"user_id,item_id,rating\nu,i,3\n"
    path = tmp_path / "T.csv"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("T.csv", text)
    elif kind == "parquet":
        pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "rating": [3]}).to_parquet(path)
    else:
        path.write_bytes({"gzip": gzip, "bz2": bz2, "xz": lzma}[kind].compress(text))
    with pytest.raises(MetarecError, match=named):
        read_table(path)


def test_a_header_that_begins_like_a_magic_number_is_still_text(tmp_path):
    for head in ("PAR1", "BZh"):
        p = write(tmp_path / "log.csv", f"{head},user_id,item_id,rating\nx,u,i,3\n")
        assert read_table(p).ratings["user_id"].tolist() == ["u"]


def test_a_comment_line_above_the_header_is_named(tmp_path):
    p = write(tmp_path / "log.csv", "# exported 2024\nuser_id,item_id,rating\nu,i,3\n")
    with pytest.raises(MetarecError, match="'# exported 2024', was read as the header"):
        read_table(p)


def test_a_comment_line_with_as_many_commas_as_the_header_is_named(tmp_path):
    """A comment with the header's field count parses cleanly, so the malformed-line hint
    never fired: the column errors of every file kind now carry it."""
    from metarec.data.files import read_log, read_query, read_side

    hint = r"header was read from a comment line \(its first name is '# exported 2024'\)"
    p = write(tmp_path / "T.csv", "# exported 2024, by tool, v2\nuser_id,item_id,rating\nu,i,3\n")
    for read in (read_log, read_query):
        with pytest.raises(MetarecError, match=r"unknown column\(s\).*" + hint):
            read(p)
    items = write(tmp_path / "I.csv", "# exported 2024, list\nitem_id,title\ni1,Foo\n")
    with pytest.raises(MetarecError, match=r"missing column\(s\) item_id.*" + hint):
        read_side(items, "item_id")
    # a first column that merely contains "#" is not a comment
    ok = write(tmp_path / "I2.csv", "item_id,#tags\ni1,a\n")
    assert len(read_side(ok, "item_id")[0]) == 1


def test_a_trailing_comma_in_a_query_file_is_an_empty_name(tmp_path):
    """The query file said "unknown column(s) 'Unnamed: 2'", a name pandas invents; the
    log files already said "an empty name". A trailing comma on every line (no values in
    the column) is read past, as the items file reads it (probe 132)."""
    from metarec.data.files import read_query

    p = write(tmp_path / "Q.csv", "user_id,item_id,\nu,i,\n")
    assert read_query(p).values.tolist() == [["u", "i"]]
    p = write(tmp_path / "Q.csv", "user_id,item_id,\nu,i,x\n")
    with pytest.raises(MetarecError, match=r"unknown column\(s\) an empty name \(column 3\)"):
        read_query(p)


def test_csv_loader_reads_t_and_i_as_fit_does(tmp_path):
    """info, split, embed and evaluate read T + I through read_table; fit through
    read_training_files. They disagreed: a rated item missing from I got empty text
    there (fit refuses it), I's domains never reached a log without any, and an all-empty
    domain column in I put every item in 'default' against T's names."""
    log = "user_id,item_id,rating\nu1,7,5\nu1,b,3\nu2,b,4\n"
    p = write(tmp_path / "t.csv", log)
    i_bad = write(tmp_path / "i_bad.csv", "item_id,title\n007,seven\nb,bee\n")
    for roles in ({}, {"text_cols": ["title"]}):
        with pytest.raises(MetarecError, match=r"item_id '7' is not in the items file .*'007'"):
            read_table(p, items=i_bad, **roles)
    # I alone names domains: the log's rows take their item's
    i_dom = write(
        tmp_path / "i_dom.csv", "item_id,title,domain\n7,seven,films\nb,bee,books\nc,sea,films\n"
    )
    for roles in ({}, {"text_cols": ["title"]}):
        raw = read_table(p, items=i_dom, **roles)
        assert raw.ratings["domain"].tolist() == ["films", "books", "books"]
    # T names domains, I's domain column is empty throughout: T's names, and the item
    # nobody rated is in "default" (it was NaN with inferred roles, refused with named)
    t_dom = write(
        tmp_path / "t_dom.csv", "user_id,item_id,rating,domain\nu1,7,5,films\nu2,b,4,books\n"
    )
    i_empty = write(tmp_path / "i_empty.csv", "item_id,title,domain\n7,seven,\nb,bee,\nc,sea,\n")
    for roles in ({}, {"text_cols": ["title"]}):
        # fit's loader and this one share the rule (files.join_domains), the warning too
        with pytest.warns(UserWarning, match="1 items have no rows in .* in domain 'default'"):
            raw = read_table(t_dom, items=i_empty, domain_col="domain", **roles)
        assert raw.items.set_index("item_id")["domain"].to_dict() == {
            "7": "films",
            "b": "books",
            "c": "default",
        }


def test_a_path_under_an_unknown_users_home_is_one_line(tmp_path, monkeypatch, capsys):
    # Path.expanduser raised a bare RuntimeError: a traceback from info, split and embed
    from metarec.cli import main

    for argv in (
        ["info", "movielens-100k", "--path", "~nosuchuser-metarec/ml"],
        ["embed", "goodbooks-sample", "--model", "hashing", "--cache", "~nosuchuser-metarec/c"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "cannot expand '~': no such user" in err and err.count("\n") == 1
    monkeypatch.setenv("METAREC_DATA_DIR", "~nosuchuser-metarec/x")
    assert main(["info", "movielens-100k"]) == 2
    assert "~nosuchuser-metarec/x: cannot expand" in capsys.readouterr().err


def test_csv_domains_named_as_a_column_or_left_empty_in_t_are_read_as_fit_reads_them(tmp_path):
    # a domain column named as categorical went into the log raw (a NaN domain, not
    # valid JSON); a T domain column empty throughout kept I's domains from the log
    from metarec.data import load_dataset

    p = write(tmp_path / "t.csv", "user_id,item_id,rating\nu1,7,5\nu1,b,3\nu2,b,4\n")
    i = write(tmp_path / "i.csv", "item_id,title,domain\n7,seven,films\nb,bee,\nc,sea,films\n")
    ds = load_dataset("csv", path=p, items=i, text_cols=["title"], categorical_cols=["domain"])
    assert set(ds.domains) == {"films", "default"}
    t_empty = write(tmp_path / "te.csv", "user_id,item_id,rating,domain\nu1,7,5,\nu2,b,4,\n")
    i2 = write(tmp_path / "i2.csv", "item_id,title,domain\n7,seven,films\nb,bee,books\n")
    assert read_table(t_empty, items=i2).ratings["domain"].tolist() == ["films", "books"]


@pytest.mark.parametrize(
    "options, said",
    [
        ({"rating_range": "1-5"}, "csv: option rating_range: expected a list, got '1-5'"),
        ({"rating_range": [1]}, "csv: option rating_range: expected 2 values, got 1"),
        ({"rating_range": [1, "x"]}, "csv: option rating_range[1]: expected a number"),
        ({"sep": 5}, "csv: option sep: expected a string, got 5"),
        ({"user_col": ["a"]}, "csv: option user_col: expected a string"),
        ({"label_col": 1}, "csv: option label_col: expected a string, got 1"),
        ({"encoding": "nope"}, "csv: option encoding: unknown encoding 'nope'"),
        # a path option (probe 137): a number reached open(), a TypeError traceback
        ({"items": 5}, "csv: option items: expected a string, got 5"),
    ],
)
def test_loader_options_of_the_wrong_type_are_one_line(tmp_path, options, said):
    # an experiment's [data].options is an untyped table: these reached the loader and
    # failed inside it or pandas with a traceback
    from metarec.data import read_raw

    p = tmp_path / "t.csv"
    p.write_text("user_id,item_id,rating\nu,i,5\nv,i,1\n")
    with pytest.raises(MetarecError) as err:
        read_raw("csv", p, **options)
    assert said in str(err.value)
    assert read_raw("csv", p, rating_range=[1, 5]).rating_range == (1.0, 5.0)


def test_preprocess_missing_columns_is_read_from_a_table():
    # config's fixed-length tuples swapped value and type: every [["title", "drop"]] was
    # refused ("missing_columns[\"<class 'str'>\"]")
    from metarec.config import from_dict
    from metarec.preprocess import PreprocessConfig

    cfg = from_dict(PreprocessConfig, {"missing_columns": [["title", "drop"]]})
    assert cfg.missing_columns == (("title", "drop"),)


def test_whole_number_spellings_compare_as_text_not_floats():
    # as floats, two snowflake ids past 2^53 read as one user, and a warning paired them
    from metarec.data.files import whole_number_spelling

    ids = pd.Series(["007", "+7", "7.0", "-07", "1700000000000000001", "abc", "7.5", "00"])
    assert whole_number_spelling(ids).tolist() == [
        "7",
        "7",
        "7",
        "-7",
        "1700000000000000001",
        None,
        None,
        "0",
    ]
    assert whole_number_spelling(pd.Series(["1700000000000000000"]))[0] != "1700000000000000001"


# --- probe 146: file formats ------------------------------------------------------------


def test_a_mostly_empty_time_column_names_an_empty_cell_not_its_one_number(tmp_path):
    # empty cells counted as "not numbers": the column was read as dates and its one
    # number blamed ("the column's other values are dates")
    p = write(
        tmp_path / "log.csv", "user_id,item_id,rating,timestamp\nu,a,3,1600090000\nu,b,4,\nu,c,5,\n"
    )
    with pytest.raises(MetarecError, match=r"line 3: column 'timestamp' is empty"):
        read_table(p)


def test_seconds_and_milliseconds_in_one_time_column_are_refused(tmp_path):
    # read as one unit, every millisecond row was the newest of all, silently
    p = write(
        tmp_path / "log.csv",
        "user_id,item_id,rating,timestamp\nu,a,3,1618349200000\nu,b,4,1607261200\n",
    )
    with pytest.raises(
        MetarecError,
        match=r"mixes unix seconds \(line 3: 1607261200\) and milliseconds \(line 2: 1618349200000\)",
    ):
        read_table(p)
    # one unit throughout, and small counters, are times as before
    ms = write(
        tmp_path / "ms.csv",
        "user_id,item_id,rating,timestamp\nu,a,3,1618349200000\nu,b,4,1607261200000\n",
    )
    assert read_table(ms).ratings["timestamp"].tolist() == [1618349200000, 1607261200000]
    small = write(tmp_path / "n.csv", "user_id,item_id,rating,timestamp\nu,a,3,1\nu,b,4,150000\n")
    assert read_table(small).ratings["timestamp"].tolist() == [1, 150000]
    # a relative millisecond clock running for years spans both ranges: one unit
    clock = [0, 5_000_000, 400_000_000, 9_000_000_000, 120_000_000_000]
    rel = write(
        tmp_path / "rel.csv",
        "user_id,item_id,rating,timestamp\n"
        + "".join(f"u,i{k},3,{t}\n" for k, t in enumerate(clock)),
    )
    assert read_table(rel).ratings["timestamp"].tolist() == clock


@pytest.mark.parametrize("sep", ["", ";;", r"\s+", '"', "\n"])
def test_sep_must_be_one_plain_character(tmp_path, sep):
    # "" was a traceback from pandas, ";;" and a regex "malformed line" of a sound file
    p = write(tmp_path / "log.csv", "user_id;;item_id;;rating\nu;;a;;3\n")
    with pytest.raises(MetarecError, match="sep must be one character"):
        read_table(p, sep=sep)


def test_sep_reads_the_item_table_too(tmp_path):
    log = write(tmp_path / "T.csv", "user_id;item_id;rating\nu;a;3\nu;b;4\n")
    side = write(tmp_path / "I.csv", "item_id;title\na;Harry Potter, #1\nb;Dune\n")
    raw = read_table(log, sep=";", items=side, text_cols="title")
    assert raw.items["title"].tolist() == ["Harry Potter, #1", "Dune"]
    # an item table its header shows to be in its own suffix's separator reads as before
    comma = write(tmp_path / "I2.csv", "item_id,title\na,Harry; the boy\nb,Dune\n")
    raw = read_table(log, sep=";", items=comma, text_cols="title")
    assert raw.items["title"].tolist() == ["Harry; the boy", "Dune"]


def test_a_parquet_item_table_whose_names_repeat_once_stripped_is_refused(tmp_path):
    # "title" and "title " reached side_roles as a frame: a traceback in info, split, evaluate
    log = write(tmp_path / "T.csv", "user_id,item_id,rating\nu,a,3\n")
    side = tmp_path / "I.parquet"
    pd.DataFrame({"item_id": ["a"], "title": ["x"], "title ": ["y"]}).to_parquet(side)
    with pytest.raises(MetarecError, match="column 'title' appears twice"):
        read_table(log, items=side)


@pytest.mark.parametrize(
    "text, said",
    [
        # a ";" file whose titles hold commas failed on a data line; the header's separator
        # hint came only after a read that succeeded
        (
            "item_id;title\na;Harry Potter, #1\n",
            "the header 'item_id;title' looks semicolon-separated",
        ),
        (
            "user_id\titem_id\trating\nu\ta\t4,5\n",
            "looks tab-separated, and the file was read comma",
        ),
        ("sep=,\nuser_id,item_id,rating\nu,a,3\n", "'sep=,', is Excel's separator line: remove it"),
    ],
)
def test_a_malformed_line_says_when_the_header_shows_why(tmp_path, text, said):
    p = write(tmp_path / "x.csv", text)
    with pytest.raises(MetarecError, match="malformed line") as err:
        read_table(p)
    assert said in str(err.value)


def test_parquet_cells_are_named_as_rows_and_an_inf_rating_as_not_finite(tmp_path):
    path = tmp_path / "T.parquet"
    pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "rating": [3.0, None]}).to_parquet(
        path
    )
    with pytest.raises(MetarecError) as err:
        read_table(path)
    assert "row 2: column 'rating' is empty" in str(err.value) and "fields" not in str(err.value)
    p = write(tmp_path / "log.csv", "user_id,item_id,rating\nu,a,3\nu,b,inf\n")
    with pytest.raises(MetarecError, match=r"line 3: column 'rating' value 'inf' is not finite"):
        read_table(p)


def test_other_separator_never_names_the_separator_the_file_was_read_with():
    """tabular.other_separator, the one check behind every "looks X-separated" hint: a
    separator other than the one read with. A quoted header cell holding that one (a csv
    header '"a,b"' read as one column) is not a hint that it looks comma-separated."""
    from metarec.data.tabular import other_separator

    assert other_separator("a,b", ",") is None
    assert other_separator("a,b;c", ",") == "semicolon"
    assert other_separator("a\tb,c", None) == "tab"  # tab first, then ; | ,
    assert other_separator("abc", None) is None
