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

__all__ = [
    "Alignment",
    "AlignOptions",
    "LocalOptions",
    "LocalCorrection",
    "fit_scale_shift",
    "fit_least_squares",
    "apply_alignment",
    "fit_local_correction",
    "apply_local_correction",
    "sample_prediction",
    "residuals",
    "heldout_loss",
]


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
    elif al.scale * np.percentile(p, 1) + al.shift <= 0:
        al.ok, al.reason = False, f"aligned {al.kind} is not positive over the observed prediction range"
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


# ------------------------------------------------------------------------------- local correction
HELDOUT_CAP = 0.05  # log-depth residuals beyond this (5 %) count as gross errors in held-out losses


@dataclass
class LocalOptions:
    spatial: tuple[float, ...] = (0.015, 0.03, 0.06, 0.12, 0.25)  # candidate smoothness, fraction of image diagonal
    range_: tuple[float, ...] = (0.015, 0.03, 0.08, 0.25)  # candidate log-depth kernel widths (edges)
    min_targets_per_kernel: float = 4.0  # grid: try a spatial width only if this many targets fall in pi sigma^2
    prior: float = 0.5  # pull towards no correction where points are few (in units of point weight)
    gross_outlier: float = 0.3  # |log residual| beyond which a point never counts
    irls_iterations: int = 3
    method: str = "grid"  # "grid": bilateral grid, linear cost; "dense": N x N kernels (the earlier method)
    cells_per_sigma: float = 2.0  # grid: cells per kernel width on each axis
    max_range_cells: int = 64  # grid: at most this many log-depth cells (wider cells beyond)
    max_points: int = 2000  # dense only: points used to choose the smoothness
    grid_stride: int = 16  # dense only: spacing of the grid the field is evaluated on, pixels
    bins: int = 24  # dense only: log-depth bins of that grid
    seed: int = 0

    @classmethod
    def dense(cls) -> LocalOptions:
        """The earlier dense method with its own candidate widths (for comparison)."""
        return cls(method="dense", spatial=(0.03, 0.06, 0.12, 0.25), range_=(0.03, 0.08, 0.25))

    @classmethod
    def refinement(cls) -> LocalOptions:
        """Finer candidates only, for a correction on top of one already fitted (dense targets)."""
        return cls(spatial=(0.015, 0.03, 0.06), range_=(0.015, 0.03, 0.08))


@dataclass
class LocalCorrection:
    """A smooth, edge-aware correction of an aligned depth map: depth * exp(field).

    ``spatial_px`` / ``range_log`` are the kernel widths chosen on held-out points;
    ``heldout_before`` / ``heldout_after`` the :func:`heldout_loss` of the points' log depth
    residuals without and with the correction (leave-one-out).
    """

    field: np.ndarray  # (H, W) log-depth correction
    spatial_px: float
    range_log: float
    heldout_before: float
    heldout_after: float
    num_points: int


def _cauchy(res: np.ndarray) -> np.ndarray:
    """Cauchy IRLS weights of residuals, their scale from the median absolute residual."""
    scale = max(1.4826 * float(np.median(np.abs(res))), 1e-3)
    return 1.0 / (1.0 + (res / (2.385 * scale)) ** 2)


def heldout_loss(res: np.ndarray, w: np.ndarray | None = None, cap: float = HELDOUT_CAP) -> float:
    """Mean of min(|res|, cap) over residuals (N,) of log depth, weighted by ``w`` when given.

    How the local correction's smoothness is chosen and how every stage is measured on held-out
    points: unlike a median, it sees an object whose points are a minority of the view (the median
    follows the floor), and unlike a mean, a wrong SfM match counts at most ``cap``.
    """
    a = np.minimum(np.abs(res), cap)
    return float(np.average(a, weights=w)) if len(a) else float("nan")


def _correction_targets(depth: np.ndarray, uv: np.ndarray, z: np.ndarray, gross: float, weights: np.ndarray | None):
    """(uv, rho, L, w) of the usable points: log residual log z - log depth, the depth's log, the weight."""
    sampled = sample_prediction(depth, uv)
    w = np.ones(len(z)) if weights is None else np.asarray(weights, np.float64)
    ok = np.isfinite(sampled) & (sampled > 0) & np.isfinite(z) & (z > 0) & (w > 0)
    uv, d, z, w = uv[ok], sampled[ok], z[ok], w[ok]
    rho = np.log(z) - np.log(d)
    keep = np.abs(rho) < gross
    return uv[keep], rho[keep], np.log(d)[keep], w[keep]


