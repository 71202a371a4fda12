"""Cameras, poses and COLMAP models: the conventions of DESIGN.md, written once.

- Camera axes are OpenCV's: x right, y down, z forward.
- Poses are ``cam_from_world`` (world -> camera), as in COLMAP / pycolmap: ``x_cam = R @ x_world + t``.
- Quaternions are ``wxyz`` everywhere in IDU. (pycolmap's ``Rotation3d.quat`` is xyzw: convert here only.)
- Pixel coordinates are COLMAP's: the centre of the top-left pixel is (0.5, 0.5).
- The scene frame is the frame of the scene's COLMAP model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
import torch

from .errors import SceneFormatError

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


# -- rotations ---------------------------------------------------------------------------------
def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] from wxyz quaternions [..., 4] (normalised here)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def quat_to_matrix_torch(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from wxyz quaternions [..., 4]; differentiable."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """wxyz quaternions [..., 4] (w >= 0) from rotation matrices [..., 3, 3]."""
    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3)
    out = np.empty((flat.shape[0], 4))
    for i, m in enumerate(flat):
        # Shepperd's method on the largest diagonal term.
        t = np.trace(m)
        cands = [t, m[0, 0], m[1, 1], m[2, 2]]
        k = int(np.argmax(cands))
        if k == 0:
            s = np.sqrt(1.0 + t) * 2
            q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
        elif k == 1:
            s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
            q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
        elif k == 2:
            s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
            q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
        else:
            s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
            q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
        q = np.asarray(q)
        out[i] = (q if q[0] >= 0 else -q) / np.linalg.norm(q)
    return out.reshape(R.shape[:-2] + (4,))


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of wxyz quaternions (broadcasting): the rotation ``a`` after ``b``."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


# -- poses -------------------------------------------------------------------------------------
@dataclass
class Pose:
    """A rigid ``cam_from_world`` transform: ``x_cam = R @ x_world + t``."""

    rotation_wxyz: np.ndarray  # [4]
    translation: np.ndarray  # [3]

    def __post_init__(self) -> None:
        self.rotation_wxyz = np.asarray(self.rotation_wxyz, dtype=np.float64).reshape(4)
        self.translation = np.asarray(self.translation, dtype=np.float64).reshape(3)
        n = np.linalg.norm(self.rotation_wxyz)
        if not np.isfinite(n) or n < 1e-12 or not np.isfinite(self.translation).all():
            raise SceneFormatError(
                f"pose: invalid rotation {self.rotation_wxyz} / translation {self.translation}"
            )
        self.rotation_wxyz = self.rotation_wxyz / n

    @property
    def R(self) -> np.ndarray:
        return quat_to_matrix(self.rotation_wxyz)

    def matrix(self) -> np.ndarray:
        """4x4 ``cam_from_world`` matrix (float64)."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.translation
        return m

    def center(self) -> np.ndarray:
        """Camera centre in the world frame: ``-R^T t``."""
        return -self.R.T @ self.translation

    def inverse(self) -> Pose:
        Rt = self.R.T
        return Pose(matrix_to_quat(Rt), -Rt @ self.translation)

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> Pose:
        m = np.asarray(m, dtype=np.float64)
        return cls(matrix_to_quat(m[:3, :3]), m[:3, 3])

    @classmethod
    def identity(cls) -> Pose:
        return cls(np.array([1.0, 0, 0, 0]), np.zeros(3))

    @classmethod
    def look_at(cls, center: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> Pose:
        """cam_from_world of an OpenCV camera at ``center`` [3] looking at ``target`` [3], image y towards
        ``-up``."""
        f = np.asarray(target, float) - np.asarray(center, float)
        f /= np.linalg.norm(f)
        r = np.cross(f, np.asarray(up, float))
        r /= np.linalg.norm(r)
        dn = np.cross(f, r)
        R = np.stack([r, dn, f])  # rows: camera axes in world coordinates
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R, -R @ np.asarray(center, float)
        return cls.from_matrix(m)

    @classmethod
    def from_pycolmap(cls, rigid: pycolmap.Rigid3d) -> Pose:
        x, y, z, w = np.asarray(rigid.rotation.quat, dtype=np.float64)
        return cls(np.array([w, x, y, z]), np.asarray(rigid.translation, dtype=np.float64))

    def to_pycolmap(self) -> pycolmap.Rigid3d:
        w, x, y, z = self.rotation_wxyz
        return pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([x, y, z, w])), self.translation.copy())

    def to_json(self) -> dict[str, list[float]]:
        return {
            "rotation_wxyz": [float(v) for v in self.rotation_wxyz],
            "translation": [float(v) for v in self.translation],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "pose") -> Pose:
        try:
            return cls(np.asarray(d["rotation_wxyz"], float), np.asarray(d["translation"], float))
        except (KeyError, TypeError, ValueError) as e:
            raise SceneFormatError(
                f"{source}: cam_from_world needs 'rotation_wxyz' [w,x,y,z] and 'translation' [x,y,z] ({e})"
            ) from None


