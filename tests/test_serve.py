"""The web service (metarec.serve) against a RUN fitted on the synthetic two-taste world.

Known answers: a cold user's top items follow the taste their support shows; /recommend
and /score equal the library's Predictor on the same support; exclusion of seen items is
exact; explanations give the largest weight to the support item of the recommended item's
kind; the base weights are bit-identical after 1,000 requests.
"""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from metarec.predictor import Predictor
from metarec.serve.app import ServeConfig, create_app
from metarec.serve.feedback import FeedbackRow, FeedbackStore
from metarec.serve.sessions import AdaptedCache, support_hash
from metarec.types import MetarecError
from serve_world import is_space, shared_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(run):
    return Predictor.load(run)


@pytest.fixture
def client(predictor, tmp_path):
    return TestClient(create_app(predictor, feedback_db=tmp_path / "fb"))


def taste(kind: str, n: int = 6) -> list[dict]:
    """A support showing one taste: the liked kind rated 5, the other 1 (items 0..n-1)."""
    like_even = kind == "space"
    return [
        {"item_id": f"it{i}", "rating": 5.0 if (i % 2 == 0) == like_even else 1.0} for i in range(n)
    ]


def weights_hash(pred: Predictor) -> str:
    _, tensors = pred.model.state()
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()


# --- the endpoints ------------------------------------------------------------------------
def test_health_and_info(client, predictor, run):
    from metarec import __version__

    assert client.get("/health").json() == {"status": "ok"}
    head = client.head("/health")  # a liveness probe without a body
    assert head.status_code == 200 and head.content == b""
    info = client.get("/info").json()
    assert info["version"] == __version__
    assert info["encoder_fingerprint"] == predictor.info["encoder_fingerprint"]
    assert info["encoder_fingerprint"].startswith("hashing")
    assert (info["users"], info["items"], info["algorithm"]) == (60, 40, "maml")
    assert info["rank_algorithm"] == "np" and info["rank_members"] == 1
    blend = predictor.model.blend_
    assert info["rating_prior"] == ((blend.rating_prior or None) if blend else None)
    assert info["limits"]["max_k"] == 1000
    # which RUN is served: the id every file of it carries
    assert info["run_id"] == json.loads((run / "manifest.json").read_text())["run_id"]
    assert "/recommend" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("kind", ["space", "garden"])
