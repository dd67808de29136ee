"""Mesh clean-up and export: floaters removal, simplification, PLY / GLB / OBJ (trimesh)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import trimesh

from .io import atomic_write
from .types import Camera, pixel_rays


@dataclass
class Mesh:
    """vertices (V, 3) scene units; faces (F, 3) int; colors (V, 3) float in [0, 1] or None; a
    texture: ``uv`` (V, 2) (OpenGL: origin bottom-left, v up) and ``texture`` (H, W, 3) float in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None

    @property
    def textured(self) -> bool:
        return self.uv is not None and self.texture is not None

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3): the vertices' minimum and maximum corner."""
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

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


def weld(mesh: Mesh) -> Mesh:
    """The mesh with vertices at identical positions merged (Open3D's marching cubes repeats the
    vertices on its blocks' faces): faces that touch become neighbours. The first copy's colour is kept."""
    if len(mesh.vertices) == 0:
        return mesh
    _, first, inverse = np.unique(mesh.vertices, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # keep the vertices in their original order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    keep = first[order]
    faces = rank[inverse.reshape(-1)][mesh.faces]
    colors = None if mesh.colors is None else mesh.colors[keep]
    return Mesh(mesh.vertices[keep], faces, colors)


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


def raycasting_scene(mesh: Mesh) -> o3d.t.geometry.RaycastingScene:
    """An Open3D ray casting scene of the mesh's triangles (face ids are ``mesh.faces`` rows)."""
    scene = o3d.t.geometry.RaycastingScene()
    if len(mesh.faces):
        tm = o3d.t.geometry.TriangleMesh()
        tm.vertex.positions = o3d.core.Tensor(mesh.vertices.astype(np.float32))
        tm.triangle.indices = o3d.core.Tensor(mesh.faces.astype(np.int32))
        scene.add_triangles(tm)
    return scene


def cast_pixels(
    scene: o3d.t.geometry.RaycastingScene, cam: Camera, stride: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ray through every ``stride``-th pixel of ``cam`` (pixel (i, j) of the result is pixel
    (i s, j s) of the image): z depth (H', W') float32, NaN where no surface; face id (H', W') int64,
    -1 where none; barycentric coordinates (H', W', 2) of the hit (weights of the face's 2nd and
    3rd vertex). Rays have camera-frame z = 1, so the hit distance is the z depth."""
    # world directions whose camera-frame z is 1
    dirs = pixel_rays(cam.K, cam.width, cam.height, stride) @ cam.world_to_camera[:3, :3]
    rays = np.concatenate([np.broadcast_to(cam.center, dirs.shape), dirs], -1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy()
    ok = np.isfinite(t)
    face = np.where(ok, hit["primitive_ids"].numpy().astype(np.int64), -1)
    return np.where(ok, t, np.nan).astype(np.float32), face, hit["primitive_uvs"].numpy()


def render_depth(mesh: Mesh, cameras: dict[str, Camera], stride: int = 1) -> dict[str, np.ndarray]:
    """Ray cast ``mesh`` into each camera: depth along z per name, NaN where no surface, float32
    (H', W') at every ``stride``-th pixel (see :func:`cast_pixels`)."""
    scene = raycasting_scene(mesh)
    return {name: cast_pixels(scene, cam, stride)[0] for name, cam in cameras.items()}


def sample_bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear values (N, C) of an (H, W, C) image at pixel coordinates ``xy`` (N, 2) (x right, y down,
    pixel centres at integers), edges clamped."""
    n = len(xy)
    if n == 0:
        return np.zeros((0, image.shape[2]), np.float32)
    cols = 4096  # cv2.remap wants both map sides below 32767
    rows = -(-n // cols)
    m = np.zeros((rows * cols, 2), np.float32)
    m[:n] = xy
    m = m.reshape(rows, cols, 2)
    out = cv2.remap(
        np.ascontiguousarray(image, np.float32), m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return out.reshape(rows * cols, -1)[:n]


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear colours (N, 3) of an (H, W, 3) texture at UVs (N, 2) (OpenGL: origin bottom-left)."""
    h, w = texture.shape[:2]
    return sample_bilinear(texture, np.column_stack([uv[:, 0] * w - 0.5, (1 - uv[:, 1]) * h - 0.5]))


def render_colors(mesh: Mesh, cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """The mesh's colour seen by ``cam``: (H, W, 3) float32 (bilinear texture lookup when textured,
    else interpolated vertex colours; 0 where no surface) and the z depth (H, W), NaN where none."""
    depth, face, bary = cast_pixels(raycasting_scene(mesh), cam)
    image = np.zeros((cam.height, cam.width, 3), np.float32)
    hit = face >= 0
    f = mesh.faces[face[hit]]
    w = np.column_stack([1 - bary[hit].sum(1), bary[hit]])[..., None]  # (N, 3, 1)
    if mesh.textured:
        image[hit] = sample_texture(mesh.texture, (mesh.uv[f] * w).sum(1))
    elif mesh.colors is not None:
        image[hit] = (mesh.colors[f] * w).sum(1)
    return image, depth


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
    """A trimesh with the texture (when ``mesh.textured``) or the vertex colours."""
    if mesh.textured:
        from PIL import Image

        image = Image.fromarray((np.clip(mesh.texture, 0, 1) * 255 + 0.5).astype(np.uint8))
        material = trimesh.visual.material.PBRMaterial(
            name="texture",
            baseColorTexture=image,
            baseColorFactor=[255, 255, 255, 255],  # the texture as baked, not darkened
            metallicFactor=0.0,
            roughnessFactor=1.0,
            doubleSided=True,
        )
        visual = trimesh.visual.TextureVisuals(uv=mesh.uv, material=material)
        return trimesh.Trimesh(mesh.vertices, mesh.faces, visual=visual, process=False)
    colors = None
    if mesh.colors is not None:
        colors = np.concatenate([np.clip(mesh.colors, 0, 1) * 255, np.full((len(mesh.colors), 1), 255)], 1)
        colors = colors.astype(np.uint8)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colors, process=False)


def export_mesh(mesh: Mesh | trimesh.Trimesh, path: str | Path) -> Path:
    """Write PLY (binary), GLB or OBJ by suffix, atomically. A textured mesh's GLB embeds its texture;
    its OBJ comes with ``<stem>.mtl`` and the texture PNG beside it; PLY keeps vertex colours only."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("ply", "glb", "obj"):
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .ply, .glb or .obj")
    if isinstance(mesh, Mesh) and mesh.textured and fmt == "ply":
        mesh = Mesh(mesh.vertices, mesh.faces, mesh.colors)
    tm = mesh if isinstance(mesh, trimesh.Trimesh) else to_trimesh(mesh)
    if fmt == "obj" and isinstance(tm.visual, trimesh.visual.TextureVisuals):
        text, files = trimesh.exchange.obj.export_obj(
            tm, include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl"
        )
        mtl = f"{path.stem}.mtl"
        for name in [n for n in files if n.endswith(".png")]:  # the image named after the OBJ
            files[mtl] = files[mtl].replace(name.encode(), f"{path.stem}.png".encode())
        for name, blob in files.items():
            target = path.parent / (f"{path.stem}.png" if name.endswith(".png") else name)
            with atomic_write(target, "wb") as f:
                f.write(blob)
        data = text
    else:
        data = tm.export(file_type=fmt)
    with atomic_write(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def load_mesh(path: str | Path) -> Mesh:
    """A mesh file (PLY / OBJ / GLB; a multi-part scene is concatenated) with its colour source:
    ``uv`` + ``texture`` when it has a texture image, else ``colors`` when it has vertex or face
    colours of its own (None for trimesh's default grey)."""
    loaded = trimesh.load(str(path), process=False, force="mesh")
    out = Mesh(np.asarray(loaded.vertices, np.float64), np.asarray(loaded.faces, np.int64))
    visual = loaded.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if visual.uv is not None and image is not None:
            out.uv = np.asarray(visual.uv, np.float64)
            out.texture = np.asarray(image.convert("RGB"), np.float32) / 255.0
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind is not None:
        out.colors = np.asarray(visual.vertex_colors, np.float32)[:, :3] / 255.0
    return out
