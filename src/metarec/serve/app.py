"""The FastAPI app: ``create_app(run_dir or Predictor, ...)`` -> app. No module state (the
factory registers one URL convertor in Starlette's process-wide table).

Every request adapts the model to the user's support (request interactions + stored
feedback + the training history of a known user), through a per-(user, support hash) LRU
of adapted parameters, then scores the whole catalogue in one batched pass. The base
weights are only ever read.

Errors: malformed JSON or a schema violation -> 422 with a one-line ``detail`` (plus the
pydantic ``errors``); a request over a configured limit -> 422 (413 for the body size); a
cold user with no usable interactions -> 422 (no popularity fallback: a made-up answer is
worse than a clear refusal for a cold-start service); a bad token -> 401. Unknown item ids
never fail a request: they are reported in ``unknown_items``.
"""

# no `from __future__ import annotations`: FastAPI must resolve the endpoints' annotations,
# and the auth dependency's refers to a local of create_app
import dataclasses
import functools
import hashlib
import json
import secrets
import sqlite3
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote_to_bytes

import numpy as np
import pandas as pd

try:
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.concurrency import run_in_threadpool
    from starlette.convertors import Convertor, register_url_convertor
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError(
        "metarec serve needs fastapi and uvicorn: pip install 'metarec[serve]'"
    ) from err


from metarec.config import coerce_fields
from metarec.data.tabular import clip
from metarec.errors import one_line
from metarec.model import MetaRecommender
from metarec.predictor import Predictor, UserSideRows
from metarec.recommender import top_k
from metarec.serve import schemas as S
from metarec.serve.feedback import FeedbackRow, FeedbackStore, StoreDamaged, newest_per_item
from metarec.serve.sessions import AdaptedCache, support_hash
from metarec.types import Interactions, MetarecError


class _AnyText(Convertor):
    """A path parameter matching any text, line breaks included. Starlette's ``path``
    (``.*``) stops at a newline, so GET /feedback/a%0Ab was a 404 "Not Found" while
    /feedback/a%09b got the id rule's 422 ("id holds a control character")."""

    regex = "[\\s\\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


