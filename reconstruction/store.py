"""The scene store: scenes made of immutable versions, and an atomically moved ``current`` pointer.

Layout (a directory today; every access goes through this module so an fsspec URL can come later)::

    STORE/
      NAME/
        .lock                 held (flock) by the one writer of this scene
        current               {"version": 3}; replaced only by an atomic rename
        log.jsonl             append-only history of pointer moves (new version, rollback)
        images/<sha256>.<ext> photos, content-addressed, shared by versions
        .staging/             versions being written (removed on failure)
        v1/ v2/ ...           immutable versions:
          splats.ply          INRIA 3DGS PLY
          sparse/             COLMAP binary model (cameras, images, points3D, rigs, frames)
          images.json         registered images: name, sha256, cam_from_world, camera
          meta.json           version, parent, created_at, reason, flow_run_id, lineage, counts

A version is written completely into ``.staging``, fsynced, read back and validated, renamed to
``vN``, and only then does ``current`` move. A second writer on the same scene gets SceneLockedError.

Example::

    store = SceneStore("/data/scenes")
    scene = store.scene("plaza")
    with scene.writer() as w:
        v = w.add_version(splats, model, images, image_files, reason="import")
    splats = scene.version().load_splats()
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from .cameras import ImageEntry, read_colmap_model
from .errors import SceneFormatError, SceneLockedError, SceneStoreError
from .ply import read_ply, read_ply_header, verify_ply, write_ply
from .splats import Splats

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_scene_ref(ref: str) -> tuple[Path, str]:
    """Split ``STORE/NAME`` into the store folder and the scene name."""
    ref = ref.rstrip("/")
    store, _, name = ref.rpartition("/")
    if not name or not _NAME_RE.match(name):
        raise SceneStoreError(
            f"{ref!r}: expected STORE/NAME with NAME made of letters, digits, '.', '_', '-'"
        )
    return Path(store or "."), name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class StagedVersion:
    """A version written into ``.staging`` and not yet published (``SceneWriter.stage_version``)."""

    number: int
    path: Path
    parent: int | None
    expected_base: int | None | str
    reason: str
    num_gaussians: int
    num_images: int

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "path": str(self.path), "parent": self.parent,
                "expected_base": self.expected_base, "reason": self.reason,
                "num_gaussians": self.num_gaussians, "num_images": self.num_images}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StagedVersion:
        return cls(**{**d, "path": Path(d["path"])})


@dataclass
class StoredImage:
    """A registered photo of a version: pose, camera and the content hash of its file (if stored)."""

    entry: ImageEntry
    sha256: str | None = None
    file: str | None = None  # path relative to the scene folder

    def to_json(self) -> dict[str, Any]:
        return {**self.entry.to_json(), "sha256": self.sha256, "file": self.file}


class SceneVersion:
    """A read-only view of one version folder."""

    def __init__(self, scene: Scene, number: int):
        self.scene = scene
        self.number = number
        self.path = scene.root / f"v{number}"
        if not (self.path / "meta.json").is_file():
            raise SceneStoreError(f"{scene.ref}: version {number} does not exist")

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    @property
    def splats_path(self) -> Path:
        return self.path / "splats.ply"

    @property
    def sparse_path(self) -> Path:
        return self.path / "sparse"

    def load_splats(self) -> Splats:
        return read_ply(self.splats_path)

    def load_model(self) -> pycolmap.Reconstruction:
        return read_colmap_model(self.sparse_path)

    def load_points(self) -> np.ndarray:
        """The model's 3D points [N, 3] (float64): what the ground under a new object is measured on."""
        rec = self.load_model()
        return np.array([p.xyz for p in rec.points3D.values()], np.float64).reshape(-1, 3)

    def images(self) -> list[StoredImage]:
        src = self.path / "images.json"
        out = []
        for d in json.loads(src.read_text()):
            out.append(StoredImage(ImageEntry.from_json(d, str(src)), d.get("sha256"), d.get("file")))
        return out

    def image(self, name: str) -> StoredImage:
        for im in self.images():
            if im.entry.name == name:
                return im
        raise SceneStoreError(f"{self.scene.ref}: version {self.number} has no image named {name!r}")

    def image_path(self, name: str) -> Path | None:
        im = self.image(name)
        return self.scene.root / im.file if im.file else None

    def info(self) -> dict[str, Any]:
        n, degree = read_ply_header(self.splats_path)
        meta = self.meta
        return {
            "scene": self.scene.ref,
            "version": self.number,
            "current": self.scene.current_version() == self.number,
            "parent": meta.get("parent"),
            "created_at": meta.get("created_at"),
            "reason": meta.get("reason"),
            "flow_run_id": meta.get("flow_run_id"),
            "lineage": meta.get("lineage", {}),
            "num_gaussians": n,
            "sh_degree": degree,
            "num_points3D": meta.get("num_points3D"),
            "images": [im.to_json() for im in self.images()],
        }


