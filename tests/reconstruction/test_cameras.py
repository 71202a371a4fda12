import numpy as np
import pycolmap
import pytest

from reconstruction.cameras import (
    Camera,
    ImageEntry,
    Pose,
    build_model,
    matrix_to_quat,
    model_images,
    quat_multiply,
    quat_to_matrix,
    read_colmap_model,
    undistort_image,
)
from reconstruction.errors import SceneFormatError


def random_quat(rng):
    q = rng.normal(size=4)
    return q / np.linalg.norm(q)


def test_quaternion_conventions_match_pycolmap():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = random_quat(rng)
        R = quat_to_matrix(q)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12)
        x, y, z, w = q[1], q[2], q[3], q[0]
        assert np.allclose(pycolmap.Rotation3d(np.array([x, y, z, w])).matrix(), R, atol=1e-12)
        q2 = matrix_to_quat(R)
        assert np.allclose(q2, q * np.sign(q[0]), atol=1e-10)
    a, b = random_quat(rng), random_quat(rng)
    assert np.allclose(quat_to_matrix(quat_multiply(a, b)), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-12)


def test_pose_is_cam_from_world():
    rng = np.random.default_rng(1)
    pose = Pose(random_quat(rng), rng.normal(size=3))
    x_world = rng.normal(size=3)
    x_cam = pose.R @ x_world + pose.translation
    assert np.allclose(pose.matrix() @ np.append(x_world, 1), np.append(x_cam, 1))
    # the camera centre maps to the origin of the camera frame
    assert np.allclose(pose.R @ pose.center() + pose.translation, 0, atol=1e-12)
    assert np.allclose(pose.inverse().matrix(), np.linalg.inv(pose.matrix()), atol=1e-12)
    back = Pose.from_pycolmap(pose.to_pycolmap())
    assert np.allclose(back.matrix(), pose.matrix(), atol=1e-12)
    assert np.allclose(pose.to_pycolmap().matrix(), pose.matrix()[:3], atol=1e-12)
    assert Pose.from_json(pose.to_json()).to_json() == pose.to_json()


def test_pose_rejects_garbage():
    with pytest.raises(SceneFormatError):
        Pose([0, 0, 0, 0], [0, 0, 0])
    with pytest.raises(SceneFormatError):
        Pose([1, 0, 0, 0], [np.nan, 0, 0])
    with pytest.raises(SceneFormatError, match="rotation_wxyz"):
        Pose.from_json({"translation": [0, 0, 0]}, "pose.json")


def test_camera_models_and_json():
    cam = Camera("OPENCV", 640, 480, [500, 510, 320, 240, 0.1, -0.02, 0.001, 0.0])
    assert np.allclose(cam.K(), [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    assert Camera.from_json(cam.to_json()) == cam
    assert Camera.from_pycolmap(cam.to_pycolmap()) == cam
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (320, 240) and np.isclose(half.params[0], 250)
    with pytest.raises(SceneFormatError, match="model"):
        Camera("NOT_A_MODEL", 10, 10, [1, 2, 3])
    with pytest.raises(SceneFormatError, match="needs"):
        Camera("PINHOLE", 10, 10, [1, 2, 3])


def test_undistort_matches_the_pinhole_view():
    """A pattern defined on the normalised image plane, photographed through a distorting lens,
    comes out of undistort_image as the same pattern seen by the pinhole camera."""
    cam = Camera("OPENCV", 160, 120, [120, 118, 81, 58, -0.25, 0.08, 0.002, -0.001])

    def pattern(xn, yn):
        return 0.5 + 0.25 * np.sin(7 * xn) * np.cos(5 * yn) + 0.2 * xn

    u, v = np.meshgrid(np.arange(160) + 0.5, np.arange(120) + 0.5)
    pix = np.stack([u.ravel(), v.ravel()], 1)
    norm = cam.to_pycolmap().cam_from_img(pix)
    photo = pattern(norm[:, 0], norm[:, 1]).reshape(120, 160).astype(np.float32)
    und, pin = undistort_image(photo, cam)
    assert pin.model == "PINHOLE" and pin.params == cam.params[:4]
    k = pin.K()
    expected = pattern((u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1])
    inner = (slice(10, -10), slice(10, -10))  # the border samples outside the photo
    err = np.abs(und - expected)[inner]
    assert err.mean() < 2e-3 and err.max() < 2e-2
    # and the distorted photo itself is far from the pinhole view (the test is not vacuous)
    assert np.abs(photo - expected)[inner].mean() > 10 * err.mean()
    u8, _ = undistort_image((photo * 255).astype(np.uint8), cam)
    assert u8.dtype == np.uint8 and u8.shape == photo.shape


def test_colmap_model_round_trip_text_and_binary(tmp_path):
    rng = np.random.default_rng(2)
    cams = [
        Camera("PINHOLE", 64, 48, [60, 60, 32, 24]),
        Camera("OPENCV", 80, 60, [70, 71, 40, 30, 0.01, 0, 0, 0]),
    ]
    entries = [
        ImageEntry(f"im{i}.jpg", cams[i % 2], Pose(random_quat(rng), rng.normal(size=3))) for i in range(5)
    ]
    model = build_model(entries, rng.normal(size=(10, 3)), rng.integers(0, 255, (10, 3)))
    for fmt in ("binary", "text"):
        d = tmp_path / fmt
        d.mkdir()
        getattr(model, f"write_{fmt}")(str(d))
        back = model_images(read_colmap_model(d))
        assert [e.name for e in back] == [e.name for e in entries]
        for a, b in zip(back, entries, strict=True):
            assert a.camera == b.camera
            assert np.allclose(a.cam_from_world.matrix(), b.cam_from_world.matrix(), atol=1e-9)


def test_missing_and_corrupt_colmap_files(tmp_path):
    rng = np.random.default_rng(3)
    model = build_model(
        [ImageEntry("a.jpg", Camera("PINHOLE", 8, 8, [8, 8, 4, 4]), Pose(random_quat(rng), [0, 0, 1]))]
    )
    model.write_binary(str(tmp_path))
    (tmp_path / "points3D.bin").unlink()
    with pytest.raises(SceneFormatError, match=r"missing points3D\.bin"):
        read_colmap_model(tmp_path)
    model.write_binary(str(tmp_path))
    data = (tmp_path / "images.bin").read_bytes()
    (tmp_path / "images.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneFormatError, match=str(tmp_path)):
        read_colmap_model(tmp_path)
    with pytest.raises(SceneFormatError, match="does not exist"):
        read_colmap_model(tmp_path / "nope")
