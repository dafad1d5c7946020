"""Black-box probe 186 of the HTTP server (metarec.serve): defects a client hits.

Each test pins one defect found by the probe and fails on the code it was written
against: ids that ``fit`` took but every request field refuses (so the server
recommended items a client could never score or rate back; fit now refuses them), 422 details that echo a
500,000-character input whole, an error naming the server's internal placeholder user
``'\\x00anonymous'``, and an OpenAPI document that leaves out the 409 and 400 answers
/recommend and /score give.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from metarec.cli import main
from metarec.serve.app import create_app
from metarec.serve.feedback import FeedbackRow, FeedbackStore
from serve_world import FAST

TAB_ITEM = "star\twars"  # a tab inside a quoted CSV cell
LONG_ITEM = "L" * 1100  # past the server's 1,024-character id limit
TAB_USER = "usr\tx"


def _fit(tmp, rename_items=None, rename_users=None):
    """A two-taste world (60 users, 40 items, a users file with club and age), fitted fast."""
    rng = np.random.default_rng(0)
    kinds = np.array(["space", "garden"])[np.arange(40) % 2]
    items = pd.DataFrame(
        {
            "item_id": [f"it{i}" for i in range(40)],
            "title": [f"{k} adventure volume {i}" for i, k in enumerate(kinds)],
        }
    )
    rows, users = [], []
    for u in range(60):
        taste = "space" if u % 2 == 0 else "garden"
        users.append((f"u{u}", f"{taste}_club", 20 + u % 7))
        for t, i in enumerate(rng.choice(30, size=12, replace=False)):
            rows.append((f"u{u}", f"it{i}", 5 if kinds[i] == taste else 1, 1000 * u + t))
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    if rename_items:
        items["item_id"] = items["item_id"].replace(rename_items)
        log["item_id"] = log["item_id"].replace(rename_items)
    if rename_users:
        log["user_id"] = log["user_id"].replace(rename_users)
    log.to_csv(tmp / "T.csv", index=False)
    items.to_csv(tmp / "I.csv", index=False)
    pd.DataFrame(users, columns=["user_id", "club", "age"]).to_csv(tmp / "U.csv", index=False)
    argv = ["fit", "--train", str(tmp / "T.csv"), "--items", str(tmp / "I.csv")]
    argv += ["--users", str(tmp / "U.csv"), "--out", str(tmp / "RUN"), *FAST]
    with contextlib.redirect_stdout(io.StringIO()):  # fit's JSON summary
        code = main(argv)
    return code, tmp / "RUN"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    code, run = _fit(tmp_path_factory.mktemp("probe186"))
    assert code == 0
    return run


# --- ids fit takes and the server refuses ---------------------------------------------------
@pytest.mark.parametrize(
    ("items", "users", "said"),
    [
        ({"it0": TAB_ITEM}, None, "'star\\twars' holds a control character"),
        ({"it2": LONG_ITEM}, None, "is longer than 1024 characters"),
        (None, {"u0": TAB_USER}, "'usr\\tx' holds a control character"),
    ],
    ids=["tab-in-item", "long-item", "tab-in-user"],
)
def test_fit_refuses_an_id_no_request_may_send_back(tmp_path, capsys, items, users, said):
    """fit took item ids holding a tab or longer than 1,024 characters (and a training
    user id holding a tab) without a word; the server then recommended those items but
    refused them, with a 422, in /score's item_ids, in interactions and in /feedback, and
    could not name that training user by user_id. One id rule for both: fit refuses such
    an id in one line naming its file and line (exit 2, nothing written)."""
    code, run = _fit(tmp_path, rename_items=items, rename_users=users)
    assert code == 2
    assert not run.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err, err
    assert "T.csv: line " in err and len(err) < 400  # the long id is clipped in the line


# --- bounded error details -----------------------------------------------------------------
@pytest.mark.parametrize(
    "user",
    [{"x" * 500_000: 1}, {"age": "y" * 500_000}],
    ids=["unknown-column-name", "non-numeric-value"],
)
def test_a_422_detail_is_bounded_whatever_the_input_holds(run, user):
    """A 422's detail is one line a log or a client can show: an unknown `user` column of
    500,000 characters, or such a value in a numeric column, came back whole (a 500 KB
    detail, as large as the body), where the CLI clips its error lines at 2,000
    characters and the schema errors are capped at 20. The detail still names the
    problem."""
    client = TestClient(create_app(run))
    r = client.post(
        "/recommend", json={"interactions": [{"item_id": "it1", "rating": 5}], "user": user}
    )
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "\n" not in detail
    assert len(detail) <= 2000, len(detail)
    assert "user" in detail and ("not in the users file" in detail or "not a number" in detail)


def test_an_over_limit_k_is_named_in_a_bounded_detail(run):
    """A k of 4,001 digits (JSON allows it) is over the server's limit: the 422 says so in
    a bounded line, not by echoing every digit."""
    client = TestClient(create_app(run))
    r = client.post(
        "/recommend", json={"interactions": [{"item_id": "it1", "rating": 5}], "k": 10**4000}
    )
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "server limit of 1000" in detail
    assert len(detail) <= 2000, len(detail)


# --- the internal anonymous id ---------------------------------------------------------------
@pytest.mark.parametrize("path", ["/recommend", "/score"])
def test_an_error_on_side_data_without_user_id_names_no_made_up_user(run, path):
    """A request without user_id whose `user` holds "old" for the numeric age gets a 422
    naming the column and value; it named a user the client never sent, the server's
    placeholder "(user '\\x00anonymous')". With a user_id the message names that user."""
    client = TestClient(create_app(run))
    body = {"interactions": [{"item_id": "it1", "rating": 5}], "user": {"age": "old"}}
    if path == "/score":
        body["item_ids"] = ["it2"]
    r = client.post(path, json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "'age' holds 'old'" in detail
    assert "anonymous" not in detail and "\\x00" not in detail, detail
    named = client.post(path, json={**body, "user_id": "bob"})
    assert "(user 'bob')" in named.json()["detail"]


# --- the OpenAPI document ------------------------------------------------------------------
def test_openapi_declares_the_409_and_400_that_recommend_and_score_answer(run, tmp_path):
    """/recommend and /score answer 409 (stored feedback written for another run) and 400
    (a body that cannot be decoded as JSON), both with the one-line error body; the
    OpenAPI document declared 401, 413, 415, 422 and 503 for them, but neither of those."""
    store = FeedbackStore(tmp_path / "fb")
    store.add("w", [FeedbackRow("it3", 9.0, None)])  # a 1-10 run's row in a shared store
    with pytest.warns(UserWarning):
        client = TestClient(create_app(run, feedback_db=store))
    assert client.post("/recommend", json={"user_id": "w", "k": 3}).status_code == 409
    assert client.post("/score", json={"user_id": "w", "item_ids": ["it1"]}).status_code == 409
    bad = client.post(
        "/score", content=b'{"item_ids": ["\xff"]}', headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/recommend", "/score"):
        declared = set(paths[path]["post"]["responses"])
        assert {"409", "400"} <= declared, (path, sorted(declared))


def test_a_python_fit_refuses_an_id_no_request_may_send_back(tiny_dataset):
    """Predictor.fit on a dataset built in Python holds its ids to the same rule as fit's
    files, before any training: a RUN saved from it is served too."""
    import dataclasses

    from metarec.predictor import Predictor
    from metarec.types import IdMap, MetarecError

    ids = list(tiny_dataset.items.ids)
    ids[2] = "casa\tblanca"
    bad = dataclasses.replace(tiny_dataset, items=IdMap(ids))
    with pytest.raises(MetarecError, match=r"item ids: the id 'casa\\tblanca' holds a control"):
        Predictor.fit(bad)


def test_predict_reads_an_unknown_id_with_a_line_break_as_unknown(run, tmp_path):
    """The rule is for ids a RUN holds: predict's support may name an item no RUN can hold
    (a quoted id spanning two lines), which is an unknown item there, as any other."""
    (tmp_path / "S.csv").write_text('user_id,item_id,rating\nnew,"it\n0",5\nnew,it1,4\n')
    (tmp_path / "Q.csv").write_text("user_id,item_id\nnew,it2\n")
    argv = ["predict", "--run", str(run), "--support", str(tmp_path / "S.csv")]
    argv += ["--query", str(tmp_path / "Q.csv"), "--out", str(tmp_path / "P.csv")]
    assert main(argv) == 0
    assert list(pd.read_csv(tmp_path / "P.csv").item_id) == ["it2"]


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        (" i2 padded ", "has spaces around it"),
        ("", "is empty"),
        ("\ud800x", "is not valid Unicode (a lone surrogate)"),
    ],
    ids=["padded", "empty", "lone-surrogate"],
)
def test_a_python_fit_holds_ids_to_the_whole_server_rule(tiny_dataset, bad, said):
    """Predictor.fit checked only the length and control characters: an item id with
    spaces around it (the server strips a request's ids: the item could never be named),
    an empty one (every request naming it a 422) and a lone surrogate (create_app and
    save crashed with a UnicodeEncodeError traceback) were taken (mutation audit 190)."""
    import dataclasses

    from metarec.predictor import Predictor
    from metarec.types import IdMap, MetarecError

    ids = list(tiny_dataset.items.ids)
    ids[2] = bad
    with pytest.raises(MetarecError, match=re.escape(said)):
        Predictor.fit(dataclasses.replace(tiny_dataset, items=IdMap(ids)))
