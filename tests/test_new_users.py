"""Users who arrive after `fit` bring their side data (`predict` / `recommend --users`).

The world: a user's club (a side column) decides their taste, space or garden items, and
their age goes with it. `fit` sees a users file of the training users only. A user who
signs up later is encoded as fit encoded that file's rows, and scored from that row.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from metarec.cli import main
from metarec.predictor import Predictor
from metarec.types import MetarecError
from test_cli_contract import FAST


def _world(tmp, with_users=True):
    rng = np.random.default_rng(0)
    n_users, n_items = 80, 40
    kinds = np.array(["space", "garden"])[np.arange(n_items) % 2]
    items = pd.DataFrame(
        {
            "item_id": [f"it{i}" for i in range(n_items)],
            "title": [f"{k} adventure volume {i}" for i, k in enumerate(kinds)],
        }
    )
    rows, users = [], []
    for u in range(n_users):
        taste = "space" if u % 2 == 0 else "garden"
        users.append((f"u{u}", f"{taste}_club", 20 + u % 7 + (30 if taste == "space" else 0)))
        for t, i in enumerate(rng.choice(30, size=12, replace=False)):
            rows.append((f"u{u}", f"it{i}", 5 if kinds[i] == taste else 1, 1000 * u + t))
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    log.to_csv(tmp / "T.csv", index=False)
    items.to_csv(tmp / "I.csv", index=False)
    pd.DataFrame(users, columns=["user_id", "club", "age"]).to_csv(tmp / "U.csv", index=False)
    argv = ["fit", "--train", str(tmp / "T.csv"), "--items", str(tmp / "I.csv")]
    if with_users:
        argv += ["--users", str(tmp / "U.csv")]
    assert main([*argv, "--out", str(tmp / "RUN"), *FAST]) == 0
    # both new users show the same one-item support; only their side data tells them apart
    support = pd.DataFrame(
        [(u, "it31", 4, 1) for u in ("new_space", "new_garden")],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    support.to_csv(tmp / "S.csv", index=False)
    query = [(u, f"it{i}") for u in ("new_space", "new_garden") for i in range(30, 40)]
    pd.DataFrame(query, columns=["user_id", "item_id"]).to_csv(tmp / "Q.csv", index=False)
    new = pd.DataFrame(
        [("new_space", "space_club", 52), ("new_garden", "garden_club", 23)],
        columns=["user_id", "club", "age"],
    )
    new.to_csv(tmp / "U_new.csv", index=False)
    return tmp / "RUN"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _world(tmp_path_factory.mktemp("newusers"))


def _predict(run, out, *extra) -> int:
    tmp = run.parent
    argv = ["predict", "--run", str(run), "--support", str(tmp / "S.csv")]
    return main([*argv, "--query", str(tmp / "Q.csv"), "--out", str(out), *extra])


def _taste(path) -> dict:
    """user -> mean score of space items - mean score of garden items."""
    p = pd.read_csv(path)
    space = p.item_id.str[2:].astype(int) % 2 == 0
    return (
        p[space].groupby("user_id").score.mean() - p[~space].groupby("user_id").score.mean()
    ).to_dict()


def test_a_new_user_is_encoded_as_fit_encoded_the_users_file(run):
    """A new user with a listed user's values gets that user's feature row, bit for bit
    (categorical vocabulary, numeric scaling and clip as fitted); a value fit never saw
    is no category, and a number beyond the fitted range is clipped to it."""
    pred = Predictor.load(run)
    meta = json.loads((run / "meta.json").read_text())
    assert [c for c, _ in meta["user_features"]["side"]["columns"]] == ["club", "age"]
    users = pd.DataFrame(
        {
            "user_id": ["twin_of_u0", "chess", "old", "nothing"],
            "club": ["space_club", "chess_club", "garden_club", None],
            "age": ["50", "", "1000", "NA"],
        }
    )
    view, stats = pred.with_users(users)
    assert stats == {
        "new_users_with_side_data": 4,
        "users_given_side_data": 0,
        "listed_users_kept": 0,
    }
    side = view.model.features_.user_side
    u0 = side[pred.users.index("u0")]
    twin, chess, old, nothing = (side[view.user_index(u)] for u in users.user_id)
    assert torch.equal(twin, u0)
    cold = side[len(pred.users)]
    assert torch.equal(nothing, cold)  # all missing: the mean user, the zero row
    assert not chess.any()  # an unknown club sets no flag; a missing age is the mean (0)
    oldest = side[: len(pred.users), -1].max()
    assert old[-1] == oldest  # clipped to the oldest fitted user
    # the RUN's own model is untouched: the view holds the new rows
    assert pred.model.features_.user_side.shape[0] == len(pred.users) + 1


def test_predict_and_recommend_use_new_users_side_data(run, tmp_path, capsys):
    assert _predict(run, tmp_path / "P.csv", "--users", str(run.parent / "U_new.csv")) == 0
    taste = _taste(tmp_path / "P.csv")
    # the same support, other side data: each leans to their club's kind of item
    assert taste["new_space"] > taste["new_garden"]
    # without --users both are the featureless cold user with one support item: equal
    assert _predict(run, tmp_path / "P0.csv") == 0
    plain = pd.read_csv(tmp_path / "P0.csv")
    a, b = (plain[plain.user_id == u].score.to_numpy() for u in ("new_space", "new_garden"))
    assert np.array_equal(a, b)
    capsys.readouterr()
    tmp = run.parent
    argv = ["recommend", "--run", str(run), "--support", str(tmp / "S.csv"), "-k", "5"]
    out = tmp_path / "R.csv"
    assert main([*argv, "--users", str(tmp / "U_new.csv"), "--out", str(out)]) == 0
    r = pd.read_csv(out)
    space_share = (
        r.assign(space=r.item_id.str[2:].astype(int) % 2 == 0).groupby("user_id").space.mean()
    )
    assert space_share["new_space"] > space_share["new_garden"]
    # a user the users file at fit listed keeps their fitted row, and is told so
    listed = tmp_path / "U_listed.csv"
    pd.DataFrame({"user_id": ["u0", "new_space"], "club": ["garden_club", "space_club"]}).to_csv(
        listed, index=False
    )
    assert _predict(run, tmp_path / "P2.csv", "--users", str(listed)) == 0
    assert "1 user of" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cells, named",
    [
        ({"user_id": ["n1"], "club": ["space_club"], "agee": [30]}, "column 'agee' was not in"),
        ({"user_id": ["n1"], "age": ["thirty"]}, "column 'age' holds 'thirty' (user 'n1')"),
        ({"user_id": ["n1", "n1"], "age": [3, 4]}, "appears twice"),
        ({"club": ["space_club"]}, "missing column(s) user_id"),
    ],
)
def test_bad_new_users_files_are_one_line_errors(run, tmp_path, capsys, cells, named):
    bad = tmp_path / "U_bad.csv"
    pd.DataFrame(cells).to_csv(bad, index=False)
    out = tmp_path / "P.csv"
    assert _predict(run, out, "--users", str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_run_fitted_without_a_users_file_refuses_new_users_side_data(tmp_path, capsys):
    run = _world(tmp_path, with_users=False)
    capsys.readouterr()
    assert "user_features" not in json.loads((run / "meta.json").read_text())
    assert _predict(run, tmp_path / "P.csv", "--users", str(tmp_path / "U_new.csv")) == 2
    assert "fitted without a users file" in capsys.readouterr().err
    pred = Predictor.load(run)
    with pytest.raises(MetarecError, match="fitted without a users file"):
        pred.with_users(pd.DataFrame({"user_id": ["x"], "club": ["space_club"]}))


def test_export_and_update_keep_what_encodes_new_users(run, tmp_path, capsys):
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    users = pd.DataFrame({"user_id": ["twin_of_u1"], "club": ["garden_club"], "age": [21]})
    want = Predictor.load(run).with_users(users)[0].model.features_.user_side[-1]
    assert main(["export", "--run", str(run), "--dtype", "fp16", "--out", str(tmp_path / "E")]) == 0
    store = FeedbackStore(tmp_path / "fb")
    store.add("newbie", [FeedbackRow("it0", 5.0, None)])
    argv = ["update", "--run", str(run), "--feedback", str(tmp_path / "fb")]
    assert main([*argv, "--out", str(tmp_path / "U2"), "--steps", "2"]) == 0
    capsys.readouterr()
    for derived in ("E", "U2"):
        pred = Predictor.load(tmp_path / derived)
        view, _ = pred.with_users(users)
        got = view.model.features_.user_side[view.user_index("twin_of_u1")]
        # fp16 stores the fitted rows rounded; a new row is encoded afresh in float32
        assert torch.allclose(got, want.to(got.dtype), atol=1e-3), derived


def test_the_server_takes_a_new_users_side_data(run):
    """/recommend and /score take ``user``: a new user's side data, encoded as predict
    --users encodes it; a bad column is a 422 naming it; without it (and with no
    interactions) a new user is still refused."""
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    pred = Predictor.load(run)
    client = TestClient(create_app(pred))
    one = [{"item_id": "it31", "rating": 4}]
    items = [f"it{i}" for i in range(30, 40)]

    def gap(user_id, side):
        body = {"user_id": user_id, "interactions": one, "item_ids": items, "user": side}
        r = client.post("/score", json=body)
        assert r.status_code == 200, r.text
        s = {x["item_id"]: x["score"] for x in r.json()["scores"]}
        space = [s[i] for i in items if int(i[2:]) % 2 == 0]
        garden = [s[i] for i in items if int(i[2:]) % 2 == 1]
        return np.mean(space) - np.mean(garden), s

    g_space, s_space = gap("a", {"club": "space_club", "age": 52})
    g_garden, _ = gap("b", {"club": "garden_club", "age": 23})
    assert g_space > g_garden
    # the same scores as predict --users gives that user (the same row, the same support)
    frame = pd.DataFrame({"user_id": ["a"], "club": ["space_club"], "age": [52]})
    out, _ = pred.predict(
        pd.DataFrame({"user_id": ["a"], "item_id": ["it31"], "rating": [4]}),
        pd.DataFrame({"user_id": ["a"] * len(items), "item_id": items}),
        users=frame,
    )
    assert np.allclose(out.score.to_numpy(), [s_space[i] for i in items], atol=1e-5)
    # a new user with side data and no interactions is scored from it
    r = client.post("/recommend", json={"user_id": "c", "user": {"club": "garden_club"}, "k": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    r = client.post("/recommend", json={"user_id": "c", "k": 3})
    assert r.status_code == 422
    r = client.post(
        "/recommend", json={"user_id": "d", "user": {"clubb": "x"}, "interactions": one}
    )
    assert r.status_code == 422 and "column 'clubb' was not in" in r.text


def test_a_new_users_text_is_embedded_as_the_fitted_users_was(tmp_path):
    """With text.user_text a user row ends with their text's vector: a new user's is
    embedded by the RUN's encoder, so a twin of a listed user gets that user's row."""
    run = _world(tmp_path)
    users = pd.read_csv(tmp_path / "U.csv")
    users["bio"] = [
        f"a {c.split('_')[0]} fan who reads {i} books a year" for i, c in enumerate(users.club)
    ]
    users.to_csv(tmp_path / "U.csv", index=False)
    argv = ["fit", "--train", str(tmp_path / "T.csv"), "--items", str(tmp_path / "I.csv")]
    argv += ["--users", str(tmp_path / "U.csv"), "--out", str(run), *FAST]
    assert main([*argv, "--set", "text.user_text=true"]) == 0
    pred = Predictor.load(run)
    assert pred.model.user_features_.text_dim == 64  # the hashing encoder's width
    twin = users[users.user_id == "u3"].assign(user_id="twin_of_u3")
    view, _ = pred.with_users(twin)
    side = view.model.features_.user_side
    assert torch.equal(side[view.user_index("twin_of_u3")], side[pred.users.index("u3")])
    other = twin.assign(bio="somebody else entirely")
    view, _ = pred.with_users(other)
    row = view.model.features_.user_side[view.user_index("twin_of_u3")]
    fitted = pred.model.features_.user_side[pred.users.index("u3")]
    assert torch.equal(row[:-64], fitted[:-64]) and not torch.equal(row[-64:], fitted[-64:])


def test_cells_are_spelled_as_the_readers_spell_them(run):
    """A Parquet list is the file's "a|b", a whole float 2.0 is "2": each encodes as the
    CSV spelling does (a list had set no flag, "2.0" matched no fitted category)."""
    from metarec.features import SideEncoder
    from metarec.types import IdMap, SideTable
    from metarec.user_side import UserFeatures

    fitted = pd.DataFrame({"tags": ["a|b", "b", "c|a", "2"], "zone": ["1", "2", "x", "2"]})
    table = SideTable(IdMap(np.array(list("pqrs"), dtype=object)), fitted, (), ("tags", "zone"))
    feats = UserFeatures(SideEncoder.fit(table))
    want = feats.encode(feats.frame(pd.DataFrame({"tags": ["a|b"], "zone": ["2"]})))
    for tags, zone in ((["a", "b"], 2.0), (("b", "a"), np.float64(2)), (np.array(["a", "b"]), 2)):
        got = feats.encode(feats.frame(pd.DataFrame({"tags": [tags], "zone": [zone]})))
        assert np.array_equal(got, want), (tags, zone)


def test_a_negative_count_is_clipped_to_the_fitted_bottom_without_warnings():
    """A count column fitted on a log scale meets a negative value: clipped to the fitted
    range's bottom, as any value below it is (below -1 it had read as missing, at -1 as
    -inf, each with numpy's warning)."""
    import warnings

    from metarec.features import NumericScale

    x = np.concatenate([np.zeros(40), np.arange(1, 41) ** 3.0])  # skewed: log-scaled
    scale = NumericScale.fit("visits", x, np.arange(len(x)))
    assert scale.log
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = scale.apply(np.array([-5.0, -1.0, -0.5, 0.0, np.nan]))
    assert z[0] == z[1] == z[2] == z[3] == np.float32(scale.lo) and z[4] == 0.0


