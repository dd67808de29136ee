"""Synthetic scenes with exact ground truth, ray cast from real meshes with Open3D.

A scene is a textured mesh seen by N posed pinhole cameras. For each view we render the colour
image (texture x simple shading), exact depth along z, camera-frame normals (facing the camera)
and a foreground mask; we sample SfM-like sparse points (surface points seen by two or more views,
with their tracks, optional noise and outliers); and :func:`simulate_prediction` turns exact depth
and normals into what a monocular model such as Lotus gives: affine-invariant disparity in [0, 1]
with errors (see its docstring; :mod:`lotus3d.simulate` has the calibrated one and the error
modes). Preset scenes and scene folders are in :mod:`lotus3d.scenes`, built on this module.

Everything is in the mesh's units and the OpenCV camera convention; poses are world-to-camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import open3d as o3d
import trimesh
from scipy import ndimage

from .mesh import Mesh
from .types import Camera, Prediction, intrinsics_from_fov, pixel_rays


# ---------------------------------------------------------------------------------------- cameras
def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(4, 4) world-to-camera of an OpenCV camera at ``center`` looking at ``target`` (y down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ center
    return T


def orbit_cameras(
    mesh: Mesh,
    n: int,
    width: int = 640,
    height: int = 480,
    fov_deg: float = 50.0,
    distance: float = 2.2,
    elevations: tuple[float, float] = (10.0, 40.0),
    up_axis: int = 1,
    seed: int = 0,
) -> list[Camera]:
    """``n`` cameras on a ring around the mesh, looking at its centre.

    ``distance`` is in units of the bounding sphere's radius; elevation alternates within
    ``elevations`` (degrees) so that consecutive views overlap and see the top.
    """
    rng = np.random.default_rng(seed)
    lo, hi = mesh.bounds
    c, r = (lo + hi) / 2, np.linalg.norm(hi - lo) / 2
    up = np.zeros(3)
    up[up_axis] = 1.0
    a, b = [i for i in range(3) if i != up_axis]
    K = intrinsics_from_fov(width, height, fov_deg)
    cams = []
    for i in range(n):
        az = 2 * np.pi * i / n + rng.uniform(-0.05, 0.05)
        el = np.radians(np.interp((i % 4) / 3, [0, 1], elevations))
        d = np.zeros(3)
        d[a], d[b], d[up_axis] = np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)
        center = c + distance * r * d
        target = c + rng.normal(0, 0.03 * r, 3)
        cams.append(Camera(K=K.copy(), world_to_camera=look_at(center, target, up), width=width, height=height))
    return cams


# --------------------------------------------------------------------------------------- rendering
@dataclass
class RenderedView:
    """One rendered view. depth (H, W) along z (NaN = no surface); normal (H, W, 3) camera frame,
    facing the camera; image (H, W, 3) in [0, 1]; mask (H, W) True where a surface was hit;
    segments (H, W) which mesh (object) each pixel sees."""

    camera: Camera
    image: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    mask: np.ndarray
    segments: np.ndarray | None = None  # (H, W) int: index of the mesh hit, -1 where none


class Renderer:
    """Ray casts one or more :class:`Mesh` (Open3D RaycastingScene): texture x Lambert shading."""

    def __init__(self, meshes: Mesh | list[Mesh], background: tuple[float, float, float] = (0, 0, 0)):
        self.meshes = [meshes] if isinstance(meshes, Mesh) else list(meshes)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.face_normals = []
        for m in self.meshes:
            self.scene.add_triangles(
                o3d.t.geometry.TriangleMesh(
                    o3d.core.Tensor(m.vertices.astype(np.float32)), o3d.core.Tensor(m.faces.astype(np.int32))
                )
            )
            v, f = m.vertices, m.faces
            fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
            self.face_normals.append(fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12))
        self.background = np.asarray(background, np.float32)

    @property
    def mesh(self) -> Mesh:
        """All meshes merged into one (geometry only)."""
        return merge_meshes(self.meshes)

    def render(self, cam: Camera, light_dir: np.ndarray | None = None) -> RenderedView:
        h, w = cam.height, cam.width
        d_cam = pixel_rays(cam.K, w, h)  # z = 1
        R = cam.world_to_camera[:3, :3]
        dirs = d_cam @ R  # world directions whose camera z is 1: t_hit is the z depth
        rays = np.concatenate([np.broadcast_to(cam.center, dirs.shape), dirs], -1).astype(np.float32)
        hit = self.scene.cast_rays(o3d.core.Tensor(rays))
        t = hit["t_hit"].numpy()
        gid = hit["geometry_ids"].numpy().astype(np.int64)
        prim = hit["primitive_ids"].numpy().astype(np.int64)
        bary = hit["primitive_uvs"].numpy()
        mask = np.isfinite(t)
        depth = np.where(mask, t, np.nan).astype(np.float32)
        n_world = np.zeros((h, w, 3))
        albedo = np.zeros((h, w, 3), np.float32)
        for g, m in enumerate(self.meshes):
            sel = mask & (gid == g)
            if sel.any():
                n_world[sel] = self.face_normals[g][prim[sel]]
                albedo[sel] = _albedo(m, prim[sel], bary[sel])
        n_cam = n_world @ R.T
        flip = np.sum(n_cam * d_cam, -1) > 0  # face the camera: n . ray <= 0
        n_cam[flip] *= -1
        n_cam[~mask] = np.nan
        # direction towards the light, camera frame: above-left of and behind the camera
        light = np.array([-0.3, -0.6, -0.75]) if light_dir is None else np.asarray(light_dir, float)
        light = light / np.linalg.norm(light)
        shade = 0.35 + 0.65 * np.clip(np.sum(np.nan_to_num(n_cam) * light, -1), 0, 1)
        image = albedo * shade[..., None]
        image[~mask] = self.background
        segments = np.where(mask, gid, -1).astype(np.int32)
        return RenderedView(
            cam, np.clip(image, 0, 1).astype(np.float32), depth, n_cam.astype(np.float32), mask, segments
        )


def _albedo(m: Mesh, fid: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(N, 3) surface colour at barycentric positions ``bary`` (N, 2) of faces ``fid`` (N,)."""
    f = m.faces[fid]
    w1, w2 = bary[:, 0:1], bary[:, 1:2]
    w0 = 1 - w1 - w2
    if m.texture is not None and m.uv is not None:
        uv = w0 * m.uv[f[:, 0]] + w1 * m.uv[f[:, 1]] + w2 * m.uv[f[:, 2]]
        th, tw = m.texture.shape[:2]
        x = np.mod(uv[:, 0], 1.0) * (tw - 1)
        y = (1 - np.mod(uv[:, 1], 1.0)) * (th - 1)
        return np.stack(
            [ndimage.map_coordinates(m.texture[..., c], [y, x], order=1, mode="nearest") for c in range(3)], -1
        ).astype(np.float32)
    if m.colors is not None:
        vc = m.colors
        return (w0 * vc[f[:, 0]] + w1 * vc[f[:, 1]] + w2 * vc[f[:, 2]]).astype(np.float32)
    # procedural texture from the 3D position, so that SIFT finds features on untextured meshes
    p = w0 * m.vertices[f[:, 0]] + w1 * m.vertices[f[:, 1]] + w2 * m.vertices[f[:, 2]]
    s = 40.0 / np.linalg.norm(np.ptp(m.vertices, 0))
    g = 0.5 + 0.25 * (np.sin(p[:, 0] * s * 3.1) * np.sin(p[:, 1] * s * 2.3) + np.sin(p[:, 2] * s * 4.7))
    return np.repeat(np.clip(g, 0, 1)[:, None], 3, -1).astype(np.float32)


