"""Benchmark of scene reconstruction on rendered scenes with exact ground truth.

``lotus3d bench reconstruct`` renders two scenes (an object orbit and a multi-object scene with
a floor), simulates predictions, and reconstructs each from its prediction cache side by side:

- ``gt-depth``: the exact depth fused through the same pipeline (the upper bound),
- ``lstsq``: naive per-view least-squares scale and shift,
- ``ours``: the default pipeline,

printing F-score, accuracy, completeness and chamfer against the GT mesh, and time per stage.

``lotus3d bench reconstruct --family`` runs every error mode of :data:`lotus3d.simulate.ERROR_MODES`
on both scenes, the mode's parameters and the SfM points' density, noise and outliers drawn at
random per (scene, mode); the variants: exact depth, naive least squares, the earlier dense local
correction, the bilateral-grid correction alone, and ours (grid + dense multi-view refinement).
``--scaling`` times the local correction alone at 1k, 10k and 50k points on one view.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..cache import CacheMeta, PredictionCache
from ..configs import ReconstructConfig
from ..layout import OutputLayout
from ..mesh import load_mesh
from ..metrics import evaluate_mesh, similarity_from_cameras, transform_mesh
from ..scenes import write_scene
from ..sfm import read_model
from ..simulate import ERROR_MODES, best_affine_disparity
from ..types import Prediction
from . import shared_data

SCENES = {
    # name: (preset, views, extra mesh under shared/data)
    "orbit": ("orbit", 24, None),
    "objects": ("objects", 32, "mesh_fuze_bottle/fuze.obj"),
}


# depth fused as the cache holds it (exact depth or an oracle fit; the bound), and the naive baseline
AS_GIVEN = ReconstructConfig(alignment="none", local_alignment=False, consistency=False, refine_rounds=0)
NAIVE = ReconstructConfig(alignment="lstsq", local_alignment=False, consistency=False, refine_rounds=0)


def variant_scene(scene: Path, root: Path, name: str) -> Path:
    """A copy of ``scene`` sharing its images, model and GT (links), with its own predictions."""
    v = root / name
    if v.exists():
        shutil.rmtree(v)
    v.mkdir(parents=True)
    for sub in ("images", "sparse", "gt"):
        (v / sub).symlink_to((scene / sub).resolve(), target_is_directory=True)
    return v


def gt_depth_cache(scene: Path, target: Path) -> None:
    """Write the exact depth as a 'depth'-kind prediction cache (alignment then finds s = 1, t = 0)."""
    src = PredictionCache(scene / "predictions")
    cache = PredictionCache(target / "predictions")
    cache.write_meta(CacheMeta("depth", "ground-truth", src.read_meta().normal_model))
    for stem in src.stems():
        d = np.load(scene / "gt" / "depth" / f"{stem}.npy")
        normal = src.read(stem).normal
        cache.write(stem, Prediction(np.where(np.isfinite(d), d, np.nan).astype(np.float32), "depth", normal))


def oracle_affine_cache(scene: Path, target: Path) -> None:
    """Each view's prediction with the best scale and shift fitted to every GT pixel (least squares in
    disparity), stored as metric depth: the best any per-view scale/shift estimator could do."""
    src = PredictionCache(scene / "predictions")
    cache = PredictionCache(target / "predictions")
    cache.write_meta(CacheMeta("depth", "oracle-affine", src.read_meta().normal_model))
    for stem in src.stems():
        pred = src.read(stem)
        gt = np.load(scene / "gt" / "depth" / f"{stem}.npy")
        m = np.isfinite(gt) & np.isfinite(pred.depth)
        s, t = best_affine_disparity(pred.depth, gt, m)
        disp = s * pred.depth.astype(np.float64) + t
        depth = np.where(m & (disp > 0), 1.0 / np.maximum(disp, 1e-9), np.nan).astype(np.float32)
        cache.write(stem, Prediction(depth, "depth", pred.normal))


def evaluate(scene: Path, out: Path, own_sfm: bool = False) -> dict:
    """F-scores, accuracy, completeness, chamfer of ``out``/mesh.ply against the scene's GT mesh; with
    ``own_sfm`` the mesh is first brought into the GT frame by the similarity between the cameras."""
    gt = load_mesh(scene / "gt" / "mesh.ply")
    ref = read_model(scene / "sparse" / "0").cameras
    cams = list(ref.values())
    layout = OutputLayout(out)
    pred = load_mesh(layout.mesh("ply"))
    if own_sfm:
        pred = transform_mesh(pred, *similarity_from_cameras(read_model(layout.sparse).cameras, ref))
    m = evaluate_mesh(pred, gt, cameras=cams, n_samples=150_000)
    m1 = evaluate_mesh(pred, gt, cameras=cams, n_samples=150_000, threshold_fraction=0.01)
    m["fscore_1pct"] = m1["fscore"]
    return m


def run_variant(scene: Path, name: str, cfg: ReconstructConfig) -> dict:
    from ..pipelines.reconstruct import reconstruct

    t0 = time.perf_counter()
    result = reconstruct(scene, scene / "lotus3d", cfg=cfg, force=True, progress=False)
    total = time.perf_counter() - t0
    m = evaluate(scene, scene / "lotus3d")
    return {"variant": name, "seconds": total, "timings": result.report["timings_s"], **m}


def run(
    out: Path | None = None,
    prediction: str = "realistic",
    scenes: tuple[str, ...] = ("orbit", "objects"),
    extra_variants: dict[str, ReconstructConfig] | None = None,
) -> list[dict]:
    """Render, reconstruct and score every scene and variant; print a table; return the rows."""
    out = Path(out or "bench_out/reconstruct")
    data = shared_data()
    rows = []
    for key in scenes:
        preset, views, extra = SCENES[key]
        extra_path = data / extra if (extra and data) else None
        scene = out / key / "scene"
        if scene.exists():
            shutil.rmtree(scene)
        print(f"rendering {key}: {views} views 640x480 ({prediction} simulated predictions) ...", flush=True)
        write_scene(scene, preset, views, seed=1, outlier_fraction=0.1, prediction=prediction, extra_mesh=extra_path)
        variants = {
            "gt-depth": AS_GIVEN,
            "oracle-affine": AS_GIVEN,
            "lstsq": NAIVE,
            "ours": ReconstructConfig(),
            **(extra_variants or {}),
        }
        for name, cfg in variants.items():
            v = _variant_with_cache(scene, out / key, name)
            row = {"scene": key, "views": views, **run_variant(v, name, dataclasses.replace(cfg))}
            rows.append(row)
            print(
                f"  {name:10s} F@2% {row['fscore']:.3f}  F@1% {row['fscore_1pct']:.3f}  acc {row['accuracy']:.4f}  "
                f"comp {row['completeness']:.4f}  chamfer {row['chamfer']:.4f}  time {row['seconds']:.1f} s "
                f"{row['timings']}",
                flush=True,
            )
    print("\n| scene | depth fused | F-score @2% | F-score @1% | accuracy | completeness | chamfer | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scene']} | {r['variant']} | {r['fscore']:.3f} | {r['fscore_1pct']:.3f} | {r['accuracy']:.4f} | "
            f"{r['completeness']:.4f} | {r['chamfer']:.4f} | {r['seconds']:.1f} |"
        )
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=float))
    return rows


def _variant_with_cache(scene: Path, root: Path, name: str) -> Path:
    """The variant's scene folder (:func:`variant_scene`, under a file-safe name) with its prediction
    cache: the exact depth for "gt-depth", the oracle affine fit for "oracle-affine", else a copy."""
    v = variant_scene(scene, root, name.replace(" ", "_").replace(",", ""))
    if name == "gt-depth":
        gt_depth_cache(scene, v)
    elif name == "oracle-affine":
        oracle_affine_cache(scene, v)
    else:
        shutil.copytree(scene / "predictions", v / "predictions")
    return v


FAMILY_VARIANTS = {
    "gt-depth": AS_GIVEN,
    "lstsq": NAIVE,
    "dense (earlier)": ReconstructConfig(local_method="dense", refine_rounds=0),
    "grid, no refinement": ReconstructConfig(refine_rounds=0),
    "ours": ReconstructConfig(),
}


def run_family(
    out: Path | None = None,
    scenes: tuple[str, ...] = ("orbit", "objects"),
    modes: tuple[str, ...] = ERROR_MODES,
    seed: int = 7,
    variants: dict[str, ReconstructConfig] | None = None,
) -> list[dict]:
    """Every error mode on every scene, parameters drawn per (scene, mode); print and return the rows."""
    out = Path(out or "bench_out/reconstruct_family")
    data = shared_data()
    variants = variants or FAMILY_VARIANTS
    rows = []
    for si, key in enumerate(scenes):
        preset, views, extra = SCENES[key]
        extra_path = data / extra if (extra and data) else None
        for mi, mode in enumerate(modes):
            rng = np.random.default_rng([seed, si, mi])
            points = int(np.exp(rng.uniform(np.log(3000), np.log(12000))))  # in the scene; ~0.2-0.5 per view
            outliers, noise = float(rng.uniform(0, 0.2)), float(rng.uniform(0.0002, 0.001))
            scene = out / key / mode / "scene"
            if scene.exists():
                shutil.rmtree(scene)
            info = write_scene(
                scene,
                preset,
                views,
                seed=int(rng.integers(1 << 30)),
                sparse_points=points,
                sparse_noise=noise,
                outlier_fraction=outliers,
                prediction=mode,
                extra_mesh=extra_path,
            )
            per_view = float(
                np.median([len(o.point_ids) for o in read_model(scene / "sparse" / "0").observations.values()])
            )
            print(f"{key} / {mode}: {per_view:.0f} points per view, {outliers:.0%} outliers, {info['error_model']}")
            for name, cfg in variants.items():
                v = _variant_with_cache(scene, out / key / mode, name)
                row = {"scene": key, "mode": mode, "points_per_view": per_view, "outliers": outliers}
                row |= run_variant(v, name, dataclasses.replace(cfg))
                rows.append(row)
                print(
                    f"  {name:20s} F@2% {row['fscore']:.3f}  F@1% {row['fscore_1pct']:.3f}  "
                    f"chamfer {row['chamfer']:.4f}  time {row['seconds']:.1f} s",
                    flush=True,
                )
    _family_table(rows, list(variants))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=float))
    return rows


def run_own_sfm(out: Path | None = None, family: Path | None = None, mode: str = "mixed") -> list[dict]:
    """Photos only: the family benchmark's ``mode`` scenes (written by :func:`run_family` under
    ``family``) reconstructed with our own SfM (pycolmap) instead of the exact poses, side by side with
    the exact-pose bound; the mesh is brought into the GT frame by the cameras' similarity."""
    family = Path(family or "bench_out/reconstruct_family")
    out = Path(out or family / "own_sfm")
    rows = []
    for key in SCENES:
        scene = family / key / mode / "scene"
        if not scene.is_dir():
            print(f"({scene} missing: run the family benchmark first)")
            continue
        v = out / key
        if v.exists():
            shutil.rmtree(v)
        v.mkdir(parents=True)
        (v / "images").symlink_to((scene / "images").resolve(), target_is_directory=True)
        shutil.copytree(scene / "predictions", v / "predictions")  # no sparse/: SfM runs
        from ..pipelines.reconstruct import reconstruct

        t0 = time.perf_counter()
        result = reconstruct(v, v / "lotus3d", force=True, progress=False)
        seconds = time.perf_counter() - t0
        m = evaluate(scene, v / "lotus3d", own_sfm=True)
        bound = [
            r for r in json.loads((family / "summary.json").read_text()) if r["scene"] == key and r["mode"] == mode
        ]
        exact = {r["variant"]: r["fscore"] for r in bound}
        row = {"scene": key, "mode": mode, "seconds": seconds, "registered": result.report["sfm"]["registered"], **m}
        row["bound"], row["exact_poses"] = exact.get("gt-depth"), exact.get("ours")
        rows.append(row)
        print(
            f"{key} / {mode}, own SfM: {row['registered']} views registered, F@2% {m['fscore']:.3f} (exact poses "
            f"{row['exact_poses']}, bound {row['bound']}), {seconds:.1f} s",
            flush=True,
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=float))
    return rows


