"""`lotus3d reconstruct` end to end on rendered scenes with exact ground truth."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import trimesh
from PIL import Image

from lotus3d.cache import PredictionCache
from lotus3d.cli import main
from lotus3d.configs import ReconstructConfig
from lotus3d.errors import CacheError, InputError, ReconstructionError
from lotus3d.mesh import load_mesh
from lotus3d.metrics import evaluate_mesh, similarity_from_cameras, transform_mesh
from lotus3d.pipelines.reconstruct import reconstruct
from lotus3d.scenes import write_scene
from lotus3d.sfm import read_model
from lotus3d.types import Prediction


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """16 views 320x240 of the cow on a floor, exact poses, 20 % SfM outliers, realistic simulated predictions."""
    root = tmp_path_factory.mktemp("orbit") / "scene"
    write_scene(root, "orbit", 16, 320, 240, seed=3, sparse_points=1500, outlier_fraction=0.2)
    return root


def _copy(scene, dst, predictions=True, sparse=True):
    dst.mkdir(parents=True)
    shutil.copytree(scene / "images", dst / "images")
    if sparse:
        shutil.copytree(scene / "sparse", dst / "sparse")
    if predictions:
        shutil.copytree(scene / "predictions", dst / "predictions")
    return dst


def _score(scene, out, threshold_fraction=0.02, transform=None):
    gt = load_mesh(scene / "gt" / "mesh.ply")
    cams = list(read_model(scene / "sparse" / "0").cameras.values())
    pred = load_mesh(out / "mesh.ply")
    if transform is not None:
        pred = transform_mesh(pred, *transform)
    return evaluate_mesh(pred, gt, cameras=cams, n_samples=60000, threshold_fraction=threshold_fraction)


def test_reconstruction_beats_naive_least_squares(scene, tmp_path):
    ours = reconstruct(scene, tmp_path / "ours", progress=False)
    naive = reconstruct(
        scene, tmp_path / "naive", ReconstructConfig(alignment="lstsq", local_alignment=False), progress=False
    )
    assert not ours.report["excluded_views"]
    m_ours, m_naive = _score(scene, tmp_path / "ours", 0.01), _score(scene, tmp_path / "naive", 0.01)
    assert m_ours["fscore"] > 0.85
    assert m_ours["fscore"] > m_naive["fscore"] + 0.05
    assert m_ours["chamfer"] < 0.7 * m_naive["chamfer"]
    assert naive.report["views"]["view_000.png"]["method"] == "lstsq"
    # every stage measured on points no fit saw (20 % of them outliers, each capped at 0.05): the local
    # correction clearly lowers the global fit's error
    heldout = ours.report["heldout"]
    assert heldout["local"] < 0.8 * heldout["global"]
    view = next(iter(ours.report["views"].values()))
    assert view["heldout"]["points"] > 5 and {"global", "local"} <= set(view["heldout"])
    (round1,) = ours.report["refinement"]  # one round by default, kept only if the held-out points improve
    assert round1["accepted"] == (round1["heldout_after"] < round1["heldout_before"])


def test_refinement_never_worsens_held_out_points_on_an_exact_scene(scene, tmp_path):
    """Fusing exact depth is already right: refinement rounds may not make the held-out points worse
    (a round that would is not kept), and the depth stays exact."""
    from lotus3d.bench.reconstruct import gt_depth_cache

    exact = _copy(scene, tmp_path / "exact", predictions=False)
    gt_depth_cache(scene, exact)
    cfg = ReconstructConfig(alignment="none", local_alignment=False, refine_rounds=3)
    rep = reconstruct(exact, tmp_path / "out", cfg, progress=False).report
    rounds = rep["refinement"]
    assert rounds and all(r["accepted"] == (r["heldout_after"] < r["heldout_before"]) for r in rounds)
    assert all(r["accepted"] for r in rounds[:-1])  # it stops at the first round that does not help
    kept = [r["heldout_after"] for r in rounds if r["accepted"]]
    assert all(b <= a for a, b in zip([rounds[0]["heldout_before"], *kept], kept, strict=False))
    for name in list(rep["views"])[:4]:
        stem = name.rsplit(".", 1)[0]
        d, gt = np.load(tmp_path / "out" / "depth" / f"{stem}.npy"), np.load(scene / "gt" / "depth" / f"{stem}.npy")
        ok = np.isfinite(d) & np.isfinite(gt)
        assert np.median(np.abs(np.log(d[ok] / gt[ok]))) < 0.003


def test_alignment_none_needs_metric_depth(scene, tmp_path):
    with pytest.raises(InputError, match="alignment 'none' needs"):
        reconstruct(scene, tmp_path / "o", ReconstructConfig(alignment="none"), progress=False)


def test_outputs_follow_the_contract_and_resume(scene, tmp_path):
    out = tmp_path / "out"
    r = reconstruct(scene, out, progress=False)
    for f in ("mesh.ply", "mesh.glb", "report.json", "sparse/cameras.txt", "sparse/images.txt", "sparse/points3D.txt"):
        assert (out / f).is_file(), f
    d = np.load(out / "depth" / "view_000.npy")
    gt = np.load(scene / "gt" / "depth" / "view_000.npy")
    assert d.dtype == np.float32 and d.shape == (240, 320)
    both = np.isfinite(d) & np.isfinite(gt)
    assert np.median(np.abs(d[both] - gt[both]) / gt[both]) < 0.03  # aligned depth is in scene units
    rep = json.loads((out / "report.json").read_text())
    v = rep["views"]["view_003.png"]
    assert {"num_points", "num_inliers", "scale", "shift", "residual_percentiles"} <= set(v)
    assert v["num_inliers"] < v["num_points"]  # outliers were rejected
    assert set(rep["timings_s"]) >= {"sfm", "predict", "align", "fuse", "mesh"}
    assert rep["settings"]["reconstruct"]["alignment"] == "robust" and "open3d" in rep["versions"]
    assert rep["sfm"]["registered"] == 16 and r.report["aligned_views"] == 16
    # the GLB carries a UV texture baked from the photos, the PLY vertex colours
    glb = trimesh.load(out / "mesh.glb", force="mesh", process=False)
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals) and glb.visual.uv.shape == (len(glb.vertices), 2)
    assert rep["texture"]["size"] <= 4096 and rep["texture"]["patches"] > 0 and "texture" in rep["timings_s"]
    assert load_mesh(out / "mesh.ply").colors is not None
    # photometric refinement ran before the texture and says what each pass did
    photo = rep["photometric"]
    assert "photometric" in rep["timings_s"] and photo["passes"] and "accepted" in photo
    assert all(p["kept"] == (p["variance_after"] < p["variance_before"]) for p in photo["passes"])
    mtime = (out / "mesh.ply").stat().st_mtime_ns
    again = reconstruct(scene, out, progress=False)
    assert (out / "mesh.ply").stat().st_mtime_ns == mtime and "fuse" not in again.report["timings_s"]
    assert again.report["photometric"] == photo  # a resumed run reports what the finished stage did
    reconstruct(scene, out, force=True, progress=False)
    assert (out / "mesh.ply").stat().st_mtime_ns != mtime
    plain = reconstruct(scene, out, cfg=ReconstructConfig(texture=False, photometric=False), progress=False)
    assert not plain.report["texture"] and "texture" not in plain.report["timings_s"]  # settings changed: redone
    assert not plain.report["photometric"] and "photometric" not in plain.report["timings_s"]
    assert not isinstance(trimesh.load(out / "mesh.glb", force="mesh").visual, trimesh.visual.TextureVisuals)


def test_pycolmap_poses_end_to_end(tmp_path):
    """No model given: SIFT + matching + mapping with pycolmap, then the same pipeline."""
    scene = tmp_path / "gt"
    write_scene(scene, "orbit", 24, 480, 360, seed=3, sparse_points=1500)
    s = _copy(scene, tmp_path / "s", sparse=False)
    out = tmp_path / "out"
    r = reconstruct(s, out, progress=False)
    assert r.report["sfm"]["source"] == "pycolmap"
    assert r.report["sfm"]["registered"] >= 20
    est = read_model(out / "sparse").cameras
    ref = read_model(scene / "sparse" / "0").cameras
    m = _score(scene, out, transform=similarity_from_cameras(est, ref))
    assert m["fscore"] > 0.75


def test_view_without_points_is_excluded_and_reported(scene, tmp_path):
    s = _copy(scene, tmp_path / "s")
    images = (s / "sparse/0/images.txt").read_text().splitlines()
    # drop every observation of the first image (its POINTS2D line)
    first = next(i for i, line in enumerate(images) if line and not line.startswith("#"))
    images[first + 1] = ""
    (s / "sparse/0/images.txt").write_text("\n".join(images) + "\n")
    pts = []
    for line in (s / "sparse/0/points3D.txt").read_text().splitlines():
        if line.startswith("#"):
            pts.append(line)
            continue
        f = line.split()
        track = [(f[i], f[i + 1]) for i in range(8, len(f), 2) if f[i] != "1"]
        if len(track) >= 2:
            pts.append(" ".join(f[:8] + [x for t in track for x in t]))
    (s / "sparse/0/points3D.txt").write_text("\n".join(pts) + "\n")
    r = reconstruct(s, tmp_path / "out", progress=False)
    name = sorted(r.report["views"])[0]
    assert name in r.report["excluded_views"] and "sparse points" in r.report["excluded_views"][name]
    assert r.report["aligned_views"] == 15


def test_bad_inputs_get_clear_errors(scene, tmp_path, capsys):
    with pytest.raises(InputError, match="scene folder not found"):
        reconstruct(tmp_path / "missing", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        reconstruct(tmp_path / "empty", progress=False)
    # prediction cache at the wrong size
    s = _copy(scene, tmp_path / "wrongsize")
    PredictionCache(s / "predictions").write("view_002", Prediction(np.ones((10, 10), np.float32), "disparity"))
    with pytest.raises(CacheError, match=r"view_002\.npy: size 10x10 does not match the image 320x240"):
        reconstruct(s, progress=False)
    # all-NaN prediction
    s = _copy(scene, tmp_path / "nan")
    PredictionCache(s / "predictions").write(
        "view_001", Prediction(np.full((240, 320), np.nan, np.float32), "disparity")
    )
    with pytest.raises(CacheError, match="view_001.npy: no finite depth"):
        reconstruct(s, progress=False)
    # a model that names images the scene does not have
    s = _copy(scene, tmp_path / "extra")
    (s / "images" / "view_005.png").unlink()
    (s / "predictions" / "depth" / "view_005.npy").unlink()
    with pytest.raises(InputError, match="view_005.png"):
        reconstruct(s, progress=False)
    # an output path that cannot be written (a file where the folder should be)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["reconstruct", str(scene), "-o", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "blocker" in err and "Traceback" not in err


def test_unregistrable_photos_name_the_failures(tmp_path):
    img = tmp_path / "noise" / "images"
    img.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((120, 160)) * 255).astype(np.uint8)).save(img / f"n{i}.png")
    with pytest.raises(ReconstructionError, match=r"registered \d of 3 images.*n0.png"):
        reconstruct(tmp_path / "noise", progress=False)


def test_demo_and_eval_commands(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "demo"), "--views", "12", "--simulated"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "F-score" in out
    fscore = float(out.split("F-score ")[1].split()[0])
    assert fscore > 0.8
    scene = tmp_path / "demo" / "scene"
    assert (
        main(
            [
                "eval",
                str(scene / "lotus3d" / "mesh.ply"),
                str(scene / "gt" / "mesh.ply"),
                "--cameras",
                str(scene / "sparse" / "0"),
                "--samples",
                "20000",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert {"accuracy", "completeness", "chamfer", "precision", "recall", "fscore"} <= set(metrics)
    assert abs(metrics["fscore"] - fscore) < 0.05


def test_chunked_fusion_bounds_memory_and_keeps_the_surface(scene, tmp_path):
    whole = reconstruct(scene, tmp_path / "whole", progress=False)
    chunked = reconstruct(scene, tmp_path / "chunked", ReconstructConfig(fusion_chunks=3), progress=False)
    f = chunked.report["fusion"]
    assert f["chunks"] == 3 and f["max_blocks_in_memory"] < 0.85 * whole.report["fusion"]["blocks"]
    m_whole, m_chunked = _score(scene, tmp_path / "whole"), _score(scene, tmp_path / "chunked")
    assert m_chunked["fscore"] > m_whole["fscore"] - 0.01


def test_global_mapper(tmp_path):
    from lotus3d.sfm import run_sfm

    scene = tmp_path / "s"
    write_scene(scene, "orbit", 24, 480, 360, seed=3, sparse_points=500)
    model, report = run_sfm(scene / "images", tmp_path / "work", mapper="global")
    assert report["mapper"] == "global" and report["registered"] >= 20
    ref = read_model(scene / "sparse" / "0").cameras
    s, R, t = similarity_from_cameras(model.cameras, ref)
    err = [np.linalg.norm(s * R @ model.cameras[n].center + t - ref[n].center) for n in model.cameras]
    assert np.median(err) < 0.05 * np.linalg.norm(ref["view_000.png"].center - ref["view_012.png"].center)
