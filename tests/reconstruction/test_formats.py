"""Export formats: .splat (byte-exact against the reference converter's arithmetic), .spz (via gsply, RUB
frame), and the export dispatcher with crop boxes."""

from __future__ import annotations

from io import BytesIO

import gsply
import numpy as np
import pytest

from reconstruction.cameras import quat_to_matrix
from reconstruction.errors import SceneFormatError
from reconstruction.formats import (
    SPLAT_RECORD,
    _flip_yz,
    export,
    read_splat,
    read_splats,
    read_spz,
    write_splat,
    write_spz,
)
from reconstruction.ply import read_ply
from reconstruction.splats import SH_C0, Splats


def rand_splats(n: int, degree: int = 3, seed: int = 0, extent: float = 3.0) -> Splats:
    r = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return Splats(
        means=r.uniform(-extent, extent, (n, 3)).astype(np.float32),
        quats=r.standard_normal((n, 4)).astype(np.float32),
        scales=r.uniform(-6, 0, (n, 3)).astype(np.float32),
        opacities=r.uniform(-4, 4, n).astype(np.float32),
        sh0=r.uniform(-1.5, 1.5, (n, 3)).astype(np.float32),
        shN=r.uniform(-0.9, 0.9, (n, k, 3)).astype(np.float32),
    )


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def reference_splat_bytes(s: Splats) -> bytes:
    """antimatter15/splat convert.py, per Gaussian, on float32 PLY values (numpy 2 scalar semantics)."""
    sc, op = s.scales, s.opacities
    order = np.argsort(-np.exp(sc[:, 0] + sc[:, 1] + sc[:, 2]) / (1 + np.exp(-op)), kind="stable")
    buf = BytesIO()
    for i in order:
        position = s.means[i].astype(np.float32)
        scales = np.exp(sc[i].astype(np.float32))
        rot = s.quats[i].astype(np.float32)
        f = s.sh0[i]
        color = np.array(
            [0.5 + SH_C0 * f[0], 0.5 + SH_C0 * f[1], 0.5 + SH_C0 * f[2], 1 / (1 + np.exp(-op[i]))]
        )
        buf.write(position.tobytes())
        buf.write(scales.tobytes())
        buf.write((color * 255).clip(0, 255).astype(np.uint8).tobytes())
        buf.write(((rot / np.linalg.norm(rot)) * 128 + 128).clip(0, 255).astype(np.uint8).tobytes())
    return buf.getvalue()


# -- .splat --------------------------------------------------------------------------------------------
def test_splat_matches_reference_converter_bytes(tmp_path):
    s = rand_splats(300, 3)
    data = write_splat(tmp_path / "a.splat", s).read_bytes()
    assert len(data) == 32 * 300 and SPLAT_RECORD.itemsize == 32
    assert data == reference_splat_bytes(s)


