"""Fuse aligned depth maps into a coloured TSDF (Open3D tensor ``VoxelBlockGrid``).

Before integration, :func:`filter_depth` drops pixels a TSDF should not see: depth
discontinuities (flying pixels at object edges), grazing angles (from the predicted normals) and
far background. Sizes are in scene units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d
import open3d.core as o3c
from scipy import ndimage

from .mesh import Mesh, weld
from .types import Camera, pixel_rays


@dataclass
class FilterOptions:
    edge_threshold: float = 0.04  # relative depth jump between neighbours that marks an edge
    edge_dilation: int = 1  # pixels removed on each side of an edge
    max_grazing_deg: float = 78.0  # drop pixels whose surface is seen more obliquely than this
    max_depth: float | None = None  # drop pixels beyond (scene units); None: keep all


def filter_depth(depth: np.ndarray, K: np.ndarray, normal: np.ndarray | None, opts: FilterOptions) -> np.ndarray:
    """(H, W) depth -> the same with unreliable pixels set to NaN.

    Args:
        normal: (H, W, 3) camera-frame normals facing the camera, or None to skip the angle test.
    """
    d = depth.astype(np.float32).copy()
    d[~(d > 0)] = np.nan
    if opts.max_depth is not None:
        d[d > opts.max_depth] = np.nan
    if opts.edge_threshold > 0:
        edge = depth_edges(d, opts.edge_threshold)
        if opts.edge_dilation > 0:
            edge = ndimage.binary_dilation(edge, iterations=opts.edge_dilation)
        d[edge] = np.nan
    if normal is not None and opts.max_grazing_deg < 90:
        h, w = d.shape
        rays = pixel_rays(K, w, h)
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        cos = -np.sum(rays * normal, -1)
        d[~(cos > np.cos(np.radians(opts.max_grazing_deg)))] = np.nan
    return d


def depth_edges(depth: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool: pixels whose depth differs from a 4-neighbour by more than ``threshold`` relative
    (or whose neighbour is invalid)."""
    d = depth
    edge = np.zeros(d.shape, bool)
    for axis in (0, 1):
        a = d.take(range(0, d.shape[axis] - 1), axis)
        b = d.take(range(1, d.shape[axis]), axis)
        with np.errstate(invalid="ignore"):
            jump = np.abs(a - b) / np.minimum(a, b) > threshold
        jump |= np.isfinite(a) != np.isfinite(b)
        sl_a = [slice(None)] * 2
        sl_b = [slice(None)] * 2
        sl_a[axis] = slice(0, d.shape[axis] - 1)
        sl_b[axis] = slice(1, d.shape[axis])
        edge[tuple(sl_a)] |= jump
        edge[tuple(sl_b)] |= jump
    return edge & np.isfinite(d)


@dataclass
class TSDFOptions:
    voxel_size: float
    trunc_voxels: float  # truncation distance in voxels (default: ReconstructConfig.trunc_voxels)
    block_resolution: int = 8
    device: str = "CPU:0"


class TSDFVolume:
    """A coloured TSDF. ``integrate`` one view at a time, then ``extract_mesh``."""

    def __init__(self, opts: TSDFOptions, expected_blocks: int = 20000):
        self.opts = opts
        self.device = o3c.Device(opts.device)
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"),
            attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
            attr_channels=((1), (1), (3)),
            voxel_size=opts.voxel_size,
            block_resolution=opts.block_resolution,
            block_count=int(max(expected_blocks, 1000)),
            device=self.device,
        )

    def integrate(self, depth: np.ndarray, color: np.ndarray, camera: Camera, depth_max: float) -> None:
        """Add one view. depth (H, W) scene units, NaN = skip; color (H, W, 3) float in [0, 1]."""
        d = np.nan_to_num(depth, nan=0.0).astype(np.float32)
        if not (d > 0).any():
            return
        dimg = o3d.t.geometry.Image(o3c.Tensor(d, device=self.device))
        cimg = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(color, np.float32), device=self.device))
        K = o3c.Tensor(camera.K.astype(np.float64))
        T = o3c.Tensor(camera.world_to_camera.astype(np.float64))
        trunc = float(self.opts.trunc_voxels)
        blocks = self.grid.compute_unique_block_coordinates(dimg, K, T, 1.0, float(depth_max), trunc)
        self.grid.integrate(blocks, dimg, cimg, K, K, T, 1.0, float(depth_max), trunc)

    def extract_mesh(self, weight_threshold: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Marching cubes -> (vertices (V, 3), faces (F, 3), colors (V, 3) in [0, 1]), vertices welded
        across the blocks (:func:`lotus3d.mesh.weld`)."""
        if self.num_blocks == 0:
            return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3))
        mesh = self.grid.extract_triangle_mesh(weight_threshold=float(weight_threshold))
        if mesh.vertex.positions.shape[0] == 0:
            return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3))
        v = mesh.vertex.positions.cpu().numpy().astype(np.float64)
        f = mesh.triangle.indices.cpu().numpy().astype(np.int64)
        c = mesh.vertex.colors.cpu().numpy().astype(np.float64) if "colors" in mesh.vertex else np.zeros_like(v)
        welded = weld(Mesh(v, f, np.clip(c, 0, 1)))
        return welded.vertices, welded.faces, welded.colors

    @property
    def num_blocks(self) -> int:
        return int(self.grid.hashmap().size())
