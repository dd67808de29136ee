"""A texture atlas baked from the registered photos: per face the view that sees it best, seams levelled.

Image-space charts (as in Waechter et al., "Let There Be Color!", ECCV 2014): every patch of
connected faces that took the same view is textured by that view's pixels, and its UVs are its
projection into that view, so the texture keeps the photos' own resolution (``detail`` times it
when the atlas fits) and the views' pixels land where their surface point does. Each step costs
time linear in faces, views and pixels:

1. :func:`view_quality` — per view, the mesh ray cast at every pixel; a face is visible when the
   ray through its centroid hits it, or a surface at its depth (no occluder in front); its quality
   is its projected area in pixels (resolution x obliquity / distance²). The ``candidates`` best views
   per face are kept.
2. :func:`select_views` — one view per face, minimising (1 - quality / best quality) plus
   ``smoothness`` per edge-neighbour that took another view (iterated conditional modes).
3. :func:`patches` — connected faces with one view; each a rectangle of that view's image.
4. :func:`level_gains` — colours along seams between patches sampled in both views; a gain per
   view and channel (robust least squares in log colour) removes exposure differences, then each
   patch gets a smooth correction that meets the mean of both sides along its seams.
5. :func:`merge_views` — with ``detail`` > 1 texels per pixel, every candidate view's pixels
   splatted into the patch of the face they see, at the texel where they land: the views' different
   sub-pixel offsets give back detail finer than one photo's pixels.
6. :func:`bake` — the rectangles packed on shelves into a square atlas no larger than
   ``max_size`` (uniformly scaled when they do not fit), from the merged samples or, where they are
   few, the patch's own photo, levelled; texels outside every rectangle filled by push-pull
   (mip-maps do not bleed in background colour); faces no view sees get a flat cell of their vertex
   colour.

Frames: vertices in world (scene) units, cameras world-to-camera (OpenCV), images (H, W, 3) float
in [0, 1] undistorted to the cameras' pinhole K; UVs in OpenGL convention (origin bottom-left).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from numba import njit
from scipy import sparse
from scipy.sparse import csgraph
from tqdm.auto import tqdm

from .mesh import Mesh, cast_pixels, raycasting_scene, sample_bilinear
from .types import Camera

ImageLoader = Callable[[str], np.ndarray]


@dataclass
class TextureOptions:
    max_size: int = 4096  # the atlas side never exceeds this (texels)
    padding: int = 2  # texels of photo kept around every patch
    candidates: int = 6  # best views kept per face
    consistency: float = 0.12  # drop a face's view whose colour is this far from the views' median (0: off)
    smoothness: float = 0.3  # cost of a neighbour with another view, against (1 - quality / best)
    sweeps: int = 8  # iterated conditional modes
    min_cos: float = 0.1  # faces seen more obliquely than acos(min_cos) are not textured from that view
    level: bool = True  # seam levelling (global gains, then local corrections)
    local: bool = True  # the local (per patch) part of the levelling
    detail: int = 2  # texels per photo pixel (each axis) where the atlas fits; > 1 merges every candidate view's pixels
    own_weight: float = 1.0  # weight of the patch's own view among the merged views' pixels
    seed: int = 0


@dataclass
class FaceViews:
    """The ``K`` best views of each of F faces, best first: ``views`` (F, K) view index, -1 none;
    ``quality`` (F, K) projected area in pixels, 0 none."""

    views: np.ndarray
    quality: np.ndarray


@dataclass
class Patch:
    view: int  # index into the view names
    faces: np.ndarray  # (n,) face indices
    x0: int  # the rectangle in the view's image, pixels (padding included), inclusive
    y0: int
    width: int
    height: int


@dataclass
class TextureResult:
    """The textured mesh (vertices duplicated along patch seams; ``uv``, ``texture`` set) and statistics."""

    mesh: Mesh
    labels: np.ndarray  # (F,) view index per face of the input mesh, -1 where no view sees it
    gains: np.ndarray  # (n_views, 3) multiplicative colour gain per view from the levelling
    stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------- geometry
def view_quality(
    mesh: Mesh,
    cameras: list[Camera],
    opts: TextureOptions | None = None,
    progress: bool = False,
    valid: Callable[[int], np.ndarray | None] | None = None,
) -> FaceViews:
    """The ``opts.candidates`` best views of every face (see the module docstring, step 1).

    A face is visible in a view when its centroid projects inside the image, it faces the camera
    more than ``opts.min_cos``, and the ray through that pixel hits the face itself or a surface
    within 1.5 mean edge lengths of the centroid's depth (a sub-pixel face hides behind its
    neighbours' hits, an occluder does not). With ``valid`` (view i -> (H, W) bool, or None for all
    pixels), its three corners must also fall on valid pixels (an undistorted photo has none where the
    original image ends)."""
    opts = opts or TextureOptions()
    v, f = mesh.vertices, mesh.faces
    tri = v[f]  # (F, 3, 3)
    centroid = tri.mean(1)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-20)
    tol = 1.5 * float(np.mean(np.linalg.norm(tri[:, 1] - tri[:, 0], axis=1)))
    k = opts.candidates
    views = np.full((len(f), k), -1, np.int64)
    quality = np.zeros((len(f), k))
    scene = raycasting_scene(mesh)
    rows = np.arange(len(f))
    for i, cam in enumerate(tqdm(cameras, desc="texture: visibility", unit="view", disable=not progress)):
        depth, prim, _ = cast_pixels(scene, cam)
        uv, z = cam.project(centroid)
        xi, yi = np.round(uv[:, 0]), np.round(uv[:, 1])
        inside = (z > 0) & (xi >= 0) & (yi >= 0) & (xi < cam.width) & (yi < cam.height)
        idx = np.flatnonzero(inside)
        px, py = xi[idx].astype(np.int64), yi[idx].astype(np.int64)
        ray = centroid[idx] - cam.center
        cos = np.abs(np.sum(ray * normal[idx], 1)) / np.linalg.norm(ray, axis=1)
        hit_self = prim[py, px] == idx
        hit_near = np.abs(depth[py, px] - z[idx]) < tol
        ok = (cos > opts.min_cos) & (hit_self | hit_near)
        idx = idx[ok]
        corners, _ = cam.project(tri[idx])  # (n, 3, 2)
        mask = valid(i) if valid is not None else None
        if mask is not None:
            cx = np.clip(np.round(corners[..., 0]), 0, cam.width - 1).astype(np.int64)
            cy = np.clip(np.round(corners[..., 1]), 0, cam.height - 1).astype(np.int64)
            keep = mask[cy, cx].all(1)
            idx, corners = idx[keep], corners[keep]
        e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
        q = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        # replace each face's worst candidate when this view is better
        worst = np.argmin(quality[idx], 1)
        better = q > quality[idx, worst]
        sel, col = idx[better], worst[better]
        views[sel, col] = i
        quality[sel, col] = q[better]
    order = np.argsort(-quality, 1)
    return FaceViews(views[rows[:, None], order], quality[rows[:, None], order])


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """The image low-passed: colours compared across views then ignore misregistration of fine detail."""
    return cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (0, 0), sigma)


def photo_consistency(
    mesh: Mesh,
    fv: FaceViews,
    cameras: list[Camera],
    load: Callable[[int], np.ndarray],
    threshold: float,
    progress: bool = False,
) -> FaceViews:
    """``fv`` without the views whose colour of a face disagrees with the others: occluders the mesh
    does not have, or a surface the mesh puts off its true place. Per face with three or more
    candidate views, its centroid's colour in each (images blurred by 3 pixels, so that a shift of
    fine texture does not count) against the per-channel median over the candidates; a view more
    than ``threshold`` away (RGB distance in [0, 1]) is dropped (as in Waechter et al.'s
    photo-consistency check, with a median for the mode)."""
    centroid = mesh.vertices[mesh.faces].mean(1)
    colours = np.full((*fv.views.shape, 3), np.nan)
    for i in tqdm(np.unique(fv.views[fv.views >= 0]), desc="texture: consistency", unit="view", disable=not progress):
        rows, cols = np.nonzero(fv.views == i)
        image = _blur(load(int(i)), 3.0)
        colours[rows, cols] = sample_bilinear(image, cameras[int(i)].project(centroid[rows])[0])
    voters = np.flatnonzero((fv.views >= 0).sum(1) >= 3)
    with warnings.catch_warnings():  # a face whose every candidate falls on NaN pixels has no median
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(colours[voters], axis=1, keepdims=True)
    far = np.zeros(fv.views.shape, bool)
    far[voters] = np.linalg.norm(colours[voters] - median, axis=2) > threshold
    views = np.where(far, -1, fv.views)
    quality = np.where(far, 0.0, fv.quality)
    order = np.argsort(-quality, 1, kind="stable")
    rows = np.arange(len(views))[:, None]
    return FaceViews(views[rows, order], quality[rows, order])


def face_adjacency(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of faces that share an edge: (E, 2) face indices and (E, 2) the shared edge's vertices.
    Edges shared by more than two faces (non-manifold) pair their first two faces."""
    e = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1)
    owner = np.repeat(np.arange(len(faces)), 3)
    key = e[:, 0] * (int(faces.max(initial=0)) + 1) + e[:, 1]
    order = np.argsort(key, kind="stable")
    key, owner, e = key[order], owner[order], e[order]
    same = np.flatnonzero(key[1:] == key[:-1])
    return np.column_stack([owner[same], owner[same + 1]]), e[same]


