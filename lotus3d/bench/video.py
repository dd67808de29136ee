"""Benchmark of video in: keyframes picked from a rendered walk-around clip vs ideal photos.

``lotus3d bench video`` renders each scene as a 200- or 300-frame H.264 clip at 640 x 480 (one loop around
the objects, world light, 12 % of the frames motion-blurred over 3-5 frames of motion), picks
keyframes (``lotus3d frames``), and reconstructs them with pycolmap SfM and simulated predictions.
Side by side, the same scene from ideal photos: as many sharp, losslessly stored renders as there
are keyframes, evenly spaced along the same path, through the same pipeline. Reports blurred
frames picked, keyframes chosen and registered, mesh F-score of both (after a similarity from the
SfM cameras to the true ones) and the time of decoding + selection. Rows in ``OUT/summary.json``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ..configs import FramesConfig, ReconstructConfig
from ..layout import OutputLayout
from ..mesh import Mesh, load_mesh
from ..metrics import evaluate_mesh, similarity_from_cameras, transform_mesh
from ..pipelines.frames import extract_frames
from ..pipelines.reconstruct import reconstruct
from ..scenes import preset_meshes
from ..sfm import read_model
from ..synthetic import merge_meshes
from ..synthetic_video import walkaround_camera, write_simulated_predictions, write_walkaround
from . import write_summary

SCENES = {"orbit": 200, "objects": 300}  # preset: frames in the clip


def _score(out: Path, gt_cams: dict, gt_mesh) -> float:
    layout = OutputLayout(out)
    est = read_model(layout.sparse).cameras
    pred = transform_mesh(load_mesh(layout.mesh("ply")), *similarity_from_cameras(est, gt_cams))
    return float(evaluate_mesh(pred, gt_mesh, cameras=list(gt_cams.values()), n_samples=60000)["fscore"])


def run(out: Path | None = None, width: int = 640, height: int = 480, seed: int = 0) -> list[dict]:
    out = Path(out or "bench_video")
    if out.exists():
        shutil.rmtree(out)
    rows = []
    fast = ReconstructConfig(texture=False, formats="ply")
    for scene_name, n_frames in SCENES.items():
        rng = np.random.default_rng(seed)
        blurred = sorted(rng.choice(np.arange(n_frames), int(0.12 * n_frames), replace=False).tolist())
        root = out / scene_name
        t0 = time.perf_counter()
        clip = write_walkaround(
            root / "clip.mp4",
            scene_name,
            n_frames,
            width,
            height,
            blurred,
            exposure_frames=float(rng.uniform(3, 5)),
            seed=seed,
        )
        render_s = time.perf_counter() - t0
        gt_mesh = merge_meshes(preset_meshes(scene_name, seed))
        gt = Mesh(gt_mesh.vertices, gt_mesh.faces)
        # video -> keyframes -> reconstruction
        t0 = time.perf_counter()
        frames = extract_frames(clip.path, root / "clip", FramesConfig(), progress=False)
        select_s = time.perf_counter() - t0
        picked = {n: clip.cameras[i] for n, i in zip(frames.names, frames.indices, strict=True)}
        write_simulated_predictions(clip.renderer, root / "clip", picked, seed)
        t0 = time.perf_counter()
        r_video = reconstruct(clip.path, cfg=fast, progress=False)
        video_s = time.perf_counter() - t0
        f_video = _score(r_video.out, picked, gt)
        # the same number of ideal photos along the same path
        ideal = root / "photos"
        n = len(picked)
        ideal_cams = {
            f"photo_{k:03d}.png": walkaround_camera(clip.objects, k * n_frames / n, n_frames, width, height, seed)
            for k in range(n)
        }
        write_simulated_predictions(clip.renderer, ideal, ideal_cams, seed, photos=True)
        t0 = time.perf_counter()
        r_ideal = reconstruct(ideal, cfg=fast, progress=False)
        ideal_s = time.perf_counter() - t0
        f_ideal = _score(r_ideal.out, ideal_cams, gt)
        row = {
            "scene": scene_name,
            "frames": frames.report["decoded_frames"],
            "blurred in clip": len(blurred),
            "dropped as blurred": len(frames.report["blurred"]),
            "blurred picked": len(set(frames.indices) & set(blurred)),
            "keyframes": n,
            "registered": r_video.report["sfm"]["registered"],
            "F video": round(f_video, 4),
            "F ideal photos": round(f_ideal, 4),
            "F difference": round(f_ideal - f_video, 4),
            "decode + select s": round(select_s, 2),
            "reconstruct video s": round(video_s, 1),
            "reconstruct photos s": round(ideal_s, 1),
            "render s": round(render_s, 1),
        }
        rows.append(row)
        print("  ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    write_summary(out, rows)
    return rows
