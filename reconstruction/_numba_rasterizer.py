"""Compiled CPU compositing (numba) for the rasterizer in ``_torch_rasterizer``: same semantics, one pass.

The pure-torch compositor evaluates every (Gaussian, pixel) pair inside the ``alpha >= 1/255`` ellipses,
including the pairs behind pixels that are already opaque, and needs a sort per chunk to bring them into
pixel order. Here each image row is a scanline: its Gaussians in depth order (a CSR list built once), each
covering the exact column range of its ellipse on that row (the same analytic extents as the torch path);
the row's pixels keep their transmittance, skip a Gaussian once they have ended (``T (1 - alpha) <= 1e-4``,
gsplat's early stop) and the row stops when every pixel has ended. Rows are shared between threads.

The backward pass (gsplat's): walk each row's list back to front from every pixel's last contributing
Gaussian, recover the transmittance before each pair from the final one (``T / (1 - alpha)``), and carry the
suffix sum of ``w v`` per pixel; per-Gaussian sums go to one buffer per thread, added in a fixed order, so
results do not depend on the thread schedule.

Arithmetic is float64 throughout (inputs of either float precision), and alpha is computed as gsplat
does: ``opacity exp(-(0.5 (a u^2 + c v^2) + b u v))`` at pixel centres.
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from numba import njit, prange

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
_ROW_EPS = 1e-2  # as ``_torch_rasterizer._ROW_EPS``: slack on the analytic column ranges

# OpenMP first (torch's own runtime); numba would try TBB first and warn about the old TBB some wheels ship.
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

#: numba's parallel kernels are launched one at a time (its workqueue layer is not thread-safe; Prefect
#: runs tasks in threads).
_LOCK = threading.Lock()


@njit(cache=True)
def row_lists(i0: np.ndarray, i1: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image row, the Gaussians whose ``alpha >= 1/255`` rows include it, in their (depth) order: CSR
    ``(offsets [H + 1], items)``."""
    counts = np.zeros(height + 1, np.int64)
    for g in range(i0.shape[0]):
        lo, hi = max(i0[g], 0), min(i1[g], height - 1)
        if hi >= lo:
            counts[lo] += 1
            counts[hi + 1] -= 1
    offsets = np.zeros(height + 1, np.int64)
    run = 0
    for r in range(height):
        run += counts[r]
        offsets[r + 1] = offsets[r] + run
    items = np.empty(offsets[height], np.int32)
    fill = offsets[:height].copy()
    for g in range(i0.shape[0]):
        for r in range(max(i0[g], 0), min(i1[g], height - 1) + 1):
            items[fill[r]] = g
            fill[r] += 1
    return offsets, items


@njit(inline="always")
def _span(r, g, mx, my, p1, p2, p3, width):
    """Columns [j0, j1] of Gaussian g's ellipse on row r (as ``_torch_rasterizer._row_segments``)."""
    v = r + 0.5 - my[g]
    half = np.sqrt(max(p1[g] - v * v * p2[g], 0.0))
    centre = mx[g] - 0.5 - p3[g] * v
    j0 = max(int(np.ceil(centre - half - _ROW_EPS)), 0)
    j1 = min(int(np.floor(centre + half + _ROW_EPS)), width - 1)
    return j0, j1, v


@njit(inline="always")
def _alpha(j, v, g, mx, conics, op):
    """Gaussian g's alpha before the clamp at column j of a row ``v`` below its centre: gsplat's
    ``opacity exp(-sigma)`` at the pixel centre, the same expression in both passes. Returns (alpha, u)."""
    u = j + 0.5 - mx[g]
    a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
    return op[g] * np.exp(-(0.5 * (a * u * u + c * v * v) + b * u * v)), u


