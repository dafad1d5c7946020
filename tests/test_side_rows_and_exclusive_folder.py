"""Predictor.side_rows / UserSideRows.row_of, the server's side-data memo, the --out
folder hold (exclusive_folder) and read_side's "Domain" warning. Written by mutation
audit 185 of 8325c75..9e8c259: each test kills a mutant the suite let live, or pins a
defect the audit found (an ids-only users file, a failed run's parent folders, the lock
file on a filesystem without flock)."""

import fcntl
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from metarec.atomic import LOCK_NAME, exclusive_folder
from metarec.predictor import Predictor
from metarec.types import MetarecError
from test_new_users import _world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A RUN fitted with a users file (club: category, age: number)."""
    return _world(tmp_path_factory.mktemp("audit185"))


# --- Predictor.side_rows / UserSideRows.row_of --------------------------------------------


def test_row_of_is_the_row_the_view_gives_each_user(run):
    """index_of / row_of give the index and row the built view holds for each user given
    now (not the first or the last row); an earlier view's new users keep their rows in
    the view, and the rows hold none of them (a server keeps many such values)."""
    pred = Predictor.load(run)
    first = pd.DataFrame(
        {"user_id": ["a", "b"], "club": ["space_club", "garden_club"], "age": [52, 23]}
    )
    view, _ = pred.with_users(first)
    later = pd.DataFrame(
        {
            "user_id": ["c", "d", "e"],
            "club": ["garden_club", "space_club", "garden_club"],
            "age": [24, 50, 30],
        }
    )
    rows = view.side_rows(later)
    assert rows.given.shape[0] == 3  # only the rows given now
    built = view.with_side_rows(rows)
    side = built.model.features_.user_side.numpy()
    earlier = view.model.features_.user_side.numpy()
    n = len(pred.users)
    seen = set()
    for u in "ab":
        assert rows.index_of(u) is None
        np.testing.assert_array_equal(side[built.user_index(u)], earlier[view.user_index(u)])
        seen.add(side[built.user_index(u)].tobytes())
        with pytest.raises(MetarecError, match="no row given now"):
            rows.row_of(built.user_index(u))
    for u in "cde":
        i = built.user_index(u)
        assert i > n and rows.index_of(u) == i
        got = rows.row_of(i)
        np.testing.assert_array_equal(got, side[i], err_msg=u)
        seen.add(got.tobytes())
    assert len(seen) == 5  # five different rows: a wrong index cannot pass by chance
    with pytest.raises(MetarecError, match="encoded for another predictor"):
        pred.with_side_rows(rows)  # rows placed for the view, not the base


def test_a_server_on_a_view_scores_each_new_users_own_data(run):
    """create_app takes any Predictor, a view holding earlier new users included. A new
    user's data there is scored as predict --users scores it on that view, and one user
    sending other data with the same support gets their new row, not the cached one."""
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    pred = Predictor.load(run)
    earlier = pd.DataFrame(
        {"user_id": ["a", "b"], "club": ["space_club", "garden_club"], "age": [52, 23]}
    )
    view, _ = pred.with_users(earlier)
    client = TestClient(create_app(view))
    items = [f"it{i}" for i in range(30, 40)]
    one = [{"item_id": "it31", "rating": 4}]
    for side in ({"club": "garden_club", "age": 25}, {"club": "space_club", "age": 55}):
        r = client.post(
            "/score", json={"user_id": "n1", "interactions": one, "item_ids": items, "user": side}
        )
        assert r.status_code == 200, r.text
        assert r.json()["user_side"] == "new"
        got = [x["score"] for x in r.json()["scores"]]
        out, _ = view.predict(
            pd.DataFrame({"user_id": ["n1"], "item_id": ["it31"], "rating": [4]}),
            pd.DataFrame({"user_id": ["n1"] * len(items), "item_id": items}),
            users=pd.DataFrame({"user_id": ["n1"], **{k: [v] for k, v in side.items()}}),
        )
        assert np.allclose(out.score.to_numpy(), got, atol=1e-5), side


def test_with_users_of_listed_users_only_is_this_predictor(run):
    """Users who all keep their fitted rows change no row: with_users gives this same
    predictor (no copy of the user table), with the counts said."""
    pred = Predictor.load(run)
    listed = pd.DataFrame({"user_id": ["u0", "u1"], "club": ["garden_club"] * 2, "age": [23, 24]})
    rows = pred.side_rows(listed)
    assert rows.given is None and rows.given_ids == () and rows.refill == {}
    view, stats = pred.with_users(listed)
    assert view is pred
    assert stats == {
        "new_users_with_side_data": 0,
        "users_given_side_data": 0,
        "listed_users_kept": 2,
    }


def test_a_user_id_key_in_user_is_not_a_column_nor_the_users_id(run):
    """``user`` holding a "user_id" key answers as ``user`` without it: the request's
    user_id says who the user is (a key naming a listed user does not make them kept)."""
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    pred = Predictor.load(run)
    items = [f"it{i}" for i in range(30, 40)]
    body = {"user_id": "n9", "interactions": [{"item_id": "it31", "rating": 4}], "item_ids": items}
    side = {"club": "space_club", "age": 52}
    want = TestClient(create_app(pred)).post("/score", json={**body, "user": side})
    assert want.status_code == 200 and want.json()["user_side"] == "new"
    for other in ("u1", "someone"):
        client = TestClient(create_app(pred), raise_server_exceptions=False)
        got = client.post("/score", json={**body, "user": {"user_id": other, **side}})
        assert got.status_code == 200, got.text
        assert got.json() == want.json(), other


def test_recommend_ranks_a_new_user_by_their_side_data(run):
    """/recommend adapts a new user at their own row of the view, as /score does: two new
    users with the same support and other clubs get the lists predict's recommend gives
    each (scored from the cold row, both got one list)."""
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    pred = Predictor.load(run)
    client = TestClient(create_app(pred))
    one = [{"item_id": "it31", "rating": 4}]
    got = {}
    for user_id, side in (
        ("ns", {"club": "space_club", "age": 52}),
        ("ng", {"club": "garden_club", "age": 23}),
    ):
        r = client.post(
            "/recommend", json={"user_id": user_id, "user": side, "interactions": one, "k": 10}
        )
        assert r.status_code == 200 and r.json()["user_side"] == "new", r.text
        got[user_id] = [x["item_id"] for x in r.json()["items"]]
        out, _ = pred.recommend(
            pd.DataFrame({"user_id": [user_id], "item_id": ["it31"], "rating": [4]}),
            10,
            users=pd.DataFrame({"user_id": [user_id], **{k: [v] for k, v in side.items()}}),
        )
        assert list(out.item_id) == got[user_id], user_id
    assert got["ns"] != got["ng"]


def test_a_run_fitted_on_an_ids_only_users_file_refuses_users_side_data_in_one_line(run, tmp_path):
    """A users file of user_id alone fits user rows of width 0: predict --users and the
    server's ``user`` then have nothing to encode. Both crashed reshaping to width 0 (a
    ValueError traceback, a 500); now a one-line refusal (exit 2, a 422), RUN unchanged."""
    from fastapi.testclient import TestClient

    from metarec.cli import main
    from metarec.serve.app import create_app
    from test_cli_contract import FAST

    world = run.parent
    pd.read_csv(world / "U.csv")[["user_id"]].to_csv(tmp_path / "U_ids.csv", index=False)
    fit = ["fit", "--train", str(world / "T.csv"), "--items", str(world / "I.csv")]
    assert (
        main([*fit, "--users", str(tmp_path / "U_ids.csv"), "--out", str(tmp_path / "R0"), *FAST])
        == 0
    )
    before = {p.name: p.read_bytes() for p in (tmp_path / "R0").iterdir() if p.is_file()}
    pd.DataFrame({"user_id": ["new_space"]}).to_csv(tmp_path / "U_new.csv", index=False)
    predict = ["predict", "--run", str(tmp_path / "R0"), "--support", str(world / "S.csv")]
    predict += ["--query", str(world / "Q.csv"), "--out", str(tmp_path / "P.csv")]
    assert main([*predict, "--users", str(tmp_path / "U_new.csv")]) == 2
    assert not (tmp_path / "P.csv").exists()
    assert main(predict) == 0  # without --users it predicts as before
    client = TestClient(create_app(Predictor.load(tmp_path / "R0")))
    body = {"user_id": "brand_new", "interactions": [{"item_id": "it31", "rating": 4}]}
    r = client.post("/score", json={**body, "item_ids": ["it30"], "user": {}})
    assert r.status_code == 422
    assert "gave no side data to encode" in r.json()["detail"]
    assert client.post("/score", json={**body, "item_ids": ["it30"]}).status_code == 200
    after = {p.name: p.read_bytes() for p in (tmp_path / "R0").iterdir() if p.is_file()}
    assert after == before


# --- exclusive_folder ---------------------------------------------------------------------


def test_a_failed_hold_removes_every_folder_it_made(tmp_path):
    """--out NEW/deeper made NEW too: a block that wrote nothing leaves neither (it left
    NEW); a parent that existed stays, and a made folder something was written to stays
    with the folders above it."""
    with pytest.raises(RuntimeError):
        with exclusive_folder(tmp_path / "new" / "deeper", "experiment"):
            raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []
    with exclusive_folder(tmp_path / "a" / "b" / "c", "experiment"):
        (tmp_path / "a" / "note.txt").write_text("kept")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a",
        "a/note.txt",
    ]


def test_a_failed_hold_through_dotdot_removes_what_it_made_not_the_users_folder(
    tmp_path, monkeypatch
):
    """--out NEW/../mine, mine an empty folder of the user's: making it makes NEW (by
    name, on the way). Judged by name, a failed run removed mine (never made) and left
    NEW; judged on real paths it removes NEW and leaves mine (mutation audit 186)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        with exclusive_folder("NEW/../mine", "experiment"):
            raise RuntimeError("the run failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_folder_the_hold_did_not_make_is_left_even_when_empty(tmp_path):
    """Only a folder the hold made goes at the end: a user's own empty --out stays."""
    out = tmp_path / "mine"
    out.mkdir()
    with exclusive_folder(out, "experiment"):
        pass
    assert out.is_dir() and not any(out.iterdir())


def test_a_stale_lock_file_names_the_new_holder_only(tmp_path):
    """A lock file a killed run left (its pid longer than ours) is rewritten whole: the
    pid a refused run names is the holder's, not ours over the dead one's digits."""
    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK_NAME).write_text("9999999999 stale")
    with exclusive_folder(out, "experiment"):
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(MetarecError, match=rf"\(pid {os.getpid()}\)"):
            with exclusive_folder(out, "experiment"):
                pass


