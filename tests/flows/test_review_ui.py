"""The review web app as `idu serve` runs it (uvicorn subprocess, real Prefect server, real update runs):
security over HTTP, then a reviewer in Debian's Chromium (Playwright) approving one change with an
adjusted placement and rejecting another. Screenshots go to $IDU_TEST_ARTIFACTS (default test-artifacts/)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import httpx
import pytest

from tests.flows.conftest import (
    copy_scene,
    final,
    read_run,
    settle,
    signed_in,
    suspended,
    update_photos,
    wait_for,
)

PASSWORDS = {"rita": "rita-Secret-4821", "vic": "vic-Secret-9377", "olga": "olga-Secret-5150"}
ROLES = {"rita": "reviewer", "vic": "viewer", "olga": "operator"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def ui(idu_services):
    from review_ui.users import UserStore

    users = UserStore(idu_services.store)
    for name, role in ROLES.items():
        users.add(name, role, PASSWORDS[name], replace=True)
    return idu_services.ui_url


@pytest.fixture(scope="module")
def pending(idu_services, bench_world, tmp_path_factory):
    """Two update runs (two copies of the fixture scene), each suspended on its change c1."""
    from flows import runs
    from flows.update_scene import UpdateOptions

    world, scene = bench_world
    _cancel_paused_runs()  # the queue holds only this module's runs (other tests may leave one waiting)
    photos = update_photos(world, tmp_path_factory.mktemp("review-photos"))
    out = []
    for name in ("ui-first", "ui-second"):
        sc = copy_scene(scene, idu_services.store, name)
        opts = UpdateOptions(review_url=idu_services.ui_url, assets={"steps": 40}).model_dump()
        run = runs.start("update-scene", {"scene": sc.ref, "images": str(photos), "options": opts})
        out.append({"run_id": str(run.id), "scene": sc})
    for r in out:
        st = wait_for(r["run_id"], suspended(), timeout=400).state
        r["key"] = st.state_details.pause_key
    return out


def _cancel_paused_runs(keep: set[str] = frozenset()) -> None:
    """Cancel the suspended runs of the session's server other than ``keep``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.states import Cancelled

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        for r in client.read_flow_runs(flow_run_filter=paused, sort=FlowRunSort.START_TIME_ASC, limit=200):
            if str(r.id) not in keep:
                client.set_flow_run_state(r.id, Cancelled(), force=True)


def login(base: str, name: str) -> tuple[httpx.Client, str]:
    """A client signed in as ``name`` and its CSRF token (which the client does not send by itself)."""
    c = signed_in(base, name, PASSWORDS[name])
    return c, c.headers.pop("X-CSRF-Token")


def _routes(app, run_id: str, key: str) -> list[tuple[str, str]]:
    """Every route of the app with its path parameters filled in (method, path)."""
    fill = {"run_id": run_id, "key": key, "photo": "after_004.png", "kind": "after", "change_id": "c1",
            "name": "ui-first", "number": "1", "side": "after"}  # fmt: skip
    out = []
    for r in app.routes:
        if not hasattr(r, "methods") or r.path.startswith("/static"):
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], r.path)
        out += [(m, path) for m in r.methods if m != "HEAD"]
    return out


def test_every_route_refuses_anonymous_users(ui, pending):
    from review_ui.app import PUBLIC, create_app

    routes = _routes(create_app(), pending[0]["run_id"], pending[0]["key"])
    assert len(routes) >= 20
    with httpx.Client(base_url=ui, timeout=60) as c:
        for method, path in routes:
            r = c.request(method, path)
            if path in PUBLIC:
                continue
            assert r.status_code in (401, 303), f"{method} {path}: {r.status_code}"
            if r.status_code == 303:
                assert r.headers["location"].startswith("/login"), f"{method} {path}"
        assert c.get("/api/health").json() == {"status": "ok"}
    assert read_run(pending[0]["run_id"]).state.is_paused()


