"""Video in: decode a clip (PyAV / FFmpeg), score each frame's sharpness, measure camera motion,
and pick keyframes by content.

All measurements run on grey frames downscaled to an analysis size, in one pass, holding only a
window of frames in memory (cost linear in frames). Rotation metadata (the stream's display
matrix, as phones write it) is applied on decoding, so frames come out upright.

- sharpness: variance of the Laplacian of the grey frame (8-bit units);
- relative sharpness: a frame's sharpness over the median of its neighbours' (motion blur shows
  as a dip against the frames around it, whatever the scene's own texture);
- motion: median displacement of features tracked (pyramidal Lucas-Kanade, forward-backward
  checked) from one usable frame to the next, in units of the frame diagonal; where tracking is
  lost, a new segment starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")


def is_video(path: str | Path) -> bool:
    """True for a file whose suffix is a video container lotus3d reads."""
    p = Path(path)
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir()


@dataclass
class VideoInfo:
    """What the container says: size after rotation, frame count (0 when unknown), rate, rotation
    (degrees counter-clockwise applied to display the frames upright)."""

    path: Path
    width: int
    height: int
    frames: int
    fps: float
    duration_s: float
    rotation: int
    codec: str


def _open(path: Path):
    import av

    if not path.is_file():
        raise InputError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"the video {path} is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path} as a video ({e}); mp4, mov, webm, mkv and avi are supported") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Read the container's header and the first frame (for the rotation).

    Raises:
        InputError: missing, empty or unreadable file, no video stream, or no decodable frame.
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        first = next(_decode(container, path), None)
        if first is None:
            raise InputError(f"{path} holds no decodable video frame")
        rotation = int(round(first.rotation or 0)) % 360
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        if not duration and container.duration:
            duration = container.duration / 1e6
        frames = int(stream.frames or (round(duration * fps) if duration and fps else 0))
        return VideoInfo(path, w, h, frames, fps, duration, rotation, stream.codec_context.name)
    finally:
        container.close()


def _decode(container, path: Path):
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        yield from container.decode(stream)
    except av.FFmpegError as e:
        raise InputError(f"decoding {path} failed: {e}") from None


def iter_frames(path: str | Path) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, time in seconds, (H, W, 3) uint8 RGB upright) for every frame, in order."""
    path = Path(path)
    container = _open(path)
    try:
        for i, frame in enumerate(_decode(container, path)):
            rgb = frame.to_ndarray(format="rgb24")
            k = int(round(frame.rotation or 0)) // 90 % 4
            if k:
                rgb = np.ascontiguousarray(np.rot90(rgb, k))  # display matrix: counter-clockwise degrees
            t = float(frame.time) if frame.time is not None else float("nan")
            yield i, t, rgb
    finally:
        container.close()


