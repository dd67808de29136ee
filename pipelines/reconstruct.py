"""Photos (or a video) -> coloured mesh: poses, predictions, per-view alignment, TSDF fusion, mesh.

Reads top to bottom like the steps it runs. Writes the folder that :mod:`lotus3d.layout` describes
(mesh.ply / .glb / .obj, sparse/, depth/<stem>.npy, report.json).

Every file is written atomically. A finished stage is skipped on a re-run when its settings and
inputs are unchanged (``OUT/.state.json``), unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lotus3d import align, consistency, fuse, mesh, photometric, sfm, texture
from lotus3d.cache import PredictionCache
from lotus3d.configs import FramesConfig, PredictConfig, ReconstructConfig, to_dict
from lotus3d.errors import InputError, ReconstructionError
from lotus3d.io import image_size, list_images, load_image, load_json, save_json, save_npy
from lotus3d.layout import OutputLayout, alignment_json, merge_heldout
from lotus3d.pipelines.frames import FRAMES_JSON, extract_frames
from lotus3d.pipelines.predict import predict_scene, scene_images_dir
from lotus3d.types import Alignment, Camera
from lotus3d.video import is_video

log = logging.getLogger(__name__)


@dataclass
class ReconstructResult:
    """What :func:`reconstruct` wrote: the folder, its mesh files, report.json's content and the
    per-view alignments."""

    out: Path
    mesh_paths: list[Path]
    report: dict
    views: dict[str, Alignment] = field(default_factory=dict)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.out)


class _State:
    """Fingerprints of finished stages, so that a re-run resumes."""

    def __init__(self, layout: OutputLayout, force: bool):
        self.path = layout.state
        self.data = {} if force or not self.path.is_file() else load_json(self.path)

    def done(self, stage: str, fingerprint: str) -> bool:
        return self.data.get(stage) == fingerprint

    def mark(self, stage: str, fingerprint: str) -> None:
        self.data[stage] = fingerprint
        save_json(self.path, self.data)


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reconstruct(
    scene: str | Path,
    out: str | Path | None = None,
    cfg: ReconstructConfig | None = None,
    predict_cfg: PredictConfig | None = None,
    force: bool = False,
    progress: bool = True,
    ray_address: str | None = None,
    frames_cfg: FramesConfig | None = None,
) -> ReconstructResult:
    """Reconstruct ``scene`` (photos in SCENE/images or SCENE) into ``out`` (default SCENE/lotus3d).

    ``scene`` may be a video file: its keyframes are first extracted into the folder of the same
    name without the suffix (``clip.mp4`` -> ``clip/images``, see :func:`extract_frames`).
    """
    cfg = cfg or ReconstructConfig()
    predict_cfg = predict_cfg or PredictConfig()
    scene = Path(scene)
    # 0. a video: keyframes into SCENE/images
    video: dict = {}
    if is_video(scene):
        t0 = time.perf_counter()
        frames = extract_frames(scene, None, frames_cfg, progress, force)
        scene = frames.scene
        video = _video_summary(frames.report, time.perf_counter() - t0)
    elif (scene / FRAMES_JSON).is_file():
        video = _video_summary(load_json(scene / FRAMES_JSON), None)
    if not scene.is_dir():
        raise InputError(f"scene folder not found: {scene}")
    layout = OutputLayout.for_scene(scene, out)
    layout.root.mkdir(parents=True, exist_ok=True)
    state = _State(layout, force)
    timings: dict[str, float] = {"frames": video["seconds"]} if video.get("seconds") is not None else {}
    images = {p.name: p for p in list_images(scene_images_dir(scene))}

    # 1. poses and sparse points
    t0 = time.perf_counter()
    model, sfm_report = _poses(scene, layout, images, cfg, state)
    timings["sfm"] = time.perf_counter() - t0

    # 2. predictions for every registered view
    t0 = time.perf_counter()
    cache = _predictions(scene, model, images, predict_cfg, progress, ray_address)
    timings["predict"] = time.perf_counter() - t0

    # 3. per-view scale / shift against the sparse points -> OUT/depth/<stem>.npy
    t0 = time.perf_counter()
    alignments = _align_views(layout, model, cache, images, cfg, state, progress)
    timings["align"] = time.perf_counter() - t0
    good = [n for n, a in alignments.items() if a.ok]
    if not good:
        reasons = "; ".join(f"{n}: {a.reason}" for n, a in alignments.items())
        raise ReconstructionError(f"no view could be aligned to the sparse points ({reasons})")

    # 4. fusion, 5. dense multi-view refinement (re-fuse while held-out points improve), 6. mesh
    t0 = time.perf_counter()
    fuse_fp = _fingerprint(state.data.get("align"), to_dict(cfg))
    mesh_paths = [layout.mesh(f) for f in _formats(cfg)]
    fusion: dict = {}
    refinement: list[dict] = []
    texturing: dict = {}
    photometry: dict = {}
    if not (state.done("mesh", fuse_fp) and all(p.is_file() for p in mesh_paths)):
        depth_dir = layout.stage_depth_dir("aligned")
        fused, fusion = _fuse(depth_dir, model, cache, images, alignments, cfg, progress)
        cleaned = mesh.remove_small_components(fused, cfg.min_component_fraction)
        timings["fuse"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k in range(1, cfg.refine_rounds + 1):
            t_round = time.perf_counter()
            refined_dir = layout.stage_depth_dir(f"refined_{k}")
            info = _refine(depth_dir, refined_dir, cleaned, model, alignments, cfg, progress)
            if info["accepted"]:
                fused, fusion = _fuse(refined_dir, model, cache, images, alignments, cfg, progress)
                cleaned = mesh.remove_small_components(fused, cfg.min_component_fraction)
                depth_dir = refined_dir
            refinement.append({"round": k, **info, "seconds": round(time.perf_counter() - t_round, 3)})
            if not info["accepted"]:
                break
        timings["refine"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for name in good:
            stem = Path(name).stem
            save_npy(layout.depth(stem), np.load(depth_dir / f"{stem}.npy"))
        cleaned = mesh.simplify(cleaned, cfg.simplify)
        if cleaned.num_triangles == 0:
            raise ReconstructionError("the fused mesh is empty: no depth survived filtering and fusion")
        timings["mesh"] = time.perf_counter() - t0
        # 7. photometric refinement: vertices moved along their normals to where the photos agree
        photos = _undistorted_photos(model, images, good)
        if cfg.photometric:
            t0 = time.perf_counter()
            cleaned, photometry = _photometric(cleaned, model, photos, good, progress)
            timings["photometric"] = time.perf_counter() - t0
        # 8. texture atlas from the photos (GLB / OBJ; the PLY keeps vertex colours)
        textured = cleaned
        if cfg.texture and any(p.suffix != ".ply" for p in mesh_paths):
            t0 = time.perf_counter()
            textured, texturing = _texture(cleaned, model, photos, good, cfg, progress)
            timings["texture"] = time.perf_counter() - t0
        for p in mesh_paths:
            mesh.export_mesh(textured, p)
        fusion["triangles"] = cleaned.num_triangles
        state.mark("mesh", fuse_fp)
    else:
        previous = layout.read_report()
        fusion = previous.get("fusion", {})
        refinement = previous.get("refinement", [])
        texturing = previous.get("texture", {})
        photometry = previous.get("photometric", {})
        alignments = merge_heldout(alignments, previous)  # the records _align_views returned

    report = {
        "scene": str(scene),
        "video": video,
        "sfm": sfm_report,
        "views": {n: alignment_json(a) for n, a in alignments.items()},
        "aligned_views": len(good),
        "excluded_views": {n: a.reason for n, a in alignments.items() if not a.ok},
        "fusion": fusion,
        "refinement": refinement,
        "photometric": photometry,
        "texture": texturing,
        "heldout": _pooled_heldout(alignments),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "settings": {"reconstruct": to_dict(cfg), "predict": to_dict(predict_cfg)},
        "predictions": cache.read_meta().to_json(),
        "versions": _versions(),
        "outputs": {"mesh": _mesh_outputs(mesh_paths), "sparse": "sparse/", "depth": "depth/"},
    }
    layout.write_report(report)
    return ReconstructResult(layout.root, mesh_paths, report, alignments)


# ------------------------------------------------------------------------------------- stages
def _poses(scene: Path, layout: OutputLayout, images: dict[str, Path], cfg: ReconstructConfig, state: _State):
    given = Path(cfg.colmap) if cfg.colmap else (scene / "sparse" / "0" if (scene / "sparse" / "0").is_dir() else None)
    fp = _fingerprint(str(given), sorted(images), cfg.matcher, cfg.camera_mode, cfg.sfm_max_image_size, cfg.mapper)
    if state.done("sfm", fp) and (layout.sparse / "cameras.txt").is_file():
        return sfm.read_model(layout.sparse), layout.read_report().get("sfm", {})
    if given is not None:
        model = sfm.read_model(given)
        missing = sorted(set(model.cameras) - set(images))
        if missing:
            raise InputError(f"the COLMAP model {given} has images not in the scene: {', '.join(missing[:5])}")
        report = {
            "source": str(given),
            "registered": len(model.cameras),
            "total": len(images),
            "unregistered": sorted(set(images) - set(model.cameras)),
        }
    else:
        video = (scene / FRAMES_JSON).is_file()  # video frames: one camera, in capture order
        model, report = sfm.run_sfm(
            scene_images_dir(scene),
            layout.colmap_work,
            "sequential" if video and cfg.matcher == "auto" else cfg.matcher,
            "single" if video and cfg.camera_mode == "auto" else cfg.camera_mode,
            cfg.sfm_max_image_size,
            mapper=cfg.mapper,
        )
        report["source"] = "pycolmap"
    if len(model.cameras) < 2:
        raise ReconstructionError(f"only {len(model.cameras)} registered image(s) in the model; at least two needed")
    _check_sizes(model, images)
    sfm.write_model_text(model, layout.sparse)
    state.mark("sfm", fp)
    return model, report


def _video_summary(frames: dict, seconds: float | None) -> dict:
    """What report.json says about the video a scene's frames came from (frames.json has the rest)."""
    return {
        "video": frames.get("video"),
        "decoded_frames": frames.get("decoded_frames"),
        "picked": len(frames.get("picked", [])),
        "blurred": len(frames.get("blurred", [])),
        "tracking_lost": frames.get("tracking_lost"),
        "frames_json": FRAMES_JSON,
        "seconds": None if seconds is None else round(seconds, 3),
    }


