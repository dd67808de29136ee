"""Video -> scene folder: keyframes in SCENE/images and what was measured in SCENE/frames.json.

Steps: 1. probe the video, 2. decode once, scoring sharpness and camera motion per frame,
3. choose keyframes (sharp, spaced by motion), 4. decode again and write them (JPEG) into a
temporary folder that replaces SCENE/images in one rename, 5. frames.json. A second run with the
same video and settings reuses the folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lotus3d.configs import FramesConfig, to_dict
from lotus3d.errors import InputError
from lotus3d.io import load_json, save_image, save_json
from lotus3d.video import VideoInfo, fit_longest_side, iter_frames, probe, score_frames, select_keyframes

log = logging.getLogger(__name__)

FRAMES_JSON = "frames.json"


@dataclass
class FramesResult:
    """The scene folder, the written keyframe names (in order), their source frame indices, the
    video's header and the content of ``frames.json``; ``reused`` when an earlier run's frames stood."""

    scene: Path
    names: list[str]
    indices: list[int]
    info: VideoInfo
    report: dict
    reused: bool = False


def _source_id(video: Path) -> dict:
    st = video.stat()
    return {"path": str(video.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def extract_frames(
    video: str | Path,
    scene: str | Path | None = None,
    cfg: FramesConfig | None = None,
    progress: bool = True,
    force: bool = False,
) -> FramesResult:
    """Pick keyframes of ``video`` into ``scene``/images (``frame_<index>.jpg``) and ``scene``/frames.json;
    ``scene`` defaults to the video's path without its suffix (``clip.mp4`` -> ``clip/``).

    Raises:
        InputError: unreadable / empty video, no sharp frame, too few (overlapping) frames, or
            SCENE/images already holding photos that did not come from a video.
    """
    cfg = cfg or FramesConfig()
    if cfg.min_frames < 2 or cfg.max_frames < cfg.min_frames:
        raise InputError(f"need 2 <= --min-frames <= --max-frames (got {cfg.min_frames}, {cfg.max_frames})")
    video = Path(video)
    scene = Path(scene) if scene is not None else video.with_suffix("")
    # 1. the header (and a first frame): a video we can read
    info = probe(video)
    images = scene / "images"
    record = scene / FRAMES_JSON
    previous = load_json(record) if record.is_file() else None
    if images.exists() and previous is None and any(images.iterdir()):
        raise InputError(f"{images} already holds photos not extracted from a video; choose another output folder")
    settings = to_dict(cfg)
    if (
        not force
        and previous is not None
        and previous.get("source") == _source_id(video)
        and previous.get("settings") == settings
        and all((images / p["name"]).is_file() for p in previous.get("picked", []))
    ):
        picked = previous["picked"]
        return FramesResult(scene, [p["name"] for p in picked], [p["index"] for p in picked], info, previous, True)

    # 2. one decoding pass: sharpness and motion
    bar = tqdm(total=info.frames or None, desc="scoring frames", unit="frame", disable=not progress)
    try:
        scores = score_frames(
            video, cfg.analysis_size, cfg.blur_window, cfg.blur_ratio, cfg.min_sharpness, progress=bar.update
        )
    finally:
        bar.close()
    # 3. keyframes
    keys = select_keyframes(scores, cfg.step, cfg.min_frames, cfg.max_frames)
    # 4. second pass: write the chosen frames into a temporary folder, then swap it in
    t0 = time.perf_counter()
    scene.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".images.", dir=scene))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the images folder is not
    names = [f"frame_{int(i):05d}.jpg" for i in keys]
    wanted = dict(zip((int(i) for i in keys), names, strict=True))
    try:
        with tqdm(total=len(keys), desc="writing keyframes", unit="frame", disable=not progress) as wbar:
            for i, _, rgb in iter_frames(video):
                if i in wanted:
                    save_image(tmp / wanted[i], fit_longest_side(rgb, cfg.max_side), quality=cfg.quality)
                    wbar.update(1)
                if i >= keys[-1]:
                    break
        written = sorted(p.name for p in tmp.iterdir())
        if written != sorted(names):
            raise InputError(f"{video}: decoding a second time gave different frames; the file may be damaged")
        if images.exists():
            shutil.rmtree(images)
        os.replace(tmp, images)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_s = time.perf_counter() - t0

    # 5. the record
    def r(x: float) -> float:
        return round(float(x), 4)

    report = {
        "video": str(video),
        "source": _source_id(video),
        "header": {
            "width": info.width,
            "height": info.height,
            "frames": info.frames,
            "fps": info.fps,
            "duration_s": info.duration_s,
            "rotation": info.rotation,
            "codec": info.codec,
        },
        "settings": settings,
        "decoded_frames": len(scores.sharpness),
        "picked": [
            {
                "name": n,
                "index": int(i),
                "time_s": r(scores.time_s[i]),
                "sharpness": r(scores.sharpness[i]),
                "relative_sharpness": r(scores.relative[i]),
                "motion": r(scores.motion[i]),
            }
            for n, i in zip(names, keys, strict=True)
        ],
        "blurred": [int(i) for i in (~scores.usable).nonzero()[0]],
        "tracking_lost": scores.lost,
        "per_frame": {
            "time_s": [r(t) for t in scores.time_s],
            "sharpness": [r(s) for s in scores.sharpness],
            "relative_sharpness": [r(s) for s in scores.relative],
            "motion": [None if m != m else r(m) for m in scores.motion],
        },
        "seconds": {"score": round(scores.seconds, 3), "write": round(write_s, 3)},
    }
    save_json(record, report)
    return FramesResult(scene, names, [int(i) for i in keys], info, report)
