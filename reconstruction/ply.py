"""INRIA 3D Gaussian Splatting PLY files, read and written with numpy (no plyfile: it is GPL).

The layout written is the INRIA one, exactly::

    ply
    format binary_little_endian 1.0
    element vertex N
    property float x            # means
    property float y
    property float z
    property float nx           # zeros
    property float ny
    property float nz
    property float f_dc_0       # sh0
    property float f_dc_1
    property float f_dc_2
    property float f_rest_0     # shN, channel-major: f_rest_{c*K + k} = shN[:, k, c]
    ...
    property float f_rest_{3K-1}
    property float opacity      # logit
    property float scale_0      # log
    property float scale_1
    property float scale_2
    property float rot_0        # quaternion w, x, y, z
    property float rot_1
    property float rot_2
    property float rot_3
    end_header
    <N rows of float32, little endian>

Reading is stricter about what a file holds than about how it spells it: big or little endian, any property
order, and float / double / (u)char / (u)short / (u)int properties (converted to float32) are accepted;
normals are optional and ignored. Anything else (ASCII bodies, list properties, other elements, unknown
properties, a body shorter or longer than the header says, NaN/Inf values, zero quaternions) raises
``SceneFormatError`` with a one-line message naming the file.

Both directions stream through a fixed-size chunk buffer into / out of the column arrays, so the extra
memory is bounded (a few MiB) whatever the number of Gaussians.

Example::

    splats = read_ply("point_cloud.ply")          # Splats of float32 numpy arrays
    write_ply("copy.ply", splats)                 # byte-identical to the input if it was written here
    n, degree = read_ply_header("point_cloud.ply")
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SceneFormatError
from .splats import Splats, num_sh_bases

# PLY scalar type names (both spellings of the spec) -> numpy type codes without byte order.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">"}
_NUM_REST_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3}
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
_NORMALS = ("nx", "ny", "nz")
_REST_RE = re.compile(r"f_rest_(0|[1-9][0-9]*)")
_MAX_HEADER_BYTES = 1 << 20
# Chunk size of the streaming read/write: large enough that per-chunk numpy overhead vanishes, small
# enough to stay in the CPU caches between the file copy and the column copies.
CHUNK_BYTES = 1 << 20

# property name -> (target array, column); the target "rest" column is the channel-major f_rest index.
_TARGETS: dict[str, tuple[str, int]] = {
    "x": ("means", 0), "y": ("means", 1), "z": ("means", 2),
    "f_dc_0": ("sh0", 0), "f_dc_1": ("sh0", 1), "f_dc_2": ("sh0", 2),
    "opacity": ("opacities", 0),
    "scale_0": ("scales", 0), "scale_1": ("scales", 1), "scale_2": ("scales", 2),
    "rot_0": ("quats", 0), "rot_1": ("quats", 1), "rot_2": ("quats", 2), "rot_3": ("quats", 3),
}  # fmt: skip


@dataclass(frozen=True)
class PlyHeader:
    """What the header of an INRIA 3DGS PLY file says (already checked for consistency)."""

    num_vertices: int
    sh_degree: int
    byte_order: str  # "<" or ">"
    properties: tuple[tuple[str, str], ...]  # (name, numpy type code such as "f4"), in file order
    header_bytes: int  # offset of the body
    row_bytes: int  # bytes per vertex


def _fail(path: Path, problem: str) -> SceneFormatError:
    return SceneFormatError(f"{path}: {problem}")


def _header_names_text(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _parse_header(path: str | os.PathLike) -> PlyHeader:
    """Read and check the header of ``path``; also checks the body size against it."""
    path = Path(path)
    if path.is_dir():
        raise _fail(path, "is a directory, not a PLY file")
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise _fail(path, "PLY file does not exist") from None
    except OSError as e:
        raise _fail(path, f"cannot be opened ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise _fail(path, "empty file (0 bytes), not a PLY file")
        first = f.readline(64)
        if first.rstrip(b"\r\n") != b"ply":
            raise _fail(path, f"not a PLY file (bad magic: first line is {first[:16]!r}, expected b'ply')")
        offset = len(first)
        byte_order: str | None = None
        elements: list[tuple[str, int]] = []
        props: list[tuple[str, str]] = []
        lineno = 1
        while True:
            line = f.readline(_MAX_HEADER_BYTES)
            lineno += 1
            if not line:
                raise _fail(path, "header has no end_header line (file ends inside the header)")
            offset += len(line)
            if offset > _MAX_HEADER_BYTES:
                raise _fail(path, f"header has no end_header line in its first {_MAX_HEADER_BYTES} bytes")
            try:
                text = line.decode("ascii").strip()
            except UnicodeDecodeError:
                raise _fail(
                    path,
                    f"header line {lineno} is not text: the end_header line is missing before binary data",
                ) from None
            words = text.split()
            if not words:
                continue
            key = words[0]
            if key == "end_header":
                break
            if key in ("comment", "obj_info"):
                continue
            if key == "format":
                if len(words) != 3:
                    raise _fail(path, f"bad format line {text!r}")
                if words[1] == "ascii":
                    raise _fail(
                        path, "ASCII PLY is not supported (only binary_little_endian / binary_big_endian)"
                    )
                if words[1] not in _FORMATS:
                    raise _fail(path, f"unknown PLY format {words[1]!r} (expected binary_little_endian)")
                if words[2] != "1.0":
                    raise _fail(path, f"unsupported PLY version {words[2]!r} (expected 1.0)")
                if byte_order is not None:
                    raise _fail(path, "header has two format lines")
                byte_order = _FORMATS[words[1]]
            elif key == "element":
                if len(words) != 3 or not words[2].isdigit():
                    raise _fail(path, f"bad element line {text!r}")
                elements.append((words[1], int(words[2])))
            elif key == "property":
                if not elements:
                    raise _fail(path, f"property line {text!r} comes before any element")
                if elements[-1][0] != "vertex":
                    continue  # other elements are refused below, by name
                if len(words) >= 2 and words[1] == "list":
                    name = words[-1] if len(words) >= 5 else "?"
                    raise _fail(path, f"list property {name!r} is not supported (INRIA 3DGS PLY has none)")
                if len(words) != 3:
                    raise _fail(path, f"bad property line {text!r}")
                if words[1] not in _PLY_TYPES:
                    raise _fail(path, f"property {words[2]!r} has unknown type {words[1]!r}")
                props.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise _fail(
                    path, f"unexpected header line {lineno} {text[:40]!r} (is the end_header line missing?)"
                )
    header_bytes = offset

    if byte_order is None:
        raise _fail(path, "header has no format line")
    names = [e for e, _ in elements]
    extra = [e for e in names if e != "vertex"]
    if extra:
        raise _fail(path, f"extra element(s) {_header_names_text(extra)}: only 'vertex' is supported")
    if names.count("vertex") != 1:
        raise _fail(path, "no 'element vertex' in the header" if not names else "two 'vertex' elements")
    num_vertices = elements[0][1]

    seen: set[str] = set()
    dup = sorted({n for n, _ in props if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dup:
        raise _fail(path, f"duplicate vertex properties {_header_names_text(dup)}")
    missing = [n for n in _REQUIRED if n not in seen]
    if missing:
        raise _fail(path, f"missing required vertex properties {_header_names_text(missing)}")
    rest_idx: list[int] = []
    unknown: list[str] = []
    for n, _ in props:
        if n in _TARGETS or n in _NORMALS:
            continue
        m = _REST_RE.fullmatch(n)
        if m:
            rest_idx.append(int(m.group(1)))
        else:
            unknown.append(n)
    if unknown:
        raise _fail(path, f"unknown vertex properties {_header_names_text(unknown)}")
    num_rest = len(rest_idx)
    gaps = sorted(set(range(num_rest)) - set(rest_idx))
    if gaps:
        raise _fail(
            path,
            f"f_rest indices are not contiguous: {num_rest} f_rest properties but "
            f"{_header_names_text([f'f_rest_{i}' for i in gaps])} missing",
        )
    if num_rest not in _NUM_REST_TO_DEGREE:
        raise _fail(path, f"{num_rest} f_rest properties: expected 0, 9, 24 or 45 (SH degree 0 to 3)")

    row_bytes = sum(np.dtype(t).itemsize for _, t in props)
    body = size - header_bytes
    expected = num_vertices * row_bytes
    if body < expected:
        raise _fail(
            path,
            f"truncated body: header says {num_vertices} vertices ({expected} bytes) but the body holds "
            f"{body // row_bytes} ({body} bytes)",
        )
    if body > expected:
        raise _fail(
            path,
            f"body is longer than the header says: {num_vertices} vertices need {expected} bytes, "
            f"found {body} ({body - expected} extra)",
        )
    return PlyHeader(
        num_vertices, _NUM_REST_TO_DEGREE[num_rest], byte_order, tuple(props), header_bytes, row_bytes
    )


def read_ply_header(path: str | os.PathLike) -> tuple[int, int]:
    """``(num_vertices, sh_degree)`` of an INRIA 3DGS PLY file, from its header alone (the body size is
    checked against it; values are not read). Raises SceneFormatError like :func:`read_ply`."""
    h = _parse_header(path)
    return h.num_vertices, h.sh_degree


# -- reading -----------------------------------------------------------------------------------------
Copier = Callable[[np.ndarray, int, int], None]  # (structured chunk, start row, end row)


def _copy_plan(h: PlyHeader, arrays: dict[str, np.ndarray]) -> tuple[np.dtype, list[tuple[str, Copier]]]:
    """A structured row dtype whose fields are runs of properties that land next to each other in one
    destination array, and for each field a function copying a chunk of it into place."""
    k = num_sh_bases(h.sh_degree) - 1
    # (target, column, type, offset) per property, in file order; normals skipped.
    cols: list[tuple[str, int, str, int]] = []
    off = 0
    for name, t in h.properties:
        if name in _TARGETS:
            cols.append((*_TARGETS[name], t, off))
        elif name not in _NORMALS:
            cols.append(("rest", int(name[len("f_rest_") :]), t, off))
        off += np.dtype(t).itemsize

    runs: list[list[tuple[str, int, str, int]]] = []
    for c in cols:
        if runs:
            p = runs[-1][-1]
            same_row = p[3] + np.dtype(p[2]).itemsize == c[3] and p[2] == c[2]
            if same_row and p[0] == c[0] and p[1] + 1 == c[1]:
                runs[-1].append(c)
                continue
        runs.append([c])

    names, formats, offsets = [], [], []
    plan: list[tuple[str, Copier]] = []

    def add(target: str, col: int, count: int, t: str, offset: int) -> None:
        field = f"f{len(names)}"
        names.append(field)
        formats.append(h.byte_order + t if count == 1 else (h.byte_order + t, (count,)))
        offsets.append(offset)
        dst = arrays[target]
        if target == "opacities":

            def copy(rec: np.ndarray, s: int, e: int) -> None:
                np.copyto(dst[s:e], rec[field], casting="unsafe")

        elif count == 1:

            def copy(rec: np.ndarray, s: int, e: int) -> None:
                np.copyto(dst[s:e, col], rec[field], casting="unsafe")

        else:

            def copy(rec: np.ndarray, s: int, e: int) -> None:
                np.copyto(dst[s:e, col : col + count], rec[field], casting="unsafe")

        plan.append((field, copy))

    def add_rest(flat: int, count: int, t: str, offset: int) -> None:
        # f_rest_{c*K + k} = shN[:, k, c]; a run covering whole channels is one (channels, K) field.
        shn = arrays["rest"]
        c0, k0 = divmod(flat, k)
        if k0 == 0 and count % k == 0 and count > k:
            nc = count // k
            field = f"f{len(names)}"
            names.append(field)
            formats.append((h.byte_order + t, (nc, k)))
            offsets.append(offset)

            def copy(rec: np.ndarray, s: int, e: int) -> None:
                np.copyto(shn[s:e, :, c0 : c0 + nc].transpose(0, 2, 1), rec[field], casting="unsafe")

            plan.append((field, copy))
            return
        item = np.dtype(t).itemsize
        while count:
            c, kk = divmod(flat, k)
            m = min(count, k - kk)
            field = f"f{len(names)}"
            names.append(field)
            formats.append(h.byte_order + t if m == 1 else (h.byte_order + t, (m,)))
            offsets.append(offset)

            def copy(rec: np.ndarray, s: int, e: int, field=field, c=c, kk=kk, m=m) -> None:
                dst = shn[s:e, kk, c] if m == 1 else shn[s:e, kk : kk + m, c]
                np.copyto(dst, rec[field], casting="unsafe")

            plan.append((field, copy))
            flat, count, offset = flat + m, count - m, offset + m * item

    for run in runs:
        target, col, t, offset = run[0]
        if target == "rest":
            add_rest(col, len(run), t, offset)
        else:
            add(target, col, len(run), t, offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": h.row_bytes})
    return dtype, plan


def _chunk_ok(parts: list[np.ndarray], quats: np.ndarray) -> bool:
    """True if every value is finite and no quaternion has zero length (one cheap pass per chunk)."""
    for a in parts:
        # NaN propagates through min/max and +-Inf shows in them; Python floats cannot overflow here.
        if a.size and not np.isfinite(float(a.min()) + float(a.max())):
            return False
    return not bool((np.einsum("ij,ij->i", quats, quats) <= 1e-24).any())


def read_ply(path: str | os.PathLike) -> Splats:
    """Read an INRIA 3DGS PLY file into float32 numpy :class:`Splats`.

    Args:
        path: the ``.ply`` file.
    Returns:
        Splats with means [N,3], quats [N,4] (wxyz, as stored), scales [N,3] (log), opacities [N] (logit),
        sh0 [N,3] and shN [N,K,3] (K = 0, 3, 8, 15 from 0, 9, 24, 45 ``f_rest`` properties).
    Raises:
        SceneFormatError: one line naming the file and the problem (see the module docstring).
    """
    path = Path(path)
    h = _parse_header(path)
    n, k = h.num_vertices, num_sh_bases(h.sh_degree) - 1
    arrays = {
        "means": np.empty((n, 3), np.float32),
        "quats": np.empty((n, 4), np.float32),
        "scales": np.empty((n, 3), np.float32),
        "opacities": np.empty((n,), np.float32),
        "sh0": np.empty((n, 3), np.float32),
        "rest": np.empty((n, k, 3), np.float32),
    }
    dtype, plan = _copy_plan(h, arrays)
    rows = max(1, CHUNK_BYTES // h.row_bytes)
    buf = np.empty(rows * h.row_bytes, np.uint8)
    mv = memoryview(buf)
    order = ("means", "quats", "scales", "opacities", "sh0", "rest")
    with open(path, "rb", buffering=0) as f:
        f.seek(h.header_bytes)
        for s in range(0, n, rows):
            e = min(n, s + rows)
            want = (e - s) * h.row_bytes
            got = 0
            while got < want:
                r = f.readinto(mv[got:want])
                if not r:
                    raise _fail(path, f"truncated body: file ended at vertex {s + got // h.row_bytes} of {n}")
                got += r
            rec = buf[:want].view(dtype)
            for _field, copy in plan:
                copy(rec, s, e)
            if not _chunk_ok([arrays[a][s:e] for a in order], arrays["quats"][s:e]):
                part = Splats(*(arrays[a][:e] for a in order))
                part.validate(str(path))  # names the field
                raise _fail(path, f"bad values near vertex {s}")  # pragma: no cover - validate raises
    return Splats(*(arrays[a] for a in order))


def verify_ply(path: str | os.PathLike) -> tuple[int, int]:
    """Check a whole INRIA PLY file without loading it: header, body size, every value finite, no zero
    quaternion (streamed in chunks, memory bounded). Returns ``(num_vertices, sh_degree)``; raises
    SceneFormatError naming the file, the property and the vertex."""
    path = Path(path)
    h = _parse_header(path)
    dtype = np.dtype([(name, h.byte_order + code) for name, code in h.properties])
    rows = max(1, CHUNK_BYTES // h.row_bytes)
    rot = [f"rot_{i}" for i in range(4)]
    with open(path, "rb") as f:
        f.seek(h.header_bytes)
        for s in range(0, h.num_vertices, rows):
            e = min(h.num_vertices, s + rows)
            rec = np.fromfile(f, dtype, e - s)
            if len(rec) != e - s:
                raise _fail(path, f"truncated body: file ended at vertex {s + len(rec)} of {h.num_vertices}")
            for name in dtype.names:
                if dtype[name].kind == "f" and not np.isfinite(rec[name]).all():
                    bad = s + int(np.flatnonzero(~np.isfinite(rec[name]))[0])
                    raise _fail(path, f"{name} holds NaN or Inf values (vertex {bad})")
            if all(r in dtype.names for r in rot):
                qn = sum(rec[r].astype(np.float64) ** 2 for r in rot)
                if (qn <= 1e-24).any():
                    raise _fail(
                        path, f"zero-length quaternion at vertex {s + int(np.flatnonzero(qn <= 1e-24)[0])}"
                    )
    return h.num_vertices, h.sh_degree


# -- writing -----------------------------------------------------------------------------------------
def _property_names(k: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * k)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])  # fmt: skip


def _write_all(f, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += f.write(view[done:])


def _row_dtype(k: int) -> np.dtype:
    """One vertex of the canonical layout (write_ply's), as a structured dtype."""
    fields = [("means", "<f4", (3,)), ("normals", "<f4", (3,)), ("sh0", "<f4", (3,))]
    if k:
        fields.append(("rest", "<f4", (3, k)))
    fields += [("opacity", "<f4"), ("scales", "<f4", (3,)), ("quats", "<f4", (4,))]
    return np.dtype(fields)


def _header(n: int, k: int) -> bytes:
    return (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        + "".join(f"property float {p}\n" for p in _property_names(k))
        + "end_header\n"
    ).encode("ascii")


def _encoded_chunks(s: Splats, source: str, path: Path, nbuf: int = 2):
    """``s`` as byte chunks of canonical rows (values checked chunk by chunk)."""
    n, k = len(s), s.shN.shape[1]
    row = _row_dtype(k)
    rows = max(1, CHUNK_BYTES // row.itemsize)
    nbuf = 1 if n <= rows else nbuf
    bufs = [np.zeros(rows, row) for _ in range(nbuf)]  # normals stay zero
    for i, st in enumerate(range(0, n, rows)):
        e = min(n, st + rows)
        b = bufs[i % nbuf][: e - st]
        b["means"] = s.means[st:e]
        b["sh0"] = s.sh0[st:e]
        if k:
            b["rest"] = s.shN[st:e].transpose(0, 2, 1)
        b["opacity"] = s.opacities[st:e]
        b["scales"] = s.scales[st:e]
        b["quats"] = s.quats[st:e]
        if not _chunk_ok([b.view(np.float32)], s.quats[st:e]):
            s.validate(source)  # names the field
            raise _fail(path, f"bad values near Gaussian {st}")  # pragma: no cover
        yield memoryview(b.view(np.uint8))


def write_ply(path: str | os.PathLike, splats: Splats) -> Path:
    """Write ``splats`` as an INRIA 3DGS PLY file (layout in the module docstring); returns the path.

    The file appears atomically (written next to it, then renamed). Values are checked chunk by chunk as
    they are written: NaN/Inf values or zero quaternions raise SceneFormatError naming the field, and
    ``path`` is left as it was.
    """
    path = Path(path)
    source = str(path)
    s = splats.to_numpy()
    s.check_shapes(source)
    n, k = len(s), s.shN.shape[1]
    assert _row_dtype(k).itemsize == 4 * len(_property_names(k))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        # Double buffering: a worker thread writes one chunk (the syscall releases the GIL) while this
        # thread encodes the next one (numpy copies release it too).
        with open(tmp, "wb", buffering=0) as f, ThreadPoolExecutor(1) as pool:
            _write_all(f, memoryview(_header(n, k)))
            pending: Future | None = None
            for chunk in _encoded_chunks(s, source, path):
                if pending is not None:
                    pending.result()
                pending = pool.submit(_write_all, f, chunk)
            if pending is not None:
                pending.result()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _canonical(path: Path) -> PlyHeader:
    h = _parse_header(path)
    k = num_sh_bases(h.sh_degree) - 1
    if h.byte_order != "<" or list(h.properties) != [(p, "f4") for p in _property_names(k)]:
        raise _fail(path, "not in the canonical INRIA layout (write it with write_ply first)")
    return h


def is_canonical_ply(path: str | os.PathLike) -> bool:
    """Whether ``path`` has exactly write_ply's layout (so :func:`edit_ply` can copy its rows)."""
    try:
        _canonical(Path(path))
    except SceneFormatError:
        return False
    return True


def read_ply_columns(path: str | os.PathLike, field: str = "means") -> np.ndarray:
    """One field of a canonical PLY (``means`` [N, 3], ``opacity`` [N], ...) without reading the rest."""
    path = Path(path)
    h = _canonical(path)
    mm = np.memmap(path, _row_dtype(num_sh_bases(h.sh_degree) - 1), "r", h.header_bytes, (h.num_vertices,))
    return np.array(mm[field])


def read_ply_rows(path: str | os.PathLike, ids: np.ndarray) -> Splats:
    """The Gaussians ``ids`` [K] of a canonical PLY, as float32 Splats (only those rows are read)."""
    path = Path(path)
    h = _canonical(path)
    k = num_sh_bases(h.sh_degree) - 1
    mm = np.memmap(path, _row_dtype(k), "r", h.header_bytes, (h.num_vertices,))
    r = mm[np.asarray(ids, np.int64)]
    shN = r["rest"].transpose(0, 2, 1).copy() if k else np.zeros((len(r), 0, 3), np.float32)
    return Splats(r["means"].copy(), r["quats"].copy(), r["scales"].copy(), r["opacity"].copy(),
                  r["sh0"].copy(), shN)  # fmt: skip


def edit_ply(
    src: str | os.PathLike, dst: str | os.PathLike, keep: np.ndarray, append: Splats | None = None
) -> int:
    """Write ``dst``: the rows of ``src`` where ``keep`` [N] is True, byte for byte and in order, then
    ``append`` encoded as :func:`write_ply` does. Streams: memory is one chunk plus ``append``.

    ``src`` must have write_ply's layout (:func:`is_canonical_ply`) and ``append`` its SH degree.
    ``dst`` appears atomically. Returns the number of Gaussians written.
    """
    src, dst = Path(src), Path(dst)
    h = _canonical(src)
    k = num_sh_bases(h.sh_degree) - 1
    keep = np.asarray(keep, bool)
    if keep.shape != (h.num_vertices,):
        raise _fail(src, f"edit: keep mask has {keep.shape} entries for {h.num_vertices} Gaussians")
    extra = append.to_numpy() if append is not None else Splats.empty(0, h.sh_degree)
    if extra.shN.shape[1] != k:
        raise _fail(dst, f"edit: appended Gaussians have SH degree {extra.sh_degree}, the file {h.sh_degree}")
    extra.check_shapes(str(dst))
    n_out = int(keep.sum()) + len(extra)
    rows = max(1, CHUNK_BYTES // h.row_bytes)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb", buffering=0) as f:
            _write_all(f, memoryview(_header(n_out, k)))
            fin.seek(h.header_bytes)
            for s in range(0, h.num_vertices, rows):
                e = min(h.num_vertices, s + rows)
                buf = np.fromfile(fin, np.uint8, (e - s) * h.row_bytes)
                if len(buf) != (e - s) * h.row_bytes:
                    raise _fail(src, f"truncated body near vertex {s}")
                m = keep[s:e]
                chunk = buf.reshape(e - s, h.row_bytes) if m.all() else buf.reshape(e - s, h.row_bytes)[m]
                _write_all(f, memoryview(np.ascontiguousarray(chunk).reshape(-1)))
            for chunk in _encoded_chunks(extra, str(dst), dst, nbuf=1):
                _write_all(f, chunk)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n_out


__all__ = [
    "PlyHeader", "edit_ply", "is_canonical_ply", "read_ply", "read_ply_columns", "read_ply_header",
    "read_ply_rows", "verify_ply", "write_ply",
]  # fmt: skip
