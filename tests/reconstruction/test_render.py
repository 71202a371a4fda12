"""The renderer: CPU rasterizer vs a brute-force reference, conventions, boundary checks, gsplat on a GPU."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from bench.synthetic import default_view, random_splats
from reconstruction._torch_rasterizer import ENGINES, render_torch
from reconstruction.cameras import Camera, Pose
from reconstruction.errors import RenderError
from reconstruction.render import RenderOutput, render
from reconstruction.splats import FIELDS, Splats

from .render_reference import reference_render

W, H = 36, 27
CAMERA = Camera.pinhole(30.0, 31.0, 14.3, 10.1, W, H)  # principal point off centre


def _pose(seed: int) -> Pose:
    """A camera slightly rotated and moved (world -> camera)."""
    rng = np.random.default_rng(100 + seed)
    q = np.array([1.0, *rng.normal(0, 0.05, 3)])
    return Pose(q, rng.normal(0, 0.1, 3))


def _scene(seed: int, sh_degree: int, n: int = 40, dtype=torch.float32, opaque: bool = False) -> Splats:
    """Tiny scene: most Gaussians in view, some outside it, some behind the camera, one very close, one
    beside the view whose x/z is clamped in the Jacobian."""
    if opaque:  # dense and nearly opaque: many pixels reach the early stop
        sp = random_splats(
            n,
            seed,
            sh_degree,
            box_min=(-0.9, -0.7, -1.0),
            box_max=(0.9, 0.7, 3.5),
            log_scale_mean=-1.8,
            log_scale_std=0.4,
            opacity_logit_mean=5.0,
            opacity_logit_std=1.5,
        )
    else:
        sp = random_splats(
            n,
            seed,
            sh_degree,
            box_min=(-1.6, -1.2, -1.0),
            box_max=(1.6, 1.2, 4.0),
            log_scale_mean=-2.3,
            log_scale_std=0.5,
        )
    sp.means[0] = (0.2, 0.1, 0.3)  # close to the camera: a large splat
    sp.scales[0] = np.log(0.03)
    sp.means[1] = (3.0, 0.2, 2.0)  # x/z = 1.5: outside the clamp limit, still reaching into the image
    sp.scales[1] = np.log(0.8)
    sp.means[2] = (0.0, 0.0, -1.0)  # behind the camera
    t = sp.to_torch(dtype=dtype)
    for f in FIELDS:
        getattr(t, f).requires_grad_(True)
    return t


def _reference(sp: Splats, sh_degree: int, viewmat: torch.Tensor, camera: Camera = CAMERA, bg=None):
    K = torch.as_tensor(camera.K(), dtype=sp.means.dtype)
    return reference_render(
        sp.means,
        sp.quats,
        sp.scales,
        sp.opacities,
        sp.sh0,
        sp.shN,
        sh_degree,
        viewmat,
        K,
        camera.width,
        camera.height,
        bg,
    )


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch):
    """Each CPU compositing engine in turn (as ``render`` picks it: ``IDU_CPU_RASTERIZER``)."""
    monkeypatch.setenv("IDU_CPU_RASTERIZER", request.param)
    return request.param


# -- against the brute-force reference ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("seed", "sh_degree", "opaque"), [(0, 0, False), (1, 3, False), (2, 3, True), (3, 1, True), (4, 2, False)]
)
def test_forward_matches_reference(seed, sh_degree, opaque, dtype, engine):
    sp = _scene(seed, sh_degree, dtype=dtype, opaque=opaque)
    pose = _pose(seed)
    bg = torch.tensor([0.1, 0.4, 0.7], dtype=dtype) if seed % 2 else None
    with torch.no_grad():
        out = render(sp, CAMERA, pose, background=bg)
        rgb, alpha, depth = _reference(sp, sh_degree, torch.as_tensor(pose.matrix(), dtype=dtype), bg=bg)
    assert out.backend == "torch"
    assert out.rgb.shape == (H, W, 3) and out.alpha.shape == (H, W) and out.depth.shape == (H, W)
    assert float(alpha.max()) > 0.5 and float((alpha == 0).float().mean()) < 0.9  # a non-trivial image
    if opaque:
        assert float(alpha.max()) > 0.9995  # T < 5e-4: pixels reach the early stop
    torch.testing.assert_close(out.rgb, rgb, **_tol(dtype))
    torch.testing.assert_close(out.alpha, alpha, **_tol(dtype))
    torch.testing.assert_close(out.depth, depth, **_tol(dtype))


@pytest.mark.parametrize(
    ("seed", "sh_degree", "opaque", "dtype"),
    [(5, 3, False, torch.float64), (6, 3, True, torch.float64), (7, 0, False, torch.float32)],
)
def test_gradients_match_reference(seed, sh_degree, opaque, dtype, engine):
    sp = _scene(seed, sh_degree, dtype=dtype, opaque=opaque)
    viewmat = torch.as_tensor(_pose(seed).matrix(), dtype=dtype).requires_grad_(True)
    bg = torch.tensor([0.3, 0.2, 0.9], dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in ((H, W, 3), (H, W), (H, W))]
    inputs = [getattr(sp, f) for f in FIELDS] + [viewmat]

    out = render(sp, CAMERA, viewmat, background=bg)
    loss = sum((o * w).sum() for o, w in zip((out.rgb, out.alpha, out.depth), weights, strict=True))
    got = torch.autograd.grad(loss, inputs, allow_unused=True)
    ref = _reference(sp, sh_degree, viewmat, bg=bg)
    loss_ref = sum((o * w).sum() for o, w in zip(ref, weights, strict=True))
    want = torch.autograd.grad(loss_ref, inputs, allow_unused=True)
    for name, g, r in zip([*FIELDS, "cam_from_world"], got, want, strict=True):
        assert r is not None and g is not None, name
        scale = float(r.abs().max()) if r.numel() else 1.0
        if dtype == torch.float64:
            torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-9 * max(scale, 1.0), msg=name)
        else:
            torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4 * max(scale, 1.0), msg=name)


def test_chunk_boundaries_are_exact():
    """Tiny chunks split rows and pixels between chunks: same image and gradients as one chunk."""
    sp = _scene(8, 3, dtype=torch.float64, opaque=True)
    K = torch.as_tensor(CAMERA.K(), dtype=torch.float64)
    vm = torch.as_tensor(_pose(8).matrix(), dtype=torch.float64)
    coeffs = torch.cat([sp.sh0[:, None], sp.shN], 1)
    outs, grads = [], []
    for max_pairs in (1 << 20, 37, 5):
        o = render_torch(
            sp.means,
            sp.quats,
            sp.scales,
            sp.opacities,
            coeffs,
            3,
            vm,
            K,
            W,
            H,
            max_pairs=max_pairs,
            engine="torch",
        )
        outs.append(o)
        grads.append(
            torch.autograd.grad(o[0].sum() + o[1].sum() + 0.1 * o[2].sum(), [sp.means, sp.opacities])
        )
    for o, g in zip(outs[1:], grads[1:], strict=True):
        for a, b in zip(o + g, outs[0] + grads[0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gradcheck_float64(engine):
    sp = random_splats(
        4,
        11,
        1,
        box_min=(-0.4, -0.3, 2.0),
        box_max=(0.4, 0.3, 3.0),
        log_scale_mean=-1.8,
        log_scale_std=0.2,
        opacity_logit_mean=-0.5,
        opacity_logit_std=0.3,
    ).to_torch(dtype=torch.float64)
    cam = Camera.pinhole(12.0, 12.0, 5.2, 3.9, 10, 8)
    names = ("means", "quats", "scales", "opacities", "sh0", "shN")

    def fn(*xs):
        out = render(
            Splats(**dict(zip(names, xs, strict=True))), cam, Pose.identity(), background=(0.2, 0.3, 0.4)
        )
        return out.rgb, out.alpha, out.depth

    inputs = tuple(getattr(sp, f).clone().requires_grad_(True) for f in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_engines_agree_on_a_large_scene():
    """20,000 Gaussians at 160x120, float64: the compiled scanlines (early stop, rows shared between
    threads) and the torch chunks give the same image and gradients."""
    sp = random_splats(20_000, 3, 2, log_scale_mean=-3.5).to_torch(dtype=torch.float64)
    cam, pose = default_view(160, 120)
    coeffs = torch.cat([sp.sh0[:, None], sp.shN], 1).requires_grad_(True)
    K = torch.as_tensor(cam.K(), dtype=torch.float64)
    vm = torch.as_tensor(pose.matrix(), dtype=torch.float64)
    means = sp.means.clone().requires_grad_(True)
    results = []
    for eng in ENGINES:
        out = render_torch(means, sp.quats, sp.scales, sp.opacities, coeffs, 2, vm, K, 160, 120, engine=eng)
        loss = out[0].square().sum() + out[1].sum() + 0.01 * out[2].sum()
        results.append((*out, *torch.autograd.grad(loss, [means, coeffs])))
    assert float(results[0][1].detach().mean()) > 0.5  # mostly covered: many pixels stop early
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * max(float(b.detach().abs().max()), 1.0))


def test_compiled_engine_is_safe_from_threads():
    """Renders from several threads at once (Prefect runs tasks in threads) equal one render alone."""
    from concurrent.futures import ThreadPoolExecutor

    sp = random_splats(5_000, 4, 0).to_torch()
    cam, pose = default_view(96, 72)
    with torch.no_grad():
        alone = render(sp, cam, pose).rgb
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: render(sp, cam, pose).rgb, range(8)))
    for o in outs:
        assert torch.equal(o, alone)


def test_engine_override_is_scoped(monkeypatch):
    from reconstruction._torch_rasterizer import default_engine, engine_override

    monkeypatch.delenv("IDU_CPU_RASTERIZER", raising=False)
    outer = default_engine()
    with engine_override("torch"):
        assert default_engine() == "torch"
    assert default_engine() == outer and "IDU_CPU_RASTERIZER" not in __import__("os").environ
    with pytest.raises(ValueError, match="unknown engine"):
        with engine_override("fast"):
            pass


def test_unknown_engine_is_refused(monkeypatch):
    monkeypatch.setenv("IDU_CPU_RASTERIZER", "fast")
    with pytest.raises(ValueError, match="IDU_CPU_RASTERIZER=fast"):
        render(_scene(0, 0), CAMERA, _pose(0))


# -- behaviour ---------------------------------------------------------------------------------------
def test_background_is_composited_behind():
    sp = _scene(9, 0)
    pose = _pose(9)
    with torch.no_grad():
        plain = render(sp, CAMERA, pose)
        bg = render(sp, CAMERA, pose, background=(0.25, 0.5, 1.0))
    want = plain.rgb + (1 - plain.alpha)[..., None] * torch.tensor([0.25, 0.5, 1.0])
    torch.testing.assert_close(bg.rgb, want)
    torch.testing.assert_close(bg.alpha, plain.alpha)
    empty = plain.alpha == 0
    assert bool(empty.any())
    assert torch.equal(bg.rgb[empty], torch.tensor([0.25, 0.5, 1.0]).expand(int(empty.sum()), 3))
    assert torch.equal(plain.depth[empty], torch.zeros(int(empty.sum())))


@pytest.mark.parametrize("where", ["none", "behind"])
def test_empty_scene(where):
    if where == "none":
        sp = Splats.empty(0, sh_degree=2)
    else:
        sp = random_splats(10, 0, 2, box_min=(-1, -1, -3), box_max=(1, 1, -0.5))
    sp = sp.to_torch()
    for f in FIELDS:
        getattr(sp, f).requires_grad_(True)
    out = render(sp, CAMERA, Pose.identity(), background=(0.0, 1.0, 0.0))
    (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()  # still differentiable: zero gradients
    assert float(sp.means.grad.abs().sum()) == 0
    assert isinstance(out, RenderOutput)
    assert torch.equal(out.alpha, torch.zeros(H, W))
    assert torch.equal(out.depth, torch.zeros(H, W))
    assert torch.equal(out.rgb, torch.tensor([0.0, 1.0, 0.0]).expand(H, W, 3))


def _blob(x: float, y: float, z: float = 3.0) -> Splats:
    sp = Splats.empty(1)
    sp.means[0] = (x, y, z)
    sp.scales[:] = np.log(0.08)
    sp.opacities[:] = 3.0
    sp.sh0[:] = 1.0
    return sp


def _centroid(out: RenderOutput) -> tuple[float, float]:
    a = out.alpha.double()
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
    )
    return float((a * xs).sum() / a.sum()), float((a * ys).sum() / a.sum())


def test_conventions_x_right_y_down():
    """Identity pose: world +x is image right, +y image down, z is the depth; principal point at (cx, cy)."""
    cx0, cy0 = _centroid(render(_blob(0, 0), CAMERA, Pose.identity()))
    assert abs(cx0 + 0.5 - 14.3) < 0.05 and abs(cy0 + 0.5 - 10.1) < 0.05  # pixel centres at +0.5
    cxr, cyr = _centroid(render(_blob(0.3, 0), CAMERA, Pose.identity()))
    cxd, cyd = _centroid(render(_blob(0, 0.3), CAMERA, Pose.identity()))
    assert cxr - cx0 == pytest.approx(0.3 * 30 / 3, abs=0.05) and abs(cyr - cy0) < 0.02
    assert cyd - cy0 == pytest.approx(0.3 * 31 / 3, abs=0.05) and abs(cxd - cx0) < 0.02
    out = render(_blob(0, 0, 2.5), CAMERA, Pose.identity())
    assert float(out.depth[out.alpha > 0].min()) == pytest.approx(2.5, abs=1e-5)
    # Moving the camera right (cam_from_world translation -x) moves the content left.
    moved = Pose(np.array([1.0, 0, 0, 0]), np.array([-0.3, 0.0, 0.0]))
    cxl, _ = _centroid(render(_blob(0, 0), CAMERA, moved))
    assert cxl < cx0 - 2.5


def test_inputs_numpy_torch_and_pose_forms_agree():
    sp_np = random_splats(30, 12, 2, box_min=(-1, -1, 2), box_max=(1, 1, 4), log_scale_mean=-2.5)
    pose = _pose(12)
    a = render(sp_np, CAMERA, pose)
    b = render(sp_np.to_torch(), CAMERA, pose.matrix())
    c = render(sp_np.to_torch(), CAMERA, torch.as_tensor(pose.matrix()))
    for o in (b, c):
        torch.testing.assert_close(o.rgb, a.rgb)
        torch.testing.assert_close(o.depth, a.depth)


def test_grads_reach_the_callers_tensors():
    sp = _scene(13, 3)
    out = render(sp, CAMERA, _pose(13))
    out.rgb.mean().backward()
    for f in FIELDS:
        assert getattr(sp, f).grad is not None, f
    assert float(sp.means.grad.abs().sum()) > 0


def test_sh_degree_and_distortion():
    sp = _scene(14, 3)
    pose = _pose(14)
    with torch.no_grad():
        low = render(sp, CAMERA, pose, sh_degree=1)
        ref = _reference(
            Splats(sp.means, sp.quats, sp.scales, sp.opacities, sp.sh0, sp.shN[:, :3]),
            1,
            torch.as_tensor(pose.matrix(), dtype=torch.float32),
        )
        torch.testing.assert_close(low.rgb, ref[0], rtol=1e-5, atol=1e-5)
        # A distorted camera renders as its pinhole (photos are undistorted with cameras.undistort_image).
        distorted = Camera("OPENCV", W, H, [30.0, 31.0, 14.3, 10.1, -0.2, 0.05, 0.001, -0.002])
        torch.testing.assert_close(render(sp, distorted, pose).rgb, render(sp, CAMERA, pose).rgb)


def test_near_and_far_cull():
    sp = _blob(0, 0, 3.0)
    assert float(render(sp, CAMERA, Pose.identity(), far=2.9).alpha.max()) == 0
    assert float(render(sp, CAMERA, Pose.identity(), near=3.1).alpha.max()) == 0
    assert float(render(sp, CAMERA, Pose.identity(), near=2.9, far=3.1).alpha.max()) > 0.5


# -- boundary checks ---------------------------------------------------------------------------------
def _bad_cases():
    good = random_splats(5, 0, 1)
    bad_means = Splats(**{**good.as_dict(), "means": good.means[:, :2]})
    bad_shn = Splats(**{**good.as_dict(), "shN": np.zeros((5, 4, 3), np.float32)})
    nan_scales = Splats(**{**good.as_dict(), "scales": np.full((5, 3), np.nan, np.float32)})
    nan_pose = np.eye(4)
    nan_pose[0, 3] = np.nan
    shear = np.eye(4)
    shear[0, 1] = 0.5
    return [
        (dict(splats=bad_means), "means has shape"),
        (dict(splats=bad_shn), "shN has shape"),
        (dict(splats=nan_scales), "scales holds NaN"),
        (dict(cam_from_world=nan_pose), "NaN or Inf"),
        (dict(cam_from_world=shear), "not a rigid transform"),
        (dict(cam_from_world=np.eye(3)), "expected (4, 4)"),
        (dict(cam_from_world="identity"), "must be a Pose"),
        (dict(background=(1.0, 0.0)), "background has shape"),
        (dict(sh_degree=2), "SH up to degree 1"),
        (dict(backend="opengl"), "unknown backend"),
        (dict(near=0.0), "near"),
        (dict(near=5.0, far=1.0), "near"),
        (dict(splats={"means": good.means}), "Splats container"),
    ]


@pytest.mark.parametrize(("change", "message"), _bad_cases())
def test_bad_inputs_raise_render_error(change, message):
    args = dict(splats=random_splats(5, 0, 1), camera=CAMERA, cam_from_world=Pose.identity())
    args.update(change)
    kwargs = {k: args.pop(k) for k in list(args) if k not in ("splats", "camera", "cam_from_world")}
    with pytest.raises(RenderError, match=re.escape(message)):
        render(args["splats"], args["camera"], args["cam_from_world"], **kwargs)


def test_empty_image_size_raises():
    cam = Camera.pinhole(10, 10, 5, 5, 10, 10)
    cam.width = 0
    with pytest.raises(RenderError, match="empty image size 0x10"):
        render(random_splats(3, 0, 0), cam, Pose.identity())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gsplat_backend_without_cuda_says_so():
    with pytest.raises(RenderError, match="needs CUDA"):
        render(random_splats(3, 0, 0), CAMERA, Pose.identity(), backend="gsplat")


# -- GPU: gsplat against the CPU rasterizer ----------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gsplat_matches_torch_backend():
    splats = random_splats(4000, 21, 3)
    camera, pose = default_view(256, 256)
    with torch.no_grad():
        gpu = render(splats.to_torch("cuda"), camera, pose, background=(0.1, 0.2, 0.3), backend="gsplat")
        cpu = render(splats, camera, pose, background=(0.1, 0.2, 0.3), backend="torch")
    assert gpu.backend == "gsplat" and cpu.backend == "torch" and gpu.rgb.is_cuda
    for name in ("rgb", "alpha", "depth"):
        diff = (getattr(gpu, name).cpu() - getattr(cpu, name)).abs()
        if name == "depth":
            diff = diff[(gpu.alpha.cpu() > 0.05) & (cpu.alpha > 0.05)] / 5.0  # relative to the scene depth
        print(f"gsplat vs torch {name}: max {float(diff.max()):.2e} mean {float(diff.mean()):.2e}")
        assert float(diff.mean()) < 1e-3, name
        assert float(diff.max()) < 5e-2, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gsplat_gradients_match_torch_backend():
    """Training on a GPU goes through gsplat's backward: its gradients must match the CPU rasterizer's."""
    splats = random_splats(2000, 22, 1)
    camera, pose = default_view(128, 128)
    target = torch.rand(128, 128, 3, generator=torch.Generator().manual_seed(3))
    grads = {}
    for backend, device in (("gsplat", "cuda"), ("torch", "cpu")):
        sp = splats.to_torch(device)
        for f in FIELDS:
            getattr(sp, f).requires_grad_(True)
        out = render(sp, camera, pose, background=(0.1, 0.2, 0.3), backend=backend)
        loss = (out.rgb - target.to(device)).abs().mean() + out.alpha.mean()
        loss.backward()
        grads[backend] = {f: getattr(sp, f).grad.detach().cpu().flatten() for f in FIELDS}
    for f in FIELDS:
        a, b = grads["gsplat"][f], grads["torch"][f]
        cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        print(f"gsplat vs torch d/d{f}: cosine {cos:.5f}, relative difference {rel:.2e}")
        assert cos > 0.98 and rel < 0.2, f
