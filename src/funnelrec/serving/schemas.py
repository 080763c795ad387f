"""Request and response bodies of the HTTP API (pydantic, unknown fields rejected).

Requests are strict where a silent coercion would hide a client bug: `k` must be a JSON integer
(not "10", not 10.5, not true), an event `type` one of the known kinds. A violation is a 422
whose `detail[i].loc` names the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from funnelrec.pipeline.eventlog import MAX_TS

MAX_K = 500
MAX_EVENTS = 1000
MAX_EXCLUDE = 10_000

def _utf8(v: str) -> str:
    """A JSON string may carry a lone UTF-16 surrogate ("\ud800"), which no UTF-8 store, hash or
    response can hold: refused here (422) rather than failing deep inside (500)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate such as \\ud800)") from None
    return v


Utf8Str = Annotated[StrictStr, AfterValidator(_utf8)]
UserId = Utf8Str | StrictInt
ItemId = Utf8Str | StrictInt


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendContext(BaseModel):
    """Per-request facts. `time` (unix s; default: now), `device`, `region` are known; other
    keys are passed to the recall channels as `RecallContext.extra` (scalar values only)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Utf8Str | StrictInt | StrictFloat | StrictBool]

    time: StrictInt | None = Field(None, ge=0, le=MAX_TS, description="unix seconds (not milliseconds)")
    device: Utf8Str | None = Field(None, max_length=64)
    region: Utf8Str | StrictInt | None = None


class RecommendRequest(_Strict):
    user_id: UserId
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    context: RecommendContext | None = None
    debug: StrictBool = False
    # per item: pre-rank score, each task's score, fused score, position before/after re-rank
    explain: StrictBool = False
    # item ids never to return in this answer (in the cart, just bought …); unknown ids are ignored
    exclude: list[ItemId] = Field(default_factory=list, max_length=MAX_EXCLUDE)
    exclude_ids: list[ItemId] = Field(default_factory=list, max_length=MAX_EXCLUDE)  # the same as `exclude`
    # only items with any of the listed values of each named item column ({"genres": ["Drama"]})
    filters: dict[Utf8Str, list[Utf8Str | StrictInt]] | None = Field(None, max_length=32)
    # item columns returned with each item as `attributes` (["title", "genres"])
    fields: list[Utf8Str] | None = Field(None, max_length=32)

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, v: Any) -> Any:
        if isinstance(v, str) and not 1 <= len(v) <= 128:
            raise ValueError("user_id must be 1 to 128 characters")
        return v


class Event(_Strict):
    item_id: ItemId
    # impression, click, like, watch_time, cart, purchase, follow, unfollow — or a type the funnel
    # config's labels.map names with a `means` (a `view` meaning click); others are refused (422)
    type: Utf8Str = Field(..., min_length=1, max_length=64)
    value: StrictFloat | StrictInt = 1.0
    ts: StrictInt | None = Field(None, ge=0, le=MAX_TS, description="unix seconds (not milliseconds)")
    # idempotency key: a retried event with the same id is acknowledged, not stored twice (default
    # when the feedback has a request_id: request_id:item_id:type:ts)
    event_id: Utf8Str | None = Field(None, min_length=1, max_length=128)

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an int beyond any float (2**1100)
            finite = False
        if not finite:
            raise ValueError("value must be a finite number")
        return v


class FeedbackRequest(_Strict):
    request_id: Utf8Str | None = Field(None, max_length=64)
    user_id: UserId
    events: list[Event] = Field(..., min_length=1, max_length=MAX_EVENTS)


class ItemUpsert(_Strict):
    """One item of the live catalogue: attributes are item-table columns (merged into the item's);
    `expires_at` (unix s; null clears it) keeps it out of answers from then on."""

    item_id: ItemId
    attributes: dict[Utf8Str, Any] = Field(default_factory=dict, max_length=256)
    expires_at: StrictInt | StrictFloat | None = None


class ItemsUpsertRequest(_Strict):
    items: list[ItemUpsert] = Field(..., min_length=1, max_length=10_000)


class UserUpsert(_Strict):
    user_id: UserId
    attributes: dict[Utf8Str, Any] = Field(default_factory=dict, max_length=256)


class UsersUpsertRequest(_Strict):
    users: list[UserUpsert] = Field(..., min_length=1, max_length=10_000)


class CatalogueResponse(BaseModel):
    catalogue_version: int
    upserted: int | None = None


class ReloadRequest(_Strict):
    artifact: Utf8Str = Field(..., min_length=1, max_length=4096)
    # only these components of the artifact ("ranker", "channels/itemcf", …); the rest stay
    parts: list[Utf8Str] | None = Field(None, min_length=1, max_length=256)


# ---- responses (documentation only: handlers return plain dicts through orjson) ----------
class ItemExplanation(BaseModel):
    """How one answer item was scored (`explain=true` or `debug=true`)."""

    prerank_score: float | None = Field(None, description="the pre-ranker's score; null without a pre-ranker")
    task_scores: dict[str, float] = Field(default_factory=dict, description="each ranker task's score (logit)")
    fused_score: float = Field(..., description="Σ_t fusion_weights[t] · task_scores[t]")
    position_before_rerank: int = Field(..., description="0-based position in the fused order")
    position: int = Field(..., description="0-based position in the answer, after the re-ranker")


class RecommendedItem(BaseModel):
    item_id: Any
    score: float
    channels: list[str]
    recall_scores: dict[str, float] = {}
    explain: ItemExplanation | None = None
    attributes: dict[str, Any] | None = Field(None, description="the item columns asked by `fields`")


class RecommendResponse(BaseModel):
    request_id: str
    user_id: str
    cold_start: bool
    note: str | None
    items: list[RecommendedItem]
    experiments: dict[str, dict[str, str | None]]
    model_version: str
    timings_ms: dict[str, float]
    fusion_weights: dict[str, float] | None = Field(None, description="the task weights used (explain/debug)")
    debug: dict[str, Any] | None = None


class SimilarItem(BaseModel):
    item_id: Any
    score: float = Field(..., description="the similarity in the first channel that named the item")
    channels: list[str]


class SimilarResponse(BaseModel):
    item_id: Any
    items: list[SimilarItem]
    model_version: str


class FeedbackResponse(BaseModel):
    logged: int
    impressions: int
    duplicates: int = Field(0, description="events whose event_id was already logged: acknowledged, not stored")


class ReloadResponse(BaseModel):
    model_version: str
    previous: str


class ItemFeaturesResponse(BaseModel):
    """GET /features/items/{item_id} (online/features.py): `{type}_{window}` counts over the
    complete buckets of each window before `now`, and `ctr_{window}` = (clicks + α·p0) /
    (impressions + α)."""

    item_id: str
    now: int = Field(..., description="the time the features are as of (unix s)")
    features: dict[str, float | int]


class UserFeaturesResponse(BaseModel):
    """GET /features/users/{user_id}: window counts, the last distinct values of the configured
    item column among the user's consumptions (null when none is configured), the profile row."""

    user_id: str
    now: int
    counts: dict[str, int]
    recent_categories: list[str] | None
    profile: dict[str, Any] | None
