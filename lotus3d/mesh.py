"""Mesh clean-up and export: floaters removal, simplification, PLY / GLB / OBJ (trimesh)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
import trimesh

from .io import atomic_write
from .types import Camera


@dataclass
class Mesh:
    """vertices (V, 3) scene units; faces (F, 3) int; colors (V, 3) float in [0, 1] or None."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None

    @property
    def num_triangles(self) -> int:
        return len(self.faces)

    def to_legacy(self) -> o3d.geometry.TriangleMesh:
        m = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(self.vertices.astype(np.float64)),
            o3d.utility.Vector3iVector(self.faces.astype(np.int32)),
        )
        if self.colors is not None:
            m.vertex_colors = o3d.utility.Vector3dVector(self.colors.astype(np.float64))
        return m

    @classmethod
    def from_legacy(cls, m: o3d.geometry.TriangleMesh) -> Mesh:
        colors = np.asarray(m.vertex_colors) if m.has_vertex_colors() else None
        return cls(np.asarray(m.vertices).copy(), np.asarray(m.triangles).astype(np.int64), colors)


def merge(parts: list[Mesh]) -> Mesh:
    """Concatenate meshes (vertices, faces, colours); unused vertices are kept."""
    parts = [p for p in parts if len(p.vertices)]
    if not parts:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3)))
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    colors = None
    if all(p.colors is not None for p in parts):
        colors = np.concatenate([p.colors for p in parts])
    return Mesh(
        np.concatenate([p.vertices for p in parts]),
        np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)]),
        colors,
    )


def render_depth(mesh: Mesh, cameras: dict[str, Camera], stride: int = 1) -> dict[str, np.ndarray]:
    """Ray cast ``mesh`` into each camera: depth along z per name, NaN where no surface, float32
    (H', W') at every ``stride``-th pixel (pixel (i, j) of the result is pixel (i s, j s) of the image).

    Open3D's ``RaycastingScene``; rays have camera-frame z = 1, so the hit distance is the z depth.
    """
    scene = o3d.t.geometry.RaycastingScene()
    if len(mesh.faces):
        tm = o3d.t.geometry.TriangleMesh()
        tm.vertex.positions = o3d.core.Tensor(mesh.vertices.astype(np.float32))
        tm.triangle.indices = o3d.core.Tensor(mesh.faces.astype(np.int32))
        scene.add_triangles(tm)
    out = {}
    for name, cam in cameras.items():
        u, v = np.meshgrid(
            np.arange(0, cam.width, stride, dtype=np.float64), np.arange(0, cam.height, stride, dtype=np.float64)
        )
        d_cam = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(cam.K).T
        dirs = d_cam @ cam.world_to_camera[:3, :3]  # world directions with camera z = 1
        rays = np.concatenate([np.broadcast_to(cam.center, dirs.shape), dirs], -1).astype(np.float32)
        t = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        out[name] = np.where(np.isfinite(t), t, np.nan).astype(np.float32)
    return out


def remove_small_components(mesh: Mesh, min_fraction: float = 0.02, min_triangles: int = 50) -> Mesh:
    """Drop connected components whose area is below ``min_fraction`` of the largest one's, or that
    have fewer than ``min_triangles`` triangles (floaters)."""
    if mesh.num_triangles == 0:
        return mesh
    m = mesh.to_legacy()
    labels, counts, areas = m.cluster_connected_triangles()
    labels, counts, areas = np.asarray(labels), np.asarray(counts), np.asarray(areas)
    keep_cluster = (areas >= min_fraction * areas.max()) & (counts >= min_triangles)
    if keep_cluster.all():
        return mesh
    m.remove_triangles_by_mask(~keep_cluster[labels])
    m.remove_unreferenced_vertices()
    return Mesh.from_legacy(m)


def simplify(mesh: Mesh, target_triangles: int) -> Mesh:
    """Quadric decimation to at most ``target_triangles`` (no-op when already smaller)."""
    if target_triangles <= 0 or mesh.num_triangles <= target_triangles:
        return mesh
    return Mesh.from_legacy(mesh.to_legacy().simplify_quadric_decimation(int(target_triangles)))


def to_trimesh(mesh: Mesh) -> trimesh.Trimesh:
    colors = None
    if mesh.colors is not None:
        colors = np.concatenate([np.clip(mesh.colors, 0, 1) * 255, np.full((len(mesh.colors), 1), 255)], 1)
        colors = colors.astype(np.uint8)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colors, process=False)


def export_mesh(mesh: Mesh | trimesh.Trimesh, path: str | Path) -> Path:
    """Write PLY (binary), GLB or OBJ by suffix, atomically."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("ply", "glb", "obj"):
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .ply, .glb or .obj")
    tm = mesh if isinstance(mesh, trimesh.Trimesh) else to_trimesh(mesh)
    data = tm.export(file_type=fmt)
    with atomic_write(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def load_mesh_geometry(path: str | Path) -> Mesh:
    """Vertices, faces (and vertex colours if any) of a mesh file."""
    loaded = trimesh.load(str(path), process=False, force="mesh")
    colors = None
    try:
        vc = np.asarray(loaded.visual.vertex_colors)
        if vc.ndim == 2 and len(vc) == len(loaded.vertices):
            colors = vc[:, :3] / 255.0
    except Exception:
        pass
    return Mesh(np.asarray(loaded.vertices, np.float64), np.asarray(loaded.faces, np.int64), colors)
