"""Single-view pieces: intrinsics, the shift of an affine-invariant prediction from its normals,
the normal-convention check, and a textured mesh from a depth map.

All in the OpenCV camera frame; depth along z.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage

from .integrate import angular_error_deg, depth_to_normals
from .mesh import Mesh, simplify
from .types import DepthKind

DEFAULT_FOV_DEG = 55.0  # horizontal field of view when neither K nor EXIF focal length is known


def intrinsics_from_fov(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """(3, 3) K for a horizontal field of view, principal point at the image centre."""
    if not 1.0 < fov_deg < 179.0:
        raise ValueError(f"field of view must be between 1 and 179 degrees, got {fov_deg}")
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


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
    shift: float  # in units of the prediction (scale fixed to 1)
    angular_error_deg: float  # mean angle between predicted normals and the prior's normals
    candidates: np.ndarray
    errors: np.ndarray


def recover_shift(
    pred: np.ndarray,
    kind: DepthKind,
    normal: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray | None = None,
    samples: int = 60,
) -> ShiftResult:
    """The shift t for which normals computed from ``depth_from_affine(pred, kind, t)`` agree best
    with the predicted ``normal`` (mean angle). Scale does not change normals, so it stays free.

    Searched on a log-spaced grid over the plausible range, then refined around the best value.
    """
    m = np.isfinite(pred) if mask is None else (mask & np.isfinite(pred))
    lo_p, hi_p = np.percentile(pred[m], [1, 99])
    span = max(hi_p - lo_p, 1e-6)
    # shifts that keep p + t > 0 on (almost) every pixel, log-spaced over five decades of the range
    cands = -lo_p + 1e-3 * span + span * np.logspace(-3, 2, samples)

    # normals from differences over a few pixels (robust to pixel noise), compared on the grid of
    # every step-th pixel: there the differences are between neighbours of the subsampled maps, so
    # the error is the same function on step^2 times fewer pixels
    step = max(1, round(min(pred.shape) / 150))
    pred, normal, m = pred[::step, ::step], normal[::step, ::step], m[::step, ::step]
    Ks = np.diag([1.0 / step, 1.0 / step, 1.0]) @ K

    def err(t: float) -> float:
        return angular_error_deg(depth_to_normals(depth_from_affine(pred, kind, t), Ks), normal, m)

    errs = np.array([err(t) for t in cands])
    i = int(np.nanargmin(errs))
    lo = cands[max(i - 1, 0)]
    hi = cands[min(i + 1, len(cands) - 1)]
    for _ in range(12):  # golden-section refinement
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if err(a) < err(b):
            hi = b
        else:
            lo = a
    t = (lo + hi) / 2
    return ShiftResult(float(t), err(t), cands, errs)


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
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1).reshape(-1, 3)
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
