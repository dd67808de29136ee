"""Settings of keyframe selection from a video (``lotus3d frames``, ``lotus3d reconstruct VIDEO``)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import setting


@dataclass
class FramesConfig:
    max_frames: int = setting(80, "pick at most this many keyframes")
    min_frames: int = setting(20, "pick at least this many keyframes (the video must have that many sharp frames)")
    step: float = setting(
        0.03,
        "camera motion between keyframes, as the median tracked feature displacement in units of the frame "
        "diagonal: smaller keeps more overlap, larger more parallax (then clamped to min/max frames)",
    )
    blur_ratio: float = setting(
        0.65, "a frame is blurred when its sharpness is below this fraction of its neighbours' median"
    )
    blur_window: int = setting(15, "neighbours on each side that a frame's sharpness is compared with")
    min_sharpness: float = setting(
        4.0, "frames below this absolute sharpness (variance of the Laplacian, 8-bit grey) are unusable"
    )
    analysis_size: int = setting(480, "longest side, in pixels, at which sharpness and motion are measured")
    max_side: int = setting(0, "downscale written keyframes to this longest side (0: the video's resolution)")
    quality: int = setting(95, "JPEG quality of the written keyframes")
