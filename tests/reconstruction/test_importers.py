import shutil

import numpy as np
import pytest

from reconstruction.errors import SceneFormatError
from reconstruction.importers import detect_format, import_scene, load_scene, splats_from_points
from reconstruction.ply import read_ply, write_ply
from reconstruction.store import SceneStore


def make_inria_output(root, dataset, cfg=True, relative=False):
    """The folder layout INRIA's train.py writes."""
    splats = read_ply(dataset / "splats.ply")
    for it in (7000, 30000):
        d = root / "point_cloud" / f"iteration_{it}"
        d.mkdir(parents=True)
        s = splats.to_numpy()
        if it == 7000:
            s.means = s.means + 1.0  # an earlier, different iteration that must not be picked
        write_ply(d / "point_cloud.ply", s)
    if cfg:
        src = dataset.name if relative else str(dataset)
        (root / "cfg_args").write_text(
            f"Namespace(data_device='cuda', eval=False, images='images', model_path='{root}', resolution=-1, "
            f"sh_degree=1, source_path='{src}', white_background=False)"
        )
    return root


def test_inria_output_import(tmp_path, sample_dataset):
    out = make_inria_output(tmp_path / "output", sample_dataset)
    assert detect_format(out) == "inria"
    scene = SceneStore(tmp_path / "store").scene("a")
    v = import_scene(scene, out)
    ver = scene.version(v)
    assert ver.load_splats().equal(read_ply(sample_dataset / "splats.ply"))  # iteration 30000
    assert ver.meta["lineage"]["source"] == {
        "format": "inria",
        "output": str(out.resolve()),
        "iteration": 30000,
        "dataset": str(sample_dataset.resolve()),
    }
    assert len(ver.images()) == 4 and all(i.sha256 for i in ver.images())


def test_inria_output_needs_its_dataset(tmp_path, sample_dataset):
    out = make_inria_output(tmp_path / "output", sample_dataset, cfg=False)
    with pytest.raises(SceneFormatError, match="cfg_args: missing; pass --source"):
        load_scene(out, "inria")
    imp = load_scene(out, "inria", source=sample_dataset)
    assert len(imp.images) == 4
    (out / "cfg_args").write_text("Namespace(source_path='/nowhere/at/all')")
    with pytest.raises(SceneFormatError, match="/nowhere/at/all"):
        load_scene(out, "inria")
    with pytest.raises(SceneFormatError, match="not an INRIA 3DGS output"):
        load_scene(tmp_path, "inria")


def test_colmap_without_ply_starts_from_sparse_points(tmp_path, sample_dataset):
    imp = load_scene(sample_dataset, "colmap")
    n_points = imp.model.num_points3D()
    assert len(imp.splats) == n_points and imp.splats.sh_degree == 0
    assert imp.lineage["source"]["init"] == "sparse points"
    imp.splats.validate()
    # scales follow the spacing of the points: denser neighbourhoods get smaller Gaussians
    assert np.all(np.isfinite(imp.splats.scales)) and imp.splats.scales.std() > 0


def test_splats_from_points_scale():
    g = np.stack(np.meshgrid(np.arange(5), np.arange(5), np.arange(5)), -1).reshape(-1, 3) * 0.1
    s = splats_from_points(g, np.full((len(g), 3), 128))
    # interior points of a 0.1 grid: 3 nearest neighbours at 0.1
    assert np.allclose(np.exp(s.scales[62]), 0.1, rtol=1e-4)
    assert np.allclose(s.sh0, (128 / 255 - 0.5) / 0.28209479177387814, atol=1e-6)


def test_missing_photos_are_allowed_but_recorded(tmp_path, sample_dataset):
    ds = tmp_path / "ds"
    shutil.copytree(sample_dataset, ds)
    shutil.rmtree(ds / "images")
    scene = SceneStore(tmp_path / "store").scene("a")
    import_scene(scene, ds, "colmap", ds / "splats.ply")
    assert all(i.sha256 is None for i in scene.version().images())
    assert scene.version().image_path(scene.version().images()[0].entry.name) is None


def test_nerfstudio_output_import_lands_in_the_colmap_frame(tmp_path, sample_dataset):
    from reconstruction.cameras import quat_to_matrix
    from reconstruction.nerfstudio import write_splatfacto_fixture

    original = read_ply(sample_dataset / "splats.ply")
    T = np.eye(4)[:3]
    T[:3, :3] = quat_to_matrix(np.array([0.9, 0.2, -0.3, 0.1]))
    T[:3, 3] = [0.3, -1.2, 0.5]
    run = write_splatfacto_fixture(
        tmp_path / "outputs" / "scene" / "splatfacto" / "2026-01-01_000000",
        original,
        T,
        0.37,
        data=str(sample_dataset),
    )
    assert detect_format(run) == "nerfstudio"
    scene = SceneStore(tmp_path / "store").scene("ns")
    import_scene(scene, run)
    got = scene.version().load_splats()
    assert np.allclose(got.means, original.means, atol=1e-4)
    assert np.allclose(got.scales, original.scales, atol=1e-4)
    assert np.allclose(got.shN, original.shN, atol=1e-4)
    assert scene.version().meta["lineage"]["source"]["format"] == "nerfstudio"
    assert len(scene.version().images()) == 4
