"""Views per second: local prediction vs the same on a local Ray cluster, side by side.

``lotus3d bench ray`` predicts N rendered images with small random-initialised Lotus models, once
in this process and once through Ray on this machine (same CPUs), and prints views per second and
the overhead. On a 2-core machine no speed-up is expected: it measures what distribution costs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ..configs import PredictConfig
from ..dummy_models import make_lotus_checkpoint
from ..io import save_image
from ..mesh import load_mesh
from ..scenes import bundled_cow
from ..synthetic import Renderer, orbit_cameras


def run(n_views: int = 16, out: Path | None = None, processing_res: int = 256) -> dict:
    import ray

    from ..pipelines.predict import predict_scene

    out = Path(out or "bench_out/ray")
    if out.exists():
        shutil.rmtree(out)
    mesh = load_mesh(bundled_cow())
    r = Renderer(mesh, background=(0.4, 0.5, 0.6))
    for i, cam in enumerate(orbit_cameras(mesh, n_views, 480, 360)):
        save_image(out / "scene" / "images" / f"v{i:03d}.png", r.render(cam).image)
    depth = make_lotus_checkpoint(out / "models" / "depth", "g", unet_seed=1, depth_kind="disparity")
    normal = make_lotus_checkpoint(out / "models" / "normal", "g", unet_seed=2)
    cfg = PredictConfig(depth_model=str(depth), normal_model=str(normal), processing_res=processing_res)

    t0 = time.perf_counter()
    local = predict_scene(out / "scene", cfg, out=out / "local", progress=False)
    t_local = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist = predict_scene(out / "scene", cfg, out=out / "ray", progress=False, ray_address="local")
    t_ray = time.perf_counter() - t0
    ray.shutdown()
    res = {
        "views": n_views,
        "local_s": t_local,
        "ray_start_s": t_start,
        "ray_s": t_ray,
        "local_views_per_s": len(local.predicted) / t_local,
        "ray_views_per_s": len(dist.predicted) / t_ray,
        "ratio_ray_over_local_time": t_ray / t_local,
    }
    a = np.load(out / "local" / "depth" / "v000.npy")
    b = np.load(out / "ray" / "depth" / "v000.npy")
    res["max_abs_diff"] = float(np.abs(a - b).max())
    print(f"local: {res['local_views_per_s']:.2f} views/s ({t_local:.1f} s, models loaded once)")
    print(
        f"ray  : {res['ray_views_per_s']:.2f} views/s ({t_ray:.1f} s incl. actors loading the models; "
        f"+{t_start:.1f} s to start Ray)"
    )
    print(f"ray / local time: {res['ratio_ray_over_local_time']:.2f}; max |depth diff| {res['max_abs_diff']:.1e}")
    return res


if __name__ == "__main__":
    run()