def merge_meshes(meshes: list[Mesh]) -> Mesh:
    """Geometry of several meshes as one (no colour)."""
    verts, faces, off = [], [], 0
    for m in meshes:
        verts.append(m.vertices)
        faces.append(m.faces + off)
        off += len(m.vertices)
    return Mesh(np.concatenate(verts), np.concatenate(faces))


def transformed(
    mesh: Mesh, scale: float = 1.0, rotation: np.ndarray | None = None, translation: np.ndarray | None = None
) -> Mesh:
    """A copy of ``mesh`` with vertices ``scale * R @ v + t``."""
    R = np.eye(3) if rotation is None else rotation
    t = np.zeros(3) if translation is None else translation
    v = scale * mesh.vertices @ R.T + t
    return Mesh(v, mesh.faces.copy(), mesh.colors, mesh.uv, mesh.texture)


def textured_floor(
    center: np.ndarray,
    size: float,
    height: float,
    rng: np.random.Generator,
    up_axis: int = 1,
    resolution: int = 1024,
    grain: float = 0.0,
) -> Mesh:
    """A square floor (two triangles) of side ``size`` at ``height`` along ``up_axis``, with a random
    multi-scale stone-like texture (plenty of SIFT features); ``grain`` adds that much detail at
    twice the texel size."""
    a, b = [i for i in range(3) if i != up_axis]
    corners = np.zeros((4, 3))
    for k, (da, db) in enumerate([(-1, -1), (1, -1), (1, 1), (-1, 1)]):
        corners[k, a] = center[a] + da * size / 2
        corners[k, b] = center[b] + db * size / 2
        corners[k, up_axis] = height
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    tex = np.zeros((resolution, resolution, 3))
    for cells, amp in ((8, 0.5), (32, 0.3), (128, 0.25), (512, 0.15)):
        g = rng.uniform(-1, 1, (cells, cells, 3))
        tex += amp * ndimage.zoom(g, (resolution / cells, resolution / cells, 1), order=1)[:resolution, :resolution]
    tex = 0.5 + 0.5 * tex * np.array([0.9, 0.8, 0.7])
    if grain:
        half = resolution // 2
        g = rng.uniform(-1, 1, (half, half, 3))
        tex += grain * ndimage.zoom(g, (resolution / half, resolution / half, 1), order=1)[:resolution, :resolution]
    tex = np.clip(tex, 0, 1).astype(np.float32)
    return Mesh(corners, np.array([[0, 1, 2], [0, 2, 3]]), uv=uv, texture=tex)


