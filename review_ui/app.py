"""The review web app (``idu serve`` runs it with uvicorn; ``create_app(store)`` in tests).

Pages (Jinja2 templates, HTMX for the parts that refresh; every asset under /static, no CDN):

    /login  /logout                               sign in / out (session cookie, CSRF-protected forms)
    /                                             the queue: pending reviews oldest first, counts per scene,
                                                  live status of running updates
    /reviews/{run}/{key}                          one change: crops, before/after per photo, the asset
                                                  composited, a 3D view with a gizmo, the decision form
    /runs/{run}                                   one run's status (refreshes itself)
    /scenes  /scenes/{name}                       scenes; a scene's versions with thumbnails, decisions
                                                  (who, when, what, comment) and rollback
    /scenes/{name}/update                         upload photos and start an update (operators)

JSON API (same session and CSRF rules; ``X-CSRF-Token`` header on POST, the token from /api/session):

    GET  /api/health   /api/session   /api/reviews   /api/runs   /api/runs/{run}
    POST /api/runs/{run}/reviews/{key}            a decision (flows.update_scene.ReviewDecision as JSON;
                                                  ``reviewer`` is the signed-in user)

Files: /media/{run}/{key}/{photo}/{after|before|composite|crop}.jpg, /media/{run}/{key}/asset-sides.jpg,
/viewer/{run}/{key}/splats.bin,
/scenes/{name}/v{n}/{before|after}.jpg, /files/{run}/{change}/crop (report thumbnails).

Everything but /login, /api/health and /static refuses anonymous requests (pages redirect to /login, the
rest answers 401). Viewers look; reviewers decide; operators also start updates and roll back. Refusals
from the Prefect server (invalid decision, already decided, timed out) come back as 409/422 with the
server's reason and are shown on the page.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from reconstruction.errors import IDUError
from review_ui import media, service
from review_ui.auth import COOKIE, LOGIN_COOKIE, Sessions, cookie_args, csrf_ok
from review_ui.users import User, UserStore

log = logging.getLogger("idu.review")
HERE = Path(__file__).parent
PUBLIC = {"/login", "/api/health"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ACTIONS = ("approve", "reject", "relabel", "adjust", "regenerate")
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class NotSignedIn(Exception):
    pass


def _labels() -> tuple[str, ...]:
    from flows.update_scene import LABELS

    return tuple(LABELS)


class _TTLCache:
    """Reads of the Prefect server shared by concurrent reviewers for ``ttl`` seconds (decisions are
    never cached: they go to the server, which decides what is accepted)."""

    def __init__(self, ttl: float):
        self.ttl, self._data, self._lock = ttl, {}, threading.Lock()

    def get(self, key, fn):
        now = time.monotonic()
        with self._lock:
            hit = self._data.get(key)
            if hit and now - hit[0] < self.ttl:
                return hit[1]
        value = fn()
        with self._lock:
            self._data[key] = (time.monotonic(), value)
        return value

    def clear(self):
        with self._lock:
            self._data.clear()


def euler_to_quat(rx: float, ry: float, rz: float) -> list[float]:
    """wxyz of R = Rz(rz) Ry(ry) Rx(rx), angles in degrees (the page's rotation fields and gizmo)."""
    from reconstruction.cameras import quat_multiply

    def axis(i: int, deg: float):
        q = [math.cos(math.radians(deg) / 2), 0.0, 0.0, 0.0]
        q[1 + i] = math.sin(math.radians(deg) / 2)
        return q

    q = quat_multiply(axis(2, rz), quat_multiply(axis(1, ry), axis(0, rx)))
    return [float(v) for v in q]


def _float(form, name: str, default: float) -> float:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise HTTPException(422, f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(v):
        raise HTTPException(422, f"{name}: {raw!r} is not a finite number")
    return v


def decision_from_form(form, reviewer: str) -> dict[str, Any]:
    """The ReviewDecision a decision form asks for (translation/rotation/scale only when changed)."""
    d: dict[str, Any] = {"action": str(form.get("action") or ""), "reviewer": reviewer}
    d["comment"] = str(form.get("comment") or "")
    if form.get("label"):
        d["label"] = str(form.get("label"))
    t = [_float(form, k, 0.0) for k in ("dx", "dy", "dz")]
    if any(t):
        d["translation"] = t
    r = [_float(form, k, 0.0) for k in ("rx", "ry", "rz")]
    if any(r):
        d["rotation_wxyz"] = euler_to_quat(*r)
    s = _float(form, "scale", 1.0)
    if s != 1.0:
        d["scale"] = s
    return d


def _ago(iso: str | None) -> str:
    if not iso:
        return ""
    t = _dt.datetime.fromisoformat(iso)
    s = (_dt.datetime.now(_dt.UTC) - t).total_seconds()
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{int(s // n)} {unit} ago"
    return "just now"


def create_app(store: str | os.PathLike | None = None) -> FastAPI:
    """The app for the scene store ``store`` (default: $IDU_STORE, else the current folder)."""
    store = Path(store or os.environ.get("IDU_STORE") or ".").resolve()
    if not log.handlers:  # the audit trail (sign-ins, decisions, rollbacks) on stderr: the service's log
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    users = UserStore(store)
    sessions = Sessions(users)
    reads = _TTLCache(1.0)
    proposals: dict[tuple[str, str], dict[str, Any]] = {}

    async def guard(request: Request) -> None:
        """Every route: a signed-in user; every state-changing request: the session's CSRF token."""
        if request.url.path in PUBLIC:
            return
        got = sessions.get(request.cookies.get(COOKIE))
        if got is None:
            raise NotSignedIn()
        request.state.user, request.state.session = got
        if request.method in SAFE_METHODS:
            return
        supplied = request.headers.get("x-csrf-token")
        if supplied is None and "form" in request.headers.get("content-type", ""):
            supplied = (await request.form()).get("csrf_token")
        if not csrf_ok(request.state.session, supplied):
            raise HTTPException(403, "missing or wrong CSRF token (reload the page)")

    app = FastAPI(title="IDU review", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(guard)])  # fmt: skip
    app.state.store, app.state.users, app.state.sessions = store, users, sessions
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["ago"] = _ago
    templates.env.filters["q"] = lambda s: quote(str(s), safe="")

    def wants_json(request: Request) -> bool:
        p = request.url.path
        return p.startswith(("/api/", "/files/", "/media/", "/viewer/")) or p.endswith((".jpg", ".bin"))

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if "text/html" in response.headers.get("content-type", ""):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn):
        if wants_json(request) or request.headers.get("hx-request"):
            return JSONResponse({"detail": "sign in first"}, 401, headers={"HX-Redirect": "/login"})
        return RedirectResponse(f"/login?next={quote(request.url.path)}", 303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if wants_json(request):
            return JSONResponse({"detail": exc.detail}, exc.status_code)
        if request.headers.get("hx-request"):
            return templates.TemplateResponse(
                request, "_message.html", {"error": exc.detail}, exc.status_code
            )
        return page(request, "error.html", {"status": exc.status_code, "error": exc.detail}, exc.status_code)

    def page(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
        user = getattr(request.state, "user", None)
        sess = getattr(request.state, "session", None)
        base = {"user": user, "csrf": sess.csrf if sess else "", "labels": _labels(), "actions": ACTIONS}
        return templates.TemplateResponse(request, name, {**base, **ctx}, status)

    def need(request: Request, role: str) -> User:
        user: User = request.state.user
        if not user.can(role):
            raise HTTPException(403, f"{user.name} is a {user.role}; this needs the {role} role")
        return user

    def pending() -> list[dict[str, Any]]:
        return reads.get("pending", service.pending_reviews)

    def pending_per_scene() -> dict[str, int]:
        return dict(Counter(Path(r["scene"] or "?").name for r in pending()))

    def get_proposal(run_id: str, key: str) -> dict[str, Any]:
        k = (run_id, key)
        if k not in proposals:
            try:
                proposals[k] = service.proposal(run_id, key)
            except service.ReviewError as e:
                raise HTTPException(404, str(e)) from None
        return proposals[k]

    def scene_of(name: str):
        from reconstruction.store import SceneStore

        try:
            scene = SceneStore(store).scene(name)
            scene.current_version()
        except IDUError as e:
            raise HTTPException(404, str(e)) from None
        return scene

    def decide(run_id: str, key: str, decision: dict[str, Any]) -> dict[str, Any]:
        try:
            out = service.decide(run_id, key, decision)
        except service.ReviewError as e:
            raise HTTPException(422 if isinstance(e, service.DecisionRefused) else 409, str(e)) from None
        reads.clear()
        log.info("%s decided %s on %s of run %s", decision["reviewer"], decision["action"], key, run_id)
        return out

    # -- sign in / out ----------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/", error: str | None = None):
        token = sessions.login_token()
        r = page(request, "login.html", {"login_token": token, "next": next, "error": error})
        r.set_cookie(LOGIN_COOKIE, token, max_age=3600, **cookie_args())
        return r

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        name, password = str(form.get("username") or ""), str(form.get("password") or "")
        nxt = str(form.get("next") or "/")
        if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:  # only paths of this app
            nxt = "/"
        if not sessions.check_login_token(
            request.cookies.get(LOGIN_COOKIE), str(form.get("login_token") or "")
        ):
            return login_form(request, nxt, "The form expired; please sign in again.")
        if sessions.locked_out(name):
            return login_form(request, nxt, "Too many failed attempts; wait a minute.")
        user = users.verify(name, password)
        if user is None:
            sessions.failed(name)
            log.warning("failed sign-in for %r from %s", name, request.client.host if request.client else "?")
            r = login_form(request, nxt, "Wrong user name or password.")
            r.status_code = 401
            return r
        sessions.succeeded(name)
        token, _ = sessions.create(user)
        log.info("%s signed in", user.name)
        r = RedirectResponse(nxt, 303)
        r.set_cookie(COOKIE, token, **cookie_args())
        r.delete_cookie(LOGIN_COOKIE, path="/")
        return r

    @app.post("/logout")
    def logout(request: Request):
        sessions.end(request.cookies.get(COOKIE))
        r = RedirectResponse("/login", 303)
        r.delete_cookie(COOKIE, path="/")
        return r

    # -- the queue --------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def queue(request: Request):
        return page(request, "queue.html", {"items": pending(), "counts": pending_per_scene()})

    @app.get("/partials/runs", response_class=HTMLResponse)
    def runs_partial(request: Request):
        runs = reads.get("runs", lambda: service.recent_runs(limit=25))
        return page(request, "_runs.html", {"runs": runs})

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str):
        return page(request, "run.html", {"run": _run(run_id)})

    @app.get("/partials/runs/{run_id}", response_class=HTMLResponse)
    def run_partial(request: Request, run_id: str):
        return page(request, "_run.html", {"run": _run(run_id)})

    def _run(run_id: str) -> dict[str, Any]:
        try:
            return service.run_info(run_id)
        except service.ReviewError as e:
            raise HTTPException(404, str(e)) from None

    # -- one change -------------------------------------------------------------------------------
    @app.get("/reviews/next")
    def next_review(request: Request):
        items = [r for r in pending() if not r["expired"]]
        if not items:
            return RedirectResponse("/", 303)
        return RedirectResponse(f"/reviews/{items[0]['run_id']}/{quote(items[0]['key'])}", 303)

    @app.get("/reviews/{run_id}/{key}", response_class=HTMLResponse)
    def change_page(request: Request, run_id: str, key: str):
        p = get_proposal(run_id, key)
        waiting = next((r for r in pending() if r["run_id"] == run_id and r["key"] == key), None)
        return page(
            request,
            "change.html",
            {"p": p, "c": p["change"], "run_id": run_id, "key": key, "photos": media.photos_of(p),
             "waiting": waiting, "scene_name": Path(p["scene"]).name},
        )  # fmt: skip

    @app.post("/reviews/{run_id}/{key}", response_class=HTMLResponse)
    async def change_decide(request: Request, run_id: str, key: str):
        user = need(request, "reviewer")
        await run_in_threadpool(get_proposal, run_id, key)  # the Prefect client blocks: not on the loop
        decision = decision_from_form(await request.form(), user.name)
        if decision["action"] not in ACTIONS:
            raise HTTPException(422, f"action {decision['action']!r} is not one of {', '.join(ACTIONS)}")
        await run_in_threadpool(decide, run_id, key, decision)
        return page(request, "_decided.html", {"decision": decision, "run_id": run_id, "key": key})

    @app.get("/media/{run_id}/{key}/asset-sides.jpg")
    def asset_sides(run_id: str, key: str):
        p = get_proposal(run_id, key)
        try:
            return FileResponse(media.asset_preview(p), media_type="image/jpeg")
        except (media.MediaError, FileNotFoundError) as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/media/{run_id}/{key}/{photo}/{kind}.jpg")
    def change_media(run_id: str, key: str, photo: str, kind: str):
        p = get_proposal(run_id, key)
        try:
            return FileResponse(media.change_picture(p, key, photo, kind), media_type="image/jpeg")
        except (media.MediaError, FileNotFoundError) as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/viewer/{run_id}/{key}/splats.bin")
    def viewer_data(run_id: str, key: str):
        p = get_proposal(run_id, key)
        return Response(media.viewer_splats(p), media_type="application/octet-stream",
                        headers={"Cache-Control": "private, max-age=3600"})  # fmt: skip

    @app.get("/files/{run_id}/{change_id}/crop")
    def crop(run_id: str, change_id: str):
        try:
            f = service.crop_path(run_id, change_id)
        except service.ReviewError as e:
            raise HTTPException(404, str(e)) from None
        if f is None:
            raise HTTPException(404, "no such crop")
        return FileResponse(f)

    # -- scenes -----------------------------------------------------------------------------------
    @app.get("/scenes", response_class=HTMLResponse)
    def scenes_page(request: Request):
        from reconstruction.store import SceneStore

        counts = pending_per_scene()
        rows = []
        for name in SceneStore(store).scenes():
            sc = SceneStore(store).scene(name)
            rows.append({"name": name, "current": sc.current_version(), "versions": len(sc.version_numbers()),
                         "pending": counts.get(name, 0)})  # fmt: skip
        return page(request, "scenes.html", {"scenes": rows})

    @app.get("/scenes/{name}", response_class=HTMLResponse)
    def scene_page(request: Request, name: str):
        scene = scene_of(name)
        current = scene.current_version()
        versions = []
        for n in reversed(scene.version_numbers()):
            m = scene.version(n).meta
            versions.append({**m, "version": n, "current": n == current})
        events = [e for e in scene.log() if e.get("event") in ("rollback", "set_current")]
        return page(request, "scene.html", {"name": name, "versions": versions, "current": current,
                                            "events": list(reversed(events))[:20]})  # fmt: skip

    @app.get("/scenes/{name}/v{number}/{side}.jpg")
    def thumbnail(name: str, number: int, side: str):
        scene = scene_of(name)
        if number not in scene.version_numbers():
            raise HTTPException(404, f"{name}: no version {number}")
        try:
            return FileResponse(media.version_thumbnail(store, name, number, side), media_type="image/jpeg")
        except media.MediaError as e:
            raise HTTPException(404, str(e)) from None

    @app.post("/scenes/{name}/rollback")
    async def rollback(request: Request, name: str):
        from reconstruction.store import SceneLockedError

        user = need(request, "operator")
        scene = scene_of(name)
        form = await request.form()
        try:
            to = int(str(form.get("to")))
        except ValueError:
            raise HTTPException(422, f"to: {form.get('to')!r} is not a version number") from None
        if to not in scene.version_numbers():
            raise HTTPException(422, f"{name}: no version {to}")
        try:
            scene.rollback(to, reason=f"rollback by {user.name} (review UI)")
        except SceneLockedError as e:
            raise HTTPException(409, str(e)) from None
        log.info("%s rolled %s back to version %d", user.name, name, to)
        return RedirectResponse(f"/scenes/{quote(name)}", 303)

    @app.get("/scenes/{name}/update", response_class=HTMLResponse)
    def update_form(request: Request, name: str):
        need(request, "operator")
        scene_of(name)
        return page(request, "update.html", {"name": name})

    @app.post("/scenes/{name}/update")
    async def update_start(request: Request, name: str):
        from flows import runs
        from flows.update_scene import UpdateOptions

        user = need(request, "operator")
        scene = scene_of(name)
        form = await request.form()
        files = [f for f in form.getlist("photos") if getattr(f, "filename", None)]
        if not files:
            raise HTTPException(422, "choose at least one photo")
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
        folder = store / ".review" / "uploads" / name / f"{stamp}-{secrets.token_hex(4)}"
        folder.mkdir(parents=True)
        for f in files:
            fname = Path(f.filename).name
            if not re.fullmatch(r"[^/\\\x00]{1,200}", fname) or fname.startswith("."):
                raise HTTPException(422, f"{f.filename!r}: not a usable file name")
            (folder / fname).write_bytes(await f.read())
        options = UpdateOptions(auto_approve=bool(form.get("auto_approve")),
                                review_url=str(request.base_url).rstrip("/"))  # fmt: skip
        try:
            params = {"scene": scene.ref, "images": str(folder), "options": options.model_dump()}
            # Prefect's run_deployment is a coroutine inside an event loop: call it from a worker thread
            run = await run_in_threadpool(runs.start, "update-scene", params)
        except IDUError as e:
            raise HTTPException(503, str(e)) from None
        log.info("%s started update %s of %s with %d photo(s)", user.name, run.name, name, len(files))
        reads.clear()
        return RedirectResponse(f"/runs/{run.id}", 303)

    # -- JSON API ---------------------------------------------------------------------------------
    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/session")
    def api_session(request: Request) -> dict[str, str]:
        u = request.state.user
        return {"user": u.name, "role": u.role, "csrf": request.state.session.csrf}

    @app.get("/api/reviews")
    def api_reviews() -> list[dict[str, Any]]:
        return pending()

    @app.get("/api/runs")
    def api_runs() -> list[dict[str, Any]]:
        return reads.get("runs50", service.recent_runs)

    @app.get("/api/runs/{run_id}")
    def api_run(run_id: str) -> dict[str, Any]:
        return _run(run_id)

    @app.post("/api/runs/{run_id}/reviews/{key}")
    async def api_decide(request: Request, run_id: str, key: str) -> dict[str, Any]:
        user = need(request, "reviewer")
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(422, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(422, "the body must be a JSON object (a ReviewDecision)")
        return await run_in_threadpool(decide, run_id, key, {**body, "reviewer": user.name})

    return app


app = create_app()

__all__ = ["app", "create_app", "decision_from_form", "euler_to_quat"]