def select_views(fv: FaceViews, adjacency: np.ndarray, opts: TextureOptions | None = None) -> np.ndarray:
    """(F,) one view per face (-1 where no view sees it), see the module docstring, step 2. Starts
    from each face's best view; each sweep moves a random half of the faces to the candidate of least
    cost given their neighbours."""
    opts = opts or TextureOptions()
    views, quality = fv.views, fv.quality
    n = len(views)
    with np.errstate(invalid="ignore", divide="ignore"):
        data = np.where(views >= 0, 1.0 - quality / quality[:, :1], np.inf)
    labels = views[:, 0].copy()
    if len(adjacency) == 0 or opts.smoothness <= 0:
        return labels
    a, b = adjacency[:, 0], adjacency[:, 1]
    degree = np.bincount(np.concatenate([a, b]), minlength=n)
    rng = np.random.default_rng(opts.seed)
    for _ in range(opts.sweeps):
        agree = np.zeros(views.shape)
        for c in range(views.shape[1]):
            cand = views[:, c]
            agree[:, c] = np.bincount(a, (labels[b] == cand[a]) & (cand[a] >= 0), n)
            agree[:, c] += np.bincount(b, (labels[a] == cand[b]) & (cand[b] >= 0), n)
        cost = data + opts.smoothness * (degree[:, None] - agree)
        best = views[np.arange(n), np.argmin(cost, 1)]
        move = (best != labels) & (rng.random(n) < 0.5) & (labels >= 0)
        if not move.any():
            break
        labels[move] = best[move]
    return labels


