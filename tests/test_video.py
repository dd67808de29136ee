"""Video in: keyframe selection on rendered clips with known blurred frames, rotation metadata,
bad videos, ordered matching with loop closure, and `reconstruct VIDEO` end to end."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from lotus3d.cli import main
from lotus3d.configs import FramesConfig
from lotus3d.errors import InputError
from lotus3d.io import load_image
from lotus3d.mesh import Mesh, load_mesh
from lotus3d.metrics import evaluate_mesh, similarity_from_cameras, transform_mesh
from lotus3d.pipelines.frames import extract_frames
from lotus3d.scenes import preset_meshes
from lotus3d.sfm import read_model, sequential_pairs
from lotus3d.synthetic import merge_meshes
from lotus3d.synthetic_video import write_simulated_predictions, write_walkaround
from lotus3d.video import FrameScores, iter_frames, probe, select_keyframes

BLURRED = [9, 10, 23, 41, 42, 55, 68]
SMALL = FramesConfig(min_frames=10, max_frames=30)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """One loop of 80 frames (480 x 360, H.264) around the cow; the BLURRED frames motion-blurred."""
    path = tmp_path_factory.mktemp("video") / "walk.mp4"
    return write_walkaround(path, "orbit", 80, 480, 360, BLURRED, exposure_frames=4.0)


def _write_frames(path, frames: list[np.ndarray], fps: int = 10, codec: str = "libx264") -> None:
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for f in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def test_blurred_frames_are_never_picked_and_indices_recorded(clip, tmp_path):
    scene = tmp_path / "scene"
    r = extract_frames(clip.path, scene, SMALL, progress=False)
    assert not set(r.indices) & set(BLURRED)
    assert set(BLURRED) <= set(r.report["blurred"])  # detected as blurred, not merely skipped
    assert len(r.report["blurred"]) <= len(BLURRED) + 2  # sharp frames are not thrown away wholesale
    assert SMALL.min_frames <= len(r.names) <= SMALL.max_frames
    record = json.loads((scene / "frames.json").read_text())
    assert [p["index"] for p in record["picked"]] == r.indices == sorted(r.indices)
    assert sorted(p.name for p in (scene / "images").iterdir()) == r.names
    # the written keyframe is the decoded source frame it names
    source = {i: rgb for i, _, rgb in iter_frames(clip.path) if i in (r.indices[0], r.indices[-1])}
    for name, idx in [(r.names[0], r.indices[0]), (r.names[-1], r.indices[-1])]:
        assert np.abs(load_image(scene / "images" / name) * 255.0 - source[idx]).mean() < 3.0
        assert record["picked"][r.indices.index(idx)]["time_s"] == pytest.approx(idx / 30, abs=1e-3)
    # keyframes spread over the whole loop, not bunched at its start
    assert r.indices[0] < 10 and r.indices[-1] > 65
    # same video and settings: reused; other settings: picked again
    mtime = (scene / "images" / r.names[0]).stat().st_mtime_ns
    again = extract_frames(clip.path, scene, SMALL, progress=False)
    assert again.reused and (scene / "images" / r.names[0]).stat().st_mtime_ns == mtime
    fewer = extract_frames(clip.path, scene, FramesConfig(min_frames=5, max_frames=6), progress=False)
    assert not fewer.reused and 5 <= len(fewer.names) <= 6
    assert sorted(p.name for p in (scene / "images").iterdir()) == fewer.names


def test_rotation_metadata_is_applied(tmp_path):
    upright = write_walkaround(tmp_path / "a.mp4", "orbit", 3, 96, 64)
    phone = write_walkaround(tmp_path / "b.mp4", "orbit", 3, 96, 64, rotation=-90)
    info = probe(phone.path)
    assert info.rotation == 270 and (info.width, info.height) == (96, 64)
    for (_, _, a), (_, _, b) in zip(iter_frames(upright.path), iter_frames(phone.path), strict=True):
        assert a.shape == b.shape == (64, 96, 3)
        assert np.abs(a.astype(float) - b).mean() < 4.0
        assert np.abs(a.astype(float) - np.rot90(b, 2)).mean() > 10.0  # the content is not symmetric


@pytest.mark.parametrize("suffix, codec", [(".mov", "libx264"), (".webm", "libvpx-vp9"), (".mkv", "libx264")])
def test_other_containers_decode(tmp_path, suffix, codec):
    frames = [np.full((48, 64, 3), 20 * k, np.uint8) for k in range(6)]
    path = tmp_path / f"clip{suffix}"
    _write_frames(path, frames, codec=codec)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (64, 48, 0) and info.fps == pytest.approx(10)
    decoded = [rgb for _, _, rgb in iter_frames(path)]
    assert len(decoded) == 6
    assert np.allclose([d.mean() for d in decoded], [f.mean() for f in frames], atol=3)


def test_bad_videos_get_clear_errors(tmp_path, capsys):
    with pytest.raises(InputError, match="not found"):
        probe(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        probe(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 50)
    assert main(["frames", str(tmp_path / "text.mp4")]) == 2
    assert "cannot read" in capsys.readouterr().err
    black = tmp_path / "black.mp4"
    _write_frames(black, [np.zeros((48, 64, 3), np.uint8)] * 12)
    with pytest.raises(InputError, match="no sharp frame"):
        extract_frames(black, tmp_path / "black", progress=False)
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.mp4"  # every frame unrelated to the last: nothing overlaps
    _write_frames(noise, [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(12)])
    with pytest.raises(InputError, match="too few frames that overlap"):
        extract_frames(noise, tmp_path / "noise", FramesConfig(min_frames=3), progress=False)
    assert not (tmp_path / "noise" / "images").exists()  # nothing half-written
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "images" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="already holds photos"):
        extract_frames(black, photos, progress=False)


def test_too_few_sharp_frames(clip, tmp_path):
    with pytest.raises(InputError, match="at least 90 needed"):
        extract_frames(clip.path, tmp_path / "s", FramesConfig(min_frames=90, max_frames=100), progress=False)


def test_selection_spaces_by_motion_and_prefers_sharp_frames():
    n = 200
    motion = np.concatenate([np.linspace(0, 0.5, 100), np.full(100, 0.5)])  # the camera stops halfway
    sharp = np.full(n, 100.0)
    sharp[::7] = 150.0
    usable = np.ones(n, bool)
    usable[40:45] = False
    s = FrameScores(
        np.arange(n) / 30, sharp, np.ones(n), usable, np.where(usable, motion, np.nan), np.where(usable, 0, -1)
    )
    k = select_keyframes(s, step=0.05, min_frames=3, max_frames=50)
    assert len(k) == 11 and k.max() <= 100  # 0.5 / 0.05 + 1; none from the still second half
    assert not set(k) & set(range(40, 45))
    assert np.mean(sharp[k] == 150.0) > 0.6  # the sharper frame near each target
    assert len(select_keyframes(s, step=0.05, min_frames=3, max_frames=6)) == 6
    assert len(select_keyframes(s, step=0.05, min_frames=30, max_frames=50)) == 30


def test_sequential_pairs_close_the_loop_and_grow_linearly():
    rng = np.random.default_rng(0)
    places = [rng.integers(0, 255, (300, 128)).astype(np.uint8) for _ in range(12)]
    # 60 frames walking past 12 places and back to the first: frame i sees place (i // 5) % 12 ...
    order = [(i // 5) % 12 for i in range(55)] + [0] * 5
    desc = [places[p][rng.choice(300, 200, replace=False)] for p in order]
    pairs = sequential_pairs(desc, overlap=4, loops=2)
    assert all(a < b for a, b in pairs)
    assert {(i, i + 1) for i in range(59)} <= set(pairs)
    assert any(a < 5 and b >= 55 for a, b in pairs)  # the revisit is matched
    big = sequential_pairs([desc[i % 60] for i in range(240)], overlap=4, loops=2)
    assert len(big) <= 240 * (4 + 5 + 2)  # at most overlap + 5 + loops per frame


@pytest.mark.slow
def test_reconstruct_video_end_to_end(clip, tmp_path):
    """`lotus3d reconstruct CLIP.mp4`: keyframes, ordered matching with loop closure, every keyframe
    registered, a mesh close to the truth, the selection in the HTML report."""
    video = tmp_path / "walk.mp4"
    video.write_bytes(clip.path.read_bytes())
    scene = tmp_path / "walk"
    frames = extract_frames(video, scene, SMALL, progress=False)
    cams = {n: clip.cameras[i] for n, i in zip(frames.names, frames.indices, strict=True)}
    write_simulated_predictions(clip.renderer, scene, cams)  # simulated: not Lotus output
    args = ["reconstruct", str(video), "--min-frames", "10", "--max-frames", "30", "--no-texture"]
    assert main(args + ["--formats", "ply"]) == 0
    report = json.loads((scene / "lotus3d" / "report.json").read_text())
    assert report["video"]["picked"] == len(frames.names)
    assert report["sfm"]["matcher"] == "sequential"
    assert report["sfm"]["registered"] == len(frames.names)
    index = {name: i for i, name in enumerate(frames.names)}
    lines = (scene / "lotus3d" / "work" / "colmap" / "pairs.txt").read_text().splitlines()
    pairs = {tuple(sorted(index[name] for name in line.split())) for line in lines}
    n = len(frames.names)
    window = set(sequential_pairs([np.zeros((0, 128), np.uint8)] * n))  # the capture-order pairs alone
    loop = {(a, b) for a, b in pairs - window if a < 3 and b >= n - 4}
    assert loop, "no pair between the first and the last frames beyond the capture-order window"
    est = read_model(scene / "lotus3d" / "sparse").cameras
    gt = merge_meshes(preset_meshes("orbit"))
    pred = transform_mesh(load_mesh(scene / "lotus3d" / "mesh.ply"), *similarity_from_cameras(est, cams))
    m = evaluate_mesh(pred, Mesh(gt.vertices, gt.faces), cameras=list(cams.values()), n_samples=40000)
    assert m["fscore"] > 0.7
    from lotus3d.report import write_report

    page = write_report(scene / "lotus3d").read_text()
    assert "keyframes picked of 80 frames" in page and 'alt="keyframes"' in page
