"""Mutation audit 190 of 7f98b47, 39c2d2f, 9a02f07 and 80fd152: the server's id rule for
the ids a RUN holds, errors.one_line, the anonymous stand-in, exclusive_folder on real
paths, the feedback store's warning, UserSideRows and the server's side-data memo, and
report.md's std / resample wording. Each test kills a mutant the suite let live; the
docstrings name the behaviour pinned and why a user relies on it."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from metarec.types import MAX_ID_CHARS, MetarecError, id_to_str

# --- the id rule on fit's files (data.tabular.unservable_id / _check_id_rule) -------------

IDS = [f"i{i}" for i in range(6)]


def _files(tmp, items, log_items=IDS):
    """fit's T file (6 users rating ``log_items``) and I file (listing ``items``)."""
    rows = [(f"u{u}", it, 1 + (u + j) % 5) for u in range(6) for j, it in enumerate(log_items)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(tmp / "T.csv", index=False)
    titles = [f"title {n}" for n in range(len(items))]
    pd.DataFrame({"item_id": items, "title": titles}).to_csv(tmp / "I.csv", index=False)
    return tmp / "T.csv", tmp / "I.csv"


def test_an_id_of_exactly_the_limit_is_taken_and_one_past_it_is_refused(tmp_path):
    """The rule is the server's (types.id_to_str): 1,024 characters pass, 1,025 do not.
    Refusing 1,024 would turn away a file whose every id the server takes; taking 1,025
    would fit an item /recommend hands out and /score refuses."""
    from metarec.data.files import read_training_files

    at, past = "A" * MAX_ID_CHARS, "A" * (MAX_ID_CHARS + 1)
    assert id_to_str(at) == at
    with pytest.raises(ValueError):
        id_to_str(past)
    ids = [at, *IDS[1:]]
    raw = read_training_files(*_files(tmp_path, ids, ids))
    assert at in set(raw.ratings["item_id"])
    ids = [past, *IDS[1:]]
    with pytest.raises(MetarecError, match="T.csv: line 2: column 'item_id': .* is longer than"):
        read_training_files(*_files(tmp_path, ids, ids))


@pytest.mark.parametrize("char", ["\x7f", "\x01", "\x1f"], ids=["DEL", "SOH", "US"])
def test_every_control_character_the_server_refuses_is_refused_at_fit(tmp_path, char):
    """The server refuses any character below 32 and DEL (127) in an id, not only a tab
    or a line break: fit refuses each of them too, or a fitted item is one no request
    may name."""
    from metarec.data.files import read_training_files

    bad = f"it{char}em"
    with pytest.raises(ValueError, match="control character"):
        id_to_str(bad)
    ids = [bad, *IDS[1:]]
    with pytest.raises(MetarecError, match="holds a control character"):
        read_training_files(*_files(tmp_path, ids, ids))


def test_an_unservable_id_only_in_the_items_file_is_refused_naming_that_file(tmp_path):
    """The items file's ids enter the RUN (the whole catalogue is recommended, rated or
    not): an item with a tab that no rating names was fitted, then handed out by
    /recommend and refused by /score. fit refuses it naming the items file and its line."""
    from metarec.data.files import read_training_files

    t, i = _files(tmp_path, [*IDS, "never\trated"])
    with pytest.raises(
        MetarecError, match=r"I\.csv: line 8: column 'item_id': the id 'never\\trated'"
    ):
        read_training_files(t, i)


def test_the_line_named_is_the_first_line_holding_the_bad_id(tmp_path):
    """The error names the file line of the bad id's first occurrence, which a user goes
    to fix: ids are checked once each (distinct), and that index is not the line (here
    the bad id is the second distinct id but first appears on line 5)."""
    from metarec.data.files import read_training_files

    log = tmp_path / "T.csv"
    log.write_text("user_id,item_id,rating\nu0,i0,5\nu1,i0,4\nu2,i0,3\nu3,b\x01d,2\nu4,i1,1\n")
    items = pd.DataFrame({"item_id": ["i0", "i1", "b\x01d"], "title": ["a", "b", "c"]})
    items.to_csv(tmp_path / "I.csv", index=False)
    with pytest.raises(MetarecError, match=r"T\.csv: line 5: column 'item_id'"):
        read_training_files(log, tmp_path / "I.csv")


def test_a_python_fit_refuses_an_unservable_user_id_before_training(tiny_dataset, monkeypatch):
    """Predictor.fit checks the users' ids as well as the items' (a training user with a
    tab could never be named by user_id), before any training."""
    import dataclasses

    from metarec.model import MetaRecommender
    from metarec.predictor import Predictor
    from metarec.types import IdMap

    def no_training(*a, **k):
        raise AssertionError("trained before checking the ids")

    monkeypatch.setattr(MetaRecommender, "fit", no_training)
    ids = list(tiny_dataset.users.ids)
    ids[1] = "user\tone"
    bad = dataclasses.replace(tiny_dataset, users=IdMap(ids))
    with pytest.raises(MetarecError, match=r"Predictor.fit: user ids: the id 'user\\tone' holds"):
        Predictor.fit(bad)


# --- errors.one_line -----------------------------------------------------------------------


def test_one_line_bounds_a_line_just_past_the_limit_and_keeps_both_ends():
    """one_line is what bounds the CLI's lines and the server's details: a 3,000-character
    message (not only a 500,000-character one) comes back within 2,000 characters, with
    its head and its tail (the tail is where a message says what to do), and the marker
    counts the characters left out, so the line says how much was cut."""
    from metarec.errors import MAX_LINE, one_line

    assert MAX_LINE == 2000
    text = "H" * 10 + "m" * 2980 + "T" * 10
    got = one_line(text)
    assert len(got) <= 2000
    cut = re.fullmatch(r"(H{10}m*) \.\.\. \[(\d+) characters\] \.\.\. (m*T{10})", got)
    assert cut is not None, got[:80]
    head, left_out, tail = cut.group(1), int(cut.group(2)), cut.group(3)
    assert len(head) + left_out + len(tail) == len(text)
    assert one_line("x" * 2000) == "x" * 2000  # at the limit: whole


def test_one_line_escapes_a_carriage_return_as_well_as_a_line_break():
    """A "\\r" in a path or value moves a terminal's cursor to the start of the line and
    overwrites the error's beginning (a log splits on it too): it is written as the two
    characters backslash r, as "\\n" is."""
    from metarec.errors import one_line

    assert one_line("a\rb\nc") == "a\\rb\\nc"


# --- the server's error details: one bounded line whatever raised them ---------------------


@pytest.fixture(scope="module")
def side_run(tmp_path_factory):
    """The RUN of test_new_users' world, fitted with a users file (club, age)."""
    from test_new_users import _world

    return _world(tmp_path_factory.mktemp("audit190"))


@pytest.fixture(scope="module")
def pred(side_run):
    from metarec.predictor import Predictor

    return Predictor.load(side_run)


def test_a_damaged_stored_value_is_a_503_of_one_bounded_line(pred, tmp_path):
    """A damaged store row's text is the store's, not a request's: a 6,000-character
    stored timestamp holding line breaks came back whole in the 503 (StoreDamaged names
    the value). The detail is one line within 2,000 characters, still naming the store's
    damage."""
    import sqlite3

    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    store = FeedbackStore(tmp_path / "fb")
    store.add("ok", [FeedbackRow("it2", 4.0, None)])
    with sqlite3.connect(store.path) as con:
        con.execute(
            "INSERT INTO feedback (user_id, item_id, rating, timestamp, received_at) "
            "VALUES ('dmg', 'it0', 5, ?, 0)",
            ("day\n" * 1500,),
        )
    client = TestClient(create_app(pred, feedback_db=store))
    r = client.post("/recommend", json={"user_id": "dmg", "k": 2})
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "damaged feedback store" in detail and "\n" not in detail
    assert len(detail) <= 2000, len(detail)


def test_any_metarec_error_is_a_422_of_one_bounded_line(pred, monkeypatch):
    """The 422 handler bounds what it is given, not only what today's messages hold (a
    users-file check clips its own values; a message from deeper in the library may not):
    a MetarecError of two lines and 6,000 characters is a one-line detail within 2,000,
    keeping its start."""
    from fastapi.testclient import TestClient

    from metarec.predictor import Predictor
    from metarec.serve.app import create_app

    def long_error(self, domain):
        raise MetarecError("unknown domain, first line\nsecond line " + "z" * 6000)

    monkeypatch.setattr(Predictor, "domain_mask", long_error)
    client = TestClient(create_app(pred))
    body = {"interactions": [{"item_id": "it1", "rating": 5}], "domain": "books"}
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("unknown domain, first line\\nsecond line")
    assert "\n" not in detail and len(detail) <= 2000, len(detail)


def test_the_servers_own_422_details_are_bounded_lines():
    """_unprocessable, every 422 the endpoints raise themselves, gives a one-line detail
    within 2,000 characters: today's messages are short, but a value echoed into one
    later would otherwise come back whole (a 500 KB detail)."""
    from metarec.serve.app import _unprocessable

    detail = _unprocessable("k is wrong:\n" + "9" * 5000).detail
    assert detail.startswith("k is wrong:\\n9") and len(detail) <= 2000


# --- the server's side-data memo and the anonymous stand-in --------------------------------


def test_the_side_data_memo_is_keyed_by_the_user_as_well_as_the_data(pred):
    """The memo's digest covers who sent ``user``: a new user's data answered for them
    ("new", a row of their own); the same data then sent by a training user who has
    fitted side data keeps theirs ("kept", at their own index). Keyed on the data alone,
    the second request got the first user's answer: the new user's row and index."""
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    client = TestClient(create_app(pred))
    body = {"interactions": [{"item_id": "it31", "rating": 4}], "item_ids": ["it30", "it32"]}
    side = {"club": "space_club", "age": 52}
    first = client.post("/score", json={**body, "user_id": "n_first", "user": side})
    assert first.status_code == 200 and first.json()["user_side"] == "new", first.text
    listed = client.post("/score", json={**body, "user_id": "u0", "user": side})
    assert listed.status_code == 200, listed.text
    assert listed.json()["user_side"] == "kept"
    alone = client.post("/score", json={**body, "user_id": "u0"})
    assert listed.json()["scores"] == alone.json()["scores"]  # as without ``user``


def test_the_anonymous_stand_in_is_never_one_of_the_runs_users(pred, monkeypatch):
    """A request without user_id sending side data goes by a random stand-in id, drawn
    again while it names one of the run's users: were it a training user's id, every
    such request would be that user (their fitted side data "kept", not the request's)."""
    import dataclasses
    import secrets

    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app
    from metarec.types import IdMap

    taken = "anonymous-" + "0" * 16
    ids = list(pred.users.ids)
    ids[0] = taken  # a training user (with fitted side data) named as the first draw
    renamed = dataclasses.replace(pred, users=IdMap(ids))
    draws = iter(["0" * 16, "1" * 16, "2" * 16])
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: next(draws))
    client = TestClient(create_app(renamed))
    body = {"interactions": [{"item_id": "it31", "rating": 4}], "item_ids": ["it30"]}
    r = client.post("/score", json={**body, "user": {"club": "garden_club", "age": 23}})
    assert r.status_code == 200, r.text
    assert r.json()["user_side"] == "new"