def test_a_lock_file_replaced_after_it_was_opened_is_taken_from_the_path(tmp_path, monkeypatch):
    """The holder before us removed the file between our open and our flock, and another
    writer made and locked a new one: our lock on the removed file holds nothing, so the
    file now at the path is tried, and refused naming that writer."""
    out = tmp_path / "o"
    out.mkdir()
    lock = out / LOCK_NAME
    real = fcntl.flock
    others: list[int] = []

    def racing(fd, op):
        if not others:
            lock.unlink()
            other = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            others.append(other)
            real(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(other, b"4242")
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", racing)
    try:
        with pytest.raises(MetarecError, match=r"\(pid 4242\)"):
            with exclusive_folder(out, "experiment"):
                pass
    finally:
        for fd in others:
            os.close(fd)


def test_a_lock_file_removed_after_it_was_opened_is_made_again(tmp_path, monkeypatch):
    """The holder before us removed the file between our open and our flock, and nobody
    made another: a lock on the removed file holds nothing (a second run would make a new
    one and run beside us), so the file is made again and held."""
    out = tmp_path / "o"
    out.mkdir()
    lock = out / LOCK_NAME
    real = fcntl.flock
    calls: list[int] = []

    def racing(fd, op):
        if not calls:
            lock.unlink()
        calls.append(fd)
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", racing)
    with exclusive_folder(out, "experiment"):
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(MetarecError, match=rf"\(pid {os.getpid()}\)"):
            with exclusive_folder(out, "experiment"):
                pass
    assert not lock.exists()


def test_the_lock_file_is_removed_before_its_lock_is_let_go(tmp_path, monkeypatch):
    """At the end the file goes first, then the lock: closed first, a run that opened the
    file meanwhile could take its lock (the file still at the path, so its re-check
    passes) and then lose the file to our unlink, leaving a third run free to make a new
    one beside it."""
    out = tmp_path / "o"
    lock = out / LOCK_NAME
    real_close = os.close
    links: list[int] = []
    with exclusive_folder(out, "experiment"):
        st = os.stat(lock)

        def close(fd):
            with_stat = None
            try:
                with_stat = os.fstat(fd)
            except OSError:
                pass
            if with_stat is not None and (with_stat.st_dev, with_stat.st_ino) == (
                st.st_dev,
                st.st_ino,
            ):
                links.append(with_stat.st_nlink)
            return real_close(fd)

        monkeypatch.setattr(os, "close", close)
    monkeypatch.undo()
    assert links == [0]  # closed once, after its name was removed


def test_a_filesystem_without_flock_runs_the_block_unheld(tmp_path, monkeypatch):
    """flock failing with another OSError than "held" (ENOLCK: an NFS mount without a lock
    daemon) holds nothing and the block runs, as before the hold existed."""
    import errno

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with exclusive_folder(tmp_path / "nfs", "experiment") as out:
        ran.append(out)
        with exclusive_folder(tmp_path / "nfs", "experiment"):  # nothing held: no refusal
            ran.append(out)
    assert ran == [tmp_path / "nfs"] * 2
    # no lock file is left behind in the user's folder (nor the folder, made and empty)
    assert not (tmp_path / "nfs").exists()
    (tmp_path / "kept").mkdir()
    with exclusive_folder(tmp_path / "kept", "experiment") as out:
        (out / "results.json").write_text("{}")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["results.json"]


# --- read_side's "Domain" warning ---------------------------------------------------------


def test_the_domain_warning_is_for_the_items_file_in_any_case(tmp_path):
    """An items column "DOMAIN" is said as "Domain" is; a users file's "Domain" column is
    an ordinary user side column, and nothing is said of it."""
    from metarec.data.files import read_training_files
    from test_data_commands import _log

    log = _log(tmp_path / "T.csv")
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(60)]})
    items["title"] = [f"book {i}" for i in range(60)]
    items["DOMAIN"] = np.where(np.arange(60) % 2, "books", "films")
    items.to_csv(tmp_path / "I.csv", index=False)
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(30)]})
    users["Domain"] = np.where(np.arange(30) % 2, "north", "south")
    users.to_csv(tmp_path / "U.csv", index=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        raw = read_training_files(log, tmp_path / "I.csv", tmp_path / "U.csv")
    lines = [str(w.message) for w in said if "lowercase" in str(w.message)]
    assert len(lines) == 1 and "'DOMAIN'" in lines[0] and "I.csv" in lines[0], lines
    assert set(raw.ratings["domain"]) == {"default"}


def test_the_servers_side_data_memo_keeps_no_copy_of_what_a_request_sent(run):
    """The memo of encoded ``user`` fields is keyed by a digest: keyed by the JSON text,
    each distinct 100 KB value stayed in memory as long as its entry (4,096 of them at
    the default cache size: beyond --cache-mb's bound; review 188). 30 such requests
    now keep well under one of them each."""
    import gc
    import tracemalloc

    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    client = TestClient(create_app(Predictor.load(run)))
    body = {"interactions": [{"item_id": "it31", "rating": 4}], "item_ids": ["it30"]}

    def send(i: int) -> None:
        side = {"club": f"{i:06d}" + "x" * 100_000, "age": 30}
        r = client.post("/score", json={**body, "user_id": f"big{i}", "user": side})
        assert r.status_code == 200, r.text

    send(-1)  # warm: the first request's lazy imports and caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(30):
            send(i)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 30 * 100_000 / 4, kept  # under a quarter of one value per request


def test_an_explained_recommendation_builds_the_side_data_view_once(run, monkeypatch):
    """/recommend with explain=true and a new user's ``user`` adapts and explains on one
    view holding their row; it built the view (a copy of the user table) twice, once for
    the adaptation and once for the explanation (review 188)."""
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    built = []
    real = Predictor.with_side_rows

    def counting(self, rows):
        built.append(rows)
        return real(self, rows)

    monkeypatch.setattr(Predictor, "with_side_rows", counting)
    client = TestClient(create_app(Predictor.load(run)))
    body = {
        "user_id": "n9",
        "interactions": [{"item_id": "it31", "rating": 4}, {"item_id": "it2", "rating": 1}],
        "user": {"club": "space_club", "age": 40},
        "k": 3,
        "explain": True,
    }
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    assert all(item["explanation"] for item in r.json()["items"])
    assert len(built) == 1
