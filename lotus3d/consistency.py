"""Multi-view consistency of aligned depth maps, as multi-view stereo fusion checks it.

A pixel of view i is kept when, back-projected to 3D and projected into its neighbouring views,
its depth agrees with at least ``min_agree`` of the neighbours' own depth at that place (relative
tolerance), or when no neighbour can check it (outside their images). Flying pixels at
silhouettes, background walls and views that disagree with the rest are dropped before fusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import Camera


@dataclass
class ConsistencyOptions:
    neighbours: int = 6  # views checked against, chosen by camera distance among those looking alike
    min_agree: int = 1  # neighbours that must agree for a checkable pixel to stay
    max_angle_deg: float = 75.0  # neighbours must look within this angle of the view's direction
    tolerance: float = 0.02  # relative depth difference that still agrees (see view_tolerance)
    stride: int = 1  # check every stride-th pixel (others follow their block)


def neighbours(cameras: dict[str, Camera], name: str, k: int, max_angle_deg: float) -> list[str]:
    """The ``k`` nearest views (camera centres) whose viewing directions are within the angle."""
    c = cameras[name]
    fwd = c.world_to_camera[2, :3]
    cands = []
    for other, oc in cameras.items():
        if other == name:
            continue
        cos = float(fwd @ oc.world_to_camera[2, :3])
        if cos < np.cos(np.radians(max_angle_deg)):
            continue
        cands.append((float(np.linalg.norm(oc.center - c.center)), other))
    return [o for _, o in sorted(cands)[:k]]


def world_points(depth: np.ndarray, cam: Camera, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) of the pixels of (H, W) ``depth`` with a positive depth (every ``stride``-th
    pixel), and their (N, 2) integer pixel positions (x, y); :func:`lotus3d.types.backproject` gives
    every pixel's point in the camera frame instead."""
    ys, xs = np.nonzero(np.isfinite(depth[::stride, ::stride]) & (depth[::stride, ::stride] > 0))
    ys, xs = ys * stride, xs * stride
    z = depth[ys, xs].astype(np.float64)
    K = cam.K
    pc = np.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], -1)
    T = cam.camera_to_world
    return pc @ T[:3, :3].T + T[:3, 3], np.stack([xs, ys], -1)


def consistency_masks(
    depths: dict[str, np.ndarray],
    cameras: dict[str, Camera],
    options: ConsistencyOptions | None = None,
    tolerances: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """(H, W) bool per view: True where the depth is kept.

    Args:
        tolerances: per-view relative tolerance (default ``options.tolerance``); the pair's
            tolerance is the larger of the two views'.
    """
    o = options or ConsistencyOptions()
    tol = tolerances or {}
    masks = {}
    for name, depth in depths.items():
        cam = cameras[name]
        pts, pix = world_points(depth, cam, o.stride)
        agree = np.zeros(len(pts), np.int32)
        checked = np.zeros(len(pts), np.int32)
        for other in neighbours({n: cameras[n] for n in depths}, name, o.neighbours, o.max_angle_deg):
            oc, od = cameras[other], depths[other]
            uv, z = oc.project(pts)
            with np.errstate(invalid="ignore"):  # points at z = 0 project to NaN: outside below
                u, v = np.round(uv).astype(np.int64).T
            inside = (z > 0) & (u >= 0) & (u < od.shape[1]) & (v >= 0) & (v < od.shape[0])
            idx = np.nonzero(inside)[0]
            d_other = od[v[idx], u[idx]]
            valid = np.isfinite(d_other)
            t = max(tol.get(name, o.tolerance), tol.get(other, o.tolerance))
            close = np.abs(z[idx] - d_other) <= t * d_other
            # a point far behind what the other view sees is occluded there: not a disagreement
            occluded = z[idx] > d_other * (1 + t)
            checked[idx[valid & ~occluded]] += 1
            agree[idx[valid & close]] += 1
        keep = (agree >= o.min_agree) | (checked == 0)
        m = np.zeros(depth.shape, bool)
        if o.stride == 1:
            m[pix[:, 1], pix[:, 0]] = keep
        else:
            small = np.zeros((-(-depth.shape[0] // o.stride), -(-depth.shape[1] // o.stride)), bool)
            small[pix[:, 1] // o.stride, pix[:, 0] // o.stride] = keep
            m = np.kron(small, np.ones((o.stride, o.stride), bool))[: depth.shape[0], : depth.shape[1]]
        masks[name] = m & np.isfinite(depth)
    return masks
