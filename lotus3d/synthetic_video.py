"""Rendered walk-around videos with exact ground truth, for the video tests and benchmark.

A camera circles a preset scene (:func:`lotus3d.scenes.preset_meshes`) once, its height and
distance varying smoothly and with a little hand shake, so the last frames see what the first
did (a loop to close). Chosen frames are motion-blurred the way a camera blurs them: the average
of renders along the path during a longer exposure. Frames are encoded with H.264 (PyAV).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .mesh import Mesh
from .scenes import preset_meshes, world_light
from .synthetic import Renderer, look_at, merge_meshes
from .types import Camera, intrinsics_from_fov


def walkaround_camera(
    objects: Mesh, s: float, n: int, width: int, height: int, seed: int = 0, fov_deg: float = 55.0
) -> Camera:
    """The camera at path position ``s`` in [0, n) (frame units) of an ``n``-frame loop around ``objects``."""
    lo, hi = objects.bounds
    c, r = (lo + hi) / 2, np.linalg.norm(hi - lo) / 2
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, 6)
    u = s / n
    shake = 0.01 * r * np.array([np.sin(2 * np.pi * 7 * u + phases[k]) for k in range(3)])
    az = 2 * np.pi * u + 0.02 * np.sin(2 * np.pi * 5 * u + phases[3])
    el = np.radians(25.0 + 12.0 * np.sin(2 * np.pi * 2 * u + phases[4]))
    dist = r * (2.2 + 0.2 * np.sin(2 * np.pi * 3 * u + phases[5]))
    center = c + dist * np.array([np.cos(az) * np.cos(el), np.sin(el), np.sin(az) * np.cos(el)]) + shake
    return Camera(
        K=intrinsics_from_fov(width, height, fov_deg),
        world_to_camera=look_at(center, c, np.array([0.0, 1.0, 0.0])),
        width=width,
        height=height,
    )


@dataclass
class WalkaroundVideo:
    """A rendered clip: its file, one camera per frame, the frames blurred on purpose, the renderer."""

    path: Path
    cameras: list[Camera]
    blurred: list[int]
    renderer: Renderer
    objects: Mesh


def write_walkaround(
    path: str | Path,
    preset: str = "orbit",
    n_frames: int = 200,
    width: int = 640,
    height: int = 480,
    blurred: list[int] | None = None,
    exposure_frames: float = 4.0,
    fps: int = 30,
    crf: int = 18,
    rotation: int = 0,
    seed: int = 0,
    light: Literal["camera", "world"] = "world",
) -> WalkaroundVideo:
    """Render ``n_frames`` along one loop and encode them (H.264, yuv420p) to ``path``.

    ``blurred`` frames average 9 renders spread over ``exposure_frames`` of motion. ``rotation``
    (degrees counter-clockwise, a multiple of 90) is stored as display-matrix metadata, the frames
    themselves being rotated the opposite way, so a reader that applies it sees them upright.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meshes = preset_meshes(preset, seed)
    objects = merge_meshes(meshes[:-1])
    renderer = Renderer(meshes)
    blurred = sorted(set(blurred or []))
    cams = [walkaround_camera(objects, i, n_frames, width, height, seed) for i in range(n_frames)]

    def shade(cam: Camera) -> np.ndarray:
        return renderer.render(cam, world_light(cam) if light == "world" else None).image

    container = av.open(str(path), "w")
    try:
        k = rotation // 90 % 4
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "fast"})
        stream.width, stream.height = (height, width) if k % 2 else (width, height)
        stream.pix_fmt = "yuv420p"
        if k:
            stream.set_display_rotation(rotation)
        for i, cam in enumerate(cams):
            if i in blurred:
                offsets = np.linspace(-exposure_frames / 2, exposure_frames / 2, 9)
                path_cams = [walkaround_camera(objects, i + o, n_frames, width, height, seed) for o in offsets]
                img = np.mean([shade(c) for c in path_cams], 0)
            else:
                img = shade(cam)
            rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
            if k:
                rgb = np.ascontiguousarray(np.rot90(rgb, -k))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return WalkaroundVideo(path, cams, blurred, renderer, objects)


def write_simulated_predictions(
    renderer: Renderer,
    scene: str | Path,
    cameras: dict[str, Camera],
    seed: int = 0,
    light: str = "world",
    photos: bool = False,
) -> None:
    """Simulated Lotus-like predictions (:func:`lotus3d.simulate.simulate_realistic`, not Lotus
    output) of ``renderer``'s scene for the views ``{image name: camera}`` into ``scene``/predictions;
    with ``photos`` the renders themselves too, as ``scene``/images/<name> (one render per view)."""
    from .cache import CacheMeta, PredictionCache
    from .io import save_image
    from .simulate import simulate_realistic

    rng = np.random.default_rng(seed)
    cache = PredictionCache(Path(scene) / "predictions")
    cache.write_meta(CacheMeta("disparity", "simulated-realistic", "simulated-realistic"))
    for name, cam in cameras.items():
        view = renderer.render(cam, world_light(cam) if light == "world" else None)
        if photos:
            save_image(Path(scene) / "images" / name, view.image)
        cache.write(Path(name).stem, simulate_realistic(view, rng))
