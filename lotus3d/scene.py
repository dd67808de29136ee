"""Inspect a finished reconstruction: ``Scene.load("SCENE/lotus3d")``.

Loading reads only the small files (report, model, alignment records); images, predictions,
aligned depth and the mesh are read when first asked for and then kept. Plots live in
:mod:`lotus3d.plots`, the HTML report in :mod:`lotus3d.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .align import sample_prediction
from .cache import PredictionCache
from .errors import InputError
from .io import IMAGE_EXTENSIONS, load_image, load_json
from .layout import OutputLayout
from .mesh import Mesh, load_mesh
from .sfm import SfMModel, read_model
from .types import Alignment, Camera, Prediction


@dataclass
class View:
    """One registered view of a reconstruction; heavy arrays load on first access."""

    name: str
    camera: Camera
    alignment: Alignment | None
    _scene: Scene = field(repr=False)

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @cached_property
    def image(self) -> np.ndarray:
        """(H, W, 3) float RGB in [0, 1]."""
        return load_image(self._scene.image_path(self.name))

    @cached_property
    def prediction(self) -> Prediction | None:
        """The raw (affine-invariant) prediction and normals, or None when the cache is gone."""
        cache = self._scene.prediction_cache
        if cache is None or not cache.has(self.stem, need_normal=False):
            return None
        return cache.read(self.stem)

    @property
    def normal(self) -> np.ndarray | None:
        """(H, W, 3) predicted normals, OpenCV camera frame, facing the camera."""
        p = self.prediction
        return None if p is None else p.normal

    @cached_property
    def depth(self) -> np.ndarray | None:
        """(H, W) aligned depth in scene units (NaN = none), or None for an excluded view."""
        p = self._scene.layout.depth(self.stem)
        return np.load(p) if p.is_file() else None

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uv (N, 2) pixels, z (N,) depth along the view's z, xyz (N, 3) world) of the sparse points it observes."""
        model = self._scene.model
        uv, z = model.point_depths(self.name)
        obs = model.observations.get(self.name)
        xyz = model.points[obs.point_ids] if obs is not None and len(obs.point_ids) else np.zeros((0, 3))
        return uv, z, xyz

    def residuals(self) -> np.ndarray:
        """(N,) relative depth residual of the aligned depth at the view's points: d(u, v) / z - 1."""
        if self.depth is None:
            return np.zeros(0)
        uv, z, _ = self.points
        return sample_prediction(self.depth, uv) / z - 1.0

    @property
    def quality(self) -> float:
        """Median |relative residual| of the aligned depth at the points (NaN for an excluded view)."""
        r = self.residuals()
        r = r[np.isfinite(r)]
        return float(np.median(np.abs(r))) if len(r) else float("nan")