def test_a_viewer_looks_but_cannot_decide(ui, pending):
    run_id, key = pending[0]["run_id"], pending[0]["key"]
    c, csrf = login(ui, "vic")
    assert c.get("/").status_code == 200
    page = c.get(f"/reviews/{run_id}/{key}")
    assert page.status_code == 200 and "reviewers decide" in page.text and 'value="approve"' not in page.text
    r = c.post(f"/reviews/{run_id}/{key}", data={"action": "approve", "csrf_token": csrf})
    assert r.status_code == 403 and "needs the reviewer role" in r.text
    r = c.post(
        f"/api/runs/{run_id}/reviews/{key}", json={"action": "approve"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 403
    r = c.post("/scenes/ui-first/rollback", data={"to": "1", "csrf_token": csrf})
    assert r.status_code == 403 and "operator" in r.text
    assert read_run(run_id).state.is_paused()


def test_posts_without_the_csrf_token_are_refused(ui, pending):
    run_id, key = pending[0]["run_id"], pending[0]["key"]
    c, csrf = login(ui, "rita")
    for data, headers in (({"action": "approve"}, {}), ({"action": "approve", "csrf_token": "forged"}, {})):
        r = c.post(f"/reviews/{run_id}/{key}", data=data, headers=headers)
        assert r.status_code == 403 and "CSRF" in r.text
    r = c.post(f"/api/runs/{run_id}/reviews/{key}", json={"action": "approve"})
    assert r.status_code == 403
    r = c.post("/logout")  # even signing out needs the token
    assert r.status_code == 403 and c.get("/api/session").status_code == 200
    # the login form: a post without the form's token makes no session
    anon = httpx.Client(base_url=ui, timeout=60)
    r = anon.post("/login", data={"username": "rita", "password": PASSWORDS["rita"]})
    assert r.status_code == 200 and "expired" in r.text and "idu_session" not in r.cookies
    assert read_run(run_id).state.is_paused()


def test_image_and_asset_routes_refuse_path_traversal(ui, pending):
    run_id, key = pending[0]["run_id"], pending[0]["key"]
    c, _ = login(ui, "vic")
    good = c.get(f"/media/{run_id}/{key}/after_004.png/after.jpg")
    assert good.status_code == 200 and good.headers["content-type"] == "image/jpeg"
    bad = [
        f"/media/{run_id}/{key}/..%2F..%2Fregistration.json/after.jpg",
        f"/media/{run_id}/{key}/..%2F..%2F..%2F..%2Fusers.json/crop.jpg",
        f"/media/{run_id}/{key}/%2Fetc%2Fpasswd/before.jpg",
        f"/media/{run_id}/{key}/after_004.png/..%2F..%2Fetc%2Fpasswd.jpg",
        f"/media/{run_id}/..%2F..%2F{key}/after_004.png/after.jpg",
        "/scenes/..%2F.review/v1/after.jpg",
        "/scenes/..%2F..%2F..%2Fetc/v1/after.jpg",
        f"/files/{run_id}/..%2F..%2Fc1/crop",
        "/static/..%2Fapp.py",
        "/static/../users.py",
    ]
    for path in bad:
        r = c.get(path)
        assert r.status_code in (404, 422), f"{path}: {r.status_code}"
        assert b"argon2" not in r.content and b"root:" not in r.content and b"import" not in r.content


def test_a_decision_for_another_runs_change_is_refused(ui, pending):
    (a, b) = pending
    c, csrf = login(ui, "rita")
    h = {"X-CSRF-Token": csrf}
    r = c.post(f"/api/runs/{a['run_id']}/reviews/v9-c7-r0", json={"action": "approve"}, headers=h)
    assert r.status_code == 409 and "waits for a decision on" in r.json()["detail"]
    r = c.post(f"/api/runs/{uuid.uuid4()}/reviews/{b['key']}", json={"action": "approve"}, headers=h)
    assert r.status_code == 409 and "no such flow run" in r.json()["detail"]
    r = c.post(f"/api/runs/not-a-run/reviews/{b['key']}", json={"action": "approve"}, headers=h)
    assert r.status_code == 409 and "not a flow run id" in r.json()["detail"]
    r = c.post(f"/api/runs/{a['run_id']}/reviews/{a['key']}", json={"action": "approve", "scale": 1000},
               headers=h)  # fmt: skip
    assert r.status_code == 422 and "scale" in r.json()["detail"]
    for x in pending:
        assert read_run(x["run_id"]).state.is_paused()


def test_sign_in_is_throttled_and_passwords_are_never_logged(ui, idu_services):
    from flows.services import prefect_home

    c = httpx.Client(base_url=ui, timeout=60)
    codes = []
    for _ in range(6):
        token = re.search(r'name="login_token" value="([^"]+)"', c.get("/login").text).group(1)
        r = c.post("/login", data={"username": "mallory", "password": PASSWORDS["olga"],
                                   "login_token": token})  # fmt: skip
        codes.append(r.status_code)
    assert codes[:5] == [401] * 5 and "Too many" in r.text
    logs = "".join(p.read_text(errors="replace") for p in prefect_home(idu_services.store).glob("*.log"))
    assert "failed sign-in for 'mallory'" in logs  # the audit log is written ...
    for pw in PASSWORDS.values():  # ... without any password, right or wrong
        assert pw not in logs
    users = (Path(idu_services.store) / ".review" / "users.json").read_text()
    assert all(pw not in users for pw in PASSWORDS.values()) and "$argon2id$" in users


def _artifacts() -> Path:
    out = Path(os.environ.get("IDU_TEST_ARTIFACTS", "test-artifacts")) / "review_ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)"
)
def test_a_reviewer_adjusts_and_approves_one_change_and_rejects_another_in_chromium(ui, pending):
    import json

    from playwright.sync_api import expect, sync_playwright

    shots = _artifacts()
    _cancel_paused_runs(keep={r["run_id"] for r in pending})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        expected = ("status of 409", "Error Code 409")  # the refused second decision below

        def console(m):
            if m.type == "error" and not any(e in m.text for e in expected):
                errors.append(f"console: {m.text}")

        page.on("console", console)
        page.goto(ui + "/")
        expect(page).to_have_url(re.compile(r"/login"))
        page.fill("input[name=username]", "rita")
        page.fill("input[name=password]", PASSWORDS["rita"])
        page.click("button[type=submit]")
        expect(page.get_by_test_id("queue")).to_be_visible()
        for r in pending:
            expect(page.get_by_test_id("queue").locator(f"a[href^='/reviews/{r['run_id']}/']")).to_have_count(
                1
            )
        page.screenshot(path=shots / "1-queue.png", full_page=True)

        # the oldest pending change: the run that suspended first
        oldest = min(pending, key=lambda r: read_run(r["run_id"]).state.timestamp)
        first, second = oldest, next(r for r in pending if r is not oldest)
        base = first["scene"].version(1).meta
        page.get_by_test_id("oldest").click()
        expect(page).to_have_url(re.compile(f"/reviews/{first['run_id']}/"))
        viewer = page.locator("#viewer")
        expect(viewer).to_have_attribute("data-ready", "1", timeout=120_000)
        expect(page.get_by_test_id("asset")).to_contain_text("silhouette IoU")
        for img in page.locator("section.views img, section.asset img").all():
            img.scroll_into_view_if_needed()
            page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle())
        # the 3D view drew splats: its canvas is not the plain background everywhere
        lit = page.evaluate("""() => { const c = document.querySelector('#viewer canvas.gl');
            const t = document.createElement('canvas'); t.width = c.width; t.height = c.height;
            const g = t.getContext('2d'); g.drawImage(c, 0, 0);
            const d = g.getImageData(0, 0, t.width, t.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - 237) > 12) n++;
            return n / (d.length / 4); }""")
        assert lit > 0.02, f"the 3D view shows nothing ({lit:.3f} of its pixels differ from the background)"
        # drag the gizmo's longest arrow on screen along itself: that placement field follows, alone
        viewer.scroll_into_view_if_needed()
        h = page.evaluate("() => { const v = window.iduViewer; return {c: v.h.centre, axes: v.h.axes}; }")
        c = h["c"]
        axis = max(range(3), key=lambda i: (h["axes"][i][0] - c[0]) ** 2 + (h["axes"][i][1] - c[1]) ** 2)
        a = h["axes"][axis]
        viewer.scroll_into_view_if_needed()
        box = page.locator("#viewer canvas.overlay").bounding_box()
        sx, sy = box["x"] + c[0] + 0.7 * (a[0] - c[0]), box["y"] + c[1] + 0.7 * (a[1] - c[1])
        page.mouse.move(sx, sy)
        page.mouse.down()
        page.mouse.move(sx + 0.3 * (a[0] - c[0]), sy + 0.3 * (a[1] - c[1]), steps=5)
        page.mouse.up()
        names = ["dx", "dy", "dz", "rx", "ry", "rz", "scale"]
        fields = {n: float(page.input_value(f"input[name={n}]")) for n in names}
        moved = [fields[n] for n in ("dx", "dy", "dz")]
        assert moved[axis] > 0.01, (h, fields)
        assert [v for i, v in enumerate(moved) if i != axis] == [0, 0] and fields["scale"] == 1, fields
        typed = (axis + 1) % 3  # and type another axis's shift
        page.fill(f"input[name={('dx', 'dy', 'dz')[typed]}]", "0.05")
        moved[typed] = 0.05
        page.fill("textarea[name=comment]", "nudged along x")
        page.screenshot(path=shots / "2-change.png", full_page=True)
        page.click("button[value=approve]")
        expect(page.get_by_test_id("message")).to_contain_text("approve sent", timeout=30_000)
        # the photos show other changes too: the run asks about them next, and they are rejected here
        not_tested = {"action": "reject", "reviewer": "rita", "comment": "not under test"}
        settle(first["run_id"], not_tested, after=first["key"])
        expect(page.get_by_test_id("run-version")).to_be_visible(timeout=300_000)
        page.screenshot(path=shots / "3-approved.png", full_page=True)

        page.goto(ui + "/scenes/" + first["scene"].name)
        expect(page.get_by_test_id("versions").locator("tr[data-version='2']")).to_contain_text("current")
        expect(page.get_by_test_id("decision").filter(has_text="nudged along x")).to_contain_text("by rita")
        thumbs = page.locator("td.thumbs img")
        expect(thumbs).to_have_count(3)  # v2: before and after; v1: after
        for img in thumbs.all():
            page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle())
        page.screenshot(path=shots / "4-scene.png", full_page=True)

        # the other change: reject it
        page.goto(ui + "/")
        page.get_by_test_id("queue").locator(f"a[href^='/reviews/{second['run_id']}/']").click()
        expect(page).to_have_url(re.compile(f"/reviews/{second['run_id']}/"))
        page.fill("textarea[name=comment]", "not a real change")
        page.click("button[value=reject]")
        expect(page.get_by_test_id("message")).to_contain_text("reject sent")
        # deciding again is refused by the server, and the page says so
        page.click("button[value=approve]")
        expect(page.locator("#decision-result .error")).to_contain_text("not waiting")
        page.screenshot(path=shots / "5-rejected.png", full_page=True)
        browser.close()
    assert not errors, errors

    run = wait_for(first["run_id"], final, timeout=300)
    assert run.state.is_completed(), run.state.message
    v2 = first["scene"].version(2).meta
    d = next(x for x in v2["decisions"] if x["change_id"] == "c1")
    assert d["reviewer"] == "rita" and d["comment"] == "nudged along x" and d["decided_at"]
    asset = json.loads(Path(d["asset"]).with_suffix(".json").read_text())
    shift = [
        a - b for a, b in zip(d["transform"]["translation"], asset["transform"]["translation"], strict=True)
    ]
    assert shift == pytest.approx(moved, abs=1e-4)
    assert base["num_gaussians"] < v2["num_gaussians"]
    run2 = settle(second["run_id"], not_tested, after=second["key"])
    assert run2.state.is_completed() and second["scene"].current_version() == 1


