"""The prediction cache: a documented on-disk format that any tool can write.

::

    SCENE/predictions/meta.json          {"depth": {"kind": "disparity" | "depth", "model": ...},
                                          "normal": {"frame": "opencv_camera_facing", "model": ...}}
    SCENE/predictions/depth/<stem>.npy   float32 [H, W], same H, W as the image
    SCENE/predictions/normal/<stem>.npy  float32 [H, W, 3], unit length

``<stem>`` is the image file name without its extension. ``meta.json`` may carry more keys
(lotus3d records ``settings`` so that a re-run knows whether a view is up to date); readers ignore
keys they do not know. ``normal`` may be ``null`` when a tool predicts depth only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CacheError
from .io import load_json, save_json, save_npy
from .types import NORMAL_FRAME, DepthKind, Prediction

META = "meta.json"


@dataclass
class CacheMeta:
    """What a cache holds: the depth kind and the models (and settings) that made it."""

    depth_kind: DepthKind
    depth_model: str
    normal_model: str | None
    settings: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"depth": {"kind": self.depth_kind, "model": self.depth_model}}
        out["normal"] = {"frame": NORMAL_FRAME, "model": self.normal_model} if self.normal_model is not None else None
        if self.settings is not None:
            out["settings"] = self.settings
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: Path) -> CacheMeta:
        try:
            depth = obj["depth"]
            kind = depth["kind"]
        except (KeyError, TypeError):
            raise CacheError(f"{where}: missing 'depth.kind'") from None
        if kind not in ("disparity", "depth"):
            raise CacheError(f"{where}: depth.kind must be 'disparity' or 'depth', not {kind!r}")
        normal = obj.get("normal")
        if normal is not None and normal.get("frame", NORMAL_FRAME) != NORMAL_FRAME:
            raise CacheError(
                f"{where}: normal.frame is {normal.get('frame')!r}; lotus3d reads only {NORMAL_FRAME!r} "
                "(OpenCV camera axes, facing the camera): convert the normals when writing the cache"
            )
        return cls(
            depth_kind=kind,
            depth_model=str(depth.get("model", "unknown")),
            normal_model=None if normal is None else str(normal.get("model", "unknown")),
            settings=obj.get("settings"),
        )


class PredictionCache:
    """Reader / writer for ``SCENE/predictions``. Every file is written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # paths
    @property
    def meta_path(self) -> Path:
        return self.root / META

    def depth_path(self, stem: str) -> Path:
        return self.root / "depth" / f"{stem}.npy"

    def normal_path(self, stem: str) -> Path:
        return self.root / "normal" / f"{stem}.npy"

    # meta
    def exists(self) -> bool:
        return self.meta_path.is_file()

    def read_meta(self) -> CacheMeta:
        if not self.exists():
            raise CacheError(f"no prediction cache at {self.root} (missing {META})")
        try:
            obj = load_json(self.meta_path)
        except ValueError as e:
            raise CacheError(f"{self.meta_path}: not valid JSON ({e})") from None
        return CacheMeta.from_json(obj, self.meta_path)

    def write_meta(self, meta: CacheMeta) -> None:
        save_json(self.meta_path, meta.to_json())

    # views
    def has(self, stem: str, need_normal: bool = True) -> bool:
        ok = self.depth_path(stem).is_file()
        return ok and (not need_normal or self.normal_path(stem).is_file())

    def stems(self) -> list[str]:
        d = self.root / "depth"
        return sorted(p.stem for p in d.glob("*.npy")) if d.is_dir() else []

    def remove_partial_writes(self) -> int:
        """Delete temporary files a killed writer left behind (``atomic_write`` renames a finished
        file into place, so these never count as views); returns how many. One run writes a cache at
        a time."""
        temps = [p for d in (self.root, self.root / "depth", self.root / "normal") for p in d.glob(".*.tmp")]
        for p in temps:
            p.unlink(missing_ok=True)
        return len(temps)

    def write(self, stem: str, prediction: Prediction) -> None:
        """Store one view. Normal first, depth last: a view counts as present once its depth is."""
        if prediction.normal is not None:
            save_npy(self.normal_path(stem), prediction.normal.astype(np.float32))
        save_npy(self.depth_path(stem), prediction.depth.astype(np.float32))

    def read(self, stem: str, image_size: tuple[int, int] | None = None, meta: CacheMeta | None = None) -> Prediction:
        """Load one view and check it.

        Args:
            stem: the image's file name without extension.
            image_size: (width, height) the maps must have, or None to skip the check.
            meta: the cache's meta (read from disk when None).

        Raises:
            CacheError: missing file, wrong shape or dtype, no finite value, or a size that does
                not match the image. NaN / inf pixels are allowed and come back as NaN (invalid).
        """
        meta = meta or self.read_meta()
        dpath = self.depth_path(stem)
        if not dpath.is_file():
            raise CacheError(f"no cached depth for view {stem!r} ({dpath})")
        depth = _load_array(dpath)
        if depth.ndim != 2:
            raise CacheError(f"{dpath}: depth must be [H, W], got shape {depth.shape}")
        depth = depth.astype(np.float32)
        depth[~np.isfinite(depth)] = np.nan
        if not np.isfinite(depth).any():
            raise CacheError(f"{dpath}: no finite depth value")
        if image_size is not None and depth.shape != (image_size[1], image_size[0]):
            raise CacheError(
                f"{dpath}: size {depth.shape[1]}x{depth.shape[0]} does not match the image "
                f"{image_size[0]}x{image_size[1]}; predictions must be at the image's resolution"
            )
        normal = None
        npath = self.normal_path(stem)
        if meta.normal_model is not None and npath.is_file():
            normal = _load_array(npath).astype(np.float32)
            if normal.shape != depth.shape + (3,):
                raise CacheError(f"{npath}: normals must be [H, W, 3] = {depth.shape + (3,)}, got {normal.shape}")
            bad = ~np.isfinite(normal).all(axis=2)
            normal[bad] = np.nan
            norm = np.linalg.norm(normal, axis=2, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                normal = normal / norm
        return Prediction(depth=depth, kind=meta.depth_kind, normal=normal)


def _load_array(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise CacheError(f"{path}: not a readable .npy file ({e})") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise CacheError(f"{path}: expected float values, got {arr.dtype}")
    return arr
