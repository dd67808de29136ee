"""Photometric refinement of a mesh: each vertex moved along its normal to where the photos agree.

A mesh fused from monocular depth is off its true place by about 1 % of the depth (2 cm at 2 m).
Seen from two cameras 30 degrees apart that is several pixels of parallax: a texture taken from
one photo lands off in the other, and fine detail is lost to misregistration. Where the surface
has texture, the photos themselves say where it is: at the true surface point every view sees the
same colour.

Per vertex (``refine_mesh``, one pass):

1. Its views: the ``views`` best of those that see it (ray cast of the mesh; not too oblique;
   quality = cosine / depth).
2. Candidates ``v + d n`` for ``steps`` offsets ``d`` in [-R, R] along the vertex normal, R =
   ``search`` times the median camera distance; each projected into each of its views (photos
   blurred by ``blur`` pixels against aliasing) and the colours' variance across views taken.
3. Costs summed over ``rings`` rings of neighbours (a patch of a few centimetres: one pixel's colour
   is noisy, a patch's is not); the best offset refined by a parabola through its neighbours.
   Confidence = how far the minimum lies below the cost at *both* ends of the range, relative to
   the median cost: 0 on a textureless surface (flat costs) and where the cost only slopes toward
   one end (a silhouette or a colour edge sliding through the samples).
4. Offsets averaged over the neighbours, weighted by confidence squared (``smoothing`` times), with
   a small weight ``stay`` for not moving: textureless regions follow confident neighbours near them
   and otherwise stay. Vertices on or next to the mesh's border (a silhouette) have no confidence.

Passes repeat with a range a third of the previous. A pass is kept only if it lowers the views'
colour variance at the vertices it moves (its self-check, from the same samples); otherwise the
mesh is returned as it came, and ``reason`` says why. Costs are linear in vertices x views x steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from .mesh import Mesh, cast_pixels, raycasting_scene, sample_bilinear, weld
from .types import Camera


@dataclass
class PhotometricOptions:
    search: float = 0.02  # half-range of the first pass's search along the normal, x median camera distance
    steps: int = 25  # offsets tried per pass
    passes: int = 2  # each later pass searches a third of the previous range
    views: int = 8  # best views per vertex
    min_views: int = 3  # a vertex seen by fewer is not moved by its own colours
    rings: int = 2  # rings of neighbours a vertex's cost is summed over
    smoothing: int = 4  # confidence-weighted averagings of the offsets
    stay: float = 0.02  # weight of "no move" in that average: where no vertex near is confident, none moves
    blur: float = 0.7  # pixels, photos low-passed before sampling (aliasing)


@dataclass
class PhotometricResult:
    """``mesh``: the refined mesh (faces and colours as given), or the input where no pass was kept;
    ``offsets`` (V,) the total move along each vertex's normal (scene units); ``stats`` per pass."""

    mesh: Mesh
    offsets: np.ndarray
    accepted: bool
    reason: str = ""
    stats: dict = field(default_factory=dict)


def vertex_normals(mesh: Mesh) -> np.ndarray:
    """(V, 3) unit vertex normals, the area-weighted mean of the adjacent faces' (right-hand winding)."""
    tri = mesh.vertices[mesh.faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(mesh.vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(vn, mesh.faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-20)


def neighbour_average(faces: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    """(V, V) row-stochastic matrix: each vertex's mean over itself and its edge neighbours."""
    f = faces
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0], np.arange(n_vertices)])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2], np.arange(n_vertices)])
    a = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n_vertices, n_vertices))
    a.data[:] = 1.0  # an edge counts once, however many faces share it
    return sp.diags(1.0 / np.asarray(a.sum(1)).ravel()) @ a


def boundary_vertices(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """(V,) bool: vertices on an edge that only one face uses (the mesh's borders)."""
    e = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1)
    edges, counts = np.unique(e, axis=0, return_counts=True)
    out = np.zeros(n_vertices, bool)
    out[edges[counts == 1].ravel()] = True
    return out


