"""One photo -> a 3D mesh: prediction, depth prior, normal integration, triangulation.

Steps: read the image and intrinsics (--K, --fov, EXIF focal, or estimated from the normals); the
Lotus prediction (from a cache folder or the model); the sky / invalid mask; the shift of the
affine-invariant prediction from the normals (kept at 0 when they do not determine it); the
normal-convention check; bilateral normal integration with the prior, checked against the prior
and replaced by it, with a message, when it fails the check; a textured mesh cut at
discontinuities; refined depth, preview, report.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from lotus3d import single
from lotus3d.cache import PredictionCache
from lotus3d.configs import PredictConfig, SingleConfig
from lotus3d.errors import InputError
from lotus3d.io import load_image, save_image, save_json, save_npy
from lotus3d.mesh import export_mesh
from lotus3d.types import Prediction, intrinsics_from_fov

log = logging.getLogger(__name__)


@dataclass
class SingleResult:
    mesh: Path
    depth: Path
    preview: Path
    report: dict


def read_K(path: str | Path) -> np.ndarray:
    """A 3x3 intrinsics matrix from a text file (np.savetxt layout)."""
    try:
        K = np.loadtxt(path, dtype=np.float64).reshape(3, 3)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read intrinsics from {path}: {e} (expected 3 rows of 3 numbers)") from None
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{path}: focal lengths must be positive")
    return K


def _prediction(image_path: Path, image: np.ndarray, predictions: Path | None, pcfg: PredictConfig) -> Prediction:
    h, w = image.shape[:2]
    if predictions is not None:
        cache = PredictionCache(predictions)
        pred = cache.read(image_path.stem, image_size=(w, h))
    else:
        from lotus3d.pipelines.predict import load_predictor

        pred = load_predictor(pcfg).predict(image)
    if pred.normal is None:
        raise InputError("single-view reconstruction needs predicted normals (the cache has none for this image)")
    return pred


def run_single(
    image_path: str | Path,
    out: str | Path | None = None,
    cfg: SingleConfig | None = None,
    pcfg: PredictConfig | None = None,
    predictions: str | Path | None = None,
) -> SingleResult:
    """Reconstruct one image into ``out`` (.glb, .obj or .ply; default IMAGE.glb next to the image).

    ``predictions``: a prediction cache folder to read instead of running Lotus (``pcfg``).
    Settings (intrinsics, scale, prior weight, thresholds, simplification): :class:`SingleConfig`.
    """
    cfg = cfg or SingleConfig()
    if cfg.fov is not None and cfg.intrinsics is not None:
        raise InputError("give either --fov or --K, not both")
    K = read_K(cfg.intrinsics) if cfg.intrinsics else None
    fov_deg, simplify = cfg.fov, cfg.simplify
    t0 = time.perf_counter()
    # compile (or load) the single-view kernels while the image and the prediction are read
    threading.Thread(target=single.warm_up, name="lotus3d-warmup", daemon=True).start()
    image_path = Path(image_path)
    out = Path(out) if out else image_path.with_suffix(".glb")
    if out.suffix.lower() not in (".glb", ".obj", ".ply"):
        raise InputError(f"output must end in .glb, .obj or .ply, not {out.suffix!r}")
    if simplify < 0:
        raise InputError(f"--simplify must be 0 (keep all triangles) or a positive triangle count, not {simplify}")
    image = load_image(image_path)
    h, w = image.shape[:2]
    if K is not None:
        source = "given"
    elif fov_deg is not None:
        K, source = intrinsics_from_fov(w, h, fov_deg), f"fov {fov_deg:g} deg (given)"
    else:
        K = single.intrinsics_from_exif(image_path, w, h)
        source = "exif" if K is not None else None
    pred = _prediction(image_path, image, Path(predictions) if predictions else None, pcfg or PredictConfig())
    p, normal = pred.depth, pred.normal
    mask = np.isfinite(p) & np.isfinite(normal).all(-1)
    if pred.kind == "disparity":
        mask &= p > cfg.sky_threshold
    if mask.sum() < 16:
        raise InputError(f"{image_path.name}: almost every pixel is invalid or sky; nothing to reconstruct")
    timings = {"load": time.perf_counter() - t0}

    t = time.perf_counter()
    view = single.reconstruct_depth(
        p, pred.kind, normal, K, mask, cfg.prior_weight, cfg.auto_convention, cfg.far_factor
    )
    K, shift, convention, refined, mask = view.K, view.shift, view.convention, view.refined, view.mask
    focal = view.focal
    if focal is not None and focal.determined:
        source = f"estimated from the normals: fov {focal.fov_deg:.1f} deg"
    elif focal is not None:
        source = f"fov {focal.fov_deg:g} deg (default: {focal.reason})"
    for note in (shift.reason, refined.fallback):
        if note:
            log.warning("%s: %s", image_path.name, note)
    timings["depth"] = time.perf_counter() - t

    t = time.perf_counter()
    res = refined.integration
    depth = np.where(mask, refined.depth, np.nan)
    depth = depth * (cfg.scale / np.nanmedian(depth))
    breaks = res.weights.min(-1) < 0.05 if res is not None and not refined.fallback else None
    mesh = single.depth_to_mesh(
        depth,
        K,
        image,
        max_relative_jump=0.05,
        breaks=None if breaks is None else breaks & mask,
        max_triangles=simplify,
    )
    _export(mesh, out)
    depth_path = out.with_suffix(".depth.npy")
    save_npy(depth_path, depth.astype(np.float32))
    preview = out.with_suffix(".preview.png")
    save_image(preview, _preview(depth, normal, mask))
    timings["mesh"] = time.perf_counter() - t
    report = {
        "image": str(image_path),
        "size": [w, h],
        "intrinsics": K.tolist(),
        "intrinsics_source": source,
        "prediction_kind": pred.kind,
        "shift": shift.shift,
        "shift_determined": shift.determined,
        "shift_interval": list(shift.interval),
        "shift_note": shift.reason,
        "normal_agreement_deg": shift.angular_error_deg,
        "convention": {
            "ok": convention.ok,
            "best_signs": list(convention.signs),
            "applied": view.convention_applied,
            "errors_deg": {str(k): round(v, 3) for k, v in convention.errors.items()},
        },
        "integration": {
            "used": not refined.fallback,
            "fallback": refined.fallback,
            "checks": refined.checks,
            "iterations": res.iterations if res else 0,
            "cg_iterations": res.cg_iterations if res else 0,
            "seconds": round(res.seconds, 3) if res else 0.0,
        },
        "median_depth": cfg.scale,
        "triangles": len(mesh.faces),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    save_json(out.with_suffix(".json"), report)
    return SingleResult(out, depth_path, preview, report)


def _export(mesh: trimesh.Trimesh, out: Path) -> None:
    """GLB / OBJ (+ .mtl, .png) with the projected texture; PLY with the vertex colours."""
    if out.suffix.lower() == ".ply":
        colors = mesh.metadata.get("vertex_colors")
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colors, process=False)
    export_mesh(mesh, out)


def _preview(depth: np.ndarray, normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Depth (turbo-like colours, near = warm) beside the normals (Lotus-style colours)."""
    d = np.where(mask, depth, np.nan)
    lo, hi = np.nanpercentile(d, [2, 98])
    x = np.clip((hi - d) / max(hi - lo, 1e-9), 0, 1)
    col = np.stack(
        [
            np.clip(1.5 - np.abs(4 * x - 3), 0, 1),
            np.clip(1.5 - np.abs(4 * x - 2), 0, 1),
            np.clip(1.5 - np.abs(4 * x - 1), 0, 1),
        ],
        -1,
    )
    col[~mask] = 0
    nc = np.where(mask[..., None], -normal * 0.5 + 0.5, 0)
    return np.concatenate([col, nc], 1).astype(np.float32)
