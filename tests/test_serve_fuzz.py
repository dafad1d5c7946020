"""Fuzz the service from its own OpenAPI schema (schemathesis): no input gives a 5xx, and
every response matches the schema declared for its status code. Bounded: 50 examples per
endpoint, derandomised, no shrinking database. A second, hypothesis-driven test sends only
*valid* bodies over catalogue ids (schema-generated ids are almost never in the catalogue,
so they exercise the 422 paths): every one must succeed with a consistent answer."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from serve_world import shared_run

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) not installed")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from metarec.serve.app import create_app  # noqa: E402

BOUNDED = settings(
    max_examples=50,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    return create_app(run, feedback_db=tmp_path_factory.mktemp("fuzz_fb"))


def _fuzz(op, seen: dict) -> None:
    name = f"{op.method} {op.path}"

    @BOUNDED
    @given(case=op.as_strategy())
    def check(case) -> None:
        r = case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
        seen.setdefault(name, set()).add(r.status_code)

    check()


def test_schema_fuzz_never_5xx(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        _fuzz(result.ok(), seen)
    assert set(seen) == {
        "get /health",
        "head /health",
        "get /info",
        "post /recommend",
        "post /score",
        "post /feedback",
        "get /feedback/{user_id}",
    }
    assert all(code < 500 for codes in seen.values() for code in codes)


interaction = st.fixed_dictionaries(
    {
        "item_id": st.integers(0, 39).map(lambda i: f"it{i}"),
        "rating": st.sampled_from([1, 2, 3, 4, 5]),
    },
    optional={"timestamp": st.integers(0, 2**40)},
)


@BOUNDED
@given(
    inter=st.lists(interaction, min_size=1, max_size=30),
    k=st.integers(1, 50),
    exclude=st.booleans(),
    explain=st.booleans(),
    user=st.sampled_from([None, "u0", "u1", "someone"]),
)
def test_valid_requests_always_succeed(app, inter, k, exclude, explain, user):
    c = TestClient(app)
    body = {"interactions": inter, "k": k, "exclude_seen": exclude, "explain": explain}
    if user is not None:
        body["user_id"] = user
    r = c.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    ids = [it["item_id"] for it in items]
    assert len(ids) == len(set(ids)) and [it["rank"] for it in items] == list(
        range(1, len(ids) + 1)
    )
    if not exclude:
        assert len(ids) == min(k, 40)
    else:
        assert not set(ids) & {i["item_id"] for i in inter}
    assert all((it["explanation"] is not None) == explain for it in items)
