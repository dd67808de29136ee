"""Per-view inference on a local Ray cluster (2 CPUs) with the tiny random-initialised models."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import ray
from PIL import Image

from lotus3d.cache import PredictionCache
from lotus3d.configs import PredictConfig
from lotus3d.pipelines import predict as predict_pipeline
from lotus3d.pipelines.predict import load_predictor, predict_scene


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _scene(tmp_path, n=6):
    img = tmp_path / "scene" / "images"
    img.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        h, w = (40, 56) if i % 2 else (36, 48)  # mixed sizes
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(img / f"v{i}.png")
    return tmp_path / "scene"


def _cfg(models):
    return PredictConfig(depth_model=str(models["depth_g"]), normal_model=str(models["normal_g"]), processing_res=64)


def test_ray_cache_matches_the_local_cache(tmp_path, tiny_models):
    scene = _scene(tmp_path)
    local = predict_scene(scene, _cfg(tiny_models), out=tmp_path / "local", progress=False)
    dist = predict_scene(scene, _cfg(tiny_models), out=tmp_path / "ray", progress=False, ray_address="local")
    assert sorted(dist.predicted) == sorted(local.predicted) and not dist.failed
    a, b = PredictionCache(tmp_path / "local"), PredictionCache(tmp_path / "ray")
    assert a.meta_path.read_text() == b.meta_path.read_text()
    for stem in a.stems():
        pa, pb = a.read(stem), b.read(stem)
        # same seeds per image; only the thread count of the reductions differs (1 per worker vs 2 here)
        np.testing.assert_allclose(pb.depth, pa.depth, atol=1e-5)
        np.testing.assert_allclose(pb.normal, pa.normal, atol=1e-4)


def test_killed_ray_run_resumes(tmp_path, tiny_models):
    """Kill a `lotus3d predict --ray` process (and its local Ray) once some views are cached; re-run."""
    import os
    import signal
    import time

    scene = _scene(tmp_path, n=10)
    out = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "lotus3d.cli",
        "predict",
        str(scene),
        "-o",
        str(out),
        "--ray",
        "--model",
        str(tiny_models["depth_g"]),
        "--normal-model",
        str(tiny_models["normal_g"]),
        "--processing-res",
        "64",
    ]
    proc = subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "depth").glob("*.npy"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cache = PredictionCache(out)
    done_before = cache.stems()
    assert 2 <= len(done_before) < 10, "the run should have been stopped halfway"
    for stem in done_before:  # nothing half-written: every view in the cache reads back whole
        cache.read(stem)
    # the kill may land inside a write and leave its temporary file (never counted as a view)
    (out / "depth" / ".v9.npy.killed.tmp").write_bytes(b"partial")
    r = predict_scene(scene, _cfg(tiny_models), out=out, progress=False, ray_address="local")
    assert sorted(r.cached) == done_before
    assert sorted(r.cached + r.predicted) == [f"v{i}" for i in range(10)]
    assert not list(out.rglob("*.tmp"))  # the resumed run cleared them


def test_a_failing_view_is_reported_by_name_and_the_others_complete(tmp_path, tiny_models):
    scene = _scene(tmp_path)
    (scene / "images" / "broken.jpg").write_bytes(b"not a jpeg at all")
    cfg = dataclasses.replace(_cfg(tiny_models), batch_size=3)  # the bad view shares a batch with good ones
    r = predict_scene(scene, cfg, out=tmp_path / "c", progress=False, ray_address="local")
    assert list(r.failed) == ["broken"] and "broken.jpg" in r.failed["broken"]
    assert len(r.predicted) == 6


class _DiesOnce:
    """A predictor factory whose predictor kills its process (a segfault, an OOM kill) the first
    time it is asked to predict, anywhere in the cluster: ``marker`` records that it did."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __call__(self, cfg):
        predictor = load_predictor(cfg)
        predict_batch, marker = predictor.predict_batch, self.marker

        def dying(images):
            if not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write("died once")
                os._exit(1)
            return predict_batch(images)

        predictor.predict_batch = dying
        return predictor


def test_a_dying_worker_loses_only_its_views_which_are_retried(tmp_path, tiny_models, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this file
    monkeypatch.setattr(predict_pipeline, "load_predictor", _DiesOnce(tmp_path / "died"))
    scene = _scene(tmp_path)
    r = predict_scene(scene, _cfg(tiny_models), out=tmp_path / "c", progress=False, ray_address="local")
    assert (tmp_path / "died").exists()  # a worker did die mid-batch ...
    assert not r.failed and sorted(r.predicted) == [f"v{i}" for i in range(6)]  # ... and its views were retried


def test_without_ray_nothing_imports_ray(tmp_path, tiny_models):
    scene = _scene(tmp_path, 2)
    code = (
        "import sys\nfrom lotus3d.configs import PredictConfig\nfrom lotus3d.pipelines.predict import predict_scene\n"
        f"predict_scene({str(scene)!r}, PredictConfig(depth_model={str(tiny_models['depth_g'])!r}, "
        f"normal_model={str(tiny_models['normal_g'])!r}, processing_res=64), progress=False)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    shutil.rmtree(scene / "predictions")
