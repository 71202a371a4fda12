"""INRIA PLY reader/writer: exact round trips, the exact INRIA layout, tolerant spelling, strict content."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from reconstruction import ply
from reconstruction.errors import SceneFormatError
from reconstruction.ply import read_ply, read_ply_header, write_ply
from reconstruction.splats import Splats


def rand_splats(n: int, degree: int = 3, seed: int = 0) -> Splats:
    r = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    f = lambda *shape: r.standard_normal(shape).astype(np.float32)  # noqa: E731
    return Splats(f(n, 3), f(n, 4), f(n, 3), f(n), f(n, 3), f(n, k, 3))


def columns(s: Splats) -> dict[str, np.ndarray]:
    """INRIA property name -> column [N] (float32)."""
    k = s.shN.shape[1]
    cols = {n: s.means[:, i] for i, n in enumerate("xyz")}
    cols.update({f"n{a}": np.zeros(len(s), np.float32) for a in "xyz"})
    cols.update({f"f_dc_{i}": s.sh0[:, i] for i in range(3)})
    cols.update({f"f_rest_{c * k + j}": s.shN[:, j, c] for c in range(3) for j in range(k)})
    cols["opacity"] = s.opacities
    cols.update({f"scale_{i}": s.scales[:, i] for i in range(3)})
    cols.update({f"rot_{i}": s.quats[:, i] for i in range(4)})
    return cols


_TYPE_NAMES = {"f4": "float", "f8": "double", "u1": "uchar", "i1": "char", "i2": "short", "u2": "ushort",
               "i4": "int", "u4": "uint"}  # fmt: skip


def write_custom(
    path,
    cols: dict[str, np.ndarray],
    types: dict[str, str] | None = None,
    endian: str = "<",
    fmt: str | None = None,
    extra_header: str = "",
    body_delta: int = 0,
    n: int | None = None,
):
    """A PLY with the given properties in the given order/types (the test's own independent writer)."""
    types = types or {}
    names = list(cols)
    n = len(next(iter(cols.values()))) if n is None and cols else (n or 0)
    dt = np.dtype([(name, endian + types.get(name, "f4")) for name in names])
    rec = np.empty(len(next(iter(cols.values()))) if cols else 0, dt)
    for name in names:
        rec[name] = cols[name]
    fmt = fmt or ("binary_little_endian" if endian == "<" else "binary_big_endian")
    header = f"ply\nformat {fmt} 1.0\nelement vertex {n}\n"
    header += "".join(f"property {_TYPE_NAMES[types.get(name, 'f4')]} {name}\n" for name in names)
    header += extra_header + "end_header\n"
    body = rec.tobytes()
    body = body[: len(body) + body_delta] if body_delta < 0 else body + b"\0" * body_delta
    path.write_bytes(header.encode() + body)
    return path


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_exact(tmp_path, degree):
    s = rand_splats(257, degree, seed=degree)
    p = write_ply(tmp_path / "a.ply", s)
    back = read_ply(p)
    assert back.equal(s) and back.sh_degree == degree
    assert read_ply_header(p) == (257, degree)
    assert all(getattr(back, f).dtype == np.float32 for f in ("means", "shN"))


def test_rewrite_is_byte_identical(tmp_path):
    s = rand_splats(100, 3)
    a = write_ply(tmp_path / "a.ply", s)
    b = write_ply(tmp_path / "b.ply", read_ply(a))
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))  # temporaries renamed away


def test_inria_layout(tmp_path):
    s = rand_splats(5, 1)
    data = write_ply(tmp_path / "a.ply", s).read_bytes()
    names = list(columns(s))
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 5\n"
              + "".join(f"property float {n}\n" for n in names) + "end_header\n").encode()  # fmt: skip
    assert data.startswith(header)
    body = np.frombuffer(data[len(header) :], "<f4").reshape(5, len(names))
    assert len(names) == 17 + 9
    for i, (name, col) in enumerate(columns(s).items()):
        np.testing.assert_array_equal(body[:, i], col, err_msg=name)
    # channel-major f_rest: f_rest_{c*K+k} = shN[:, k, c]
    np.testing.assert_array_equal(body[:, 9 : 9 + 9], s.shN.transpose(0, 2, 1).reshape(5, -1))


def test_empty_scene_and_torch_input(tmp_path):
    p = write_ply(tmp_path / "e.ply", rand_splats(0, 2))
    assert len(read_ply(p)) == 0 and read_ply(p).sh_degree == 2
    s = rand_splats(10, 3)
    t = s.to_torch()
    assert read_ply(write_ply(tmp_path / "t.ply", t)).equal(s)


