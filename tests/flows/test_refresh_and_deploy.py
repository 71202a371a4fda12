"""The scheduled inbox refresh (real server, real deployments) and the deployment files in deploy/."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from flows.deployments import DEPLOYMENTS, REFRESH_CRON
from flows.refresh import refresh_scenes

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_refresh_starts_one_update_per_new_batch_and_never_twice(
    idu_services, new_scene, bench_world, tmp_path
):
    world, _ = bench_world
    inbox = tmp_path / "inbox"
    b1 = inbox / new_scene.name / "monday"
    b1.mkdir(parents=True)
    for name in ("after_004.png", "after_005.png"):
        shutil.copy2(world / "after" / "images" / name, b1 / name)
    (inbox / "no-such-scene" / "x").mkdir(parents=True)  # a folder for a scene the store does not hold
    shutil.copy2(b1 / "after_004.png", inbox / "no-such-scene" / "x" / "a.png")
    store = str(idu_services.store)

    first = refresh_scenes(str(inbox), store, settle_seconds=0)
    assert [(b["batch"], b["new"]) for b in first] == [("monday", True)]
    assert refresh_scenes(str(inbox), store, settle_seconds=0) == []  # scanned again: nothing new
    # the same photos uploaded again under another name: the same run, not a second one
    shutil.copytree(b1, inbox / new_scene.name / "monday-again")
    again = refresh_scenes(str(inbox), store, settle_seconds=0)
    assert [(b["batch"], b["new"], b["run"]) for b in again] == [("monday-again", False, first[0]["run"])]
    # a batch still being uploaded waits for the next scan; once settled it gets its own run
    b2 = inbox / new_scene.name / "tuesday"
    b2.mkdir()
    shutil.copy(world / "after" / "images" / "after_005.png", b2 / "after_005.png")  # written just now
    assert refresh_scenes(str(inbox), store, settle_seconds=3600) == []
    later = refresh_scenes(str(inbox), store, settle_seconds=0)
    assert [(b["batch"], b["new"]) for b in later] == [("tuesday", True)] and later[0]["run"] != first[0][
        "run"
    ]

    # the deployment the schedule runs, on the runner: the inbox holds nothing new any more
    from flows import runs as idu_runs

    scan = idu_runs.start("refresh-scenes", {"inbox": str(inbox), "store": store, "settle_seconds": 0})
    assert idu_runs.result(idu_runs.wait(scan.id, timeout=300)) == []

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(UUID(b["run"])) for b in first + later]
    for r, b in zip(runs, first + later, strict=True):
        assert r.parameters["scene"] == f"{store}/{new_scene.name}"
        assert r.idempotency_key == f"{new_scene.name}:{b['hash']}"
        assert Path(r.parameters["images"]).is_dir()  # copied out of the inbox, named by content
    for r in runs:  # let them go: the review tests are elsewhere
        with get_client(sync_client=True) as client:
            from prefect.states import Cancelled

            client.set_flow_run_state(r.id, Cancelled(), force=True)


@pytest.mark.slow
def test_the_served_deployments_and_the_refresh_schedule(idu_services):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.deployments import full_name

    with get_client(sync_client=True) as client:
        deps = {
            d["deployment"]: client.read_deployment_by_name(full_name(d["deployment"])) for d in DEPLOYMENTS
        }
        refresh = deps["refresh-scenes"]
        [sched] = refresh.schedules
        assert sched.schedule.cron == REFRESH_CRON and sched.active
        assert refresh.parameters["store"] == str(idu_services.store)
        assert not deps["update-scene"].schedules
        # the server schedules the refresh's runs ahead of time (and the runner executes them when due)
        t0 = time.monotonic()
        while True:
            listed = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[refresh.id])),
                flow_run_filter=FlowRunFilter(),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=20,
            )
            scheduled = [r for r in listed if r.state.is_scheduled()]
            if scheduled or time.monotonic() - t0 > 90:
                break
            time.sleep(1)
    assert scheduled, [(r.name, r.state.name) for r in listed]
    minutes = {r.expected_start_time.minute for r in scheduled}
    assert all(m % 10 == 0 for m in minutes)


def test_prefect_yaml_matches_the_deployments():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    doc = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(doc)
    by_name = {d.name: d for d in model.deployments}
    assert set(by_name) == {d["deployment"] for d in DEPLOYMENTS}
    for d in DEPLOYMENTS:
        dep = by_name[d["deployment"]]
        assert dep.work_pool.name == d["work_pool"]
        module, name = d["flow"].split(":")
        flow = load_flow_from_entrypoint(str(ROOT / f"{module.replace('.', '/')}.py:{name}"))
        assert dep.entrypoint == f"{module.replace('.', '/')}.py:{name}" and flow.name
        for p in dep.parameters:  # the parameters it sets are the flow's
            assert p in flow.parameters.properties, (d["deployment"], p)
        env = dep.work_pool.job_variables["env"]
        assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"].startswith(env["IDU_STORE"])  # shared with the store
    [sched] = by_name["refresh-scenes"].schedules
    assert CronSchedule(cron=sched.cron, timezone=sched.timezone).cron == REFRESH_CRON


COMPOSE_SCHEMA = {
    "type": "object",
    "required": ["services", "volumes"],
    "properties": {
        "name": {"type": "string"},
        "services": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
                "properties": {
                    "image": {"type": "string"},
                    "build": {"type": "object", "required": ["context"]},
                    "command": {"type": "array", "items": {"type": "string"}},
                    "environment": {"type": "object", "additionalProperties": {"type": "string"}},
                    "ports": {
                        "type": "array",
                        "items": {"type": "string", "pattern": r"^127\.0\.0\.1:\d+:\d+$"},
                    },
                    "volumes": {"type": "array", "items": {"type": "string"}},
                    "depends_on": {"type": "object"},
                    "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                    "healthcheck": {"type": "object", "required": ["test"]},
                    "profiles": {"type": "array"},
                    "deploy": {"type": "object"},
                },
                "additionalProperties": False,
            },
        },
        "volumes": {"type": "object"},
    },
}


def test_docker_compose_is_well_formed_and_consistent():
    import jsonschema

    doc = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())  # anchors resolved
    jsonschema.validate({k: v for k, v in doc.items() if not k.startswith("x-")}, COMPOSE_SCHEMA)
    services = doc["services"]
    assert {"postgres", "prefect-server", "worker-cpu", "worker-gpu", "review-ui"} <= set(services)
    for name, s in services.items():
        for dep in s.get("depends_on", {}):
            assert dep in services, (name, dep)
        for v in s.get("volumes", []):
            vol = v.split(":")[0]
            assert vol in doc["volumes"], (name, vol)
        build = s.get("build")
        if build:
            assert (ROOT / "deploy" / build["context"] / build["dockerfile"]).is_file()
    assert (
        "postgresql+asyncpg"
        in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    pools = {d["work_pool"] for d in DEPLOYMENTS}
    for w in ("worker-cpu", "worker-gpu"):
        cmd = services[w]["command"]
        assert cmd[cmd.index("--pool") + 1] in pools
        assert services[w]["environment"]["PREFECT_API_URL"].startswith("http://prefect-server:")
    # the workers and the review UI see the same store
    assert all(
        "store:/data/store" in " ".join(services[s]["volumes"])
        for s in ("worker-cpu", "worker-gpu", "review-ui")
    )
    # every COPY source of the image exists
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            assert all((ROOT / p).exists() for p in line.split()[1:-1]), line
    assert os.path.exists(ROOT / "deploy" / "README.md")


@pytest.mark.slow
def test_refresh_reads_an_fsspec_inbox(idu_services, new_scene, bench_world):
    """Any fsspec URL: here the in-memory file system (the scan runs in this process)."""
    import fsspec

    world, _ = bench_world
    fs = fsspec.filesystem("memory")
    for name in ("after_004.png", "after_005.png"):
        fs.pipe(
            f"/inbox-{new_scene.name}/{new_scene.name}/b1/{name}",
            (world / "after" / "images" / name).read_bytes(),
        )
    got = refresh_scenes(f"memory:///inbox-{new_scene.name}", str(idu_services.store), settle_seconds=0)
    assert [(b["batch"], b["new"]) for b in got] == [("b1", True)]
    local = Path(got[0]["images"])
    assert sorted(p.name for p in local.iterdir()) == ["after_004.png", "after_005.png"]
    assert (local / "after_004.png").read_bytes() == (
        world / "after" / "images" / "after_004.png"
    ).read_bytes()

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(got[0]["run"]), Cancelled(), force=True)
