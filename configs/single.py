"""Settings of single-view reconstruction (``lotus3d single``)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import setting


@dataclass
class SingleConfig:
    fov: float | None = setting(
        None, "horizontal field of view in degrees (default: EXIF focal length, else estimated from the normals)"
    )
    intrinsics: str | None = setting(None, "3x3 intrinsics in pixels, a text file (instead of --fov)", flag="--K")
    scale: float = setting(1.0, "median depth of the result, e.g. in metres if known (1: relative units)")
    auto_convention: bool = setting(
        False, "apply the normal sign convention that agrees with the depth prior, if not the expected one"
    )
    prior_weight: float = setting(
        1e-3,
        "weight of the depth prior against the normals, adapted per region to how well they agree "
        "(smaller trusts the normals further)",
    )
    sky_threshold: float = setting(0.01, "disparity below this (0..1) is sky / background and not meshed")
    far_factor: float = setting(8.0, "pixels deeper than this times the median depth are background, not meshed")
    simplify: int = setting(
        0, "decimate the mesh to at most this many triangles (quadric; texture kept; 0: two per pixel square)"
    )