def test_every_users_row_is_checked_and_side_data_fills_a_training_user_without_it(
    run, tmp_path, capsys
):
    pred = Predictor.load(run)
    # a typo is an error even when every user of the file is listed
    with pytest.raises(MetarecError, match="column 'shoe' was not in"):
        pred.with_users(pd.DataFrame({"user_id": ["u0"], "shoe": [9]}))
    with pytest.raises(MetarecError, match=r"holds 'old' \(user 'u0'\), not a number"):
        pred.with_users(pd.DataFrame({"user_id": ["u0"], "age": ["old"]}))
    # a RUN fitted without a users file refuses any users file (tested above for new
    # users); here a training user whose fitted row is empty takes the data given, and
    # keeps their index (their training history)
    tmp = run.parent
    u = pd.read_csv(tmp / "U.csv")
    part = tmp_path / "U_part.csv"
    u[u.user_id != "u2"].to_csv(part, index=False)
    argv = ["fit", "--train", str(tmp / "T.csv"), "--items", str(tmp / "I.csv")]
    assert main([*argv, "--users", str(part), "--out", str(tmp_path / "R"), *FAST]) == 0
    capsys.readouterr()
    pred = Predictor.load(tmp_path / "R")
    i2 = pred.users.index("u2")
    assert not pred.model.features_.user_side[i2].any()
    view, stats = pred.with_users(u[u.user_id.isin(["u2", "u4"])])
    assert stats == {
        "new_users_with_side_data": 0,
        "users_given_side_data": 1,
        "listed_users_kept": 1,
    }
    assert view.user_index("u2") == i2
    fresh, _ = pred.with_users(u[u.user_id == "u2"].assign(user_id="fresh"))
    want = fresh.model.features_.user_side[fresh.user_index("fresh")]
    assert want.any() and torch.equal(view.model.features_.user_side[i2], want)
    # the server fills it alike: u2's scores move with the data sent, and match predict's
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    client = TestClient(create_app(pred))
    items = [f"it{i}" for i in range(30, 40)]
    body = {"user_id": "u2", "item_ids": items}
    plain = client.post("/score", json=body).json()["scores"]
    data = {"club": "space_club", "age": 52}
    r = client.post("/score", json={**body, "user": data})
    assert r.json()["user_side"] == "filled"  # the response says what the data did
    filled = r.json()["scores"]
    assert [x["score"] for x in plain] != [x["score"] for x in filled]
    out, _ = pred.predict(
        pd.DataFrame({"user_id": ["u2"], "item_id": ["it0"], "rating": [5]}).iloc[:0],
        pd.DataFrame({"user_id": ["u2"] * len(items), "item_id": items}),
        users=pd.DataFrame({"user_id": ["u2"], **{k: [v] for k, v in data.items()}}),
    )
    assert np.allclose(out.score, [x["score"] for x in filled], atol=1e-5)


