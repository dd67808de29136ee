"""Image reading, atomic writes and the prediction cache format."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from lotus3d.cache import CacheMeta, PredictionCache
from lotus3d.errors import CacheError, InputError
from lotus3d.io import atomic_write, image_size, list_images, load_image, save_npy
from lotus3d.types import Prediction


def _rgb(h=6, w=9):
    rng = np.random.default_rng(0)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def test_png_jpeg_roundtrip(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.shape == (6, 9, 3) and im.dtype == np.float32
    np.testing.assert_allclose(im, a / 255.0, atol=1e-6)
    smooth = np.broadcast_to(np.linspace(0, 255, 9, dtype=np.uint8)[None, :, None], (6, 9, 3)).copy()
    Image.fromarray(smooth).save(tmp_path / "s.jpg", quality=100)
    assert np.abs(load_image(tmp_path / "s.jpg") - smooth / 255.0).max() < 0.03


def test_16bit_png_and_tiff_keep_precision(tmp_path):
    a = (np.random.default_rng(1).random((5, 7, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a16.png"), a[:, :, ::-1])  # cv2 writes BGR
    tifffile.imwrite(tmp_path / "a16.tif", a)
    for name in ("a16.png", "a16.tif"):
        im = load_image(tmp_path / name)
        np.testing.assert_allclose(im, a / 65535.0, atol=1e-6, err_msg=name)


def test_grayscale_rgba_palette(tmp_path):
    g = _rgb()[:, :, 0]
    Image.fromarray(g).save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    assert im.shape == (6, 9, 3)
    np.testing.assert_allclose(im[:, :, 1], g / 255.0, atol=1e-6)
    rgba = np.dstack([_rgb(), np.full((6, 9), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_allclose(load_image(tmp_path / "a.png"), rgba[:, :, :3] / 255.0, atol=1e-6)
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.gif")
    # GIF is not a listed extension, but load_image reads it through Pillow
    assert load_image(tmp_path / "p.gif").shape == (6, 9, 3)


@pytest.mark.parametrize("orientation, expect", [(6, "rot_cw"), (8, "rot_ccw"), (3, "rot180"), (2, "flip_lr")])
def test_exif_orientation_applied(tmp_path, orientation, expect):
    a = np.zeros((4, 6, 3), np.uint8)
    a[0, 0] = 255  # a white top-left pixel
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "e.png", exif=exif)
    im = load_image(tmp_path / "e.png")
    expected = {"rot_cw": np.rot90(a, -1), "rot_ccw": np.rot90(a, 1), "rot180": a[::-1, ::-1], "flip_lr": a[:, ::-1]}[
        expect
    ]
    np.testing.assert_array_equal((im * 255).round().astype(np.uint8), expected)
    assert image_size(tmp_path / "e.png") == (expected.shape[1], expected.shape[0])


def test_unreadable_and_missing_images_name_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_list_images_refuses_duplicate_stems_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(InputError, match="not found"):
        list_images(tmp_path / "nope")
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    Image.fromarray(_rgb()).save(tmp_path / "a.jpg")
    with pytest.raises(InputError, match="share the stem 'a'"):
        list_images(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.npy"
    save_npy(target, np.arange(3))
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert os.listdir(tmp_path) == ["x.npy"]  # no temporary left behind


def _meta(normal=True):
    return CacheMeta("disparity", "m-depth", "m-normal" if normal else None, {"processing_res": 64})


def test_cache_roundtrip_and_documented_layout(tmp_path):
    cache = PredictionCache(tmp_path / "predictions")
    cache.write_meta(_meta())
    d = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    n = np.zeros((4, 5, 3), np.float32)
    n[..., 2] = -1
    cache.write("v0", Prediction(d, "disparity", n))
    meta = json.loads((tmp_path / "predictions/meta.json").read_text())
    assert meta["depth"] == {"kind": "disparity", "model": "m-depth"}
    assert meta["normal"] == {"frame": "opencv_camera_facing", "model": "m-normal"}
    assert (tmp_path / "predictions/depth/v0.npy").is_file() and (tmp_path / "predictions/normal/v0.npy").is_file()
    p = cache.read("v0", image_size=(5, 4))
    np.testing.assert_array_equal(p.depth, d)
    np.testing.assert_array_equal(p.normal, n)
    assert cache.stems() == ["v0"] and cache.has("v0")


def test_cache_written_by_another_tool_without_normals(tmp_path):
    root = tmp_path / "predictions"
    (root / "depth").mkdir(parents=True)
    (root / "meta.json").write_text(json.dumps({"depth": {"kind": "depth", "model": "other"}, "normal": None}))
    np.save(root / "depth/v.npy", np.ones((3, 4), np.float64))
    p = PredictionCache(root).read("v")
    assert p.kind == "depth" and p.normal is None and p.depth.dtype == np.float32


def test_cache_checks_sizes_nans_and_frames(tmp_path):
    cache = PredictionCache(tmp_path)
    cache.write_meta(_meta(normal=False))
    d = np.ones((4, 5), np.float32)
    d[0, 0] = np.inf
    cache.write("v", Prediction(d, "disparity"))
    with pytest.raises(CacheError, match="does not match the image 6x4"):
        cache.read("v", image_size=(6, 4))
    p = cache.read("v", image_size=(5, 4))
    assert np.isnan(p.depth[0, 0]) and np.isfinite(p.depth[1:]).all()
    cache.write("allnan", Prediction(np.full((2, 2), np.nan, np.float32), "disparity"))
    with pytest.raises(CacheError, match="no finite depth"):
        cache.read("allnan")
    with pytest.raises(CacheError, match="no cached depth for view 'zz'"):
        cache.read("zz")
    (tmp_path / "meta.json").write_text(json.dumps({"depth": {"kind": "disp"}}))
    with pytest.raises(CacheError, match="must be 'disparity' or 'depth'"):
        cache.read_meta()
    (tmp_path / "meta.json").write_text(json.dumps({"depth": {"kind": "depth"}, "normal": {"frame": "opengl"}}))
    with pytest.raises(CacheError, match="opencv_camera_facing"):
        cache.read_meta()


def test_every_lotus3d_cache_folder_follows_lotus3d_cache(tmp_path, monkeypatch):
    """Converted OpenVINO models and the benchmark checkpoints go under ``$LOTUS3D_CACHE`` when it is
    set, else ``$XDG_CACHE_HOME/lotus3d``; ``$LOTUS3D_BENCH_MODELS`` still names the checkpoints' own."""
    from lotus3d.bench.predict import bench_models_dir
    from lotus3d.io import user_cache_dir
    from lotus3d.predict_openvino import cache_root

    monkeypatch.delenv("LOTUS3D_BENCH_MODELS", raising=False)
    monkeypatch.setenv("LOTUS3D_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert (cache_root(), bench_models_dir()) == (tmp_path / "mine/openvino", tmp_path / "mine/bench-models")
    monkeypatch.delenv("LOTUS3D_CACHE")
    assert user_cache_dir() == tmp_path / "xdg/lotus3d"
    assert bench_models_dir() == tmp_path / "xdg/lotus3d/bench-models"
    monkeypatch.setenv("LOTUS3D_BENCH_MODELS", str(tmp_path / "models"))
    assert bench_models_dir() == tmp_path / "models"