def _family_table(rows: list[dict], names: list[str]) -> None:
    for metric in ("fscore", "fscore_1pct"):
        print(f"\n{metric}: | scene | mode | " + " | ".join(names) + " | ours - bound |")
        print("|---|---|" + "---|" * (len(names) + 1))
        for key in dict.fromkeys(r["scene"] for r in rows):
            for mode in dict.fromkeys(r["mode"] for r in rows if r["scene"] == key):
                by = {r["variant"]: r for r in rows if r["scene"] == key and r["mode"] == mode}
                cells = [f"{by[n][metric]:.3f}" if n in by else "-" for n in names]
                gap = by["ours"][metric] - by["gt-depth"][metric] if {"ours", "gt-depth"} <= set(by) else float("nan")
                print(f"| {key} | {mode} | " + " | ".join(cells) + f" | {gap:+.3f} |")
    secs = {n: [r["seconds"] for r in rows if r["variant"] == n] for n in names}
    print("\nmean time (s): " + ", ".join(f"{n} {np.mean(v):.1f}" for n, v in secs.items() if v))


def alignment_scaling(counts: tuple[int, ...] = (1000, 10000, 50000), dense_up_to: int = 10000) -> list[dict]:
    """Time and peak memory (tracemalloc) of the local correction alone on one 640x480 view of the
    objects scene, at each target count: grid (ours) and the earlier dense version side by side."""
    import tracemalloc

    from .. import align, scenes, synthetic
    from ..simulate import draw_error_model, simulate_mode

    data = shared_data()
    meshes = scenes.preset_meshes("objects", 0, data / "mesh_fuze_bottle/fuze.obj" if data else None)
    view = synthetic.Renderer(meshes).render(scenes.preset_cameras("objects", meshes, 4, 640, 480)[1])
    rng = np.random.default_rng(0)
    pred = simulate_mode(view, draw_error_model("mixed", rng), rng)
    ys, xs = np.nonzero(view.mask)
    p = pred.depth[ys, xs].astype(np.float64)
    al = align.fit_scale_shift(p, view.depth[ys, xs].astype(np.float64), "disparity")
    depth = align.apply_alignment(pred.depth, al)
    rows = []
    for n in counts:
        pick = rng.choice(len(ys), n, replace=n > len(ys))
        uv = np.column_stack([xs[pick], ys[pick]]) + rng.uniform(-0.5, 0.5, (n, 2))
        z = view.depth[ys[pick], xs[pick]] * np.exp(rng.normal(0, 0.003, n))
        for method, opts in (("grid", align.LocalOptions()), ("dense", align.LocalOptions.dense())):
            if method == "dense" and n > dense_up_to:
                continue
            tracemalloc.start()
            t0 = time.perf_counter()
            corr = align.fit_local_correction(depth, uv, z, opts)
            seconds = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            fixed = align.apply_local_correction(depth, corr)
            ok = view.mask & np.isfinite(fixed)
            error = float(np.mean(np.abs(np.log(fixed[ok] / view.depth[ok]))))  # against the exact depth
            rows.append({"points": n, "method": method, "seconds": seconds, "peak_mb": peak / 2**20, "error": error})
            print(
                f"  {n:6d} points  {method:5s}  {seconds:6.2f} s  peak {peak / 2**20:7.1f} MB  "
                f"mean |log depth error| {error:.5f}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    run()