# --- report.md: which std, how many resamples ---------------------------------------------


def _report(seeds: int) -> str:
    """report.md of a hand-made result (test_report's), bootstrap 700 and paired 3,000
    resamples: two counts no default shares, so each sentence's own count is told apart."""
    import dataclasses

    from metarec import report
    from test_report import _results

    res = _results(
        {"Meta": [(1.0, 0.1)] * seeds, "Base": [(0.9, 0.3)] * seeds},
        {"Meta": "meta", "Base": "baseline"},
    )
    cfg = dataclasses.replace(res.config, bootstrap=700, paired_bootstrap=3000)
    return report.render_markdown(dataclasses.replace(res, config=cfg), {})


def test_a_one_seed_report_names_the_per_method_resamples_and_no_std():
    """With one seed the cells are a bootstrap CI over test users: the protocol says how
    many resamples those took (``bootstrap``, not the paired table's count), and says
    nothing of a std over seeds, which one seed has none of."""
    md = _report(1)
    assert "95% CI over test users (700 resamples)" in md, md
    assert "sample std" not in md and "n − 1" not in md


def test_a_many_seed_report_says_its_std_is_the_sample_std():
    """With several seeds the ± is the sample std over seeds (n − 1), said as such; the
    one-seed sentence (and its count) is not there."""
    md = _report(3)
    assert "(mean ± sample std over seeds, n − 1 in the denominator)" in md
    assert "One seed only" not in md and "700 resamples" not in md