def best_views(
    mesh: Mesh, normals: np.ndarray, cameras: list[Camera], k: int, progress: bool = False
) -> tuple[np.ndarray, float]:
    """(V, n_views) bool: each vertex's ``k`` best views among those that see it unoccluded (the
    ray cast hits within two mean edges of it) and not too obliquely (|cosine| > 0.3, either winding),
    by cosine / depth; and the median camera distance of those sightings."""
    v = mesh.vertices
    tol = 2.0 * float(np.mean(np.linalg.norm(v[mesh.faces[:, 1]] - v[mesh.faces[:, 0]], axis=1)))
    score = np.zeros((len(v), len(cameras)), np.float32)
    scene = raycasting_scene(mesh)
    dists = []
    for i, cam in enumerate(tqdm(cameras, desc="photometric: visibility", unit="view", disable=not progress)):
        depth, _, _ = cast_pixels(scene, cam)
        uv, z = cam.project(v)
        xi, yi = np.round(uv[:, 0]), np.round(uv[:, 1])
        idx = np.flatnonzero((z > 0) & (xi >= 0) & (yi >= 0) & (xi < cam.width) & (yi < cam.height))
        hit = depth[yi[idx].astype(np.int64), xi[idx].astype(np.int64)]
        ray = v[idx] - cam.center
        cos = np.abs(np.sum(ray * normals[idx], 1)) / np.linalg.norm(ray, axis=1)  # either winding
        ok = (np.abs(hit - z[idx]) < tol) & (cos > 0.3)
        score[idx[ok], i] = cos[ok] / z[idx[ok]]
        dists.append(z[idx[ok]])
    rows = np.arange(len(v))[:, None]
    top = np.argsort(-score, 1)[:, :k]
    keep = np.zeros(score.shape, bool)
    keep[rows, top] = score[rows, top] > 0
    seen = np.concatenate(dists) if dists else np.zeros(0)
    return keep, float(np.median(seen)) if len(seen) else float("nan")


def _one_pass(
    mesh: Mesh,
    n: np.ndarray,
    cameras: list[Camera],
    load: Callable[[int], np.ndarray],
    keep: np.ndarray,
    half_range: float,
    opts: PhotometricOptions,
    average: sp.csr_matrix,
    border: np.ndarray,
    progress: bool,
) -> tuple[np.ndarray, dict]:
    """Offsets (V,) along the (V, 3) vertex normals ``n`` for one pass and its figures (see the module
    docstring)."""
    v = mesh.vertices
    n_v, s = len(v), opts.steps
    offsets = np.linspace(-half_range, half_range, s)
    s1 = np.zeros((n_v, s, 3), np.float32)
    s2 = np.zeros((n_v, s, 3), np.float32)
    count = np.zeros(n_v, np.int32)
    for i in tqdm(np.flatnonzero(keep.any(0)), desc="photometric: colours", unit="view", disable=not progress):
        idx = np.flatnonzero(keep[:, i])
        image = load(int(i))
        if opts.blur > 0:
            image = cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (0, 0), opts.blur)
        points = v[idx, None, :] + offsets[None, :, None] * n[idx, None, :]
        uv, z = cameras[int(i)].project(points.reshape(-1, 3))
        c = sample_bilinear(image, uv).reshape(len(idx), s, 3)
        w, h = cameras[int(i)].width - 1, cameras[int(i)].height - 1
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] <= w) & (uv[:, 1] <= h)
        ok = np.isfinite(c).all((1, 2)) & inside.reshape(len(idx), s).all(1)  # undistorted photos: NaN outside
        idx, c = idx[ok], c[ok]
        s1[idx] += c
        s2[idx] += c * c
        count[idx] += 1
    seen = count >= opts.min_views
    m = np.maximum(count, 1)[:, None, None]
    cost = np.where(seen[:, None], (s2 / m - (s1 / m) ** 2).mean(2), 0.0).astype(np.float64)
    agg = cost
    for _ in range(opts.rings):
        agg = average @ agg
    rows = np.arange(n_v)
    k = np.argmin(agg, 1)
    kk = np.clip(k, 1, s - 2)
    a, b, c = agg[rows, kk - 1], agg[rows, kk], agg[rows, kk + 1]
    curv = a - 2 * b + c
    sub = np.where(curv > 1e-12, 0.5 * (a - c) / np.maximum(curv, 1e-12), 0.0)
    best = offsets[kk] + np.clip(sub, -1.0, 1.0) * (offsets[1] - offsets[0])
    # a bowl, not a slope: both ends of the range must cost clearly more than the minimum (a cost
    # falling toward one end is a silhouette or a colour edge sliding by, not the surface)
    ends = np.minimum(agg[:, :3].mean(1), agg[:, -3:].mean(1))
    median = np.median(agg, 1)
    confidence = np.where(seen & (median > 0), np.clip((ends - agg[rows, k]) / np.maximum(median, 1e-12), 0, 1), 0.0)
    confidence[border] = 0.0
    w = confidence**2
    num, den = best * w, w.copy()
    for _ in range(opts.smoothing):
        num, den = average @ num, average @ den
    move = num / (den + opts.stay)  # where no neighbour is confident, the vertex stays
    # self-check on the same samples: the colours' variance at the vertices moved, before and after
    step = np.clip(np.round((move + half_range) / (offsets[1] - offsets[0])).astype(np.int64), 0, s - 1)
    zero = int(np.argmin(np.abs(offsets)))
    judged = seen & (np.abs(move) > 0)
    before = float(agg[judged, zero].mean()) if judged.any() else 0.0
    after = float(agg[rows[judged], step[judged]].mean()) if judged.any() else 0.0
    stats = {
        "search": round(half_range, 6),
        "vertices_seen": int(seen.sum()),
        "confident": round(float((confidence > 0.2).mean()), 4),
        "moved_median": round(float(np.median(np.abs(move[seen]))) if seen.any() else 0.0, 6),
        "variance_before": round(before, 7),
        "variance_after": round(after, 7),
    }
    return move, stats


