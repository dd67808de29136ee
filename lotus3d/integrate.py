"""Perspective bilateral normal integration in log-depth (after Cao et al., ECCV 2022, "BiNI").

For a pinhole camera (OpenCV frame) and a surface point P = z r with r = ((u-cx)/fx, (v-cy)/fy, 1),
the normal n is orthogonal to dP/du and dP/dv, which gives the log-depth gradients

    fx (n . r) d(log z)/du = -n_x,        fy (n . r) d(log z)/dv = -n_y.

Each pixel contributes four one-sided differences (right, left, down, up) of log-depth; bilateral
weights w+ = sigmoid(k ((A- z)^2 - (A+ z)^2)), w- = 1 - w+ let the surface break where one side
jumps (depth discontinuities); the weights and the depth are updated in turns (IRLS) until the
energy changes by less than ``tol``. An optional depth prior adds ``lambda (z - z_prior)^2``; edges
where the prior jumps far more than the normals say carry no normal equations (predicted normals
are blurred across silhouettes and would otherwise integrate into a ramp there).

Solver: the normal equations are a weighted 5-point Laplacian, assembled in place on the pixel grid
(numba kernels, cropped to the mask's bounding box) and solved by conjugate gradients preconditioned
with an aggregation multigrid V-cycle (:mod:`lotus3d.multigrid`), warm started from the last depth;
early reweighting steps are solved loosely (their weights are about to change), and with a prior no
step runs more than STEP_CG_ITERATIONS (what a step leaves unsolved, the next continues).
Reweighting and assembly are parallel loops over rows. A half-resolution pyramid (nested
iteration) was tried and dropped: it settled on other bilateral weights, with larger errors on
DiLiGenT, and saved no time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from . import multigrid, threads
from .errors import InputError
from .multigrid import ordered_sum
from .types import pixel_rays


@dataclass
class IntegrationResult:
    """depth (H, W) (NaN outside the mask); weights: (H, W, 4) bilateral weights (right, left, down,
    up) — near 0 on a side where the surface breaks; iterations (reweighting steps); cg_iterations
    (all steps); seconds; energy (final)."""

    depth: np.ndarray
    weights: np.ndarray
    iterations: int
    seconds: float
    energy: float
    cg_iterations: int = 0


def log_depth_gradients(normal: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a_u, a_v, n.r): row scales fx (n.r), fy (n.r) and n.r per pixel, for (H, W, 3) normals."""
    h, w = normal.shape[:2]
    du = np.arange(w, dtype=np.float64) - K[0, 2]  # per column / row: the ray is (du / fx, dv / fy, 1)
    dv = (np.arange(h, dtype=np.float64) - K[1, 2])[:, None]
    nr = normal[..., 0] * du / K[0, 0] + normal[..., 1] * dv / K[1, 1] + normal[..., 2]
    return K[0, 0] * nr, K[1, 1] * nr, nr


# Equations per pixel p, on log-depth z, each with its own bilateral weight w[p, c]:
#   c=0 right: au[p] (z[right] - z[p]) = bu[p]      c=1 left: au[p] (z[p] - z[left]) = bu[p]
#   c=2 down:  av[p] (z[down]  - z[p]) = bv[p]      c=3 up:   av[p] (z[p] - z[up])   = bv[p]
# with au = fx n.r, bu = -n_x (likewise v). The edge p - right carries p's "right" and right's "left"
# equation, so the normal equations are a weighted 5-point Laplacian (lotus3d.multigrid). All arrays
# are padded by one invalid pixel on each side; w is 0 for a side without a valid neighbour.
@njit(cache=True, inline="always")
def _conductance_row(au, av, w, cx, cy, y):
    """Row y's edge conductances cx, cy (from weight rows y and y + 1)."""
    for x in range(1, w.shape[1] - 1):
        cx[y, x] = w[y, x, 0] * au[y, x] ** 2 + w[y, x + 1, 1] * au[y, x + 1] ** 2
        cy[y, x] = w[y, x, 2] * av[y, x] ** 2 + w[y + 1, x, 3] * av[y + 1, x] ** 2