@njit(parallel=True, cache=True)
def forward(
    offsets, items, mx, my, conics, op, p1, p2, p3, feats, width, height, acc, t_final, last, nblocks
):
    """Composite front to back. Fills ``acc`` [5, H*W] (zeros in), ``t_final`` [H*W] (ones in: the
    transmittance left behind the last pair) and ``last`` [H*W] (-1 in: the list position of each pixel's
    last contributing pair). Rows are dealt to ``nblocks`` parallel blocks in turn."""
    for blk in prange(nblocks):
        done = np.zeros(width, np.bool_)
        for r in range(blk, height, nblocks):
            done[:] = False
            ndone = 0
            base = r * width
            for k in range(offsets[r], offsets[r + 1]):
                g = items[k]
                j0, j1, v = _span(r, g, mx, my, p1, p2, p3, width)
                for j in range(j0, j1 + 1):
                    if done[j]:
                        continue
                    alpha = _alpha(j, v, g, mx, conics, op)[0]
                    if alpha < ALPHA_THRESHOLD:
                        continue
                    alpha = min(alpha, ALPHA_MAX)
                    p = base + j
                    t = t_final[p]
                    t_next = t * (1.0 - alpha)
                    if t_next <= T_MIN:
                        done[j] = True
                        ndone += 1
                        continue
                    w = alpha * t
                    acc[0, p] += feats[0, g] * w
                    acc[1, p] += feats[1, g] * w
                    acc[2, p] += feats[2, g] * w
                    acc[3, p] += w
                    acc[4, p] += feats[4, g] * w
                    t_final[p] = t_next
                    last[p] = k
                if ndone == width:
                    break


@njit(parallel=True, cache=True)
def backward(offsets, items, mx, my, conics, op, p1, p2, p3, feats, grad, width, height, t_final, last, mom):
    """Per-Gaussian sums for the gradients, into ``mom`` [threads, 10, M] (zeros in): d_sigma u, d_sigma v,
    d_sigma u^2, d_sigma u v, d_sigma v^2, d_alpha alpha, and w times the rgb and depth gradients."""
    nblocks = mom.shape[0]
    for blk in prange(nblocks):
        m = mom[blk]
        t = np.empty(width)
        s = np.empty(width)
        for r in range(blk, height, nblocks):
            base = r * width
            for j in range(width):
                t[j] = t_final[base + j]
                s[j] = 0.0
            for k in range(offsets[r + 1] - 1, offsets[r] - 1, -1):
                g = items[k]
                j0, j1, v = _span(r, g, mx, my, p1, p2, p3, width)
                f0, f1, f2, f4 = feats[0, g], feats[1, g], feats[2, g], feats[4, g]
                for j in range(j0, j1 + 1):
                    p = base + j
                    if k > last[p]:
                        continue
                    raw, u = _alpha(j, v, g, mx, conics, op)
                    if raw < ALPHA_THRESHOLD:
                        continue
                    alpha = min(raw, ALPHA_MAX)
                    t_before = t[j] / (1.0 - alpha)
                    t[j] = t_before
                    w = alpha * t_before
                    g0, g1, g2, g3, g4 = grad[0, p], grad[1, p], grad[2, p], grad[3, p], grad[4, p]
                    vdot = g0 * f0 + g1 * f1 + g2 * f2 + g3 + g4 * f4
                    if raw <= ALPHA_MAX:
                        d_alpha = t_before * vdot - s[j] / (1.0 - alpha)
                        d_sig = -d_alpha * alpha
                        m[0, g] += d_sig * u
                        m[1, g] += d_sig * v
                        m[2, g] += d_sig * u * u
                        m[3, g] += d_sig * u * v
                        m[4, g] += d_sig * v * v
                        m[5, g] += d_alpha * alpha
                    s[j] += w * vdot
                    m[6, g] += g0 * w
                    m[7, g] += g1 * w
                    m[8, g] += g2 * w
                    m[9, g] += g4 * w


def threads() -> int:
    """Threads for the kernels: torch's setting (``torch.set_num_threads`` limits both), at most numba's."""
    import torch

    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def launch(kernel, *args, num_threads: int) -> None:
    """Run a parallel kernel on ``num_threads`` threads, one launch at a time across Python threads."""
    with _LOCK:
        numba.set_num_threads(num_threads)
        kernel(*args)
