"""The benchmark runner on the cached fixture world: bootstrap report, after-view metrics, missing stages."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.fixtures import fixture_config
from bench.runner import (
    STAGES,
    change_mask,
    format_table,
    load_world,
    masked_metrics,
    run_benchmark,
    split_after,
)
from reconstruction.cameras import Pose, model_images
from reconstruction.errors import IDUError


def test_fixture_scene_has_the_known_before_cameras(bench_world):
    world, scene = bench_world
    gt = json.loads((world / "gt.json").read_text())
    assert scene.current_version() == 1
    ver = scene.version()
    lin = ver.meta["lineage"]
    assert lin["known_poses"] and lin["alignment"] is None and lin["sfm"]["mapper"] == "known-poses"
    assert lin["train_config"] == json.loads(json.dumps(fixture_config().train.__dict__))
    truth = {im["name"]: Pose.from_json(im["cam_from_world"]) for im in gt["before"]["images"]}
    entries = model_images(ver.load_model())
    assert len(entries) == len(truth)
    for e in entries:
        np.testing.assert_allclose(e.cam_from_world.matrix(), truth[e.name].matrix(), atol=1e-6)
    # version 1 renders the place: held-out before-photos are reproduced far better than a blank image
    assert ver.meta["test_psnr"] > 17.0


def test_run_benchmark_reports_bootstrap_and_lists_missing_stages(bench_world):
    world, scene = bench_world
    # the fixture's config: the cached scene is reused; the asset stages have their own tests
    report = run_benchmark(world, "fast", stages=["register", "detect", "merge"])
    assert scene.current_version() == 1 and len(scene.versions()) == 1
    boot = report["stages"]["bootstrap"]
    assert boot["status"] == "ok" and boot["scene"] == scene.ref and report["bootstrap_poses"] == "known"
    update, heldout = split_after(load_world(world))
    assert report["after_split"] == {"update": update, "heldout": heldout} and not set(update) & set(heldout)
    # the unchanged scene judged on the held-out after-views, inside and outside the changes
    m = boot["unchanged_scene_on_heldout_after"]
    assert all(8.0 < m[k] < 40.0 for k in ("psnr_all", "psnr_inside", "psnr_outside"))
    assert all(0.0 < m[k] < 1.0 for k in ("ssim_all", "ssim_inside", "ssim_outside"))
    for stage, (module, title) in STAGES.items():
        assert report["stages"][stage]["module"] == module and report["stages"][stage]["issue"] == title
        assert report["stages"][stage]["status"] in ("ok", "missing", "not benchmarked", "not run")
    assert report["stages"]["assets"]["status"] == report["stages"]["update"]["status"] == "not run"
    # registration is benchmarked: every after-photo judged against its true camera
    reg = report["stages"]["register"]
    assert reg["status"] == "ok" and reg["photos"] == len(update) + len(heldout)
    assert reg["registered"] + len(reg["rejections"]) == reg["photos"]
    assert reg["registered"] >= 5  # far from every scene photo and under another sun (README)
    assert reg["rotation_deg"]["max"] < 2.0 and reg["centre_pct_of_radius"]["median"] < 5.0
    # detection is benchmarked on the whole after-capture: every change judged, the planter found moved
    det = report["stages"]["detect"]
    assert det["status"] == "ok" and det["changes"] == len(det["per_change"]) and 0 < det["recall"] <= 1
    assert {e["id"]: e for e in det["per_change"]}["moved_planter"].get("predicted_kind") == "moved"
    # the merge is benchmarked with oracle removals: where objects left, the held-out views get closer to
    # the place as it is now; the cached scene itself is never changed
    mg = report["stages"]["merge"]
    assert mg["status"] == "ok" and mg["merged"]
    for cid, d in mg["merged"].items():  # removals by their boxes, additions (id+) by their assets
        assert (d["added"] > 0) if cid.endswith("+") else (d["removed"] > 0), (cid, d)
    assert {c[:-1] for c in mg["merged"] if c.endswith("+")} >= {"added_crate", "added_vehicle"}
    assert mg["heldout_after"]["psnr_inside"] > m["psnr_inside"]
    assert abs(mg["heldout_after"]["psnr_outside"] - m["psnr_outside"]) < 0.5
    assert scene.current_version() == 1 and len(scene.versions()) == 1
    table = format_table(report)
    assert "bootstrap" in table and "after-photos registered" in table and "not run" in table
    assert all(stage in table for stage in report["stages"])  # every stage listed, run or not
    assert "oracle removals" in table and "false candidates" in table
    json.dumps(report)  # serialisable as it is


def test_change_mask_covers_the_changed_objects(bench_world):
    world, _ = bench_world
    gt = load_world(world)
    for v in gt["after"]["images"]:
        mask = change_mask(world, v)
        px = sum(o.get("pixels", 0) for o in v["objects"].values())
        assert mask.any() == (px > 0)


def test_held_out_views_leave_out_the_new_objects_in_front(bench_world):
    """In the fixture's after_005 the added person stands in front of the added crate: judged alone, the
    crate's asset is not blamed for the person's pixels, and none of the person's own are left out."""
    from PIL import Image

    from bench.bench_assets import others_in_front

    world, _ = bench_world
    gt = load_world(world)
    names = [v["name"] for v in gt["after"]["images"]]
    masks = {v["name"]: v["objects"] for v in gt["after"]["images"]}
    crate = others_in_front(world, gt, "added_crate", names)
    person = np.asarray(Image.open(world / masks["after_005.png"]["added_person"]["mask"])) > 0
    assert (crate["after_005.png"] & person).sum() == person.sum() > 0
    in_front_of_person = others_in_front(world, gt, "added_person", names).get("after_005.png")
    assert in_front_of_person is None or not (in_front_of_person & person).any()


def test_masked_metrics_split_inside_and_outside():
    a = torch.zeros(10, 10, 3)
    b = a.clone()
    b[:5] = 0.1
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    m = masked_metrics(b, a, mask)
    assert m["psnr_inside"] == pytest.approx(20.0) and m["psnr_outside"] == float("inf")
    assert masked_metrics(a, a, np.zeros((10, 10), bool))["psnr_inside"] is None


def test_runner_input_errors(tmp_path, bench_world):
    with pytest.raises(IDUError, match="not a benchmark world"):
        run_benchmark(tmp_path)
    world, _ = bench_world
    with pytest.raises(IDUError, match="--baseline magic"):
        run_benchmark(world, baseline="magic")
    with pytest.raises(IDUError, match="--stages magic: expected some of register"):
        run_benchmark(world, stages=["magic"])
    with pytest.raises(IDUError, match="--update-photos most: expected one of even, all"):
        run_benchmark(world, update_photos="most")
    gt = load_world(world)
    names = [im["name"] for im in gt["after"]["images"]]
    assert split_after(gt, "all") == (names, [])
    assert sorted(sum(split_after(gt), [])) == sorted(names)


def test_cli_bench_run_json(bench_world, tmp_path):
    from flows.cli import app

    world, _ = bench_world
    res = CliRunner().invoke(
        app, ["bench", "run", str(world), "--preset", "fast", "--out", str(tmp_path / "r.json"), "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["stages"]["bootstrap"]["status"] == "ok"
    assert json.loads((tmp_path / "r.json").read_text()) == doc