@njit(cache=True, inline="always")
def _diagonal_row(au, av, bu, bv, valid, w, lam, zp, cx, cy, diag, rhs, y):
    """Row y's diagonal and right side: each pixel gathers its four edges (conductances of rows y - 1
    and y; w = 0 where an edge is missing)."""
    for x in range(1, valid.shape[1] - 1):
        if not valid[y, x]:
            diag[y, x] = 1.0
            rhs[y, x] = 0.0
            continue
        diag[y, x] = lam[y, x] + cx[y, x] + cx[y, x - 1] + cy[y, x] + cy[y - 1, x]
        rhs[y, x] = (
            lam[y, x] * zp[y, x]
            - w[y, x, 0] * au[y, x] * bu[y, x]
            - w[y, x + 1, 1] * au[y, x + 1] * bu[y, x + 1]
            + w[y, x - 1, 0] * au[y, x - 1] * bu[y, x - 1]
            + w[y, x, 1] * au[y, x] * bu[y, x]
            - w[y, x, 2] * av[y, x] * bv[y, x]
            - w[y + 1, x, 3] * av[y + 1, x] * bv[y + 1, x]
            + w[y - 1, x, 2] * av[y - 1, x] * bv[y - 1, x]
            + w[y, x, 3] * av[y, x] * bv[y, x]
        )


@njit(cache=True, parallel=True)
def _assemble(au, av, bu, bv, valid, w, lam, zp, cx, cy, diag, rhs):
    """Normal equations for weights w: edge conductances cx, cy, then the diagonal and the right side
    (each a parallel loop over rows)."""
    h = valid.shape[0]
    for y in prange(1, h - 1):
        _conductance_row(au, av, w, cx, cy, y)
    for y in prange(1, h - 1):
        _diagonal_row(au, av, bu, bv, valid, w, lam, zp, cx, cy, diag, rhs, y)


@njit(cache=True)
def _side_weights(a, z_prev, z, z_next, has_prev, has_next, k):
    """BiNI's bilateral weights (forward, backward): sigmoid(k ((A- z)^2 - (A+ z)^2)) and its
    complement. As in BiNI, a missing neighbour's difference counts as 0, so a side without a partner
    keeps at most half the weight (sigmoid(-k (A z)^2)), and the missing side carries none."""
    if has_prev and has_next:
        df = a * (z_next - z)
        db = a * (z - z_prev)
        s = 1.0 / (1.0 + np.exp(k * (df * df - db * db)))  # = 0.5 (1 + tanh(k (db^2 - df^2) / 2))
        return s, 1.0 - s
    if has_next:  # as BiNI: the missing side's difference counts as 0
        df = a * (z_next - z)
        return 1.0 / (1.0 + np.exp(k * df * df)), 0.0
    if has_prev:
        db = a * (z - z_prev)
        return 0.0, 1.0 / (1.0 + np.exp(k * db * db))
    return 0.0, 0.0


@njit(cache=True, inline="always")
def _reweight_row(au, av, bu, bv, valid, link_x, link_y, z, k, lam, zp, w, y):
    """Bilateral weights of row y for depth z into w; returns the row's energy with them."""
    e = 0.0
    for x in range(1, valid.shape[1] - 1):
        if not valid[y, x]:
            w[y, x, 0] = w[y, x, 1] = w[y, x, 2] = w[y, x, 3] = 0.0
            continue
        w[y, x, 0], w[y, x, 1] = _side_weights(
            au[y, x], z[y, x - 1], z[y, x], z[y, x + 1], link_x[y, x - 1], link_x[y, x], k
        )
        w[y, x, 2], w[y, x, 3] = _side_weights(
            av[y, x], z[y - 1, x], z[y, x], z[y + 1, x], link_y[y - 1, x], link_y[y, x], k
        )
        e += (
            w[y, x, 0] * (au[y, x] * (z[y, x + 1] - z[y, x]) - bu[y, x]) ** 2
            + w[y, x, 1] * (au[y, x] * (z[y, x] - z[y, x - 1]) - bu[y, x]) ** 2
            + w[y, x, 2] * (av[y, x] * (z[y + 1, x] - z[y, x]) - bv[y, x]) ** 2
            + w[y, x, 3] * (av[y, x] * (z[y, x] - z[y - 1, x]) - bv[y, x]) ** 2
            + lam[y, x] * (z[y, x] - zp[y, x]) ** 2
        )
    return e


@njit(cache=True, parallel=True)
def _reweight(au, av, bu, bv, valid, link_x, link_y, z, k, lam, zp, w):
    """Bilateral weights for depth z into w (H, W, 4), a parallel loop over rows; returns the energy
    with the new weights (row sums added in order: the same for any number of threads).
    link_x[y, x] / link_y[y, x]: the edge to the right / below carries equations."""
    h = valid.shape[0]
    rows = np.zeros(h)
    for y in prange(1, h - 1):
        rows[y] = _reweight_row(au, av, bu, bv, valid, link_x, link_y, z, k, lam, zp, w, y)
    return ordered_sum(rows)