class Scene:
    def __init__(self, store: SceneStore, name: str):
        if not _NAME_RE.match(name):
            raise SceneStoreError(f"{name!r}: scene names are letters, digits, '.', '_', '-'")
        self.store = store
        self.name = name
        self.root = store.root / name
        self.ref = f"{store.root}/{name}"

    @property
    def exists(self) -> bool:
        return (self.root / "current").is_file()

    def _require(self) -> None:
        if not self.exists:
            raise SceneStoreError(f"{self.ref}: no such scene (import one with `idu scene import`)")

    def copy_to(self, store: SceneStore | str | os.PathLike, name: str | None = None, *,
                caches: bool = True) -> Scene:  # fmt: skip
        """A copy of this scene as ``name`` (default: the same name) in ``store``: every version, image and
        the log, and the derived caches (registration index, features) when ``caches``; never a writer's
        lock, work or staging folder. The copy must not exist yet."""
        self._require()
        dst = (store if isinstance(store, SceneStore) else SceneStore(store)).scene(name or self.name)
        skip = [".work", ".lock", ".staging"] + ([] if caches else [".cache"])
        if dst.root.exists():
            raise SceneStoreError(f"{dst.ref}: already exists (a copy needs a new scene)")
        shutil.copytree(self.root, dst.root, ignore=shutil.ignore_patterns(*skip))
        return dst

    def current_version(self) -> int | None:
        p = self.root / "current"
        if not p.is_file():
            return None
        try:
            return int(json.loads(p.read_text())["version"])
        except (ValueError, KeyError, TypeError) as e:
            raise SceneStoreError(f"{p}: unreadable current pointer ({e})") from None

    def version_numbers(self) -> list[int]:
        if not self.root.is_dir():
            return []
        nums = []
        for p in self.root.iterdir():
            if p.is_dir() and re.fullmatch(r"v\d+", p.name) and (p / "meta.json").is_file():
                nums.append(int(p.name[1:]))
        return sorted(nums)

    def version(self, number: int | None = None) -> SceneVersion:
        """A version (default: ``current``)."""
        self._require()
        return SceneVersion(self, self.current_version() if number is None else int(number))

    def versions(self) -> list[dict[str, Any]]:
        self._require()
        out = []
        for n in self.version_numbers():
            m = SceneVersion(self, n).meta
            out.append(
                {
                    "version": n,
                    "parent": m.get("parent"),
                    "created_at": m.get("created_at"),
                    "reason": m.get("reason"),
                    "num_gaussians": m.get("num_gaussians"),
                }
            )
        return out

    @contextlib.contextmanager
    def writer(self) -> Iterator[SceneWriter]:
        """Hold the scene's write lock; a second writer (any process) gets SceneLockedError."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
                raise SceneLockedError(
                    f"{self.ref}: another writer holds the scene lock ({holder}); retry when it has finished"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}".encode(), 0)
            self._clean_leftovers()
            yield SceneWriter(self)
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing releases the flock

    def _clean_leftovers(self) -> None:
        """Remove what a killed writer left (staged versions, temporary files); called with the lock held,
        so nobody else is writing them."""
        staging = self.root / ".staging"
        if staging.is_dir():
            for d in staging.iterdir():
                log.warning("%s: removing %s left by an interrupted writer", self.ref, d.name)
                shutil.rmtree(d, ignore_errors=True)
        for folder in (self.root, self.root / "images"):
            if folder.is_dir():
                for f in folder.glob(".*.tmp"):
                    with contextlib.suppress(OSError):
                        f.unlink()

    def rollback(self, to: int, reason: str | None = None) -> int:
        """Move ``current`` to an older version; nothing is deleted."""
        with self.writer() as w:
            return w.set_current(to, event="rollback", reason=reason)

    def log(self) -> list[dict[str, Any]]:
        p = self.root / "log.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


class SceneWriter:
    """Operations that need the scene lock (obtained through ``Scene.writer()``)."""

    def __init__(self, scene: Scene):
        self.scene = scene

    def _log(self, event: dict[str, Any]) -> None:
        with open(self.scene.root / "log.jsonl", "a") as f:
            f.write(json.dumps({"at": _now(), **event}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def set_current(self, version: int, event: str = "set_current", reason: str | None = None) -> int:
        SceneVersion(self.scene, version)  # must exist
        prev = self.scene.current_version()
        _write_json_atomic(self.scene.root / "current", {"version": int(version)})
        self._log({"event": event, "from": prev, "to": int(version), "reason": reason})
        return int(version)

    def store_image(self, src: Path) -> tuple[str, str]:
        """Copy a photo into the content-addressed pool; returns (sha256, path relative to the scene)."""
        src = Path(src)
        sha = file_sha256(src)
        rel = f"images/{sha}{src.suffix.lower()}"
        dst = self.scene.root / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dst)
            _fsync_dir(dst.parent)
        return sha, rel

    def add_version(self, *args, **kwargs) -> int:
        """Write the next version completely, validate it, then move ``current`` to it: ``stage_version``
        (same arguments) then ``publish``. Returns the new version number."""
        return self.publish(self.stage_version(*args, **kwargs))

    def stage_version(
        self,
        splats: Splats | Callable[[Path], int],
        model: pycolmap.Reconstruction,
        images: list[ImageEntry],
        image_files: dict[str, Path] | None = None,
        *,
        reason: str,
        parent: int | None | str = "current",
        expected_base: int | None | str = "any",
        flow_run_id: str | None = None,
        lineage: dict[str, Any] | None = None,
        extra_meta: dict[str, Any] | None = None,
    ) -> StagedVersion:
        """Write the next version into ``.staging`` (complete, fsynced, read back, read-only); nobody sees it
        until ``publish`` renames it into place. ``discard`` removes it. The staged folder lives as long as
        this writer holds the lock: the next writer removes leftovers.

        Args:
            splats: the version's Gaussians (validated here), or a function that writes them as an INRIA PLY
                to the path it is given and returns their number (a merge streams rows from the parent).
            model: its COLMAP model.
            images: its registered images (poses in the scene frame).
            image_files: photo files by image name, copied into the pool.
            parent: the version this one derives from (default: the current one).
            expected_base: if not "any", refuse (SceneStoreError) unless ``current`` equals it
                (a merge computed against an older version must be re-done); checked again by ``publish``.
        """
        scene = self.scene
        if not callable(splats):
            splats = splats.to_numpy().validate("new version splats")
        current = scene.current_version()
        if expected_base != "any" and current != expected_base:
            raise SceneStoreError(
                f"{scene.ref}: current version is {current}, not {expected_base}; "
                "re-run against the new version"
            )
        parent = current if parent == "current" else parent
        number = max(scene.version_numbers(), default=0) + 1
        staging = scene.root / ".staging" / f"v{number}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            stored = []
            for e in images:
                src = (image_files or {}).get(e.name)
                sha, rel = self.store_image(src) if src is not None else (None, None)
                stored.append(StoredImage(e, sha, rel))
            if callable(splats):
                num_gaussians = int(splats(staging / "splats.ply"))
            else:
                write_ply(staging / "splats.ply", splats)
                num_gaussians = len(splats)
            _, sh_degree = read_ply_header(staging / "splats.ply")
            (staging / "sparse").mkdir()
            model.write_binary(str(staging / "sparse"))
            (staging / "images.json").write_text(json.dumps([s.to_json() for s in stored], indent=1) + "\n")
            meta = {
                "version": number,
                "parent": parent,
                "created_at": _now(),
                "reason": reason,
                "flow_run_id": flow_run_id,
                "lineage": lineage or {},
                "num_gaussians": num_gaussians,
                "sh_degree": sh_degree,
                "num_images": len(stored),
                "num_points3D": int(model.num_points3D()),
                **(extra_meta or {}),
            }
            (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            _fsync_tree(staging)
            self._validate(staging, num_gaussians, len(stored))
            for dirpath, _, files in os.walk(staging):
                for f in files:
                    os.chmod(os.path.join(dirpath, f), 0o444)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return StagedVersion(number, staging, parent, expected_base, reason, num_gaussians, len(stored))

    def publish(self, staged: StagedVersion) -> int:
        """Rename a staged version into place (``vN``) and move ``current`` to it. Refused
        (SceneStoreError, the staged folder removed) when ``current`` moved since it was staged."""
        scene = self.scene
        current = scene.current_version()
        if staged.expected_base != "any" and current != staged.expected_base:
            self.discard(staged)
            raise SceneStoreError(
                f"{scene.ref}: current version is {current}, not {staged.expected_base}; "
                "re-run against the new version"
            )
        final = scene.root / f"v{staged.number}"
        if final.exists():
            self.discard(staged)
            raise SceneStoreError(f"{scene.ref}: version {staged.number} was written by someone else")
        if not staged.path.is_dir():
            raise SceneStoreError(f"{staged.path}: the staged version is gone (discarded or cleaned up)")
        os.rename(staged.path, final)
        _fsync_dir(scene.root)
        self.set_current(staged.number, event="new_version", reason=staged.reason)
        log.info(
            "%s: wrote version %d (%d Gaussians, %d images)",
            scene.ref, staged.number, staged.num_gaussians, staged.num_images,
        )  # fmt: skip
        return staged.number

    def discard(self, staged: StagedVersion) -> bool:
        """Remove a staged version that was not published; True if there was one to remove."""
        if not staged.path.is_dir():
            return False
        shutil.rmtree(staged.path, ignore_errors=True)
        log.info("%s: discarded staged version %d", self.scene.ref, staged.number)
        return True

    @staticmethod
    def _validate(folder: Path, n: int, num_images: int) -> None:
        back, _ = verify_ply(folder / "splats.ply")  # streamed: no second copy of a large scene in memory
        if back != n:
            raise SceneFormatError(f"{folder}/splats.ply: wrote {n} Gaussians but read back {back}")
        rec = pycolmap.Reconstruction()
        rec.read_binary(str(folder / "sparse"))
        if rec.num_reg_images() != num_images:
            raise SceneFormatError(
                f"{folder}/sparse: model holds {rec.num_reg_images()} registered images, "
                f"expected {num_images}"
            )


class SceneStore:
    """A folder of scenes."""

    def __init__(self, root: str | os.PathLike):
        root_s = str(root)
        if "://" in root_s and not root_s.startswith("file://"):
            raise SceneStoreError(f"{root_s}: only local stores are supported so far")
        self.root = Path(root_s.removeprefix("file://"))

    def scene(self, name: str) -> Scene:
        return Scene(self, name)

    def scenes(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "current").is_file())

    @classmethod
    def from_ref(cls, ref: str) -> Scene:
        """``STORE/NAME`` -> Scene."""
        root, name = parse_scene_ref(ref)
        return cls(root).scene(name)
