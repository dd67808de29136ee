"""Poses and sparse points: run COLMAP (pycolmap) or read an existing model.

The boundary converts COLMAP's conventions to ours: COLMAP puts the centre of the top-left pixel
at (0.5, 0.5), OpenCV at (0, 0), so principal points and 2D observations are shifted by -0.5 on
reading and +0.5 on writing. Poses stay world-to-camera (COLMAP's ``cam_from_world``).
Distorted camera models come with undistortion maps to a pinhole camera of the same focal length
and principal point (:func:`undistort`), applied to images and predictions alike.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from .errors import InputError, ReconstructionError
from .types import Camera, pixel_rays

log = logging.getLogger(__name__)

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


@dataclass
class ViewObservations:
    """The sparse points one view observes (from the model's tracks).

    uv (N, 2) OpenCV pixel coordinates of the observation; point_ids (N,) indices into
    ``SfMModel.points``.
    """

    uv: np.ndarray
    point_ids: np.ndarray


@dataclass
class SfMModel:
    """A registered set of views: cameras by image name, sparse points, per-view observations.

    ``undistort_maps[name]`` is (map_x, map_y) float32 (H, W) from the pinhole image to the
    original one, or absent for pinhole cameras.
    """

    cameras: dict[str, Camera]
    points: np.ndarray  # (P, 3) world
    colors: np.ndarray  # (P, 3) uint8
    observations: dict[str, ViewObservations]
    unregistered: list[str] = field(default_factory=list)
    undistort_maps: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    point_errors: np.ndarray | None = None  # (P,) reprojection error in pixels

    @property
    def names(self) -> list[str]:
        return sorted(self.cameras)

    def point_depths(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(uv (N, 2), z (N,)): a view's observations and their depths along its z axis."""
        obs = self.observations.get(name)
        if obs is None or len(obs.point_ids) == 0:
            return np.zeros((0, 2)), np.zeros(0)
        T = self.cameras[name].world_to_camera
        pc = self.points[obs.point_ids] @ T[:3, :3].T + T[:3, 3]
        return obs.uv, pc[:, 2]


# --------------------------------------------------------------------------------------- reading
def read_model(path: str | Path) -> SfMModel:
    """Read a COLMAP model folder (text or binary) with pycolmap.

    Raises:
        InputError: the folder is missing or holds no readable model.
    """
    import pycolmap

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"COLMAP model folder not found: {path}")
    has_txt = (path / "cameras.txt").is_file() and (path / "images.txt").is_file()
    has_bin = (path / "cameras.bin").is_file() and (path / "images.bin").is_file()
    if not (has_txt or has_bin):
        raise InputError(f"{path} is not a COLMAP model (needs cameras/images/points3D .txt or .bin)")
    try:
        rec = pycolmap.Reconstruction(str(path))
    except Exception as e:
        raise InputError(f"cannot read the COLMAP model in {path}: {e}") from None
    return from_pycolmap(rec)


def from_pycolmap(rec) -> SfMModel:
    """Convert a ``pycolmap.Reconstruction`` to an :class:`SfMModel` (OpenCV pixel convention)."""
    ids = sorted(rec.points3D.keys())
    index = {pid: i for i, pid in enumerate(ids)}
    points = np.array([rec.points3D[p].xyz for p in ids], np.float64).reshape(-1, 3)
    colors = np.array([rec.points3D[p].color for p in ids], np.uint8).reshape(-1, 3)
    errors = np.array([rec.points3D[p].error for p in ids], np.float64)
    cameras, observations, maps = {}, {}, {}
    for image_id in rec.reg_image_ids() if callable(getattr(rec, "reg_image_ids", None)) else rec.images:
        image = rec.images[image_id]
        cam = rec.cameras[image.camera_id]
        T = np.eye(4)
        T[:3, :] = image.cam_from_world().matrix() if callable(image.cam_from_world) else image.cam_from_world.matrix()
        K, m = pinhole_for(cam)
        cameras[image.name] = Camera(K=K, world_to_camera=T, width=int(cam.width), height=int(cam.height))
        if m is not None:
            maps[image.name] = m
        uv, pids = [], []
        for p2d in image.points2D:
            if p2d.has_point3D() and p2d.point3D_id in index:
                uv.append(np.asarray(p2d.xy, np.float64) - 0.5)
                pids.append(index[p2d.point3D_id])
        uv_arr = np.array(uv, np.float64).reshape(-1, 2)
        if m is not None and len(uv_arr):
            uv_arr = _undistort_points(cam, uv_arr, K)
        observations[image.name] = ViewObservations(uv_arr, np.array(pids, np.int64))
    return SfMModel(cameras, points, colors, observations, undistort_maps=maps, point_errors=errors)