@dataclass(frozen=True)
class ServeConfig:
    max_k: int = 1000
    max_interactions: int = 1000  # per request
    max_score_items: int = 10_000  # item_ids per /score request
    max_body_bytes: int = 1 << 20
    explain_top: int = 10  # explanation rows per recommended item
    max_explain_k: int = 100  # explain=true only for k up to this
    cache_entries: int = 4096
    cache_ttl_s: float = 900.0
    # the adapted-user cache's memory budget: each entry holds the user's score for every
    # catalogue item (8 bytes each), so 4096 entries were 1.6 GB on a 36k-item catalogue
    # and 4 GB on 100k items; the entry count is lowered to fit this budget
    cache_mb: float = 1024.0
    token: str | None = None  # bearer token; None = open (bind to 127.0.0.1 then)

    def __post_init__(self) -> None:
        # built directly too, as from_dict builds it; the cache's TTL and budget are
        # checked below in serve's words, and an infinite TTL ("never expire") is valid
        coerce_fields(self, skip=("cache_ttl_s", "cache_mb"))
        # explain_top -1 silently dropped each item's last explanation row, max_explain_k
        # -3 made every explain request a 422
        for name in (
            "max_k",
            "max_interactions",
            "max_score_items",
            "max_body_bytes",
            "explain_top",
            "max_explain_k",
        ):
            if getattr(self, name) < 1:
                raise MetarecError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        if self.cache_entries < 0 or not self.cache_ttl_s > 0:
            raise MetarecError(
                f"serve: cache entries must be >= 0 and the cache TTL > 0 seconds, got "
                f"{self.cache_entries} and {self.cache_ttl_s}"
            )
        if not (self.cache_mb > 0 and np.isfinite(self.cache_mb)):
            raise MetarecError(
                f"serve: the cache budget must be a finite number of MB > 0, got {self.cache_mb}"
            )

    def cache_size(self, n_items: int, adapted_bytes: int = 64 << 10) -> int:
        """Entries the cache may hold: ``cache_entries``, lowered so that entries of
        ``n_items`` scores (float64) plus ``adapted_bytes`` of adapted parameters
        (:meth:`MetaRecommender.adapted_bytes`) fit ``cache_mb``."""
        if self.cache_entries == 0:
            return 0
        per_entry = 8 * n_items + adapted_bytes
        return max(1, min(self.cache_entries, int(self.cache_mb * (1 << 20) // per_entry)))


@dataclass(eq=False)
class _State:
    """What one app instance serves; held on ``app.state.metarec``."""

    predictor: Predictor
    config: ServeConfig
    store: FeedbackStore | None
    run: str | None
    cache: AdaptedCache
    all_items: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.all_items = np.arange(len(self.predictor.items), dtype=np.int64)


@dataclass(frozen=True)
class _Side:
    """What a request's ``user`` did (the app's new_user)."""

    uidx: int  # the user's index: in the view for a new user given side data
    digest: str | None = None  # of the side data row the view gives them
    use: str | None = None  # the response's user_side: "new", "filled", "kept"; None
    rows: UserSideRows | None = None  # the encoded row, for the view built on demand


def _as_float_if_huge(v: object) -> object:
    """A JSON integer past a float's range (it decodes: up to 4,300 digits) as the largest
    float of its sign, clipped to the fitted range as 1e308 is; as it was, pandas' number
    conversion raised OverflowError, a 500."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > sys.float_info.max:
        return sys.float_info.max if v > 0 else -sys.float_info.max
    return v


def _unprocessable(msg: str) -> HTTPException:
    return HTTPException(status_code=422, detail=one_line(msg))


def _check_finite(values: np.ndarray, what: str) -> None:
    """A 500 naming the count where the model scored NaN or inf: JSON has no NaN, so such
    a score went out as ``"score": null`` with a 200 (as predict refuses to write it)."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise HTTPException(
            status_code=500,
            detail=f"the model scored {int(bad.sum())} of {len(values)} {what} NaN or inf "
            "for this user; the RUN is damaged",
        )


def _anonymous_id(pred: Predictor) -> str:
    """The id a request without user_id goes by when it sends side data: a new user to
    the run. A valid id (files' id rule: it was "\x00anonymous", which that rule now
    refuses) that names none of the run's users, random so no client meets it by chance;
    errors never name it (the frame says it is anonymous)."""
    while True:
        who = f"anonymous-{secrets.token_hex(8)}"
        if who not in pred.users and who not in pred.new_users:
            return who


def create_app(
    run: str | Path | Predictor,
    *,
    feedback_db: str | Path | FeedbackStore | None = None,
    config: ServeConfig | None = None,
    run_name: str | None = None,
) -> FastAPI:
    """A new app serving ``run`` (a RUN directory, loaded from safetensors/JSON/parquet
    only, or a :class:`Predictor`). ``feedback_db``: SQLite file or folder for
    ``/feedback``; None disables it (503). ``run_name``: what ``/info`` reports as the run
    when ``run`` is an already loaded Predictor (default: its folder, if given one)."""
    from metarec import __version__

    # Starlette keeps its URL convertors in one process-wide table: registered here, by
    # the factory, not as a side effect of importing this module (review 160)
    register_url_convertor("anytext", _AnyText())
    cfg = config or ServeConfig()
    pred = run if isinstance(run, Predictor) else Predictor.load(run)
    store = (
        feedback_db
        if isinstance(feedback_db, FeedbackStore) or feedback_db is None
        else FeedbackStore(feedback_db)
    )
    if store is not None:
        other = store.written_for_other(pred.feedback_tag)
        if other is not None:
            warnings.warn(f"{other}: give this run its own --feedback-db", stacklevel=2)
        # the rows a request of their user would be refused for (the 409 below): on
        # catalogue items, judged by the run's own rule
        outside = store.ratings_outside(pred.model.rating_range_ if pred.explicit else None)
        unfit = len(pred.unfit_values([r for i, r in outside if i in pred.items]))
        if unfit:
            # said once at start; each request naming such a user is then a 409
            warnings.warn(
                f"feedback store {store.path}: {unfit} stored row(s) do not fit this run's "
                f"{'rating scale' if pred.explicit else '0/1 labels'} (written for another "
                "run?); requests for their users will be refused until they are removed or "
                "this run gets its own --feedback-db",
                stacklevel=2,
            )
    state = _State(
        pred,
        cfg,
        store,
        run_name if isinstance(run, Predictor) else str(run),
        AdaptedCache(cfg.cache_size(len(pred.items), pred.model.adapted_bytes()), cfg.cache_ttl_s),
    )
    model = pred.model
    anonymous = _anonymous_id(pred)
    # new_user()'s answers by a digest of (user, their ``user`` as sent): each the row
    # given (d_user floats) and its digest, whatever the request's size
    sides = AdaptedCache(state.cache.max_entries, cfg.cache_ttl_s)

    app = FastAPI(
        title="metarec",
        version=__version__,
        description="Few-shot adapted recommendations from a metarec RUN.",
    )
    app.state.metarec = state
    # the routes that read a JSON body, filled once they are declared below: elsewhere a
    # POST is the router's 404 or 405, not a 415 about its Content-Type
    json_routes: dict[str, set[str]] = {}
    app.add_middleware(_JsonBody, routes=json_routes, token=cfg.token)
    app.add_middleware(_BodyLimit, max_bytes=cfg.max_body_bytes)
    bearer = HTTPBearer(auto_error=False)
    # our error bodies replace FastAPI's default 422 schema in the OpenAPI document
    errs = {
        c: {"model": S.Error, "description": d}
        for c, d in (
            (400, "a body that cannot be decoded as JSON (not UTF-8, or nested too deeply)"),
            (401, "missing or wrong bearer token"),
            (413, "request body over the server limit"),
            (415, "a body that is not JSON (Content-Type) or is compressed"),
            (422, "malformed or invalid request, or a limit exceeded"),
            (503, "no feedback store configured, or the store is unavailable or damaged"),
        )
    }
    # what reads a user's stored feedback may find rows written for another run
    stored = {
        **errs,
        409: {
            "model": S.Error,
            "description": "the user's stored feedback was written "
            "for another run (a store shared by runs on other rating scales)",
        },
    }

    # async (as /health and /info are): a plain def runs in the 40-thread pool, where it
    # queued behind adaptations under load (/health took 0.7 s at 64 clients, 5.8 s after
    # a burst of 400); these are a dict read or a compare and never block
    async def auth(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if cfg.token is None:
            return
        # the header as sent: Starlette decodes it as Latin-1, so compare its bytes that
        # way (a UTF-8 client's "pässwörd" failed against the token's UTF-8 bytes)
        ok = creds is not None and secrets.compare_digest(
            creds.credentials.encode("latin-1", "replace"), cfg.token.encode("utf-8")
        )
        if not ok:
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        every = exc.errors()
        # at most 20 listed: 80,000 unknown keys in a 0.9 MB body came back as a 7 MB list
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in every[:20]
        ]
        content = {"detail": _one_line(errors, len(every)), "errors": errors}
        if len(every) > 20:
            content["errors_total"] = len(every)
        return JSONResponse(status_code=422, content=content)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's words for a body its JSON decoder gave up on: bytes that are not
            # UTF-8, JSON nested deeper than the decoder's recursion limit (~1,000), or an
            # integer longer than Python converts (4,300 digits), named by the cause
            cause = exc.__cause__
            if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
                why = "it holds an integer of more digits than Python reads (4,300)"
            elif isinstance(cause, UnicodeDecodeError):
                why = "it is not UTF-8"
            elif isinstance(cause, RecursionError):
                why = "it is nested too deeply"
            else:
                why = "it is not UTF-8, or it is nested too deeply"
            return JSONResponse(
                status_code=400,
                content={"detail": f"the request body could not be decoded as JSON: {why}"},
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(MetarecError)
    async def _bad_input(request: Request, exc: MetarecError) -> JSONResponse:
        # one bounded line: a 500,000-character column name in ``user`` came back whole
        return JSONResponse(status_code=422, content={"detail": one_line(str(exc))})

    @app.exception_handler(StoreDamaged)
    async def _store_damaged(request: Request, exc: StoreDamaged) -> JSONResponse:
        # a stored row /feedback never writes (text as a rating): the store's fault, not
        # the request's (a 422 would blame the client), and one line, not a bare 500
        return JSONResponse(status_code=503, content={"detail": one_line(str(exc))})

    @app.exception_handler(sqlite3.Error)
    async def _store_down(request: Request, exc: sqlite3.Error) -> JSONResponse:
        # the feedback store failing under a running server (a full disk, a read-only
        # remount): the client's request was fine, so a one-line 503, not a bare 500
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return JSONResponse(
            status_code=503, content={"detail": f"feedback store unavailable: {first}"}
        )

    # --- helpers over this app's state --------------------------------------------------
    def check_interactions(inter: list[S.Interaction]) -> None:
        if len(inter) > cfg.max_interactions:
            raise _unprocessable(
                f"too many interactions: {len(inter)} > {cfg.max_interactions} (server limit)"
            )

    def support(
        user_id: str | None, inter: list[S.Interaction], side: dict | None = None
    ) -> tuple[int, Interactions, list[str]]:
        """(user_idx, support, unknown ids): stored feedback, then the request, whose rows
        replace stored rows of the same items; within the request an item named twice keeps
        its newest row (feedback.newest_per_item, the stored rows' rule)."""
        check_interactions(inter)
        # every row of the request checked as the CLI checks a support file, before an
        # item's repeats collapse to the newest: a superseded rating 9 on a 1-5 run passed
        # here while `metarec predict` refused it, and repeats were counted once
        pred.check_values(np.asarray([i.rating for i in inter], dtype=np.float64))
        stored = (
            newest_per_item(store.get(user_id, limit=cfg.max_interactions))
            if (store is not None and user_id is not None)
            else []
        )
        named = {str(i.item_id) for i in inter}
        rows = [r for r in stored if r.item_id not in named]
        # checked where they count: a stored row naming an item outside this catalogue
        # is left out of the support anyway (support_of), whatever its value
        known = [r for r in rows if r.item_id in pred.items]
        try:
            pred.check_values(np.asarray([r.rating for r in known], dtype=np.float64))
        except MetarecError as err:
            # rows this store took for another run (one store is shared by every run
            # served without --feedback-db): the client cannot fix them, so not a 422
            # that blames its support
            raise HTTPException(
                409,
                f"stored feedback of user {user_id!r} does not fit the served run: "
                f"{str(err).removeprefix('support: ')} (the store {store.path} holds rows "
                "written for another run; serve this run with its own --feedback-db)",
            ) from None
        # stored rows on items outside the catalogue go no further (reported as unknown,
        # as support_of would have; their values, checked by it, refused the request)
        foreign = [r.item_id for r in rows if r.item_id not in pred.items]
        rows = known
        # the request's own repeats follow the stored rows' rule (largest timestamp wins,
        # an untimed row counts as newest): support_of alone honoured timestamps only when
        # every row had one, so one untimed row switched the request to arrival order
        rows += newest_per_item([FeedbackRow(str(i.item_id), i.rating, i.timestamp) for i in inter])
        ts = [r.timestamp for r in rows]
        timed = [t for t in ts if t is not None]
        if timed and len(timed) < len(ts):
            # some rows timed, some not: an untimed row counts as newest (the rule above),
            # so it goes after every timed row, in arrival order. Left to support_of, one
            # untimed row dropped every timestamp: the rows kept arrival order, and past
            # max_support adaptation cut the newest timed rows instead of the oldest
            after = iter(range(max(timed) + 1, max(timed) + 1 + len(ts)))
            ts = [t if t is not None else next(after) for t in ts]
        sup, unknown = pred.support_of(
            [r.item_id for r in rows], [r.rating for r in rows], ts if timed else None
        )
        unknown = foreign + unknown
        uidx = pred.user_index(user_id)
        # a new user who sent side data is scored from it, as a user the users file
        # listed is, even with nothing to adapt on
        if uidx == len(pred.users) and len(sup) == 0 and side is None:
            why = (
                f"all {len(unknown)} item ids are unknown to the model"
                if unknown
                else "no interactions were given and none are stored for this user"
            )
            raise _unprocessable(
                f"cannot adapt to a new user with no usable interactions: {why} "
                "(send at least one interaction with a catalogue item_id)"
            )
        return uidx, sup, unknown

    async def support_off_loop(
        user_id: str | None, inter: list[S.Interaction], side: dict | None = None
    ):
        """support(): the store read (a user's long stored history) runs off the event
        loop so it holds up nobody else; a request with no stored rows to read (no store,
        or no user_id) is a few id lookups and runs here, so its cache hit does not queue
        behind the adaptations filling the thread pool."""
        if store is not None and user_id is not None:
            return await run_in_threadpool(support, user_id, inter, side)
        return support(user_id, inter, side)

    async def adapted(
        user_id: str | None,
        uidx: int,
        sup: Interactions,
        which: str,
        side: _Side,
        on: Callable[[], MetaRecommender] | None = None,
    ):
        # A hit (the common case: a user's support changes far less often than they ask)
        # is a dict lookup, served on the event loop; only a miss — a few ms of adaptation
        # that releases the GIL inside torch — goes to the thread pool, so hits never queue
        # behind a thread hop. The digest of the side data row a request's ``user`` gave
        # is part of the key, as the support is; the view holding that row (a copy of the
        # whole user table) is built only here, on a miss
        key = (user_id or "", uidx, support_hash(sup.item_idx, sup.rating, sup.timestamp), which)
        if side.digest is not None:
            key = (*key, side.digest)
        value = state.cache.get(key)
        if value is None:
            view = on if on is not None else functools.cache(lambda: on_side(side))
            value = await run_in_threadpool(lambda: view().adapt_user(uidx, sup, which))
            state.cache.put(key, value)
        return value

    def on_side(side: _Side) -> MetaRecommender:
        """The model a request adapts on: the RUN's, or a view also holding the side data
        row its ``user`` gave (scoring an adapted user reads no user row: the model's own
        score_adapted serves both)."""
        return model if side.rows is None else pred.with_side_rows(side.rows).model

    def side_key(user_id: str | None, side: dict) -> tuple[str, dict, bytes]:
        """A request's ``user`` checked for what the encoder cannot say in one line:
        (the user's id in the row, its cells, the key of its encoding in ``sides``)."""
        if model.user_features_ is None:  # said for the server: no --users to point to
            raise _unprocessable(
                "user: this run cannot encode users' side data (fitted without a users "
                "file, or by an earlier metarec); send interactions only"
            )
        keys = [str(k).strip() for k in side]
        if len(set(keys)) != len(keys):
            raise _unprocessable("user: a column is named twice (keys are read stripped)")
        for text in (*keys, *(v for v in side.values() if isinstance(v, str))):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # JSON may carry a lone UTF-16 surrogate ("\ud800"), which pyarrow's
                # strings cannot hold: a 500, where the id fields already said so
                raise _unprocessable(
                    "user: a column name or value is not valid Unicode (a lone surrogate escape)"
                ) from None
        # one row, {} included (every column missing); a "user_id" key is not a column
        who = user_id if user_id is not None else anonymous
        cells = {
            k: _as_float_if_huge(v)
            for k, v in zip(keys, side.values(), strict=True)
            if k != "user_id"
        }
        # JSON keeps 1, 1.0 and true apart, which a tuple of the values would not; kept as
        # a digest: the text itself (up to the body limit, 1 MB) held the memo's memory
        # past --cache-mb (300 such requests: +319 MB; review 188)
        text = json.dumps([who, list(cells.items())])
        return who, cells, hashlib.sha256(text.encode()).digest()  # ASCII

    def new_user(who: str, cells: dict, uidx: int) -> _Side:
        """What a request's ``user`` (the side data of a user the run has none for) does,
        by Predictor.with_users' rules (those of ``predict --users``): a new user gets a
        row of their own, a training user without fitted side data gets theirs filled
        (their index, and history, stay); a user with fitted side data keeps it. Every
        ``user`` is read and checked (an unknown column is a 422 for anyone)."""
        frame = pd.DataFrame([{"user_id": who, **cells}], index=[0])
        frame.attrs["source"] = "user"  # errors name the request's field; keys stripped
        frame.attrs["anonymous"] = who == anonymous  # and no made-up user
        rows = pred.side_rows(frame)  # a MetarecError: 422
        if rows.stats["listed_users_kept"]:
            return _Side(uidx, use="kept")  # fitted side data stands
        at = rows.index_of(who)  # a new user's index in the view
        at = uidx if at is None else at
        row = rows.row_of(at)
        digest = hashlib.sha256(row.tobytes()).hexdigest()[:16]
        new = rows.stats["new_users_with_side_data"]
        return _Side(at, digest, "new" if new else "filled", rows)

    async def new_user_off_loop(user_id: str | None, side: dict | None, uidx: int) -> _Side:
        """new_user(), remembered: the same ``user`` of the same user again is a lookup on
        the event loop (encoding one row through pandas took ~7 ms a request, longer than
        a cached adaptation); a first one is encoded off the loop (a user text is
        embedded by the RUN's encoder)."""
        if side is None:
            return _Side(uidx)
        who, cells, key = side_key(user_id, side)
        known = sides.get(key)
        if known is None:
            known = await run_in_threadpool(new_user, who, cells, uidx)
            sides.put(key, known)
        return known

    # --- endpoints ----------------------------------------------------------------------
    @app.get("/health", response_model=S.Health)
    async def health() -> S.Health:
        return S.Health(status="ok")

    # HEAD too: load balancers and `curl -I` probe liveness without a body (its own
    # function, so the OpenAPI schema gets its own operation id)
    @app.head("/health", response_model=S.Health)
    async def health_head() -> S.Health:
        return S.Health(status="ok")

    # the catalogue's domains, as /recommend's "domain" filter reads them
    names, counts = np.unique(pred.item_domain.astype(str), return_counts=True)
    item_domains = [{"name": str(n), "items": int(c)} for n, c in zip(names, counts, strict=True)]

    @app.get("/info", response_model=S.Info, dependencies=[Depends(auth)], responses=errs)
    async def info() -> S.Info:
        return S.Info(
            model=model.name,
            algorithm=model.scoring_algorithm,
            rank_algorithm=model.rank_algorithm,
            rating_prior=(model.blend_.rating_prior or None) if model.blend_ is not None else None,
            exported=pred.exported,
            rank_members=None if model.rank_ is None else model.rank_.members,
            rating_members=None if model.rating_ is None else model.rating_.members,
            version=__version__,
            dataset={k: v for k, v in pred.info.items() if k != "item_domains"},
            encoder_fingerprint=str(pred.info.get("encoder_fingerprint", "")),
            run=state.run,
            run_id=pred.run_id,
            users=len(pred.users),
            items=len(pred.items),
            feedback_store=None if store is None else str(store.path),
            item_domains=item_domains,
            limits={
                "max_k": cfg.max_k,
                "max_interactions": cfg.max_interactions,
                "max_score_items": cfg.max_score_items,
                "max_body_bytes": cfg.max_body_bytes,
            },
            cache={
                "entries": len(state.cache),
                "max_entries": state.cache.max_entries,
                **dataclasses.asdict(state.cache.stats),
            },
        )

    @app.post(
        "/recommend",
        response_model=S.RecommendResponse,
        dependencies=[Depends(auth)],
        responses=stored,
        description="Top-k items for the user (adapted on the request's interactions plus "
        "stored feedback), best first, excluding every item they have rated. Fewer than k "
        "come back when fewer are left in the catalogue (or the domain); none, an empty "
        "`items` list, when the user has rated them all.",
    )
    async def recommend(req: S.RecommendRequest) -> S.RecommendResponse:
        if req.k > cfg.max_k:
            raise _unprocessable(f"k = {clip(req.k)} is over the server limit of {cfg.max_k}")
        if req.explain and req.k > cfg.max_explain_k:
            raise _unprocessable(f"explain=true allows k <= {cfg.max_explain_k}, got {req.k}")
        user_id = None if req.user_id is None else str(req.user_id)
        # an unknown domain is a 422 naming the known ones, before any adaptation
        inside = None if req.domain is None else pred.domain_mask(req.domain)
        uidx, sup, unknown = await support_off_loop(user_id, req.interactions, req.user)
        side = await new_user_off_loop(user_id, req.user, uidx)
        uidx = side.uidx
        # the view holding the request's side data row, built at most once per request
        # (an explanation that missed the cache built it twice: a copy of the user table
        # each time)
        view = functools.cache(lambda: on_side(side))
        ad = await adapted(user_id, uidx, sup, "rank", side, view)
        # the catalogue's scores were computed at adaptation: this is an (n_items,) gather
        scores = model.score_adapted(ad, state.all_items)
        _check_finite(scores, "catalogue items")
        if req.exclude_seen:
            scores[ad.seen] = -np.inf
        if inside is not None:
            scores[~inside] = -np.inf
        top = top_k(scores, req.k, finite=True)
        shown = model.shown_rank_scores(scores[top])  # ratings clipped to the scale
        weights = (
            await run_in_threadpool(lambda: view().explain(uidx, sup, top, "rank"))
            if req.explain and len(top)
            else None
        )
        ids = pred.items.ids
        items = []
        for r, j in enumerate(top):
            expl = None
            if weights is not None:
                order = np.argsort(-weights[r], kind="stable")[: cfg.explain_top]
                expl = [
                    S.Explanation(
                        item_id=ids[sup.item_idx[c]],
                        rating=float(sup.rating[c]),
                        weight=float(weights[r, c]),
                    )
                    for c in order
                ]
            items.append(
                S.RecommendedItem(
                    item_id=ids[j], score=float(shown[r]), rank=r + 1, explanation=expl
                )
            )
        return S.RecommendResponse(
            items=items, unknown_items=unknown, model=model.name, user_side=side.use
        )

    @app.post(
        "/score", response_model=S.ScoreResponse, dependencies=[Depends(auth)], responses=stored
    )
    async def score(req: S.ScoreRequest) -> S.ScoreResponse:
        if len(req.item_ids) > cfg.max_score_items:
            raise _unprocessable(
                f"too many item_ids: {len(req.item_ids)} > {cfg.max_score_items} (server limit)"
            )
        user_id = None if req.user_id is None else str(req.user_id)
        uidx, sup, unknown = await support_off_loop(user_id, req.interactions, req.user)
        side = await new_user_off_loop(user_id, req.user, uidx)
        uidx = side.uidx
        wanted = np.asarray([str(i) for i in req.item_ids], dtype=object)
        idx = pred.items.lookup_or_missing(wanted)
        ok = idx >= 0
        ad = await adapted(user_id, uidx, sup, "score", side)
        # a model pass over the asked items (unlike /recommend's gather from the scores
        # cached at adaptation): off the event loop, where 10,000 items held /health up
        # for ~0.4 s under four such clients
        s = await run_in_threadpool(model.score_adapted, ad, idx[ok])
        _check_finite(s, "asked items")
        scores = [
            S.ItemScore(item_id=i, score=float(v)) for i, v in zip(wanted[ok], s, strict=True)
        ]
        missing = [str(i) for i in wanted[~ok]]
        return S.ScoreResponse(
            scores=scores,
            unknown_items=unknown + missing,
            unknown_support_items=unknown,
            unknown_query_items=list(dict.fromkeys(missing)),
            user_side=side.use,
        )

    def need_store() -> FeedbackStore:
        if store is None:
            raise HTTPException(503, "this server runs without a feedback store (--feedback-db)")
        return store

    @app.post(
        "/feedback", response_model=S.FeedbackResponse, dependencies=[Depends(auth)], responses=errs
    )
    def feedback(req: S.FeedbackRequest) -> S.FeedbackResponse:
        st = need_store()
        check_interactions(req.interactions)
        # checked before storing: a stored out-of-scale rating would break every later
        # request of this user (and `metarec update`)
        pred.check_values(np.asarray([i.rating for i in req.interactions]), "feedback")
        rows = [FeedbackRow(str(i.item_id), i.rating, i.timestamp) for i in req.interactions]
        n = st.add(str(req.user_id), rows, written_for=pred.feedback_tag)
        ids = np.asarray([r.item_id for r in rows], dtype=object)
        unknown = [str(i) for i in ids[pred.items.lookup_or_missing(ids) < 0]]
        return S.FeedbackResponse(stored=n, unknown_items=unknown)

    @app.get(
        "/feedback/{user_id:anytext}",  # ids may hold "/" (sent as %2F), or a newline
        response_model=S.FeedbackList,
        dependencies=[Depends(auth)],
        responses=errs,
    )
    def feedback_of(user_id: str, request: Request) -> S.FeedbackList:
        # the path as sent: Starlette decodes its %-escapes with errors="replace", so
        # /feedback/%FF read the rows of the user named "\ufffd"
        try:
            unquote_to_bytes(request.scope.get("raw_path") or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise _unprocessable("user_id: the path is not valid UTF-8 once %-decoded") from None
        # the id rules of every other endpoint (stripped, not empty, at most 1,024
        # characters): " sp1 " read nothing back from what POST /feedback stored as "sp1"
        try:
            user_id = str(S.id_to_str(user_id))
        except ValueError as err:
            raise _unprocessable(f"user_id: {err}") from None
        rows = need_store().get(user_id)
        return S.FeedbackList(
            user_id=user_id,
            interactions=[
                S.Interaction(item_id=r.item_id, rating=r.rating, timestamp=r.timestamp)
                for r in rows
            ],
        )

    for r in app.routes:
        methods = set(getattr(r, "methods", None) or ()) & {"POST", "PUT", "PATCH"}
        if methods:
            json_routes.setdefault(r.path, set()).update(methods)
    return app


def _one_line(errors: list[dict], total: int) -> str:
    """The first three of ``errors`` in one line, and how many of ``total`` are left out."""
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e["loc"])
        if e.get("type") == "json_invalid":
            parts.append(f"malformed JSON in the request body ({e['msg']})")
        else:
            parts.append(f"{loc}: {e['msg']}")
    more = f" (+{total - len(parts)} more)" if total > len(parts) else ""
    # a client copying the CSV files' words sent "label" and got four errors, none of them
    # saying that the API names an implicit run's 0/1 "rating" too (probe 141)
    label = any(
        e.get("type") == "extra_forbidden" and e["loc"] and e["loc"][-1] == "label" for e in errors
    )
    hint = (
        " (an interaction's value is 'rating' on every run: 0 or 1 on a run fitted on "
        "labels, the column the files call 'label')"
        if label
        else ""
    )
    return "invalid request: " + "; ".join(parts) + more + hint


class _JsonBody:
    """ASGI middleware: 415 for a request body that is not plain JSON by its headers.
    FastAPI reads a form-encoded body (curl's default without -H) as no object at all and
    answered "Input should be a valid dictionary" (a body without a Content-Type too), and
    a gzip body a 400 "There was an error parsing the body": neither says what to change."""

    def __init__(self, app, routes: dict[str, set[str]], token: str | None = None) -> None:
        self.app, self.routes, self.token = app, routes, token

    def _authorised(self, headers: dict) -> bool:
        # as the routes' bearer check: a client without the token gets their 401, not a
        # 415 that answers for a route it may not use
        if self.token is None:
            return True
        # split as FastAPI's HTTPBearer splits it (the credentials stripped)
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(
            given.strip(), self.token.encode("utf-8")
        )

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") not in ("POST", "PUT", "PATCH")
            or scope.get("method") not in self.routes.get(scope.get("path"), ())
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if not self._authorised(headers):
            # answered here, before the body is read: FastAPI parses a JSON body before it
            # runs the route's bearer check, so a malformed body without the token was a
            # 422 about its JSON, not the 401 the client needs first
            await _send_json(
                send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")]
            )
            return
        kind = headers.get(b"content-type", b"").decode("latin-1")
        media = kind.split(";", 1)[0].strip().lower()
        coding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            said = f"Content-Type {media!r} is not JSON" if media else "no Content-Type header"
            await _send_json(
                send, 415, f"{said}: send the body as JSON with Content-Type: application/json"
            )
            return
        if coding not in ("", "identity"):
            await _send_json(
                send,
                415,
                f"Content-Encoding {coding!r} is not supported: send the body uncompressed",
            )
            return
        await self.app(scope, receive, send)


class _BodyLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _send_json(send, 400, "bad Content-Length header")
                return
            if too_big:
                await _send_json(send, 413, self._msg())
                return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # raised inside body parsing, FastAPI passes HTTPExceptions through
                    raise HTTPException(413, self._msg())
            return message

        await self.app(scope, limited, send)

    def _msg(self) -> str:
        return f"request body is over the server limit of {self.max_bytes} bytes"


async def _send_json(
    send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
