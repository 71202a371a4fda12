"""``idu update``, ``idu serve``, ``idu review``, ``idu runs``: the installed console script, in subprocesses,
on a bare machine (no PREFECT_API_URL: the embedded server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import copy_scene, update_photos

pytestmark = pytest.mark.slow
IDU = str(Path(sys.executable).with_name("idu"))


def bare_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # nothing from the user's profile
    return env


def idu(env, *args, ok=True, timeout=600):
    p = subprocess.run([IDU, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_update_on_a_bare_machine_starts_its_own_server(bench_world, tmp_path):
    world, scene = bench_world
    s = copy_scene(scene, tmp_path / "store", "plaza")
    env = bare_env(tmp_path)
    photos = update_photos(world, tmp_path / "photos")
    p = idu(env, "update", s.ref, "--images", photos, "--auto-approve", "--wait", "--json")
    out = json.loads(p.stdout)
    assert out["outcome"] == "merged" and out["version"] == 2 and out["base_version"] == 1
    assert out["photos"]["after_004.png"] == "registered" and out["decisions"][0]["action"] == "approve"
    assert s.current_version() == 2 and s.version(2).meta["flow_run_id"] == out["run_id"]
    assert "update of" in p.stderr
    # everything it started has stopped
    assert not (tmp_path / "store" / ".prefect" / "serve.json").exists()
    # bad input: one line naming the problem, nothing changed
    bad = idu(env, "update", s.ref, "--images", tmp_path / "nope", "--json", ok=False)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "nope" in bad.stderr and bad.stdout == ""
    assert idu(env, "update", f"{tmp_path}/store/ghost", "--images", tmp_path, ok=False).returncode == 1
    assert s.version_numbers() == [1, 2]


def test_serve_update_review_runs_and_a_clean_shutdown(bench_world, tmp_path):
    world, scene = bench_world
    s = copy_scene(scene, tmp_path / "store", "plaza")
    env = bare_env(tmp_path)
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([IDU, "serve", "--store", tmp_path / "store", "--port", "0"], env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        state = tmp_path / "store" / ".prefect" / "serve.json"
        t0 = time.monotonic()
        while not state.exists():
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() - t0 < 240, "idu serve did not come up"
            time.sleep(0.5)
        pids = json.loads(state.read_text())["processes"]
        assert set(pids) == {"server", "runner", "ui"}
        started = json.loads(
            idu(env, "update", s.ref, "--images", update_photos(world, tmp_path / "photos"), "--json").stdout
        )
        run_id = started["run_id"]
        t0 = time.monotonic()
        while True:  # the run registers, detects and waits for its review
            reviews = json.loads(idu(env, "review", "list", "--store", tmp_path / "store", "--json").stdout)[
                "reviews"
            ]
            mine = [r for r in reviews if r["run_id"] == run_id]
            if mine:
                break
            assert time.monotonic() - t0 < 300
            time.sleep(2)
        key = mine[0]["key"]
        refused = idu(env, "review", "decide", run_id, key, "--action", "relabel", "--reviewer", "ana",
                      "--store", tmp_path / "store", ok=False)  # fmt: skip
        assert refused.returncode == 1 and "label" in refused.stderr.splitlines()[-1]
        idu(env, "review", "decide", run_id, key, "--action", "approve", "--reviewer", "ana",
            "--translation", "0,0,0.05", "--store", tmp_path / "store")  # fmt: skip
        decided = {key}
        t0 = time.monotonic()
        while True:
            runs = json.loads(idu(env, "runs", "--store", tmp_path / "store", "--json").stdout)["runs"]
            mine = next(r for r in runs if r["run_id"] == run_id)
            if mine["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            # the run waits for a decision on every change it found: the others are rejected
            listed = json.loads(idu(env, "review", "list", "--store", tmp_path / "store", "--json").stdout)
            for r in listed["reviews"]:
                if r["run_id"] == run_id and r["key"] not in decided:
                    decided.add(r["key"])
                    idu(env, "review", "decide", run_id, r["key"], "--action", "reject", "--reviewer", "ana",
                        "--store", tmp_path / "store")  # fmt: skip
            assert time.monotonic() - t0 < 300
            time.sleep(2)
        assert mine["state"] == "Completed" and mine["flow"] == "update-scene"
        assert s.current_version() == 2 and s.version(2).meta["reviewers"] == ["ana"]
    finally:
        serve.send_signal(signal.SIGINT)
        rc = serve.wait(90)
        log.close()
    assert rc == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert not state.exists()
    # nothing it started is left running
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], (
            name
        )