def _check_sizes(model: sfm.SfMModel, images: dict[str, Path]) -> None:
    for name, cam in model.cameras.items():
        w, h = image_size(images[name])
        if (w, h) != (cam.width, cam.height):
            raise InputError(f"{name} is {w}x{h} but its camera in the COLMAP model is {cam.width}x{cam.height}")


def _predictions(
    scene: Path,
    model: sfm.SfMModel,
    images: dict[str, Path],
    pcfg: PredictConfig,
    progress: bool,
    ray_address: str | None = None,
) -> PredictionCache:
    cache = PredictionCache(scene / "predictions")
    stems = [Path(n).stem for n in model.names]
    missing = [s for s in stems if not cache.has(s, need_normal=False)]
    if missing:
        if cache.exists():
            log.info("%d view(s) missing from the prediction cache; running Lotus for them", len(missing))
        report = predict_scene(scene, pcfg, stems=missing, progress=progress, ray_address=ray_address)
        if report.failed:
            raise InputError("cannot predict: " + "; ".join(f"{k}: {v}" for k, v in report.failed.items()))
    return cache


def _align_views(
    layout: OutputLayout,
    model: sfm.SfMModel,
    cache: PredictionCache,
    images: dict[str, Path],
    cfg: ReconstructConfig,
    state: _State,
    progress: bool,
) -> dict[str, Alignment]:
    meta = cache.read_meta()
    fp = _fingerprint(
        state.data.get("sfm"),
        meta.to_json(),
        cfg.alignment,
        cfg.min_points,
        cfg.local_alignment,
        cfg.local_method,
        cfg.holdout_every,
        [(_mtime(cache.depth_path(Path(n).stem))) for n in model.names],
    )
    if state.done("align", fp) and layout.alignment_record.is_file():
        return layout.read_alignments()
    opts = align.AlignOptions(min_points=cfg.min_points)
    local_opts = align.LocalOptions() if cfg.local_method == "grid" else align.LocalOptions.dense()
    result: dict[str, Alignment] = {}
    for name in tqdm(model.names, desc="align", unit="view", disable=not progress):
        cam = model.cameras[name]
        pred = _view_prediction(cache, meta, name, cam, model)
        uv, z = model.point_depths(name)
        heldout = _heldout_mask(model, name, cfg.holdout_every)
        p = align.sample_prediction(pred.depth, uv)
        if cfg.alignment == "none":
            if meta.depth_kind != "depth":
                raise InputError("alignment 'none' needs a prediction cache of depth in scene units (kind 'depth')")
            al = align.Alignment(1.0, 0.0, "depth", len(z), len(z), method="none")
        elif cfg.alignment == "lstsq":
            al = align.fit_least_squares(p, z, meta.depth_kind)
        else:
            al = align.fit_scale_shift(p, z, meta.depth_kind, opts)
        result[name] = al
        if al.ok:
            depth = align.apply_alignment(pred.depth, al)
            al.heldout = {"points": int(heldout.sum()), "global": _heldout_error(depth, uv[heldout], z[heldout])}
            if cfg.local_alignment:
                corr = align.fit_local_correction(depth, uv[~heldout], z[~heldout], local_opts)
                depth = align.apply_local_correction(depth, corr)
                if corr is not None:
                    al.local = {
                        "spatial_px": round(corr.spatial_px, 1),
                        "range_log": corr.range_log,
                        "heldout_before": round(corr.heldout_before, 5),
                        "heldout_after": round(corr.heldout_after, 5),
                    }
                al.heldout["local"] = _heldout_error(depth, uv[heldout], z[heldout])
            save_npy(layout.stage_depth_dir("aligned") / f"{Path(name).stem}.npy", depth)
        else:
            log.warning("view %s excluded: %s", name, al.reason)
    layout.write_alignments(result)
    state.mark("align", fp)
    return result