def check_inputs(normal: np.ndarray, K: np.ndarray, mask: np.ndarray | None, prior: np.ndarray | None) -> np.ndarray:
    """Validate shapes and values; return the integration mask (valid, finite normals)."""
    if normal.ndim != 3 or normal.shape[2] != 3:
        raise InputError(f"normals must be (H, W, 3), got {normal.shape}")
    h, w = normal.shape[:2]
    if K.shape != (3, 3):
        raise InputError(f"intrinsics must be a 3x3 matrix, got shape {K.shape}")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"intrinsics must have finite, positive focal lengths, got {K.tolist()}")
    m = np.ones((h, w), bool) if mask is None else mask.astype(bool)
    if m.shape != (h, w):
        raise InputError(f"mask is {m.shape[::-1]} but the normals are {w}x{h}")
    if prior is not None and prior.shape != (h, w):
        raise InputError(f"depth prior is {prior.shape[::-1]} but the normals are {w}x{h}")
    for c in range(3):  # (isfinite(normal).all(-1) reduces over a 3-long axis: 10x slower)
        m &= np.isfinite(normal[..., c])
    if not m.any():
        raise InputError("nothing to integrate: the mask is empty or every normal is NaN")
    return m


# prior_breaks: a prior jump must also exceed this many times the log-depth change the normals predict
BREAK_RATIO = 3.0
# with a prior: stop when the mean log-depth change of a step is below this (0.01 %)
PRIOR_SETTLED = 1e-4
# With a prior, CG iterations per reweighting step at most: the next step starts from where this one
# stopped, so a system the preconditioner handles poorly (the cuts along the prior's jumps, noisy
# normals) is solved across steps instead of to the tolerance in each (six realistic 768x576 views:
# about a third of the time, same errors).
STEP_CG_ITERATIONS = 10
# After this many steps that needed STEP_CG_ITERATIONS or more, the weights count as rough and the
# rest of the integration uses the A-norm-optimal coarse step (see lotus3d.multigrid).
ROUGH_AFTER = 2