# ------------------------------------------------------------------------------------- patches
def patches(
    mesh: Mesh, labels: np.ndarray, adjacency: np.ndarray, cameras: list[Camera], padding: int
) -> tuple[list[Patch], np.ndarray]:
    """Connected faces with one view (step 3): the patches, and (F, 3, 2) every face corner's pixel
    coordinates in its face's view (NaN for faces without a view)."""
    n = len(labels)
    a, b = adjacency[:, 0], adjacency[:, 1]
    same = (labels[a] == labels[b]) & (labels[a] >= 0)
    graph = sparse.coo_matrix((np.ones(int(same.sum())), (a[same], b[same])), shape=(n, n))
    _, comp = csgraph.connected_components(graph, directed=False)
    corners = np.full((n, 3, 2), np.nan)
    tri = mesh.vertices[mesh.faces]
    for i, cam in enumerate(cameras):
        sel = np.flatnonzero(labels == i)
        if len(sel):
            corners[sel] = cam.project(tri[sel])[0]
    seen = np.flatnonzero(labels >= 0)
    order = seen[np.argsort(comp[seen], kind="stable")]
    starts = np.flatnonzero(np.r_[True, comp[order][1:] != comp[order][:-1]])
    out = []
    for s, e in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        faces = order[s:e]
        xy = corners[faces].reshape(-1, 2)
        lo = np.floor(xy.min(0)).astype(int) - padding
        hi = np.ceil(xy.max(0)).astype(int) + padding
        size = hi - lo + 1
        out.append(Patch(int(labels[faces[0]]), faces, int(lo[0]), int(lo[1]), int(size[0]), int(size[1])))
    return out, corners


