"""Benchmark of the texture atlas: the baked texture vs vertex colours on the same geometry.

``lotus3d bench texture`` renders each scene (32 views at 640 x 480, predictions simulated, exact
poses and SfM-like points), reconstructs it with the default pipeline, and re-renders the mesh
into the training cameras and into held-out cameras of the same orbit that the reconstruction
never saw, comparing with the photos (PSNR over the pixels where the mesh's depth is within 2 % of
the true depth, so that geometry errors do not count). Side by side on the same geometry: the
vertex colours of ``mesh.ply``, and textures baked from it (the default; without seam levelling;
without the local part of the levelling; each patch from its own view's pixels only,
``detail=1``). Scenes are lit by a light fixed in the world (as photos are) and, for the orbit,
also by a light fixed to each camera (appearance changing from view to view: what levelling has to
absorb), and once more for the orbit with texel-scale detail on every surface (``fine_texture``:
what vertex colours lose most, misregistration too). Writes a close-up of textured vs vertex
colours to ``OUT/closeup_<scene>.png`` and the rows to ``OUT/summary.json``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from .. import scenes, synthetic, texture
from ..io import load_image, save_image
from ..mesh import Mesh, load_mesh, render_colors
from ..pipelines.reconstruct import reconstruct
from ..scenes import world_light
from ..sfm import read_model
from ..synthetic import look_at
from ..types import Camera
from . import shared_data, write_summary

SCENES = {
    # name: (preset, light, extra mesh under shared/data, texel-scale detail)
    "orbit (world light)": ("orbit", "world", None, False),
    "objects (world light)": ("objects", "world", "mesh_fuze_bottle/fuze.obj", False),
    "orbit (camera light)": ("orbit", "camera", None, False),
    "orbit, fine texture (world light)": ("orbit", "world", None, True),
}
VARIANTS = {
    "texture": texture.TextureOptions(),
    "no levelling": texture.TextureOptions(level=False),
    "gains only": texture.TextureOptions(local=False),
    "one view": texture.TextureOptions(detail=1),
}


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB of ``image`` against ``reference`` (both (H, W, 3) in [0, 1]) over ``mask``."""
    mse = float(np.mean((image[mask] - reference[mask]) ** 2))
    return 10.0 * np.log10(1.0 / max(mse, 1e-12))


def rendered_psnr(m: Mesh, cams: list[Camera], photos: list[np.ndarray], gt_depth: list[np.ndarray]) -> float:
    """Mean over views of the PSNR of ``m`` rendered into each camera, where its depth is within 2 %
    of the true depth."""
    values = []
    for cam, photo, gt in zip(cams, photos, gt_depth, strict=True):
        image, depth = render_colors(m, cam)
        with np.errstate(invalid="ignore"):
            mask = np.isfinite(depth) & np.isfinite(gt) & (np.abs(depth - gt) < 0.02 * gt)
        if mask.sum() > 100:
            values.append(psnr(image, photo, mask))
    return float(np.mean(values))


def _held_out_cameras(preset: str, meshes, n: int, width: int, height: int) -> list[Camera]:
    """Cameras of the same orbit at other angles (another seed), never used by the reconstruction."""
    return scenes.preset_cameras(preset, meshes, n, width, height, seed=1001)


def _closeup(cams: list[Camera], meshes) -> Camera:
    """A camera halfway between the first training camera and the objects' centre (twice as close)."""
    cam = cams[0]
    target = synthetic.merge_meshes(meshes[:-1]).vertices.mean(0)
    eye = 0.5 * (cam.center + target)
    return Camera(cam.K.copy(), look_at(eye, target, np.array([0.0, 1.0, 0.0])), cam.width, cam.height)


def run(out: Path | None = None, views: int = 32, held_out: int = 8, width: int = 640, height: int = 480) -> list[dict]:
    out = Path(out or "bench_out/texture")
    data = shared_data()
    rows = []
    for key, (preset, light, extra, fine) in SCENES.items():
        extra_path = data / extra if (extra and data) else None
        if extra and extra_path is None:
            print(f"({key} skipped: no shared/data/{extra})")
            continue
        tag = f"{preset}{'_fine' if fine else ''}"
        scene = out / tag / light
        if scene.exists():
            shutil.rmtree(scene)
        scenes.write_scene(
            scene, preset, views, width, height, seed=3, extra_mesh=extra_path, light=light, fine_texture=fine
        )
        result = reconstruct(scene, scene / "out", progress=False)
        model = read_model(result.layout.sparse)
        names = model.names
        train = [model.cameras[n] for n in names]
        photos = [load_image(scene / "images" / n) for n in names]
        gt_train = [np.load(scene / "gt" / "depth" / f"{Path(n).stem}.npy") for n in names]
        meshes = scenes.preset_meshes(preset, 3, extra_path, fine)
        renderer = synthetic.Renderer(meshes)
        held = _held_out_cameras(preset, meshes, held_out, width, height)
        rendered = [renderer.render(c, world_light(c) if light == "world" else None) for c in held]
        geometry = load_mesh(result.layout.mesh("ply"))  # the vertex colours, the same mesh
        row = {
            "scene": key,
            "triangles": len(geometry.faces),
            "vertex colours": {
                "train": rendered_psnr(geometry, train, photos, gt_train),
                "held_out": rendered_psnr(geometry, held, [v.image for v in rendered], [v.depth for v in rendered]),
            },
            "pipeline_texture_s": result.report["timings_s"].get("texture"),
            "texture_stats": result.report.get("texture"),
        }

        def load(i: int, _photos=photos) -> np.ndarray:
            return _photos[i]

        closeup_cam = _closeup(train, meshes)
        for name, opts in VARIANTS.items():
            t0 = time.perf_counter()
            baked = texture.bake(geometry, train, load, dataclasses.replace(opts))
            seconds = time.perf_counter() - t0
            row[name] = {
                "train": rendered_psnr(baked.mesh, train, photos, gt_train),
                "held_out": rendered_psnr(baked.mesh, held, [v.image for v in rendered], [v.depth for v in rendered]),
                "seconds": seconds,
                "size": baked.stats["size"],
            }
            if name == "texture":
                tex_img = render_colors(baked.mesh, closeup_cam)[0]
                vc_img = render_colors(geometry, closeup_cam)[0]
                truth = renderer.render(closeup_cam, world_light(closeup_cam) if light == "world" else None).image
                save_image(out / f"closeup_{tag}_{light}.png", np.concatenate([vc_img, tex_img, truth], 1))
        rows.append(row)
        vc = row["vertex colours"]
        print(f"{key}: {row['triangles']} triangles; texture {row['texture_stats']}")
        print(f"  {'vertex colours':16s} PSNR train {vc['train']:.2f} dB  held-out {vc['held_out']:.2f} dB")
        for name in VARIANTS:
            r = row[name]
            print(
                f"  {name:16s} PSNR train {r['train']:.2f} dB ({r['train'] - vc['train']:+.2f})  held-out "
                f"{r['held_out']:.2f} dB ({r['held_out'] - vc['held_out']:+.2f})  bake {r['seconds']:.1f} s  "
                f"atlas {r['size']}²",
                flush=True,
            )
    write_summary(out, rows)
    return rows
