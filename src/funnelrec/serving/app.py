"""The HTTP API: thin routers over `RecommenderService` (pipeline/service.py).

    POST /recommend      {user_id, k, context: {time, device, region, …}, debug}
    GET  /recommend      ?user_id=&k=
    POST /feedback       {request_id, user_id, events: [{item_id, type, value, ts}]}
    GET  /similar        ?item_id=&k=&channel=   (item-to-item neighbours)
    GET  /health, GET /metrics (Prometheus), POST /admin/reload {artifact}, /docs (OpenAPI)

The service loads in the app's lifespan (never at import); handlers validate, call the service,
and map domain errors to status codes (FunnelrecError → 400, DataError → 422). In front of the
routes one ASGI middleware (serving/guard.py)
- refuses a body over `max_body_bytes` with 413 (by Content-Length, or while streaming), after
  draining it so that the client can read the answer,
- reads the whole body (within `body_timeout_s`, else 408) before the request takes a slot,
- admits at most `max_in_flight` /recommend, /feedback and /similar requests at once and answers
  503 (Retry-After: 1) beyond that, instead of queueing without bound,
- counts every response by route and status for /metrics.
An unknown user gets the cold-start answer (non-personalized channels), `"cold_start": true`.

Concurrency: a recommendation is CPU-bound Python (a few ms), so /recommend runs it on the event
loop, with the requests that wait beside it as one batch (serving/batching.py: dynamic batching,
`max_batch`; debug and explain answers run alone) — no hop to a thread pool, where dozens of threads would
only fight for the GIL and the state locks (measured: a 40-thread pool turned a 1 ms SQLite
write into hundreds of ms at 50 req/s). Requests that arrive while one is computing wait on the
loop, are counted in flight by the middleware (which yields once after admitting, so a burst is
counted before any of it runs) and beyond `max_in_flight` get 503. Parallelism comes from
processes: one worker per core (`python -m funnelrec.serving --workers 2`, state in SQLite or
Redis). /feedback (an fsync per call) and /admin/reload (loading an artifact) are blocking I/O
and run on a small thread pool (`io_threads`), so the loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.routing import Route

from funnelrec.core.errors import ArtifactError, ArtifactRefused, DataError, FunnelrecError
from funnelrec.online.catalogue import UnknownEntity
from funnelrec.pipeline.eventlog import MAX_TS
from funnelrec.pipeline.funnel import Funnel
from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.serving import metrics as prom
from funnelrec.serving.batching import RecommendBatcher
from funnelrec.serving.guard import GuardMiddleware, replaying
from funnelrec.serving.schemas import (
    MAX_K,
    CatalogueResponse,
    FeedbackRequest,
    FeedbackResponse,
    ItemFeaturesResponse,
    ItemsUpsertRequest,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SimilarResponse,
    UserFeaturesResponse,
    UsersUpsertRequest,
)

MAX_BODY_BYTES = 1 << 20


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule for parsing a body as JSON: application/json or application/*+json."""
    if not content_type:
        return False
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