def _heldout_mask(model: sfm.SfMModel, name: str, every: int) -> np.ndarray:
    """(N,) bool over a view's observations: the points held out of every fit (every ``every``-th
    point id, the same points in all views), to measure each stage on points it never saw."""
    obs = model.observations.get(name)
    if obs is None or every <= 0:
        return np.zeros(0 if obs is None else len(obs.point_ids), bool)
    return obs.point_ids % every == 0


def _heldout_error(depth: np.ndarray, uv: np.ndarray, z: np.ndarray) -> float | None:
    """The held-out error of a depth map at points (uv, z): :func:`align.heldout_loss` of the log
    residuals (mean, each capped at 5 %); None without any point."""
    d = align.sample_prediction(depth, uv)
    ok = np.isfinite(d) & (d > 0) & (z > 0)
    return round(align.heldout_loss(np.log(z[ok] / d[ok])), 6) if ok.any() else None


def _pooled_heldout(alignments: dict[str, Alignment]) -> dict[str, float]:
    """Per stage, the mean over views of the held-out error (views with held-out points)."""
    stages: dict[str, list[float]] = {}
    for a in alignments.values():
        for k, v in (a.heldout or {}).items():
            if k != "points" and v is not None:
                stages.setdefault(k, []).append(v)
    return {k: round(float(np.mean(v)), 6) for k, v in stages.items()}


