"""Single-view pieces: intrinsics, the shift of an affine-invariant prediction from its normals,
the normal-convention check, and a textured mesh from a depth map.

All in the OpenCV camera frame; depth along z.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import product

import numpy as np
import trimesh
from numba import njit
from PIL import Image
from scipy import ndimage

from .fuse import depth_edges
from .integrate import IntegrationResult, angular_error_deg, depth_to_normals, integrate_normals
from .integrate import warm_up as warm_up_integration
from .mesh import Mesh, simplify
from .types import DepthKind, backproject, intrinsics_from_fov

DEFAULT_FOV_DEG = 55.0  # horizontal field of view when neither K nor EXIF focal length is known


def intrinsics_from_exif(path, width: int, height: int) -> np.ndarray | None:
    """K from the EXIF 35 mm-equivalent focal length (or focal length + sensor width), if present."""
    try:
        with Image.open(path) as im:
            exif = im.getexif().get_ifd(0x8769)
    except Exception:
        return None
    f35 = exif.get(0xA405)  # FocalLengthIn35mmFilm
    if f35:
        f = float(f35) / 36.0 * max(width, height)
        return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    return None


# ------------------------------------------------------------------------------ shift from normals
def depth_from_affine(pred: np.ndarray, kind: DepthKind, shift: float) -> np.ndarray:
    """Depth (up to scale) of a prediction with a given shift: 1 / (p + shift) or p + shift."""
    v = pred.astype(np.float64) + shift
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 1.0 / v if kind == "disparity" else v
    d[~(v > 0)] = np.nan
    return d


@dataclass
class ShiftResult:
    """The shift of an affine-invariant prediction, recovered from its normals.

    ``shift`` is in units of the prediction (scale fixed to 1); 0 when ``determined`` is False (the
    normals do not single out a shift: the prediction's own is kept). ``interval`` is the range of
    shifts whose normal error lies within ``tolerance_deg`` of the best (a narrow one is a confident
    shift); ``angular_error_deg`` the best error (mean angle at the compared scales); ``errors`` the
    error at each of ``candidates``.
    """

    shift: float
    angular_error_deg: float
    candidates: np.ndarray
    errors: np.ndarray
    determined: bool = True
    interval: tuple[float, float] = (0.0, 0.0)
    reason: str = ""
    best_shift: float = 0.0  # the minimiser, also when it is not used


def normalised_blur(a: np.ndarray, where: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian average (``sigma`` in pixels) of (H, W) ``a`` over the pixels ``where`` (H, W) bool
    only (normalised convolution), and that average's coverage: the blurred fraction of ``where``."""
    coverage = ndimage.gaussian_filter(where.astype(np.float64), sigma)
    return ndimage.gaussian_filter(np.where(where, a, 0.0), sigma) / np.maximum(coverage, 1e-12), coverage


class ComparisonGrid:
    """Where a prediction's depth and its normals can be compared: the masked image block-averaged
    to about 150 pixels across, then smoothed at ``scales`` (in those pixels) within the mask, at
    pixels away from the mask's border and from the map's own depth edges whose predicted normals
    are coherent at that scale (no crease or silhouette). Depth is noisy at the pixel scale (texture
    copied into it, quantisation) and normals of a noisy depth are noise; at these scales both are
    reliable."""

    def __init__(self, mask: np.ndarray, K: np.ndarray, scales: tuple[float, ...] = (1.0, 2.0, 4.0)):
        self.mask, self.scales = mask, scales
        self.step = max(1, round(min(mask.shape) / 150))
        _, frac = self._block(np.zeros(mask.shape))
        self.valid = frac > 0.99
        self.set_camera(K)

    def set_camera(self, K: np.ndarray) -> None:
        """Use intrinsics ``K`` (full-resolution pixels) for the normals of depth maps."""
        st = self.step
        self.K = np.diag([1.0 / st, 1.0 / st, 1.0]) @ K  # block centres: (i + 0.5) step - 0.5 in pixels
        self.K[0, 2] = (K[0, 2] + 0.5) / st - 0.5
        self.K[1, 2] = (K[1, 2] + 0.5) / st - 0.5

    def _block(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean of (H, W[, C]) ``a`` over the mask in each step x step block, and the mask's fraction."""
        st, m = self.step, self.mask
        h, w = (m.shape[0] // st) * st, (m.shape[1] // st) * st
        x = np.where(m[..., None] if a.ndim == 3 else m, np.nan_to_num(a), 0.0)[:h, :w].astype(np.float64)
        shape = (h // st, st, w // st, st)
        frac = m[:h, :w].reshape(shape).mean((1, 3))
        sums = x.reshape(*shape, *a.shape[2:]).sum((1, 3))
        denom = np.maximum(frac * st * st, 1e-12)
        return sums / (denom[..., None] if a.ndim == 3 else denom), frac

    def _blur(self, a: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian average over valid blocks only (normalised convolution), per channel."""
        if a.ndim == 3:
            return np.stack([self._blur(a[..., c], sigma) for c in range(a.shape[2])], -1)
        return normalised_blur(a, self.valid, sigma)[0]

    def levels(self, a: np.ndarray, normal: np.ndarray, min_pixels: int = 20, jump_offset: float = 0.0) -> list[tuple]:
        """Per scale with enough pixels: (``a`` (H, W) block-averaged and smoothed, the normals likewise
        (unit), the pixels to compare at). Depth edges of the map itself (a jump of over 3 % of
        ``|a| + jump_offset`` between neighbouring blocks) are not compared near: smoothing mixes the
        two sides. For a disparity whose shift is unknown, ``jump_offset`` > 0 keeps small steps near
        its zero (quantisation, noise) from counting as edges."""
        a_b, _ = self._block(a)
        n_b, _ = self._block(normal)
        jumps = depth_edges(np.where(self.valid, np.abs(a_b) + jump_offset, np.nan), 0.03)
        out = []
        for sigma in self.scales:
            ns = self._blur(n_b, sigma)
            coherence = np.linalg.norm(ns, axis=-1)
            reach = int(np.ceil(2 * sigma)) + 1
            use = ndimage.binary_erosion(self.valid, iterations=reach) & (coherence > 0.97)
            use &= ~ndimage.binary_dilation(jumps, iterations=reach)
            if use.sum() >= min_pixels:
                out.append((self._blur(a_b, sigma), ns / np.maximum(coherence, 1e-12)[..., None], use))
        return out

    def smooth_large(self, a: np.ndarray, fraction: float = 0.1) -> float:
        """Median |a| (H, W) after smoothing over ``fraction`` of the image's shorter side (valid blocks)."""
        b, _ = self._block(a)
        big = self._blur(np.nan_to_num(b), fraction * min(self.valid.shape))
        return float(np.median(np.abs(big[self.valid]))) if self.valid.any() else 0.0

    def cosine_map(self, depth: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Per block, the cosine between normals of a smoothed block ``depth`` and ``normal`` (clipped)."""
        n_d = depth_to_normals(depth, self.K).astype(np.float64)
        cos = n_d[..., 0] * normal[..., 0] + n_d[..., 1] * normal[..., 1] + n_d[..., 2] * normal[..., 2]
        return np.clip(cos, -1, 1)

    def angle_map(self, depth: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Per block, the angle (degrees) between normals of a smoothed block ``depth`` and ``normal``."""
        return np.degrees(np.arccos(self.cosine_map(depth, normal)))

    def angles(self, depth: np.ndarray, normal: np.ndarray, use: np.ndarray) -> np.ndarray:
        """Angles (degrees) between normals of a smoothed block ``depth`` and ``normal`` where ``use``."""
        cos = self.cosine_map(depth, normal)[use]
        return np.degrees(np.arccos(cos[np.isfinite(cos)]))

    def affine_error(self, levels: list[tuple], kind: DepthKind, shift: float) -> float:
        """Mean over ``levels`` (map (H, W), normals (H, W, 3), rows, cols of the compared pixels) of the
        mean angle in degrees (truncated at :data:`ANGLE_CAP_DEG`) between the normals and those of
        ``depth_from_affine(map, kind, shift)``; 90 for a level with no defined angle. The same figures,
        bit for bit, as :meth:`angles` on whole depth maps, but the depth and its normals are computed
        by one compiled pass at the compared pixels only: the shift and focal searches make thousands of
        these calls."""
        K, errs = self.K, []
        for a, normal, rows, cols in levels:
            h, w = a.shape
            rx = (np.arange(w, dtype=np.float64) - K[0, 2]) / K[0, 0]
            ry = (np.arange(h, dtype=np.float64) - K[1, 2]) / K[1, 1]
            cos = np.empty(len(rows))
            _affine_cosines(a, kind == "disparity", shift, rx, ry, normal, rows, cols, cos)
            ang = np.degrees(np.arccos(cos[np.isfinite(cos)]))
            errs.append(float(np.minimum(ang, ANGLE_CAP_DEG).mean()) if len(ang) else 90.0)
        return float(np.mean(errs)) if errs else float("nan")


ANGLE_CAP_DEG = 30.0  # the shift search's angles are truncated here: a silhouette or crease is not a shift
JUMP_OFFSET = 0.25  # in units of the prediction's span; see _ShiftProblem


@njit(cache=True, inline="always")
def _affine_point(a, disparity, shift, rx, ry, y, x):
    """The back-projected point of pixel (y, x) of map ``a`` under ``shift`` (NaN where no depth)."""
    v = a[y, x] + shift
    if not v > 0:
        return np.nan, np.nan, np.nan
    d = 1.0 / v if disparity else v
    return rx[x] * d, ry[y] * d, d


@njit(cache=True, error_model="numpy")
def _affine_cosines(a, disparity, shift, rx, ry, normal, rows, cols, out):  # pragma: no cover - compiled
    """``out[k]``: the cosine (clipped to [-1, 1]; NaN where undefined) at pixel (rows[k], cols[k])
    between ``normal`` (H, W, 3) and the normal of the depth 1 / (a + shift) (``disparity``) or
    a + shift of map ``a`` (H, W), rays ``rx`` (W,), ``ry`` (H,) at z = 1. That normal is computed
    as :func:`~lotus3d.integrate.depth_to_normals` does it (central differences of the back-projected
    points, facing the camera, rounded to float32), in the same order of operations."""
    h, w = a.shape
    for k in range(rows.shape[0]):
        i, j = rows[k], cols[k]
        out[k] = np.nan
        if i < 1 or j < 1 or i > h - 2 or j > w - 2:
            continue
        c0, c1, c2 = _affine_point(a, disparity, shift, rx, ry, i, j)
        l0, l1, l2 = _affine_point(a, disparity, shift, rx, ry, i, j - 1)
        r0, r1, r2 = _affine_point(a, disparity, shift, rx, ry, i, j + 1)
        u0, u1, u2 = _affine_point(a, disparity, shift, rx, ry, i - 1, j)
        b0, b1, b2 = _affine_point(a, disparity, shift, rx, ry, i + 1, j)
        du0, du1, du2 = r0 - l0, r1 - l1, r2 - l2
        dv0, dv1, dv2 = b0 - u0, b1 - u1, b2 - u2
        n0, n1, n2 = dv1 * du2 - dv2 * du1, dv2 * du0 - dv0 * du2, dv0 * du1 - dv1 * du0
        norm = np.sqrt(n0 * n0 + n1 * n1 + n2 * n2)
        n0, n1, n2 = n0 / norm, n1 / norm, n2 / norm
        if n0 * c0 + n1 * c1 + n2 * c2 > 0:
            n0, n1, n2 = -n0, -n1, -n2
        n0, n1, n2 = np.float64(np.float32(n0)), np.float64(np.float32(n1)), np.float64(np.float32(n2))
        cos = n0 * normal[i, j, 0] + n1 * normal[i, j, 1] + n2 * normal[i, j, 2]
        out[k] = min(max(cos, -1.0), 1.0)


def recover_shift(
    pred: np.ndarray,
    kind: DepthKind,
    normal: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray | None = None,
    samples: int = 60,
    scales: tuple[float, ...] = (1.0, 2.0, 4.0),
    tolerance_deg: float = 0.5,
) -> ShiftResult:
    """The shift t for which normals of ``depth_from_affine(pred, kind, t)`` agree best with the
    predicted ``normal`` (H, W, 3); scale does not change normals, so it stays free.

    Compared where both are reliable (:class:`ComparisonGrid`: block-averaged, smoothed at
    ``scales``, coherent normals, angles truncated at 30 degrees): on a pixel-noisy depth a larger
    shift flattens the noise and would otherwise always "agree" better. Searched on a log-spaced
    grid over the plausible range, refined around the best value. The shift is kept only when it is
    determined: clearly (``tolerance_deg``) better than no shift, and not at the flat end of the
    range (a depth flattened to a plane); otherwise the prediction's own is kept and ``reason``
    says why.
    """
    problem = _ShiftProblem(pred, kind, normal, K, mask, scales, samples)
    return problem.solve(tolerance_deg)


def grid_then_golden(f, grid: np.ndarray, steps: int) -> tuple[float, np.ndarray]:
    """Minimise ``f`` over sorted ``grid`` values, then by golden section between the best one's
    neighbours; returns (the minimiser, f on the grid)."""
    values = np.array([f(x) for x in grid])
    if not np.isfinite(values).any():  # nothing to compare (no usable pixels): no minimiser
        return float("nan"), values
    i = int(np.nanargmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    for _ in range(steps):
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if f(a) < f(b):
            hi = b
        else:
            lo = a
    return float((lo + hi) / 2), values


class _ShiftProblem:
    """The shift search of one prediction; the comparison levels do not depend on the intrinsics, so
    they are built once when several K are tried (:func:`recover_focal`)."""

    def __init__(self, pred, kind, normal, K, mask, scales, samples):
        m = np.isfinite(pred) if mask is None else (mask & np.isfinite(pred))
        m &= np.isfinite(normal).all(-1)
        self.kind = kind
        lo_p, hi_p = np.percentile(pred[m], [1, 99])
        span = max(hi_p - lo_p, 1e-6)
        # shifts that keep p + t > 0 on (almost) every pixel, log-spaced over five decades of the range
        self.base = -lo_p + 1e-3 * span
        cands = self.base + span * np.logspace(-3, 2, samples)
        if self.base < 0:  # no shift at all is possible: always a candidate
            cands = np.sort(np.append(cands, 0.0))
        self.cands = cands
        self.grid = ComparisonGrid(m, K, scales)
        # jumps judged as if the shift were a quarter of the span (the true one is unknown; at 0 a
        # quantisation step next to the far end would look like a 40 % depth jump)
        levels = self.grid.levels(np.where(m, pred, np.nan), normal, jump_offset=JUMP_OFFSET * span)
        self.levels = [(a, n, *np.nonzero(use)) for a, n, use in levels]

    def err(self, t: float) -> float:
        return self.grid.affine_error(self.levels, self.kind, t)

    def solve(self, tolerance_deg: float, refine_steps: int = 12) -> ShiftResult:
        cands, err = self.cands, self.err
        if not self.levels:
            return ShiftResult(
                0.0, float("nan"), cands, np.full(len(cands), np.nan), False, (0.0, 0.0), "too few reliable pixels"
            )
        t, errs = grid_then_golden(err, cands, refine_steps)
        best = min(err(t), float(np.nanmin(errs)))
        near = cands[errs <= best + tolerance_deg]
        interval = (float(min(near.min(), t)), float(max(near.max(), t))) if len(near) else (float(t), float(t))
        zero = err(0.0) if self.base < 0 else np.inf  # no shift at all (if every pixel stays positive)
        reason = ""
        if interval[1] >= cands[-3]:
            reason = "the normals prefer a depth flattened toward a plane: the shift is not determined"
        elif zero <= best + tolerance_deg:
            reason = "no shift agrees with the normals about as well: the prediction's own is kept"
        if reason:  # the prediction's own, or the least shift that keeps it positive
            keep = 0.0 if self.base < 0 else float(self.base)
            return ShiftResult(keep, best, cands, errs, False, interval, reason, float(t))
        return ShiftResult(float(t), best, cands, errs, True, interval, "", float(t))


def warm_up() -> float:
    """Compile every single-view kernel, or load it from numba's disk cache: the integration's
    (:func:`lotus3d.integrate.warm_up`) and the shift search's; returns the seconds it took.
    ``lotus3d warmup`` runs it once after installing; ``lotus3d single`` starts it in a background
    thread while it reads the image and the prediction."""
    t0 = time.perf_counter()
    warm_up_integration()
    a = np.linspace(1.0, 2.0, 25).reshape(5, 5)
    normal = np.zeros((5, 5, 3))
    normal[..., 2] = -1.0
    rows, cols = np.nonzero(np.ones((5, 5), bool))
    _affine_cosines(a, True, 0.5, np.linspace(-1, 1, 5), np.linspace(-1, 1, 5), normal, rows, cols, np.empty(len(rows)))
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------- focal length
@dataclass
class FocalResult:
    """A field of view recovered from the normals and the prediction: ``fov_deg`` (horizontal), its K,
    the shift found with it, and the normal error at each candidate field of view. ``determined`` is
    False (and ``fov_deg`` the default, ``reason`` why) when the normals do not single one out."""

    fov_deg: float
    K: np.ndarray
    shift: ShiftResult
    candidates: np.ndarray
    errors: np.ndarray
    determined: bool = True
    reason: str = ""


def recover_focal(
    pred: np.ndarray,
    kind: DepthKind,
    normal: np.ndarray,
    mask: np.ndarray | None = None,
    fov_range: tuple[float, float] = (25.0, 100.0),
    samples: int = 16,
    contrast: float = 1.15,
) -> FocalResult:
    """The horizontal field of view (and shift) for which the prediction's depth, back-projected,
    has normals that agree best with the predicted ones: a wrong focal length bends the surfaces
    as a wrong shift does. Coarse search over ``fov_range`` (shift searched at each), then golden
    section around the best; principal point at the image centre.

    Kept only when determined: its normal error at least ``contrast`` times lower than with the
    default field of view (:data:`DEFAULT_FOV_DEG`; the errors' floor is the normals' own noise, so
    the test is relative) and not at an end of the range (where a noisy depth drifts); otherwise
    the default, and ``reason`` says why."""
    h, w = pred.shape
    fovs = np.linspace(*fov_range, samples)
    coarse = _ShiftProblem(pred, kind, normal, intrinsics_from_fov(w, h, 55.0), mask, (1.0, 2.0, 4.0), 24)

    def err(fov: float) -> float:
        coarse.grid.set_camera(intrinsics_from_fov(w, h, fov))
        return coarse.solve(0.5, refine_steps=6).angular_error_deg

    fov, errs = grid_then_golden(err, fovs, 6)
    reason = ""
    if not np.isfinite(fov):
        reason = "the normals and the prediction give nothing to compare at any field of view"
    elif min(fov - fovs[0], fovs[-1] - fov) < 0.5 * (fovs[1] - fovs[0]):
        reason = f"the normals prefer the end of the searched range ({fov:.0f} deg)"
    elif err(DEFAULT_FOV_DEG) <= contrast * err(fov):
        reason = f"the default {DEFAULT_FOV_DEG:g} deg agrees with the normals about as well"
    if reason:
        fov = DEFAULT_FOV_DEG
    K = intrinsics_from_fov(w, h, fov)
    shift = recover_shift(pred, kind, normal, K, mask)
    return FocalResult(float(fov), K, shift, fovs, errs, not reason, reason)


# ------------------------------------------------------------------------- guarded integration
@dataclass
class RefinedDepth:
    """What :func:`refine_with_normals` returns. ``depth`` (H, W) is the integrated depth, or the
    prior where the self-check did not trust it (``fallback`` says why, else ""); ``checks`` holds
    the figures the decision was made on (degrees, at the reliable scales)."""

    depth: np.ndarray
    fallback: str
    checks: dict
    integration: IntegrationResult | None = None


def refine_with_normals(
    normal: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray,
    prior: np.ndarray,
    prior_weight: float = 1e-3,
    conflict_deg: float = 25.0,
    max_departure: float = 0.03,
    tolerance_deg: float = 0.25,
    agree_deg: float = 8.0,
    weight_range: tuple[float, float] = (0.3, 3.0),
    warped_deg: tuple[float, float] = (6.0, 16.0),
    warped_floor: float = 0.1,
) -> RefinedDepth:
    """Integrate the normals with the depth ``prior`` (H, W), and check the result before trusting it.

    The prior weight adapts per region to the angle a between the prior's normals and the predicted
    ones at the reliable scales (:class:`ComparisonGrid`), as ``prior_weight`` times
    max(low + (high - low) exp(-(a / agree_deg)^2), (a / conflict_deg)^2) for ``weight_range`` =
    (low, high): where they agree (a within the normals' own error) the prior is held more firmly,
    since integrating the normals' smooth bias could only add error; where they disagree moderately
    (a prior tilted or flattened) the normals get more say, as that is what they are there to fix;
    beyond ``conflict_deg`` the weight grows with the square of the disagreement, so that a region of
    wrong normals cannot bend the depth. The whole map is then scaled by how much the two disagree over
    the image (median angle m at the reliable scales): 1 while m is within the normals' own error
    (``warped_deg[0]``), falling log-linearly to ``warped_floor`` at ``warped_deg[1]``, where the prior
    is warped as a whole and a region that happens to agree with the normals is no reason to hold it.

    Falls back to the prior, saying why, when the normals cannot be trusted or the result fails the
    self-check (a loosened result is first integrated again without the whole-map scaling; the
    reasons of failed attempts are in ``checks["failed_attempts"]``), judged without ground truth at
    the reliable scales:

    - the result's normals must agree with the predicted normals at least as well as the prior's did
      (within ``tolerance_deg``; it was integrated from them);
    - it must not depart from the prior at the large scale (a tenth of the image), where a monocular
      depth is reliable, by more than ``max_departure`` (median relative depth, scale removed);
    - where normals and prior disagree by more than ``conflict_deg`` (median), integration must at least
      halve the disagreement: if it cannot, the normals are wrong (or follow another convention, or
      belong to another image) and the prior held them back everywhere.
    """
    usable = mask & np.isfinite(prior)
    grid = ComparisonGrid(usable, K, scales=(0.0, 1.0, 2.0, 4.0))
    levels = grid.levels(prior, normal)
    checks: dict = {}
    if not levels:
        return RefinedDepth(prior, "too few reliable pixels to compare the normals with the depth", checks)
    maps = [(grid.angle_map(d, n), u) for d, n, u in levels]
    prior_err = [a[u & np.isfinite(a)] for a, u in maps]
    checks["prior_vs_normals_deg"] = round(float(np.median(np.concatenate(prior_err))), 3)
    # per-block disagreement at the middle scale, spread over nearby blocks where it is not reliable
    ang, use_mid = maps[len(maps) // 2]
    known = use_mid & np.isfinite(ang)
    ang, near = normalised_blur(ang, known, 2.0)
    low, high = weight_range
    factor = np.maximum(low + (high - low) * np.exp(-((ang / agree_deg) ** 2)), (ang / conflict_deg) ** 2)
    factor = np.where(near > 0.05, np.minimum(factor, 1e3), 1.0)  # no comparison nearby: the plain weight
    big = ndimage.zoom(factor, (mask.shape[0] / ang.shape[0], mask.shape[1] / ang.shape[1]), order=1)
    big = np.pad(big, ((0, mask.shape[0] - big.shape[0]), (0, mask.shape[1] - big.shape[1])), mode="edge")
    big = big[: mask.shape[0], : mask.shape[1]]
    checks["conflict_fraction"] = round(float((ang[known] > conflict_deg).mean()), 4) if known.any() else 0.0
    m0, m1 = warped_deg
    overall = warped_floor ** float(np.clip((checks["prior_vs_normals_deg"] - m0) / (m1 - m0), 0.0, 1.0))
    for scale in (overall, 1.0) if overall < 1.0 else (1.0,):  # the looser map failing: the plain one
        res = integrate_normals(normal, K, usable, prior_depth=prior, prior_weight=prior_weight * scale * big)
        checks["overall_weight_factor"] = round(scale, 4)
        reason = _self_check(grid, normal, mask, prior, res.depth, checks, tolerance_deg, conflict_deg, max_departure)
        if not reason:
            return RefinedDepth(res.depth, "", checks, res)
        checks.setdefault("failed_attempts", []).append(reason)
    return RefinedDepth(prior, reason + ": kept the prediction", checks, res)


def _self_check(
    grid: ComparisonGrid,
    normal: np.ndarray,
    mask: np.ndarray,
    prior: np.ndarray,
    depth: np.ndarray,
    checks: dict,
    tolerance_deg: float,
    conflict_deg: float,
    max_departure: float,
) -> str:
    """:func:`refine_with_normals`'s self-check of an integrated ``depth`` (H, W) against the ``prior``:
    the reason not to trust it, or "" when it passes; its figures go into ``checks``."""
    out_levels = grid.levels(depth, normal)
    out_err = [grid.angles(d, n, u) for d, n, u in out_levels]
    checks["result_vs_normals_deg"] = round(float(np.median(np.concatenate(out_err))), 3) if out_err else None
    ratio = np.log(np.where(mask, depth, np.nan) / prior)
    ratio -= np.nanmedian(ratio)  # scale is free
    coarse = grid.smooth_large(ratio)
    checks["large_scale_departure"] = round(coarse, 5)
    before, after = checks["prior_vs_normals_deg"], checks["result_vs_normals_deg"]
    if after is None or after > before + tolerance_deg:
        return "the integrated depth follows the normals less well than the prediction did"
    if before > conflict_deg and after > 0.5 * before:
        return (
            f"the normals and the depth disagree ({before:.1f} degrees, median) and integration cannot reconcile "
            f"them ({after:.1f} after): wrong normals or another convention"
        )
    if coarse > max_departure:
        return (
            f"the integrated depth departs from the prediction at the large scale by {coarse:.3f} (> {max_departure:g})"
        )
    return ""


# ------------------------------------------------------------------------------------- one view
@dataclass
class ViewDepth:
    """:func:`reconstruct_depth`'s result: the refined depth (``refined.depth``, up to scale), the
    prior it started from, the intrinsics used (``focal`` set when they were estimated), the shift,
    the convention check, and the pixels kept (``mask``)."""

    refined: RefinedDepth
    prior: np.ndarray
    K: np.ndarray
    shift: ShiftResult
    convention: ConventionResult
    convention_applied: bool
    mask: np.ndarray
    focal: FocalResult | None = None


def reconstruct_depth(
    pred: np.ndarray,
    kind: DepthKind,
    normal: np.ndarray,
    K: np.ndarray | None,
    mask: np.ndarray,
    prior_weight: float = 1e-3,
    auto_convention: bool = False,
    far_factor: float = 8.0,
) -> ViewDepth:
    """One view's depth from its affine-invariant prediction (H, W) and normals (H, W, 3): the field
    of view when ``K`` is None (:func:`recover_focal`), the shift (:func:`recover_shift`), the
    convention check, then the normals integrated with the shifted prediction as prior
    (:func:`refine_with_normals`). Pixels the prior puts beyond ``far_factor`` times its median depth
    (background) leave the mask. Normals in another convention are not integrated unless
    ``auto_convention``."""
    focal = None
    if K is None:
        focal = recover_focal(pred, kind, normal, mask)
        K, shift = focal.K, focal.shift
    else:
        shift = recover_shift(pred, kind, normal, K, mask)
    prior = depth_from_affine(pred, kind, shift.shift)
    convention = check_convention(normal, prior, K, mask)
    applied = not convention.ok and auto_convention
    if applied:
        normal = convention.apply(normal)
        shift = recover_shift(pred, kind, normal, K, mask)
        prior = depth_from_affine(pred, kind, shift.shift)
    with np.errstate(invalid="ignore"):
        mask = mask & np.isfinite(prior) & (prior < far_factor * np.nanmedian(prior[mask]))
    if not convention.ok and not applied:
        why = (
            "the normals follow another sign convention than the depth (see 'convention'): not integrated; "
            "--auto-convention applies the matching one"
        )
        refined = RefinedDepth(prior, why, {})
    else:
        refined = refine_with_normals(normal, K, mask, prior, prior_weight=prior_weight)
    return ViewDepth(refined, prior, K, shift, convention, applied, mask, focal)


# ----------------------------------------------------------------------------- convention check
@dataclass
class ConventionResult:
    signs: tuple[int, int, int]  # multiply the predicted normals' x, y, z by these to match
    errors: dict[tuple[int, int, int], float]  # mean angle for every sign pattern
    ok: bool  # the given convention (1, 1, 1) is the best one

    def apply(self, normal: np.ndarray) -> np.ndarray:
        return (normal * np.array(self.signs, np.float32)).astype(np.float32)


def check_convention(
    normal: np.ndarray, depth: np.ndarray, K: np.ndarray, mask: np.ndarray | None = None
) -> ConventionResult:
    """Compare predicted normals with normals of a depth map under every sign pattern of the axes."""
    ref = depth_to_normals(depth, K, max(1, round(min(depth.shape) / 150)))
    errs = {}
    for s in product((1, -1), repeat=3):
        errs[s] = angular_error_deg(normal * np.array(s, np.float32), ref, mask)
    best = min(errs, key=errs.get)
    return ConventionResult(best, errs, best == (1, 1, 1))


# ----------------------------------------------------------------------------------------- mesh
def depth_to_mesh(
    depth: np.ndarray,
    K: np.ndarray,
    image: np.ndarray | None = None,
    max_relative_jump: float = 0.05,
    breaks: np.ndarray | None = None,
    max_triangles: int = 0,
) -> trimesh.Trimesh:
    """Triangulate the pixel grid of an (H, W) depth map in 3D (OpenCV camera frame, depth units),
    cutting triangles across discontinuities: a relative depth jump above ``max_relative_jump`` along
    an edge, or a pixel flagged in ``breaks`` (H, W) bool. ``max_triangles`` > 0: quadric decimation
    to at most that many triangles. With ``image`` (H, W, 3) in [0, 1] the mesh carries the image as
    texture (UVs: each vertex projected through K, so they stay exact after decimation) and vertex
    colours in ``mesh.metadata["vertex_colors"]`` (V, 3) uint8.
    """
    h, w = depth.shape
    pts = backproject(depth, K).reshape(-1, 3)
    valid = np.isfinite(depth).reshape(-1) & (depth.reshape(-1) > 0)
    idx = np.arange(h * w).reshape(h, w)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    z = depth.reshape(-1)
    bad = np.zeros(h * w, bool) if breaks is None else breaks.reshape(-1)

    def ok(*vs):
        good = np.all([valid[x] & ~bad[x] for x in vs], axis=0)
        zs = np.stack([z[x] for x in vs])
        with np.errstate(invalid="ignore"):
            good &= (zs.max(0) / zs.min(0) - 1) <= max_relative_jump
        return good

    t1 = np.stack([a, c, b], -1)[ok(a, c, b)]  # counter-clockwise seen from the camera (y down)
    t2 = np.stack([b, c, d], -1)[ok(b, c, d)]
    faces = np.concatenate([t1, t2])
    used = np.unique(faces)
    remap = -np.ones(h * w, np.int64)
    remap[used] = np.arange(len(used))
    verts, faces = pts[used], remap[faces]
    small = simplify(Mesh(verts, faces), max_triangles)  # unchanged for 0 or a mesh already small enough
    verts, faces = small.vertices, small.faces
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if image is not None:
        _texture_from_view(mesh, K, image)
    return mesh


def _texture_from_view(mesh: trimesh.Trimesh, K: np.ndarray, image: np.ndarray) -> None:
    """Give a mesh in the camera frame the image as texture: UVs of each vertex's projection (pixel
    centres at integer coordinates, v up as glTF / OBJ expect) and bilinearly sampled vertex colours."""
    h, w = image.shape[:2]
    P = np.asarray(mesh.vertices)
    px = K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2]
    py = K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]
    uv = np.stack([(px + 0.5) / w, 1.0 - (py + 0.5) / h], -1)
    img = np.clip(image[..., :3], 0, 1)
    colors = np.stack([ndimage.map_coordinates(img[..., ch], [py, px], order=1, mode="nearest") for ch in range(3)], -1)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray((img * 255).round().astype(np.uint8)))
    mesh.metadata["vertex_colors"] = (colors * 255).round().astype(np.uint8)
