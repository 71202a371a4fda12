"""A signed-in HTTP client of the review app, for scripts, benchmarks and tests.

with sign_in("http://127.0.0.1:8080", "ana", password) as c:
    for r in c.get("/api/reviews").json():
        c.post(f"/api/runs/{r['run_id']}/reviews/{r['key']}", json={"action": "approve"})
"""

from __future__ import annotations

import re

import httpx

from reconstruction.errors import IDUError


def sign_in(base: str, name: str, password: str, timeout: float = 120) -> httpx.Client:
    """An httpx client signed in as ``name`` through the login form, sending the session's CSRF token
    with every request. Raises IDUError when the sign-in is refused."""
    c = httpx.Client(base_url=base, timeout=timeout)
    form = re.search(r'name="login_token" value="([^"]+)"', c.get("/login").text)
    r = c.post(
        "/login", data={"username": name, "password": password, "login_token": form.group(1) if form else ""}
    )
    if r.status_code != 303:
        c.close()
        raise IDUError(f"{base}: sign-in of {name} refused (HTTP {r.status_code})")
    c.headers["X-CSRF-Token"] = c.get("/api/session").json()["csrf"]
    return c


__all__ = ["sign_in"]