def _refine(
    depth_dir: Path,
    refined_dir: Path,
    fused: mesh.Mesh,
    model: sfm.SfMModel,
    alignments: dict[str, Alignment],
    cfg: ReconstructConfig,
    progress: bool,
) -> dict:
    """One round of dense multi-view refinement.

    The fused surface, ray cast into each view, is a dense multi-view target: each view's depth gets
    a new edge-aware correction fitted to it (every ``refine_stride``-th pixel, where it agrees with
    the view within the view's tolerance: elsewhere the views disagree or the surface is occluded)
    and to the view's own SfM points. The round is accepted when the held-out points' error, mean
    over views, goes down; the refined depth goes to ``refined_dir``.
    """
    good = [n for n in model.names if alignments[n].ok]
    s = cfg.refine_stride
    rendered = mesh.render_depth(fused, {n: model.cameras[n] for n in good}, stride=s)
    opts = align.LocalOptions.refinement()
    before, after, refined = {}, {}, {}
    for name in tqdm(good, desc="refine", unit="view", disable=not progress):
        depth = np.load(depth_dir / f"{Path(name).stem}.npy")
        uv, z = model.point_depths(name)
        held = _heldout_mask(model, name, cfg.holdout_every)
        ys, xs = np.nonzero(np.isfinite(rendered[name]))
        zt = rendered[name][ys, xs].astype(np.float64)
        ys, xs = ys * s, xs * s
        with np.errstate(invalid="ignore", divide="ignore"):
            agree = np.abs(np.log(zt / depth[ys, xs])) < _view_tolerance(alignments[name])
        uv_all = np.concatenate([np.column_stack([xs[agree], ys[agree]]).astype(np.float64), uv[~held]])
        z_all = np.concatenate([zt[agree], z[~held]])
        corr = align.fit_local_correction(depth, uv_all, z_all, opts)
        refined[name] = align.apply_local_correction(depth, corr)
        before[name] = _heldout_error(depth, uv[held], z[held])
        after[name] = _heldout_error(refined[name], uv[held], z[held])
    views = [n for n in good if before[n] is not None and after[n] is not None]
    b = float(np.mean([before[n] for n in views])) if views else None
    a = float(np.mean([after[n] for n in views])) if views else None
    accepted = bool(views) and a < b
    if accepted:
        k = refined_dir.name
        for name in good:
            save_npy(refined_dir / f"{Path(name).stem}.npy", refined[name])
            if after[name] is not None:
                alignments[name].heldout[k] = after[name]
    else:
        log.info("refinement round not kept: held-out error %s -> %s", b, a)
    return {"heldout_before": b, "heldout_after": a, "accepted": accepted}


