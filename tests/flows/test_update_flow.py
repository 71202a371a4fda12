"""``update_scene`` on a real Prefect server, through its deployment, with reviews through the review API.

The photos are the benchmark world's after-capture: registration, detection and the asset are the real
stages (2 of the 6 photos register; one added candidate)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from flows import runs
from flows.update_scene import UpdateOptions
from reconstruction.ply import read_ply
from review_ui.service import ReviewError, decide, pending_reviews

from .conftest import final, read_run, settle, suspended, task_states, wait_for

pytestmark = pytest.mark.slow


def start_update(scene, images, **options):
    options.setdefault("assets", {"steps": 40})  # orchestration is tested here; asset quality in generation/
    return runs.start("update-scene", {"scene": scene.ref, "images": str(images),
                                       "options": UpdateOptions(**options).model_dump()})  # fmt: skip


def api_decide(client: httpx.Client, run_id, key, decision) -> httpx.Response:
    """A decision through the review app's API (signed in: the reviewer is the session's user)."""
    return client.post(f"/api/runs/{run_id}/reviews/{key}", json=decision)


def test_a_review_resumes_the_run_and_the_approved_change_is_merged(
    idu_services, ana, new_scene, after_photos
):
    run = start_update(new_scene, after_photos(), review_url=idu_services.ui_url)
    r = wait_for(run.id, suspended())
    key = r.state.state_details.pause_key
    assert key == "v1-c1-r0"
    # the queue shows it, with what the flow proposed
    pending = {p["run_id"]: p for p in ana.get("/api/reviews").json()}
    prop = pending[str(run.id)]["proposal"]
    assert prop["change"]["kind"] == "added" and prop["base"] == 1 and prop["asset"]["num_gaussians"] > 100
    assert pending[str(run.id)]["scene"] == new_scene.ref

    # invalid decisions are refused by the server; the run stays suspended
    for bad in ({"action": "approve", "comment": "x" * 2001},           # comment too long
                {"action": "merge-it", "reviewer": "ana"},              # no such action
                {"action": "relabel", "reviewer": "ana"},               # relabel needs a label
                {"action": "adjust", "reviewer": "ana"},                # adjust needs a placement
                {"action": "approve", "reviewer": "ana", "scale": -1},  # scale must be positive
                {"action": "approve", "reviewer": "ana", "translation": [1, 2]}):  # fmt: skip
        res = api_decide(ana, run.id, key, bad)
        assert res.status_code == 422, (bad, res.text)
        assert read_run(run.id).state.is_paused()
    # a decision for another change, or for a run that does not wait, is refused
    assert api_decide(ana, run.id, "v1-c9-r0", {"action": "approve", "reviewer": "ana"}).status_code == 409

    # adjust the placement (10 cm up), then approve
    res = api_decide(ana, run.id, key, {"action": "adjust", "reviewer": "ana", "translation": [0, 0, 0.1]})
    assert res.status_code == 200, res.text
    r = wait_for(run.id, suspended("v1-c1-r1"))
    prop = next(p for p in pending_reviews() if p["run_id"] == str(run.id))["proposal"]
    shift = np.subtract(prop["placement"]["translation"], prop["asset"]["transform"]["translation"])
    assert np.allclose(shift, [0, 0, 0.1])
    approve = {"action": "approve", "reviewer": "ana", "comment": "a new object"}
    assert api_decide(ana, run.id, "v1-c1-r1", approve).status_code == 200
    done = settle(run.id, after="v1-c1-r1")  # the other changes the photos show: rejected
    out = runs.result(done)
    with pytest.raises(ReviewError, match="not waiting"):
        decide(run.id, "v1-c1-r1", {"action": "approve", "reviewer": "ana"})

    assert out["outcome"] == "merged" and out["version"] == 2 and out["base_version"] == 1
    assert new_scene.current_version() == 2
    meta = new_scene.version(2).meta
    assert meta["parent"] == 1 and meta["flow_run_id"] == str(run.id) and meta["reviewers"] == ["ana"]
    [d] = [x for x in meta["decisions"] if x["action"] == "approve"]
    assert d["change_id"] == "c1" and d["kind"] == "added" and d["comment"] == "a new object"
    # the asset went in where the reviewer put it, every old Gaussian carried over
    v1, v2 = read_ply(new_scene.version(1).splats_path), read_ply(new_scene.version(2).splats_path)
    asset = read_ply(d["asset"])
    assert len(v2) == len(v1) + len(asset) == len(v1) + meta["diff"]["c1"]["added"]
    assert np.array_equal(v2.means[: len(v1)], v1.means)
    placed = asset.means + np.asarray(prop["placement"]["translation"], np.float32)
    assert np.allclose(v2.means[len(v1) :], placed, atol=1e-5)
    assert meta["model_growth"]["new_images"] == 2  # the registered photos joined the model
    # the report: a markdown summary and a table of changes
    md = runs.artifact_markdown(run.id)
    assert "New version: 2" in md and "after_004.png | registered" in md and "approve by ana" in md
    thumb = f"{idu_services.ui_url}/files/{run.id}/c1/crop"
    assert thumb in md
    res = ana.get(thumb)
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg" and len(res.content) > 500
    assert httpx.get(thumb).status_code == 401  # signed-in reviewers only
    assert ana.get(f"/files/{run.id}/c7/crop").status_code == 404
    assert ana.get(f"/files/{run.id}/..%2F..%2Fetc/crop").status_code == 404
    # nothing was computed twice: the re-executions after each review answered from the cache
    states = task_states(run.id)
    for name in ("register", "detect changes"):
        assert states[name].count("Completed") == 1, states
    assets = sum(x["kind"] in ("added", "moved") for x in out["decisions"])  # one asset per new object
    assert states["make asset"].count("Completed") == assets >= 1, states


def test_a_review_that_times_out_merges_nothing_and_the_proposals_stay(idu_services, new_scene, after_photos):
    photos = after_photos()
    run = start_update(new_scene, photos, review_timeout_hours=4 / 3600)
    r = wait_for(run.id, suspended())
    key = r.state.state_details.pause_key

    def expired(r):
        # listed as expired until the server's pause-expiration pass fails the run
        mine = [p for p in pending_reviews() if p["run_id"] == str(run.id)]
        return mine[0]["expired"] if mine else r.state.is_failed()

    wait_for(run.id, expired, 30)
    with pytest.raises(ReviewError, match="timed out"):
        decide(run.id, key, {"action": "approve", "reviewer": "ana"})
    assert read_run(run.id).state.is_failed()
    assert new_scene.current_version() == 1 and new_scene.version_numbers() == [1]
    # a later run on the same photos goes straight to the same review (nothing recomputed)
    again = start_update(new_scene, photos)
    wait_for(again.id, suspended(key))
    states = task_states(again.id)
    assert all(
        set(s) == {"Cached"} for n, s in states.items() if n in ("register", "detect changes", "make asset")
    ), states
    decide(again.id, key, {"action": "reject", "reviewer": "ana", "comment": "not a change"})
    out = runs.result(settle(again.id, after=key))
    assert out["outcome"] == "nothing approved" and "version" not in out
    assert new_scene.version_numbers() == [1]


def test_a_suspended_run_survives_restarts_of_the_server_and_the_runner(
    idu_services, new_scene, after_photos
):
    run = start_update(new_scene, after_photos())
    key = wait_for(run.id, suspended()).state.state_details.pause_key
    idu_services.wait_idle()  # the suspended run's process has exited (a restart must not catch it mid-exit)
    idu_services.stop("runner")
    idu_services.restart_server()
    idu_services.start_runner()
    assert read_run(run.id).state.is_paused()
    decide(run.id, key, {"action": "approve", "reviewer": "ana"})
    out = runs.result(settle(run.id, after=key))
    assert out["outcome"] == "merged" and new_scene.current_version() == 2
    assert task_states(run.id)["detect changes"].count("Completed") == 1


def test_two_concurrent_updates_never_lose_a_change(idu_services, new_scene, after_photos):
    """Both runs detect against version 1; the first merges version 2; the second, approved later, detects
    again against version 2 and builds on it (never on version 1)."""
    a = start_update(new_scene, after_photos("a"))
    b = start_update(new_scene, after_photos("b", prefix="b_"))
    ka = wait_for(a.id, suspended()).state.state_details.pause_key
    kb = wait_for(b.id, suspended()).state.state_details.pause_key
    assert ka == kb == "v1-c1-r0"
    decide(a.id, ka, {"action": "approve", "reviewer": "ana"})
    assert runs.result(settle(a.id, after=ka))["version"] == 2
    decide(b.id, kb, {"action": "approve", "reviewer": "bo"})
    # the re-detection against version 2 may find changes the first decision does not cover: approved too
    out = runs.result(settle(b.id, {"action": "approve", "reviewer": "bo"}, after=kb))
    assert out["base_version"] == 2 and out["detected_against"] == [1, 2] and out["redetections"] == 1, out
    # the first update's Gaussians are in the current version, whatever the second one did
    first = read_ply(new_scene.version(2).splats_path)
    current = read_ply(new_scene.version().splats_path)
    n1 = len(read_ply(new_scene.version(1).splats_path))
    added = {tuple(m) for m in first.means[n1:].round(5)}
    assert added and added <= {tuple(m) for m in current.means.round(5)}
    if out.get("version"):
        assert new_scene.version(out["version"]).meta["parent"] == 2
    assert all(new_scene.version(v).meta["parent"] == v - 1 for v in new_scene.version_numbers()[1:])


def test_a_failed_publish_rolls_back_the_staged_version(idu_services, new_scene, after_photos, tmp_path):
    """The merge's transaction: a failure after staging removes the staged version; current never moved."""
    from prefect import flow
    from prefect.transactions import transaction

    from tasks.update import stage_merge

    asset = tmp_path / "asset.ply"
    from reconstruction.ply import write_ply
    from reconstruction.splats import Splats

    sp = Splats.empty(10)
    sp.means = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    write_ply(asset, sp)
    doc = {"base_version": 1, "decisions": [{"change_id": "c1", "action": "approve", "kind": "added",
                                             "asset": str(asset)}]}  # fmt: skip

    @flow
    def publish_then_fail():
        with new_scene.writer() as w:
            with transaction():
                res = stage_merge(w, doc, str(tmp_path), None)
                assert (new_scene.root / ".staging").is_dir() and any((new_scene.root / ".staging").iterdir())
                raise RuntimeError(f"publish failed after staging version {res['version']}")

    with pytest.raises(RuntimeError, match="publish failed after staging version 2"):
        publish_then_fail()
    assert not any((new_scene.root / ".staging").iterdir())
    assert new_scene.current_version() == 1 and new_scene.version_numbers() == [1]


