"""`make demo`: IDU's main job end to end, through the `idu` command line and a real Prefect server.

1. the small benchmark world (seed 0; generated once, cached under IDU_CACHE_DIR);
2. `idu serve` on the demo store (embedded Prefect server, IDU's deployments, the review web app);
3. `idu scene bootstrap` of its before-photos (the bootstrap-scene deployment; kept between demos);
4. `idu update` with its after-photos: register, detect, make assets, review each change, merge.
   With DEMO_AUTO_APPROVE=1 (or without a terminal) every change is approved; otherwise the demo prints
   how to decide on each change and waits for the decisions;
5. the new version: its lineage, before/after renders at a new photo's pose, an exported PLY.

    python -m bench.demo --out demo_out
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

IDU = [sys.executable, "-m", "flows.cli"]


def say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def idu(*args: str, wait_stderr: bool = False) -> dict:
    cmd = [*IDU, *map(str, args), "--json"]
    print("$ idu " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    p = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=None if wait_stderr else subprocess.PIPE, text=True
    )
    if p.returncode != 0:
        if p.stderr:
            sys.stderr.write(p.stderr)
        raise SystemExit(f"demo: `idu {' '.join(map(str, args))}` failed")
    return json.loads(p.stdout)


def start_serve(store: Path, port: int, log: Path) -> tuple[subprocess.Popen, dict]:
    state = store / ".prefect" / "serve.json"
    state.unlink(missing_ok=True)
    out = open(log, "w")
    proc = subprocess.Popen([*IDU, "serve", "--store", str(store), "--port", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    t0 = time.monotonic()
    while not state.exists():
        if proc.poll() is not None:
            raise SystemExit(f"demo: `idu serve` exited ({log}):\n{log.read_text()[-2000:]}")
        if time.monotonic() - t0 > 300:
            raise SystemExit(f"demo: `idu serve` did not come up in 300 s ({log})")
        time.sleep(0.5)
    return proc, json.loads(state.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "0")), help="review UI port")
    a = ap.parse_args()
    out: Path = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = out / "store"
    ref = f"{store}/plaza"
    auto = os.environ.get("DEMO_AUTO_APPROVE") == "1" or not sys.stdin.isatty()
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    from bench.fixtures import fixture_world

    say("the small benchmark world, seed 0 (generated once, then cached)")
    world = fixture_world()
    times["world"] = time.perf_counter() - t0
    say(f"world: {world} (before/images: 30 photos, after/images: 6 photos of the changed place)")

    serve, urls = start_serve(store, a.port, out / "serve.log")
    times["serve"] = time.perf_counter() - t0 - sum(times.values())
    say(f"idu serve is up: Prefect UI {urls['api_url'].removesuffix('/api')}, review app {urls['ui_url']}")
    try:
        from reconstruction.store import SceneStore

        scene = SceneStore(store).scene("plaza")
        if scene.exists and scene.version_numbers() and scene.version(1).meta.get("reason") == "bootstrap":
            say("the bootstrapped scene from an earlier demo is kept: back to its version 1")
            idu("scene", "rollback", ref, "--to", "1")
        else:
            say("bootstrapping the scene from the before-photos (SfM with the known cameras + 3DGS training)")
            idu("scene", "bootstrap", world / "before" / "images", "--store", store, "--name", "plaza",
                "--preset", "fast", "--poses", world / "gt.json", wait_stderr=True)  # fmt: skip
        times["bootstrap"] = time.perf_counter() - t0 - sum(times.values())
        base = scene.current_version()

        how = (
            " (every change approved automatically)"
            if auto
            else (
                f": review each change at {urls['ui_url']} (make an account first: `idu users add NAME "
                f"--role reviewer --store {store}`) or with the `idu review decide` commands printed below"
            )
        )
        say("updating it from the after-photos" + how)
        args = ["update", ref, "--images", world / "after" / "images", "--wait"]
        res = idu(*args, *(["--auto-approve"] if auto else []), wait_stderr=True)
        times["update"] = time.perf_counter() - t0 - sum(times.values())

        version = res.get("version")
        looks: dict[str, str] = {}
        if version:
            from PIL import Image

            work = store / ".updates" / "plaza" / res["batch"][:16] / f"v{base}"
            reg = {r["name"]: r for r in json.loads((work / "registration.json").read_text())["images"]}
            name = next(n for n, s in res["photos"].items() if s == "registered")
            pose = out / "pose.json"
            pose.write_text(
                json.dumps({"name": name} | {k: reg[name][k] for k in ("cam_from_world", "camera")})
            )
            for v in (base, version):
                r = idu(
                    "scene", "render", ref, "--pose-json", pose, "--version", v, "--out", out / f"v{v}_{name}"
                )
                looks[f"render v{v}"] = r["out"]
            Image.open(world / "after" / "images" / name).save(out / f"photo_{name}")
            looks["photo"] = str(out / f"photo_{name}")
            looks["ply"] = idu(
                "scene", "export", ref, "--format", "ply", "--out", out / f"plaza_v{version}.ply"
            )["out"]
        versions = idu("scene", "versions", ref)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
    summary = {
        "scene": ref,
        "world": str(world),
        "outcome": res["outcome"],
        "new_version": version,
        "photos": res["photos"],
        "changes": [
            {"id": d["change_id"], "kind": d["kind"], "decision": d["action"], "by": d["reviewer"]}
            for d in res["decisions"]
        ],  # fmt: skip
        "versions": [(v["version"], v["parent"], v["reason"]) for v in versions["versions"]],
        "look_at": looks,
        "seconds": {k: round(v, 1) for k, v in times.items()} | {"total": round(time.perf_counter() - t0, 1)},
    }
    print(json.dumps(summary, indent=2))
    say(f"new version {version} of {ref}: renders and the exported PLY are in {out}; to browse the runs, the "
        f"reports and the review queue again: idu serve --store {store}")  # fmt: skip


if __name__ == "__main__":
    main()
