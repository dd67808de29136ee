"""The OpenVINO backend on tiny random-initialised checkpoints: equal to torch, cached, falls back."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from lotus3d.predict import LotusPredictor, PredictorOptions

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'lotus3d[openvino]')")

from lotus3d import predict_openvino  # noqa: E402

OPTS = PredictorOptions(processing_res=64)


def _image(h=37, w=53, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOTUS3D_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openvino"


def _parts(p: LotusPredictor) -> list[predict_openvino.CompiledPart]:
    return [p.depth.unet.net, p.depth.vae.encoder, p.depth.vae.decoder, p.normal.unet.net]


def _assert_close(a, b, tol=1e-4):
    assert np.abs(a.depth - b.depth).max() < tol
    assert np.abs(a.normal - b.normal).max() < tol


def test_openvino_equals_torch_and_its_cache_is_reused(tiny_models, cache):
    images = [_image(), _image(seed=1), _image(40, 30, seed=2)]  # two sizes: two shapes per network
    torch_pred = LotusPredictor.from_pretrained(tiny_models["depth_g"], tiny_models["normal_g"], options=OPTS)
    first = LotusPredictor.from_pretrained(
        tiny_models["depth_g"], tiny_models["normal_g"], options=OPTS, backend="openvino"
    )
    assert first.backend == "openvino" and first.shared_vae and first.depth.vae is first.normal.vae
    want = torch_pred.predict_batch(images)
    got = first.predict_batch(images)
    for a, b in zip(want, got, strict=True):
        _assert_close(a, b)
        assert np.abs(a.depth - b.depth).max() > 0  # OpenVINO's kernels did run (not the torch modules)
    assert [p.conversions for p in _parts(first)] == [2, 2, 2, 2]
    folders = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert len(folders) == 8  # (depth UNet, normal UNet, encoder, decoder) x 2 shapes; the VAE is shared
    # a second run (a new process, as far as the backend knows) converts nothing and gives the same numbers
    second = LotusPredictor.from_pretrained(
        tiny_models["depth_g"], tiny_models["normal_g"], options=OPTS, backend="openvino"
    )
    again = second.predict_batch(images)
    assert [p.conversions for p in _parts(second)] == [0, 0, 0, 0]
    if sys.platform.startswith("linux"):  # the saved weights' pages were handed back once compiled
        assert all(p.released_bytes > 0 for p in _parts(second))
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == folders
    for a, b in zip(got, again, strict=True):
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.normal, b.normal)


def test_d_model_on_openvino_equals_torch(tiny_models, cache):
    opts = PredictorOptions(processing_res=64, latent="mode")
    a = LotusPredictor.from_pretrained(tiny_models["depth_d"], None, options=opts).predict(_image())
    b = LotusPredictor.from_pretrained(tiny_models["depth_d"], None, options=opts, backend="openvino").predict(_image())
    assert np.abs(a.depth - b.depth).max() < 1e-4 and b.normal is None


def test_weights_hash_tells_checkpoints_apart(tiny_models, tmp_path):
    index = tmp_path / "hashes.json"
    h = predict_openvino.weights_hash
    assert h(tiny_models["depth_g"] / "unet", index) != h(tiny_models["normal_g"] / "unet", index)
    assert h(tiny_models["depth_g"] / "vae", index) == h(tiny_models["normal_g"] / "vae", index)  # same weights
    assert h(tiny_models["normal_g"] / "vae", index) != h(tiny_models["normal_g_other_vae"] / "vae", index)
    assert len(index.read_text()) > 0 and h(tiny_models["depth_g"] / "unet", index) == h(
        tiny_models["depth_g"] / "unet"
    )


def test_without_openvino_it_says_so_and_uses_torch(tiny_models, cache, monkeypatch, caplog):
    monkeypatch.setattr(predict_openvino, "available", lambda: False)
    with caplog.at_level(logging.WARNING):
        p = LotusPredictor.from_pretrained(tiny_models["depth_g"], None, options=OPTS, backend="openvino")
    assert p.backend == "torch" and "openvino package is not installed" in caplog.text
    ref = LotusPredictor.from_pretrained(tiny_models["depth_g"], None, options=OPTS).predict(_image())
    np.testing.assert_array_equal(p.predict(_image()).depth, ref.depth)


def test_a_network_that_cannot_be_converted_runs_on_torch(tiny_models, cache, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(ov, "convert_model", broken)
    p = LotusPredictor.from_pretrained(tiny_models["depth_g"], None, options=OPTS, backend="openvino")
    with caplog.at_level(logging.WARNING):
        got = p.predict(_image())
    assert "cannot convert the unet" in caplog.text and "running it with torch" in caplog.text
    ref = LotusPredictor.from_pretrained(tiny_models["depth_g"], None, options=OPTS).predict(_image())
    assert np.abs(got.depth - ref.depth).max() < 1e-5
    assert not cache.exists() or not [q for q in cache.iterdir() if q.is_dir()]  # nothing cached


def test_a_failed_save_leaves_no_partial_cache(tiny_models, cache, monkeypatch, caplog):
    real_save = ov.save_model

    def full_disk(model, path, **kwargs):
        real_save(model, path, **kwargs)  # the files are written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ov, "save_model", full_disk)
    p = LotusPredictor.from_pretrained(tiny_models["depth_g"], None, options=OPTS, backend="openvino")
    with caplog.at_level(logging.WARNING):
        got = p.predict(_image())
    assert "No space left" in caplog.text
    assert list(cache.iterdir()) == [cache / "hashes.json"]  # no folder, no temporary left behind
    ref = LotusPredictor.from_pretrained(tiny_models["depth_g"], None, options=OPTS).predict(_image())
    assert np.abs(got.depth - ref.depth).max() < 1e-4


def test_cli_backend_option_runs_openvino_and_writes_the_same_cache(tmp_path, tiny_models, cache):
    from PIL import Image

    from lotus3d.cache import PredictionCache
    from lotus3d.cli import main

    scene = tmp_path / "scene" / "images"
    scene.mkdir(parents=True)
    Image.fromarray((_image(30, 40) * 255).astype(np.uint8)).save(scene / "a.png")
    base = ["predict", str(scene.parent), "--model", str(tiny_models["depth_g"])]
    base += ["--normal-model", str(tiny_models["normal_g"]), "--processing-res", "64"]
    assert main([*base, "-o", str(tmp_path / "torch")]) == 0
    assert main([*base, "-o", str(tmp_path / "ov"), "--backend", "openvino"]) == 0
    assert any(q.is_dir() for q in cache.iterdir())  # the networks went through OpenVINO
    a, b = PredictionCache(tmp_path / "torch").read("a"), PredictionCache(tmp_path / "ov").read("a")
    assert 0 < np.abs(a.depth - b.depth).max() < 1e-4 and np.abs(a.normal - b.normal).max() < 1e-4


def test_bfloat16_is_opt_in_and_recorded(tiny_models, cache):
    f32 = LotusPredictor.from_pretrained(tiny_models["depth_g"], None, options=OPTS, backend="openvino")
    bf16 = LotusPredictor.from_pretrained(
        tiny_models["depth_g"], None, options=OPTS, backend="openvino", dtype="bfloat16"
    )
    assert f32.settings()["dtype"] == "float32" and bf16.settings()["dtype"] == "bfloat16"
    assert bf16.depth.unet.net.config["INFERENCE_PRECISION_HINT"] == "bf16"
    a, b = f32.predict(_image()), bf16.predict(_image())
    assert np.isfinite(b.depth).all() and np.abs(a.depth - b.depth).max() < 0.2
    assert [p.conversions for p in (bf16.depth.unet.net, bf16.depth.vae.encoder)] == [0, 0]  # same IR as f32


def test_float16_is_refused_with_a_reason(tiny_models, cache, caplog):
    with caplog.at_level(logging.WARNING):
        p = LotusPredictor.from_pretrained(
            tiny_models["depth_d"], None, options=OPTS, backend="openvino", device="cpu", dtype="float16"
        )
    assert p.backend == "torch" and "dtype is float16" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_release_mapped_pages_hands_back_resident_pages_and_keeps_the_data(tmp_path):
    data = np.arange(8 << 20, dtype=np.float32)  # 32 MiB
    path = tmp_path / "weights.bin"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    assert float(mapped.sum(dtype=np.float64)) == float(data.sum(dtype=np.float64))  # every page resident
    released = predict_openvino.release_mapped_pages(path)
    assert released > 16 << 20
    assert predict_openvino.release_mapped_pages(path) < released  # nothing much left to hand back
    np.testing.assert_array_equal(mapped[::4096], data[::4096])  # read again from the file: the same
    assert predict_openvino.release_mapped_pages(tmp_path / "not-mapped.bin") == 0