def test_the_report_lists_rejected_photos_with_their_reasons(idu_services, new_scene, after_photos, tmp_path):
    """Also: a classifier backend labels the changes (a tiny CLIP built by the test)."""
    from PIL import Image

    from generation.identify import identify

    from ..generation.test_identify import tiny_clip

    clip = tiny_clip(tmp_path / "clip")
    photos = after_photos()
    (photos / "notes.txt").write_text("not a photo")
    run = start_update(new_scene, photos, auto_approve=True, classifier=str(clip))
    out = runs.result(wait_for(run.id, final))
    d = next(x for x in out["decisions"] if x["change_id"] == "c1")
    folder = next((idu_services.store / ".updates" / new_scene.name).glob("*/v1/detect"))
    cand = json.loads((folder / "candidates.json").read_text())["candidates"][0]
    crops = [np.asarray(Image.open(folder / rel).convert("RGB")) for rel in cand["crops"].values()]
    label, scores = identify(crops, clip)
    assert d["label"] == label and d["label_scores"] == pytest.approx(scores, abs=1e-6)
    assert out["photos"]["notes.txt"] == "rejected" and out["photos"]["after_004.png"] == "registered"
    md = runs.artifact_markdown(run.id)
    row = next(line for line in md.splitlines() if line.startswith("| notes.txt"))
    assert "rejected" in row and len(row.split("|")[3].strip()) > 5
    assert json.loads(json.dumps(out))["decisions"][0]["reviewer"] == "auto-approve"
