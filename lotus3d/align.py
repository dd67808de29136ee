"""Bring an affine-invariant prediction to the scene's scale with the view's SfM points.

For each view the sparse points it observes give (u, v, z). We fit a scale and shift in the
prediction's own space — disparity: ``s p + t ~ 1 / z``; depth: ``s p + t ~ z`` — minimising the
*relative* depth residual, which is linear in (s, t):

    disparity: r = (s p + t) z - 1          depth: r = (s p + t) / z - 1

The fit is robust without a hand-set threshold: least-median-of-squares over random minimal
pairs gives a start and a noise scale; iteratively reweighted least squares with a Cauchy loss
finishes it. Guards: s > 0; a disparity fit must stay positive over the observed prediction
range; enough points and inliers. Views that fail are flagged (``Alignment.ok = False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import Alignment, DepthKind


@dataclass
class AlignOptions:
    min_points: int = 8
    min_inlier_ratio: float = 0.3
    max_median_residual: float = 0.25
    trials: int = 300
    irls_iterations: int = 20
    seed: int = 0


def sample_prediction(pred: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Prediction values at (N, 2) pixel positions (nearest pixel; NaN outside the image)."""
    h, w = pred.shape
    ui, vi = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    inside = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    out = np.full(len(uv), np.nan, np.float64)
    out[inside] = pred[vi[inside], ui[inside]]
    return out


def _design(p: np.ndarray, z: np.ndarray, kind: DepthKind) -> np.ndarray:
    """(N, 2) rows a_i such that r_i = a_i . (s, t) - 1 is the relative depth residual."""
    if kind == "disparity":
        return np.stack([p * z, z], -1)
    return np.stack([p / z, 1.0 / z], -1)


def residuals(p: np.ndarray, z: np.ndarray, kind: DepthKind, scale: float, shift: float) -> np.ndarray:
    """Relative depth residuals of a fit (see module docstring)."""
    return _design(p, z, kind) @ np.array([scale, shift]) - 1.0


def _weighted_lstsq(A: np.ndarray, w: np.ndarray) -> np.ndarray:
    sw = np.sqrt(w)[:, None]
    sol, *_ = np.linalg.lstsq(A * sw, sw[:, 0], rcond=None)
    return sol


def fit_scale_shift(p: np.ndarray, z: np.ndarray, kind: DepthKind, options: AlignOptions | None = None) -> Alignment:
    """Robust scale / shift of prediction samples ``p`` (N,) to point depths ``z`` (N,).

    Returns an :class:`Alignment`; ``ok`` is False (with ``reason``) when the fit is unusable.
    """
    o = options or AlignOptions()
    valid = np.isfinite(p) & np.isfinite(z) & (z > 0)
    p, z = p[valid].astype(np.float64), z[valid].astype(np.float64)
    n = len(p)
    if n < o.min_points:
        return Alignment(
            1.0, 0.0, kind, n, 0, ok=False, reason=f"{n} usable sparse points (< {o.min_points})", method="robust"
        )
    A = _design(p, z, kind)
    rng = np.random.default_rng(o.seed)
    # least median of squares over minimal pairs
    best, best_med = None, np.inf
    pairs = rng.integers(0, n, (o.trials, 2))
    for i, j in pairs:
        if i == j:
            continue
        M = A[[i, j]]
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        x = np.linalg.solve(M, np.ones(2))
        if x[0] <= 0:
            continue
        med = np.median((A @ x - 1.0) ** 2)
        if med < best_med:
            best, best_med = x, med
    if best is None:  # degenerate sample (e.g. constant prediction): plain least squares
        best = _weighted_lstsq(A, np.ones(n))
        best_med = np.median((A @ best - 1.0) ** 2)
    sigma = max(1.4826 * (1 + 5 / max(n - 2, 1)) * np.sqrt(best_med), 1e-4)
    x = best
    for _ in range(o.irls_iterations):
        r = A @ x - 1.0
        c = 2.385 * sigma
        w = 1.0 / (1.0 + (r / c) ** 2)
        x_new = _weighted_lstsq(A, w)
        if np.allclose(x_new, x, rtol=1e-9, atol=1e-12):
            x = x_new
            break
        x = x_new
        inl = np.abs(A @ x - 1.0) < 2.5 * sigma
        if inl.sum() >= 3:  # re-estimate the noise scale from the inliers
            sigma = max(1.4826 * np.median(np.abs((A @ x - 1.0)[inl])), 1e-4)
    s, t = float(x[0]), float(x[1])
    r = A @ x - 1.0
    inliers = np.abs(r) < max(2.5 * sigma, 1e-3)
    return _finish(Alignment(s, t, kind, n, int(inliers.sum()), method="robust"), p, r, inliers, o)