def _view_prediction(cache: PredictionCache, meta, name: str, cam: Camera, model: sfm.SfMModel):
    pred = cache.read(Path(name).stem, image_size=(cam.width, cam.height), meta=meta)
    maps = model.undistort_maps.get(name)
    if maps is not None:
        pred.depth = sfm.undistort(pred.depth, maps, nearest=True)
        if pred.normal is not None:
            pred.normal = sfm.undistort(pred.normal, maps, nearest=True)
    return pred


def _fuse(
    depth_dir: Path,
    model: sfm.SfMModel,
    cache: PredictionCache,
    images: dict[str, Path],
    alignments: dict[str, Alignment],
    cfg: ReconstructConfig,
    progress: bool,
):
    good = [n for n in model.names if alignments[n].ok]
    voxel = cfg.voxel_size or scene_extent(model) / cfg.resolution
    meta = cache.read_meta()
    # per-view filtering: edges, grazing angles, far background
    depths = {}
    for name in tqdm(good, desc="filter", unit="view", disable=not progress):
        cam = model.cameras[name]
        pred = _view_prediction(cache, meta, name, cam, model)
        _, z = model.point_depths(name)
        max_depth = cfg.far_factor * float(np.percentile(z[z > 0], 98)) if (z > 0).any() else None
        opts = fuse.FilterOptions(
            edge_threshold=cfg.edge_threshold, max_grazing_deg=cfg.max_grazing_deg, max_depth=max_depth
        )
        depths[name] = fuse.filter_depth(np.load(depth_dir / f"{Path(name).stem}.npy"), cam.K, pred.normal, opts)
    # multi-view consistency
    kept_fraction = None
    if cfg.consistency and len(depths) > 1:
        before = sum(int(np.isfinite(d).sum()) for d in depths.values())
        masks = consistency.consistency_masks(
            depths,
            {n: model.cameras[n] for n in depths},
            consistency.ConsistencyOptions(neighbours=cfg.consistency_views, min_agree=cfg.consistency_min_agree),
            {n: _view_tolerance(alignments[n]) for n in depths},
        )
        for n, m in masks.items():
            depths[n] = np.where(m, depths[n], np.nan)
        kept_fraction = sum(int(np.isfinite(d).sum()) for d in depths.values()) / max(before, 1)
    # TSDF, whole or in spatial chunks (each its own volume: memory bounded by the largest chunk)
    chunks = _chunks(model, cfg.fusion_chunks)
    margin = 2 * cfg.trunc_voxels * voxel
    parts, blocks = [], []
    for axis, lo, hi in chunks:
        vol = fuse.TSDFVolume(
            fuse.TSDFOptions(voxel_size=voxel, trunc_voxels=cfg.trunc_voxels),
            expected_blocks=_expected_blocks(model, voxel) // len(chunks),
        )
        desc = "fuse" if len(chunks) == 1 else f"fuse chunk {len(parts) + 1}/{len(chunks)}"
        for name in tqdm(good, desc=desc, unit="view", disable=not progress):
            cam = model.cameras[name]
            depth = (
                depths.pop(name)
                if len(chunks) == 1
                else _clip_to_slab(depths[name], cam, axis, lo - margin, hi + margin)
            )
            if not np.isfinite(depth).any():
                continue
            color = sfm.undistort(load_image(images[name]), model.undistort_maps.get(name))
            vol.integrate(depth, np.nan_to_num(color), cam, depth_max=float(np.nanmax(depth)) * 1.01)
        v, f, c = vol.extract_mesh(cfg.weight_threshold)
        if len(chunks) > 1 and len(f):
            centre = v[f].mean(1)[:, axis]
            f = f[(centre >= lo) & (centre < hi)]
        parts.append(mesh.Mesh(v, f, c))
        blocks.append(vol.num_blocks)
    info = {
        "voxel_size": voxel,
        "views_integrated": len(good),
        "blocks": int(sum(blocks)),
        "max_blocks_in_memory": int(max(blocks)),
        "chunks": len(chunks),
        "consistency_kept_fraction": kept_fraction,
    }
    return mesh.merge(parts), info