def test_recommend_follows_the_support_taste(client, kind):
    r = client.post("/recommend", json={"interactions": taste(kind), "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    got = [it["item_id"] for it in body["items"]]
    assert [it["rank"] for it in body["items"]] == [1, 2, 3, 4, 5]
    assert all(is_space(i) == (kind == "space") for i in got), got
    assert not set(got) & {f"it{i}" for i in range(6)}  # seen items excluded
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert body["unknown_items"] == [] and body["model"] == "MetaRec-maml"


def test_recommend_equals_the_library(client, predictor):
    sup = taste("garden")
    body = client.post("/recommend", json={"interactions": sup, "k": 7}).json()
    inter, _ = predictor.support_of([s["item_id"] for s in sup], [s["rating"] for s in sup])
    ref = predictor.recommend_many({"x": inter}, 7)
    assert [it["item_id"] for it in body["items"]] == ref["item_id"].tolist()
    np.testing.assert_allclose([it["score"] for it in body["items"]], ref["score"], rtol=1e-6)


def test_exclude_seen_is_exact(client):
    sup = taste("space")
    seen = {s["item_id"] for s in sup}
    both = client.post("/recommend", json={"interactions": sup, "k": 40, "exclude_seen": False})
    only = client.post("/recommend", json={"interactions": sup, "k": 40})
    all_items = [it["item_id"] for it in both.json()["items"]]
    assert len(all_items) == 40  # the whole catalogue
    assert [it["item_id"] for it in only.json()["items"]] == [i for i in all_items if i not in seen]


def test_score_equals_predict(client, predictor):
    sup = taste("space")
    items = ["it30", "it31", "it7", "it8"]
    body = client.post("/score", json={"interactions": sup, "item_ids": items}).json()
    s = pd.DataFrame({"user_id": "x", **{k: [d[k] for d in sup] for k in ("item_id", "rating")}})
    ref, _ = predictor.predict(s, pd.DataFrame({"user_id": "x", "item_id": items}))
    assert [d["item_id"] for d in body["scores"]] == items
    np.testing.assert_allclose([d["score"] for d in body["scores"]], ref["score"], rtol=1e-6)
    # explicit data: ratings on the 1..5 scale, the liked kind (space, even) well above
    sc = {d["item_id"]: d["score"] for d in body["scores"]}
    assert sc["it30"] > sc["it31"] + 1 and sc["it8"] > sc["it7"] + 1


def test_nan_scores_are_a_500_not_a_null_score(predictor, tmp_path, monkeypatch):
    """JSON has no NaN: a NaN score went out as "score": null with a 200 (black-box probe,
    a user whose adaptation diverged). Now both endpoints answer 500 in one line."""
    client = TestClient(create_app(predictor), raise_server_exceptions=False)
    model = predictor.model
    real = model.score_adapted

    def half_nan(ad, items):
        out = np.array(real(ad, items), dtype=np.float64)
        out[::2] = np.nan
        return out

    monkeypatch.setattr(model, "score_adapted", half_nan)
    body = {"interactions": taste("space")}
    r = client.post("/score", json={**body, "item_ids": ["it7", "it8"]})
    assert r.status_code == 500 and "scored 1 of 2 asked items NaN or inf" in r.json()["detail"]
    r = client.post("/recommend", json={**body, "k": 3})
    assert r.status_code == 500 and "catalogue items NaN or inf" in r.json()["detail"]
    monkeypatch.setattr(model, "score_adapted", real)
    assert client.post("/recommend", json={**body, "k": 3}).status_code == 200


def test_unknown_ids_are_reported_and_integer_ids_read_as_strings(client):
    sup = [*taste("space"), {"item_id": 123, "rating": 4}, {"item_id": "nope", "rating": 2}]
    r = client.post("/recommend", json={"interactions": sup, "k": 3})
    assert r.status_code == 200 and r.json()["unknown_items"] == ["123", "nope"]
    r = client.post("/score", json={"interactions": taste("space"), "item_ids": ["it30", 7, "zz"]})
    assert r.status_code == 200
    assert [d["item_id"] for d in r.json()["scores"]] == ["it30"]
    assert r.json()["unknown_items"] == ["7", "zz"]


@pytest.mark.parametrize(
    "body, needle",
    [
        (b'{"interactions": [', "malformed JSON"),
        (b'{"interactions": [{"item_id": "it1", "rating": "high"}]}', "interactions.0.rating"),
        (b'{"interactions": [{"item_id": "it1", "rating": 5}], "k": 0}', "body.k"),
        (b'{"interactions": [{"item_id": "it1", "rating": 5}], "kk": 3}', "body.kk"),
        (b'{"interactions": [{"item_id": true, "rating": 5}]}', "item_id"),
        (b'{"interactions": [{"item_id": "it1", "rating": 5}], "k": 1001}', "server limit"),
        (b'{"interactions": []}', "no usable interactions"),
        (b'{"interactions": [{"item_id": "zz", "rating": 5}]}', "1 item ids are unknown"),
        # a lone surrogate has no UTF-8 spelling: it was a 500 from deep inside
        (b'{"interactions": [{"item_id": "\\ud800", "rating": 5}]}', "lone surrogate"),
        (b'{"user_id": "\\udfff", "interactions": [{"item_id": "it1", "rating": 5}]}', "user_id"),
        (b'{"interactions": [{"item_id": "it1", "rating": 50}]}', "outside the run's rating"),
        # strict types: a numeric string, a float k or an int flag is a client bug
        (b'{"interactions": [{"item_id": "it1", "rating": "5"}]}', "interactions.0.rating"),
        (b'{"interactions": [{"item_id": "it1", "rating": 5}], "k": "3"}', "body.k"),
        (b'{"interactions": [{"item_id": "it1", "rating": 5}], "k": 3.0}', "body.k"),
        (b'{"interactions": [{"item_id": "it1", "rating": 5}], "explain": 1}', "body.explain"),
        (b'{"interactions": [{"item_id": "it1", "rating": 5, "timestamp": "9"}]}', "timestamp"),
        # the CLI's range for unix seconds (2**53): 2**53 + 2 had been stored and written
        # into the RUN by update while predict refused it in a file
        (
            b'{"interactions": [{"item_id": "it1", "rating": 5, "timestamp": 9007199254740994}]}',
            "timestamp",
        ),
        # an empty id names nobody: feedback stored under "" made a user no file can name
        (b'{"user_id": "  ", "interactions": [{"item_id": "it1", "rating": 5}]}', "id is empty"),
        (b'{"interactions": [{"item_id": "", "rating": 5}]}', "id is empty"),
        # the files' word for an implicit value: the API's is "rating" (probe 141)
        (
            b'{"interactions": [{"item_id": "it1", "label": 1}]}',
            "an interaction's value is 'rating' on every run: 0 or 1 on a run fitted on labels",
        ),
    ],
)
def test_bad_requests_are_422_with_a_clear_message(client, body, needle):
    r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"] and "\n" not in r.json()["detail"]


def test_ids_are_stripped_as_when_a_file_is_read(client):
    plain = client.post("/recommend", json={"user_id": "u0", "k": 3}).json()
    padded = client.post("/recommend", json={"user_id": " u0 ", "k": 3}).json()
    assert padded["items"] == plain["items"]
    r = client.post("/score", json={"interactions": taste("space"), "item_ids": [" it30 "]})
    assert [d["item_id"] for d in r.json()["scores"]] == ["it30"]


def test_configured_limits(predictor):
    cfg = ServeConfig(max_interactions=3, max_body_bytes=400, max_k=5)
    c = TestClient(create_app(predictor, config=cfg))
    r = c.post("/recommend", json={"interactions": taste("space", 4), "k": 2})
    assert r.status_code == 422 and "4 > 3" in r.json()["detail"]
    r = c.post("/recommend", json={"interactions": taste("space", 3), "k": 6})
    assert r.status_code == 422 and "limit of 5" in r.json()["detail"]
    big = {"interactions": taste("space", 3), "user_id": "x" * 500, "k": 2}
    r = c.post("/recommend", json=big)
    assert r.status_code == 413 and "400 bytes" in r.json()["detail"]


def test_warm_user_needs_no_interactions(client):
    # u0 (even) likes space in the training log: their history is the support
    r = client.post("/recommend", json={"user_id": "u0", "k": 3})
    assert r.status_code == 200
    assert all(is_space(it["item_id"]) for it in r.json()["items"])


def test_bearer_token(predictor):
    c = TestClient(create_app(predictor, config=ServeConfig(token="s3cret")))
    body = {"interactions": taste("space"), "k": 2}
    assert c.post("/recommend", json=body).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert c.post("/recommend", json=body, headers=bad).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert c.post("/recommend", json=body, headers=good).status_code == 200
    assert c.get("/info").status_code == 401 and c.get("/info", headers=good).status_code == 200
    assert c.get("/health").status_code == 200  # liveness stays open


def test_a_non_ascii_token_works_as_utf8(predictor):
    # Starlette decodes the header as Latin-1: a UTF-8 client's "pässwörd" got a 401
    c = TestClient(create_app(predictor, config=ServeConfig(token="pässwörd")))
    sent = {"Authorization": "Bearer pässwörd".encode()}
    assert c.get("/info", headers=sent).status_code == 200
    assert c.get("/info", headers={"Authorization": "Bearer passwort"}).status_code == 401


def test_cheap_endpoints_do_not_wait_on_the_thread_pool(predictor):
    # /health, /info and the auth check were plain functions, run in the 40-thread pool
    # behind the adaptations filling it (/health took 5.8 s after a burst of 400)
    import inspect

    app = create_app(predictor)
    paths = {r.path: r.endpoint for r in app.routes if hasattr(r, "endpoint")}
    assert inspect.iscoroutinefunction(paths["/health"])
    assert inspect.iscoroutinefunction(paths["/info"])


def test_ids_with_control_characters_are_refused(client):
    # stored under "line1\nline2", rows could never be read back from GET /feedback/{id}
    body = {"user_id": "line1\nline2", "interactions": [{"item_id": "it4", "rating": 5}]}
    r = client.post("/feedback", json=body)
    assert r.status_code == 422 and "control character" in r.json()["detail"]
    # and reading one is the same 422 whichever control character: a newline was a 404
    # (Starlette's path pattern stops at it); a "/" still belongs to the id
    for raw in ("a%0Ab", "a%09b", "a%0Db"):
        r = client.get(f"/feedback/{raw}")
        assert r.status_code == 422 and "control character" in r.json()["detail"], raw


def test_a_422_lists_at_most_twenty_errors(client):
    # 80,000 unknown keys came back as a 7 MB list of errors
    body = {"interactions": [{"item_id": "it1", "rating": "x"}] * 50, "k": 2}
    r = client.post("/recommend", json=body)
    data = r.json()
    assert r.status_code == 422 and len(data["errors"]) == 20 and data["errors_total"] == 50
    # the one-line summary names three and counts the rest of all 50 (it said "+17")
    assert data["detail"].endswith("(+47 more)")


def test_the_415_answers_only_for_json_routes_and_authorised_clients(predictor):
    # every POST got it first: /nope was a 415 where the router says 404, /health a 415
    # where it says 405, and a client without the token learnt of the body rule, not 401
    c = TestClient(create_app(predictor))
    text = {"content-type": "text/plain"}
    assert c.post("/nope", content="x", headers=text).status_code == 404
    assert c.post("/health", content="x", headers=text).status_code == 405
    assert c.post("/recommend", content="x", headers=text).status_code == 415
    assert c.put("/recommend", content="x", headers=text).status_code == 405
    locked = TestClient(create_app(predictor, config=ServeConfig(token="s3cret")))
    assert locked.post("/recommend", content="x", headers=text).status_code == 401
    wrong = {**text, "authorization": "Bearer nope"}
    assert locked.post("/recommend", content="x", headers=wrong).status_code == 401
    for sent in ("Bearer s3cret", "Bearer  s3cret", "bearer s3cret"):  # as HTTPBearer reads it
        right = {**text, "authorization": sent}
        assert locked.post("/recommend", content="x", headers=right).status_code == 415


def test_a_malformed_body_without_the_token_is_a_401_not_a_422(predictor):
    # FastAPI reads the JSON body before the route's bearer check runs: a client without
    # the token learnt that its JSON was malformed instead of that it may not ask
    locked = TestClient(create_app(predictor, config=ServeConfig(token="s3cret")))
    js = {"content-type": "application/json"}
    for auth in ({}, {"authorization": "Bearer nope"}):
        r = locked.post("/recommend", content=b'{"interactions": [', headers={**js, **auth})
        assert r.status_code == 401 and r.json()["detail"] == "missing or wrong bearer token"
        assert r.headers["www-authenticate"] == "Bearer"
    right = {**js, "authorization": "Bearer s3cret"}
    r = locked.post("/recommend", content=b'{"interactions": [', headers=right)
    assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]


@pytest.mark.parametrize("key", ["explain_top", "max_explain_k"])
def test_serve_config_refuses_explain_limits_below_one(key):
    # explain_top -1 dropped each item's last explanation row without a word
    with pytest.raises(MetarecError, match=f"serve: {key} must be >= 1, got -1"):
        ServeConfig(**{key: -1})


def test_a_body_that_is_not_json_by_its_headers_is_a_415_naming_them(client):
    body = '{"interactions": [{"item_id": "it1", "rating": 5}], "k": 2}'
    form = {"content-type": "application/x-www-form-urlencoded"}  # curl -d's default
    r = client.post("/recommend", content=body, headers=form)
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    gz = {"content-type": "application/json", "content-encoding": "gzip"}
    r = client.post("/recommend", content=body, headers=gz)
    assert r.status_code == 415 and "'gzip' is not supported" in r.json()["detail"]
    r = client.post("/recommend", content=body)  # no Content-Type: FastAPI refuses it too
    assert r.status_code == 415 and r.json()["detail"].startswith("no Content-Type header")
    ok = {"content-type": "application/json; charset=utf-8"}
    assert client.post("/recommend", content=body, headers=ok).status_code == 200
    # bodies the JSON decoder gives up on: "There was an error parsing the body" before
    for bad, why in (
        (b'{"k": "\xff"}', "it is not UTF-8"),
        (b'{"x": ' + b"[" * 2000 + b"]" * 2000 + b"}", "it is nested too deeply"),
        # each named by its cause: a 5,000-digit integer was said to be one of the two
        (b'{"k": 1' + b"0" * 5000 + b"}", "an integer of more digits than Python reads"),
    ):
        r = client.post("/recommend", content=bad, headers={"content-type": "application/json"})
        detail = r.json()["detail"]
        assert r.status_code == 400 and "could not be decoded as JSON" in detail
        assert why in detail, (why, detail)
    assert client.get("/nowhere").status_code == 404  # other HTTP errors as they were


def test_score_tells_unknown_support_ids_from_unknown_item_ids(client):
    body = {
        "interactions": [{"item_id": "zz", "rating": 5}, {"item_id": "it1", "rating": 5}],
        "item_ids": ["zz", "it2", "zz", "yy"],
    }
    data = client.post("/score", json=body).json()
    assert data["unknown_items"] == ["zz", "zz", "zz", "yy"]  # as before: support, item_ids
    assert data["unknown_support_items"] == ["zz"]
    assert data["unknown_query_items"] == ["zz", "yy"]
    assert [d["item_id"] for d in data["scores"]] == ["it2"]


def test_untimed_rows_go_after_every_timed_row(predictor, monkeypatch):
    # one untimed row made the server drop every timestamp (arrival order), so past
    # max_support adaptation cut the newest timed rows and kept older ones
    seen = []
    real = Predictor.support_of

    def spy(self, items, ratings, timestamps=None):
        seen.append((list(items), None if timestamps is None else list(timestamps)))
        return real(self, items, ratings, timestamps)

    monkeypatch.setattr(Predictor, "support_of", spy)
    c = TestClient(create_app(predictor))
    rows = [
        {"item_id": "it1", "rating": 5, "timestamp": 300},
        {"item_id": "it2", "rating": 4},
        {"item_id": "it3", "rating": 1, "timestamp": 100},
        {"item_id": "it4", "rating": 2},
    ]
    assert c.post("/score", json={"interactions": rows, "item_ids": ["it9"]}).status_code == 200
    assert seen[-1] == (["it1", "it2", "it3", "it4"], [300, 301, 100, 302])
    untimed = [{k: v for k, v in r.items() if k != "timestamp"} for r in rows]
    c.post("/score", json={"interactions": untimed, "item_ids": ["it9"]})
    assert seen[-1][1] is None  # none timed: arrival order, as before


# --- feedback -----------------------------------------------------------------------------
def test_feedback_is_stored_used_and_persistent(predictor, tmp_path):
    c = TestClient(create_app(predictor, feedback_db=tmp_path))
    sup = taste("garden")
    r = c.post(
        "/feedback", json={"user_id": "ann", "interactions": [*sup, {"item_id": 99, "rating": 3}]}
    )
    assert r.json() == {"stored": 7, "unknown_items": ["99"]}
    got = c.get("/feedback/ann").json()
    assert got["user_id"] == "ann" and [d["item_id"] for d in got["interactions"]][-1] == "99"
    assert c.get("/feedback/bob").json()["interactions"] == []
    # an id holding "/" is reachable, escaped as %2F (it was a 404)
    r = c.post("/feedback", json={"user_id": "a/b", "interactions": sup[:1]})
    assert r.status_code == 200
    got_ab = c.get("/feedback/a%2Fb")
    assert got_ab.status_code == 200 and got_ab.json()["user_id"] == "a/b"
    assert [d["item_id"] for d in got_ab.json()["interactions"]] == [str(sup[0]["item_id"])]
    # ann is a new user with no request interactions: the stored feedback is her support
    mine = c.post("/recommend", json={"user_id": "ann", "k": 5}).json()
    ref = c.post("/recommend", json={"interactions": sup, "k": 5}).json()
    assert [i["item_id"] for i in mine["items"]] == [i["item_id"] for i in ref["items"]]
    assert all(not is_space(i["item_id"]) for i in mine["items"])
    # a second app on the same file (a restart) sees the same rows
    c2 = TestClient(create_app(predictor, feedback_db=tmp_path / "feedback.sqlite3"))
    assert c2.get("/feedback/ann").json() == got


def test_feedback_without_a_store_is_503(predictor):
    c = TestClient(create_app(predictor))
    r = c.post("/feedback", json={"user_id": "a", "interactions": taste("space", 1)})
    assert r.status_code == 503 and "--feedback-db" in r.json()["detail"]


def test_feedback_store_concurrent_writers(tmp_path):
    store = FeedbackStore(tmp_path)
    rows = [FeedbackRow(f"it{i}", 1.0, i) for i in range(5)]

    def write(u: int) -> None:
        own = FeedbackStore(tmp_path)  # each writer has its own handle, as processes would
        for _ in range(10):
            own.add(f"w{u}", rows)

    threads = [threading.Thread(target=write, args=(u,)) for u in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 8 * 10 * 5
    assert [r.item_id for r in store.get("w3")] == [f"it{i}" for i in range(5)] * 10
    f = store.frame()
    assert list(f.columns) == ["user_id", "item_id", "rating", "timestamp", "seq"]
    assert len(f) == 400 and f["seq"].tolist() == list(range(1, 401))  # numbered as stored


# --- caching and purity -------------------------------------------------------------------
def test_cache_hits_and_new_feedback_changes_the_key(predictor, tmp_path):
    app = create_app(predictor, feedback_db=tmp_path)
    c, cache = TestClient(app), app.state.metarec.cache
    body = {"user_id": "cat", "interactions": taste("space", 4), "k": 3}
    c.post("/recommend", json=body)
    c.post("/recommend", json=body)
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)
    c.post("/feedback", json={"user_id": "cat", "interactions": taste("space", 6)[4:]})
    c.post("/recommend", json=body)
    assert (cache.stats.misses, cache.stats.hits) == (2, 1)


def test_base_weights_unchanged_after_1000_requests(predictor):
    before = weights_hash(predictor)
    params_before = {k: v.clone() for k, v in predictor.model.rank_.params.items()}
    app = create_app(predictor, config=ServeConfig(cache_entries=16))
    c = TestClient(app)
    rng = np.random.default_rng(0)
    for n in range(1000):
        items = rng.choice(40, size=int(rng.integers(1, 8)), replace=False)
        sup = [{"item_id": f"it{i}", "rating": float(rng.integers(1, 6))} for i in items]
        path = "/score" if n % 4 == 3 else "/recommend"
        extra = {"item_ids": ["it1", "it2"]} if path == "/score" else {"k": 5}
        assert c.post(path, json={"interactions": sup, **extra}).status_code == 200
    assert weights_hash(predictor) == before
    for k, v in predictor.model.rank_.params.items():
        assert torch.equal(v, params_before[k])
    cache = app.state.metarec.cache
    assert len(cache) <= 16 and cache.stats.evictions > 0 and cache.stats.hits > 0


def test_apps_share_no_state(predictor):
    a, b = create_app(predictor), create_app(predictor)
    TestClient(a).post("/recommend", json={"interactions": taste("space"), "k": 1})
    assert len(a.state.metarec.cache) == 1 and len(b.state.metarec.cache) == 0


def test_cache_lru_and_expiry():
    now = [0.0]
    cache = AdaptedCache(max_entries=2, ttl_s=10.0, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    now[0] = 9.9
    assert cache.get("a") == 1
    now[0] = 10.0  # a and c were stored at t=0: expired at t=10
    assert cache.get("a") is None and cache.get("c") is None
    assert cache.stats.evictions == 1 and cache.stats.expirations == 2
    assert cache.get_or_compute("d", lambda: 4) == 4 and cache.get("d") == 4


def test_support_hash_is_content_and_order_sensitive():
    a = support_hash(np.array([1, 2]), np.array([5.0, 1.0]), np.array([0, 1]))
    assert a == support_hash(np.array([1, 2]), np.array([5, 1]), np.array([0, 1]))
    assert a != support_hash(np.array([2, 1]), np.array([1.0, 5.0]), np.array([0, 1]))
    assert a != support_hash(np.array([1, 2]), np.array([5.0, 2.0]), np.array([0, 1]))


# --- explanations -------------------------------------------------------------------------
def test_explanation_weights_the_same_kind_support_item_highest(client, predictor):
    # a user who liked one space item (it0) and one garden item (it1)
    sup = [{"item_id": "it0", "rating": 5.0}, {"item_id": "it1", "rating": 5.0}]
    body = client.post("/recommend", json={"interactions": sup, "k": 10, "explain": True}).json()
    for it in body["items"]:
        top = it["explanation"][0]["item_id"]
        assert is_space(top) == is_space(it["item_id"]), it
        assert len(it["explanation"]) == 2
    # on the model directly, for cold items of both kinds
    inter, _ = predictor.support_of(["it0", "it1"], [5.0, 5.0])
    w = predictor.model.explain(len(predictor.users), inter, np.array([30, 31, 32, 33]))
    assert (w[[0, 2], 0] > w[[0, 2], 1]).all() and (w[[1, 3], 1] > w[[1, 3], 0]).all()


def test_explanation_is_exact_leave_one_out(predictor):
    # the rating model samples no negatives: the weight is exactly s(all) - s(all but j)
    m = predictor.model
    cold = len(predictor.users)
    inter, _ = predictor.support_of(["it0", "it3", "it4"], [5.0, 1.0, 4.0])
    items = np.array([30, 31, 5])
    w = m.explain(cold, inter, items, which="score")
    full = m._scores(m._score_part, [(cold, inter)], items)[0]
    for j in range(3):
        keep = np.array([r for r in range(3) if r != j])
        loo = m._scores(m._score_part, [(cold, inter.take(keep))], items)[0]
        np.testing.assert_allclose(w[:, j], full - loo, rtol=1e-4, atol=1e-5)


def test_run_is_loaded_without_unpickling(run, monkeypatch):
    # a RUN is safetensors + JSON + parquet: loading must not touch pickle or torch.load
    import pickle

    def refuse(*a, **k):
        raise AssertionError("a RUN load tried to unpickle")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    c = TestClient(create_app(run))
    assert c.post("/recommend", json={"interactions": taste("space"), "k": 2}).status_code == 200
    assert not [p for p in run.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".bin")]


def test_feedback_values_are_checked_before_they_are_stored(predictor, tmp_path):
    """A stored out-of-scale rating used to break every later request of that user."""
    c = TestClient(create_app(predictor, feedback_db=tmp_path))
    for rating in (50, -1e6):
        r = c.post(
            "/feedback",
            json={"user_id": "u9", "interactions": [{"item_id": "it1", "rating": rating}]},
        )
        assert r.status_code == 422 and "rating scale" in r.json()["detail"]
    raw = b'{"user_id": "\\ud800", "interactions": [{"item_id": "it1", "rating": 4}]}'
    r = c.post("/feedback", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert c.get("/feedback/u9").json()["interactions"] == []
    assert c.post("/recommend", json={"user_id": "u9", "k": 3}).status_code == 200


def test_duplicate_support_items_follow_one_rule_in_service_and_library(client, predictor):
    """An item named twice keeps its newest row (by timestamp, else the later row), in the
    service and in Predictor.support_of (what `metarec predict` reads) alike."""
    rows = [("it2", 5.0, 300), ("it4", 1.0, 100), ("it2", 1.0, 50)]
    body = {
        "interactions": [{"item_id": i, "rating": r, "timestamp": t} for i, r, t in rows],
        "item_ids": ["it30", "it31", "it32"],
    }
    got = [d["score"] for d in client.post("/score", json=body).json()["scores"]]
    sup, _ = predictor.support_of([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    assert sorted(zip(sup.item_idx.tolist(), sup.rating.tolist(), strict=True)) == sorted(
        [(predictor.items.index("it2"), 5.0), (predictor.items.index("it4"), 1.0)]
    )
    ref = predictor.predict(
        pd.DataFrame(
            {
                "user_id": "x",
                "item_id": [r[0] for r in rows],
                "rating": [r[1] for r in rows],
                "timestamp": [r[2] for r in rows],
            }
        ),
        pd.DataFrame({"user_id": "x", "item_id": ["it30", "it31", "it32"]}),
    )[0]
    assert np.allclose(got, ref.score.to_numpy(), atol=1e-6)
    # without timestamps the later row wins
    sup, _ = predictor.support_of(["it2", "it2"], [5.0, 1.0])
    assert sup.rating.tolist() == [1.0]


def test_implicit_values_must_be_labels(tmp_path):
    from metarec.cli import main
    from serve_world import make_world

    paths = make_world(tmp_path)
    log = pd.read_csv(paths["T"])
    log = log[log.rating >= 4].drop(columns="rating").assign(label=1)
    log.to_csv(paths["T"], index=False)
    run = tmp_path / "RUN"
    args = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), "--out", str(run)]
    fast = [
        "--set",
        "text.model='hashing:64'",
        "--set",
        "text.pca_dim=16",
        "--set",
        "train.steps=30",
        "--set",
        "progress=false",
    ]
    assert main([*args, *fast]) == 0
    c = TestClient(create_app(Predictor.load(run)))
    r = c.post("/recommend", json={"interactions": [{"item_id": "it1", "rating": 5}], "k": 2})
    assert r.status_code == 422 and "0/1 labels" in r.json()["detail"]
    r = c.post("/recommend", json={"interactions": [{"item_id": "it1", "rating": 1}], "k": 2})
    assert r.status_code == 200
    # named after the model that scores (no rating model here): it said "MetaRec-maml"
    assert r.json()["model"] == "MetaRec-np" and c.get("/info").json()["model"] == "MetaRec-np"
    # fitted in this process, not loaded, alike
    from metarec.data.files import read_training_files
    from metarec.predictor import fit_raw

    fresh = fit_raw(read_training_files(paths["T"], paths["I"]), Predictor.load(run).model.config)
    assert fresh.model.name == "MetaRec-np"
    # a near-1 value was cast to float32 (1.0) before the check on /recommend and /score,
    # while /feedback refused it as "value 1": refused everywhere, quoted as sent
    near = {"interactions": [{"item_id": "it1", "rating": 0.99999999}]}
    for path, extra in (("/recommend", {"k": 2}), ("/score", {"item_ids": ["it2"]})):
        r = c.post(path, json={**near, **extra})
        assert r.status_code == 422 and "value 0.99999999 on a run" in r.json()["detail"], path


def test_recommend_by_domain_equals_the_library(tmp_path):
    from metarec.cli import main
    from serve_world import make_world

    paths = make_world(tmp_path)
    items = pd.read_csv(paths["I"])
    items["domain"] = np.where(np.arange(len(items)) < 20, "books", "films")
    items.to_csv(paths["I"], index=False)
    run = tmp_path / "RUN"
    args = ["fit", "--train", str(paths["T"]), "--items", str(paths["I"]), "--out", str(run)]
    fast = ["--set", "text.model='hashing:64'", "--set", "text.pca_dim=16"]
    assert main([*args, *fast, "--set", "train.steps=30", "--set", "progress=false"]) == 0
    pred = Predictor.load(run)
    c = TestClient(create_app(pred))
    sup = taste("space")
    r = c.post("/recommend", json={"interactions": sup, "k": 4, "domain": "films"})
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert all(int(i[2:]) >= 20 for i in got)
    inter, _ = pred.support_of([s["item_id"] for s in sup], [s["rating"] for s in sup])
    ref = pred.recommend_many({"x": inter}, 4, "films")
    assert got == ref.item_id.tolist()
    # the other domain: the space taste's top items are films, so "films" alone could not
    # tell a filter that is ignored (probe 143)
    r = c.post("/recommend", json={"interactions": sup, "k": 4, "domain": "books"})
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert got and all(int(i[2:]) < 20 for i in got)
    assert got == pred.recommend_many({"x": inter}, 4, "books").item_id.tolist()
    r = c.post("/recommend", json={"interactions": sup, "k": 4, "domain": "music"})
    assert r.status_code == 422 and "unknown domain 'music'" in r.json()["detail"]
    # a number is the domain of that name, as --domain 2 is (a JSON 2 was a 422)
    r = c.post("/recommend", json={"interactions": sup, "k": 4, "domain": 2})
    assert r.status_code == 422 and "unknown domain '2'" in r.json()["detail"]
    # /info names the domains the filter takes: the items file's; the log, which names
    # none, takes its items' (it said "default" alone, a domain the filter refuses)
    info = c.get("/info").json()
    assert info["item_domains"] == [
        {"name": "books", "items": 20},
        {"name": "films", "items": len(pred.items) - 20},
    ]
    assert [d["name"] for d in info["dataset"]["domains"]] == ["books", "films"]
    # the domain's mask and items are built once and handed out read-only
    mask = pred.domain_mask("films")
    assert mask.sum() == len(pred.items) - 20 and not mask.flags.writeable
    assert pred.candidates("films") is pred.candidates("films")
    assert pred.candidates("films").tolist() == np.flatnonzero(mask).tolist()


def test_the_newest_stored_row_wins_whatever_the_request_holds(client):
    # whether one unrelated request row had a timestamp decided which stored row of an item
    # counted: now the newest (largest timestamp; untimed counts as newest) always does
    client.post(
        "/feedback",
        json={
            "user_id": "mix",
            "interactions": [{"item_id": "it3", "rating": 5, "timestamp": 2000}],
        },
    )
    client.post(
        "/feedback",
        json={
            "user_id": "mix",
            "interactions": [{"item_id": "it3", "rating": 1, "timestamp": 1000}],
        },
    )
    seen = []
    for row in (
        {"item_id": "it5", "rating": 4, "timestamp": 3000},
        {"item_id": "it5", "rating": 4},
    ):
        body = {"user_id": "mix", "interactions": [row], "k": 1, "explain": True}
        r = client.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        expl = r.json()["items"][0]["explanation"]
        seen.append({e["item_id"]: e["rating"] for e in expl}.get("it3"))
    assert seen == [5.0, 5.0]


def test_a_requests_own_repeats_follow_the_newest_row_rule(client):
    # one untimed row anywhere in the request switched its repeats to arrival order: it2
    # at t=200 (rating 1) lost to it2 at t=100 (rating 5) because it31 had no timestamp
    items = ["it30", "it32", "it34"]

    def scores(rows):
        body = {"interactions": rows, "item_ids": items}
        r = client.post("/score", json=body)
        assert r.status_code == 200, r.text
        return [d["score"] for d in r.json()["scores"]]

    mixed = [
        {"item_id": "it2", "rating": 1, "timestamp": 200},
        {"item_id": "it2", "rating": 5, "timestamp": 100},
        {"item_id": "it31", "rating": 3},
    ]
    newest = [mixed[0], mixed[2]]
    assert np.allclose(scores(mixed), scores(newest), atol=1e-6)
    # an untimed repeat counts as newest, wherever it comes in the request
    later = [{"item_id": "it2", "rating": 1}, {"item_id": "it2", "rating": 5, "timestamp": 9}]
    assert np.allclose(scores(later), scores([later[0]]), atol=1e-6)


def test_a_feedback_store_deleted_or_failing_under_the_server(predictor, tmp_path, monkeypatch):
    import sqlite3

    from metarec.serve.feedback import FeedbackStore

    c = TestClient(create_app(predictor, feedback_db=tmp_path / "fb"))
    body = {"user_id": "d1", "interactions": [{"item_id": "it1", "rating": 4}]}
    assert c.post("/feedback", json=body).status_code == 200
    for f in (tmp_path / "fb").iterdir():
        f.unlink()  # deleted: made again on the next write ("no such table" 500s forever)
    assert c.post("/feedback", json=body).status_code == 200
    assert len(c.get("/feedback/d1").json()["interactions"]) == 1
    import shutil

    shutil.rmtree(tmp_path / "fb")  # its folder too: 503 for every user until a restart
    assert c.post("/feedback", json=body).status_code == 200
    assert c.post("/recommend", json={"user_id": "d1", "k": 2}).status_code == 200

    def broken(self, user_id, limit=None):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(FeedbackStore, "get", broken)
    r = c.post("/recommend", json={"user_id": "d1", "k": 2})
    assert (
        r.status_code == 503 and r.json()["detail"] == "feedback store unavailable: disk I/O error"
    )


def test_a_failed_add_reports_sqlites_own_error(tmp_path):
    # SQLite rolls back by itself on some errors (a full disk); the second ROLLBACK then
    # failed with "no transaction is active" and hid the real cause. A trigger that
    # rolls back stands in for the full disk here.
    import sqlite3

    store = FeedbackStore(tmp_path)
    with sqlite3.connect(store.path) as con:
        con.execute(
            "CREATE TRIGGER full BEFORE INSERT ON feedback BEGIN "
            "SELECT RAISE(ROLLBACK, 'database or disk is full'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="database or disk is full"):
        store.add("u", [FeedbackRow("it1", 4.0, None)])
    assert store.count() == 0


def test_the_cache_is_sized_to_its_memory_budget(predictor):
    # each entry holds a float64 score per catalogue item: 4096 entries were 1.6 GB on a
    # 36k-item catalogue, 4 GB on 100k items, whatever the machine had
    cfg = ServeConfig(cache_entries=4096, cache_mb=1024.0)
    assert cfg.cache_size(1682) == 4096  # ML-100K: the entry count binds
    assert cfg.cache_size(36_000) == 1024 * 2**20 // (8 * 36_000 + 65_536)  # 3,055
    assert cfg.cache_size(10**8) == 1  # never 0: a cache of one still serves repeats
    assert ServeConfig(cache_entries=0).cache_size(10) == 0
    # the adapted parameters an entry holds are measured on the model, not guessed:
    # three rating models (model.rating_members) hold three adapted copies
    per = predictor.model.adapted_bytes()
    assert per > 0
    # only what a user owns: the unadapted tensors adapt returns are views of the base's
    # memory, and counting them (the item ID table, once per part) held ~800 users where
    # 4,096 fit (probe 121)
    m = predictor.model
    cold, sup = m.probe_support()
    a = m.adapt_user(cold, sup, "rank")
    table = m.rank_.params["item_id"]
    assert a.params["item_id"].untyped_storage().data_ptr() == table.untyped_storage().data_ptr()
    by_object = sum(  # the old count: every tensor not the base's own object
        v.numel() * v.element_size()
        for v in a.params.values()
        if not any(v is w for w in m.rank_.params.values())
    )
    from metarec.model import own_bytes

    assert own_bytes(a.params, m.rank_) + table.numel() * table.element_size() <= by_object
    assert cfg.cache_size(36_000, per) == 1024 * 2**20 // (8 * 36_000 + per)
    app = create_app(predictor, config=ServeConfig(cache_mb=0.1))
    info = TestClient(app).get("/info").json()
    assert info["cache"]["max_entries"] == app.state.metarec.cache.max_entries == 1
    with pytest.raises(MetarecError, match="cache budget must be a finite number of MB > 0"):
        ServeConfig(cache_mb=0)


def test_get_feedback_follows_the_id_rules_of_every_other_endpoint(predictor, tmp_path):
    # GET took the path as it came: " sp1 " read nothing back of what POST stored as
    # "sp1", and an empty or 3,000-character id was a 200
    c = TestClient(create_app(predictor, feedback_db=tmp_path))
    sup = taste("space")[:2]
    assert c.post("/feedback", json={"user_id": " sp1 ", "interactions": sup}).status_code == 200
    got = c.get("/feedback/%20sp1%20")
    assert got.status_code == 200 and got.json()["user_id"] == "sp1"
    assert len(got.json()["interactions"]) == 2
    for bad, said in (("%20%20", "id is empty"), ("x" * 3000, "longer than 1024")):
        r = c.get(f"/feedback/{bad}")
        assert r.status_code == 422 and said in r.json()["detail"], r.text
    # a path that is not UTF-8 once %-decoded was read as the user "\ufffd" (whose rows
    # it returned); that user's own spelling, %EF%BF%BD, still reads them
    rows = [{"item_id": "it1", "rating": 4}]
    assert c.post("/feedback", json={"user_id": "\ufffd", "interactions": rows}).status_code == 200
    for bad in ("%FF", "%C3", "a%FFb"):
        r = c.get(f"/feedback/{bad}")
        assert r.status_code == 422 and "not valid UTF-8" in r.json()["detail"], bad
    assert len(c.get("/feedback/%EF%BF%BD").json()["interactions"]) == 1


def test_an_integer_id_is_bounded_as_a_string_id_is(predictor, tmp_path):
    # a 1,100-digit integer user_id was stored (200), could never be read back (its GET
    # was a 422), and `metarec update` then refused the whole store for that one row
    c = TestClient(create_app(predictor, feedback_db=tmp_path))
    rows = [{"item_id": "it1", "rating": 4}]
    for body in (
        {"user_id": 10**1100, "interactions": rows},
        {"user_id": "u", "interactions": [{"item_id": 10**1100, "rating": 4}]},
    ):
        r = c.post("/feedback", json=body)
        assert r.status_code == 422 and "longer than 1024" in r.text, r.text
    assert c.post("/feedback", json={"user_id": 10**1000, "interactions": rows}).status_code == 200
    assert c.get(f"/feedback/{10**1000}").json()["user_id"] == str(10**1000)


def test_superseded_out_of_scale_ratings_are_refused_as_the_cli_refuses_them(client):
    # the request's repeats collapsed to the newest row before the check: a rating 9 on
    # a 1-5 run, replaced by a 3, passed here while `metarec predict` refused it, and
    # 50 such rows were counted as one
    rows = [{"item_id": "it1", "rating": 9}] * 3 + [{"item_id": "it1", "rating": 3}]
    r = client.post("/recommend", json={"interactions": rows, "k": 3})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == (
        "support: rating 9 is outside the run's rating scale [1, 5] (3 such rows)"
    )


def test_stored_feedback_that_does_not_fit_the_run_is_named_not_blamed_on_the_client(
    predictor, tmp_path
):
    """A store shared with another run (every run served without --feedback-db shares
    one) may hold rows this run cannot adapt on: the request naming their user was a 422
    blaming its own valid support. It is a 409 naming the store, and serve warns at
    start; a request row that replaces the stored one for the same item is fine."""
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    store = FeedbackStore(tmp_path / "shared")
    store.add("other", [FeedbackRow("it2", 10.0, None), FeedbackRow("it3", 4.0, None)])
    with pytest.warns(UserWarning, match=r"1 stored row\(s\) do not fit this run's rating scale"):
        app = create_app(predictor, feedback_db=store)
    c = TestClient(app)
    r = c.post("/recommend", json={"user_id": "other", "interactions": taste("space")[:2], "k": 3})
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith(
        "stored feedback of user 'other' does not fit the served run: rating 10 is outside "
        "the run's rating scale [1, 5] (1 such row) (the store "
    )
    fixed = [{"item_id": "it2", "rating": 4}]
    assert c.post("/recommend", json={"user_id": "other", "interactions": fixed}).status_code == 200
    # a stored row naming an item outside this catalogue is left out of the support
    # anyway: whatever its value, it neither refuses the user nor counts at start
    other = FeedbackStore(tmp_path / "foreign")
    other.add("far", [FeedbackRow("not-here", 9.0, None), FeedbackRow("it3", 4.0, None)])
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error")
        c2 = TestClient(create_app(predictor, feedback_db=other))
    r = c2.post("/recommend", json={"user_id": "far", "interactions": taste("space")[:1]})
    assert r.status_code == 200, r.text


def test_a_store_that_cannot_be_written_is_refused_at_start(tmp_path):
    import sqlite3

    # a real store whose inserts fail (as on a read-only file, which root may still
    # write): every check at start passed, the schema being there, and each POST
    # /feedback was a 503 afterwards
    path = tmp_path / "fb.sqlite3"
    FeedbackStore(path)
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TRIGGER no_rows BEFORE INSERT ON feedback "
        "BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END"
    )
    con.commit()
    con.close()
    with pytest.raises(MetarecError, match="not a usable feedback database .*readonly"):
        FeedbackStore(path)


def test_an_off_scale_rating_is_quoted_as_given(predictor):
    # "rating 5 is outside the run's rating scale [1, 5]" for a 5.000001
    c = TestClient(create_app(predictor))
    r = c.post("/recommend", json={"interactions": [{"item_id": "it0", "rating": 5.000001}]})
    assert r.status_code == 422 and "rating 5.000001 is outside" in r.json()["detail"]


def test_recommend_explanations_are_leave_one_out_of_the_score_served(client):
    # the weights kept the full support's sampled negatives (and, with a blend, used the
    # meta-model's logit alone): re-requesting without the row disagreed (0.037 vs 0.045)
    sup = [
        {"item_id": "it1", "rating": 5.0},
        {"item_id": "it2", "rating": 4.0},
        {"item_id": "it5", "rating": 1.0},
        {"item_id": "it8", "rating": 3.0},
    ]

    def logit(p):
        return np.log(p) - np.log1p(-p)

    body = client.post("/recommend", json={"interactions": sup, "k": 2, "explain": True}).json()
    # the same request without each row, its score for the item read off /recommend
    for it in body["items"]:
        for e in it["explanation"]:
            rest = [s for s in sup if s["item_id"] != e["item_id"]]
            again = client.post(
                "/recommend", json={"interactions": rest, "k": 40, "exclude_seen": False}
            ).json()
            loo = {x["item_id"]: x["score"] for x in again["items"]}[it["item_id"]]
            assert e["weight"] == pytest.approx(logit(it["score"]) - logit(loo), abs=2e-4)


@pytest.mark.parametrize(
    "rating, timestamp, said",
    [
        ("'abc'", "NULL", "stored rating 'abc' is not a finite number"),
        ("9e999", "NULL", "stored rating inf is not a finite number"),
        ("X'0102'", "NULL", "stored rating b'\\x01\\x02' is not a finite number"),
        ("5", "'yesterday'", "stored timestamp 'yesterday' is not an integer"),
        ("5", "1.5", "stored timestamp 1.5 is not an integer"),
    ],
)
def test_a_damaged_stored_row_is_a_one_line_503_and_refused_at_start(
    predictor, tmp_path, rating, timestamp, said
):
    """SQLite keeps text in a REAL column: such a row (never written by /feedback) was a
    500 with a traceback on every request of its user, a 409 blaming "another run" for
    an inf, and a traceback at start for a text rating. /recommend and GET /feedback
    now answer 503 naming the store and the value; start refuses it in one line where the
    rating is what is damaged (start reads the ratings, not the times)."""
    import sqlite3

    from metarec.serve.feedback import FeedbackRow, FeedbackStore, StoreDamaged

    store = FeedbackStore(tmp_path / "fb")
    c = TestClient(create_app(predictor, feedback_db=store))
    store.add("ok", [FeedbackRow("it2", 4.0, None)])
    with sqlite3.connect(store.path) as con:
        con.execute(
            "INSERT INTO feedback (user_id, item_id, rating, timestamp, received_at) "
            f"VALUES ('dmg', 'it0', {rating}, {timestamp}, 0)"
        )
    for r in (
        c.post("/recommend", json={"user_id": "dmg", "k": 2}),
        c.get("/feedback/dmg"),
    ):
        assert r.status_code == 503, r.text
        assert "damaged feedback store" in r.json()["detail"] and said in r.json()["detail"]
    assert c.post("/recommend", json={"user_id": "ok", "k": 2}).status_code == 200
    if "rating" in said:
        with pytest.raises(StoreDamaged, match="damaged feedback store"):
            create_app(predictor, feedback_db=store)


def test_ratings_are_bounded_by_the_run_not_by_a_fixed_million():
    # a 1e6-5e6 run's own top rating was a 422 at the server and fine for `predict`; the
    # run's scale is checked per request (Predictor.check_values)
    from metarec.serve import schemas as S

    assert S.Interaction(item_id="it0", rating=5e6).rating == 5e6
    with pytest.raises(ValueError):
        S.Interaction(item_id="it0", rating=1e39)


def test_serve_without_the_serve_extra_is_one_line_before_the_port(monkeypatch, tmp_path, capsys):
    # a core install crashed on `import uvicorn` with a traceback, exit 1, its port bound
    import importlib.util

    from metarec import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    monkeypatch.setattr(cli, "_listen", lambda *a: pytest.fail("port bound"))
    assert cli.main(["serve", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        "serve needs the 'serve' extra (uvicorn not installed): pip install 'metarec[serve]'" in err
    )


def test_a_store_holding_rows_of_a_run_on_other_feedback_is_said(predictor, client, tmp_path):
    # probe 141: rows carry no run, and a label run's "played" 1s fit a 1-5 run's scale:
    # they were read as one-star ratings without a word. The first rows stored record
    # what their values mean (kind and scale; not the catalogue, which a refit may grow)
    from metarec.serve.feedback import FeedbackRow, FeedbackStore

    assert predictor.feedback_tag == "explicit 1.0..5.0"
    store = FeedbackStore(tmp_path / "fb")
    assert store.written_for() is None  # no row yet: an empty store says nothing
    create_app(predictor, feedback_db=store)
    r = client.post(
        "/feedback", json={"user_id": "z", "interactions": [{"item_id": "it1", "rating": 4}]}
    )
    assert r.status_code == 200
    assert store.written_for() == predictor.feedback_tag  # the client's store is tmp/fb
    mine = FeedbackStore(tmp_path / "mine")
    mine.add("z", [FeedbackRow("it1", 4.0, None)], written_for=predictor.feedback_tag)
    assert mine.written_for() == predictor.feedback_tag
    create_app(predictor, feedback_db=mine)  # its own rows: nothing to say
    theirs = FeedbackStore(tmp_path / "theirs")
    theirs.add("fan", [FeedbackRow("it1", 1.0, None)], written_for="implicit")
    theirs.add("fan", [FeedbackRow("it2", 1.0, None)], written_for=predictor.feedback_tag)
    assert theirs.written_for() == "implicit"  # the first rows' meaning is kept
    with pytest.warns(UserWarning, match="holds rows stored by a run on implicit feedback"):
        create_app(predictor, feedback_db=theirs)


def test_written_for_other_is_silent_for_the_stores_own_meaning_only(tmp_path):
    """FeedbackStore.written_for_other: None where the stored rows mean what the reader
    means (the tag they were written for) and for an empty store, a warning naming both
    meanings otherwise (mutation audit, probe 147: warning on the store's own tag too,
    which every serve of its own store would have said, passed every test)."""
    store = FeedbackStore(tmp_path / "fb")
    assert store.written_for_other("explicit 1.0..5.0") is None  # nothing stored yet
    store.add("u", [FeedbackRow("i", 4.0, None)], written_for="explicit 1.0..5.0")
    assert store.written_for_other("explicit 1.0..5.0") is None
    said = store.written_for_other("implicit")
    assert said is not None and "on explicit 1.0..5.0 feedback, read here as implicit" in said
