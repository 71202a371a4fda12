"""Pure splat operations: select / remove / concat / in_box / transform (with SH rotation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconstruction.cameras import quat_to_matrix
from reconstruction.sh import eval_sh
from reconstruction.splat_ops import concat, in_box, remove, select, transform
from reconstruction.splats import Splats


def rand_splats(n: int, degree: int = 3, seed: int = 0) -> Splats:
    r = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    f = lambda *shape: r.standard_normal(shape).astype(np.float32)  # noqa: E731
    return Splats(f(n, 3), f(n, 4), f(n, 3), f(n), f(n, 3), f(n, k, 3))


def test_select_mask_indices_and_torch():
    s = rand_splats(10)
    mask = np.arange(10) % 3 == 0
    a = select(s, mask)
    assert len(a) == 4 and np.array_equal(a.shN, s.shN[mask])
    b = select(s, [9, 0])
    assert np.array_equal(b.means, s.means[[9, 0]])
    t = select(s.to_torch(), torch.as_tensor(mask))
    assert isinstance(t.means, torch.Tensor) and t.to_numpy().equal(a)
    assert remove(s, mask).equal(select(s, ~mask))
    with pytest.raises(ValueError, match="shape"):
        select(s, mask[:5])
    with pytest.raises(ValueError, match="boolean"):
        remove(s, [1, 2])


def test_concat_pads_lower_sh_degree():
    a, b = rand_splats(3, 3), rand_splats(2, 1, seed=1)
    c = concat([a, b])
    assert len(c) == 5 and c.sh_degree == 3
    assert np.array_equal(c.shN[3:, :3], b.shN) and not c.shN[3:, 3:].any()
    assert np.array_equal(c.means, np.concatenate([a.means, b.means]))
    ct = concat([a.to_torch(), b.to_torch()])
    assert ct.to_numpy().equal(c)
    with pytest.raises(ValueError, match="mix"):
        concat([a, b.to_torch()])


def test_in_box_rotated():
    pts = np.array([[0.0, 0.9, 0.0], [0.9, 0.0, 0.0]])
    q = [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]  # box x axis -> world y
    assert in_box(pts, [0, 0, 0], [2, 1, 1], q).tolist() == [True, False]


def test_transform_round_trip_and_view_consistency():
    s = rand_splats(200, 3)
    R = quat_to_matrix(np.array([0.3, -0.5, 0.7, 0.2]))
    t, k = np.array([1.0, -2.0, 0.5]), 2.5
    moved = transform(s, R, t, k)
    np.testing.assert_allclose(moved.means, k * s.means @ R.T + t, atol=1e-5)
    np.testing.assert_allclose(moved.scales, s.scales + np.log(k), atol=1e-6)
    # covariance turns with the frame
    Rq = quat_to_matrix(moved.quats)
    np.testing.assert_allclose(Rq, R @ quat_to_matrix(s.quats), atol=1e-5)
    # colour seen along R d after the move equals colour along d before
    d = np.random.default_rng(1).standard_normal((200, 3))
    c0 = eval_sh(
        3, torch.from_numpy(np.concatenate([s.sh0[:, None], s.shN], 1)).double(), torch.from_numpy(d)
    )
    c1 = eval_sh(3, torch.from_numpy(np.concatenate([moved.sh0[:, None], moved.shN], 1)).double(),
                 torch.from_numpy(d @ R.T))  # fmt: skip
    np.testing.assert_allclose(c1.numpy(), c0.numpy(), atol=1e-5)
    back = transform(moved, R.T, -R.T @ t / k, 1 / k)
    for f in ("means", "quats", "scales", "shN"):
        np.testing.assert_allclose(getattr(back, f), getattr(s, f), atol=2e-5, err_msg=f)
    tt = transform(s.to_torch(), R, t, k)
    assert isinstance(tt.means, torch.Tensor)
    with pytest.raises(ValueError, match="rotation"):
        transform(s, np.diag([1.0, 1.0, -1.0]))
