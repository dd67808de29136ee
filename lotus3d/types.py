"""Small shared types that cross stage boundaries.

Conventions (README, "Conventions"): camera frame OpenCV (x right, y down, z forward); poses are
world-to-camera; depth is in scene units along +z; disparity = 1 / depth; normals are unit length,
in the camera frame, facing the camera (n · p <= 0 for a camera-space point p on the surface).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

DepthKind = Literal["disparity", "depth"]
NORMAL_FRAME = "opencv_camera_facing"


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) K in pixels for a horizontal field of view in degrees, principal point at the image centre."""
    if not 1.0 < fov_deg < 179.0:
        raise ValueError(f"field of view must be between 1 and 179 degrees, got {fov_deg}")
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


def pixel_rays(K: np.ndarray, width: int, height: int, stride: int = 1) -> np.ndarray:
    """(H', W', 3) float64 camera-frame directions through every ``stride``-th pixel, scaled to z = 1
    (entry (i, j) is pixel (i stride, j stride)); H' = ceil(height / stride), W' likewise."""
    u = (np.arange(0, width, stride, dtype=np.float64) - K[0, 2]) / K[0, 0]
    v = (np.arange(0, height, stride, dtype=np.float64) - K[1, 2]) / K[1, 1]
    rays = np.ones((len(v), len(u), 3))
    rays[..., 0] = u[None, :]
    rays[..., 1] = v[:, None]
    return rays


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 camera-frame points of an (H, W) z-depth map (NaN where the depth is NaN)."""
    h, w = depth.shape
    return pixel_rays(K, w, h) * np.asarray(depth, np.float64)[..., None]


@dataclass
class Camera:
    """A pinhole camera.

    Attributes:
        K: (3, 3) intrinsics in pixels (OpenCV; pixel centres at integer coordinates).
        world_to_camera: (4, 4) rigid transform, x_cam = R @ x_world + t.
        width, height: image size in pixels.
    """

    K: np.ndarray
    world_to_camera: np.ndarray
    width: int
    height: int

    @property
    def camera_to_world(self) -> np.ndarray:
        """(4, 4) inverse of ``world_to_camera``."""
        R, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        out = np.eye(4)
        out[:3, :3] = R.T
        out[:3, 3] = -R.T @ t
        return out

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates."""
        return self.camera_to_world[:3, 3]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel coordinates (..., 2) and camera z (...)."""
        pc = points @ self.world_to_camera[:3, :3].T + self.world_to_camera[:3, 3]
        z = pc[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (pc[..., :2] / z[..., None]) * np.diag(self.K)[:2] + self.K[:2, 2]
        return uv, z

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera for an image resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        K = self.K.astype(np.float64).copy()
        K[0, :] *= sx
        K[1, :] *= sy
        # keep the pixel-centre convention: (c + 0.5) * s - 0.5
        K[0, 2] = (self.K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (self.K[1, 2] + 0.5) * sy - 0.5
        return Camera(K=K, world_to_camera=self.world_to_camera.copy(), width=width, height=height)


@dataclass
class Prediction:
    """One view's dense prediction, at the image's resolution.

    Attributes:
        depth: (H, W) float32 affine-invariant depth or disparity (see ``kind``), NaN where invalid.
        kind: "disparity" (near = large) or "depth" (near = small).
        normal: (H, W, 3) float32 unit normals, OpenCV camera frame, facing the camera; or None.
    """

    depth: np.ndarray
    kind: DepthKind
    normal: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.depth.shape[:2]


@dataclass
class Alignment:
    """How one view's prediction was brought to the scene's scale.

    ``scale`` and ``shift`` act in the prediction's own space: s * p + t approximates 1/z for
    disparity, z for depth. ``ok`` is False for a view that was excluded.
    """

    scale: float
    shift: float
    kind: DepthKind
    num_points: int = 0
    num_inliers: int = 0
    residual_percentiles: dict[str, float] = field(default_factory=dict)
    ok: bool = True
    reason: str = ""
    method: str = ""
    support: tuple[float, float] | None = None  # prediction range spanned by the view's points (2-98 %)
    local: dict | None = None  # the local correction's kernel widths and held-out errors, if applied
    heldout: dict | None = None  # held-out points' error (align.heldout_loss) after each stage, and their count