def fit_least_squares(p: np.ndarray, z: np.ndarray, kind: DepthKind) -> Alignment:
    """The naive baseline: ordinary least squares of ``s p + t`` to 1/z (or z), every point."""
    valid = np.isfinite(p) & np.isfinite(z) & (z > 0)
    p, z = p[valid].astype(np.float64), z[valid].astype(np.float64)
    if len(p) < 2:
        return Alignment(1.0, 0.0, kind, len(p), 0, ok=False, reason="fewer than 2 points", method="lstsq")
    target = 1.0 / z if kind == "disparity" else z
    A = np.stack([p, np.ones_like(p)], -1)
    (s, t), *_ = np.linalg.lstsq(A, target, rcond=None)
    r = residuals(p, z, kind, s, t)
    ok = s > 0
    support = (float(np.percentile(p, 2)), float(np.percentile(p, 98)))
    return Alignment(
        float(s),
        float(t),
        kind,
        len(p),
        len(p),
        _percentiles(r),
        ok=bool(ok),
        reason="" if ok else "negative scale",
        method="lstsq",
        support=support,
    )


def _percentiles(r: np.ndarray) -> dict[str, float]:
    a = np.abs(r)
    if len(a) == 0:
        return {}
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 75, 90, 95)}


def _finish(al: Alignment, p: np.ndarray, r: np.ndarray, inliers: np.ndarray, o: AlignOptions) -> Alignment:
    al.support = (float(np.percentile(p[inliers], 2)), float(np.percentile(p[inliers], 98)))
    al.residual_percentiles = _percentiles(r[inliers])
    al.residual_percentiles["all_p50"] = float(np.median(np.abs(r)))
    ratio = al.num_inliers / max(al.num_points, 1)
    if al.scale <= 0:
        al.ok, al.reason = False, "non-positive scale (prediction anti-correlated with the points)"
    elif al.kind == "disparity" and al.scale * np.percentile(p, 1) + al.shift <= 0:
        al.ok, al.reason = False, "aligned disparity is not positive over the observed prediction range"
    elif al.kind == "depth" and al.scale * np.percentile(p, 1) + al.shift <= 0:
        al.ok, al.reason = False, "aligned depth is not positive over the observed prediction range"
    elif ratio < o.min_inlier_ratio:
        al.ok, al.reason = False, f"only {ratio:.0%} of the points agree with the fit"
    elif al.residual_percentiles.get("p50", 0.0) > o.max_median_residual:
        al.ok, al.reason = False, f"median relative residual {al.residual_percentiles['p50']:.2f} too large"
    return al


def apply_alignment(pred: np.ndarray, al: Alignment, far_margin: float | None = 0.05) -> np.ndarray:
    """(H, W) prediction -> depth in scene units.

    NaN where the aligned value is not positive and, unless ``far_margin`` is None, where the
    prediction lies farther than the view's points support (beyond ``al.support`` by more than
    ``far_margin`` of its width): an affine fit says nothing about the saturated far end of a
    relative prediction (sky, background), which would otherwise become a wall.
    """
    pred = pred.astype(np.float64)
    v = al.scale * pred + al.shift
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = 1.0 / v if al.kind == "disparity" else v
    bad = ~(v > 0)
    if far_margin is not None and al.support is not None:
        lo, hi = al.support
        m = far_margin * max(hi - lo, 1e-6)
        with np.errstate(invalid="ignore"):
            bad |= (pred < lo - m) if al.kind == "disparity" else (pred > hi + m)
    depth[bad] = np.nan
    return depth.astype(np.float32)
