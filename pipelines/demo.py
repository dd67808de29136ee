"""`lotus3d demo`: a bundled synthetic scene through the real reconstruction pipeline.

Steps: render the bundled Spot cow on a textured floor from N orbiting cameras (exact poses and
SfM-like sparse points); predictions from Lotus when weights are available, else simulated the
way Lotus errs (and said so); reconstruct; score the mesh against the ground truth.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lotus3d import scenes
from lotus3d.configs import PredictConfig, ReconstructConfig
from lotus3d.errors import ModelError
from lotus3d.mesh import load_mesh
from lotus3d.metrics import evaluate_mesh
from lotus3d.pipelines.predict import predict_scene
from lotus3d.pipelines.reconstruct import reconstruct
from lotus3d.predict import resolve_checkpoint
from lotus3d.sfm import read_model

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    scene: Path
    mesh: Path
    metrics: dict
    used_lotus: bool
    why: str
    seconds: float


def lotus_available(pcfg: PredictConfig) -> tuple[bool, str]:
    """Whether the configured Lotus checkpoints can be loaded here (cached, local, or downloadable)."""
    try:
        for name in (pcfg.depth_model, pcfg.normal_model):
            if name and str(name).lower() != "none":
                resolve_checkpoint(name)
    except ModelError as e:
        return False, "no Lotus weights available here: " + str(e).splitlines()[0].rstrip(".")
    return True, "Lotus weights available"


def run_demo(
    out: str | Path = "lotus3d_demo",
    views: int = 24,
    width: int = 640,
    height: int = 480,
    mode: str = "auto",
    pcfg: PredictConfig | None = None,
    cfg: ReconstructConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Build the demo scene in ``out/scene``, reconstruct it into ``out/scene/lotus3d``, score it.

    Args:
        mode: "auto" (Lotus if its weights are available, else simulated), "real" (Lotus, or an
            error), "simulated".
    """
    start = time.perf_counter()
    pcfg = pcfg or PredictConfig()
    out = Path(out)
    scene = out / "scene"
    if scene.exists():
        shutil.rmtree(scene)
    scenes.write_scene(scene, "orbit", views, width, height, seed=seed, outlier_fraction=0.1)
    use_lotus, why = (False, "simulated predictions were asked for") if mode == "simulated" else lotus_available(pcfg)
    if mode == "real" and not use_lotus:
        raise ModelError(f"--real needs the Lotus weights: {why}")
    if use_lotus:
        shutil.rmtree(scene / "predictions")
        predict_scene(scene, pcfg, progress=progress)
    result = reconstruct(scene, cfg=cfg, predict_cfg=pcfg, progress=progress)
    gt = load_mesh(scene / "gt" / "mesh.ply")
    cams = list(read_model(scene / "sparse" / "0").cameras.values())
    metrics = evaluate_mesh(load_mesh(result.mesh_paths[0]), gt, cameras=cams, n_samples=100_000)
    return DemoResult(scene, result.mesh_paths[0], metrics, use_lotus, why, time.perf_counter() - start)
