"""Request and response bodies of the web service, validated at the boundary (pydantic).

Raw ids travel as JSON strings; integer ids are accepted and read as strings (``50`` and
``"50"`` name the same item). Unknown fields are rejected so a typo is a 422, not a silent
default. Types are strict too: ``"k": "10"``, ``"k": 10.0``, ``"rating": "5"`` and
``"exclude_seen": 1`` are 422s, since a client sending them has a bug worth hearing
about (an integer is still accepted where a float is asked for). Size limits that the
operator configures (``k``, number of interactions) are checked by the app, not here,
so the schema stays the same for every deployment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

# the store's bounds: float32's range for a rating, int64-safe timestamps (timestamps
# become int64 arrays downstream)
from metarec.serve.feedback import RATING_MAX
from metarec.serve.feedback import TIMESTAMP_MAX as _TS_MAX
from metarec.serve.feedback import TIMESTAMP_MIN as _TS_MIN
from metarec.types import id_to_str

RawId = Annotated[
    StrictStr | StrictInt,
    BeforeValidator(id_to_str),
    Field(description="raw id: a string (integers are read as strings)"),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Interaction(_Body):
    item_id: Annotated[RawId, Field(examples=["50"])]
    rating: float = Field(
        allow_inf_nan=False,
        # float32's range (ratings are held in float32); the run's own scale is checked
        # per request (Predictor.check_values): a fixed +-1e6 refused a 1e6-5e6 run's
        # own top ratings, which `metarec predict` takes
        ge=-RATING_MAX,
        le=RATING_MAX,
        description="explicit rating, or 1/0 (liked / not) for implicit data",
        examples=[5.0],
    )
    timestamp: int | None = Field(
        default=None, ge=_TS_MIN, le=_TS_MAX, description="unix seconds (orders the support)"
    )


class RecommendRequest(_Body):
    user_id: RawId | None = Field(
        default=None, description="known users add their training history and stored feedback"
    )
    interactions: list[Interaction] = Field(default_factory=list)
    user: dict[str, StrictStr | int | float | None] | None = Field(
        default=None,
        description="side data of a user the run was not fitted with, by the columns of "
        'fit\'s users file (as `metarec predict --users`): {"age": 30, "gender": "F"}; '
        "a user the run lists keeps the data fitted for them",
    )
    k: int = Field(default=10, ge=1, description="items to return (the server caps it)")
    exclude_seen: bool = True
    explain: bool = False
    # read as ids are (an integer is its string, as `--domain 2` and the files' domain
    # cells are names): a JSON 2 was a 422 "valid string"
    domain: RawId | None = Field(
        default=None,
        description="rank only this domain's items (as `metarec recommend --domain`)",
    )


class Explanation(BaseModel):
    item_id: str = Field(description="a support interaction's item")
    rating: float
    weight: float = Field(
        description="ranking score(item | support) - ranking score(item | support without "
        "this row), on the ranking score's own scale before any squashing: the like "
        "model's logit, blend included (a RUN fitted with rank_model = false ranks by its "
        "rating, and the weight is then a difference of ratings)"
    )


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(
        description="P(user likes the item) from the ranking model; for a RUN fitted without "
        "one (rank_model = false), the predicted rating (as /score gives it, the blend "
        "included), clipped to the rating scale"
    )
    rank: int
    explanation: list[Explanation] | None = None


# what became of a request's "user" side data, in /recommend's and /score's responses
UserSideUse = Annotated[
    Literal["new", "filled", "kept"] | None,
    Field(
        description='what the request\'s "user" side data did: "new" (a user the run has no '
        'row for, scored from it), "filled" (a training user the run has no side data '
        'for, given it), "kept" (the run\'s fitted side data stands; the sent data was '
        'checked and not used); null without "user"',
    ),
]


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    unknown_items: list[str]
    model: str
    user_side: UserSideUse = None


class ScoreRequest(_Body):
    user_id: RawId | None = None
    interactions: list[Interaction] = Field(default_factory=list)
    user: dict[str, StrictStr | int | float | None] | None = Field(
        default=None,
        description="side data of a user the run was not fitted with, by the columns of "
        'fit\'s users file (as `metarec predict --users`): {"age": 30, "gender": "F"}; '
        "a user the run lists keeps the data fitted for them",
    )
    item_ids: list[RawId] = Field(min_length=1)


class ItemScore(BaseModel):
    item_id: str
    score: float = Field(description="predicted rating (explicit data) or probability")


class ScoreResponse(BaseModel):
    scores: list[ItemScore]
    unknown_items: list[str] = Field(
        description="unknown ids of the support (once each: a repeated support item is "
        "one interaction), then of item_ids (each as often as sent)"
    )
    unknown_support_items: list[str] = Field(
        default_factory=list, description="the support's unknown item ids (left out of it)"
    )
    unknown_query_items: list[str] = Field(
        default_factory=list, description="item_ids unknown to the model (not scored), once each"
    )
    user_side: UserSideUse = None


class FeedbackRequest(_Body):
    user_id: RawId
    interactions: list[Interaction] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    stored: int
    unknown_items: list[str] = Field(
        description=(
            "stored ids outside the model's catalogue: kept in the store, but neither "
            "served nor used by `metarec update`, whose catalogue is the fit's"
        )
    )


class FeedbackList(BaseModel):
    user_id: str
    interactions: list[Interaction]


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None


class Error(BaseModel):
    """Every error response: a one-line ``detail``; schema errors also list ``errors``."""

    detail: str
    errors: list[ErrorDetail] | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Info(BaseModel):
    model: str
    algorithm: str  # meta-algorithm of the model behind /score (the rating model if any)
    rank_algorithm: str | None = None  # of the ranking model behind /recommend, if any
    rank_members: int | None = None  # ranking models averaged (model.rank_members), if any
    rating_members: int | None = None  # rating models averaged (model.rating_members), if any
    # the closed-form rating the rating stack leans on (blend.rating_prior), if any
    rating_prior: str | None = None
    # the precision `metarec export` stored the RUN in ("fp16", "int8"); None: fp32
    exported: str | None = None
    version: str
    dataset: dict
    encoder_fingerprint: str
    run: str | None
    # the served RUN's id (a digest of its contents): which RUN this server loaded at
    # start (a RUN that `metarec update` writes has its own); None for a RUN written
    # before RUNs carried one
    run_id: str | None = None
    users: int
    items: int
    feedback_store: str | None
    # the domains /recommend's "domain" accepts, with their catalogue item counts: the
    # items file's, which dataset.domains (the log's, at fit) need not match
    item_domains: list[dict] = Field(default_factory=list)
    limits: dict
    cache: dict = Field(description="adapted-params cache: entries, max_entries, hits, misses, ...")