# -- cameras -----------------------------------------------------------------------------------
@dataclass
class Camera:
    """Intrinsics in a COLMAP camera model (``OPENCV``: fx, fy, cx, cy, k1, k2, p1, p2; ...)."""

    model: str
    width: int
    height: int
    params: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.width, self.height = int(self.width), int(self.height)
        self.params = [float(p) for p in self.params]
        try:
            pc = self.to_pycolmap()
        except Exception as e:  # pycolmap raises ValueError/RuntimeError for unknown models
            raise SceneFormatError(f"camera: unknown model {self.model!r} ({e})") from None
        if len(self.params) != len(pc.params) or not pc.verify_params():
            raise SceneFormatError(
                f"camera: model {self.model} needs {pc.params_info} ({len(pc.params)} values), "
                f"got {self.params}"
            )
        if self.width <= 0 or self.height <= 0:
            raise SceneFormatError(f"camera: bad size {self.width}x{self.height}")

    @classmethod
    def from_pycolmap(cls, cam: pycolmap.Camera) -> Camera:
        return cls(cam.model.name, cam.width, cam.height, list(np.asarray(cam.params, dtype=float)))

    def to_pycolmap(self, camera_id: int = 1) -> pycolmap.Camera:
        return pycolmap.Camera(
            model=self.model,
            width=self.width,
            height=self.height,
            params=list(self.params),
            camera_id=camera_id,
        )

    @classmethod
    def pinhole(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> Camera:
        return cls("PINHOLE", width, height, [fx, fy, cx, cy])

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "width": self.width, "height": self.height, "params": list(self.params)}

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "camera") -> Camera:
        try:
            return cls(d["model"], d["width"], d["height"], d["params"])
        except (KeyError, TypeError) as e:
            raise SceneFormatError(f"{source}: camera needs model, width, height, params ({e})") from None

    @property
    def is_pinhole(self) -> bool:
        return self.model in PINHOLE_MODELS

    def K(self) -> np.ndarray:
        """3x3 pinhole matrix (the distortion-free part of the model)."""
        return np.asarray(self.to_pycolmap().calibration_matrix(), dtype=np.float64)

    def undistorted(self) -> Camera:
        """The PINHOLE camera with this camera's focal lengths and principal point."""
        k = self.K()
        return Camera.pinhole(k[0, 0], k[1, 1], k[0, 2], k[1, 2], self.width, self.height)

    def scaled(self, s: float) -> Camera:
        """The same camera for an image resized by ``s`` (size rounded)."""
        pc = self.to_pycolmap()
        w, h = max(1, round(self.width * s)), max(1, round(self.height * s))
        pc.rescale(w, h)
        return Camera.from_pycolmap(pc)


