"""Mutation audit 186 of 1694492 (the implicit path: rank_model named as a setting with
no effect on labels, the feedback store's warning by direction, a Parquet label outside
0/1 named as written) and 76b6322 (exclusive_folder's made folders and lock file,
Predictor.side_rows refusing an ids-only users file). Each test kills a mutant the suite
let live; the docstrings name what it pins and why a user relies on it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from metarec.cli import main
from metarec.types import MetarecError
from test_cli_contract import FAST
from test_new_users import _world

# --- model.unused_model_settings: rank_model on implicit data -----------------------------


def test_rank_model_on_labels_is_named_with_why_it_does_nothing():
    """``rank_model = false`` on implicit data is named with its reason: the ranking model
    is the only model there, so it trains whatever the key says. The reason is what tells
    a user the key was not taken as "train nothing" (a reason naming "no ranking model
    trains", the explicit case's wording, said the opposite of what happens). On explicit
    data the same key does switch the ranking model off: nothing is said."""
    from metarec.model import ModelConfig, unused_model_settings

    off = ModelConfig(rank_model=False)
    assert unused_model_settings(off, explicit=False) == [
        "rank_model (implicit data: the ranking model is the only model)"
    ]
    assert unused_model_settings(off, explicit=True) == []


# --- FeedbackStore.written_for_other: the whole line, each direction ----------------------


@pytest.mark.parametrize(
    ("stored_by", "read_by", "example"),
    [
        ("explicit 1.0..5.0", "implicit", "a stored one-star rating, a dislike, as a 'played' 1"),
        (
            "explicit 1.0..10.0",
            "explicit 1.0..5.0",
            "each stored rating as a rating on this run's scale",
        ),
        ("implicit", "explicit 1.0..5.0", "a stored 'played' 1 as a one-star rating"),
    ],
)
def test_the_feedback_store_warning_is_one_whole_line_naming_the_store(
    tmp_path, stored_by, read_by, example
):
    """The warning `serve` and `update` print names which store (its path: a server may be
    given several over time), both meanings, and the misreading in full: between two
    rating scales it is the *scale* that differs (the existing test read only up to "a
    rating on this"). Pinned whole, so neither the path nor the closing word can go."""
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    path = tmp_path / "fb.sqlite3"
    store = FeedbackStore(path)
    store.add("r1", [FeedbackRow("i0", 1.0, None)], written_for=stored_by)
    assert store.written_for_other(read_by) == (
        f"feedback store {path} holds rows stored by a run on {stored_by} feedback, "
        f"read here as {read_by} ({example})"
    )


# --- files.log_frame: a Parquet label outside 0/1 -----------------------------------------


@pytest.mark.parametrize(("bad", "said"), [(2, "got 2"), (0.5, "got 0.5")])
def test_a_parquet_label_outside_0_1_is_named_by_its_row_and_its_value(tmp_path, bad, said):
    """A Parquet cell is a number, not text: label 2 is said "got 2" (not np.int64(2), nor
    '2' as if the file held the text "2", nor 2.0), a float one "got 0.5", and the place
    is "row N" counted from 1 (the fifth row here): the row a user goes to fix."""
    from metarec.data.files import read_log

    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(8)],
            "item_id": [f"i{i}" for i in range(8)],
            "label": [1, 0, 1, 1, bad, 0, 1, 1],
        }
    )
    pq = tmp_path / "T.parquet"
    frame.to_parquet(pq)
    with pytest.raises(MetarecError) as err:
        read_log(pq)
    msg = str(err.value)
    assert msg.endswith(f"T.parquet: row 5: label must be 0 or 1, {said}"), msg


# --- Predictor.side_rows on a users file of one column or of ids only ----------------------


@pytest.fixture(scope="module")
def narrow_runs(tmp_path_factory):
    """Two RUNs on the world of test_new_users: one fitted on a users file of ids only
    (user rows of width 0), one on a users file of one numeric column (width 1)."""
    tmp = tmp_path_factory.mktemp("audit186")
    _world(tmp, with_users=False)
    users = pd.read_csv(tmp / "U.csv")
    fit = ["fit", "--train", str(tmp / "T.csv"), "--items", str(tmp / "I.csv"), *FAST]
    runs = {}
    for name, cols in (("ids", ["user_id"]), ("age", ["user_id", "age"])):
        users[cols].to_csv(tmp / f"U_{name}.csv", index=False)
        runs[name] = tmp / f"RUN_{name}"
        assert main([*fit, "--users", str(tmp / f"U_{name}.csv"), "--out", str(runs[name])]) == 0
    return tmp, runs