def refine_mesh(
    mesh: Mesh,
    cameras: list[Camera],
    load: Callable[[int], np.ndarray],
    opts: PhotometricOptions | None = None,
    progress: bool = False,
) -> PhotometricResult:
    """Move ``mesh``'s vertices along their normals to where the photos agree (module docstring).

    ``cameras[i]`` sees ``load(i)``: the undistorted (H, W, 3) photo in [0, 1] (NaN where it has no
    colour). The refined mesh is welded (:func:`lotus3d.mesh.weld`: copies of a vertex merged) and
    keeps the faces and vertex colours, not a texture; when no pass is kept, the input comes back.
    """
    opts = opts or PhotometricOptions()
    t0 = time.perf_counter()
    if len(mesh.faces) == 0 or len(cameras) < opts.min_views:
        return PhotometricResult(mesh, np.zeros(len(mesh.vertices)), False, "too few views or an empty mesh")
    given, mesh = mesh, weld(mesh)  # copies of a vertex (texture seams, mesh blocks) would read as borders
    average = neighbour_average(mesh.faces, len(mesh.vertices))
    border = (average @ boundary_vertices(mesh.faces, len(mesh.vertices)).astype(float)) > 0
    normals = vertex_normals(mesh)
    keep, distance = best_views(mesh, normals, cameras, opts.views, progress)
    if not np.isfinite(distance):
        return PhotometricResult(given, np.zeros(len(given.vertices)), False, "no view sees the mesh")
    current, total = mesh, np.zeros(len(mesh.vertices))
    passes, reason, half_range = [], "", opts.search * distance
    for p in range(opts.passes):
        move, stats = _one_pass(current, normals, cameras, load, keep, half_range, opts, average, border, progress)
        stats["kept"] = stats["variance_after"] < stats["variance_before"]
        passes.append(stats)
        if not stats["kept"]:
            reason = f"pass {p + 1} did not make the views' colours agree better: stopped there"
            break
        current = Mesh(current.vertices + move[:, None] * normals, mesh.faces, mesh.colors)
        normals = vertex_normals(current)
        total += move
        half_range /= 3.0
    accepted = any(s["kept"] for s in passes)
    if not accepted:
        reason = "the views' colours agree no better anywhere along the normals: the mesh is kept as it was"
    stats = {"passes": passes, "seconds": round(time.perf_counter() - t0, 3), "camera_distance": round(distance, 4)}
    if not accepted:
        return PhotometricResult(given, np.zeros(len(given.vertices)), False, reason, stats)
    return PhotometricResult(current, total, True, reason, stats)