def project_points(camera: Camera, pose: Pose, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [N, 2] (the camera's distortion applied) and depths [N] of world points [N, 3];
    points behind the camera are projected too (check the depth)."""
    X = np.asarray(X, np.float64).reshape(-1, 3)
    if len(X) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    M = pose.matrix()
    pc = X @ M[:3, :3].T + M[:3, 3]
    uv = np.asarray(camera.to_pycolmap().img_from_cam(np.ascontiguousarray(pc), check_cheirality=False))
    return uv, pc[:, 2]


def undistort_image(image: np.ndarray, camera: Camera) -> tuple[np.ndarray, Camera]:
    """Resample a photo taken with ``camera`` into its distortion-free pinhole camera.

    Args:
        image: [H, W, C] or [H, W] array (uint8 or float).
        camera: the photo's camera; H, W must match.
    Returns:
        (undistorted image of the same dtype and shape, the PINHOLE camera)
    """
    h, w = image.shape[:2]
    if (w, h) != (camera.width, camera.height):
        raise SceneFormatError(f"undistort: image is {w}x{h} but camera is {camera.width}x{camera.height}")
    pin = camera.undistorted()
    if camera.is_pinhole:
        return image.copy(), pin
    k = pin.K()
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    src = camera.to_pycolmap().img_from_cam(rays, check_cheirality=False).reshape(h, w, 2)
    grid = torch.from_numpy(np.stack([2 * src[..., 0] / w - 1, 2 * src[..., 1] / h - 1], -1)).float()[None]
    img = torch.from_numpy(np.asarray(image, dtype=np.float32))
    img = img[..., None] if img.ndim == 2 else img
    out = (
        torch.nn.functional.grid_sample(
            img.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    out = out.reshape(image.shape)
    if np.issubdtype(image.dtype, np.integer):
        out = np.clip(np.rint(out), np.iinfo(image.dtype).min, np.iinfo(image.dtype).max)
    return out.astype(image.dtype), pin


# -- COLMAP models -----------------------------------------------------------------------------
_MODEL_FILES = ("cameras", "images", "points3D")


def find_sparse_model(dataset: Path) -> Path:
    """The COLMAP model folder of a dataset: ``sparse/0``, ``sparse`` or the folder itself."""
    dataset = Path(dataset)
    for cand in (dataset / "sparse" / "0", dataset / "sparse", dataset):
        if any((cand / f"{f}{ext}").exists() for f in _MODEL_FILES for ext in (".bin", ".txt")):
            return cand
    raise SceneFormatError(
        f"{dataset}: no COLMAP model found (looked for cameras/images/points3D .bin or .txt in "
        f"sparse/0, sparse and the folder itself)"
    )


def read_colmap_model(path: Path) -> pycolmap.Reconstruction:
    """Read a COLMAP model folder (binary or text), checking every file is present and readable."""
    path = Path(path)
    if not path.is_dir():
        raise SceneFormatError(f"{path}: COLMAP model folder does not exist")
    for ext in (".bin", ".txt"):
        present = [f for f in _MODEL_FILES if (path / f"{f}{ext}").exists()]
        if present:
            missing = [f"{f}{ext}" for f in _MODEL_FILES if f not in present]
            if missing:
                raise SceneFormatError(f"{path}: COLMAP model is missing {', '.join(missing)}")
            break
    else:
        raise SceneFormatError(f"{path}: no COLMAP model (cameras/images/points3D .bin or .txt)")
    rec = pycolmap.Reconstruction()
    try:
        rec.read(str(path))
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise SceneFormatError(f"{path}: COLMAP model cannot be read ({msg})") from None
    if rec.num_reg_images() == 0:
        raise SceneFormatError(f"{path}: COLMAP model has no registered images")
    return rec


@dataclass
class ImageEntry:
    """One registered photo: name, camera and ``cam_from_world`` pose."""

    name: str
    camera: Camera
    cam_from_world: Pose

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cam_from_world": self.cam_from_world.to_json(),
            "camera": self.camera.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "image") -> ImageEntry:
        if "cam_from_world" not in d or "camera" not in d:
            raise SceneFormatError(f"{source}: an image entry needs 'cam_from_world' and 'camera'")
        return cls(
            str(d.get("name", "")),
            Camera.from_json(d["camera"], source),
            Pose.from_json(d["cam_from_world"], source),
        )


def model_images(rec: pycolmap.Reconstruction) -> list[ImageEntry]:
    """The registered images of a model, sorted by name."""
    out = []
    for image_id in rec.reg_image_ids():
        im = rec.image(image_id)
        out.append(
            ImageEntry(
                im.name,
                Camera.from_pycolmap(rec.camera(im.camera_id)),
                Pose.from_pycolmap(im.cam_from_world()),
            )
        )
    return sorted(out, key=lambda e: e.name)


def model_points(rec: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """Sparse points [P, 3] (float64) and their colours [P, 3] (uint8)."""
    ids = list(rec.point3D_ids())
    if not ids:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    xyz = np.stack([rec.point3D(i).xyz for i in ids])
    rgb = np.stack([rec.point3D(i).color for i in ids]).astype(np.uint8)
    return xyz, rgb


def build_model(
    images: list[ImageEntry], points: np.ndarray | None = None, colors: np.ndarray | None = None
) -> pycolmap.Reconstruction:
    """A COLMAP model from posed images (one camera per distinct intrinsics) and optional points."""
    rec = pycolmap.Reconstruction()
    cam_ids: dict[tuple, int] = {}
    for i, e in enumerate(images, start=1):
        key = (e.camera.model, e.camera.width, e.camera.height, tuple(e.camera.params))
        if key not in cam_ids:
            cam_ids[key] = len(cam_ids) + 1
            rec.add_camera_with_trivial_rig(e.camera.to_pycolmap(cam_ids[key]))
        im = pycolmap.Image(name=e.name, camera_id=cam_ids[key], image_id=i)
        rec.add_image_with_trivial_frame(im, e.cam_from_world.to_pycolmap())
    if points is not None:
        cols = np.zeros((len(points), 3), np.uint8) if colors is None else np.asarray(colors, np.uint8)
        for p, c in zip(np.asarray(points, float), cols, strict=True):
            rec.add_point3D(p, pycolmap.Track(), c)
    return rec