def test_many_chunks_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(ply, "CHUNK_BYTES", 1000)  # 4 rows per chunk: exercises the chunk loop both ways
    s = rand_splats(103, 3)
    a = write_ply(tmp_path / "a.ply", s)
    assert read_ply(a).equal(s)
    monkeypatch.undo()
    assert write_ply(tmp_path / "b.ply", s).read_bytes() == a.read_bytes()


@pytest.mark.parametrize(
    "endian,types",
    [
        ("<", {}),
        (">", {}),
        ("<", "f8"),
        (">", "f8"),
    ],
    ids=["float-le", "float-be", "double-le", "double-be"],
)
def test_permuted_order_endianness_and_double(tmp_path, endian, types):
    s = rand_splats(64, 3, seed=4)
    cols = columns(s)
    names = list(cols)
    order = np.random.default_rng(1).permutation(len(names))
    shuffled = {names[i]: cols[names[i]] for i in order}
    if types == "f8":
        types = dict.fromkeys(names, "f8")
    p = write_custom(tmp_path / "c.ply", shuffled, types, endian)
    assert read_ply(p).equal(s)


def test_integer_types_and_no_normals(tmp_path):
    n = 20
    r = np.random.default_rng(2)
    shapes = [(n, 3), (n, 4), (n, 3), (n,), (n, 3)]
    s = Splats(
        *(r.integers(1, 100, size=sh).astype(np.float32) for sh in shapes), np.zeros((n, 0, 3), np.float32)
    )
    cols = {k: v for k, v in columns(s).items() if k not in ("nx", "ny", "nz")}
    kinds = ["u1", "i1", "i2", "u2", "i4", "u4", "f4", "f8"]
    types = {name: kinds[i % len(kinds)] for i, name in enumerate(cols)}
    p = write_custom(tmp_path / "i.ply", cols, types, ">")
    assert read_ply(p).equal(s)


def test_comments_and_crlf_header(tmp_path):
    s = rand_splats(3, 0)
    p = write_custom(tmp_path / "c.ply", columns(s), extra_header="comment made by a test\nobj_info x\n")
    assert read_ply(p).equal(s)
    data = p.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    p.write_bytes(data[:end].replace(b"\n", b"\r\n") + data[end:])
    assert read_ply(p).equal(s)


# -- bad inputs ----------------------------------------------------------------------------------------
def _good(tmp_path, **kw):
    return write_custom(tmp_path / "bad.ply", columns(rand_splats(4, 1)), **kw)


def _replace_header(tmp_path, old: bytes, new: bytes):
    p = write_ply(tmp_path / "bad.ply", rand_splats(4, 1))
    p.write_bytes(p.read_bytes().replace(old, new, 1))
    return p


def _with_value(tmp_path, field, index, value):
    s = rand_splats(4, 3)
    arr = getattr(s, field)
    arr[index] = value
    cols = columns(s)
    return write_custom(tmp_path / "bad.ply", cols)


def _drop(tmp_path, *names):
    cols = {k: v for k, v in columns(rand_splats(4, 1)).items() if k not in names}
    return write_custom(tmp_path / "bad.ply", cols)


def _add(tmp_path, *names):
    cols = columns(rand_splats(4, 1))
    cols.update({n: np.zeros(4, np.float32) for n in names})
    return write_custom(tmp_path / "bad.ply", cols)