def test_recommend_says_which_users_of_the_users_file_it_did_not_serve(run, tmp_path, capsys):
    tmp = run.parent
    extra = tmp_path / "U3.csv"
    pd.concat(
        [
            pd.read_csv(tmp / "U_new.csv"),
            pd.DataFrame({"user_id": ["idle"], "club": ["space_club"], "age": [40]}),
        ]
    ).to_csv(extra, index=False)
    argv = ["recommend", "--run", str(run), "--support", str(tmp / "S.csv"), "-k", "2"]
    assert main([*argv, "--users", str(extra), "--out", str(tmp_path / "R.csv")]) == 0
    err = capsys.readouterr().err
    assert "1 user of" in err and "no rows in --support" in err
    assert set(pd.read_csv(tmp_path / "R.csv").user_id) == {"new_space", "new_garden"}


def test_the_server_reads_an_empty_user_as_every_column_missing(run):
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    client = TestClient(create_app(Predictor.load(run)))
    one = [{"item_id": "it31", "rating": 4}]
    for body in ({"user": {}}, {"user": {" club": None}}, {"user_id": "u0", "user": {}}):
        r = client.post("/recommend", json={**body, "interactions": one, "k": 3})
        assert r.status_code == 200, r.text
    r = client.post(
        "/score",
        json={"user_id": "u0", "user": {"shoe": 1}, "interactions": one, "item_ids": ["it1"]},
    )
    assert r.status_code == 422 and "shoe" in r.text