# ------------------------------------------------------------------------------------ measuring
def fit_longest_side(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` (H, W[, C]) area-downscaled so that its longest side is at most ``size`` (0: unchanged)."""
    h, w = image.shape[:2]
    s = size / max(h, w) if size else 1.0
    if s >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def analysis_gray(rgb: np.ndarray, size: int) -> np.ndarray:
    """(h, w) uint8 grey image with its longest side at most ``size`` (area-averaged)."""
    return fit_longest_side(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian of an (h, w) uint8 grey image (higher is sharper)."""
    return float(cv2.Laplacian(gray, cv2.CV_32F, ksize=3).var())


@dataclass
class Track:
    """Feature motion from one grey frame to the next: median displacement over the frame
    diagonal, fraction of features tracked both ways, and whether tracking was lost."""

    motion: float
    tracked: float
    lost: bool


def track(prev: np.ndarray, nxt: np.ndarray, max_features: int = 400) -> Track:
    """Track corners of ``prev`` into ``nxt`` (both (h, w) uint8) with pyramidal Lucas-Kanade.

    A feature counts when the backward track lands within 1 pixel of where it started. Tracking is
    lost when fewer than 30 % of the corners (or fewer than 15) survive.
    """
    p0 = cv2.goodFeaturesToTrack(prev, max_features, 0.01, 7, blockSize=7)
    if p0 is None or len(p0) < 15:
        return Track(0.0, 0.0, True)
    lk = {"winSize": (21, 21), "maxLevel": 4, "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, nxt, p0, None, **lk)
    p0r, st2, _ = cv2.calcOpticalFlowPyrLK(nxt, prev, p1, None, **lk)
    good = (st1[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm((p0 - p0r)[:, 0], axis=1) < 1.0)
    frac = float(good.mean())
    if good.sum() < 15 or frac < 0.3:
        return Track(0.0, frac, True)
    diag = float(np.hypot(*prev.shape))
    return Track(float(np.median(np.linalg.norm((p1 - p0)[good, 0], axis=1))) / diag, frac, False)


@dataclass
class FrameScores:
    """Per decoded frame (N,): time, sharpness, relative sharpness, usable; per usable frame: its
    cumulative motion along its segment and the segment it belongs to (-1 for unusable frames)."""

    time_s: np.ndarray
    sharpness: np.ndarray
    relative: np.ndarray
    usable: np.ndarray
    motion: np.ndarray  # (N,) cumulative motion (diagonals) at usable frames, NaN elsewhere
    segment: np.ndarray  # (N,) int
    lost: int = 0  # tracking losses between consecutive usable frames
    min_sharpness: float = 0.0  # the absolute floor the usable frames passed
    seconds: float = 0.0


def score_frames(
    path: str | Path,
    analysis_size: int = 480,
    blur_window: int = 15,
    blur_ratio: float = 0.65,
    min_sharpness: float = 4.0,
    progress=None,
) -> FrameScores:
    """Decode ``path`` once: sharpness of every frame, which are usable (sharp enough absolutely and
    against their neighbours), and camera motion between consecutive usable frames.

    Memory holds ``blur_window`` + 1 analysis-size grey frames, whatever the video's length.
    ``progress``: a callable taking the number of frames just decoded (e.g. ``tqdm.update``).
    """
    import time

    t0 = time.perf_counter()
    times: list[float] = []
    scores: list[float] = []
    pending: dict[int, np.ndarray] = {}
    relative: list[float] = []
    usable: list[bool] = []
    motion: list[float] = []
    segment: list[int] = []
    state = {"last": None, "cum": 0.0, "seg": -1, "lost": 0}

    def decide(i: int) -> None:
        nb = scores[max(0, i - blur_window) : i] + scores[i + 1 : i + 1 + blur_window]
        rel = scores[i] / max(float(np.median(nb)), 1e-9) if nb else 1.0
        ok = scores[i] >= min_sharpness and rel >= blur_ratio
        relative.append(rel)
        usable.append(ok)
        g = pending.pop(i)
        if not ok:
            motion.append(float("nan"))
            segment.append(-1)
            return
        if state["last"] is None:
            state["seg"] += 1
        else:
            tr = track(state["last"], g)
            if tr.lost:
                state["seg"] += 1
                state["lost"] += 1
                state["cum"] = 0.0
            else:
                state["cum"] += tr.motion
        motion.append(state["cum"])
        segment.append(state["seg"])
        state["last"] = g

    for i, t, rgb in iter_frames(path):
        g = analysis_gray(rgb, analysis_size)
        times.append(t)
        scores.append(sharpness(g))
        pending[i] = g
        if i - blur_window >= 0:
            decide(i - blur_window)
        if progress is not None:
            progress(1)
    for i in range(len(relative), len(scores)):
        decide(i)
    if not scores:
        raise InputError(f"{path} holds no decodable video frame")
    return FrameScores(
        np.array(times),
        np.array(scores),
        np.array(relative),
        np.array(usable, bool),
        np.array(motion),
        np.array(segment, np.int64),
        lost=state["lost"],
        min_sharpness=min_sharpness,
        seconds=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------------------------- choosing
def select_keyframes(scores: FrameScores, step: float, min_frames: int, max_frames: int) -> np.ndarray:
    """Indices (sorted) of keyframes: usable frames spaced by about ``step`` of camera motion along
    the longest tracked segment, the sharpest frame near each target, between ``min_frames`` and
    ``max_frames`` of them.

    Raises:
        InputError: no sharp frame, fewer usable frames than ``min_frames``, or no stretch of
            overlapping frames (tracking lost between nearly every pair).
    """
    n_frames = len(scores.sharpness)
    if not scores.usable.any():
        raise InputError(
            f"no sharp frame in the video ({n_frames} frames; the sharpest scores "
            f"{scores.sharpness.max():.3g}, at least {scores.min_sharpness:.3g} needed): "
            "the video is blank, out of focus or blurred throughout"
        )
    segs, counts = np.unique(scores.segment[scores.usable], return_counts=True)
    extent = np.array([np.nanmax(scores.motion[scores.segment == s]) for s in segs])
    best = segs[np.argmax(extent + 1e-6 * counts)]
    members = np.flatnonzero(scores.segment == best)
    if len(segs) > 1:
        dropped = int(scores.usable.sum() - len(members))
        log.warning(
            "tracking was lost %d time(s) between consecutive sharp frames; using the longest stretch of "
            "overlapping frames (%d frames), dropping %d",
            scores.lost,
            len(members),
            dropped,
        )
    if len(members) < 3:
        raise InputError(
            f"too few frames that overlap: tracking between consecutive sharp frames was lost {scores.lost} "
            f"time(s) and the longest overlapping stretch has {len(members)} frame(s). Move the camera more "
            "slowly, or give photos instead"
        )
    if len(members) < min_frames:
        raise InputError(
            f"only {len(members)} sharp, overlapping frame(s) in the video; at least {min_frames} needed "
            f"(--min-frames; {int((~scores.usable).sum())} of {n_frames} frames were blurred or blank)"
        )
    cum = scores.motion[members]
    total = float(cum[-1] - cum[0])
    n = int(np.clip(round(total / step) + 1, min_frames, max_frames))
    n = min(n, len(members))
    spacing = total / max(n - 1, 1)
    picked: list[int] = []
    for target in cum[0] + spacing * np.arange(n):
        after = members if not picked else members[members > picked[-1]]
        if len(after) == 0:
            break
        d = np.abs(scores.motion[after] - target)
        near = after[d <= 0.4 * spacing] if spacing > 0 else after[:0]
        choice = near[np.argmax(scores.sharpness[near])] if len(near) else after[np.argmin(d)]
        picked.append(int(choice))
    picked_arr = np.array(sorted(set(picked)), np.int64)
    # fill up to n (motion concentrated in a few frames): farthest usable frame in motion, then index
    while len(picked_arr) < n:
        rest = np.setdiff1d(members, picked_arr)
        gap = np.min(np.abs(scores.motion[rest][:, None] - scores.motion[picked_arr][None]), 1)
        gap_i = np.min(np.abs(rest[:, None] - picked_arr[None]), 1)
        picked_arr = np.sort(np.append(picked_arr, rest[np.lexsort((-gap_i, -gap))[0]]))
    return picked_arr