# ----------------------------------------------------------------------------------- levelling
@dataclass
class SeamSamples:
    """Points on the edges between patches (the two shared vertices and the midpoint of each edge),
    world (N, 3), with the view ``a`` and ``b`` (N,) and patch ``pa``, ``pb`` (N,) of either side."""

    points: np.ndarray
    a: np.ndarray
    b: np.ndarray
    pa: np.ndarray
    pb: np.ndarray


def seam_samples(
    mesh: Mesh, labels: np.ndarray, patch_of_face: np.ndarray, adjacency: np.ndarray, edges: np.ndarray
) -> SeamSamples:
    """The points of every edge between two textured patches (see :class:`SeamSamples`)."""
    fa, fb = adjacency[:, 0], adjacency[:, 1]
    seam = (patch_of_face[fa] != patch_of_face[fb]) & (labels[fa] >= 0) & (labels[fb] >= 0)
    fa, fb, e = fa[seam], fb[seam], edges[seam]
    p0, p1 = mesh.vertices[e[:, 0]], mesh.vertices[e[:, 1]]
    pts = np.concatenate([p0, p1, 0.5 * (p0 + p1)])
    rep = lambda x: np.tile(x, 3)  # noqa: E731
    return SeamSamples(pts, rep(labels[fa]), rep(labels[fb]), rep(patch_of_face[fa]), rep(patch_of_face[fb]))


def _seam_colours(s: SeamSamples, cameras: list[Camera], load: Callable[[int], np.ndarray], progress: bool):
    """Colours (N, 3) of the seam points in view ``a`` and in view ``b``."""
    ca, cb = np.zeros((len(s.points), 3), np.float32), np.zeros((len(s.points), 3), np.float32)
    used = np.unique(np.concatenate([s.a, s.b]))
    for i in tqdm(used, desc="texture: seams", unit="view", disable=not progress):
        image = _blur(load(int(i)), 2.0)
        for side, out in ((s.a, ca), (s.b, cb)):
            sel = np.flatnonzero(side == i)
            out[sel] = sample_bilinear(image, cameras[i].project(s.points[sel])[0])
    return ca, cb


def level_gains(
    ca: np.ndarray, cb: np.ndarray, a: np.ndarray, b: np.ndarray, n_views: int, iters: int = 8
) -> np.ndarray:
    """(n_views, 3) gains g so that g[a] * ca ≈ g[b] * cb along the seams: per channel, least
    squares in log colour with Huber weights (occlusion edges and misregistration are outliers), a
    weak pull of every log gain toward 0 (views that share no seam keep gain 1), and the median
    gain fixed at 1 (exposure is relative; most photos keep their colours)."""
    gains = np.ones((n_views, 3))
    if len(a) == 0:
        return gains
    eps = 1.0 / 255.0
    for c in range(3):
        r0 = np.log(cb[:, c] + eps) - np.log(ca[:, c] + eps)  # want x[a] - x[b] = r0
        w = np.ones(len(r0))
        x = np.zeros(n_views)
        for _ in range(iters):
            L = sparse.coo_matrix((np.r_[w, w, -w, -w], (np.r_[a, b, a, b], np.r_[a, b, b, a])), shape=(n_views,) * 2)
            rhs = np.bincount(a, w * r0, n_views) - np.bincount(b, w * r0, n_views)
            A = L.toarray() + 1e-3 * max(float(w.sum()) / n_views, 1.0) * np.eye(n_views)
            x = np.linalg.solve(A, rhs)
            res = np.abs(x[a] - x[b] - r0)
            w = np.minimum(1.0, 0.05 / np.maximum(res, 1e-12))  # Huber, delta 0.05 in log colour
        seen = np.unique(np.concatenate([a, b]))
        x[seen] -= np.median(x[seen])  # most photos are exposed alike: they keep their colours
        gains[:, c] = np.exp(x)
    return gains


