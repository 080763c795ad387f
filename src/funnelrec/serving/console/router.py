"""The console's routes under /console: server-rendered pages (Jinja2) with htmx for the live
parts (the history panel polls; feedback buttons post and swap in the answer). No front-end build,
no CDN: htmx.min.js and the CSS are package data served from /console/static/.

    GET  /console                       → the User page
    GET  /console/user?user_id=&k=      profile, live history, one request's funnel stage by stage
    GET  /console/user/history?user_id= the history panel alone (htmx polls it)
    POST /console/user/feedback         form: user_id, request_id, item_id, type[, value] → svc.feedback
    GET  /console/item?item_id=         attributes, neighbours per channel, counters
    GET  /console/experiments           layers, allocations, ramps, metrics from the event log
    GET  /console/serving               served version, reloads, latency histograms, QPS, errors, learner
    GET  /console/serving/live          the live part of that page (htmx polls it)
    GET  /console/reports               the last offline evaluation, ROC / calibration PNGs
    GET|POST /console/login             the admin-token form (when the server has a token)

Access: when the app has an admin token, every page needs it — as the X-Admin-Token header or
the console cookie the login form sets (an HMAC of the token, HttpOnly, SameSite=Strict, path
/console; the token itself is never stored in the browser). The User page shows a user's
exposure history (a debug answer), which the API also keeps behind the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from funnelrec.core.errors import DataError, FunnelrecError
from funnelrec.pipeline.eventlog import EVENT_TYPES
from funnelrec.serving.console import svg, views

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
COOKIE = "funnelrec_console"
#: where the Offline reports page looks (`funnelrec evaluate funnel --json > reports/funnel.json`,
#: `evaluate ctr --plot` PNGs); $FUNNELREC_REPORTS_DIR overrides
REPORTS_ENV = "FUNNELREC_REPORTS_DIR"
FEEDBACK_TYPES = [t for t in EVENT_TYPES if t not in ("follow", "unfollow")]


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals["svg"] = svg
    env.filters["num"] = _num
    env.filters["pct"] = lambda x: "–" if x is None else f"{x * 100:+.2f}%"
    env.filters["pval"] = lambda p: "–" if p is None or p != p else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")
    env.filters["q"] = lambda s: quote(str(s), safe="")
    return env


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "–"
        return f"{x:.{digits}g}"
    return str(x)


def console_router(admin_token: str | None = None, http: Any = None, reports_dir: str | Path | None = None
                   ) -> APIRouter:
    """The /console routes. `admin_token`: the app's (None = open console); `http`: the app's
    `HttpMetrics` (the Models page parses its /metrics text); `reports_dir`: the Offline reports
    page's folder (default $FUNNELREC_REPORTS_DIR, else ./reports)."""
    from funnelrec.serving import metrics as prom

    router = APIRouter(prefix="/console", include_in_schema=False)
    env = _env()
    meter = views.RateMeter()
    seal = None if admin_token is None else hmac.new(admin_token.encode(), b"funnelrec-console", hashlib.sha256).hexdigest()

    def allowed(request: Request) -> bool:
        if admin_token is None:
            return True
        header = request.headers.get("x-admin-token")
        if header is not None and hmac.compare_digest(header.encode(), admin_token.encode()):
            return True
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), seal.encode())  # type: ignore[union-attr]

    def page(name: str, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("active", name.split(".")[0])
        ctx["secured"] = admin_token is not None
        return HTMLResponse(env.get_template(name).render(request=request, **ctx), status_code=status)

    def gate(request: Request) -> Response | None:
        if allowed(request):
            return None
        if request.headers.get("hx-request"):  # a fragment: tell htmx to go to the login page
            return Response(status_code=403, headers={"HX-Redirect": "/console/login"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/console/login?next={quote(target)}", status_code=303)

    async def form(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def svc_of(request: Request) -> Any:
        return request.app.state.service

    # ------------------------------------------------------------------ static + login
    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    @router.get("/login")
    async def login_form(request: Request, next: str = "/console") -> Response:
        return page("login.html", request, next=next if next.startswith("/console") else "/console", error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        f = await form(request)
        nxt = f.get("next", "/console")
        nxt = nxt if nxt.startswith("/console") and "//" not in nxt else "/console"
        token = f.get("token", "")
        if admin_token is None:
            return RedirectResponse(nxt, status_code=303)
        if not hmac.compare_digest(token.encode(), admin_token.encode()):
            return page("login.html", request, status=403, next=nxt, error="wrong admin token")
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, seal, httponly=True, samesite="strict", path="/console")  # type: ignore[arg-type]
        return resp

    @router.post("/logout")
    async def logout() -> Response:
        resp = RedirectResponse("/console/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/console")
        return resp

    # ------------------------------------------------------------------ user
    @router.get("")
    @router.get("/")
    async def home(request: Request) -> Response:
        return gate(request) or RedirectResponse("/console/user", status_code=303)

    @router.get("/user")
    async def user(request: Request, user_id: str | None = Query(None, max_length=128),
                   k: int = Query(10, ge=1, le=100)) -> Response:
        if (g := gate(request)) is not None:
            return g
        svc = svc_of(request)
        if not user_id:
            sample = svc.current.funnel.dataset_.users["user_id"].head(8).to_list()
            return page("user.html", request, user=None, sample=[str(s) for s in sample], k=k)
        try:
            funnel = views.funnel_view(svc, user_id, k)
        except FunnelrecError as e:
            return page("user.html", request, status=400, user=None, sample=[], k=k, error=str(e))
        return page("user.html", request, user=views.user_profile(svc, user_id), funnel=funnel,
                    history=views.live_history(svc, user_id), k=k, types=FEEDBACK_TYPES)

    @router.get("/user/history")
    async def user_history(request: Request, user_id: str = Query(..., min_length=1, max_length=128)) -> Response:
        if (g := gate(request)) is not None:
            return g
        return page("_history.html", request, history=views.live_history(svc_of(request), user_id),
                    user_id=user_id)

    @router.post("/user/feedback")
    async def user_feedback(request: Request) -> Response:
        if (g := gate(request)) is not None:
            return g
        f = await form(request)
        uid, item, kind = f.get("user_id", ""), f.get("item_id", ""), f.get("type", "")
        if not uid or not item or kind not in FEEDBACK_TYPES:
            return page("_feedback.html", request, status=422, ok=False,
                        message=f"feedback needs user_id, item_id and a type in {', '.join(FEEDBACK_TYPES)}")
        try:
            value = float(f.get("value") or 1.0)
        except ValueError:
            return page("_feedback.html", request, status=422, ok=False, message=f"value {f.get('value')!r} is not a number")
        svc = svc_of(request)
        event = {"item_id": item, "type": kind, "value": value}
        loop = asyncio.get_running_loop()
        try:  # the same call /feedback makes, on the app's I/O pool (an fsync per call)
            got = await loop.run_in_executor(request.app.state.io_pool, svc.feedback, f.get("request_id") or None,
                                             uid, [event])
        except DataError as e:
            return page("_feedback.html", request, status=422, ok=False, message=str(e))
        return page("_feedback.html", request, ok=True, message=f"logged {got['logged']} {kind} on item {item}"
                    + (" (a repeat: not counted again)" if got.get("duplicates") else ""))

    # ------------------------------------------------------------------ item
    @router.get("/item")
    async def item(request: Request, item_id: str | None = Query(None, max_length=128),
                   k: int = Query(10, ge=1, le=100)) -> Response:
        if (g := gate(request)) is not None:
            return g
        svc = svc_of(request)
        if not item_id:
            sample = svc.current.funnel.dataset_.items["item_id"].head(8).to_list()
            return page("item.html", request, view=None, sample=[str(s) for s in sample], k=k)
        view = views.item_view(svc, item_id, k)
        if view is None:
            return page("item.html", request, status=404, view=None, sample=[], k=k,
                        error=f"item_id {item_id!r} is not in the catalogue")
        return page("item.html", request, view=view, k=k)

    # ------------------------------------------------------------------ experiments
    @router.get("/experiments")
    async def experiments(request: Request) -> Response:
        if (g := gate(request)) is not None:
            return g
        # reads the whole event log (SQLite): on the I/O pool, the event loop keeps serving
        view = await asyncio.get_running_loop().run_in_executor(request.app.state.io_pool, views.experiments_view,
                                                                svc_of(request))
        return page("experiments.html", request, view=view)

    # ------------------------------------------------------------------ models & serving
    def serving_ctx(request: Request) -> dict[str, Any]:
        text = prom.render(http).decode() if http is not None else ""
        return {"view": views.serving_view(svc_of(request), text, meter)}

    @router.get("/serving")
    async def serving(request: Request) -> Response:
        if (g := gate(request)) is not None:
            return g
        return page("serving.html", request, **serving_ctx(request))

    @router.get("/serving/live")
    async def serving_live(request: Request) -> Response:
        if (g := gate(request)) is not None:
            return g
        return page("_serving_live.html", request, **serving_ctx(request))

    # ------------------------------------------------------------------ offline reports
    def reports_path() -> Path:
        return Path(reports_dir or os.environ.get(REPORTS_ENV) or "reports")

    @router.get("/reports")
    async def reports(request: Request) -> Response:
        if (g := gate(request)) is not None:
            return g
        return page("reports.html", request, view=views.reports_view(reports_path()))

    @router.get("/reports/file/{name}")
    async def report_file(request: Request, name: str) -> Response:
        if (g := gate(request)) is not None:
            return g
        root = reports_path().resolve()
        path = (root / name).resolve()
        if "/" in name or name.startswith(".") or path.parent != root or path.suffix.lower() != ".png" \
                or not path.is_file():
            return Response(f"no report image {name!r}", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type="image/png")

    return router