# ------------------------------------------------------------------------------- sparse SfM points
@dataclass
class SparsePoints:
    """SfM-like points: xyz (P, 3) world, rgb (P, 3) uint8, and per view the observations.

    ``tracks[i]`` is a list of (view index, u, v) in OpenCV pixel coordinates.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    tracks: list[list[tuple[int, float, float]]] = field(default_factory=list)


def sample_sparse_points(
    renderer: Renderer,
    views: list[RenderedView],
    n: int = 4000,
    min_views: int = 2,
    noise: float = 0.0,
    outlier_fraction: float = 0.0,
    seed: int = 0,
) -> SparsePoints:
    """Surface points visible (depth test) in at least ``min_views`` views, with their tracks.

    Args:
        noise: std of Gaussian 3D noise, as a fraction of the scene's bounding-box diagonal.
        outlier_fraction: fraction of points moved along a viewing ray to between 0.4 and 2.5 times
            their distance (wrong matches triangulated at a wrong depth, as SfM outliers are).
    """
    rng = np.random.default_rng(seed)
    merged = renderer.mesh
    tm = trimesh.Trimesh(merged.vertices, merged.faces, process=False)
    pts, fids = trimesh.sample.sample_surface(tm, n * 3, seed=int(rng.integers(1 << 31)))
    pts = np.asarray(pts)
    diag = float(np.linalg.norm(np.ptp(merged.vertices, 0)))
    obs: list[list[tuple[int, float, float]]] = [[] for _ in range(len(pts))]
    for vi, view in enumerate(views):
        cam = view.camera
        uv, z = cam.project(pts)
        ui, vi_ = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
        ok = (z > 0) & (ui >= 0) & (ui < cam.width) & (vi_ >= 0) & (vi_ < cam.height)
        idx = np.nonzero(ok)[0]
        dz = view.depth[vi_[idx], ui[idx]]
        vis = idx[np.abs(dz - z[idx]) < 0.003 * diag + 0.01 * z[idx]]
        for p in vis:
            obs[p].append((vi, float(uv[p, 0]), float(uv[p, 1])))
    keep = [i for i in range(len(pts)) if len(obs[i]) >= min_views][:n]
    xyz = pts[keep].copy()
    tracks = [obs[i] for i in keep]
    if noise > 0:
        xyz += rng.normal(0, noise * diag, xyz.shape)
    n_out = int(round(outlier_fraction * len(xyz)))
    if n_out:
        for i in rng.choice(len(xyz), n_out, replace=False):
            view = views[tracks[i][0][0]]
            c = view.camera.center
            factor = np.exp(rng.choice([-1, 1]) * rng.uniform(0.15, 0.9))
            xyz[i] = c + (xyz[i] - c) * factor
    rgb = np.zeros((len(xyz), 3), np.uint8)
    for i, tr in enumerate(tracks):
        vi, u, v = tr[0]
        rgb[i] = (views[vi].image[int(round(v)), int(round(u))] * 255).astype(np.uint8)
    return SparsePoints(xyz, rgb, tracks)


# -------------------------------------------------------------------------- simulated predictions
def smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 3) -> np.ndarray:
    """A smooth random field in [-1, 1] with about ``cells`` bumps across the image (bicubic)."""
    h, w = shape
    gh, gw = cells + 1, max(2, int(round((cells + 1) * w / h)))
    grid = rng.uniform(-1, 1, (gh, gw))
    out = ndimage.zoom(grid, (h / gh, w / gw), order=3, mode="nearest")[:h, :w]
    out = np.pad(out, ((0, h - out.shape[0]), (0, w - out.shape[1])), mode="edge")
    m = np.abs(out).max()
    return out / m if m > 0 else out


def normalize_disparity(disp: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Lotus's training target: disparity mapped between its 2 % and 98 % quantiles to [0, 1]."""
    lo, hi = np.quantile(disp[mask], [0.02, 0.98])
    return np.clip((disp - lo) / max(hi - lo, 1e-12), 0, 1)