# ---------------------------------------------------------------------------------------- atlas
def pack(sizes: np.ndarray, side: int) -> np.ndarray | None:
    """Shelf packing of rectangles (N, 2) (width, height) into a ``side`` x ``side`` square, tallest
    first: (N, 2) top-left corners, or None when they do not fit."""
    order = np.argsort(-sizes[:, 1], kind="stable")
    out = np.zeros_like(sizes)
    x = y = shelf = 0
    for i in order:
        w, h = sizes[i]
        if w > side:
            return None
        if x + w > side:
            x, y, shelf = 0, y + shelf, 0
        if y + h > side:
            return None
        out[i] = (x, y)
        x += w
        shelf = max(shelf, h)
    return out


def _layout(
    sizes: np.ndarray, fixed: np.ndarray, max_size: int, start: float = 1.0
) -> tuple[int, float, np.ndarray, np.ndarray]:
    """Atlas side (a multiple of 128, at most ``max_size``), the scale applied to the rectangles (N, 2)
    not ``fixed`` (``start``, or less when they do not fit), all rectangles' sizes after it and their
    top-left corners."""
    scale = float(start)
    for _ in range(60):
        scaled = np.where(fixed[:, None], sizes, np.maximum(np.ceil(sizes * scale).astype(np.int64), 2))
        side = int(np.ceil(np.sqrt(scaled.prod(1).sum() / 0.9) / 128) * 128)
        side = max(side, 128, int(np.ceil(scaled.max() / 128) * 128))
        while side <= max_size:
            pos = pack(scaled, side)
            if pos is not None:
                return side, scale, scaled, pos
            side += 128
        scale *= 0.9
    raise ValueError(
        f"{len(sizes)} texture patches and cells do not fit a {max_size} x {max_size} atlas: raise the texture size"
    )


