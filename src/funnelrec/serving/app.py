"""The HTTP API: thin routers over the pipeline's `Funnel`.

The funnel loads in the app's lifespan (never at import); handlers validate, call the pipeline,
and map domain errors to status codes. An unknown user gets the cold-start answer
(non-personalized channels) with `"cold_start": true`; a malformed query is a 422.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from funnelrec.core.errors import FunnelrecError
from funnelrec.pipeline.funnel import Funnel, Recommendation

MAX_K = 500


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def answer(funnel: Funnel, rec: Recommendation, user_id: Any) -> dict[str, Any]:
    ids = funnel.dataset_.items["item_id"].to_numpy()[rec.items] if len(rec.items) else []
    return {
        "user_id": user_id,
        "cold_start": rec.cold_start,
        "note": "unknown user or empty history: non-personalized results" if rec.cold_start else None,
        "items": [
            {"item_id": (i.item() if hasattr(i, "item") else i), "score": float(s), "channels": ch}
            for i, s, ch in zip(ids, rec.scores, rec.channels)
        ],
        "timings_ms": rec.timings_ms,
        **({"debug": rec.debug} if rec.debug else {}),
    }


def create_app(funnel: Funnel | None = None, artifact: str | Path | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.funnel = funnel if funnel is not None else Funnel.load(artifact)  # type: ignore[arg-type]
        yield

    app = FastAPI(title="funnelrec", version="0.1.0", lifespan=lifespan, default_response_class=ORJSONResponse)

    @app.exception_handler(FunnelrecError)
    async def domain_error(_: Request, exc: FunnelrecError) -> Response:
        return ORJSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/recommend")
    def recommend(request: Request, user_id: str = Query(..., min_length=1, max_length=128),
                  k: int = Query(10, ge=1, le=MAX_K)) -> dict[str, Any]:
        f: Funnel = request.app.state.funnel
        rec = f.recommend(user_id=user_id, k=k)
        return answer(f, rec, user_id)

    return app
