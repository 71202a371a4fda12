"""IDU's deployments: one list for ``idu serve`` (flows/serve.py), deploy/prefect.yaml and the tests.

``work_pool`` names the pool a worker-based deployment uses (deploy/prefect.yaml): ``cpu`` for updates and
refreshes, ``gpu`` (concurrency = number of GPUs) for bootstraps, whose training task is tagged ``gpu``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

REFRESH_CRON = "*/10 * * * *"

DEPLOYMENTS: list[dict[str, Any]] = [
    {
        "flow": "flows.update_scene:update_scene",
        "deployment": "update-scene",
        "work_pool": "cpu",
        "description": "Update a scene from new photos, with a review of every change.",
    },
    {
        "flow": "flows.refresh:refresh_scenes",
        "deployment": "refresh-scenes",
        "work_pool": "cpu",
        "cron": REFRESH_CRON,
        "description": "Start an update for every new photo batch in the inbox.",
    },
    {
        "flow": "flows.bootstrap:bootstrap_scene",
        "deployment": "bootstrap-scene",
        "work_pool": "gpu",
        "description": "Build a scene from photos: SfM + 3DGS training.",
    },
]


def load_flow(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def full_name(deployment: str) -> str:
    """``<flow name>/<deployment name>``, as ``run_deployment`` wants it."""
    d = next(d for d in DEPLOYMENTS if d["deployment"] == deployment)
    return f"{load_flow(d['flow']).name}/{deployment}"


def served_deployments(store: str | None = None) -> list:
    """RunnerDeployments for ``prefect.serve``: the refresh schedule (``IDU_REFRESH_CRON``, default every
    10 minutes; ``off`` disables it) scans ``IDU_INBOX`` (default STORE/inbox) for ``IDU_STORE``."""
    store = store or os.environ.get("IDU_STORE", "store")
    out = []
    for d in DEPLOYMENTS:
        kw: dict[str, Any] = {"name": d["deployment"], "description": d["description"], "tags": ["idu"]}
        if d.get("cron"):
            cron = os.environ.get("IDU_REFRESH_CRON", d["cron"])
            if cron != "off":
                kw["cron"] = cron
            kw["parameters"] = {"inbox": os.environ.get("IDU_INBOX", f"{store}/inbox"), "store": store}
        out.append(load_flow(d["flow"]).to_deployment(**kw))
    return out


__all__ = ["DEPLOYMENTS", "REFRESH_CRON", "full_name", "load_flow", "served_deployments"]