# --- exclusive_folder: the folders it made, on real paths ----------------------------------


def test_a_failed_hold_through_a_made_folder_and_dotdot_removes_all_it_made(tmp_path, monkeypatch):
    """--out A/B/../C makes A, A/B (by name, on the way) and A/C. A run that wrote nothing
    removes all three, deepest first by real path: taken in the order the names come
    (A/C, A, A/B), A was tried while A/B was still in it and stayed."""
    from metarec.atomic import exclusive_folder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError):
        with exclusive_folder("A/B/../C", "experiment"):
            raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []


def test_a_hold_removes_a_made_folder_beside_one_that_was_written_to(tmp_path, monkeypatch):
    """A folder left non-empty does not stop the others from going: --out A/B/../C whose
    run wrote A/C/results.json keeps A/C and A, and removes A/B, made on the way and
    empty (stopping at the first folder that could not go left A/B behind)."""
    from metarec.atomic import exclusive_folder

    monkeypatch.chdir(tmp_path)
    with exclusive_folder("A/B/../C", "experiment") as out:
        (out / "results.json").write_text("{}")
    got = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert got == ["A", "A/C", "A/C/results.json"]


# --- UserSideRows.row_of ---------------------------------------------------------------------


def test_row_of_refuses_an_index_with_no_row_given_now_as_a_metarec_error(pred):
    """row_of answers only for the users the rows hold: the index just past the last new
    user given, and any index of rows that give no new user (listed users kept theirs),
    are a MetarecError (a 422 at the server), not an IndexError or a TypeError (a 500)."""
    new = pd.DataFrame({"user_id": ["p", "q"], "club": ["space_club"] * 2, "age": [40, 41]})
    rows = pred.side_rows(new)
    last = rows.index_of("q")
    assert last == rows.index_of("p") + 1 and rows.row_of(last).shape == rows.given[1].shape
    with pytest.raises(MetarecError, match="no row given now"):
        rows.row_of(last + 1)
    kept = pred.side_rows(pd.DataFrame({"user_id": ["u0"], "club": ["space_club"], "age": [40]}))
    assert kept.given is None
    with pytest.raises(MetarecError, match="no row given now"):
        kept.row_of(len(pred.users) + 1)