_PHOTO_CACHE_BYTES = 1 << 30  # undistorted photos kept in memory between the stages that read them


def _undistorted_photos(model: sfm.SfMModel, images: dict[str, Path], good: list[str]):
    """``load(i)``: the undistorted photo of view ``good[i]`` (NaN where the original image ends).
    Photometric refinement and the texture read every photo several times: the first ones read stay
    in memory, up to 1 GiB (about 280 photos of 640 x 480), the others are read again."""
    kept: dict[int, np.ndarray] = {}
    used = 0

    def load(i: int) -> np.ndarray:
        nonlocal used
        if i in kept:
            return kept[i]
        image = sfm.undistort(load_image(images[good[i]]), model.undistort_maps.get(good[i]))
        if used + image.nbytes <= _PHOTO_CACHE_BYTES:
            image.flags.writeable = False  # shared between callers
            kept[i] = image
            used += image.nbytes
        return image

    return load


def _photometric(
    cleaned: mesh.Mesh, model: sfm.SfMModel, load: Callable[[int], np.ndarray], good: list[str], progress: bool
) -> tuple[mesh.Mesh, dict]:
    """The mesh with its vertices moved to where the aligned views' photos (``load(i)``: view ``good[i]``,
    undistorted) agree, and the figures."""
    cams = [model.cameras[n] for n in good]
    result = photometric.refine_mesh(cleaned, cams, load, progress=progress)
    if not result.accepted:
        log.info("photometric refinement: %s", result.reason)
    return result.mesh, {"accepted": result.accepted, "reason": result.reason, **result.stats}