def fit_local_correction(
    depth: np.ndarray,
    uv: np.ndarray,
    z: np.ndarray,
    options: LocalOptions | None = None,
    weights: np.ndarray | None = None,
) -> LocalCorrection | None:
    """Fit a spatially varying correction of an aligned ``depth`` (H, W) to target depths ``z`` (N,)
    at pixels ``uv`` (N, 2): the view's SfM points, or any denser target.

    The correction of log-depth is a bilateral (image space x log-depth) weighted average of the
    targets' log residuals, so it is smooth across a surface yet free to change across depth edges,
    where objects may be off by different amounts. Its smoothness is chosen by leave-one-out error on
    the targets, gross outliers are ignored, the rest down-weighted by IRLS (Cauchy); ``weights`` (N,)
    scale each target's say (default 1). Returns None when no candidate beats leaving the depth as it
    is on held-out targets.

    ``options.method == "grid"`` (default) evaluates the average on a bilateral grid (splat, blur,
    slice; Chen, Paris & Durand 2007) with an exact leave-one-out term: time and memory grow linearly
    with the targets and pixels. ``"dense"`` is the earlier N x N kernel version, kept for comparison.
    """
    o = options or LocalOptions()
    if o.method == "dense":
        return _fit_local_dense(depth, uv, z, o)
    if o.method != "grid":
        raise ValueError(f"unknown local correction method {o.method!r}: grid or dense")
    h, w = depth.shape
    uv, rho, L, prior_w = _correction_targets(depth, uv, z, o.gross_outlier, weights)
    n = len(rho)
    if n < 10:
        return None
    logd = np.log(np.where(depth > 0, depth, np.nan))
    lo, hi = np.nanpercentile(logd, [0.5, 99.5])
    if not (np.isfinite(lo) and hi > lo):
        return None
    diag = float(np.hypot(h, w))
    crit_w = None if weights is None else prior_w  # held-out error: each target counts by its weight
    before = heldout_loss(rho, crit_w)
    best: tuple = (before, None, None, None)  # (loss, grid, its target locations, robust weights)
    widest = max(o.spatial)  # narrow kernels only where the targets are dense enough to fill them
    spatial = [
        fs for fs in o.spatial if fs == widest or n * np.pi * (fs * diag) ** 2 >= o.min_targets_per_kernel * h * w
    ]

    def trial(fs: float, sr: float) -> None:
        nonlocal best
        grid = _BilateralGrid((h, w), (lo, hi), fs * diag, sr, o.cells_per_sigma, o.max_range_cells)
        at = grid.locate(uv, L)
        r = prior_w.copy()
        for _ in range(o.irls_iterations):
            res = rho - grid.loo_average(at, rho, r, o.prior)
            r = prior_w * _cauchy(res)
        err = heldout_loss(res, crit_w)
        tried[(fs, sr)] = err
        if err < best[0]:
            best = (err, grid, at, r)

    # coordinate search: the spatial width at a middle log-depth width, then the log-depth width at it
    tried: dict[tuple[float, float], float] = {}
    mid = o.range_[len(o.range_) // 2]
    for fs in spatial:
        trial(fs, mid)
    fs_best = min(tried, key=tried.get)[0]
    for sr in o.range_:
        if (fs_best, sr) not in tried:
            trial(fs_best, sr)
    err, grid, at, r = best
    if grid is None:
        return None
    field = grid.field(logd, at, rho, r, o.prior)
    return LocalCorrection(field.astype(np.float32), grid.sigma_px, grid.sigma_log, before, err, n)


class _BilateralGrid:
    """A regular (y, x, log-depth) grid over one view, cells ``cells_per_sigma`` to a kernel width.

    A Gaussian-weighted sum over targets, sum_j k(i, j) v_j, is evaluated in linear time: splat
    each v_j onto its 8 surrounding cells (trilinear weights), blur the grid with a separable
    Gaussian whose centre weight is 1, slice at the query by trilinear interpolation. The blur's
    width is reduced so that, with the two tents of splat and slice, the effective kernel has the
    requested width.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        log_range: tuple[float, float],
        sigma_px: float,
        sigma_log: float,
        cells_per_sigma: float,
        max_range_cells: int,
    ):
        h, w = shape
        self.sigma_px, self.sigma_log = float(sigma_px), float(sigma_log)
        self.lo = float(log_range[0])
        self.step = np.array(
            [
                max(sigma_px / cells_per_sigma, 1.0),
                max(sigma_px / cells_per_sigma, 1.0),
                max(sigma_log / cells_per_sigma, (log_range[1] - log_range[0]) / max_range_cells, 1e-6),
            ]
        )
        extent = np.array([h - 1, w - 1, log_range[1] - log_range[0]])
        self.dims = tuple(int(d) for d in np.floor(extent / self.step) + 2)
        cells = np.array([sigma_px, sigma_px, sigma_log]) / self.step  # kernel width in cells per axis
        self.blur = np.sqrt(np.maximum(cells**2 - 1.0 / 3.0, 0.25))  # minus the tents' variance (2 x 1/6)

    def coords(self, yx: np.ndarray, L: np.ndarray) -> np.ndarray:
        """(N, 3) continuous cell coordinates of pixel positions (N, 2) (y, x) and log depths (N,)."""
        c = np.column_stack([yx[:, 0], yx[:, 1], L - self.lo]) / self.step
        return np.clip(c, 0, np.array(self.dims) - 1.000001)

    def locate(self, uv: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The 8 corner cells (N, 8) flat indices and trilinear weights (N, 8) of targets at ``uv`` (N, 2)
        (x, y), and each target's self-influence (N,): its own weight at its own position."""
        c = self.coords(uv[:, ::-1], L)
        i0 = np.floor(c).astype(np.int64)
        f = c - i0
        b = np.stack([1 - f, f], -1)  # (N, 3, 2): weight of the lower and upper cell on each axis
        strides = (self.dims[1] * self.dims[2], self.dims[2], 1)
        base = i0 @ np.array(strides)
        idx = base[:, None, None, None] + np.add.outer(np.add.outer([0, strides[0]], [0, strides[1]]), [0, 1])
        wts = b[:, 0, :, None, None] * b[:, 1, None, :, None] * b[:, 2, None, None, :]
        g1 = np.exp(-0.5 / self.blur**2)  # blurred weight one cell away (centre weight 1)
        self_w = np.prod((f**2 + (1 - f) ** 2) + 2 * f * (1 - f) * g1, axis=1)
        return idx.reshape(-1, 8), wts.reshape(-1, 8), self_w

    def _blurred(self, idx: np.ndarray, wts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Splat ``values`` (N, C) and blur: the grid (*dims, C), float32."""
        from scipy import ndimage

        size = int(np.prod(self.dims))
        grid = np.stack(
            [np.bincount(idx.ravel(), (wts * v[:, None]).ravel(), minlength=size) for v in values.T], -1
        ).astype(np.float32)
        grid = grid.reshape(*self.dims, values.shape[1])
        for axis, s in enumerate(self.blur):
            radius = int(3 * s + 0.5)
            norm = float(np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2).sum())
            ndimage.gaussian_filter1d(grid, s, axis=axis, mode="constant", truncate=3.0, output=grid)
            grid *= norm
        return grid

    def loo_average(self, at, rho: np.ndarray, r: np.ndarray, prior: float) -> np.ndarray:
        """Leave-one-out bilateral average of ``rho`` with weights ``r`` at every target (N,)."""
        idx, wts, self_w = at
        grid = self._blurred(idx, wts, np.column_stack([r * rho, r])).reshape(-1, 2)
        num = np.einsum("nk,nk->n", grid[idx, 0], wts) - self_w * r * rho
        den = np.einsum("nk,nk->n", grid[idx, 1], wts) - self_w * r
        return num / (prior + den)

    def field(self, logd: np.ndarray, at, rho: np.ndarray, r: np.ndarray, prior: float) -> np.ndarray:
        """(H, W) bilateral average of ``rho`` with weights ``r`` over the targets located at ``at``
        (:meth:`locate`), at every pixel with a finite ``logd`` (0 elsewhere)."""
        from scipy import ndimage

        idx, wts, _ = at
        grid = self._blurred(idx, wts, np.column_stack([r * rho, r]))
        num, den = grid[..., 0], grid[..., 1]
        h, w = logd.shape
        ys, xs = np.nonzero(np.isfinite(logd))
        c = self.coords(np.column_stack([ys, xs]).astype(np.float64), logd[ys, xs]).T
        out = np.zeros((h, w))
        n_at = ndimage.map_coordinates(num, c, order=1, mode="nearest")
        d_at = ndimage.map_coordinates(den, c, order=1, mode="nearest")
        out[ys, xs] = n_at / (prior + d_at)
        return out


def _loo_predict(W: np.ndarray, rho: np.ndarray, r: np.ndarray, prior: float) -> np.ndarray:
    """Leave-one-out bilateral estimate of rho at every point (W symmetric, diag = 1)."""
    num = W @ (r * rho) - r * rho
    den = prior + W @ r - r
    return num / den


def _fit_local_dense(depth: np.ndarray, uv: np.ndarray, z: np.ndarray, o: LocalOptions) -> LocalCorrection | None:
    """The earlier version: N x N kernel matrices over a subsample (quadratic cost; for comparison)."""
    h, w = depth.shape
    uv, rho, L, _ = _correction_targets(depth, uv, z, o.gross_outlier, None)
    n = len(rho)
    if n < 10:
        return None
    rng = np.random.default_rng(o.seed)
    sub = rng.choice(n, min(n, o.max_points), replace=False)
    diag = float(np.hypot(h, w))
    d2 = ((uv[sub, None, :] - uv[None, sub, :]) ** 2).sum(-1)
    l2 = (L[sub, None] - L[None, sub]) ** 2
    rs, ls = rho[sub], np.ones(len(sub))
    before = float(np.median(np.abs(rs)))  # the earlier method's criterion, kept as it was
    best = (before, None, None)
    for fs in o.spatial:
        Ws = np.exp(-d2 / (2 * (fs * diag) ** 2))
        for sr in o.range_:
            W = Ws * np.exp(-l2 / (2 * sr**2))
            r = ls.copy()
            for _ in range(o.irls_iterations):
                res = rs - _loo_predict(W, rs, r, o.prior)
                r = _cauchy(res)
            err = float(np.median(np.abs(res)))
            if err < best[0]:
                best = (err, fs * diag, sr)
    if best[1] is None:
        return None
    spatial_px, range_log = best[1], best[2]
    # final robust weights for all points with the chosen kernels (leave-one-out residuals)
    weights = np.ones(n)
    if n <= 4 * o.max_points:
        Wall = np.exp(
            -((uv[:, None, :] - uv[None, :, :]) ** 2).sum(-1) / (2 * spatial_px**2)
            - (L[:, None] - L[None, :]) ** 2 / (2 * range_log**2)
        )
        for _ in range(o.irls_iterations):
            res = rho - _loo_predict(Wall, rho, weights, o.prior)
            weights = _cauchy(res)
    field = _bilateral_field_dense(depth, uv, rho, L, weights, spatial_px, range_log, o)
    return LocalCorrection(field.astype(np.float32), spatial_px, range_log, before, best[0], n)


def _bilateral_field_dense(depth, uv, rho, L, weights, spatial_px, range_log, o: LocalOptions) -> np.ndarray:
    """Evaluate the bilateral estimate on a (y, x, log-depth) grid and interpolate it per pixel."""
    from scipy import ndimage

    h, w = depth.shape
    stride = max(4, min(o.grid_stride, int(spatial_px / 2)))
    gy, gx = np.arange(0, h + stride, stride), np.arange(0, w + stride, stride)
    logd = np.log(np.where(depth > 0, depth, np.nan))
    lo, hi = np.nanpercentile(logd, 0.5), np.nanpercentile(logd, 99.5)
    if not np.isfinite(lo) or hi <= lo:
        return np.zeros((h, w))
    bins = np.linspace(lo - 1e-6, hi + 1e-6, o.bins)
    Sy = np.exp(-((gy[:, None] - uv[None, :, 1]) ** 2) / (2 * spatial_px**2))  # (Gy, N)
    Sx = np.exp(-((gx[:, None] - uv[None, :, 0]) ** 2) / (2 * spatial_px**2))  # (Gx, N)
    R = np.exp(-((bins[:, None] - L[None, :]) ** 2) / (2 * range_log**2))  # (B, N)
    num = np.einsum("yn,xn,bn,n->yxb", Sy, Sx, R, weights * rho, optimize=True)
    den = np.einsum("yn,xn,bn,n->yxb", Sy, Sx, R, weights, optimize=True)
    grid = num / (o.prior + den)
    yy, xx = np.mgrid[0:h, 0:w]
    bb = (np.nan_to_num(logd, nan=lo) - bins[0]) / (bins[1] - bins[0])
    coords = np.stack([yy / stride, xx / stride, np.clip(bb, 0, len(bins) - 1)])
    field = ndimage.map_coordinates(grid, coords, order=1, mode="nearest")
    return np.where(np.isfinite(logd), field, 0.0)


def apply_local_correction(depth: np.ndarray, corr: LocalCorrection | None) -> np.ndarray:
    """depth * exp(field) (unchanged when ``corr`` is None)."""
    if corr is None:
        return depth
    return (depth * np.exp(corr.field)).astype(np.float32)