def test_a_run_fitted_on_one_side_column_encodes_new_users(narrow_runs):
    """Only width 0 is refused: a users file of one numeric column (age) fits user rows
    of width 1, and a new user's age is encoded and used (refusing width 1 as well, as
    "no side columns", would turn away a RUN whose users file had a column)."""
    from metarec.predictor import Predictor

    _, runs = narrow_runs
    pred = Predictor.load(runs["age"])
    assert pred.model.features_.user_side.shape[1] == 1
    new = pd.DataFrame({"user_id": ["young", "old"], "age": [20, 56]})
    view, stats = pred.with_users(new)
    assert stats["new_users_with_side_data"] == 2
    side = view.model.features_.user_side.numpy()
    young, old = side[view.user_index("young")], side[view.user_index("old")]
    assert young.shape == (1,) and young[0] < old[0]  # each its own age, scaled


def test_an_ids_only_run_refuses_a_users_file_naming_it_and_what_to_do(narrow_runs, capsys):
    """`predict --users U_new.csv` on a RUN fitted on an ids-only users file: one line
    that names the file given (the user may pass several) and what to do ("leave it
    out"), exit 2, nothing written."""
    tmp, runs = narrow_runs
    pd.DataFrame({"user_id": ["new_space"], "club": ["space_club"]}).to_csv(
        tmp / "U_given.csv", index=False
    )
    out = tmp / "P.csv"
    argv = ["predict", "--run", str(runs["ids"]), "--support", str(tmp / "S.csv")]
    argv += ["--query", str(tmp / "Q.csv"), "--out", str(out), "--users", str(tmp / "U_given.csv")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert (
        "U_given.csv: this RUN's users file gave no side data to encode (no side column, or "
        "none with a value: user_id only); leave it out"
    ) in err, err
    assert not Path(out).exists()


def test_a_users_file_column_with_no_value_is_said_at_fit(narrow_runs, capsys):
    """A users file whose one side column is empty on every row (``u0,``) fits user rows
    of width 0, as an ids-only file does; fit said nothing of it, and `predict --users`
    later refused the RUN saying "user_id only" of a file that had a column. fit now says
    the column adds nothing, naming it (mutation audit 186)."""
    tmp, _ = narrow_runs
    pd.read_csv(tmp / "U.csv")[["user_id"]].assign(club="").to_csv(tmp / "U_club.csv", index=False)
    fit = ["fit", "--train", str(tmp / "T.csv"), "--items", str(tmp / "I.csv"), *FAST]
    capsys.readouterr()
    assert main([*fit, "--users", str(tmp / "U_club.csv"), "--out", str(tmp / "R_club")]) == 0
    err = capsys.readouterr().err
    assert "U_club.csv: column 'club' has no value on any row; it adds nothing" in err, err


@pytest.mark.parametrize(
    ("stored_by", "read_by", "example"),
    [
        ("implicit", "explicit 0.0..1.0", "each stored 0/1 label as a rating on this run's scale"),
        ("explicit 0.0..1.0", "implicit", "each stored rating as a 0/1 label"),
        (
            "implicit",
            "explicit 0.0..10.0",
            "a stored 'played' 1 as a rating of 1 on this run's 0.0..10.0 scale",
        ),
    ],
)
def test_the_feedback_store_warning_says_no_one_star_where_the_scale_has_none(
    tmp_path, stored_by, read_by, example
):
    """A 0/1 ``rating`` column fits as "explicit 0.0..1.0", where 1 is the top rating:
    the warning said a label store's 'played' 1 was read "as a one-star rating", and
    that such a run's stored 1 was "a one-star rating, a dislike" (mutation audit 186)."""
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    store = FeedbackStore(tmp_path / "fb.sqlite3")
    store.add("u", [FeedbackRow("i0", 1.0, None)], written_for=stored_by)
    said = store.written_for_other(read_by)
    assert said is not None and said.endswith(f"read here as {read_by} ({example})"), said
    assert "one-star" not in said
