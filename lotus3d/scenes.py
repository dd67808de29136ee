"""Preset synthetic scenes and the scene folders the tests, benchmarks and demo reconstruct.

The bundled Spot cow (alone, or with other objects) on a textured floor, cameras orbiting it, a
light fixed in the world or to the cameras; :func:`write_scene` renders one into a folder that
``lotus3d reconstruct`` reads, with exact ground truth and simulated predictions. Builds on
:mod:`lotus3d.synthetic` (rendering, sparse points) and :mod:`lotus3d.simulate` (predictions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from .mesh import Mesh, export_mesh, load_mesh
from .simulate import ERROR_MODES, draw_error_model, simulate_mode, simulate_realistic
from .synthetic import (
    Renderer,
    merge_meshes,
    orbit_cameras,
    sample_sparse_points,
    simulate_prediction,
    textured_floor,
    transformed,
)
from .types import Camera

PRESETS = ("orbit", "objects")


def bundled_cow() -> Path:
    """The public-domain Spot cow shipped in the package (see lotus3d/data/spot_cow/SOURCE.txt)."""
    return Path(__file__).resolve().parent / "data" / "spot_cow" / "cow.obj"


def preset_meshes(
    preset: str, seed: int = 0, extra_mesh: str | Path | None = None, fine_texture: bool = False
) -> list[Mesh]:
    """Meshes of a preset scene, y up, in metres-like units.

    - "orbit": the Spot cow (about 1.7 long) on a textured floor.
    - "objects": two cows and a bottle (``extra_mesh``, default the cow again, scaled) on a floor.

    ``fine_texture``: texel-scale detail on every textured surface (the floor at 2048², about 1.6 mm a
    texel; grain on the cow's texture), finer than a 640 × 480 photo's pixel at the orbit's distance.
    """
    rng = np.random.default_rng(seed)
    cow = load_mesh(bundled_cow())
    if fine_texture and cow.texture is not None:
        grain = np.random.default_rng(seed + 1).uniform(-1, 1, cow.texture.shape[:2] + (1,))
        cow.texture = np.clip(cow.texture + 0.18 * grain, 0, 1).astype(np.float32)
    floor_y = cow.vertices[:, 1].min()
    floor = {"resolution": 2048, "grain": 0.22} if fine_texture else {}
    if preset == "orbit":
        return [cow, textured_floor(np.zeros(3), 3.2, floor_y, rng, **floor)]
    if preset == "objects":

        def rot_y(deg: float) -> np.ndarray:
            c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
            return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

        small = transformed(cow, 0.6, rot_y(70), np.array([1.2, floor_y - 0.6 * cow.vertices[:, 1].min(), 0.9]))
        objs = [cow, small]
        if extra_mesh is not None:
            other = load_mesh(extra_mesh)
            z_up_to_y_up = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)
            ext = float(np.ptp(other.vertices, 0).max())
            o = transformed(other, 0.9 / ext, z_up_to_y_up)
            o = transformed(o, 1.0, None, np.array([-1.1, floor_y - o.vertices[:, 1].min(), -0.8]))
            objs.append(o)
        return objs + [textured_floor(np.zeros(3), 5.0, floor_y, rng, **floor)]
    raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")


WORLD_LIGHT = np.array([0.35, 1.0, 0.25]) / np.linalg.norm([0.35, 1.0, 0.25])  # towards the light, y up


def world_light(cam: Camera) -> np.ndarray:
    """:data:`WORLD_LIGHT` in ``cam``'s frame (the ``light_dir`` of :meth:`Renderer.render`)."""
    return cam.world_to_camera[:3, :3] @ WORLD_LIGHT


def preset_cameras(
    preset: str, meshes: list[Mesh], n: int, width: int, height: int, seed: int = 0, fov_deg: float = 55.0
) -> list[Camera]:
    """Cameras orbiting the objects (not the floor) of a preset, ``fov_deg`` horizontal; at another field
    of view than 55 degrees they stand nearer or farther so that the objects fill as much of the image."""
    objects = merge_meshes(meshes[:-1])
    dist = (2.3 if preset == "orbit" else 2.0) * np.tan(np.radians(27.5)) / np.tan(np.radians(fov_deg / 2))
    return orbit_cameras(objects, n, width, height, fov_deg=fov_deg, distance=dist, elevations=(12.0, 38.0), seed=seed)


def write_scene(
    out: str | Path,
    preset: str = "orbit",
    n_views: int = 24,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    sparse_points: int = 3000,
    sparse_noise: float = 0.0005,
    outlier_fraction: float = 0.05,
    prediction: str = "realistic",
    extra_mesh: str | Path | None = None,
    light: Literal["camera", "world"] = "camera",
    fine_texture: bool = False,
) -> dict:
    """Render a preset scene into a folder that ``lotus3d reconstruct`` reads.

    Writes ``images/``, ``sparse/0/`` (COLMAP text model with the exact poses and SfM-like points),
    ``predictions/`` (simulated: ``prediction`` is "realistic", "simple" (:func:`simulate_prediction`)
    or one of :data:`lotus3d.simulate.ERROR_MODES`, its parameters drawn from ``seed``),
    ``gt/mesh.ply``, ``gt/depth/<stem>.npy`` and ``scene.json``. Returns the scene description.
    ``light``: "camera" shades with a light fixed to each camera (appearance changes from view to
    view), "world" with one light fixed in the scene (:data:`WORLD_LIGHT`, as in real photos).
    ``fine_texture``: see :func:`preset_meshes`.
    """
    from .cache import CacheMeta, PredictionCache
    from .io import save_image, save_json, save_npy
    from .sfm import SfMModel, ViewObservations, write_model_text

    out = Path(out)
    rng = np.random.default_rng(seed)
    meshes = preset_meshes(preset, seed, extra_mesh, fine_texture)
    renderer = Renderer(meshes)
    cams = preset_cameras(preset, meshes, n_views, width, height, seed)
    views = [renderer.render(c, world_light(c) if light == "world" else None) for c in cams]
    names = [f"view_{i:03d}.png" for i in range(n_views)]
    for name, v in zip(names, views, strict=True):
        save_image(out / "images" / name, v.image)
        save_npy(out / "gt" / "depth" / f"{Path(name).stem}.npy", v.depth)
    sp = sample_sparse_points(
        renderer, views, sparse_points, noise=sparse_noise, outlier_fraction=outlier_fraction, seed=seed
    )
    obs = {n: ([], []) for n in names}
    for pid, track in enumerate(sp.tracks):
        for vi, u, v in track:
            obs[names[vi]][0].append((u, v))
            obs[names[vi]][1].append(pid)
    model = SfMModel(
        cameras=dict(zip(names, cams, strict=True)),
        points=sp.xyz,
        colors=sp.rgb,
        observations={
            n: ViewObservations(np.array(uv, float).reshape(-1, 2), np.array(p, np.int64)) for n, (uv, p) in obs.items()
        },
    )
    write_model_text(model, out / "sparse" / "0")
    cache = PredictionCache(out / "predictions")
    cache.write_meta(CacheMeta("disparity", f"simulated-{prediction}", f"simulated-{prediction}"))

    if prediction not in ("realistic", "simple", *ERROR_MODES):
        raise ValueError(f"unknown prediction simulation {prediction!r}: realistic, simple or one of {ERROR_MODES}")
    error_model = draw_error_model(prediction, rng) if prediction in ERROR_MODES else None
    for name, v in zip(names, views, strict=True):
        if error_model is not None:
            pred = simulate_mode(v, error_model, rng)
        elif prediction == "realistic":
            pred = simulate_realistic(v, rng)
        else:
            pred = simulate_prediction(v, rng)
        cache.write(Path(name).stem, pred)
    gt = merge_meshes(meshes)
    export_mesh(Mesh(gt.vertices, gt.faces), out / "gt" / "mesh.ply")
    info = {
        "synthetic": True,
        "preset": preset,
        "views": n_views,
        "size": [width, height],
        "seed": seed,
        "predictions": f"simulated ({prediction}): not Lotus output",
        "sparse_points": len(sp.xyz),
        "sparse_noise": sparse_noise,
        "outlier_fraction": outlier_fraction,
        "error_model": error_model,
        "light": light,
        "source_meshes": ["lotus3d/data/spot_cow/cow.obj"] + ([str(extra_mesh)] if extra_mesh else []),
    }
    save_json(out / "scene.json", info)
    return info