def test_an_operator_starts_an_update_from_uploaded_photos_and_rolls_the_scene_back(
    ui, bench_world, idu_services, tmp_path
):
    world, scene = bench_world
    sc = copy_scene(scene, idu_services.store, "ui-ops")
    files = [
        ("photos", (p.name, p.read_bytes(), "image/png"))
        for p in sorted(update_photos(world, tmp_path / "upload").iterdir())
    ]
    rita, csrf = login(ui, "rita")
    r = rita.post("/scenes/ui-ops/update", data={"csrf_token": csrf, "auto_approve": "1"}, files=files)
    assert r.status_code == 403 and "operator" in r.text  # reviewers decide; operators start updates
    olga, csrf = login(ui, "olga")
    r = olga.post("/scenes/ui-ops/update", data={"auto_approve": "1"}, files=files)
    assert r.status_code == 403 and "CSRF" in r.text
    r = olga.post("/scenes/ui-ops/update", data={"csrf_token": csrf, "auto_approve": "1"}, files=files)
    assert r.status_code == 303 and r.headers["location"].startswith("/runs/")
    run_id = r.headers["location"].rsplit("/", 1)[1]
    run = wait_for(run_id, final, timeout=400)
    assert run.state.is_completed(), run.state.message
    assert sc.current_version() == 2
    page = olga.get(f"/runs/{run_id}").text
    assert 'data-testid="run-version"' in page and "version 2" in page
    # a rollback from the scene page moves `current` back; nothing is deleted
    r = olga.post("/scenes/ui-ops/rollback", data={"csrf_token": csrf, "to": "1"})
    assert r.status_code == 303 and sc.current_version() == 1 and sc.version_numbers() == [1, 2]
    page = olga.get("/scenes/ui-ops").text
    assert "rollback from v2 to v1" in page and "rollback by olga" in page
    r = olga.post("/scenes/ui-ops/rollback", data={"csrf_token": csrf, "to": "7"})
    assert r.status_code == 422 and "no version 7" in r.text