BAD = {
    "empty file": (lambda t: _raw(t, b""), "empty"),
    "directory": (lambda t: (t / "dir.ply").mkdir() or t / "dir.ply", "is a directory"),
    "missing": (lambda t: t / "nope.ply", "does not exist"),
    "bad magic": (lambda t: _raw(t, b"PK\x03\x04 zip data"), "not a PLY"),
    "ascii": (lambda t: _replace_header(t, b"binary_little_endian", b"ascii"), "ASCII"),
    "unknown format": (lambda t: _replace_header(t, b"binary_little_endian", b"binary_middle"), "format"),
    "no end_header, binary follows": (lambda t: _replace_header(t, b"end_header\n", b""), "end_header"),
    "no end_header, eof": (
        lambda t: _raw(t, b"ply\nformat binary_little_endian 1.0\nelement vertex 0\n"),
        "end_header",
    ),
    "missing properties": (lambda t: _drop(t, "opacity", "rot_3"), r"missing.*opacity, rot_3"),
    "unknown properties": (lambda t: _add(t, "red", "filter_3D"), r"unknown.*red, filter_3D"),
    "f_rest gap": (lambda t: _f_rest_gap(t), r"not contiguous.*f_rest_8 missing"),
    "f_rest count": (lambda t: _f_rest_count(t), "12 f_rest"),
    "list property": (
        lambda t: _replace_header(t, b"property float nx\n", b"property list uchar int nx\n"),
        "list property",
    ),
    "extra element": (
        lambda t: _replace_header(
            t, b"end_header\n", b"element face 0\nproperty list uchar int vertex_indices\nend_header\n"
        ),
        "extra element.*face",
    ),
    "extra element no props": (
        lambda t: _replace_header(t, b"end_header\n", b"element face 0\nend_header\n"),
        "extra element.*face",
    ),
    "duplicate property": (
        lambda t: _replace_header(t, b"property float nx\n", b"property float x\n"),
        "duplicate",
    ),
    "unknown type": (
        lambda t: _replace_header(t, b"property float nx\n", b"property half nx\n"),
        "unknown type",
    ),
    "truncated body": (lambda t: _good(t, body_delta=-5), r"truncated.*4 vertices.*holds 3"),
    "body longer": (lambda t: _good(t, body_delta=7), "longer than the header"),
    "nan means": (lambda t: _with_value(t, "means", (2, 1), np.nan), "means.*NaN"),
    "inf shN": (lambda t: _with_value(t, "shN", (3, 14, 2), -np.inf), "shN.*Inf"),
    "inf opacity": (lambda t: _with_value(t, "opacities", 0, np.inf), "opacities.*Inf"),
    "zero quaternion": (lambda t: _with_value(t, "quats", 1, 0.0), "quats.*zero"),
}


def _raw(t, data: bytes):
    (t / "bad.ply").write_bytes(data)
    return t / "bad.ply"


def _f_rest_gap(t):
    cols = {k: v for k, v in columns(rand_splats(4, 1)).items() if k != "f_rest_8"}
    cols["f_rest_9"] = np.zeros(4, np.float32)
    return write_custom(t / "bad.ply", cols)


def _f_rest_count(t):
    cols = columns(rand_splats(4, 1))
    cols.update({f"f_rest_{i}": np.zeros(4, np.float32) for i in range(9, 12)})
    return write_custom(t / "bad.ply", cols)


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_raises_one_line_naming_file(tmp_path, case):
    make, pattern = BAD[case]
    path = make(tmp_path)
    with pytest.raises(SceneFormatError) as ei:
        read_ply(path)
    msg = str(ei.value)
    assert str(path) in msg and "\n" not in msg
    assert re.search(pattern, msg), msg
    if case not in ("nan means", "inf shN", "inf opacity", "zero quaternion"):  # values: not in the header
        with pytest.raises(SceneFormatError, match=pattern):
            read_ply_header(path)


def test_bad_value_in_a_late_chunk_names_the_field(tmp_path, monkeypatch):
    monkeypatch.setattr(ply, "CHUNK_BYTES", 500)
    s = rand_splats(50, 3)
    p = write_ply(tmp_path / "a.ply", s)
    data = bytearray(p.read_bytes())
    header_len = data.index(b"end_header\n") + len(b"end_header\n")
    row = np.frombuffer(data, "<f4", offset=header_len).reshape(50, 62).copy()
    row[47, 9 + 20] = np.nan  # an f_rest value in the last chunk
    p.write_bytes(bytes(data[:header_len]) + row.tobytes())
    with pytest.raises(SceneFormatError, match=r"shN holds NaN"):
        read_ply(p)


@pytest.mark.parametrize("field,index,value,pattern", [
    ("scales", (3, 0), np.nan, "scales.*NaN"),
    ("quats", 2, 0.0, "quats.*zero"),
])  # fmt: skip
def test_write_refuses_bad_values_and_leaves_nothing(tmp_path, field, index, value, pattern):
    s = rand_splats(9, 2)
    getattr(s, field)[index] = value
    with pytest.raises(SceneFormatError, match=pattern) as ei:
        write_ply(tmp_path / "w.ply", s)
    assert str(tmp_path / "w.ply") in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_bad_shapes(tmp_path):
    s = rand_splats(9, 2)
    s.sh0 = s.sh0[:5]
    with pytest.raises(SceneFormatError, match=r"sh0 has shape"):
        write_ply(tmp_path / "w.ply", s)
    s = rand_splats(9, 2)
    s.shN = torch.zeros(9, 4, 3)
    with pytest.raises(SceneFormatError, match="coefficients"):
        write_ply(tmp_path / "w.ply", s)
