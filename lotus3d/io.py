"""File boundary: reading images, listing image folders, and writing files atomically.

Every file the project writes goes through :func:`atomic_write` (or the helpers built on it), so an
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

# EXIF orientation tag values -> operations on an (H, W, C) array, applied in order.
_EXIF_OPS = {
    2: ("flip_lr",),
    3: ("rot180",),
    4: ("flip_ud",),
    5: ("transpose",),
    6: ("rot270",),  # rotate 90 degrees clockwise
    7: ("transverse",),
    8: ("rot90",),  # rotate 90 degrees counter-clockwise
}


# ----------------------------------------------------------------------------------- writing files
_UMASK = os.umask(0)
os.umask(_UMASK)


def user_cache_dir() -> Path:
    """lotus3d's own cache folder (converted models, benchmark checkpoints): ``$LOTUS3D_CACHE``, else
    ``$XDG_CACHE_HOME/lotus3d``, else ``~/.cache/lotus3d``."""
    if os.environ.get("LOTUS3D_CACHE"):
        return Path(os.environ["LOTUS3D_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lotus3d"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as a .npy file atomically."""
    with atomic_write(path) as f:
        np.save(f, array)


def save_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def load_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write an (H, W, 3) or (H, W) image, float in [0, 1] or uint8, atomically (format from suffix;
    ``quality`` for JPEG)."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}.get(suffix, suffix.upper())
    with atomic_write(path) as f:
        Image.fromarray(image).save(f, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))


# ----------------------------------------------------------------------------------- reading images
def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name), refusing two files with one stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise InputError(
                f"two images share the stem {p.stem!r}: {seen[p.stem].name} and {p.name}; "
                "predictions are stored by stem, so rename one"
            )
        seen[p.stem] = p
    return paths


def exif_orientation(path) -> int:
    """The EXIF orientation tag (1..8) of an image file (path or file object); 1 when absent."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return int(value) if value in range(1, 9) else 1


def apply_exif_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate / flip an (H, W, ...) array so that it displays upright."""
    for op in _EXIF_OPS.get(orientation, ()):
        if op == "flip_lr":
            image = image[:, ::-1]
        elif op == "flip_ud":
            image = image[::-1]
        elif op == "rot180":
            image = image[::-1, ::-1]
        elif op == "rot90":
            image = np.rot90(image, 1)
        elif op == "rot270":
            image = np.rot90(image, -1)
        elif op == "transpose":
            image = np.swapaxes(image, 0, 1)
        elif op == "transverse":
            image = np.rot90(np.swapaxes(image, 0, 1), 2)
    return np.ascontiguousarray(image)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as upright RGB.

    Accepts JPEG, PNG, TIFF, BMP, WebP; 8- or 16-bit (or float TIFF); grayscale, RGB, RGBA
    (the alpha channel is dropped), palette images.

    Returns:
        (H, W, 3) float32 in [0, 1], EXIF orientation applied.

    Raises:
        InputError: naming the file when it is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    return decode_image(path.read_bytes(), str(path))


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """:func:`load_image` for the bytes of an image file (``name`` is used in error messages)."""
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if raw is None:
        raw = _load_with_pillow(io.BytesIO(data))
    else:
        raw = _bgr_to_rgb(raw)
    if raw is None:
        raise InputError(f"cannot read image {name}: not a decodable image file")
    image = _to_float_rgb(raw, name)
    return apply_exif_orientation(image, exif_orientation(io.BytesIO(data)))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as displayed (EXIF orientation applied), read from the header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception as e:
        raise InputError(f"cannot read image {path}: {e}") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _bgr_to_rgb(raw: np.ndarray) -> np.ndarray:
    if raw.ndim == 3 and raw.shape[2] == 3:
        return raw[:, :, ::-1]
    if raw.ndim == 3 and raw.shape[2] == 4:
        return raw[:, :, [2, 1, 0, 3]]
    return raw


def _load_with_pillow(path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            return np.asarray(im)
    except Exception:
        return None


def _to_float_rgb(raw: np.ndarray, path) -> np.ndarray:
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        img = raw.astype(np.float32) / 65535.0
    elif raw.dtype in (np.float32, np.float64):
        img = np.clip(raw.astype(np.float32), 0.0, 1.0)
    elif raw.dtype == np.bool_:
        img = raw.astype(np.float32)
    else:
        raise InputError(f"cannot read image {path}: unsupported pixel type {raw.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = np.repeat(img[:, :, :1], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] >= 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise InputError(f"cannot read image {path}: unexpected shape {raw.shape}")
    return np.ascontiguousarray(img)