def pinhole_for(cam) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """(K in OpenCV pixels, undistortion maps or None) for a pycolmap camera.

    Distorted models keep their focal length and principal point; the maps give, for every pixel
    of the pinhole image, where to sample the original image (``cv2.remap``).
    """
    K = np.asarray(cam.calibration_matrix(), np.float64).copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    if cam.model_name in PINHOLE_MODELS:
        return K, None
    w, h = int(cam.width), int(cam.height)
    rays = pixel_rays(K, w, h).reshape(-1, 3)
    src = np.asarray(cam.img_from_cam(rays), np.float64).reshape(h, w, 2) - 0.5
    return K, (src[..., 0].astype(np.float32), src[..., 1].astype(np.float32))


def _undistort_points(cam, uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Distorted OpenCV pixel coordinates -> pinhole pixel coordinates under K."""
    rays = np.asarray(cam.cam_from_img(uv + 0.5), np.float64).reshape(-1, 2)
    return np.stack([rays[:, 0] * K[0, 0] + K[0, 2], rays[:, 1] * K[1, 1] + K[1, 2]], -1)


def undistort(array: np.ndarray, maps: tuple[np.ndarray, np.ndarray] | None, nearest: bool = False) -> np.ndarray:
    """Resample an (H, W, ...) image or prediction into the pinhole camera (no-op without maps).

    ``nearest`` for depth / normals (no mixing across edges), bilinear for colour images.
    Pixels that map outside the original image become NaN (float) or 0.
    """
    if maps is None:
        return array
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    border = np.nan if np.issubdtype(array.dtype, np.floating) else 0
    return cv2.remap(array, maps[0], maps[1], interp, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


# --------------------------------------------------------------------------------------- writing
def write_model_text(model: SfMModel, path: str | Path) -> None:
    """Write ``model`` as a COLMAP text model (PINHOLE cameras, one per view), atomically per file."""
    from .io import atomic_write

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    names = model.names
    per_view_pts: dict[str, list[tuple[float, float, int]]] = {}
    tracks: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(model.points))}
    for img_id, name in enumerate(names, start=1):
        obs = model.observations.get(name, ViewObservations(np.zeros((0, 2)), np.zeros(0, np.int64)))
        rows = []
        for k, (uv, pid) in enumerate(zip(obs.uv, obs.point_ids, strict=True)):
            rows.append((uv[0] + 0.5, uv[1] + 0.5, int(pid) + 1))
            tracks[int(pid)].append((img_id, k))
        per_view_pts[name] = rows
    with atomic_write(path / "cameras.txt", "w") as f:
        f.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        for cid, name in enumerate(names, start=1):
            c = model.cameras[name]
            params = (c.K[0, 0], c.K[1, 1], c.K[0, 2] + 0.5, c.K[1, 2] + 0.5)
            f.write(f"{cid} PINHOLE {c.width} {c.height} {_nums(params)}\n")
    with atomic_write(path / "images.txt", "w") as f:
        f.write(
            "# Image list with two lines of data per image:\n"
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
        )
        for img_id, name in enumerate(names, start=1):
            T = model.cameras[name].world_to_camera
            q = rotation_to_quaternion(T[:3, :3])
            t = T[:3, 3]
            f.write(f"{img_id} {_nums(q)} {_nums(t)} {img_id} {name}\n")
            f.write(" ".join(f"{x:.4f} {y:.4f} {pid}" for x, y, pid in per_view_pts[name]) + "\n")
    with atomic_write(path / "points3D.txt", "w") as f:
        f.write(
            "# 3D point list with one line of data per point:\n"
            "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
        )
        errs = model.point_errors if model.point_errors is not None else np.zeros(len(model.points))
        for i, (p, c) in enumerate(zip(model.points, model.colors, strict=True)):
            if not tracks[i]:
                continue
            tr = " ".join(f"{a} {b}" for a, b in tracks[i])
            f.write(f"{i + 1} {_nums(p)} {c[0]} {c[1]} {c[2]} {_nums([errs[i]])} {tr}\n")


def _nums(values) -> str:
    return " ".join(f"{float(x):.17g}" for x in values)


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (w, x, y, z) unit quaternion with w >= 0 (COLMAP's order)."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q


# ----------------------------------------------------------------------------------- running SfM
Matcher = Literal["auto", "exhaustive", "sequential"]


def run_sfm(
    image_dir: str | Path,
    work_dir: str | Path,
    matcher: Matcher = "auto",
    camera_mode: Literal["auto", "single", "per_image"] = "auto",
    max_image_size: int = 1600,
    num_threads: int = -1,
    seed: int = 0,
    mapper: Literal["incremental", "global"] = "incremental",
) -> tuple[SfMModel, dict]:
    """SIFT features, matching and incremental mapping with pycolmap; keeps the largest model.

    Args:
        matcher: "auto" = exhaustive up to 60 images, sequential beyond; "sequential" treats the
            names' order as the capture order (video frames): see :func:`sequential_pairs`.
        camera_mode: COLMAP's grouping of images into cameras; "auto" shares a camera between
            images of one size and EXIF focal length.
        max_image_size: SIFT runs on images downscaled to this longest edge (keypoints are
            reported at full resolution).
        mapper: "incremental" (COLMAP) or "global" (GLOMAP in pycolmap; for thousands of images).

    Returns:
        (model, report) where report has registered / total counts and the unregistered names.

    Raises:
        ReconstructionError: fewer than two images registered, naming those that failed and why.
    """
    import pycolmap

    pycolmap.logging.minloglevel = 2 if log.getEffectiveLevel() > logging.DEBUG else 0  # COLMAP's own log
    image_dir, work_dir = Path(image_dir), Path(work_dir)
    names = sorted(p.name for p in image_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    db = work_dir / "database.db"
    mode = {
        "auto": pycolmap.CameraMode.AUTO,
        "single": pycolmap.CameraMode.SINGLE,
        "per_image": pycolmap.CameraMode.PER_IMAGE,
    }[camera_mode]
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    extraction.num_threads = num_threads
    pycolmap.extract_features(
        db, image_dir, image_names=names, camera_mode=mode, extraction_options=extraction, device=pycolmap.Device.cpu
    )
    chosen = ("exhaustive" if len(names) <= 60 else "sequential") if matcher == "auto" else matcher
    # Two-view verification. COLMAP calls a pair "planar or panoramic" when a homography explains
    # 80 % of the fundamental matrix's inliers, and then keeps only the homography's: on a floor or a
    # table (most features on one plane) the objects' matches are thrown away. At 95 % only truly
    # planar or rotating pairs are; measured on a rendered walk-around clip, 3.5x more sparse points
    # on the objects (546 vs 158), the mesh F-score 0.90 -> 0.99. GLOMAP's global mapper, though,
    # broke on it (a rendered orbit: camera centres off by half the scene instead of 0.2 %), so it
    # keeps COLMAP's 80 %. RANSAC is seeded: a run is reproducible.
    verification = pycolmap.TwoViewGeometryOptions()
    verification.max_H_inlier_ratio = 0.95 if mapper == "incremental" else 0.8
    verification.ransac.random_seed = seed
    if chosen == "exhaustive":
        pycolmap.match_exhaustive(db, verification_options=verification, device=pycolmap.Device.cpu)
    else:
        pairs = sequential_pairs(_image_descriptors(db, names))
        pairs_file = work_dir / "pairs.txt"
        pairs_file.write_text("".join(f"{names[a]} {names[b]}\n" for a, b in pairs))
        options = pycolmap.ImportedPairingOptions()
        options.match_list_path = str(pairs_file)
        pycolmap.match_image_pairs(
            db, pairing_options=options, verification_options=verification, device=pycolmap.Device.cpu
        )
    if mapper == "global":
        models = pycolmap.global_mapping(db, image_dir, work_dir / "sparse")
    else:
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = num_threads
        options.random_seed = seed
        options.min_model_size = 2
        models = pycolmap.incremental_mapping(db, image_dir, work_dir / "sparse", options)
    best = max(models.values(), key=lambda r: r.num_reg_images(), default=None)
    registered = [] if best is None else sorted(best.images[i].name for i in best.reg_image_ids())
    failed = [n for n in names if n not in set(registered)]
    report = {
        "matcher": chosen,
        "mapper": mapper,
        "registered": len(registered),
        "total": len(names),
        "unregistered": failed,
        "num_points": 0 if best is None else best.num_points3D(),
    }
    if len(registered) < 2:
        reasons = _feature_counts(db)
        detail = ", ".join(f"{n} ({reasons.get(n, 0)} features)" for n in failed)
        raise ReconstructionError(
            f"COLMAP registered {len(registered)} of {len(names)} images; at least two are needed. "
            f"Not registered: {detail}. Too few matching features between the photos: use photos with more "
            "overlap and texture, or give poses with --colmap PATH."
        )
    model = from_pycolmap(best)
    model.unregistered = failed
    return model, report


def sequential_pairs(
    descriptors: list[np.ndarray], overlap: int = 8, loops: int = 3, words: int = 256, seed: int = 0
) -> list[tuple[int, int]]:
    """Image pairs to match for frames in capture order, with loop closure; (a, b) with a < b.

    Each frame is paired with the next ``overlap`` frames, with frames 2, 4, ... 32 further on (as
    COLMAP's quadratic overlap), and with its ``loops`` most similar frames outside the window: a bag of
    visual words (``words`` k-means centres of the SIFT descriptors, tf-idf weighted, cosine
    similarity), which finds the frames that revisit a place, as a vocabulary tree would. At most
    ``overlap + 5 + loops`` pairs per frame: linear in the frames (the N x N similarity matrix is
    tiny next to matching).

    Args:
        descriptors: per frame, in order, its (n_i, 128) SIFT descriptors.
    """
    from scipy.cluster.vq import kmeans2

    n = len(descriptors)
    pairs = set()
    for i in range(n):
        for j in range(i + 1, min(n, i + overlap + 1)):
            pairs.add((i, j))
        for k in range(1, 6):  # 2, 4, ..., 32 frames beyond the window
            if i + overlap + 2**k < n:
                pairs.add((i, i + overlap + 2**k))
    rng = np.random.default_rng(seed)
    stacked = [d.astype(np.float32) for d in descriptors if len(d)]
    if loops <= 0 or n <= overlap + 1 or not stacked:
        return sorted(pairs)
    sample = np.concatenate(stacked)
    sample = sample[rng.choice(len(sample), min(len(sample), 40 * words), replace=False)]
    with warnings.catch_warnings():  # an empty cluster is harmless here: its word is never used
        warnings.simplefilter("ignore")
        centres, _ = kmeans2(sample, min(words, len(sample)), iter=10, minit="points", seed=seed)
    hist = np.zeros((n, len(centres)))
    c2 = (centres**2).sum(1)
    for i, d in enumerate(descriptors):
        if len(d):
            word = np.argmin(c2[None] - 2 * d.astype(np.float32) @ centres.T, 1)
            hist[i] = np.bincount(word, minlength=len(centres))
    idf = np.log(n / np.maximum((hist > 0).sum(0), 1))
    v = hist * idf
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    for i in range(n):
        far = np.abs(np.arange(n) - i) > overlap
        cand = np.flatnonzero(far)
        for j in cand[np.argsort(-sim[i, cand])[:loops]]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _image_descriptors(db: Path, names: list[str]) -> list[np.ndarray]:
    """Per name (in order), its SIFT descriptors (n, 128) uint8 from a COLMAP database."""
    import pycolmap

    database = pycolmap.Database.open(str(db))
    try:
        out = []
        for name in names:
            image = database.read_image_with_name(name)
            d = None if image is None else database.read_descriptors(image.image_id)
            out.append(np.zeros((0, 128), np.uint8) if d is None else np.asarray(d.data, np.uint8).reshape(-1, 128))
        return out
    finally:
        database.close()


def _feature_counts(db: Path) -> dict[str, int]:
    """Keypoints per image name in a COLMAP database (for error messages)."""
    import sqlite3

    try:
        with sqlite3.connect(db) as con:
            rows = con.execute(
                "SELECT images.name, keypoints.rows FROM images LEFT JOIN keypoints "
                "ON images.image_id = keypoints.image_id"
            ).fetchall()
        return {name: int(n or 0) for name, n in rows}
    except sqlite3.Error:
        return {}
