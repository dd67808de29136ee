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

:func:`simulate_mode` gives a *family* of error models instead (:data:`ERROR_MODES`), their
parameters drawn at random per scene by :func:`draw_error_model`: methods are chosen on the whole
family, so that no default is tuned to one simulator.
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


REALISTIC_NORMAL_BIAS_DEG = 4.0  # the calibrated model's smooth normal bias (amplitude, degrees)


def simulate_realistic(
    view: RenderedView,
    rng: np.random.Generator,
    target_absrel: float = 0.045,
    object_sigma: float = 1.0,
    warp_amplitude: float = 1.0,
    noise_sigma: float = 0.03,
    blur_px: float = 2.5,
    normal_bias_deg: float = REALISTIC_NORMAL_BIAS_DEG,
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


# ----------------------------------------------------------------------------- a family of error models
ERROR_MODES = ("texture", "object_gain", "warp", "edge_blur", "fronto", "quantise", "mixed")
"""Named error modes of :func:`simulate_mode`, each one way a monocular model errs:

- ``texture``: pixel-scale noise correlated with the image (texture copied into depth): log depth
  moves by a multiple of the image's band-passed luminance, 0.5-2 px features, std 1-4 %.
- ``object_gain``: each object (mesh, the floor included) placed too near or far by its own
  log-depth offset, std 4-12 %.
- ``warp``: a smooth low-frequency warp of log depth over the image, amplitude 4-12 %.
- ``edge_blur``: disparity smeared across silhouettes over 1.5-4 px: flying pixels between
  foreground and background.
- ``fronto``: a bias toward fronto-parallel surfaces: each object's relief (log depth about its
  median) flattened by 10-30 %.
- ``quantise``: disparity stored with 48-256 levels (as an 8-bit image would be).
- ``mixed``: all of the above at once, each at a random 0-70 % of its range's top, plus
  mid-frequency noise.

Every mode adds a little pixel noise and the same normal errors (a smooth bias of 2-6 degrees,
noise of 1-3 degrees); the output is normalised disparity in [0, 1] like Lotus's.
"""


def draw_error_model(mode: str, rng: np.random.Generator) -> dict[str, float]:
    """Random parameters of one error mode (see :data:`ERROR_MODES`), drawn once per scene."""
    if mode not in ERROR_MODES:
        raise ValueError(f"unknown error mode {mode!r}; choose from {ERROR_MODES}")
    top = {
        "texture": rng.uniform(0.01, 0.04),
        "object_gain": rng.uniform(0.04, 0.12),
        "warp": rng.uniform(0.04, 0.12),
        "edge_blur": rng.uniform(1.5, 4.0),
        "fronto": rng.uniform(0.1, 0.3),
    }
    p = dict.fromkeys(top, 0.0) | {"quantise": 0.0, "noise": 0.0}
    p["normal_bias_deg"] = float(rng.uniform(2, 6))
    p["normal_noise_deg"] = float(rng.uniform(1, 3))
    if mode == "mixed":
        for k, v in top.items():
            p[k] = float(v * rng.uniform(0, 0.7))
        p["quantise"] = float(rng.choice([0, 256, 128]))
        p["noise"] = float(rng.uniform(0.005, 0.02))
    elif mode == "quantise":
        p["quantise"] = float(rng.integers(48, 257))
    else:
        p[mode] = float(top[mode])
    return p


def simulate_mode(view: RenderedView, params: dict[str, float], rng: np.random.Generator) -> Prediction:
    """A Lotus-like prediction of ``view`` with the errors ``params`` (from :func:`draw_error_model`)."""
    mask = view.mask
    h, w = mask.shape
    segs = view.segments if view.segments is not None else np.where(mask, 0, -1)
    logd = np.where(mask, np.log(np.where(mask, view.depth, 1.0)), 0.0).astype(np.float64)
    e = np.zeros((h, w))
    if params["fronto"] > 0:
        for sid in np.unique(segs[segs >= 0]):
            sel = segs == sid
            e[sel] -= params["fronto"] * (logd[sel] - np.median(logd[sel]))
    if params["object_gain"] > 0:
        for sid in np.unique(segs[segs >= 0]):
            e[segs == sid] += rng.normal(0, params["object_gain"])
    if params["warp"] > 0:
        e += params["warp"] * smooth_field((h, w), rng, cells=int(rng.integers(1, 4)))
    if params["texture"] > 0:
        lum = view.image.mean(-1).astype(np.float64)
        band = ndimage.gaussian_filter(lum, 0.5) - ndimage.gaussian_filter(lum, 2.0)
        e += params["texture"] * band / max(float(band[mask].std()), 1e-9)
    if params["noise"] > 0:
        noise = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 6.0)
        e += params["noise"] * noise / max(float(noise.std()), 1e-12)
    disp = np.where(mask, np.exp(-(logd + e)), 0.0)
    blur = params["edge_blur"]
    if blur > 0:
        band = ndimage.binary_dilation(depth_edges(np.where(mask, view.depth, np.nan), 0.05), iterations=int(2 * blur))
        disp = np.where(band, ndimage.gaussian_filter(disp, blur), disp)
    pred = normalize_disparity(disp, np.ones_like(mask)) + rng.normal(0, 0.0005, (h, w))
    pred = np.clip(pred, 0, 1)
    if params["quantise"] > 0:
        pred = np.round(pred * (params["quantise"] - 1)) / (params["quantise"] - 1)
    normal = _realistic_normals(
        view, rng, params["normal_bias_deg"], params["normal_noise_deg"], max(blur, 1.0) if blur > 0 else 1.0
    )
    return Prediction(pred.astype(np.float32), "disparity", normal)
