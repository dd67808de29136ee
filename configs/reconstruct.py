"""Settings of scene reconstruction (``lotus3d reconstruct``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import setting


@dataclass
class ReconstructConfig:
    # poses
    colmap: str | None = setting(
        None, "existing COLMAP model folder (text or binary); default SCENE/sparse/0 if present, else run SfM"
    )
    matcher: Literal["auto", "exhaustive", "sequential"] = setting(
        "auto",
        "SfM matching: exhaustive for up to 60 images, sequential (ordered frames, with loop closure) beyond "
        "and for video frames",
    )
    camera_mode: Literal["auto", "single", "per_image"] = setting(
        "auto",
        "SfM cameras: auto shares one per image size and EXIF focal (one for all frames of a video); "
        "per_image for mixed cameras",
    )
    sfm_max_image_size: int = setting(1600, "longest edge SIFT sees, in pixels")
    mapper: Literal["incremental", "global"] = setting(
        "incremental", "SfM mapper: incremental (COLMAP) or global (GLOMAP, faster for thousands of images)"
    )
    # alignment
    alignment: Literal["robust", "lstsq", "none"] = setting(
        "robust",
        "per-view scale/shift: robust (LMedS + Cauchy IRLS), plain least squares (baseline), or none "
        "(the cache already holds depth in scene units)",
    )
    min_points: int = setting(8, "a view needs this many sparse points to be aligned")
    local_alignment: bool = setting(
        True, "after the scale/shift, fit a smooth edge-aware depth correction per view to its points"
    )
    local_method: Literal["grid", "dense"] = setting(
        "grid",
        "local correction on a bilateral grid (cost linear in points and pixels), or the earlier dense "
        "point-by-point kernels (quadratic; for comparison)",
    )
    holdout_every: int = setting(
        10, "hold every N-th sparse point out of all fits, to measure each stage on unseen points (0: none)"
    )
    refine_rounds: int = setting(
        1,
        "dense multi-view refinement: refit each view to the fused surface and fuse again, at most this many "
        "rounds, each kept only if the held-out points improve (0: off; needs holdout_every > 0)",
    )
    refine_stride: int = setting(8, "refinement targets: every N-th pixel of the fused surface in each view")
    # multi-view consistency
    consistency: bool = setting(
        True, "keep a pixel only where its depth agrees with a neighbouring view (or none can check it)"
    )
    consistency_views: int = setting(6, "neighbouring views each view is checked against")
    consistency_min_agree: int = setting(1, "neighbours that must agree for a pixel to stay")
    # fusion
    voxel_size: float | None = setting(None, "TSDF voxel size in scene units (default: scene extent / resolution)")
    resolution: int = setting(320, "voxels across the scene's extent when voxel_size is not given")
    trunc_voxels: float = setting(5.0, "TSDF truncation distance, in voxels")
    weight_threshold: float = setting(1.0, "marching cubes keeps voxels integrated at least this many times")
    edge_threshold: float = setting(0.04, "relative depth jump between neighbour pixels that marks an edge")
    max_grazing_deg: float = setting(78.0, "drop pixels seen more obliquely than this (from predicted normals)")
    far_factor: float = setting(1.5, "drop pixels deeper than this times the view's 98th-percentile point depth")
    fusion_chunks: int = setting(
        1,
        "fuse this many spatial slabs one after another and merge their meshes "
        "(bounds the TSDF's memory for large scenes)",
    )
    # mesh
    min_component_fraction: float = setting(0.02, "drop mesh pieces smaller than this fraction of the largest")
    simplify: int = setting(0, "decimate the mesh to this many triangles (0: keep all)")
    formats: str = setting("ply,glb", "mesh formats to write, comma-separated (ply, glb, obj)")
    photometric: bool = setting(
        True,
        "move the mesh's vertices along their normals to where the photos' colours agree (textured surfaces; "
        "each pass kept only if the colours agree better); sharpens the texture",
    )
    # texture
    texture: bool = setting(
        True,
        "bake a UV texture from the photos into the GLB / OBJ (per face the best view, seams levelled); "
        "the PLY keeps vertex colours",
    )
    texture_size: int = setting(
        4096, "largest texture side in texels: the atlas is as large as the photos' resolution needs, up to this"
    )
    texture_detail: int = setting(
        2,
        "texels per photo pixel along each side; above 1 every view that sees a face well adds its pixels, "
        "recovering detail finer than one photo's pixels (1: each patch from its own view's pixels only)",
    )
