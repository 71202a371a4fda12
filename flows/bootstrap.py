"""``bootstrap_scene``: build a scene from photos (SfM, then 3DGS training) as a flow.

SfM runs on a CPU; training is tagged ``gpu`` (a tag concurrency limit or the ``gpu`` work pool in
deploy/prefect.yaml sends it where the GPUs are). Both write into the bootstrap's work folder, named by
the photos and the settings, so a retried run picks up the finished SfM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from pydantic import BaseModel, Field

from tasks.update import scene_of


class BootstrapOptions(BaseModel):
    """Training settings (reconstruction.train presets)."""

    preset: Literal["fast", "default", "quality"] = Field("default", description="Training preset.")
    iterations: int | None = Field(None, gt=0, description="Training steps (the schedule is stretched).")
    max_side: int | None = Field(None, gt=0, description="Downscale photos to this longer side.")
    trainer: Literal["cpu-gsplat", "nerfstudio"] = Field("cpu-gsplat", description="Who trains.")
    align_to: str | None = Field(None, description="Ground-truth JSON: move the scene into its frame.")
    poses: str | None = Field(None, description="Known poses and intrinsics: triangulate, no mapping.")


def _config(options: BootstrapOptions):
    from reconstruction.bootstrap import BootstrapConfig
    from reconstruction.train import preset

    config = BootstrapConfig(
        train=preset(options.preset, iterations=options.iterations, max_side=options.max_side),
        trainer=options.trainer,
    )
    if options.iterations is not None:
        config.nerfstudio_iterations = options.iterations
    return config


@task(name="structure from motion", cache_policy=NO_CACHE, tags=["cpu"])
def structure_from_motion(scene: str, images: str, options: BootstrapOptions) -> dict:
    from reconstruction.bootstrap import read_reference_poses, work_folder
    from reconstruction.sfm import list_images, read_sfm_stats, run_sfm

    config = _config(options)
    names = list_images(Path(images))
    known = read_reference_poses(options.poses) if options.poses else None
    work = work_folder(scene_of(scene), Path(images), names, config.sfm, known)
    work.mkdir(parents=True, exist_ok=True)
    rec = run_sfm(Path(images), work / "sfm", config.sfm, names, known)
    get_run_logger().info("SfM: %d of %d photos registered", rec.num_reg_images(), len(names))
    return read_sfm_stats(work / "sfm")


@task(name="train and write version", cache_policy=NO_CACHE, tags=["gpu"])
def train(scene: str, images: str, options: BootstrapOptions, flow_run_id: str) -> int:
    from reconstruction.bootstrap import bootstrap_scene

    return bootstrap_scene(
        images,
        scene_of(scene),
        _config(options),
        options.align_to,
        flow_run_id=flow_run_id,
        poses=options.poses,
    )


@flow(name="bootstrap-scene", persist_result=True, log_prints=True)
def bootstrap_scene(scene: str, images: str, options: BootstrapOptions | None = None) -> dict:
    """A new version of ``scene`` (STORE/NAME) built from the photos in ``images``."""
    options = options or BootstrapOptions()
    sfm = structure_from_motion(scene, images, options)
    version = train(scene, images, options, str(get_run_context().flow_run.id))
    meta = scene_of(scene).version(version).meta
    return {
        "scene": scene,
        "version": version,
        "sfm": sfm,
        "num_gaussians": meta["num_gaussians"],
        "test_psnr": meta.get("test_psnr"),
    }


__all__ = ["BootstrapOptions", "bootstrap_scene"]