# --- user_side: values clipped in the library's own message --------------------------------


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [("c" * 100_000, 1, "was not in the users file"), ("age", "y" * 100_000, "not a number")],
    ids=["unknown-column-name", "non-numeric-value"],
)
def test_a_users_frame_error_clips_what_it_echoes(pred, column, value, said):
    """Predictor.with_users in Python raises the message itself (no CLI or server line
    bound between): a 100,000-character column name, or such a value in a numeric
    column, is clipped in the message, which stays short and still says what is wrong."""
    users = pd.DataFrame({"user_id": ["nu"], column: [value]})
    with pytest.raises(MetarecError) as err:
        pred.with_users(users)
    msg = str(err.value)
    assert said in msg and "(100000 chars)" in msg
    assert len(msg) < 1000, len(msg)


# --- read_side: a users-file column with no value -------------------------------------------


def test_a_column_of_blank_cells_only_is_said_to_add_nothing(tmp_path):
    """A cell of spaces is no value (ids and cells are read stripped): a users-file column
    holding only spaces adds nothing, as an empty one does, and fit says so; a column
    with one value on one row is not named."""
    import warnings

    from metarec.data.files import read_side

    path = tmp_path / "U.csv"
    path.write_text("user_id,club,age\nu0,  ,\nu1,   ,31\nu2, ,\n")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        read_side(path, "user_id")
    lines = [str(w.message) for w in said]
    assert any("column 'club' has no value on any row" in line for line in lines), lines
    assert not any("'age'" in line for line in lines), lines


# --- the feedback store's warning, rating store read by a label run --------------------------


@pytest.mark.parametrize(
    ("stored_by", "example"),
    [
        ("explicit 0.0..5.0", "each stored rating as a 0/1 label"),
        ("explicit 1.0..10.0", "a stored one-star rating, a dislike, as a 'played' 1"),
    ],
)
def test_a_rating_store_read_as_labels_says_one_star_only_where_the_scale_starts_at_1(
    tmp_path, stored_by, example
):
    """Read by an implicit run, a rating store's example names a one-star rating only
    where its scale starts at 1 (whatever its top): on 0..5 a stored 1 is not the
    lowest star, and the warning says every rating is read as a 0/1 label instead."""
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    store = FeedbackStore(tmp_path / "fb.sqlite3")
    store.add("u", [FeedbackRow("i0", 1.0, None)], written_for=stored_by)
    said = store.written_for_other("implicit")
    assert said is not None and said.endswith(f"read here as implicit ({example})"), said


def test_the_same_user_field_again_is_not_encoded_again(pred, monkeypatch):
    """The memo is what spares a repeated ``user`` its encoding (a pandas round and, for
    text columns, the RUN's encoder: ~7 ms a request): the same user sending the same
    data three times is encoded once; other data is encoded anew."""
    from fastapi.testclient import TestClient

    from metarec.predictor import Predictor
    from metarec.serve.app import create_app

    encoded = []
    real = Predictor.side_rows

    def counting(self, users):
        encoded.append(len(users))
        return real(self, users)

    monkeypatch.setattr(Predictor, "side_rows", counting)
    client = TestClient(create_app(pred))
    body = {"user_id": "rep", "interactions": [{"item_id": "it31", "rating": 4}]}
    body["item_ids"] = ["it30"]
    for _ in range(3):
        r = client.post("/score", json={**body, "user": {"club": "space_club", "age": 44}})
        assert r.status_code == 200, r.text
    assert len(encoded) == 1
    client.post("/score", json={**body, "user": {"club": "space_club", "age": 45}})
    assert len(encoded) == 2