def push_pull(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the texels of (H, W, C) ``image`` where ``known`` (H, W) is False with a smooth blend of
    the known ones (a pyramid of weighted averages, coarse levels filling the holes of fine ones)."""
    if known.all() or not known.any():
        return image
    w = known.astype(np.float32)
    img = image.astype(np.float32) * w[..., None]
    levels = [(img, w)]
    while min(img.shape[:2]) > 1:
        h2, w2 = (img.shape[0] + 1) // 2, (img.shape[1] + 1) // 2
        img = cv2.resize(img, (w2, h2), interpolation=cv2.INTER_AREA)
        w = cv2.resize(w, (w2, h2), interpolation=cv2.INTER_AREA)
        levels.append((img, w))
    filled = levels[-1][0] / np.maximum(levels[-1][1], 1e-12)[..., None]
    for img, w in reversed(levels[:-1]):
        up = cv2.resize(filled, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(img.shape)
        wc = np.minimum(w, 1.0)[..., None]
        filled = wc * img / np.maximum(w, 1e-12)[..., None] + (1 - wc) * up
    return np.where(known[..., None], image, filled).astype(image.dtype)


_PRIOR = 0.05  # weight of a patch's own pixels (bilinear) against the merged views' samples (sum ~ 1 per texel)
_LOCAL_STEP = 4  # texels per cell of the local levelling corrections


def _local_corrections(
    plist: list[Patch],
    side: tuple[int, ...],
    s: SeamSamples,
    ca: np.ndarray,
    cb: np.ndarray,
    gains: np.ndarray,
    to_atlas: Callable[[int, np.ndarray], np.ndarray],
    cameras: list[Camera],
) -> dict[int, np.ndarray]:
    """Per patch an additive colour correction over its rectangle, at a quarter of its resolution
    (ceil(h' / 4), ceil(w' / 4), 3): at its seam points half the difference to the other side (after
    the gains), push-pull interpolated inside (the correction is smooth; memory stays 1/16 of the atlas)."""
    la, lb = ca * gains[s.a], cb * gains[s.b]
    mid = 0.5 * (la + lb)
    out: dict[int, np.ndarray] = {}
    for pid_side, view_side, delta in ((s.pa, s.a, mid - la), (s.pb, s.b, mid - lb)):
        order = np.argsort(pid_side, kind="stable")
        ps = pid_side[order]
        starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
        for st, en in zip(starts, np.r_[starts[1:], len(ps)], strict=True):
            pid = int(ps[st])
            idx = order[st:en]
            xy = to_atlas(pid, cameras[int(view_side[idx[0]])].project(s.points[idx])[0])
            h, w = (-(-n // _LOCAL_STEP) for n in side[pid])
            acc = out.setdefault(pid, np.zeros((h, w, 4), np.float32))
            xi = np.clip(np.round(xy[:, 0] / _LOCAL_STEP).astype(int), 0, w - 1)
            yi = np.clip(np.round(xy[:, 1] / _LOCAL_STEP).astype(int), 0, h - 1)
            cell = yi * w + xi
            for c, values in enumerate((*delta[idx].T, np.ones(len(idx)))):
                acc[..., c] += np.bincount(cell, values, h * w).reshape(h, w).astype(np.float32)
    for pid, acc in out.items():
        known = acc[..., 3] > 0
        field_ = acc[..., :3] / np.maximum(acc[..., 3:], 1e-12)
        out[pid] = push_pull(field_, known)
    return out


@njit(cache=True)
def _splat(acc: np.ndarray, xy: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> None:
    """Add each sample's ``weight`` x (colour, 1) to the 2 x 2 texels of (S, S, 4) ``acc`` around
    texel coordinates ``xy`` (N, 2), bilinearly."""
    h, w = acc.shape[0], acc.shape[1]
    for i in range(xy.shape[0]):
        x0 = int(np.floor(xy[i, 0]))
        y0 = int(np.floor(xy[i, 1]))
        fx = xy[i, 0] - x0
        fy = xy[i, 1] - y0
        for dy in range(2):
            yy = y0 + dy
            if yy < 0 or yy >= h:
                continue
            wy = fy if dy else 1.0 - fy
            for dx in range(2):
                xx = x0 + dx
                if xx < 0 or xx >= w:
                    continue
                ww = weight[i] * wy * (fx if dx else 1.0 - fx)
                for c in range(3):
                    acc[yy, xx, c] += ww * colour[i, c]
                acc[yy, xx, 3] += ww


def merge_views(
    mesh: Mesh,
    cameras: list[Camera],
    load: Callable[[int], np.ndarray],
    candidates: np.ndarray,
    labels: np.ndarray,
    texel_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
    side: int,
    gains: np.ndarray,
    own_weight: float,
    progress: bool = False,
    valid: Callable[[int], np.ndarray | None] | None = None,
) -> np.ndarray:
    """Every view's pixels splatted into the atlas (step 5): (side, side, 4) float32, colour sums and
    weights. A pixel of view j whose ray hits face f, where j is one of f's ``candidates`` (F, K)
    (the views that see it well and agree in colour, -1 none) or f's own view ``labels[f]`` (F,),
    lands, bilinearly, at the texel where its hit point projects in f's own view
    (``texel_of(points (N, 3), faces (N,)) -> (N, 2)`` atlas texel coordinates), with colour x
    ``gains[j]`` and weight ``own_weight`` from that view, 1 from the others. Different views sample
    a surface at different sub-pixel offsets, so at ``detail`` > 1 texels per pixel the merged
    samples keep detail finer than any one photo's pixels; one ray cast and one pass over each view's
    pixels: time linear in pixels, memory 16 bytes per texel."""
    acc = np.zeros((side, side, 4), np.float32)
    scene = raycasting_scene(mesh)
    tri = mesh.vertices[mesh.faces]
    used = np.unique(np.concatenate([candidates[labels >= 0].ravel(), labels]))
    for j in tqdm(used[used >= 0], desc="texture: detail", unit="view", disable=not progress):
        allowed = ((candidates == j).any(1) | (labels == j)) & (labels >= 0)
        _, prim, bary = cast_pixels(scene, cameras[int(j)])
        hit = prim >= 0
        hit[hit] = allowed[prim[hit]]
        mask = valid(int(j)) if valid is not None else None
        if mask is not None:
            hit &= mask
        ys, xs = np.nonzero(hit)
        f = prim[ys, xs]
        b = bary[ys, xs]
        colour = load(int(j))[ys, xs] * gains[j]
        good = np.isfinite(colour).all(1)
        f, b, colour = f[good], b[good], colour[good]
        t = tri[f]
        points = t[:, 0] + b[:, :1] * (t[:, 1] - t[:, 0]) + b[:, 1:] * (t[:, 2] - t[:, 0])
        weight = np.where(labels[f] == j, own_weight, 1.0)
        _splat(acc, texel_of(points, f), colour.astype(np.float64), weight)
    return acc


def bake(
    mesh: Mesh,
    cameras: list[Camera],
    load: Callable[[int], np.ndarray],
    opts: TextureOptions | None = None,
    progress: bool = False,
    valid: Callable[[int], np.ndarray | None] | None = None,
) -> TextureResult:
    """Texture ``mesh`` from the photos of ``cameras`` (``load(i)``: view i's undistorted (H, W, 3)
    image in [0, 1]); the returned mesh has per-vertex ``uv`` and a ``texture`` (S, S, 3) float32,
    S <= ``opts.max_size``, and keeps ``mesh.colors`` for its vertices. ``valid(i)``: view i's (H, W)
    bool mask of pixels with colour (None: all); NaN pixels are never copied into the atlas either way."""
    opts = opts or TextureOptions()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if len(mesh.faces) == 0:
        raise ValueError("cannot texture an empty mesh")
    if opts.detail < 1:
        raise ValueError(f"texture detail must be at least 1 texel per pixel, not {opts.detail}")
    fv = view_quality(mesh, cameras, opts, progress, valid)
    timings["visibility"] = time.perf_counter() - t0
    if opts.consistency > 0:
        t = time.perf_counter()
        fv = photo_consistency(mesh, fv, cameras, load, opts.consistency, progress)
        timings["consistency"] = time.perf_counter() - t
    t = time.perf_counter()
    adjacency, edges = face_adjacency(mesh.faces)
    labels = select_views(fv, adjacency, opts)
    plist, corners = patches(mesh, labels, adjacency, cameras, opts.padding)
    patch_of_face = np.full(len(labels), -1, np.int64)
    for i, p in enumerate(plist):
        patch_of_face[p.faces] = i
    timings["selection"] = time.perf_counter() - t

    t = time.perf_counter()
    n_views = len(cameras)
    gains = np.ones((n_views, 3))
    seams = seam_samples(mesh, labels, patch_of_face, adjacency, edges)
    if opts.level:
        ca, cb = _seam_colours(seams, cameras, load, progress)
        ok = np.isfinite(ca).all(1) & np.isfinite(cb).all(1)  # undistorted photos are NaN outside the original
        seams = SeamSamples(*(x[ok] for x in (seams.points, seams.a, seams.b, seams.pa, seams.pb)))
        ca, cb = ca[ok], cb[ok]
        gains = level_gains(ca, cb, seams.a, seams.b, n_views)
    timings["levelling"] = time.perf_counter() - t

    # atlas layout: patch rectangles, then one flat cell per face that no view sees
    t = time.perf_counter()
    unseen = np.flatnonzero(labels < 0)
    cell = 2 + 2 * opts.padding
    sizes = np.array([(p.width, p.height) for p in plist] + [(cell, cell)] * len(unseen), np.int64).reshape(-1, 2)
    fixed = np.r_[np.zeros(len(plist), bool), np.ones(len(unseen), bool)]
    side, scale, scaled, pos = _layout(sizes, fixed, opts.max_size, start=max(opts.detail, 1))
    sizes_hw = tuple((int(h), int(w)) for w, h in scaled)

    origin = np.array([(p.x0, p.y0) for p in plist], np.float64).reshape(-1, 2)
    extent = np.array([(p.width, p.height) for p in plist], np.float64).reshape(-1, 2)
    factor = (scaled[: len(plist)] - 1) / np.maximum(extent - 1, 1)

    def to_atlas(pid: int | np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Pixel coordinates in patch pid's view -> texel coordinates inside its rectangle."""
        return (xy - origin[pid]) * factor[pid]

    merged = None
    if opts.detail > 1 and plist:
        t_merge = time.perf_counter()

        def texel_of(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
            xy = np.zeros((len(faces), 2))
            views = labels[faces]
            for v in np.unique(views):
                sel = np.flatnonzero(views == v)
                xy[sel] = cameras[int(v)].project(points[sel])[0]
            pid = patch_of_face[faces]
            return to_atlas(pid, xy) + pos[pid]

        merged = merge_views(
            mesh, cameras, load, fv.views, labels, texel_of, side, gains, opts.own_weight, progress, valid
        )
        timings["detail"] = time.perf_counter() - t_merge
    local = {}
    if opts.level and opts.local and len(seams.points):
        local = _local_corrections(plist, sizes_hw, seams, ca, cb, gains, to_atlas, cameras)
    atlas = np.zeros((side, side, 3), np.float32)
    known = np.zeros((side, side), bool)
    by_view: dict[int, list[int]] = {}
    for i, p in enumerate(plist):
        by_view.setdefault(p.view, []).append(i)
    for view in tqdm(sorted(by_view), desc="texture: bake", unit="view", disable=not progress):
        image = load(view)
        for pid in by_view[view]:
            p = plist[pid]
            h, w = sizes_hw[pid]
            ys = p.y0 + np.arange(h) * (p.height - 1) / max(h - 1, 1)
            xs = p.x0 + np.arange(w) * (p.width - 1) / max(w - 1, 1)
            mx, my = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
            rect = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) * gains[view]
            x, y = pos[pid]
            ok = np.isfinite(rect).all(-1)  # NaN where an undistorted photo has no pixel: filled below
            rect = np.where(ok[..., None], rect, 0.0)
            if merged is not None:  # the views' samples, the patch's own pixels where they are too few
                a = merged[y : y + h, x : x + w]
                prior = _PRIOR * ok[..., None]
                rect = (a[..., :3] + prior * rect) / np.maximum(a[..., 3:] + prior, 1e-12)
                ok = ok | (a[..., 3] > 0)
            if pid in local:
                rect = rect + cv2.resize(local[pid], (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 3)
            atlas[y : y + h, x : x + w] = rect
            known[y : y + h, x : x + w] = ok
    # faces no view sees: a flat cell of their mean vertex colour
    cell_colour = mesh.colors[mesh.faces[unseen]].mean(1) if mesh.colors is not None else np.full((len(unseen), 3), 0.5)
    for k in range(len(unseen)):
        x, y = pos[len(plist) + k]
        atlas[y : y + cell, x : x + cell] = cell_colour[k]
        known[y : y + cell, x : x + cell] = True
    atlas = np.clip(push_pull(atlas, known), 0.0, 1.0)

    # UVs: each face corner's texel position; vertices duplicated per (vertex, patch)
    texel = np.zeros((len(labels), 3, 2))
    for pid, p in enumerate(plist):
        texel[p.faces] = to_atlas(pid, corners[p.faces].reshape(-1, 2)).reshape(-1, 3, 2) + pos[pid]
    centre = pos[len(plist) :] + cell / 2.0 - 0.5
    texel[unseen] = centre[:, None, :] + np.array([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]])
    owner = np.where(labels >= 0, patch_of_face, len(plist) + np.cumsum(labels < 0) - 1)
    n_owners = int(owner.max(initial=0)) + 1
    key, inverse = np.unique(
        mesh.faces.reshape(-1).astype(np.int64) * n_owners + np.repeat(owner, 3), return_inverse=True
    )
    uniq = np.column_stack([key // n_owners, key % n_owners])  # (vertex, patch) pairs, sorted as before
    inverse = inverse.reshape(-1)
    uv = np.zeros((len(uniq), 2))
    uv[inverse] = texel.reshape(-1, 2)
    uv = np.column_stack([(uv[:, 0] + 0.5) / side, 1.0 - (uv[:, 1] + 0.5) / side])
    out = Mesh(
        mesh.vertices[uniq[:, 0]],
        inverse.reshape(-1, 3),
        None if mesh.colors is None else mesh.colors[uniq[:, 0]],
        uv=uv,
        texture=atlas,
    )
    timings["bake"] = time.perf_counter() - t - timings.get("detail", 0.0)
    stats = {
        "size": side,
        "scale": round(float(scale), 4),
        "patches": len(plist),
        "views_used": len(by_view),
        "faces": len(labels),
        "faces_unseen": int(len(unseen)),
        "texels_used": round(float(scaled.prod(1).sum()) / side**2, 4),
        "gain_range": [round(float(gains.min()), 4), round(float(gains.max()), 4)],
        "seam_samples": int(len(seams.points)),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    return TextureResult(out, labels, gains, stats)