def test_a_users_file_may_list_users_without_training_rows(run, tmp_path):
    """The users file describes the catalogue of users, some of whom never rated: fit's
    vocabularies and scalings come from the users with training rows, and the RUN still
    encodes new users as those rows were (the encoder fitted on every listed user gave
    other rows, and the RUN had kept no encoder at all)."""
    tmp = run.parent
    users = pd.read_csv(tmp / "U.csv")
    lurkers = pd.DataFrame({"user_id": ["l1", "l2", "l3"], "club": ["chess_club"] * 3})
    lurkers["age"] = [90, 95, 99]
    pd.concat([users, lurkers]).to_csv(tmp_path / "U.csv", index=False)
    argv = ["fit", "--train", str(tmp / "T.csv"), "--items", str(tmp / "I.csv")]
    argv += ["--users", str(tmp_path / "U.csv"), "--out", str(tmp_path / "R"), *FAST]
    assert main(argv) == 0
    pred = Predictor.load(tmp_path / "R")
    assert all(u in pred.users for u in ("l1", "l2", "l3"))
    assert pred.model.user_features_ is not None
    new = pd.DataFrame(
        {"user_id": ["twin_of_u0", "chess"], "club": ["space_club", "chess_club"], "age": [50, 90]}
    )
    view, _ = pred.with_users(new)
    side = view.model.features_.user_side
    assert torch.equal(side[view.user_index("twin_of_u0")], side[pred.users.index("u0")])
    chess = side[view.user_index("chess")]
    assert torch.equal(chess, side[pred.users.index("l1")])  # as the lurker was encoded
    assert chess[-1] == side[: len(pred.users), -1].max()  # 90 is past the oldest rater