class Scene:
    """A reconstruction folder (``lotus3d reconstruct`` output), loaded lazily.

    Attributes: ``out`` (the folder), ``report`` (report.json), ``views`` (name -> :class:`View`),
    ``model`` (the sparse model), ``mesh`` (loaded on first access).
    """

    def __init__(self, out: Path, report: dict, alignments: dict[str, Alignment]):
        self.out = out
        self.layout = OutputLayout(out)
        self.report = report
        self._alignments = alignments
        self.scene_dir = Path(report.get("scene", out.parent))

    @classmethod
    def load(cls, out: str | Path) -> Scene:
        """Open ``OUT`` (e.g. ``SCENE/lotus3d``) or a scene folder that holds ``lotus3d/``.

        Raises:
            InputError: saying which stage to run when the folder is missing or incomplete.
        """
        layout = OutputLayout(Path(out))
        if not layout.report.is_file() and OutputLayout.for_scene(layout.root).report.is_file():
            layout = OutputLayout.for_scene(layout.root)
        out = layout.root
        if not out.is_dir():
            raise InputError(f"no reconstruction at {out}: run 'lotus3d reconstruct SCENE' first")
        if not (layout.sparse / "cameras.txt").is_file():
            raise InputError(
                f"{out} has no sparse model (sparse/): the poses stage did not finish; run 'lotus3d reconstruct SCENE'"
            )
        if not layout.alignment_record.is_file():
            raise InputError(
                f"{out} has no alignment record ({layout.alignment_record.relative_to(out)}): the alignment "
                "stage did not finish; run 'lotus3d reconstruct SCENE'"
            )
        if not layout.report.is_file():
            raise InputError(
                f"{out} has no {layout.report.name}: the fusion / mesh stage did not finish; "
                "run 'lotus3d reconstruct SCENE' to complete it"
            )
        report = layout.read_report()
        return cls(out, report, layout.read_alignments(report))

    # ------------------------------------------------------------------ lazily loaded parts
    @cached_property
    def model(self) -> SfMModel:
        return read_model(self.layout.sparse)

    @cached_property
    def views(self) -> dict[str, View]:
        return {n: View(n, cam, self._alignments.get(n), self) for n, cam in sorted(self.model.cameras.items())}

    @cached_property
    def mesh(self) -> Mesh:
        path = self.layout.mesh("ply")
        if not path.is_file():
            raise InputError(f"{path} is missing: run 'lotus3d reconstruct' to finish the mesh stage")
        return load_mesh(path)

    @cached_property
    def textured_mesh(self) -> Mesh | None:
        """The GLB with its baked texture (``uv``, ``texture`` set), or None without one."""
        path = self.layout.mesh("glb")
        mesh = load_mesh(path) if path.is_file() else None
        return mesh if mesh is not None and mesh.textured else None

    @cached_property
    def frames(self) -> dict | None:
        """The scene's ``frames.json`` when its photos were picked from a video, else None."""
        path = self.scene_dir / "frames.json"
        return load_json(path) if path.is_file() else None

    @cached_property
    def prediction_cache(self) -> PredictionCache | None:
        cache = PredictionCache(self.scene_dir / "predictions")
        return cache if cache.exists() else None

    def image_path(self, name: str) -> Path:
        for folder in (self.scene_dir / "images", self.scene_dir):
            if (folder / name).is_file():
                return folder / name
        stem = Path(name).stem
        for ext in IMAGE_EXTENSIONS:
            p = self.scene_dir / "images" / f"{stem}{ext}"
            if p.is_file():
                return p
        raise InputError(f"image {name} not found under {self.scene_dir}")

    def __getitem__(self, name: str) -> View:
        if name in self.views:
            return self.views[name]
        by_stem = {v.stem: v for v in self.views.values()}
        if name in by_stem:
            return by_stem[name]
        raise KeyError(f"no view {name!r}; views: {', '.join(list(self.views)[:5])}...")

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return f"Scene({self.out}, {len(self)} views, {self.report.get('aligned_views')} aligned)"

    # --------------------------------------------------------------------------- summary
    def summary(self):
        """One row per view: alignment figures and quality. A pandas DataFrame when pandas is
        installed, else a list of dicts (``pandas.DataFrame(scene.summary())`` works either way)."""
        rows = []
        for v in self.views.values():
            a = v.alignment
            rows.append(
                {
                    "view": v.name,
                    "aligned": bool(a and a.ok),
                    "points": a.num_points if a else 0,
                    "inliers": a.num_inliers if a else 0,
                    "scale": a.scale if a else float("nan"),
                    "shift": a.shift if a else float("nan"),
                    "residual_p50": (a.residual_percentiles or {}).get("p50", float("nan")) if a else float("nan"),
                    "local_correction": bool(a and a.local),
                    **{f"heldout_{k}": x for k, x in ((a.heldout or {}) if a else {}).items() if k != "points"},
                    "quality": v.quality,
                    "reason": a.reason if a else "not in the alignment record",
                }
            )
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is in the plots extra
            return rows
        return pd.DataFrame(rows).set_index("view")

    def outliers(self, factor: float = 3.0) -> list[str]:
        """Views whose quality (median residual) is worse than ``factor`` x the scene's median, or excluded."""
        q = {n: v.quality for n, v in self.views.items()}
        finite = [x for x in q.values() if np.isfinite(x)]
        med = float(np.median(finite)) if finite else float("nan")
        return [n for n, x in q.items() if not np.isfinite(x) or x > factor * max(med, 1e-6)]