def simulate_prediction(
    view: RenderedView,
    rng: np.random.Generator,
    warp: float = 0.04,
    noise: float = 0.005,
    normal_noise_deg: float = 3.0,
    kind: Literal["disparity", "depth"] = "disparity",
) -> Prediction:
    """What a monocular model predicts for ``view``: affine-invariant, warped, noisy.

    Like Lotus's training target, disparity 1/z (background, i.e. no surface, = 0) is normalised
    per image to [0, 1] by its 2-98 % quantiles over all pixels; then it is multiplied by a smooth
    low-frequency warp ``1 + warp * field`` and perturbed by Gaussian noise of std ``noise``.
    ``kind="depth"`` normalises depth instead (background at the far end). Normals get Gaussian
    angular noise of ``normal_noise_deg`` degrees. :mod:`lotus3d.simulate` adds the richer,
    calibrated error model.
    """
    mask = view.mask
    with np.errstate(divide="ignore"):
        disp = np.where(mask, 1.0 / view.depth, 0.0)
    if kind == "disparity":
        p = normalize_disparity(disp, np.ones_like(mask))
    else:
        far = np.nanmax(view.depth[mask]) * 1.5
        p = normalize_disparity(np.where(mask, view.depth, far), np.ones_like(mask))
    p = p * (1 + warp * smooth_field(p.shape, rng)) + rng.normal(0, noise, p.shape)
    n = noisy_normals(view.normal, rng, normal_noise_deg)
    return Prediction(depth=np.clip(p, 0, 1).astype(np.float32), kind=kind, normal=n)


def noisy_normals(normal: np.ndarray, rng: np.random.Generator, deg: float) -> np.ndarray:
    """Unit normals with independent Gaussian angular noise (NaN -> facing the camera)."""
    n = np.nan_to_num(normal, nan=0.0).copy()
    n[~np.isfinite(normal).all(-1)] = (0, 0, -1)
    n = n + rng.normal(0, np.radians(deg), n.shape)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return n.astype(np.float32)
