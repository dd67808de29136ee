"""Regenerate docs/images/single_view.jpg: photo, predicted depth and normals, the mesh from another angle.

The photo is a rendered view of the bundled demo scene and the prediction is SIMULATED the way Lotus
errs (no weights here); the rest is `lotus3d single` as shipped. Run: python docs/images/make_single_view_figure.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from lotus3d.cache import CacheMeta, PredictionCache
from lotus3d.configs import SingleConfig
from lotus3d.io import load_image, save_image
from lotus3d.mesh import load_mesh, render_colors
from lotus3d.pipelines.single import run_single
from lotus3d.scenes import preset_cameras, preset_meshes, world_light
from lotus3d.simulate import simulate_realistic
from lotus3d.synthetic import Renderer, look_at
from lotus3d.types import Camera

OUT = Path(__file__).resolve().parent / "single_view.jpg"


def main(out: Path = OUT) -> None:
    meshes = preset_meshes("orbit")
    cam = preset_cameras("orbit", meshes, 8, 640, 480)[1]
    view = Renderer(meshes, background=(0.8, 0.82, 0.86)).render(cam, world_light(cam))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_image(tmp / "photo.png", view.image)
        cache = PredictionCache(tmp / "pred")
        cache.write_meta(CacheMeta("disparity", "simulated", "simulated"))
        cache.write("photo", simulate_realistic(view, np.random.default_rng(0)))
        result = run_single(tmp / "photo.png", tmp / "photo.glb", SingleConfig(fov=55.0), predictions=tmp / "pred")
        preview = load_image(result.preview)
        mesh = load_mesh(result.mesh)
    # the mesh (in the photo's camera frame) seen from 35 degrees to the side, around its median depth
    target = np.array([0.0, 0.0, float(np.median(mesh.vertices[:, 2]))])
    a = np.radians(35.0)
    center = target + target[2] * np.array([-np.sin(a), -0.25, -np.cos(a)])
    side = Camera(cam.K, look_at(center, target, np.array([0.0, -1.0, 0.0])), 640, 480)
    image, _ = render_colors(mesh, side)
    w = preview.shape[1] // 2
    panels = [view.image, preview[:, :w], preview[:, w:], image]
    top = np.concatenate(panels[:2], 1)
    bottom = np.concatenate(panels[2:], 1)
    save_image(out, np.concatenate([top, bottom], 0)[::2, ::2])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
