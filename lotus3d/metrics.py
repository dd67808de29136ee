"""Mesh accuracy against a ground-truth mesh (``lotus3d eval``).

Both meshes are sampled uniformly by area; distances are nearest-neighbour distances between the
samples (scipy ``cKDTree``). With cameras given, the GT samples are restricted to those some camera
sees (inside its image, not occluded: a ray cast on the GT mesh), so that unseen surfaces do not
count against completeness, and the prediction is cropped to the seen GT's bounding box grown by
a margin.

- accuracy: mean distance prediction -> GT; completeness: mean distance GT -> prediction;
- chamfer: their average; precision / recall: fraction of prediction / GT samples within
  ``threshold``; F-score: their harmonic mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import open3d as o3d
import trimesh
from scipy.spatial import cKDTree

from .mesh import Mesh
from .types import Camera


def sample_surface(mesh: Mesh, n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) points uniformly on the surface (area weighted)."""
    if len(mesh.faces) == 0:
        return np.zeros((0, 3))
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    pts, _ = trimesh.sample.sample_surface(tm, n, seed=seed)
    return np.asarray(pts)


def visible_mask(points: np.ndarray, gt: Mesh, cameras: Sequence[Camera], tol: float) -> np.ndarray:
    """(N,) bool: points seen (in the image and unoccluded on ``gt``) by at least one camera."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(gt.vertices.astype(np.float32)), o3d.core.Tensor(gt.faces.astype(np.uint32)))
    seen = np.zeros(len(points), bool)
    for cam in cameras:
        uv, z = cam.project(points)
        inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] < cam.width - 0.5) & (uv[:, 1] >= -0.5)
        inside &= uv[:, 1] < cam.height - 0.5
        idx = np.nonzero(inside & ~seen)[0]
        if len(idx) == 0:
            continue
        c = cam.center
        d = points[idx] - c
        dist = np.linalg.norm(d, axis=1)
        rays = np.concatenate([np.broadcast_to(c, d.shape), d / dist[:, None]], 1).astype(np.float32)
        t = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        seen[idx[t >= dist - tol]] = True
    return seen


def evaluate_mesh(
    pred: Mesh,
    gt: Mesh,
    threshold: float | None = None,
    threshold_fraction: float = 0.02,
    cameras: Sequence[Camera] | None = None,
    n_samples: int = 200_000,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy, completeness, chamfer, precision, recall and F-score of ``pred`` against ``gt``.

    Args:
        threshold: distance for precision / recall (scene units); default ``threshold_fraction``
            of the (seen) GT bounding-box diagonal.
        cameras: restrict GT to what they see (see module docstring).
    """
    gt_pts = sample_surface(gt, n_samples, seed)
    diag_all = float(np.linalg.norm(np.ptp(gt.vertices, 0)))
    if cameras:
        gt_pts = gt_pts[visible_mask(gt_pts, gt, cameras, tol=1e-3 * diag_all)]
    if len(gt_pts) == 0:
        raise ValueError("no ground-truth surface is visible from the cameras")
    lo, hi = gt_pts.min(0), gt_pts.max(0)
    diag = float(np.linalg.norm(hi - lo))
    tau = threshold if threshold is not None else threshold_fraction * diag
    pred_pts = sample_surface(pred, n_samples, seed + 1)
    if cameras and len(pred_pts):
        margin = 0.05 * diag
        keep = np.all((pred_pts >= lo - margin) & (pred_pts <= hi + margin), axis=1)
        pred_pts = pred_pts[keep]
    out = {"threshold": tau, "scene_diagonal": diag, "gt_samples": len(gt_pts), "pred_samples": len(pred_pts)}
    if len(pred_pts) == 0:
        return {
            **out,
            "accuracy": float("inf"),
            "completeness": float("inf"),
            "chamfer": float("inf"),
            "precision": 0.0,
            "recall": 0.0,
            "fscore": 0.0,
        }
    d_pred = cKDTree(gt_pts).query(pred_pts, workers=-1)[0]
    d_gt = cKDTree(pred_pts).query(gt_pts, workers=-1)[0]
    precision = float((d_pred < tau).mean())
    recall = float((d_gt < tau).mean())
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    acc, comp = float(d_pred.mean()), float(d_gt.mean())
    return {
        **out,
        "accuracy": acc,
        "completeness": comp,
        "chamfer": (acc + comp) / 2,
        "precision": precision,
        "recall": recall,
        "fscore": f,
    }


def similarity_from_cameras(est: dict[str, Camera], ref: dict[str, Camera]) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) with ``ref_center ~ s R est_center + t`` over the views both have (Umeyama).

    Brings a reconstruction made with SfM poses (arbitrary frame and scale) into the GT frame.
    """
    names = sorted(set(est) & set(ref))
    if len(names) < 3:
        raise ValueError("need at least 3 common views to align two reconstructions")
    X = np.array([est[n].center for n in names])
    Y = np.array([ref[n].center for n in names])
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    U, S, Vt = np.linalg.svd(Yc.T @ Xc / len(names))
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (Xc**2).sum() * len(names))
    t = my - s * R @ mx
    return s, R, t


def transform_mesh(mesh: Mesh, s: float, R: np.ndarray, t: np.ndarray) -> Mesh:
    """``mesh`` with vertices ``s R v + t``."""
    return Mesh(s * mesh.vertices @ R.T + t, mesh.faces, mesh.colors)
