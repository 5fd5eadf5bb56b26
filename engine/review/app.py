"""The review page's web application (FastAPI on uvicorn; `pip install -e ".[review]"`).

Routes: `/` and `/static/<file>` (the page, its script and style, from this package: no asset
comes from anywhere else), `/image/<id>?size=thumb|screen|full` (a photo by its number in the run;
anything else is a 404: no path ever appears in a URL), `/matches/<pair>` (the pair's keypoint
correspondences, where the run had a matcher), and the JSON API under `/api/`.

Who may do what:
* An **access token** (`--token`, required off loopback) guards every route: the page's address
  carries it once (`/?token=...`), and the server answers with a cookie (HttpOnly,
  SameSite=Strict) that the page's later requests carry; an API client may send the header.
* Every change is a POST carrying the page's **session token** (`X-Review-Session`), which only a
  script of the page itself can read (from POST /api/session). A form on another site can neither
  read it nor send that header, so it cannot answer for a reviewer.
* Bad requests get a 4xx with a one-line JSON message; an unexpected error a 500 without its
  traceback (the server's log has it).
"""
from __future__ import annotations

import hmac
import logging
import secrets
from pathlib import Path
from typing import Any, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from engine.review.outputs import review_summary, write_reviewed
from engine.review.session import ReviewRefused, ReviewSession
from engine.review.views import SIZES, MatchDrawer, image_bytes, matches_bytes, pair_view

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"review.js": "text/javascript", "review.css": "text/css"}
COOKIE = "reidzoo_review"
SESSION_HEADER = "x-review-session"
TOKEN_HEADER = "x-review-token"
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                                      "frame-ancestors 'none'; form-action 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
log = logging.getLogger("reidzoo.review")


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Guard(BaseHTTPMiddleware):
    """The access token on every request, the security headers on every answer."""

    def __init__(self, app, token: Optional[str]):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        if self.token is not None:
            given = request.headers.get(TOKEN_HEADER) or request.cookies.get(COOKIE) or ""
            from_address = request.url.path == "/" and request.query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()) and not (
                    from_address and hmac.compare_digest(from_address.encode(), self.token.encode())):
                response = _error(401, "this review page needs its access token: open the address the server printed")
            else:
                response = await call_next(request)
                if from_address:
                    response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        else:
            response = await call_next(request)
        for key, value in HEADERS.items():
            response.headers.setdefault(key, value)
        return response


def create_app(session: ReviewSession, token: Optional[str] = None, reviewed_dir: Optional[Path] = None) -> FastAPI:
    """The application serving `session`; `token`: the access token (None: loopback without one)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, token=token)
    clients: Dict[str, str] = {}  # session token -> reviewer name ('' until given)
    drawer = MatchDrawer(session.run)
    reviewed_dir = reviewed_dir or session.run.folder / "reviewed"

    @app.exception_handler(Refused)
    async def refused(request, err: Refused):
        return _error(err.status, str(err))

    @app.exception_handler(ReviewRefused)
    async def review_refused(request, err: ReviewRefused):
        return _error(err.status, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        return _error(err.status_code, "not found" if err.status_code == 404 else str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, err: RequestValidationError):
        return _error(400, "bad request: " + "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}"
                                                       for e in err.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request, err: Exception):
        log.exception("review server error")
        return _error(500, f"the server failed on this request ({type(err).__name__}); its log says more")

    async def body(request: Request) -> Dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise Refused(415, "send JSON (Content-Type: application/json)")
        try:
            found = await request.json()
        except ValueError:
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(found, dict):
            raise Refused(400, "the body must be a JSON object")
        return found

    def client(request: Request) -> str:
        given = request.headers.get(SESSION_HEADER, "")
        if given not in clients:
            raise Refused(403, "this page's session is unknown: reload the page")
        return given

    def reviewer(token: str) -> str:
        name = clients[token]
        if not name:
            raise Refused(400, "give your name first")
        return name

    def shown(pair: Optional[int]) -> Dict[str, Any]:
        return {"pair": None if pair is None else pair_view(session, pair, drawer.available), "progress": session.progress()}

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def asset(name: str):
        if name not in ASSETS:
            raise Refused(404, "not found")
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    @app.get("/image/{image}")
    def image(image: str, size: str = "screen"):
        if not image.isdigit() or int(image) >= len(session.run.images) or size not in SIZES:
            raise Refused(404, "not found")
        return Response(image_bytes(session, int(image), size), media_type="image/jpeg")

    @app.get("/matches/{pair}")
    def matches(pair: str):
        if not drawer.available or not pair.isdigit() or int(pair) >= len(session.run.data.pair_a):
            raise Refused(404, "not found")
        return Response(matches_bytes(drawer, session, int(pair)), media_type="image/jpeg")

    @app.post("/api/session")
    async def new_session():
        token = secrets.token_urlsafe(24)
        clients[token] = ""
        run = session.run
        return {"session": token, "task": run.task, "run": run.folder.name, "datasets": session.datasets(),
                "selector": session.options.selector}

    @app.post("/api/reviewer")
    async def set_reviewer(request: Request):
        token = client(request)
        name = str((await body(request)).get("name", "")).strip()
        if not name or len(name) > 80:
            raise Refused(400, "a reviewer name of 1 to 80 characters, please")
        clients[token] = name
        return {"reviewer": name}

    @app.post("/api/next")
    def next_pair(request: Request):
        token = client(request)
        reviewer(token)
        return shown(session.next_pair(token))

    @app.post("/api/answer")
    async def answer(request: Request):
        token = client(request)
        name = reviewer(token)
        found = await body(request)
        pair, verdict, keep = found.get("pair"), found.get("answer"), found.get("keep")
        if not isinstance(pair, int) or isinstance(pair, bool) or not isinstance(verdict, str):
            raise Refused(400, "an answer names its pair (a number) and its answer (same, different, not_sure, skip)")
        return await run_in_threadpool(answered, token, name, pair, verdict, keep)

    def answered(token: str, name: str, pair: int, verdict: str, keep: Optional[str]):
        outcome = session.answer(token, name, pair, verdict, keep)
        if outcome.conflict is not None:
            return JSONResponse({"conflict": outcome.conflict.to_dict(), "pair": pair_view(session, pair, drawer.available)}, status_code=409)
        return {"stored": outcome.answer_id, "refit": outcome.refit, **shown(session.next_pair(token))}

    @app.post("/api/undo")
    def undo(request: Request):
        token = client(request)
        pair = session.undo(reviewer(token))
        if pair is not None and not session.lease(token, pair):
            pair = session.next_pair(token)
        return shown(pair if pair is not None else session.next_pair(token))

    @app.get("/api/progress")
    def progress():
        return session.progress()

    @app.post("/api/apply")
    def apply(request: Request):
        client(request)
        folder = write_reviewed(reviewed_dir, session.run, session.decide(), review_summary(session))
        return {"folder": str(folder)}

    return app