def integrate_normals(
    normal: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray | None = None,
    prior_depth: np.ndarray | None = None,
    prior_weight: float | np.ndarray = 1e-3,
    k: float = 2.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    cg_tol: float = 1e-3,
    solver: str = "multigrid",
    prior_breaks: float = 0.05,
) -> IntegrationResult:
    """Integrate (H, W, 3) unit normals (OpenCV camera frame, facing the camera) to depth.

    Args:
        K: (3, 3) intrinsics in pixels.
        mask: (H, W) pixels to integrate (default: all with finite normals).
        prior_depth: (H, W) depth prior (NaN = none); fixes the scale. Without it the result is up
            to scale, normalised so that its median is 1.
        prior_weight: weight of the prior relative to the normal terms (the prior dominates
            variations longer than about 2 pi / sqrt(prior_weight) pixels); a number, or (H, W) per pixel.
        k: bilateral sharpness (BiNI's k); max_iter, tol: reweighting stop (relative energy
            change); cg_tol: CG tolerance (relative residual, as scipy's ``cg``) once the energy
            settles; earlier steps, whose weights will still move, are solved to
            ``clip(0.1 * last relative energy change, cg_tol, 1e-2)`` (an inexact-Newton forcing);
            with a prior, each step stops after STEP_CG_ITERATIONS in any case.
        solver: CG preconditioner, "multigrid" (default) or "jacobi" (for comparison: its iteration
            count grows with the image size).
        prior_breaks: with a prior, edges across which the prior's log-depth jumps by more than this
            and by more than BREAK_RATIO times what the normals predict carry no normal equations:
            the depth may break there as the prior says (blurred normals at silhouettes otherwise
            integrate to a ramp). 0 disables.
    """
    start = time.perf_counter()
    if solver not in ("multigrid", "jacobi"):
        raise InputError(f"unknown solver {solver!r}: use 'multigrid' or 'jacobi'")
    m = check_inputs(normal, K, mask, prior_depth)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))  # work on the mask's bounding
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # box, padded by one invalid pixel
    Kc = K.astype(np.float64).copy()
    Kc[:2, 2] -= (cols[0], rows[0])
    valid = m[crop]
    nrm = normal[crop].astype(np.float64)
    nrm[~valid] = 0.0
    au, av, _ = log_depth_gradients(nrm, Kc)
    scale2 = float(np.median(au[valid] ** 2))
    if prior_depth is not None:
        p = prior_depth[crop].astype(np.float64)  # one kernel signature whatever the prior's dtype
        has_prior = valid & np.isfinite(p) & (p > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            zp = np.where(has_prior, np.log(p), 0.0)
        pw = prior_weight[crop] if np.ndim(prior_weight) == 2 else prior_weight
        lam = np.where(has_prior, pw * scale2, 0.0)
    else:
        zp = np.zeros(valid.shape)
        lam = np.where(valid, 1e-9 * scale2, 0.0)  # pins the free constant
    au, av, bu, bv, lam, zp, valid = (_pad(a) for a in (au, av, -nrm[..., 0], -nrm[..., 1], lam, zp, valid))
    link_x = valid & np.roll(valid, -1, 1)  # the pads are invalid, so nothing wraps around
    link_y = valid & np.roll(valid, -1, 0)
    if prior_depth is not None and prior_breaks > 0:
        cut_x, cut_y = _prior_breaks(zp, lam > 0, au, av, bu, bv, prior_breaks)
        link_x &= ~cut_x
        link_y &= ~cut_y

    z = zp.copy()
    w = _initial_weights(link_x, link_y)
    cx, cy, rhs = (np.zeros(valid.shape) for _ in range(3))
    diag = np.ones(valid.shape)
    energy, change = np.inf, np.inf
    cg_total = iterations = 0
    step = multigrid.OVER_CORRECTION
    # with a prior, no step runs more than STEP_CG_ITERATIONS; without one, the offsets of pieces the
    # weights nearly cut loose are set only by the solves, so each is solved to its tolerance
    max_cg = STEP_CG_ITERATIONS if prior_depth is not None and solver == "multigrid" else 500
    slow = 0  # steps that needed STEP_CG_ITERATIONS or more
    work: dict = {}  # the solver's work arrays, allocated once for all steps
    with threads.threads_for(valid.size):
        reweight, assemble = threads.kernel(_reweight), threads.kernel(_assemble)
        assemble(au, av, bu, bv, valid, w, lam, zp, cx, cy, diag, rhs)
        for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is returned
            inner = min(max(cg_tol, 0.1 * change), 1e-2)
            z_in = z
            z, cg_it = multigrid.solve(cx, cy, diag, valid, rhs, z, inner, max_cg, solver, step, work)
            solved = cg_it < max_cg
            slow += cg_it >= STEP_CG_ITERATIONS
            if slow >= ROUGH_AFTER and solver == "multigrid":
                step = None
            cg_total += cg_it
            new_energy = reweight(au, av, bu, bv, valid, link_x, link_y, z, k, lam, zp, w)
            assemble(au, av, bu, bv, valid, w, lam, zp, cx, cy, diag, rhs)
            change = abs(energy - new_energy) / max(abs(new_energy), 1e-300)
            energy = new_energy
            # with a prior, noisy normals keep flipping weights at a few pixels and the energy may never
            # settle to tol; the prior anchors the depth, so also stop once it no longer moves
            settled = prior_depth is not None and float(np.abs(z - z_in)[valid].mean()) < PRIOR_SETTLED
            if inner <= cg_tol and ((change < tol and solved) or settled):
                break

    depth = np.full(m.shape, np.nan)
    depth[crop] = np.where(valid[1:-1, 1:-1], np.exp(z[1:-1, 1:-1]), np.nan)
    if prior_depth is None:
        depth /= np.median(depth[crop][valid[1:-1, 1:-1]])
    weights = np.zeros(m.shape + (4,), np.float32)
    weights[crop] = w[1:-1, 1:-1]
    return IntegrationResult(
        depth.astype(np.float32), weights, iterations, time.perf_counter() - start, energy, cg_total
    )


def _pad(a: np.ndarray) -> np.ndarray:
    """(H, W) -> (H + 2, W + 2), zero (False) around (np.pad is ~10x slower on these sizes)."""
    out = np.zeros((a.shape[0] + 2, a.shape[1] + 2), a.dtype)
    out[1:-1, 1:-1] = a
    return out


def _prior_breaks(zp, has_prior, au, av, bu, bv, threshold):
    """(cut_x, cut_y): padded edge masks where the prior's log-depth jumps (see integrate_normals)."""

    def slope(b, a):  # log-depth change per pixel the normals predict: a dz = b
        return b / np.where(np.abs(a) > 1e-6, a, 1e-6)

    cuts = []
    for axis, b, a in ((1, bu, au), (0, bv, av)):
        jump = np.abs(np.roll(zp, -1, axis) - zp)
        both = has_prior & np.roll(has_prior, -1, axis)
        per_pixel = slope(b, a)
        predicted = 0.5 * np.abs(per_pixel + np.roll(per_pixel, -1, axis))
        cuts.append(both & (jump > threshold) & (jump > BREAK_RATIO * predicted))
    return cuts[0], cuts[1]


def _initial_weights(link_x: np.ndarray, link_y: np.ndarray) -> np.ndarray:
    """BiNI's start for padded (H+2, W+2) links: (H+2, W+2, 4) weights, 0.5 on every side that has a
    link."""
    has = np.zeros(link_x.shape + (4,), bool)
    has[..., 0] = link_x
    has[:, 1:, 1] = link_x[:, :-1]
    has[..., 2] = link_y
    has[1:, :, 3] = link_y[:-1]
    return has * 0.5


# ----------------------------------------------------------------------------------- warm-up
def warm_up() -> float:
    """Compile the integration kernels, or load them from numba's disk cache (``cache=True``: the
    package's ``__pycache__``, or ``NUMBA_CACHE_DIR``); returns the seconds it took. A machine's first
    call compiles (tens of seconds on a small CPU); every later process loads them (under a second).
    ``lotus3d warmup`` runs it once after installing; ``lotus3d single`` starts it in a background
    thread while it reads the image and the prediction."""
    t0 = time.perf_counter()
    n = 160  # above multigrid.PARALLEL_PIXELS: the parallel kernels are compiled too
    u, v = np.meshgrid(np.linspace(-0.6, 0.6, n), np.linspace(-0.6, 0.6, n))
    zs = np.sqrt(np.clip(1.0 - u**2 - v**2, 0.04, None))
    normal = np.stack([u, v, -zs], -1) / np.linalg.norm(np.stack([u, v, zs], -1), axis=-1, keepdims=True)
    K = np.array([[n, 0.0, (n - 1) / 2], [0.0, n, (n - 1) / 2], [0.0, 0.0, 1.0]])
    prior = 3.0 - zs
    integrate_normals(normal.astype(np.float32), K, prior_depth=prior, max_iter=3)
    integrate_normals(normal.astype(np.float32), K, max_iter=3)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- helpers on depth
def depth_to_normals(depth: np.ndarray, K: np.ndarray, step: int = 1) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) unit normals (OpenCV camera frame, facing the camera) from central
    differences of the back-projected points over ``step`` pixels each side (a larger step averages
    out pixel noise); NaN where undefined. Computed per component (the shift and focal searches call
    it thousands of times on small maps; the same arithmetic as ``np.cross`` and ``np.linalg.norm``)."""
    d = np.asarray(depth, np.float64)
    h, w = d.shape
    rays = pixel_rays(K, w, h)  # z = 1: the points are (x d, y d, d), as backproject gives
    P = (rays[..., 0] * d, rays[..., 1] * d, d)
    du, dv = np.full((2, 3, h, w), np.nan)
    for c in range(3):
        du[c][:, step:-step] = P[c][:, 2 * step :] - P[c][:, : -2 * step]
        dv[c][step:-step] = P[c][2 * step :] - P[c][: -2 * step]
    # dv x du: for x right, y down, z forward this points towards the camera
    n = np.stack([dv[1] * du[2] - dv[2] * du[1], dv[2] * du[0] - dv[0] * du[2], dv[0] * du[1] - dv[1] * du[0]], -1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero cross product (flat depth): NaN, undefined
        n /= np.sqrt(n[..., 0] * n[..., 0] + n[..., 1] * n[..., 1] + n[..., 2] * n[..., 2])[..., None]
    flip = n[..., 0] * P[0] + n[..., 1] * P[1] + n[..., 2] * P[2] > 0
    n[flip] *= -1
    return n.astype(np.float32)


def angular_error_deg(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean angle between two normal maps in degrees (over ``mask`` and finite pixels)."""
    cos = np.clip(np.sum(a * b, -1), -1, 1)
    ok = np.isfinite(cos) if mask is None else (np.isfinite(cos) & mask)
    return float(np.degrees(np.arccos(cos[ok])).mean()) if ok.any() else float("nan")