def test_splat_round_trip_within_uint8(tmp_path):
    s = rand_splats(500, 2, seed=3)
    back = read_splat(write_splat(tmp_path / "a.splat", s))
    sc, op = s.scales.astype(np.float64), s.opacities.astype(np.float64)
    order = np.argsort(-np.exp(sc.sum(1)) * sigmoid(op), kind="stable")
    o = select_np(s, order)
    assert back.sh_degree == 0 and len(back) == 500
    np.testing.assert_array_equal(back.means, o.means)  # exact, in descending size * opacity order
    np.testing.assert_allclose(back.scales, o.scales, atol=1e-5)
    rgb = np.clip(0.5 + SH_C0 * o.sh0, 0, 1)
    np.testing.assert_allclose(np.clip(0.5 + SH_C0 * back.sh0, 0, 1), rgb, atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(sigmoid(back.opacities), sigmoid(o.opacities), atol=1 / 255 + 1e-6)
    qn = o.quats / np.linalg.norm(o.quats, axis=1, keepdims=True)
    np.testing.assert_allclose(back.quats, qn, atol=1 / 128 + 1e-6)


def select_np(s: Splats, idx) -> Splats:
    return Splats(*(getattr(s, f)[idx] for f in ("means", "quats", "scales", "opacities", "sh0", "shN")))


@pytest.mark.parametrize("size", [31, 33, 65])
def test_splat_bad_size(tmp_path, size):
    p = tmp_path / "x.splat"
    p.write_bytes(b"\0" * size)
    with pytest.raises(SceneFormatError, match=r"x\.splat.*not a multiple of 32"):
        read_splat(p)


def test_splat_missing_and_directory(tmp_path):
    with pytest.raises(SceneFormatError, match="does not exist"):
        read_splat(tmp_path / "none.splat")
    with pytest.raises(SceneFormatError, match="directory"):
        read_splat(tmp_path)


# -- .spz ----------------------------------------------------------------------------------------------
def assert_spz_close(back: Splats, s: Splats, pos_step: float = 1 / 4096):
    assert back.sh_degree == s.sh_degree and len(back) == len(s)
    np.testing.assert_allclose(back.means, s.means, atol=pos_step / 2 + 1e-6)
    np.testing.assert_allclose(back.scales, s.scales, atol=1 / 32 + 1e-5)
    np.testing.assert_allclose(sigmoid(back.opacities), sigmoid(s.opacities), atol=1 / 510 + 1e-5)
    np.testing.assert_allclose(back.sh0, s.sh0, atol=0.5 / (0.15 * 255) + 1e-5)
    np.testing.assert_allclose(back.shN, s.shN, atol=1 / 256 + 1e-5)
    # rotations: smallest-three 9-bit; compare the rotations (q and -q are the same)
    Ra, Rb = quat_to_matrix(back.quats), quat_to_matrix(s.quats)
    assert np.abs(Ra - Rb).max() < 5e-3


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spz_round_trip_within_quantisation(tmp_path, degree):
    s = rand_splats(400, degree, seed=degree)
    p = write_spz(tmp_path / "a.spz", s)
    assert p.stat().st_size < 0.5 * 400 * (14 + 3 * (degree + 1) ** 2) * 4
    assert_spz_close(read_spz(p), s)


def test_spz_is_stored_in_rub_and_gsply_does_not_convert(tmp_path):
    s = rand_splats(50, 3, seed=7)
    raw = gsply.read_spz(write_spz(tmp_path / "rub.spz", s))  # what a spec reader sees
    flipped = _flip_yz(s)
    np.testing.assert_allclose(raw.means, s.means * np.array([1, -1, -1]), atol=1 / 8192 + 1e-6)
    np.testing.assert_allclose(raw.shN, flipped.shN, atol=1 / 256 + 1e-5)
    Ra, Rb = quat_to_matrix(raw.quats), quat_to_matrix(flipped.quats)
    assert np.abs(Ra - Rb).max() < 5e-3
    # the flip is a rotation of the frame: the same covariance seen with y, z negated
    F = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(quat_to_matrix(flipped.quats), F @ quat_to_matrix(s.quats) @ F, atol=1e-6)
    # RDF files: stored as given
    raw = gsply.read_spz(write_spz(tmp_path / "rdf.spz", s, coordinate_system="RDF"))
    np.testing.assert_allclose(raw.means, s.means, atol=1 / 8192 + 1e-6)
    assert_spz_close(read_spz(tmp_path / "rdf.spz", coordinate_system="RDF"), s)


def test_flip_yz_is_exact_involution():
    s = rand_splats(20, 3)
    assert _flip_yz(_flip_yz(s)).equal(s)


def test_spz_large_extent_uses_fewer_fractional_bits(tmp_path):
    s = rand_splats(100, 1, seed=2, extent=5000.0)
    back = read_spz(write_spz(tmp_path / "big.spz", s))
    assert_spz_close(back, s, pos_step=1 / 256)


@pytest.mark.parametrize("content", [b"", b"not an spz file at all", b"\x1f\x8b\x08\x00garbage"])
def test_spz_bad_file(tmp_path, content):
    p = tmp_path / "bad.spz"
    p.write_bytes(content)
    with pytest.raises(SceneFormatError, match=r"bad\.spz") as ei:
        read_spz(p)
    assert "\n" not in str(ei.value)


def test_spz_refuses_nan(tmp_path):
    s = rand_splats(5, 0)
    s.sh0[1, 2] = np.nan
    with pytest.raises(SceneFormatError, match="sh0.*NaN"):
        write_spz(tmp_path / "n.spz", s)
    assert not list(tmp_path.iterdir())


# -- export ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["ply", "splat", "spz"])
def test_export_formats(tmp_path, fmt):
    s = rand_splats(64, 3)
    p = export(s, tmp_path / f"scene.{fmt}", fmt)
    back = read_splats(p)
    assert len(back) == 64
    if fmt == "ply":
        assert back.equal(s)


def test_export_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        export(rand_splats(3), tmp_path / "x.obj", "obj")


def test_export_crop_box_axis_aligned_and_rotated(tmp_path):
    means = np.array(
        [[0, 0, 0], [0.9, 0, 0], [1.1, 0, 0], [0, 0.45, 0], [0, 0.55, 0], [1.0, 0.5, 0.25]], np.float32
    )
    s = rand_splats(len(means), 1)
    s.means = means
    # axis aligned 2 x 1 x 0.5 box at the origin: the corner (1, 0.5, 0.25) is kept
    out = read_ply(export(s, tmp_path / "a.ply", "ply", crop_box=([0, 0, 0], [2, 1, 0.5], [1, 0, 0, 0])))
    np.testing.assert_array_equal(out.means, means[[0, 1, 3, 5]])
    # the same box turned 90 degrees about z: its long axis is now y
    q = [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]
    out = read_ply(export(s, tmp_path / "b.ply", "ply", crop_box=([0, 0, 0], [2, 1, 0.5], q)))
    np.testing.assert_array_equal(out.means, means[[0, 3, 4]])
    # off-centre box
    out = read_ply(export(s, tmp_path / "c.ply", "ply", crop_box=([1, 0, 0], [0.4, 0.4, 0.4], [1, 0, 0, 0])))
    np.testing.assert_array_equal(out.means, means[[1, 2]])
    assert out.shN.shape == (2, 3, 3)
