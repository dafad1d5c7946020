"""`metarec update`: RUN + feedback store -> RUN2 that loads and has moved toward the feedback.

Known answer: u1 likes garden items in the training log (rating 5) and dislikes space ones;
their feedback reverses that. Before the update u1's predicted ratings favour garden items;
after it, on items nobody has rated (cold items 30..39, scored from their text), the
space-minus-garden gap must have moved toward space by a wide margin. A brand-new feedback
user becomes a warm user of RUN2 and gets their feedback's taste with no request support.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from metarec.cli import main
from metarec.predictor import Predictor
from metarec.serve.feedback import FeedbackRow, FeedbackStore
from metarec.types import MetarecError
from metarec.update import merge_feedback
from serve_world import shared_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


def likes_space(n: int = 12) -> list[FeedbackRow]:
    return [FeedbackRow(f"it{i}", 5.0 if i % 2 == 0 else 1.0, None) for i in range(n)]


def space_gap(pred: Predictor, user: str) -> float:
    """Mean predicted rating of cold space items minus cold garden items, no support."""
    q = pd.DataFrame({"user_id": user, "item_id": [f"it{i}" for i in range(30, 40)]})
    none = pd.DataFrame({"user_id": [], "item_id": [], "rating": []})
    s = pred.predict(none, q)[0]["score"].to_numpy()
    return float(s[0::2].mean() - s[1::2].mean())


def test_update_writes_a_run_that_moves_toward_the_feedback(run, tmp_path, capsys):
    store = FeedbackStore(tmp_path / "fb")
    store.add("u1", likes_space())
    store.add("newbie", likes_space())
    store.add("newbie", [FeedbackRow("not-an-item", 3.0, None)])
    store.add("newbie", [FeedbackRow("it0", 4.0, None)])  # a later rating of it0: replaces
    run2 = tmp_path / "RUN2"
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb"), "--out", str(run2)]
    assert main([*argv, "--steps", "15"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["feedback_rows"] == 26 and report["feedback_rows_unknown_item"] == 1
    assert report["feedback_rows_used"] == 24  # newbie's two it0 rows fold into one
    assert report["new_users"] == 1 and report["feedback_users"] == 2
    before, after = Predictor.load(run), Predictor.load(run2)
    # the member counts the RUN holds (model.rating_members), as fit's summary gives them
    members = getattr(after.model.rating_.learner, "members", 1)
    assert report["rating_members"] == members and report["rank_members"] == 1
    assert len(after.users) == len(before.users) + 1 and after.users.ids[-1] == "newbie"
    # u1's feedback replaced their training rows for the items it names
    assert len(after.train) == len(before.train) + 24 - report["replaced_training_rows"]
    g0, g1 = space_gap(before, "u1"), space_gap(after, "u1")
    assert g0 < -1.0 and g1 > g0 + 2.0, (g0, g1)
    assert space_gap(after, "newbie") > 1.0
    with pytest.raises(MetarecError, match="no support rows"):
        space_gap(before, "newbie")  # cold in RUN: nothing to adapt on
    # the meta-update itself moved the parameters and lowered the (in-sample) feedback loss
    for part in ("rating", "rank"):
        loss = report[f"{part}_feedback_loss_in_sample"]
        assert loss["after"] < loss["before"]
    p0, p1 = before.model.rank_.params, after.model.rank_.params
    assert any(not np.array_equal(p0[k].numpy(), p1[k].numpy()) for k in p0)
    record = json.loads((run2 / "meta.json").read_text())["update"]
    assert record["steps"] == 15
    # every setting the result depends on: two seeds gave two models with one record
    assert {"seed", "meta_batch", "feedback_share", "outer_lr"} <= record.keys()
    # the store and the last row read, so that a later update knows what is folded in
    assert record["feedback_store"] == store.store_id() and record["feedback_through"] == 26
    # a second update keeps the first's record: "updates" lists both, "update" the latest
    store.add("late", [FeedbackRow("it3", 2.0, None), FeedbackRow("it5", 4.0, None)])
    run3 = tmp_path / "RUN3"
    again = ["update", "--run", str(run2), "--feedback", str(tmp_path / "fb"), "--out", str(run3)]
    assert main([*again, "--steps", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    # every stored row merges again, but only "late" has rows RUN2 lacks
    assert report["feedback_rows"] == 28 and report["feedback_rows_new"] == 2
    assert report["feedback_users"] == 1 and report["new_users"] == 1
    assert report["replaced_training_rows"] == 0  # "late" had no training rows
    meta = json.loads((run3 / "meta.json").read_text())
    assert [u["steps"] for u in meta["updates"]] == [15, 2] and meta["update"]["steps"] == 2
    assert [u["feedback_through"] for u in meta["updates"]] == [26, 28]
    # RUN3's log is RUN2's with late's two rows: the rows RUN2 folded in are not doubled
    assert len(Predictor.load(run3).train) == len(after.train) + 2
    # nothing stored since RUN3's update: refused, nothing written
    run4 = tmp_path / "RUN4"
    argv = ["update", "--run", str(run3), "--feedback", str(tmp_path / "fb"), "--out", str(run4)]
    assert main(argv) == 2
    assert "no row stored since the update that wrote this RUN" in capsys.readouterr().err
    assert not run4.exists()
    # from RUN, which no update of this store wrote, every row is new again
    assert main([*argv[:2], str(run), *argv[3:], "--steps", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["feedback_rows_new"] == 28


def test_feedback_share_sets_how_many_of_each_meta_batch_are_feedback_users(run, monkeypatch):
    """UpdateConfig.feedback_share: each step draws round(meta_batch * share) episodes
    from the feedback users and the rest from the whole log (mutation audit, probe 147:
    half of every batch, whatever the share, passed every test)."""
    import metarec.update as U

    draws = []

    class Counting(U._TaskSampler):
        def __init__(self, *a, negatives_of=None, **k):
            super().__init__(*a, negatives_of=negatives_of, **k)
            self.who = "all" if negatives_of is None else "feedback"

        def sample(self, n, rng):
            draws.append((self.who, n))
            return super().sample(n, rng)

    monkeypatch.setattr(U, "_TaskSampler", Counting)
    pred = Predictor.load(run)
    fb = pd.DataFrame(
        {
            "user_id": "u1",
            "item_id": [r.item_id for r in likes_space()],
            "rating": [r.rating for r in likes_space()],
            "timestamp": pd.array([None] * 12, dtype="Int64"),
        }
    )
    parts = sum(p is not None for p in (pred.model.rating_, pred.model.rank_))
    assert parts == 2  # the shared run trains both a rating and a ranking model
    for share, want in ((0.3, [("feedback", 3), ("all", 7)]), (1.0, [("feedback", 10)])):
        draws.clear()
        U.update(pred, fb, U.UpdateConfig(steps=2, meta_batch=10, feedback_share=share))
        assert draws == want * 2 * parts, share  # every step of every part
    draws.clear()
    U.update(pred, fb, U.UpdateConfig(steps=2, meta_batch=10, feedback_share=0.0))
    assert draws == [("all", 10)] * 2 * parts


def test_merge_feedback_latest_row_wins(run):
    pred = Predictor.load(run)
    u0_items = set(pred.items.ids[pred.train.item_idx[pred.train.user_idx == 0]])
    item = sorted(u0_items)[0]
    fb = pd.DataFrame(
        {
            "user_id": ["u0", "u0", "x"],
            "item_id": [item, item, "it3"],
            "rating": [2.0, 4.0, 5.0],
            "timestamp": pd.array([None, None, 7], dtype="Int64"),
        }
    )
    users, train, fb_users, counts = merge_feedback(pred, fb)
    # u0's training row only: a repeated feedback row is not a training row (it counted 2)
    assert counts["replaced_training_rows"] == 1
    rows = (train.user_idx == 0) & (train.item_idx == pred.items.index(item))
    assert train.rating[rows].tolist() == [4.0]
    x = users.index("x")
    assert train.timestamp[train.user_idx == x].tolist() == [7]
    assert sorted(fb_users.tolist()) == [0, x]


def test_merge_feedback_after_an_earlier_update_emphasises_only_the_new_rows_users(run):
    """``since``: rows through it were folded in by an earlier update. They merge again,
    by the one rule for a user's rows (a new row timed before a folded one of its item
    does not replace it, as the server keeps the newest), but the feedback users are
    those with rows after it, and the counts say what is new."""
    pred = Predictor.load(run)
    fb = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "a", "c"],
            "item_id": ["it1", "it2", "it3", "it1", "nowhere"],
            "rating": [5.0, 4.0, 2.0, 1.0, 3.0],
            "timestamp": pd.array([900, 900, None, 800, None], dtype="Int64"),
            "seq": [1, 2, 3, 4, 5],
        }
    )
    with pytest.warns(UserWarning, match="outside the RUN's catalogue"):
        users, train, fb_users, counts = merge_feedback(pred, fb, since=3)
    # a's row 4 is new; b has none after 3; c's only row names no item of the catalogue
    assert fb_users.tolist() == [users.index("a")]
    assert counts["feedback_rows_new"] == 2 and counts["feedback_users"] == 1
    assert counts["feedback_rows"] == 5 and counts["feedback_rows_used"] == 3
    a_it1 = (train.user_idx == users.index("a")) & (train.item_idx == pred.items.index("it1"))
    assert train.rating[a_it1].tolist() == [5.0]  # the newer row 1, folded before, stays
    assert (train.user_idx == users.index("b")).sum() == 1  # b's row merges all the same
    with pytest.raises(MetarecError, match="no row stored since the update .* number 5"):
        merge_feedback(pred, fb, since=5)
    with pytest.raises(MetarecError, match="all 1 rows stored since .* outside the catalogue"):
        with pytest.warns(UserWarning):
            merge_feedback(pred, fb, since=4)
    with pytest.raises(MetarecError, match="column 'seq' is missing"):
        merge_feedback(pred, fb.drop(columns="seq"), since=1)


def test_an_update_counts_only_the_marks_of_its_own_store():
    """update._folded_through: the last row an earlier update read from *this* store (and
    its digest); a record of another store, one without a store id, or a hand-edited mark
    sets none."""
    from metarec.update import _folded_through

    records = [
        {"feedback_store": "aa", "feedback_through": 7},
        {"feedback_store": "bb", "feedback_through": 40},
        {"feedback_store": "aa", "feedback_through": 12, "feedback_through_row": "d12"},
        {"feedback_store": "aa", "feedback_through": "99"},
        {"steps": 100},  # an update from before marks were kept
        "junk",
    ]
    # with the digest recorded beside the mark (None where a record has none)
    assert _folded_through(records, "aa") == (12, "d12")
    assert _folded_through(records, "bb") == (40, None)
    assert _folded_through(records, "cc") == (0, None)
    assert _folded_through(records, None) == (0, None)
    # a mark recorded without a digest (an update from before review 156) and a later one
    # of the same row with it: still that mark (compared as tuples, None < str raised)
    tie = [
        {"feedback_store": "aa", "feedback_through": 12},
        {"feedback_store": "aa", "feedback_through": 12, "feedback_through_row": "d12"},
    ]
    assert _folded_through(tie, "aa")[0] == 12
    # and the newest record's digest: the first's (none) had every later update warn of a
    # restored store and count every row as new, though the newest digest matched
    # (mutation audit 162)
    assert _folded_through(tie, "aa") == (12, "d12")


def test_the_mark_of_the_last_row_read_tells_each_stored_value_apart():
    """update._row_digest: a store restored from an older copy can hold, at the number
    the earlier update read last, a row of the same user and item with another rating
    or time (rated again since the backup). That is another row: its digest differs in
    each stored value, so every row counts as new rather than folded in."""
    from metarec.update import _row_digest

    row = pd.DataFrame(
        {
            "user_id": ["u"],
            "item_id": ["it1"],
            "rating": [4.0],
            "timestamp": pd.array([100], dtype="Int64"),
            "seq": [7],
        }
    )
    mark = _row_digest(row, 7)
    assert re.fullmatch(r"[0-9a-f]{16}", mark) and _row_digest(row, 8) is None
    assert _row_digest(row.copy(), 7) == mark  # the same row: the same mark
    for col, value in (("user_id", "v"), ("item_id", "it2"), ("rating", 5.0), ("timestamp", 101)):
        other = row.copy()
        other[col] = pd.array([value], dtype=row[col].dtype)
        assert _row_digest(other, 7) != mark, col
    untimed = row.assign(timestamp=pd.array([None], dtype="Int64"))
    assert _row_digest(untimed, 7) not in (None, mark)


def test_a_store_keeps_its_id_and_a_store_made_again_gets_another(tmp_path):
    first = FeedbackStore(tmp_path / "fb")
    sid = first.store_id()
    assert re.fullmatch(r"[0-9a-f]{32}", sid)
    first.add("u", [FeedbackRow("it1", 4.0, None)])
    assert FeedbackStore(tmp_path / "fb").store_id() == sid  # opened again for writing
    assert FeedbackStore(tmp_path / "fb", read_only=True).store_id() == sid
    (tmp_path / "fb" / "feedback.sqlite3").unlink()
    again = FeedbackStore(tmp_path / "fb")
    assert again.store_id() not in (None, sid)
    # a store from before ids were kept, only read since: no id, so no update marks it
    import sqlite3

    old = tmp_path / "old.sqlite3"
    with sqlite3.connect(old) as con:
        con.execute(
            "CREATE TABLE feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT, "
            "item_id TEXT, rating REAL, timestamp INTEGER, received_at REAL)"
        )
    assert FeedbackStore(old, read_only=True).store_id() is None


def test_feedback_on_items_outside_the_catalogue_is_left_out_with_a_warning(run):
    # the catalogue is the fit's: these rows can never be used, and the summary's count
    # alone went unnoticed (the server's reply had said "kept for a later update")
    pred = Predictor.load(run)
    fb = pd.DataFrame(
        {
            "user_id": ["u0", "u0", "u1"],
            "item_id": ["brandnew", "it3", "brandnew"],
            "rating": [5.0, 4.0, 2.0],
        }
    )
    with pytest.warns(UserWarning, match=r"2 row\(s\) on 1 item\(s\) outside the RUN's catalogue"):
        _, _, _, counts = merge_feedback(pred, fb)
    assert counts["feedback_rows_unknown_item"] == 2 and counts["feedback_rows_used"] == 1


def test_merge_feedback_reads_ids_by_the_rules_of_every_other_path(run):
    # a store written through the Python FeedbackStore: " u0 " was a new user beside u0,
    # " it2" an unknown item, and "" or "a\nb" became user ids of the RUN
    pred = Predictor.load(run)
    fb = pd.DataFrame({"user_id": [" u0 ", "u0"], "item_id": ["it1", " it2"], "rating": [5.0, 1.0]})
    users, _, fb_users, counts = merge_feedback(pred, fb)
    assert len(users) == len(pred.users) and fb_users.tolist() == [0]
    for bad, said in (("", "user_id '': id is empty"), ("a\nb", "control character")):
        one = pd.DataFrame({"user_id": [bad], "item_id": ["it1"], "rating": [5.0]})
        with pytest.raises(MetarecError, match=re.escape(said)):
            merge_feedback(pred, one)


def test_untimed_feedback_goes_after_timed_feedback_stamped_past_the_training_data(run):
    # the server counts an untimed row as newest; update numbered untimed rows from the
    # training data's end, before a timed row stamped later (a current unix time)
    pred = Predictor.load(run)
    late = int(pred.train.timestamp.max()) + 10_000
    fb = pd.DataFrame(
        {
            "user_id": ["x", "x"],
            "item_id": ["it1", "it2"],
            "rating": [5.0, 1.0],
            "timestamp": pd.array([late, None], dtype="Int64"),
        }
    )
    users, train, _, _ = merge_feedback(pred, fb)
    x = train.user_idx == users.index("x")
    stamp = dict(zip(pred.items.ids[train.item_idx[x]], train.timestamp[x].tolist(), strict=True))
    assert stamp["it2"] > stamp["it1"] == late


def test_merge_feedback_keeps_the_newest_timestamp_as_the_server_does(run):
    # a row stored later with an older timestamp loses to the newer one (update kept the
    # later stored row, the server the newest timestamp); an untimed row counts as newest
    from metarec.serve.feedback import FeedbackRow, newest_per_item

    pred = Predictor.load(run)
    fb = pd.DataFrame(
        {
            "user_id": ["new", "new", "new", "new", "new"],
            "item_id": ["it3", "it4", "it3", "it5", "it5"],
            "rating": [5.0, 4.0, 1.0, 2.0, 3.0],
            "timestamp": pd.array([2000, 2001, 1000, None, 3000], dtype="Int64"),
        }
    )
    users, train, _, counts = merge_feedback(pred, fb)
    mine = train.user_idx == users.index("new")
    got = dict(zip(pred.items.ids[train.item_idx[mine]], train.rating[mine].tolist(), strict=True))
    assert got == {"it3": 5.0, "it4": 4.0, "it5": 2.0}
    assert counts["replaced_training_rows"] == 0 and counts["new_users"] == 1
    rows = [
        FeedbackRow(i, float(r), None if pd.isna(t) else int(t))
        for i, r, t in zip(fb.item_id, fb.rating, fb.timestamp, strict=True)
    ]
    assert {r.item_id: r.rating for r in newest_per_item(rows)} == got


def test_update_refuses_bad_inputs(run, tmp_path):
    with pytest.raises(MetarecError, match="no feedback database"):
        from metarec.update import update_run

        update_run(run, tmp_path / "missing.sqlite3", tmp_path / "R2")
    FeedbackStore(tmp_path / "empty")
    assert (
        main(
            [
                "update",
                "--run",
                str(run),
                "--feedback",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "R3"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "R3").exists()
    assert (
        main(
            ["update", "--run", str(run), "--feedback", str(tmp_path / "empty"), "--out", str(run)]
        )
        == 2
    )


def test_update_refuses_an_endless_number_of_steps(run, tmp_path, capsys):
    # 10**12 steps ran on with no output until killed: update has no stopping rule
    FeedbackStore(tmp_path / "fb").add("u1", likes_space())
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb")]
    assert main([*argv, "--out", str(tmp_path / "RUN2"), "--steps", str(10**12)]) == 2
    err = capsys.readouterr().err
    assert "steps must be at most 100000" in err and err.count("\n") == 1
    assert not (tmp_path / "RUN2").exists()


@pytest.mark.parametrize("lr", ["nan", "inf", "0", "-1"])
def test_update_refuses_a_learning_rate_that_is_not_finite_and_positive(run, tmp_path, capsys, lr):
    FeedbackStore(tmp_path / "fb").add("u1", likes_space())
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb")]
    assert main([*argv, "--out", str(tmp_path / "RUN2"), "--lr", lr]) == 2
    err = capsys.readouterr().err
    assert "outer_lr finite and > 0" in err and err.count("\n") == 1
    assert not (tmp_path / "RUN2").exists()


def test_update_reads_the_feedback_file_and_never_writes_to_it(run, tmp_path, capsys):
    """Pointed at an unrelated SQLite file (or an empty one), update says so and leaves
    it byte for byte as it was (it used to create its tables inside it first)."""
    import sqlite3

    other, empty = tmp_path / "other.sqlite", tmp_path / "zero.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE mine (a)")
    empty.write_bytes(b"")
    for f in (other, empty):
        before = f.read_bytes()
        argv = ["update", "--run", str(run), "--feedback", str(f), "--out", str(tmp_path / "R2")]
        assert main(argv) == 2
        assert "not a metarec feedback database" in capsys.readouterr().err
        assert f.read_bytes() == before and not (tmp_path / "R2").exists()


@pytest.mark.parametrize(
    "column, value, said",
    [
        ("rating", "'abc'", "damaged feedback store: stored rating 'abc' is not a finite"),
        ("rating", "9e999", "stored rating inf is not a finite number"),
        ("rating", "1e39", "stored rating 1e+39 is not a finite number in float32's range"),
        ("timestamp", "'yesterday'", "stored timestamp 'yesterday' is not an integer"),
        ("timestamp", "1.5", "stored timestamp 1.5 is not an integer"),
        ("timestamp", str(2**63 - 1), "is not an integer in"),
    ],
)
def test_update_refuses_a_store_with_values_feedback_never_writes(
    run, tmp_path, capsys, column, value, said
):
    """SQLite keeps text in a REAL column; a timestamp past /feedback's bounds made the
    next update overflow. One line and exit 2, not a pandas traceback; the same rule and
    message as the server's (FeedbackStore.get), which update's frame() used to restate
    without the float32 bound or inf."""
    import sqlite3

    store = FeedbackStore(tmp_path / "fb")
    store.add("u1", likes_space(2))
    with sqlite3.connect(store.path) as con:
        con.execute(f"UPDATE feedback SET {column} = {value} WHERE seq = 1")
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb")]
    assert main([*argv, "--out", str(tmp_path / "R2")]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1


def test_feedback_on_an_item_nobody_rated_keeps_that_items_domain():
    """update coded each item's domain from the training log, so an item nobody had
    rated got code 0 (another domain's); it now comes from the RUN's item table."""
    from metarec.types import IdMap, Interactions
    from metarec.update import _item_domain_codes

    class P:  # the three fields _item_domain_codes reads
        items = IdMap(np.array(["b0", "b1", "m0", "t0"], dtype=object))
        item_domain = np.array(["books", "books", "movies", "tools"], dtype=object)
        info = {"domains": [{"name": "books"}, {"name": "movies"}]}
        train = Interactions(
            np.array([0, 0]),
            np.array([0, 2]),
            np.array([5.0, 4.0], np.float32),
            np.array([1, 2]),
            np.array([0, 1], np.int16),
        )

    codes = _item_domain_codes(P())
    assert codes.tolist() == [0, 0, 1, 2]  # b1 unrated: books; t0: a new code, not books


def test_update_describes_the_merged_log_and_export_says_it_is_in_sample(run, tmp_path, capsys):
    # meta.json (and serve's /info) kept the fitted log's counts after update merged rows
    store = FeedbackStore(tmp_path / "fb")
    store.add("newbie", likes_space())
    run2 = tmp_path / "RUN2"
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb"), "--out", str(run2)]
    assert main([*argv, "--steps", "5"]) == 0
    capsys.readouterr()
    before, after = Predictor.load(run), Predictor.load(run2)
    info = json.loads((run2 / "meta.json").read_text())
    assert info["interactions"] == len(after.train) == len(before.train) + 12
    assert info["users"] == len(before.users) + 1
    assert info["catalogue_users"] == len(after.users)
    assert sum(info["rating_counts"].values()) == len(after.train)
    assert info["item_text_columns"] == before.info["item_text_columns"]
    out = tmp_path / "EXP"
    assert main(["export", "--run", str(run2), "--out", str(out), "--dtype", "fp16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "update trained on every user" in report["note"]


def _fit_two_domains(tmp_path, where: str):
    """serve_world's files with items it0-it14 in "books" and the rest in "films", named
    in one file only (``where``: "T" or "I"), fitted: (paths, RUN, RUN2 to update into)."""
    from serve_world import FAST, make_world

    paths = make_world(tmp_path)
    frame = pd.read_csv(paths[where])
    frame["domain"] = np.where(frame.item_id.str[2:].astype(int) < 15, "books", "films")
    frame.to_csv(paths[where], index=False)
    run, run2 = tmp_path / "RUN", tmp_path / "RUN2"
    fit = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), "--out", str(run)]
    assert main([*fit, *FAST]) == 0
    return paths, run, run2


def test_update_takes_feedback_on_an_unrated_item_of_a_domain_only_the_catalogue_has(tmp_path):
    # T names two domains and I none: unrated items are domain "default", which no
    # training row has. Feedback on one gave it code 2 beside two domain names, and
    # update died in an IndexError while counting the merged log
    paths, run, run2 = _fit_two_domains(tmp_path, "T")
    store = FeedbackStore(tmp_path / "fb")
    store.add("c9", [FeedbackRow("it35", 1.0, None), FeedbackRow("it3", 1.0, None)])
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb"), "--out", str(run2)]
    assert main([*argv, "--steps", "3"]) == 0
    info = json.loads((run2 / "meta.json").read_text())
    by_name = {d["name"]: d["interactions"] for d in info["domains"]}
    assert by_name["default"] == 1 and set(by_name) == {"books", "films", "default"}
    pred = Predictor.load(run2)
    assert pred.item_domain[pred.items.index("it35")] == "default"
    # feedback on rated items only: the catalogue-only domain is not listed, empty
    store2 = FeedbackStore(tmp_path / "fb2")
    store2.add("c8", [FeedbackRow("it3", 1.0, None), FeedbackRow("it20", 5.0, None)])
    run3 = tmp_path / "RUN3"
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb2"), "--out", str(run3)]
    assert main([*argv, "--steps", "3"]) == 0
    info = json.loads((run3 / "meta.json").read_text())
    assert sorted(d["name"] for d in info["domains"]) == ["books", "films"]


def test_a_store_deleted_under_concurrent_writers_is_made_again_once(tmp_path):
    # under load a second writer saw the first's new empty file, skipped the schema and
    # failed ("no such table"); the old -wal beside a new file read as "not a database"
    import threading

    store = FeedbackStore(tmp_path / "fb")
    store.add("a", [FeedbackRow("it1", 5.0, None)])
    for f in (tmp_path / "fb").iterdir():
        if f.name.endswith("sqlite3"):
            f.unlink()  # the main file only: its -wal and -shm stay
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            store.add(f"u{i}", [FeedbackRow("it2", 4.0, None)])
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(len(store.get(f"u{i}")) for i in range(12)) == 12


def test_feedback_replaces_the_training_row_of_its_item_whatever_its_time(run):
    # as serve and predict do (a support row replaces the training row of its item): a
    # rule by timestamp parted update from the service and dropped feedback whose clock
    # differs (seconds against a log's milliseconds, or a log without times)
    pred = Predictor.load(run)
    mine = pred.train.user_idx == 0
    item_idx, ts = pred.train.item_idx[mine][0], int(pred.train.timestamp[mine][0])
    item = pred.items.ids[item_idx]
    old = pd.DataFrame(
        {
            "user_id": ["u0", "u0"],
            "item_id": [item, "it3"],
            "rating": [1.0, 5.0],
            "timestamp": pd.array([ts - 1, ts + 10**6], dtype="Int64"),
        }
    )
    _, train, _, counts = merge_feedback(pred, old)
    assert counts["feedback_rows_used"] == 2 and counts["replaced_training_rows"] >= 1
    rows = (train.user_idx == 0) & (train.item_idx == item_idx)
    assert train.rating[rows].tolist() == [1.0] and train.timestamp[rows].tolist() == [ts - 1]
    # the service adapts on the same rating: the feedback row is the support's
    sup, _ = pred.support_of([item], [1.0], [ts - 1])
    items, ratings = pred.model._history(0, sup)
    assert ratings[items == item_idx].tolist() == [1.0]


def test_update_checks_its_out_first_and_never_writes_a_diverged_model(run, tmp_path, capsys):
    import sqlite3

    FeedbackStore(tmp_path / "fb").add("u1", likes_space())
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb")]
    # --out checked before the training (it was after up to 100,000 steps)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x").write_text("mine")
    assert main([*argv, "--out", str(junk), "--steps", "100000"]) == 2
    assert "refusing to replace it" in capsys.readouterr().err
    # one step at an absurd rate: the loss was checked before the step only, so the NaN
    # weights it made were written with exit 0
    assert main([*argv, "--out", str(tmp_path / "R2"), "--lr", "1e30", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "after the last step" in err and err.count("\n") == 1, err
    assert not (tmp_path / "R2").exists()
    # a seed out of range is named as update's own
    assert main([*argv, "--out", str(tmp_path / "R3"), "--seed", "-1"]) == 2
    assert "update: seed must be in [0," in capsys.readouterr().err
    # a table named feedback with other columns: one line, not an sqlite3 traceback
    con = sqlite3.connect(tmp_path / "odd.sqlite3")
    con.execute("CREATE TABLE feedback (uid TEXT, iid TEXT, stars REAL)")
    con.commit()
    con.close()
    bad = ["update", "--run", str(run), "--feedback", str(tmp_path / "odd.sqlite3")]
    assert main([*bad, "--out", str(tmp_path / "R4")]) == 2
    err = capsys.readouterr().err
    assert "not a metarec feedback database" in err and "user_id" in err and err.count("\n") == 1


def test_a_null_id_in_a_hand_made_store_is_named(run):
    pred = Predictor.load(run)
    fb = pd.DataFrame(
        {"user_id": ["u0", None], "item_id": ["it1", "it2"], "rating": [4.0, 5.0]}
    ).assign(timestamp=pd.array([None, None], dtype="Int64"))
    with pytest.raises(MetarecError, match=r"row 2: user_id is missing \(NULL\) in 1 rows"):
        merge_feedback(pred, fb)


def test_a_domain_only_the_items_file_names_is_the_logs_too_before_and_after_update(tmp_path):
    # I names two domains and T none: the log was all "default", and update then coded
    # feedback on never-rated items by the catalogue (a "films" beside "default" with
    # films in it). The log's rows take their item's domain at fit
    paths, run, run2 = _fit_two_domains(tmp_path, "I")
    t = pd.read_csv(paths["T"])
    films = int((t.item_id.str[2:].astype(int) >= 15).sum())
    info = json.loads((run / "meta.json").read_text())
    assert {d["name"]: d["interactions"] for d in info["domains"]} == {
        "books": len(t) - films,
        "films": films,
    }
    store = FeedbackStore(tmp_path / "fb")
    store.add("c9", [FeedbackRow("it35", 1.0, None), FeedbackRow("it3", 1.0, None)])
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb"), "--out", str(run2)]
    assert main([*argv, "--steps", "3"]) == 0
    info = json.loads((run2 / "meta.json").read_text())
    assert {d["name"]: d["interactions"] for d in info["domains"]} == {
        "books": len(t) - films + 1,
        "films": films + 1,
    }


def test_stored_values_are_checked_on_the_rows_an_update_uses(run):
    # probe 141: one out-of-scale row on an item outside the catalogue (another run's, in
    # a shared store) refused the whole update, naming neither user nor item; such rows
    # are left out with a warning, so their values are not this run's to judge
    pred = Predictor.load(run)
    fb = pd.DataFrame(
        {
            "user_id": ["other", "u0"],
            "item_id": ["not-in-this-catalogue", "it1"],
            "rating": [50.0, 4.0],
        }
    ).assign(timestamp=pd.array([None, None], dtype="Int64"))
    with pytest.warns(UserWarning, match="outside the RUN's catalogue"):
        _, _, _, counts = merge_feedback(pred, fb)
    # a bad value the update would use is refused, naming its row
    fb.loc[0, "item_id"] = "it2"
    with pytest.raises(
        MetarecError, match=r"rating 50 is outside .* \(first: user 'other', item 'it2'\)"
    ):
        merge_feedback(pred, fb, "store: stored feedback")


def test_update_says_when_the_store_holds_rows_of_a_run_on_other_feedback(run, tmp_path):
    from metarec.serve.feedback import FeedbackRow, FeedbackStore
    from metarec.update import UpdateConfig, update_run

    store = FeedbackStore(tmp_path / "fb")
    store.add("u0", [FeedbackRow("it1", 1.0, None)], written_for="implicit")
    with pytest.warns(UserWarning, match="holds rows stored by a run on implicit feedback"):
        update_run(run, tmp_path / "fb", tmp_path / "RUN2", UpdateConfig(steps=1))


def test_a_store_restored_from_an_older_copy_counts_every_row_as_new(run, tmp_path):
    """A store restored from a backup numbers its new rows from its own end again: rows
    the RUN never saw took numbers an earlier update had read, and would have counted as
    folded in (review 156). The row at the mark is checked: another row there, or none,
    and every stored row counts as new, with a warning."""
    import shutil

    from metarec.update import UpdateConfig, update

    store = FeedbackStore(tmp_path / "fb")
    store.add("u1", likes_space(6))
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(store.path, backup)  # 6 rows
    store.add("u2", likes_space(4))  # rows 7-10
    sid, frame = store.snapshot()
    assert sid == store.store_id() and frame["seq"].tolist() == list(range(1, 11))
    pred = Predictor.load(run)
    cfg = UpdateConfig(steps=1)
    run2, report = update(pred, frame, cfg, store=sid)
    assert report["feedback_through"] == 10 and len(report["feedback_through_row"]) == 16
    # the same store, two new rows: the mark holds
    store.add("late", [FeedbackRow("it3", 2.0, None), FeedbackRow("it5", 4.0, None)])
    _, frame = store.snapshot()
    _, again = update(run2, frame, cfg, store=sid)
    assert again["feedback_rows_new"] == 2 and again["feedback_users"] == 1
    # restored: rows 7-12 are others now; row 10 is not the row read
    shutil.copy(backup, store.path)
    for side in ("-wal", "-shm"):
        (tmp_path / "fb" / f"feedback.sqlite3{side}").unlink(missing_ok=True)
    store.add("v", likes_space(6))
    sid2, frame = store.snapshot()
    assert sid2 == sid and frame["seq"].max() == 12
    with pytest.warns(UserWarning, match="row 10, the last an earlier update of this RUN read"):
        _, restored = update(run2, frame, cfg, store=sid)
    assert restored["feedback_rows_new"] == 12
    # the same, the mark with no digest beside it (a RUN updated before review 156): a
    # mark that cannot be checked is not trusted either, every stored row counts as new
    for rec in run2.info["updates"]:
        rec.pop("feedback_through_row")
    with pytest.warns(UserWarning, match="every stored row counts as new"):
        _, unchecked = update(run2, frame, cfg, store=sid)
    assert unchecked["feedback_rows_new"] == 12