def test_no_encoder_is_kept_for_user_rows_built_another_way(run):
    """UserFeatures.fit keeps an encoder only where it reproduces the model's user rows
    bit for bit: rows fitted on other users (features built outside fit), or ending with
    text vectors the model does not embed, would not be comparable to a new user's."""
    from types import SimpleNamespace

    from metarec.data.files import read_training_files
    from metarec.features import SideEncoder
    from metarec.preprocess import prepare
    from metarec.user_side import UserFeatures

    tmp = run.parent
    ds = prepare(read_training_files(tmp / "T.csv", tmp / "I.csv", tmp / "U.csv"))
    every = np.arange(ds.n_users)
    half = every[: ds.n_users // 2]

    def model(rows, user_text=False):
        cold = np.zeros((1, rows.shape[1]), np.float32)
        return SimpleNamespace(
            features_=SimpleNamespace(
                user_side=torch.from_numpy(np.concatenate([rows, cold])),
                encoder_fingerprint="fp",
            ),
            config=SimpleNamespace(text=SimpleNamespace(user_text=user_text, model="m")),
        )

    side = SideEncoder.fit(ds.user_table, every).apply(ds.user_table.frame)
    kept = UserFeatures.fit(model(side), ds, every)
    assert kept is not None and kept.text_dim == 0
    other = SideEncoder.fit(ds.user_table, half).apply(ds.user_table.frame)
    assert not np.array_equal(other, side)
    assert UserFeatures.fit(model(other), ds, every) is None
    texts = np.concatenate([side, np.ones((ds.n_users, 8), np.float32)], 1)
    assert UserFeatures.fit(model(texts), ds, every) is None  # the model embeds no user text
    with_text = UserFeatures.fit(model(texts, user_text=True), ds, every)
    assert with_text is not None and with_text.text_dim == 8


def test_new_users_text_is_embedded_by_the_runs_encoder_loaded_once(monkeypatch):
    """A user text is embedded by the encoder the RUN was fitted with, loaded once per
    process (a server had loaded it for every request); another encoder is an error."""
    import metarec.text
    from metarec.features import SideEncoder
    from metarec.types import IdMap, SideTable
    from metarec.user_side import UserFeatures, _text_encoder

    fitted = pd.DataFrame({"bio": ["likes rockets", "grows roses", "reads"], "age": [30, 40, 50]})
    table = SideTable(IdMap(np.array(list("pqr"), dtype=object)), fitted, ("bio",), (), ("age",))
    loads, real = [], metarec.text.make_encoder

    def counted(name, *args, **kwargs):
        loads.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(metarec.text, "make_encoder", counted)
    _text_encoder.cache_clear()
    try:
        fingerprint = real("hashing:16").fingerprint
        feats = UserFeatures(SideEncoder.fit(table), 16, "hashing:16", fingerprint)
        new = feats.frame(pd.DataFrame({"bio": ["likes rockets"], "age": [35]}))
        rows = [feats.encode(new) for _ in range(3)]
        assert rows[0].shape == (1, 1 + 16) and rows[0][0, 1:].any()
        assert all(np.array_equal(r, rows[0]) for r in rows)
        assert loads == ["hashing:16"]
        other = UserFeatures(feats.side, 16, "hashing:16", "another encoder|v2")
        with pytest.raises(MetarecError, match="is not the one the RUN was fitted with"):
            other.encode(new)
    finally:
        _text_encoder.cache_clear()


def test_with_users_on_a_view_keeps_the_earlier_users_and_encodes_the_later_at_their_rows(
    run,
):
    """A view of a view knows both views' new users, each at their own row; a user given
    again takes the row given now."""
    pred = Predictor.load(run)
    first = pd.DataFrame({"user_id": ["a", "b"], "club": ["space_club"] * 2, "age": [52, 53]})
    later = pd.DataFrame({"user_id": ["c", "b"], "club": ["garden_club"] * 2, "age": [23, 24]})
    view, _ = pred.with_users(first)
    again, stats = view.with_users(later)
    assert stats["new_users_with_side_data"] == 2
    alone, _ = pred.with_users(pd.concat([first[first.user_id == "a"], later]))
    side = again.model.features_.user_side
    assert side.shape[0] == len(pred.users) + 1 + 3
    assert set(again.new_users) == {"a", "b", "c"}
    assert len(set(again.new_users.values())) == 3
    want = alone.model.features_.user_side
    for u in "abc":
        assert torch.equal(side[again.user_index(u)], want[alone.user_index(u)]), u
    assert not torch.equal(
        side[again.user_index("b")], view.model.features_.user_side[view.user_index("b")]
    )
    # and the scores follow: the chained view scores as the one-step view does
    items = list(pred.items.ids[:5])
    q = pd.DataFrame({"user_id": ["a"] * 5 + ["c"] * 5, "item_id": items * 2})
    s = pd.DataFrame(columns=["user_id", "item_id", "rating"])
    got = again.predict(s, q)[0].score.to_numpy()
    exp = alone.predict(s, q)[0].score.to_numpy()
    assert np.allclose(got, exp)


def test_a_users_file_is_an_input_predict_never_overwrites_nor_reads_an_index_from(
    run, tmp_path, capsys
):
    tmp = run.parent
    users = tmp_path / "U.csv"
    pd.read_csv(tmp / "U_new.csv").to_csv(users, index=False)
    before = users.read_bytes()
    assert _predict(run, users, "--users", str(users)) == 2
    assert "is the --users file it reads" in capsys.readouterr().err
    argv = ["recommend", "--run", str(run), "--support", str(tmp / "S.csv")]
    assert main([*argv, "--users", str(users), "--out", str(users)]) == 2
    assert "is the --users file it reads" in capsys.readouterr().err
    assert users.read_bytes() == before
    # written with its pandas index: the unnamed column is named as such
    pd.read_csv(tmp / "U_new.csv").to_csv(users)
    assert _predict(run, tmp_path / "P.csv", "--users", str(users)) == 2
    err = capsys.readouterr().err
    assert "index=False" in err and len(err.strip().splitlines()) == 1


def test_the_server_keeps_a_listed_users_fitted_data_and_explains_a_new_user(run):
    """A user the users file at fit listed keeps their fitted row whatever ``user`` says
    (as predict --users does), and the response's user_side says so; a new user's recommendations explain themselves from their
    support; a column named twice once stripped is a 422; /info shows no encoder."""
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    client = TestClient(create_app(Predictor.load(run)))
    one = [{"item_id": "it31", "rating": 4}]
    items = [f"it{i}" for i in range(30, 40)]
    body = {"user_id": "u0", "interactions": one, "item_ids": items}
    plain = client.post("/score", json=body).json()
    assert plain["user_side"] is None  # no "user" sent
    other = client.post("/score", json={**body, "user": {"club": "garden_club", "age": 23}})
    assert other.status_code == 200 and other.json()["scores"] == plain["scores"]
    assert other.json()["user_side"] == "kept"  # checked, not used: the response says so
    r = client.post(
        "/recommend",
        json={"user_id": "n", "user": {"club": "space_club"}, "interactions": one, "explain": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["user_side"] == "new"
    for item in r.json()["items"]:
        assert [e["item_id"] for e in item["explanation"]] == ["it31"]
    twice = {"club": "space_club", " club": "garden_club"}
    r = client.post("/recommend", json={"user": twice, "interactions": one})
    assert r.status_code == 422 and "named twice" in r.text
    assert "user_features" not in client.get("/info").json()["dataset"]


def test_a_python_users_frame_is_read_as_a_file_header_is(run):
    """Column names with surrounding spaces, as a header's are stripped: recommend's count
    of users it did not serve read the frame unstripped and raised a KeyError."""
    pred = Predictor.load(run)
    support = pd.DataFrame({"user_id": ["new_space"], "item_id": ["it31"], "rating": [4]})
    users = pd.DataFrame(
        {" user_id": ["new_space", "idle"], "club ": ["space_club"] * 2, " age": [52, 40]}
    )
    out, stats = pred.recommend(support, 3, users=users)
    assert set(out.user_id) == {"new_space"} and len(out) == 3
    assert stats["side_data_users_without_support"] == 1
    assert stats["new_users_with_side_data"] == 2


def test_a_parquet_timestamp_column_is_unix_seconds_whatever_its_unit(run, tmp_path, capsys):
    """A users file's timestamp column is read as Unix seconds: read as its unit's count,
    a new user's file written in ns (pandas' default before 3.0) stood 1,000 times off a
    fitted us column and was clipped to the oldest fitted user."""
    from metarec.data.files import read_users

    tmp = run.parent
    u = pd.read_csv(tmp / "U.csv")
    u["joined"] = pd.to_datetime("2010-01-01") + pd.to_timedelta(np.arange(len(u)) * 7, "D")
    u.assign(joined=u.joined.astype("datetime64[us]")).to_parquet(tmp_path / "U.parquet")
    argv = ["fit", "--train", str(tmp / "T.csv"), "--items", str(tmp / "I.csv")]
    argv += ["--users", str(tmp_path / "U.parquet"), "--out", str(tmp_path / "R"), *FAST]
    assert main(argv) == 0
    capsys.readouterr()
    pred = Predictor.load(tmp_path / "R")
    scale = {n["column"]: n for n in pred.model.user_features_.side.to_json()["numeric"]}
    seconds = u.joined.astype("datetime64[s]").astype("int64").mean()
    assert abs(scale["joined"]["mu"] - seconds) < 1.0
    twin = u[u.user_id == "u5"].assign(user_id="twin_of_u5")
    for unit in ("s", "ms", "us", "ns"):
        new = twin.assign(joined=twin.joined.astype(f"datetime64[{unit}]"))
        new.to_parquet(tmp_path / f"U2_{unit}.parquet")
        view, _ = pred.with_users(read_users(tmp_path / f"U2_{unit}.parquet"))
        side = view.model.features_.user_side
        assert torch.equal(side[view.user_index("twin_of_u5")], side[pred.users.index("u5")]), unit
    # a RUN from before (its encoder JSON names no timestamp unit) fitted the file's unit:
    # its timestamps are refused, not clipped to the fitted range's edge
    import dataclasses

    from metarec.features import SideEncoder

    doc = pred.model.user_features_.side.to_json()
    assert doc["timestamps"] == "unix_seconds"
    old = SideEncoder.from_json({k: v for k, v in doc.items() if k != "timestamps"})
    assert not old.timestamps_in_seconds
    pred.model.user_features_ = dataclasses.replace(pred.model.user_features_, side=old)
    with pytest.raises(MetarecError, match="holds timestamps, which the metarec that fitted"):
        pred.with_users(read_users(tmp_path / "U2_ns.parquet"))


def test_the_server_encodes_a_users_side_data_once_and_builds_the_view_only_to_adapt(
    run, monkeypatch
):
    """A request's ``user`` is encoded the first time that user sends it; the same
    ``user`` again is a lookup, and the view holding the row (a copy of the whole user
    table) is built only when an adaptation misses the cache. Each answer equals a fresh
    server's, whatever came before it: values JSON tells apart (1, 1.0, true, "1") are
    kept apart, and one user's data is never another's."""
    from fastapi.testclient import TestClient

    from metarec.serve.app import create_app

    calls = {"side_rows": 0, "with_side_rows": 0}
    for name in calls:
        real = getattr(Predictor, name)

        def counting(self, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(Predictor, name, counting)
    pred = Predictor.load(run)
    shared = TestClient(create_app(pred))
    one = [{"item_id": "it31", "rating": 4}]
    body = {"interactions": one, "item_ids": [f"it{i}" for i in range(30, 40)]}

    def post(client, user_id, side):
        r = client.post("/score", json={**body, "user_id": user_id, "user": side})
        return r.status_code, r.json()

    def same(answer):
        """``answer`` with each score to float32's ~7 digits: the same adapted parameters
        scored again may differ in the last bit (CPU BLAS kernels pick their path by
        buffer alignment; CI saw 3.981638193 then 3.981637955), while another user's
        data moves a score far more."""
        status, doc = answer
        scores = [
            {**s, "score": pytest.approx(s["score"], rel=1e-6)} for s in doc.get("scores", [])
        ]
        return status, {**doc, "scores": scores} if "scores" in doc else doc

    space = {"club": "space_club", "age": 52}
    first = post(shared, "n1", space)
    assert first[0] == 200 and first[1]["user_side"] == "new"
    assert calls == {"side_rows": 1, "with_side_rows": 1}
    assert post(shared, "n1", space) == same(first)  # encoded before, adapted before
    assert calls == {"side_rows": 1, "with_side_rows": 1}
    # the same user and data with another support: a lookup, then one view to adapt on
    again = shared.post(
        "/score",
        json={
            **body,
            "user_id": "n1",
            "user": space,
            "interactions": [*one, {"item_id": "it2", "rating": 1}],
        },
    )
    assert again.status_code == 200 and again.json()["scores"] != same(first)[1]["scores"]
    assert calls == {"side_rows": 1, "with_side_rows": 2}
    # every answer as a fresh server gives it: the remembered ones are never another's
    cases = [
        ("n1", {"club": "garden_club", "age": 52}),  # same user, other data
        ("n2", space),  # other user, same data
        (None, space),
        ("n3", {"club": "space_club", "age": 1}),
        ("n3", {"club": "space_club", "age": 1.0}),
        ("n3", {"club": "space_club", "age": True}),
        ("n3", {"club": "space_club", "age": "1"}),
        ("u1", {"club": "space_club", "age": 52}),  # listed: kept
        ("n4", {"club": "space_club", "agee": 52}),  # an unknown column: a 422 each time
        ("n4", {"club": "space_club", "agee": 52}),
    ]
    for user_id, side in cases:
        got = post(shared, user_id, side)
        assert got == same(post(TestClient(create_app(pred)), user_id, side)), (user_id, side)
    assert post(shared, "u1", space)[1]["user_side"] == "kept"
    assert post(shared, "n4", {"club": "space_club", "agee": 52})[0] == 422
