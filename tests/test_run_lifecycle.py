"""A RUN's life after fit: serve's ``user`` field on odd input, update of a RUN whose
meta.json was edited and re-checksummed (defects black-box probe 177 found)."""

import hashlib
import json
import shutil

import pytest

from metarec.cli import main
from metarec.serve.feedback import FeedbackRow, FeedbackStore
from test_new_users import _world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A RUN fitted with a users file (columns club: category, age: number)."""
    return _world(tmp_path_factory.mktemp("probe_b"))


def _client(run):
    from fastapi.testclient import TestClient

    from metarec.predictor import Predictor
    from metarec.serve.app import create_app

    return TestClient(create_app(Predictor.load(run)), raise_server_exceptions=False)


ONE = b'"interactions": [{"item_id": "it31", "rating": 4}]'


@pytest.mark.parametrize(
    "user",
    [b'{"club": "\\ud800"}', b'{"\\ud800": "space_club"}', b'{"age": "\\udfff"}'],
    ids=["value", "key", "number-column"],
)
@pytest.mark.parametrize("path", ["/recommend", "/score"])
def test_a_lone_surrogate_in_user_side_data_is_a_422_not_a_500(run, path, user):
    """README: ids are valid Unicode; bad input is a 422 with a one-line detail. A lone
    surrogate escape in ``user`` reached pyarrow's string conversion: 500."""
    extra = b', "item_ids": ["it1"]' if path == "/score" else b', "k": 3'
    body = b"{" + ONE + b', "user": ' + user + extra + b"}"
    r = _client(run).post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, (r.status_code, r.text)
    assert "detail" in r.json()


@pytest.mark.parametrize("sign", ["", "-"], ids=["positive", "negative"])
@pytest.mark.parametrize("path", ["/recommend", "/score"])
def test_an_integer_past_floats_range_in_a_numeric_user_column_is_not_a_500(run, path, sign):
    """A JSON integer of 401 digits (under Python's 4,300-digit limit, so it decodes) as
    ``user.age``: OverflowError in pandas' numeric conversion, 500. It is read as the
    largest float of its sign, clipped to the fitted range as 1e308 (-1e308) is."""
    extra = b', "item_ids": ["it1"]' if path == "/score" else b', "k": 3'
    minus = sign.encode()
    body = b"{" + ONE + b', "user": {"age": ' + minus + b"1" + b"0" * 400 + b"}" + extra + b"}"
    client = _client(run)
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, (r.status_code, r.text)
    body = b"{" + ONE + b', "user": {"age": ' + minus + b"1e308}" + extra + b"}"
    same = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.json() == same.json()


def _tampered(run, tmp_path, key, value):
    """A copy of RUN whose meta.json holds ``key: value``, its manifest checksum rewritten
    (a hand-edited RUN that loads: predict and export read it)."""
    out = tmp_path / f"T_{key}"
    shutil.copytree(run, out)
    meta = json.loads((out / "meta.json").read_text())
    meta[key] = value
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    man = json.loads((out / "manifest.json").read_text())
    man["files"]["meta.json"] = hashlib.sha256((out / "meta.json").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True))
    return out


@pytest.mark.parametrize(
    "key,value",
    [
        ("updates", 5),
        ("domains", 5),
        ("rating_range", None),
        ("domains", [5]),  # a list, of no {name, ...} records
        ("rating_range", [True, 5]),  # a bool is no number
    ],
    ids=str,
)
def test_update_of_a_hand_edited_run_is_a_one_line_error_not_a_traceback(
    run, tmp_path, capsys, key, value
):
    """README: a RUN whose files are damaged is one line on stderr and exit 2. These
    meta.json values load (predict and export use the RUN), but update raised TypeError
    (exit 1 with a traceback from the CLI)."""
    store = FeedbackStore(tmp_path / "fb")
    store.add("newbie", [FeedbackRow("it1", 5, None), FeedbackRow("it2", 1, None)])
    bad = _tampered(run, tmp_path, key, value)
    out = tmp_path / "RUN2"
    argv = ["update", "--run", str(bad), "--feedback", str(tmp_path / "fb"), "--out", str(out)]
    rc = main([*argv, "--steps", "1"])
    assert rc == 2 and not out.exists()
    assert f"'{key}'" in capsys.readouterr().err


def test_update_does_not_spread_a_text_updates_record_into_characters(run, tmp_path):
    """A hand-edited ``updates: "abc"`` was iterated as a list: RUN2's meta.json held
    ``["a", "b", "c", {record}]``. Expected: refused as damaged, or the record ignored."""
    store = FeedbackStore(tmp_path / "fb")
    store.add("newbie", [FeedbackRow("it1", 5, None), FeedbackRow("it2", 1, None)])
    bad = _tampered(run, tmp_path, "updates", "abc")
    out = tmp_path / "RUN2"
    argv = ["update", "--run", str(bad), "--feedback", str(tmp_path / "fb"), "--out", str(out)]
    rc = main([*argv, "--steps", "1"])
    assert rc == 2 and not out.exists()
