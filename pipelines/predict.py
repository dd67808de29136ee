"""Images -> prediction cache (``SCENE/predictions``), resumable.

Steps: list the images; compare the cache's models and settings with ours; predict each view
not yet in the cache (tqdm per view), writing each view's files atomically; report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lotus3d.cache import CacheMeta, PredictionCache
from lotus3d.configs import PredictConfig
from lotus3d.errors import CacheError, InputError, ModelError
from lotus3d.io import list_images, load_image
from lotus3d.predict import (
    LotusPredictor,
    PredictorOptions,
    guess_depth_kind,
    prediction_settings,
    resolve_checkpoint,
    resolve_device,
)

log = logging.getLogger(__name__)


@dataclass
class PredictReport:
    predicted: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_per_view: float | None = None

    def to_json(self) -> dict:
        return {
            "predicted": self.predicted,
            "cached": self.cached,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "seconds_per_view": self.seconds_per_view,
        }


def scene_images_dir(scene: Path) -> Path:
    """``SCENE/images`` when it exists, else ``SCENE`` itself."""
    return scene / "images" if (scene / "images").is_dir() else scene


def load_predictor(cfg: PredictConfig) -> LotusPredictor:
    return LotusPredictor.from_pretrained(
        depth_model=_none(cfg.depth_model),
        normal_model=_none(cfg.normal_model),
        depth_kind=cfg.depth_kind,
        device=cfg.device,
        dtype=cfg.dtype,
        options=PredictorOptions.from_config(cfg),
        backend=cfg.backend,
    )


def _none(name: str | None) -> str | None:
    return None if name is None or str(name).lower() == "none" else str(name)


def expected_meta(cfg: PredictConfig, predictor: LotusPredictor | None = None) -> CacheMeta:
    """The meta.json a run with these settings writes, known without loading any weights."""
    if predictor is not None:
        return CacheMeta(
            depth_kind=predictor.depth_kind,
            depth_model=predictor.depth.name if predictor.depth else "none",
            normal_model=predictor.normal.name if predictor.normal else None,
            settings=predictor.settings(),
        )
    depth_model = _none(cfg.depth_model)
    kind = cfg.depth_kind
    if kind == "auto":
        kind = "disparity"
        if depth_model is not None:
            try:
                path = resolve_checkpoint(depth_model, local_files_only=True)
            except ModelError:
                path = Path(depth_model)
            kind = guess_depth_kind(depth_model, path)
    _, dtype = resolve_device(cfg.device, cfg.dtype)
    return CacheMeta(
        depth_kind=kind,
        depth_model=depth_model or "none",
        normal_model=_none(cfg.normal_model),
        settings=prediction_settings(PredictorOptions.from_config(cfg), dtype),
    )


def check_cache_compatible(cache: PredictionCache, meta: CacheMeta) -> bool:
    """True when the cache exists and was made with ``meta``'s models and settings.

    Raises:
        CacheError: the cache was made differently (the message says how, and to use --force).
    """
    if not cache.exists():
        return False
    have = cache.read_meta()
    diffs = []
    if have.depth_kind != meta.depth_kind:
        diffs.append(f"depth kind {have.depth_kind} vs {meta.depth_kind}")
    if have.depth_model != meta.depth_model:
        diffs.append(f"depth model {have.depth_model} vs {meta.depth_model}")
    if have.normal_model != meta.normal_model:
        diffs.append(f"normal model {have.normal_model} vs {meta.normal_model}")
    if (have.settings or {}) != (meta.settings or {}):
        diffs.append(f"settings {have.settings} vs {meta.settings}")
    if diffs:
        raise CacheError(
            f"the prediction cache {cache.root} was made differently ({'; '.join(diffs)}); "
            "re-run with --force to redo every view, or choose another output folder"
        )
    return True


def predict_scene(
    scene: str | Path,
    cfg: PredictConfig | None = None,
    out: str | Path | None = None,
    force: bool = False,
    predictor: LotusPredictor | None = None,
    stems: list[str] | None = None,
    progress: bool = True,
    ray_address: str | None = None,
) -> PredictReport:
    """Predict every image of ``scene`` into ``out`` (default ``SCENE/predictions``).

    Args:
        predictor: an already-loaded predictor (else loaded from ``cfg`` only if a view needs it).
        stems: restrict to these views (by file stem).
        ray_address: spread the views over a Ray cluster ("local" starts one on this machine);
            None predicts in this process.

    Views already in an up-to-date cache are skipped unless ``force``.
    """
    cfg = cfg or PredictConfig()
    scene = Path(scene)
    start = time.perf_counter()
    images = list_images(scene_images_dir(scene))
    if stems is not None:
        wanted = set(stems)
        images = [p for p in images if p.stem in wanted]
    cache = PredictionCache(Path(out) if out else scene / "predictions")
    report = PredictReport()

    meta = expected_meta(cfg, predictor)
    up_to_date = False if force else check_cache_compatible(cache, meta)
    need_normal = meta.normal_model is not None
    todo = []
    for p in images:
        if up_to_date and cache.has(p.stem, need_normal):
            report.cached.append(p.stem)
        else:
            todo.append(p)
    t0 = time.perf_counter()
    if todo:
        cache.remove_partial_writes()  # a killed run's temporary files
        cache.write_meta(meta)
        if ray_address is not None:
            _predict_on_ray(todo, cfg, cache, report, ray_address, progress)
        else:
            _predict_here(todo, cfg, cache, report, predictor or load_predictor(cfg), progress)
    if report.predicted:
        report.seconds_per_view = (time.perf_counter() - t0) / len(report.predicted)
    report.seconds = time.perf_counter() - start
    return report


def _predict_here(todo, cfg, cache, report, predictor, progress) -> None:
    for path in tqdm(todo, desc="lotus predict", unit="view", disable=not progress):
        try:
            image = load_image(path)
        except InputError as e:
            if cfg.on_error == "fail":
                raise
            log.warning("skipping %s: %s", path.name, e)
            report.failed[path.stem] = str(e)
            continue
        cache.write(path.stem, predictor.predict(image))
        report.predicted.append(path.stem)


def _predict_on_ray(todo, cfg, cache, report, address, progress) -> None:
    from lotus3d.distributed import predict_distributed

    bar = tqdm(total=len(todo), desc="lotus predict (ray)", unit="view", disable=not progress)

    def write(stem, prediction):
        cache.write(stem, prediction)
        report.predicted.append(stem)

    try:
        failed = predict_distributed(
            [(p.stem, p) for p in todo],
            cfg,
            load_predictor,
            write,
            address,
            cfg.ray_cpus_per_worker,
            batch_size=cfg.batch_size,
            progress=bar.update,
        )
    finally:
        bar.close()
    if cfg.on_error == "fail" and failed:
        stem, why = next(iter(failed.items()))
        raise InputError(f"view {stem}: {why}")
    report.failed.update(failed)