def freeze_heap() -> None:
    """Move everything alive now (the loaded funnel: ~270k container objects at 1M items) out of
    the cyclic GC's reach. A full collection walked them in ~150 ms while holding the GIL — a
    stall every few thousand requests that dominated the tail (docs/BENCHMARKS.md, Serving).
    Reference counting still frees them; after a reload the old funnel is unfrozen and collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def create_app(service: RecommenderService | Funnel | None = None, artifact: str | Path | None = None, *,
               state_dir: str | Path | None = None, redis_url: str | None = None,
               experiments: str | Path | None = None, config: ServiceConfig | None = None,
               admin_token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               io_threads: int = 2, body_timeout_s: float = 10.0) -> FastAPI:
    """The FastAPI app. Give a ready `RecommenderService` (or a fitted `Funnel`, served with
    in-memory state), or an `artifact` path loaded at start-up with the state in `state_dir` /
    `redis_url`. `admin_token`, when set, is required in the X-Admin-Token header of /admin/*.
    `io_threads`: the pool that runs /feedback and /admin/reload (blocking I/O); `body_timeout_s`:
    the time a client has to send its whole body (408 beyond; serving/guard.py)."""
    if io_threads < 1:
        raise FunnelrecError(f"io_threads must be ≥ 1, got {io_threads}")
    if isinstance(service, Funnel):
        service = RecommenderService(service, config)
    if service is None and artifact is None:
        raise FunnelrecError("create_app needs a service, a funnel or an artifact path")
    cfg = service.config if service is not None else (config or ServiceConfig())
    http = prom.HttpMetrics()
    batcher = RecommendBatcher(cfg.max_batch, on_batch=http.batch_size.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own = service is None
        svc = service if service is not None else RecommenderService.from_artifact(
            artifact, state_dir=state_dir, redis_url=redis_url, experiments=experiments, config=config)  # type: ignore[arg-type]
        app.state.service = svc
        app.state.io_pool = ThreadPoolExecutor(io_threads, thread_name_prefix="funnelrec-io")
        svc.warm_up()  # before the first request: uvicorn accepts connections after the lifespan starts
        freeze_heap()
        try:
            with prom.instrument(svc, http):  # the service's counts also feed /metrics (all workers')
                yield
        finally:
            app.state.io_pool.shutdown(wait=True)
            if own:
                svc.close()

    app = FastAPI(title="funnelrec", version="0.1.0", lifespan=lifespan, default_response_class=ORJSONResponse)
    app.add_middleware(GuardMiddleware, http=http, max_in_flight=cfg.max_in_flight, max_body_bytes=max_body_bytes,
                       body_timeout_s=body_timeout_s)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        # loc/msg/type only: echoing the input would resend huge bodies and can hold NaN or
        # exception objects that plain json cannot encode (a 500 found by the malformed corpus)
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return ORJSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(DataError)
    async def data_error(_: Request, exc: DataError) -> Response:
        return ORJSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(FunnelrecError)
    async def domain_error(_: Request, exc: FunnelrecError) -> Response:
        return ORJSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return request.app.state.service.health()

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(prom.render(http), media_type=prom.CONTENT_TYPE)

    async def in_io_pool(request: Request, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(request.app.state.io_pool, fn, *args)

    async def answer_recommend(request: Request, body: RecommendRequest, x_admin_token: str | None) -> Response:
        if body.debug and admin_token is not None and x_admin_token != admin_token:
            return ORJSONResponse({"detail": "debug answers show a user's exposure history: "
                                   "missing or wrong X-Admin-Token"}, status_code=403)
        svc: RecommenderService = request.app.state.service
        ctx = None
        if body.context is not None:
            ctx = {k: v for k, v in body.context.model_dump().items() if v is not None}
        args = {"user_id": body.user_id, "k": body.k, "context": ctx, "exclude": [*body.exclude, *body.exclude_ids],
                "filters": body.filters, "fields": body.fields}
        out = await batcher.recommend(svc, args, debug=body.debug, explain=body.explain)  # serving/batching.py
        return ORJSONResponse(out.to_dict(debug=body.debug, explain=body.explain))

    @app.post("/recommend", responses={200: {"model": RecommendResponse}})
    async def recommend_post(request: Request, body: RecommendRequest,
                             x_admin_token: str | None = Header(None)) -> Response:
        """Top-k items for a user, with per-item attribution, the experiment assignment and
        per-stage times; with `explain`, how each item was scored; with `debug` (which shows the
        user's exposure history: X-Admin-Token required when the server has a token), also what
        the exposure filter removed."""
        return await answer_recommend(request, body, x_admin_token)

    class RecommendPostLean:
        """POST /recommend as served: `recommend_post` (the documented route, above) without
        FastAPI's per-request dependency solving and Python JSON parsing — a JSON body goes
        straight to pydantic's `model_validate_json` and the same handler. 0.65–0.75 against
        0.93–1.0 ms of CPU for the HTTP side of a request (uvicorn, middleware, routing, JSON),
        measured with a service answering from a cache (docs/BENCHMARKS.md, Session 11). Anything
        else — a body that does not validate, is empty, or is not sent as JSON — is handed to the
        documented route, so its answers (422 details, 400s, content-type rules) are FastAPI's."""

        def __init__(self, documented: Any) -> None:
            self.documented = documented  # the FastAPI route

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            request = Request(scope, receive)
            raw = await request.body()
            body = None
            if raw and _is_json(request.headers.get("content-type")):
                try:
                    body = RecommendRequest.model_validate_json(raw)
                except ValidationError:
                    body = None
            if body is None:
                await self.documented.handle(scope, replaying(raw, receive), send)
                return
            response = await answer_recommend(request, body, request.headers.get("x-admin-token"))
            await response(scope, receive, send)

    @app.get("/recommend", responses={200: {"model": RecommendResponse}})
    async def recommend_get(request: Request, user_id: str = Query(..., min_length=1, max_length=128),
                      k: int = Query(10, ge=1, le=MAX_K), explain: bool = Query(False),
                      fields: str | None = Query(None, max_length=1024, description="item columns, e.g. title,genres")
                      ) -> Response:
        args = {"user_id": user_id, "k": k, "fields": None if fields is None else fields.split(",")}
        out = await batcher.recommend(request.app.state.service, args, explain=explain)
        return ORJSONResponse(out.to_dict(explain=explain))

    @app.get("/similar", responses={200: {"model": SimilarResponse}, 404: {"description": "unknown item_id"}})
    async def similar(request: Request, item_id: str = Query(..., min_length=1, max_length=128),
                      k: int = Query(10, ge=1, le=MAX_K),
                      channel: str | None = Query(None, min_length=1, max_length=64)) -> Response:
        """Item-to-item: the items most similar to `item_id` from the itemCF / Swing / EASE /
        vector channels' neighbours (or only `channel`'s), deduplicated, with the channels that
        named each."""
        out = request.app.state.service.similar(item_id, k=k, channel=channel)
        if out is None:
            return ORJSONResponse({"detail": f"item_id {item_id!r} is not in the catalogue"}, status_code=404)
        return ORJSONResponse(out)

    @app.post("/feedback", responses={200: {"model": FeedbackResponse}})
    async def feedback(request: Request, body: FeedbackRequest,
                       idempotency_key: str | None = Header(None, min_length=1, max_length=128)) -> dict[str, int]:
        """Events are committed to the durable event log before this returns 200; impressions
        are added to the user's exposure filter (not recommended again within its window).
        An `Idempotency-Key` header names the call: its events without an `event_id` get
        "key:index", so a retry of the call (by a client, or by nginx on another replica) is
        acknowledged as duplicates and applied once."""
        svc: RecommenderService = request.app.state.service
        return await in_io_pool(request, svc.feedback, body.request_id, body.user_id,
                                [e.model_dump() for e in body.events], idempotency_key)

    @app.post("/admin/reload", responses={200: {"model": ReloadResponse}})
    async def reload(request: Request, body: ReloadRequest,
               x_admin_token: str | None = Header(None)) -> Response:
        """Load the funnel artifact at `artifact` (or only its `parts`) and swap it in atomically; requests in flight
        finish on the old one. A failed load keeps the old one serving (4xx); a path outside the
        server's artifact directory is refused (403)."""
        if admin_token is not None and x_admin_token != admin_token:
            return ORJSONResponse({"detail": "missing or wrong X-Admin-Token"}, status_code=403)
        svc: RecommenderService = request.app.state.service
        previous = svc.current.version
        try:
            version = await in_io_pool(request, svc.reload, body.artifact, body.parts)
            await in_io_pool(request, freeze_heap)
        except ArtifactRefused as e:
            return ORJSONResponse({"detail": str(e)}, status_code=403)
        except ArtifactError as e:
            return ORJSONResponse({"detail": str(e)}, status_code=404 if "not found" in str(e) else 400)
        return ORJSONResponse({"model_version": version, "previous": previous})

    # ---- the live catalogue (issue #10): gated by the admin token like /admin/reload
    async def catalogue_call(request: Request, token: str | None, fn: Any, *args: Any) -> Response:
        if admin_token is not None and token != admin_token:
            return ORJSONResponse({"detail": "missing or wrong X-Admin-Token"}, status_code=403)
        try:
            return ORJSONResponse(await in_io_pool(request, fn, *args))
        except UnknownEntity as e:
            return ORJSONResponse({"detail": str(e)}, status_code=404)

    @app.post("/items", responses={200: {"model": CatalogueResponse}})
    async def upsert_items(request: Request, body: ItemsUpsertRequest,
                           x_admin_token: str | None = Header(None)) -> Response:
        """Upsert items (attributes: item-table columns; `expires_at`: unix s). A new item is
        recommendable on the next request (fresh, tag, author and vector channels)."""
        rows = [e.model_dump(exclude_unset=True) for e in body.items]
        return await catalogue_call(request, x_admin_token, request.app.state.service.upsert_items, rows)

    @app.delete("/items/{item_id}", responses={200: {"model": CatalogueResponse}})
    async def delete_item(request: Request, item_id: str, x_admin_token: str | None = Header(None)) -> Response:
        """The item is never recommended again (404 for an id the catalogue does not know)."""
        return await catalogue_call(request, x_admin_token, request.app.state.service.delete_item, item_id)

    @app.post("/items/{item_id}/hide", responses={200: {"model": CatalogueResponse}})
    async def hide_item(request: Request, item_id: str, x_admin_token: str | None = Header(None)) -> Response:
        return await catalogue_call(request, x_admin_token, request.app.state.service.hide_item, item_id, True)

    @app.post("/items/{item_id}/unhide", responses={200: {"model": CatalogueResponse}})
    async def unhide_item(request: Request, item_id: str, x_admin_token: str | None = Header(None)) -> Response:
        return await catalogue_call(request, x_admin_token, request.app.state.service.hide_item, item_id, False)

    @app.post("/users", responses={200: {"model": CatalogueResponse}})
    async def upsert_users(request: Request, body: UsersUpsertRequest,
                           x_admin_token: str | None = Header(None)) -> Response:
        rows = [u.model_dump() for u in body.users]
        return await catalogue_call(request, x_admin_token, request.app.state.service.upsert_users, rows)

    @app.delete("/users/{user_id}", responses={200: {"model": CatalogueResponse}})
    async def delete_user(request: Request, user_id: str, x_admin_token: str | None = Header(None)) -> Response:
        """The user is served as an unknown user (non-personalized) from now on."""
        return await catalogue_call(request, x_admin_token, request.app.state.service.delete_user, user_id)

    # ---- the feature service (issue #10, online/features.py)
    @app.get("/features/items/{item_id}", responses={200: {"model": ItemFeaturesResponse},
                                                     404: {"description": "unknown item_id"}})
    async def item_features(request: Request, item_id: str = PathParam(..., min_length=1, max_length=128),
                            now: int | None = Query(None, ge=0, le=MAX_TS)) -> Response:
        """The item's windowed counts and smoothed CTRs as of `now` (unix s; default: the clock)."""
        out = request.app.state.service.item_features(item_id, now)
        if out is None:
            return ORJSONResponse({"detail": f"item_id {item_id!r} is neither in the catalogue nor in any event"},
                                  status_code=404)
        return ORJSONResponse(out)

    @app.get("/features/users/{user_id}", responses={200: {"model": UserFeaturesResponse},
                                                     404: {"description": "unknown user_id"}})
    async def user_features(request: Request, user_id: str = PathParam(..., min_length=1, max_length=128),
                            now: int | None = Query(None, ge=0, le=MAX_TS)) -> Response:
        """The user's windowed counts, recent categories and profile as of `now`."""
        out = request.app.state.service.user_features(user_id, now)
        if out is None:
            return ORJSONResponse({"detail": f"user_id {user_id!r} is neither in the catalogue nor in any event"},
                                  status_code=404)
        return ORJSONResponse(out)

    # ---- the web console (issue #13, serving/console/): pages behind the same admin token
    from funnelrec.serving.console import console_router

    app.include_router(console_router(admin_token=admin_token, http=http))
    # POST /recommend is matched here first (a GET falls through to the documented route)
    documented = next(r for r in app.router.routes
                      if getattr(r, "path", None) == "/recommend" and "POST" in getattr(r, "methods", ()))
    app.router.routes.insert(0, Route("/recommend", RecommendPostLean(documented), methods=["POST"],
                                      name="recommend_post_lean"))
    return app