def _texture(
    cleaned: mesh.Mesh,
    model: sfm.SfMModel,
    load: Callable[[int], np.ndarray],
    good: list[str],
    cfg: ReconstructConfig,
    progress: bool,
) -> tuple[mesh.Mesh, dict]:
    """The mesh with a UV texture baked from the aligned views' undistorted photos (``load(i)``: view
    ``good[i]``), and its statistics."""

    def valid(i: int) -> np.ndarray | None:  # an undistorted photo is NaN where the original image ends
        return None if model.undistort_maps.get(good[i]) is None else np.isfinite(load(i)).all(-1)

    opts = texture.TextureOptions(max_size=cfg.texture_size, detail=cfg.texture_detail)
    result = texture.bake(cleaned, [model.cameras[n] for n in good], load, opts, progress, valid)
    return result.mesh, result.stats


def _mesh_outputs(mesh_paths: list[Path]) -> list[str]:
    """The mesh files written, an OBJ's material and texture included."""
    names = []
    for p in mesh_paths:
        names.append(p.name)
        if p.suffix == ".obj":
            names += [q.name for q in (p.with_suffix(".mtl"), p.with_suffix(".png")) if q.is_file()]
    return names


def _chunks(model: sfm.SfMModel, n: int) -> list[tuple[int, float, float]]:
    """``n`` slabs (axis, lo, hi) along the longest side of the sparse points' extent (outer slabs open)."""
    if n <= 1:
        return [(0, -np.inf, np.inf)]
    pts = model.points if len(model.points) >= 10 else np.array([c.center for c in model.cameras.values()])
    lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
    axis = int(np.argmax(hi - lo))
    edges = np.linspace(lo[axis], hi[axis], n + 1)
    edges[0], edges[-1] = -np.inf, np.inf
    return [(axis, float(edges[i]), float(edges[i + 1])) for i in range(n)]


def _clip_to_slab(depth: np.ndarray, cam: Camera, axis: int, lo: float, hi: float) -> np.ndarray:
    """The depth map with pixels whose 3D point lies outside lo <= x[axis] < hi set to NaN."""
    pts, pix = consistency.world_points(depth, cam)
    keep = (pts[:, axis] >= lo) & (pts[:, axis] < hi)
    out = np.full(depth.shape, np.nan, np.float32)
    out[pix[keep, 1], pix[keep, 0]] = depth[pix[keep, 1], pix[keep, 0]]
    return out


def _view_tolerance(al: Alignment) -> float:
    """Relative depth tolerance of a view in the consistency check: 3x its held-out residual."""
    err = (al.local or {}).get("heldout_after") or al.residual_percentiles.get("p50", 0.02)
    return float(np.clip(3.0 * err, 0.01, 0.08))


def scene_extent(model: sfm.SfMModel) -> float:
    """Diagonal of the 2-98 % box of the sparse points and camera centres (scene units)."""
    pts = model.points
    if len(pts) >= 10:
        lo, hi = np.percentile(pts, 2, axis=0), np.percentile(pts, 98, axis=0)
    else:
        centers = np.array([c.center for c in model.cameras.values()])
        lo, hi = centers.min(0), centers.max(0)
    ext = float(np.linalg.norm(hi - lo))
    if not ext > 0:
        raise ReconstructionError("the sparse model has no spatial extent (all points coincide)")
    return ext


def _expected_blocks(model: sfm.SfMModel, voxel: float) -> int:
    """Initial hash-map size: surface area ~ extent^2 in blocks of 8^3 voxels, capped at 30k blocks
    (about 300 MB); Open3D grows the map as the scene needs, so memory follows the surface."""
    ext = scene_extent(model)
    return int(min(30_000, 6 * (ext / (8 * voxel)) ** 2))


def _formats(cfg: ReconstructConfig) -> list[str]:
    fmts = [f.strip().lower() for f in cfg.formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in ("ply", "glb", "obj")]
    if bad or not fmts:
        raise InputError(f"unknown mesh format(s) {bad or cfg.formats!r}: use ply, glb, obj")
    return fmts


def _mtime(p: Path) -> float | None:
    return p.stat().st_mtime if p.is_file() else None


def _versions() -> dict:
    import open3d
    import pycolmap

    import lotus3d

    out = {
        "lotus3d": getattr(lotus3d, "__version__", "dev"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "open3d": open3d.__version__,
        "pycolmap": pycolmap.__version__,
    }
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


__all__ = ["ReconstructResult", "reconstruct", "scene_extent"]
