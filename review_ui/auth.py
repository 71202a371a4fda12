"""Sessions, CSRF tokens and login throttling for the review app.

A session is a random token in an HttpOnly, SameSite=Strict cookie (``Secure`` too when
``IDU_COOKIE_SECURE=1``, i.e. behind TLS) that maps, in this process, to the user, their role and a
CSRF token. Every state-changing request (POST) must carry that CSRF token, as the form field
``csrf_token`` or the header ``X-CSRF-Token`` (HTMX sends it from the page). The login form, before there
is a session, is protected the same way by a short-lived pre-session token in its own cookie.

Sessions end on logout, after ``IDLE`` seconds without a request, and when the process restarts; a user
removed or demoted with ``idu users`` is re-read on every request, so the change applies at once.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field

from review_ui.users import User, UserStore

COOKIE = "idu_session"
LOGIN_COOKIE = "idu_login"
IDLE = 12 * 3600
MAX_FAILURES = 5  # failed logins per name within FAILURE_WINDOW before that name is locked for LOCKOUT
FAILURE_WINDOW = 300
LOCKOUT = 60


def cookie_args() -> dict:
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": os.environ.get("IDU_COOKIE_SECURE") == "1",
        "path": "/",
    }


@dataclass
class Session:
    user: str
    csrf: str
    seen: float = field(default_factory=time.monotonic)


class Sessions:
    def __init__(self, users: UserStore):
        self.users = users
        self._sessions: dict[str, Session] = {}
        self._login_tokens: dict[str, float] = {}
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    # -- sessions ---------------------------------------------------------------------------------
    def create(self, user: User) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        s = Session(user.name, secrets.token_urlsafe(32))
        with self._lock:
            self._sessions[token] = s
        return token, s

    def get(self, token: str | None) -> tuple[User, Session] | None:
        """The user and session of a cookie value, or None (no session, expired, user removed)."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._sessions.get(token)
            if s is None:
                return None
            if now - s.seen > IDLE:
                del self._sessions[token]
                return None
            s.seen = now
        user = self.users.get(s.user)
        if user is None:
            self.end(token)
            return None
        return user, s

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    # -- the login form ---------------------------------------------------------------------------
    def login_token(self) -> str:
        t = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            self._login_tokens = {k: v for k, v in self._login_tokens.items() if now - v < 3600}
            self._login_tokens[t] = now
        return t

    def check_login_token(self, cookie: str | None, form: str | None) -> bool:
        if not cookie or not form or not secrets.compare_digest(cookie, form):
            return False
        with self._lock:
            return self._login_tokens.pop(cookie, None) is not None

    def locked_out(self, name: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if now - t < FAILURE_WINDOW]
            self._failures[name] = recent
            return len(recent) >= MAX_FAILURES and now - recent[-1] < LOCKOUT

    def failed(self, name: str) -> None:
        with self._lock:
            self._failures.setdefault(name, []).append(time.monotonic())

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


def csrf_ok(session: Session, supplied: str | None) -> bool:
    return bool(supplied) and secrets.compare_digest(session.csrf, supplied)


__all__ = ["COOKIE", "LOGIN_COOKIE", "Session", "Sessions", "cookie_args", "csrf_ok"]
