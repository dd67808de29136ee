"""Realistic simulated predictions: errors that look like a monocular model's, calibrated.

:func:`simulate_realistic` turns a rendered view's exact depth and normals into what Lotus gives,
with the error sources a monocular model shows, in this order:

1. a different relative depth error per object (each segment placed a few percent too near or far),
2. a smooth low-frequency warp over the image,
3. mid-frequency noise a few pixels wide, and a little pixel noise,
4. blur across silhouettes: near depth discontinuities the disparity is smeared over a few pixels,
   creating flying pixels between foreground and background;
5. background / sky at the far end (disparity 0);
   — (1)-(3) are scaled together so that, after the best per-image affine fit in disparity (the
   Lotus / Marigold evaluation protocol), the final prediction's depth AbsRel equals
   ``target_absrel`` (default 4.5 %; Lotus reports about 5 % on NYUv2);
6. normals with a spatially correlated bias (a smooth rotation field of a few degrees), small
   independent noise, and the same silhouette blur.

The output is affine-invariant disparity normalised to [0, 1] by its 2-98 % quantiles, as Lotus's
training target.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .fuse import depth_edges
from .synthetic import RenderedView, normalize_disparity, smooth_field
from .types import Prediction


def best_affine_disparity(pred_disp: np.ndarray, gt_depth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(s, t) of the least-squares fit s p + t ~ 1 / depth over ``mask`` (the Lotus evaluation protocol)."""
    p = pred_disp[mask].astype(np.float64)
    A = np.stack([p, np.ones_like(p)], -1)
    (s, t), *_ = np.linalg.lstsq(A, 1.0 / gt_depth[mask].astype(np.float64), rcond=None)
    return float(s), float(t)


def affine_absrel(pred_disp: np.ndarray, gt_depth: np.ndarray, mask: np.ndarray) -> float:
    """Depth AbsRel of a disparity prediction after its least-squares scale and shift in disparity."""
    s, t = best_affine_disparity(pred_disp, gt_depth, mask)
    p = pred_disp[mask].astype(np.float64)
    d = gt_depth[mask].astype(np.float64)
    disp = np.maximum(s * p + t, 1e-6)
    return float(np.mean(np.abs(1.0 / disp - d) / d))


def _rotate(n: np.ndarray, axis_angle: np.ndarray) -> np.ndarray:
    """Rotate vectors n (..., 3) by per-pixel axis-angle vectors (Rodrigues)."""
    theta = np.linalg.norm(axis_angle, axis=-1, keepdims=True)
    k = axis_angle / np.maximum(theta, 1e-12)
    cos, sin = np.cos(theta), np.sin(theta)
    return n * cos + np.cross(k, n) * sin + k * np.sum(k * n, -1, keepdims=True) * (1 - cos)


def simulate_realistic(
    view: RenderedView,
    rng: np.random.Generator,
    target_absrel: float = 0.045,
    object_sigma: float = 1.0,
    warp_amplitude: float = 1.0,
    noise_sigma: float = 0.03,
    blur_px: float = 2.5,
    normal_bias_deg: float = 4.0,
    normal_noise_deg: float = 2.0,
) -> Prediction:
    """A calibrated, realistic Lotus-like prediction for ``view`` (see the module docstring).

    ``object_sigma``, ``warp_amplitude`` and ``noise_sigma`` set the relative mix of the depth
    errors; their overall size is fixed by ``target_absrel``.
    """
    mask = view.mask
    h, w = mask.shape
    segs = view.segments if view.segments is not None else np.where(mask, 0, -1)
    # relative depth error field e: depth_pred = depth * exp(e)
    per_object = np.zeros((h, w))
    for sid in np.unique(segs[segs >= 0]):
        per_object[segs == sid] = rng.normal(0, object_sigma)
    warp = warp_amplitude * smooth_field((h, w), rng, cells=2)
    # mid-frequency texture-scale error (a few pixels wide): monocular depth is smooth at the pixel level
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 6.0)
    noise *= noise_sigma / max(float(noise.std()), 1e-12)
    shape = per_object + warp + noise
    shape -= shape[mask].mean()
    d = np.where(mask, view.depth, np.nan).astype(np.float64)
    band = None
    if blur_px > 0:  # pixels next to depth discontinuities, where the prediction is smeared
        jump = depth_edges(np.where(mask, view.depth, np.nan), 0.05)
        band = ndimage.binary_dilation(jump, iterations=int(np.ceil(2 * blur_px)))
    pixel_noise = rng.normal(0, 0.0001, (h, w))

    def predict(alpha: float) -> np.ndarray:
        disp = np.where(mask, 1.0 / (d * np.exp(alpha * shape)), 0.0)
        if band is not None:
            disp = np.where(band, ndimage.gaussian_filter(disp, blur_px), disp)
        return np.clip(normalize_disparity(disp, np.ones_like(mask)) + pixel_noise, 0, 1)

    # scale the error so that the final prediction's affine-fit AbsRel is the target (bisection)
    lo, hi = 0.0, 1.0
    while affine_absrel(predict(hi), view.depth, mask) < target_absrel and hi < 64:
        hi *= 2
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if affine_absrel(predict(mid), view.depth, mask) < target_absrel else (lo, mid)
    pred = predict((lo + hi) / 2)
    normal = _realistic_normals(view, rng, normal_bias_deg, normal_noise_deg, blur_px)
    return Prediction(pred.astype(np.float32), "disparity", normal)


def _realistic_normals(
    view: RenderedView, rng: np.random.Generator, bias_deg: float, noise_deg: float, blur_px: float
) -> np.ndarray:
    mask = view.mask
    h, w = mask.shape
    n = np.nan_to_num(view.normal, nan=0.0).astype(np.float64)
    n[~mask] = (0.0, 0.0, -1.0)
    field = np.stack([smooth_field((h, w), rng, cells=3) for _ in range(3)], -1) * np.radians(bias_deg)
    n = _rotate(n, field)
    n += rng.normal(0, np.radians(noise_deg), n.shape)
    if blur_px > 0:
        n = np.stack([ndimage.gaussian_filter(n[..., c], blur_px / 2) for c in range(3)], -1)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)
    return n.astype(np.float32)
