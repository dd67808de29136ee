"""`lotus3d predict`: the resumable prediction cache, bad inputs, and the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from lotus3d.cache import PredictionCache
from lotus3d.cli import main
from lotus3d.configs import PredictConfig
from lotus3d.errors import CacheError, InputError
from lotus3d.pipelines.predict import predict_scene


def _scene(tmp_path, sizes=((40, 60), (40, 60), (30, 50))):
    img = tmp_path / "scene" / "images"
    img.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(img / f"view{i}.png")
    return tmp_path / "scene"


def _cfg(models, **kw):
    return PredictConfig(
        depth_model=str(models["depth_g"]), normal_model=str(models["normal_g"]), processing_res=64, **kw
    )


def test_predicts_every_view_at_its_size_then_resumes(tmp_path, tiny_models):
    scene = _scene(tmp_path)
    cfg = _cfg(tiny_models)
    r1 = predict_scene(scene, cfg, progress=False)
    assert sorted(r1.predicted) == ["view0", "view1", "view2"] and not r1.cached
    cache = PredictionCache(scene / "predictions")
    assert cache.read("view2", image_size=(50, 30)).depth.shape == (30, 50)
    meta = json.loads(cache.meta_path.read_text())
    assert meta["depth"]["kind"] == "disparity" and meta["normal"]["frame"] == "opencv_camera_facing"

    mtime = cache.depth_path("view0").stat().st_mtime_ns
    cache.depth_path("view1").unlink()  # as if interrupted before view1 finished
    r2 = predict_scene(scene, cfg, progress=False)
    assert r2.predicted == ["view1"] and sorted(r2.cached) == ["view0", "view2"]
    assert cache.depth_path("view0").stat().st_mtime_ns == mtime

    r3 = predict_scene(scene, cfg, force=True, progress=False)
    assert len(r3.predicted) == 3 and cache.depth_path("view0").stat().st_mtime_ns != mtime


def test_resume_loads_no_model_when_everything_is_cached(tmp_path, tiny_models, monkeypatch):
    scene = _scene(tmp_path)
    predict_scene(scene, _cfg(tiny_models), progress=False)
    import lotus3d.pipelines.predict as pp

    monkeypatch.setattr(pp, "load_predictor", lambda cfg: pytest.fail("the model was loaded"))
    assert len(predict_scene(scene, _cfg(tiny_models), progress=False).cached) == 3


def test_changed_settings_refuse_to_mix_without_force(tmp_path, tiny_models):
    scene = _scene(tmp_path)
    predict_scene(scene, _cfg(tiny_models), progress=False)
    with pytest.raises(CacheError, match="made differently.*processing_res.*--force"):
        predict_scene(scene, dataclasses.replace(_cfg(tiny_models), processing_res=96), progress=False)


def test_interrupted_run_leaves_no_partial_files(tmp_path, tiny_models):
    scene = _scene(tmp_path)
    from lotus3d.pipelines.predict import load_predictor

    predictor = load_predictor(_cfg(tiny_models))
    calls = {"n": 0}
    real = predictor.predict

    def flaky(image):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(image)

    predictor.predict = flaky
    with pytest.raises(KeyboardInterrupt):
        predict_scene(scene, _cfg(tiny_models), predictor=predictor, progress=False)
    root = scene / "predictions"
    assert sorted(p.name for p in (root / "depth").iterdir()) == ["view0.npy"]
    assert not list(root.rglob("*.tmp"))
    r = predict_scene(scene, _cfg(tiny_models), progress=False)
    assert sorted(r.predicted) == ["view1", "view2"] and r.cached == ["view0"]


def test_unreadable_image_skipped_by_name_or_fails(tmp_path, tiny_models):
    scene = _scene(tmp_path)
    (scene / "images" / "broken.jpg").write_bytes(b"\x00garbage")
    r = predict_scene(scene, _cfg(tiny_models), progress=False)
    assert list(r.failed) == ["broken"] and "broken.jpg" in r.failed["broken"] and len(r.predicted) == 3
    with pytest.raises(InputError, match="broken.jpg"):
        predict_scene(scene, _cfg(tiny_models, on_error="fail"), force=True, progress=False)


def test_cli_predict_and_errors(tmp_path, tiny_models, capsys):
    scene = _scene(tmp_path)
    args = [
        "predict",
        str(scene),
        "--model",
        str(tiny_models["depth_g"]),
        "--normal-model",
        str(tiny_models["normal_g"]),
        "--processing-res",
        "64",
    ]
    assert main(args) == 0
    assert "predicted 3 view(s)" in capsys.readouterr().out
    assert main(args) == 0
    assert "3 already cached" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "error: image folder not found" in err and "Traceback" not in err
    assert main(["predict", str(scene), "--model", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "not a Lotus checkpoint" in capsys.readouterr().err


def test_cli_yaml_config_and_overrides(tmp_path, tiny_models):
    scene = _scene(tmp_path, sizes=((20, 30),))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"predict:\n  depth_model: {tiny_models['depth_d']}\n  normal_model: none\n"
        "  processing_res: 48\n  latent: mode\n"
    )
    assert main(["predict", str(scene), "--config", str(cfg), "--processing-res", "32"]) == 0
    meta = json.loads((scene / "predictions/meta.json").read_text())
    assert meta["settings"]["processing_res"] == 32 and meta["settings"]["latent"] == "mode"
    assert meta["depth"]["kind"] == "depth" and meta["normal"] is None


def test_help_lists_and_explains_every_subcommand(capsys):
    from lotus3d.cli import _COMMANDS

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    key_options = {
        "predict": ["--model", "--normal-model", "--processing-res"],
        "reconstruct": ["--colmap", "--texture-size", "--max-frames", "--matcher"],
        "frames": ["--max-frames", "--min-frames", "--blur-ratio", "--step"],
        "single": ["--fov", "--predictions", "--simplify"],
        "app": ["--host", "--port", "--model", "--max-upload-mb"],
        "demo": ["--views", "--simulated"],
        "bench": ["--family", "--repeats"],
    }
    for name in _COMMANDS:
        assert f"    {name} " in top or f"    {name}\n" in top, name
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: lotus3d {name}")
        for option in key_options.get(name, []):
            assert option in text, (name, option)


def test_version_and_doctor(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("lotus3d 0.")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch 2." in out and "build); device 'auto' -> " in out
    for line in (
        "open3d ",
        "pycolmap ",
        "extra 'plots': ",
        "extra 'app': gradio",
        "extra 'openvino': ",
        "weights jingheya/lotus-depth",
    ):
        assert line in out, line
