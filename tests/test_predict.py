"""The Lotus prediction stage on tiny random-initialised checkpoints of the real architecture."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lotus3d.bench.predict import ReferenceLotus
from lotus3d.errors import ModelError
from lotus3d.predict import (
    LotusPredictor,
    PredictorOptions,
    inspect_checkpoint,
    load_lotus,
    lotus_normals_to_opencv,
    opencv_normals_to_lotus,
    processing_size,
    resolve_checkpoint,
    vae_weights_equal,
)

OPTS = PredictorOptions(processing_res=64)


def _image(h=37, w=53, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def predictor(tiny_models):
    return LotusPredictor.from_pretrained(tiny_models["depth_g"], tiny_models["normal_g"], options=OPTS)


def test_outputs_have_image_size_range_and_unit_normals(predictor):
    p = predictor.predict(_image())
    assert p.depth.shape == (37, 53) and p.depth.dtype == np.float32
    assert p.kind == "disparity"
    assert 0.0 <= p.depth.min() and p.depth.max() <= 1.0 and p.depth.std() > 0
    assert p.normal.shape == (37, 53, 3)
    np.testing.assert_allclose(np.linalg.norm(p.normal, axis=2), 1.0, atol=1e-5)


def test_deterministic_with_seed_and_seed_matters(tiny_models, predictor):
    a = predictor.predict(_image())
    b = predictor.predict(_image())
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.normal, b.normal)
    other = LotusPredictor(
        predictor.depth, predictor.normal, options=PredictorOptions(processing_res=64, seed=7), shared_vae=True
    )
    assert np.abs(other.predict(_image()).depth - a.depth).max() > 1e-4


def test_latent_mode_is_independent_of_seed_for_d_models(tiny_models):
    d = load_lotus(tiny_models["depth_d"])
    p1 = LotusPredictor(d, None, "depth", PredictorOptions(processing_res=64, latent="mode", seed=1))
    p2 = LotusPredictor(d, None, "depth", PredictorOptions(processing_res=64, latent="mode", seed=2))
    np.testing.assert_array_equal(p1.predict(_image()).depth, p2.predict(_image()).depth)
    s1 = LotusPredictor(d, None, "depth", PredictorOptions(processing_res=64, latent="sample", seed=1))
    assert np.abs(s1.predict(_image()).depth - p1.predict(_image()).depth).max() > 0


def test_g_and_d_detected_from_checkpoint_not_name(tiny_models, tmp_path):
    assert inspect_checkpoint(tiny_models["depth_g"])["variant"] == "g"
    assert inspect_checkpoint(tiny_models["depth_d"])["variant"] == "d"
    # a D checkpoint in a folder whose name says "g" is still D
    renamed = shutil.copytree(tiny_models["depth_d"], tmp_path / "lotus-depth-g-looks-like-g")
    assert load_lotus(renamed).variant == "d"


def test_shared_encode_equals_two_separate_runs(tiny_models, predictor):
    assert predictor.shared_vae
    image = _image(40, 64)
    both = predictor.predict(image)
    depth_only = LotusPredictor.from_pretrained(tiny_models["depth_g"], None, options=OPTS).predict(image)
    normal_only = LotusPredictor.from_pretrained(None, tiny_models["normal_g"], options=OPTS).predict(image)
    np.testing.assert_allclose(both.depth, depth_only.depth, atol=1e-6)
    np.testing.assert_allclose(both.normal, normal_only.normal, atol=1e-6)


def test_vae_sharing_requires_identical_weights(tiny_models):
    assert vae_weights_equal(tiny_models["depth_g"], tiny_models["normal_g"])
    assert not vae_weights_equal(tiny_models["depth_g"], tiny_models["normal_g_other_vae"])
    p = LotusPredictor.from_pretrained(tiny_models["depth_g"], tiny_models["normal_g_other_vae"], options=OPTS)
    assert not p.shared_vae and p.depth.vae is not p.normal.vae
    out = p.predict(_image())
    assert np.isfinite(out.depth).all() and np.isfinite(out.normal).all()


def test_matches_straightforward_official_reference(tiny_models, predictor):
    """Our optimised path (shared encode, cached prompt, channels_last) = the plain official computation."""
    image = _image(48, 70, seed=3)
    ours = predictor.predict(image)
    ref_d = ReferenceLotus(tiny_models["depth_g"])(image, processing_res=64).mean(-1)
    ref_n = lotus_normals_to_opencv(ReferenceLotus(tiny_models["normal_g"])(image, processing_res=64))
    np.testing.assert_allclose(ours.depth, ref_d, atol=1e-5)
    np.testing.assert_allclose(ours.normal, ref_n, atol=1e-4)


def test_empty_prompt_is_bos_eos_only(predictor):
    # the tokenizer gives exactly two tokens for "" without padding -> sequence length 2
    assert predictor.depth.prompt_embeds.shape[:2] == (1, 2)


def test_batch_equals_single(tiny_models, predictor):
    images = [_image(seed=s) for s in range(3)] + [_image(30, 30, seed=9)]
    batched = LotusPredictor(
        predictor.depth, predictor.normal, options=PredictorOptions(processing_res=64, batch_size=3), shared_vae=True
    ).predict_batch(images)
    for im, b in zip(images, batched, strict=True):
        s = predictor.predict(im)
        assert b.depth.shape == im.shape[:2]
        np.testing.assert_allclose(b.depth, s.depth, atol=1e-5)


def test_bilinear_resize_back_option(tiny_models, predictor):
    near = predictor.predict(_image())
    bil = LotusPredictor(
        predictor.depth,
        predictor.normal,
        options=PredictorOptions(processing_res=64, resize_back="bilinear"),
        shared_vae=True,
    ).predict(_image())
    assert bil.depth.shape == near.depth.shape
    assert 0 < np.abs(bil.depth - near.depth).mean() < 0.2


@pytest.mark.parametrize(
    "lotus_rgb, expected",
    [
        ((0.5, 0.5, 1.0), (0.0, 0.0, -1.0)),  # wall facing the camera
        ((1.0, 0.5, 0.5), (-1.0, 0.0, 0.0)),
        ((0.5, 0.0, 0.5), (0.0, 1.0, 0.0)),
    ],
)
def test_normal_convention_on_known_vectors(lotus_rgb, expected):
    n = lotus_normals_to_opencv(np.array([[lotus_rgb]], np.float32))[0, 0]
    np.testing.assert_allclose(n, expected, atol=1e-6)
    np.testing.assert_allclose(opencv_normals_to_lotus(n[None, None])[0, 0], lotus_rgb, atol=1e-6)


def test_processing_size_keeps_aspect():
    assert processing_size(480, 640, 768) == (576, 768)
    assert processing_size(300, 451, 768) == (510, 768)
    assert processing_size(1064, 1416, 0) == (1064, 1416)


def test_not_a_checkpoint_names_what_is_missing(tmp_path, tiny_models):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="missing vae/config.json, scheduler/scheduler_config.json"):
        inspect_checkpoint(tmp_path)
    sd = shutil.copytree(tiny_models["depth_g"], tmp_path / "plain-sd")
    cfg = json.loads((sd / "unet/config.json").read_text())
    cfg["class_embed_type"] = None
    (sd / "unet/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="projection"):
        inspect_checkpoint(sd)
    with pytest.raises(ModelError, match="model folder not found"):
        resolve_checkpoint(tmp_path / "nope")


def test_offline_hub_id_explains_how_to_get_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError) as e:
        resolve_checkpoint("jingheya/lotus-depth-g-v2-1-disparity")
    assert "huggingface-cli download jingheya/lotus-depth-g-v2-1-disparity" in str(e.value)
    assert "--model PATH" in str(e.value)


def test_depth_kind_from_marker_or_override(tiny_models):
    p = LotusPredictor.from_pretrained(tiny_models["depth_d"], None, options=OPTS)
    assert p.depth_kind == "depth"  # from lotus3d.json
    p2 = LotusPredictor.from_pretrained(tiny_models["depth_d"], None, depth_kind="disparity", options=OPTS)
    assert p2.depth_kind == "disparity"


def test_loaded_models_are_frozen_in_eval_mode(predictor):
    for m in (predictor.depth.unet, predictor.depth.vae, predictor.normal.unet):
        assert not m.training
        assert all(not q.requires_grad for q in m.parameters())
