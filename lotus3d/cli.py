"""The ``lotus3d`` command: one entry point, one subcommand per job.

Each subcommand parses its options into a typed config (``lotus3d.configs``) and calls a pipeline
(``lotus3d.pipelines``); errors a user can act on are printed without a stack trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import Lotus3DError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str, str]] = {}


def command(name: str, help: str, description: str):
    """Register ``fn`` as subcommand ``name``; ``fn.add_arguments`` declares its options."""

    def wrap(fn: Command) -> Command:
        _COMMANDS[name] = (fn, getattr(fn, "_add", lambda p: None), help, description)
        return fn

    return wrap


def arguments(add: Callable[[argparse.ArgumentParser], None]):
    def wrap(fn: Command) -> Command:
        fn._add = add  # type: ignore[attr-defined]
        return fn

    return wrap


def _ray_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="spread Lotus inference over a Ray cluster at ADDRESS (e.g. ray://head:10001 or auto); "
        "without ADDRESS a local Ray is started (needs: pip install 'lotus3d[ray]')",
    )


# ------------------------------------------------------------------------------------ predict
def _predict_args(p: argparse.ArgumentParser) -> None:
    from lotus3d.configs import PredictConfig, add_arguments

    p.add_argument("scene", type=Path, help="scene folder (images in SCENE/images or SCENE itself)")
    p.add_argument("-o", "--out", type=Path, default=None, help="cache folder (default: SCENE/predictions)")
    p.add_argument("--force", action="store_true", help="redo every view, even those already in the cache")
    p.add_argument("--config", type=Path, default=None, help="YAML file with a 'predict:' section")
    _ray_arg(p)
    add_arguments(p, PredictConfig)


@command(
    "predict",
    help="Lotus depth + normals for every image of a scene, into the prediction cache",
    description=(
        "Run Lotus on every image in SCENE/images (or SCENE) and write SCENE/predictions/: meta.json, "
        "depth/<stem>.npy (float32 [H, W], affine-invariant disparity or depth, recorded in meta.json) and "
        "normal/<stem>.npy (float32 [H, W, 3], unit, OpenCV camera frame, facing the camera). Re-runs skip "
        "views already predicted with the same models and settings. Weights come from the Hugging Face cache "
        "(downloaded when online) or a local folder given with --model / --normal-model."
    ),
)
@arguments(_predict_args)
def _predict(args: argparse.Namespace) -> int:
    from lotus3d.configs import PredictConfig, from_args, load_yaml
    from lotus3d.pipelines.predict import predict_scene

    base = load_yaml(PredictConfig, args.config, "predict") if args.config else None
    cfg = from_args(PredictConfig, args, base)
    report = predict_scene(args.scene, cfg, out=args.out, force=args.force, ray_address=args.ray)
    out = args.out or args.scene / "predictions"
    print(
        f"predicted {len(report.predicted)} view(s), {len(report.cached)} already cached, "
        f"{len(report.failed)} failed -> {out}"
    )
    for stem, why in report.failed.items():
        print(f"  failed: {stem}: {why}")
    if report.seconds_per_view:
        print(f"  {report.seconds_per_view:.2f} s per view")
    return 1 if report.failed and not (report.predicted or report.cached) else 0


# -------------------------------------------------------------------------------- reconstruct
def _reconstruct_args(p: argparse.ArgumentParser) -> None:
    from lotus3d.configs import FramesConfig, PredictConfig, ReconstructConfig, add_arguments

    p.add_argument(
        "scene",
        type=Path,
        help="scene folder (photos in SCENE/images, or SCENE itself), or a video (CLIP.mp4: keyframes go to CLIP/)",
    )
    p.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: SCENE/lotus3d)")
    p.add_argument("--force", action="store_true", help="redo every stage instead of resuming")
    p.add_argument(
        "--config", type=Path, default=None, help="YAML file with 'reconstruct:' / 'predict:' / 'frames:' sections"
    )
    _ray_arg(p)
    add_arguments(p, ReconstructConfig)
    add_arguments(p, PredictConfig)
    add_arguments(p, FramesConfig)


@command(
    "reconstruct",
    help="photos -> coloured mesh (COLMAP poses, Lotus depth aligned per view, TSDF fusion)",
    description=(
        "Reconstruct SCENE: poses and sparse points from SCENE/sparse/0 or --colmap, else COLMAP (pycolmap) "
        "SfM; Lotus predictions from SCENE/predictions (missing views are predicted); each view's prediction "
        "aligned to the sparse points with a robust scale and shift; views fused into a TSDF; meshed. Writes "
        "OUT/mesh.ply (+ mesh.glb), OUT/sparse/, OUT/depth/<stem>.npy and OUT/report.json. A re-run resumes "
        "finished stages. Given a video, its keyframes are picked first (as 'lotus3d frames') and matched in "
        "capture order with loop closure."
    ),
)
@arguments(_reconstruct_args)
def _reconstruct(args: argparse.Namespace) -> int:
    from lotus3d.configs import FramesConfig, PredictConfig, ReconstructConfig, from_args, load_yaml
    from lotus3d.pipelines.reconstruct import reconstruct

    rbase = load_yaml(ReconstructConfig, args.config, "reconstruct") if args.config else None
    pbase = load_yaml(PredictConfig, args.config, "predict") if args.config else None
    fbase = load_yaml(FramesConfig, args.config, "frames") if args.config else None
    result = reconstruct(
        args.scene,
        args.out,
        from_args(ReconstructConfig, args, rbase),
        from_args(PredictConfig, args, pbase),
        force=args.force,
        ray_address=args.ray,
        frames_cfg=from_args(FramesConfig, args, fbase),
    )
    r = result.report
    if r.get("video"):
        v = r["video"]
        print(f"video: {v['picked']} keyframes of {v['decoded_frames']} frames ({v['blurred']} blurred or blank)")
    print(
        f"registered {r['sfm'].get('registered')}/{r['sfm'].get('total')} images; aligned {r['aligned_views']} "
        f"view(s), excluded {len(r['excluded_views'])}"
    )
    for name, why in r["excluded_views"].items():
        print(f"  excluded {name}: {why}")
    for name in r["sfm"].get("unregistered", []):
        print(f"  not registered: {name}")
    print(f"mesh: {', '.join(str(p) for p in result.mesh_paths)} ({r['fusion'].get('triangles')} triangles)")
    print(f"report: {result.out / 'report.json'}")
    return 0


# ------------------------------------------------------------------------------------- frames
def _frames_args(p: argparse.ArgumentParser) -> None:
    from lotus3d.configs import FramesConfig, add_arguments

    p.add_argument("video", type=Path, help="video file (mp4, mov, webm, mkv, avi; rotation metadata applied)")
    p.add_argument("-o", "--out", type=Path, default=None, help="scene folder to write (default: VIDEO without suffix)")
    p.add_argument("--force", action="store_true", help="pick again even if OUT/frames.json matches")
    add_arguments(p, FramesConfig)


@command(
    "frames",
    help="video -> keyframes for 'reconstruct' (blurred frames dropped, spacing by camera motion)",
    description=(
        "Decode VIDEO once, scoring each frame's sharpness against its neighbours and tracking features from "
        "frame to frame; pick sharp keyframes spaced by camera motion (enough overlap for SfM, enough parallax "
        "for depth), between --min-frames and --max-frames. Writes OUT/images/frame_<index>.jpg and "
        "OUT/frames.json (each keyframe's source index, time and sharpness; every frame's scores). "
        "'lotus3d reconstruct OUT' then reconstructs them; 'lotus3d reconstruct VIDEO' does both."
    ),
)
@arguments(_frames_args)
def _frames(args: argparse.Namespace) -> int:
    from lotus3d.configs import FramesConfig, from_args
    from lotus3d.pipelines.frames import extract_frames

    r = extract_frames(args.video, args.out, from_args(FramesConfig, args), force=args.force)
    rep, out = r.report, r.scene
    state = "reused" if r.reused else f"{rep['seconds']['score'] + rep['seconds']['write']:.1f} s"
    print(
        f"{len(r.names)} keyframes of {rep['decoded_frames']} frames ({len(rep['blurred'])} blurred or blank; "
        f"{state}) -> {out / 'images'}"
    )
    print(f"record: {out / 'frames.json'}; next: lotus3d reconstruct {out}")
    return 0


# ------------------------------------------------------------------------------------- single
def _single_args(p: argparse.ArgumentParser) -> None:
    from lotus3d.configs import PredictConfig, SingleConfig, add_arguments

    p.add_argument("image", type=Path, help="the photo")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="mesh to write: .glb (default, IMAGE.glb), .obj (+ .mtl, texture) or .ply (vertex colours)",
    )
    p.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="prediction cache folder (meta.json, depth/, normal/) instead of running Lotus",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML file with 'single:' / 'predict:' sections")
    add_arguments(p, SingleConfig)
    add_arguments(p, PredictConfig)


@command(
    "single",
    help="one photo -> a textured mesh (normals integrated with the depth as a prior)",
    description=(
        "Reconstruct one photo: Lotus depth and normals (or a prediction cache), the shift of the affine-invariant "
        "depth recovered from the normals, perspective bilateral normal integration with the depth as a soft "
        "prior, and a mesh of the pixel grid cut at depth discontinuities. Writes OUT (GLB / OBJ with texture, "
        "PLY with vertex colours), OUT.depth.npy (refined depth, median = --scale), OUT.preview.png and OUT.json."
    ),
)
@arguments(_single_args)
def _single(args: argparse.Namespace) -> int:
    from lotus3d.configs import PredictConfig, SingleConfig, from_args, load_yaml
    from lotus3d.pipelines.single import run_single

    sbase = load_yaml(SingleConfig, args.config, "single") if args.config else None
    pbase = load_yaml(PredictConfig, args.config, "predict") if args.config else None
    cfg, pcfg = from_args(SingleConfig, args, sbase), from_args(PredictConfig, args, pbase)
    r = run_single(args.image, args.out, cfg, pcfg, args.predictions)
    rep = r.report
    print(f"mesh: {r.mesh} ({rep['triangles']} triangles); depth: {r.depth}; preview: {r.preview}")
    how = "" if rep["shift_determined"] else f" ({rep['shift_note']})"
    print(
        f"intrinsics: {rep['intrinsics_source']}; shift {rep['shift']:.4g}{how}; predicted normals agree with the "
        f"depth prior to {rep['normal_agreement_deg']:.1f} deg on average"
    )
    if rep["integration"]["fallback"]:
        print(f"note: the mesh is the depth prediction itself: {rep['integration']['fallback']}")
    conv = rep["convention"]
    if not conv["ok"]:
        state = "applied" if conv["applied"] else "NOT applied (use --auto-convention)"
        print(f"warning: the normals agree better with axis signs {conv['best_signs']}: {state}")
    return 0


# ------------------------------------------------------------------------------------- warmup
@command(
    "warmup",
    help="compile the single-view kernels once (numba), so that the first 'single' is fast",
    description=(
        "Compile the single-view kernels (normal integration, shift search) and store them in numba's disk cache "
        "(the package's __pycache__, or NUMBA_CACHE_DIR). A machine's first compile takes tens of seconds on a small "
        "CPU; afterwards every process loads them in under a second. 'lotus3d single' also starts this in the "
        "background by itself."
    ),
)
def _warmup(args: argparse.Namespace) -> int:
    from lotus3d.single import warm_up

    print(f"single-view kernels ready in {warm_up():.1f} s")
    return 0


# --------------------------------------------------------------------------------------- demo
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--out", type=Path, default=Path("lotus3d_demo"), help="output folder (default: ./lotus3d_demo)"
    )
    p.add_argument("--views", type=int, default=24, help="number of rendered views (default: 24)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--real", action="store_true", help="run Lotus on the rendered images (needs the weights)")
    mode.add_argument("--simulated", action="store_true", help="simulate predictions even if weights are available")
    p.add_argument("--model", dest="depth_model", default=None, help="Lotus depth checkpoint (id or folder)")
    p.add_argument("--normal-model", default=None, help="Lotus normal checkpoint (id or folder)")


@command(
    "demo",
    help="reconstruct a bundled synthetic scene end to end and score it against the ground truth",
    description=(
        "Render the bundled public-domain Spot cow on a textured floor from orbiting cameras (exact poses and "
        "SfM-like sparse points), get predictions (Lotus when its weights are available, else SIMULATED the way "
        "Lotus errs, and said so), run the real reconstruction pipeline, and print the mesh path and its F-score "
        "against the ground truth."
    ),
)
@arguments(_demo_args)
def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lotus3d.configs import PredictConfig
    from lotus3d.pipelines.demo import run_demo

    pcfg = PredictConfig()
    if args.depth_model:
        pcfg = replace(pcfg, depth_model=args.depth_model)
    if args.normal_model:
        pcfg = replace(pcfg, normal_model=args.normal_model)
    mode = "real" if args.real else "simulated" if args.simulated else "auto"
    r = run_demo(args.out, views=args.views, mode=mode, pcfg=pcfg)
    m = r.metrics
    if r.used_lotus:
        print("predictions: Lotus (real inference on the rendered images)")
    else:
        print(f"predictions: SIMULATED, not Lotus output ({r.why})")
        print(
            "  The geometry pipeline is real. With Lotus weights (cached, online, or --model PATH) the demo runs "
            "Lotus itself; --real insists on it."
        )
    print(f"scene: {r.scene} (rendered from the Spot cow mesh, exact ground truth in {r.scene / 'gt'})")
    print(f"mesh: {r.mesh}")
    print(
        f"F-score {m['fscore']:.3f} at {m['threshold']:.3f} (2% of the scene's {m['scene_diagonal']:.2f} diagonal); "
        f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, chamfer {m['chamfer']:.4f}"
    )
    print(f"done in {r.seconds:.1f} s")
    return 0


# ------------------------------------------------------------------------------------- doctor
@command(
    "doctor",
    help="what this installation has: torch build and device, libraries, extras, Lotus weights found",
    description=(
        "Print the versions lotus3d runs with (Python, torch and its build, the device 'auto' picks, open3d, "
        "pycolmap, PyAV, diffusers), which optional extras are installed (plots, app, ray, openvino), and whether "
        "the default Lotus checkpoints are in the Hugging Face cache (nothing is downloaded). Exit code 1 when a "
        "required library does not import."
    ),
)
def _doctor(args: argparse.Namespace) -> int:
    import importlib
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    ok = True
    print(f"lotus3d {_version()} on Python {platform.python_version()} ({platform.system()} {platform.machine()})")
    try:
        import torch

        cuda = torch.version.cuda
        build = f"CUDA {cuda}" if cuda else "CPU"
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        threads = torch.get_num_threads()
        print(f"torch {torch.__version__} ({build} build); device 'auto' -> {device}; {threads} threads")
    except ImportError as e:
        ok = False
        print(f"torch: MISSING ({e})")
    for name, module in (
        ("open3d", "open3d"),
        ("pycolmap", "pycolmap"),
        ("av", "av"),
        ("diffusers", "diffusers"),
        ("numba", "numba"),
    ):
        try:
            importlib.import_module(module)
            print(f"{name} {ver(name) or '?'}")
        except Exception as e:  # an import can fail for reasons other than absence (libusb for open3d)
            ok = False
            print(f"{name}: FAILS TO IMPORT ({e})")
    extras = {
        "plots": ("matplotlib", "plotly", "pandas"),
        "app": ("gradio",),
        "ray": ("ray",),
        "openvino": ("openvino",),
    }
    for extra, dists in extras.items():
        found = [f"{d} {ver(d)}" for d in dists if ver(d)]
        state = ", ".join(found) if len(found) == len(dists) else f"not installed (pip install 'lotus3d[{extra}]')"
        print(f"extra '{extra}': {state}")
    from lotus3d.configs import PredictConfig
    from lotus3d.errors import ModelError
    from lotus3d.predict import resolve_checkpoint

    cfg = PredictConfig()
    for model in (cfg.depth_model, cfg.normal_model):
        try:
            print(f"weights {model}: {resolve_checkpoint(model, local_files_only=True)}")
        except ModelError:
            print(f"weights {model}: not in the cache (downloaded on first use when online; or --model PATH)")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------- app
def _app_args(p: argparse.ArgumentParser) -> None:
    from lotus3d.configs import PredictConfig, add_arguments

    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--max-upload-mb", type=int, default=200, help="largest upload, per file, in MB (default: 200)")
    p.add_argument("--max-photos", type=int, default=150, help="most photos in one scene (default: 150)")
    add_arguments(p, PredictConfig)


@command(
    "app",
    help="a web page: photo(s) or a video in, interactive 3D out (Gradio; pip install 'lotus3d[app]')",
    description=(
        "Serve the lotus3d web app: a Single image tab (photo -> depth, normals, textured mesh, downloads; API "
        "endpoint /single) and a Scene tab (photos, a video or a zipped scene folder -> reconstruction; /scene). "
        "Without Lotus weights the demo scene runs with simulated predictions; --model / --normal-model point "
        "at local checkpoints. Jobs run one at a time; uploads are checked and kept in per-session temporary "
        "folders, removed when the session ends and when the server stops."
    ),
)
@arguments(_app_args)
def _app(args: argparse.Namespace) -> int:
    from lotus3d.configs import PredictConfig, from_args
    from lotus3d.errors import InputError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError("the app needs Gradio: pip install 'lotus3d[app]'") from None
    from lotus3d.app import AppLimits, serve

    limits = AppLimits(args.max_upload_mb, max_photos=args.max_photos)
    serve(from_args(PredictConfig, args), args.host, args.port, limits)
    return 0


# ------------------------------------------------------------------------------------- report
def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="reconstruction folder (SCENE/lotus3d) or the scene folder")
    p.add_argument("--max-views", type=int, default=60, help="views with panels (the worst first; default: 60)")


@command(
    "report",
    help="write OUT/report.html: summary table, per-view panels, interactive 3D view",
    description="One self-contained HTML file (works offline) to inspect a reconstruction: the per-view "
    "alignment table and quality chart, each view's image / depth / normals / residuals and alignment scatter, "
    "and an interactive 3D view of the mesh, cameras (coloured by alignment quality) and sparse points.",
)
@arguments(_report_args)
def _report(args: argparse.Namespace) -> int:
    from lotus3d.report import write_report

    print(f"report: {write_report(args.out, max_views=args.max_views)}")
    return 0


# --------------------------------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", type=Path, help="reconstructed mesh (PLY, GLB, OBJ)")
    p.add_argument("gt", type=Path, help="ground-truth mesh")
    p.add_argument("--threshold", type=float, default=None, help="F-score distance in scene units")
    p.add_argument(
        "--threshold-fraction",
        type=float,
        default=0.02,
        help="F-score distance as a fraction of the (seen) GT diagonal when --threshold is not given (default: 0.02)",
    )
    p.add_argument(
        "--cameras", type=Path, default=None, help="COLMAP model folder: restrict the GT to what its cameras see"
    )
    p.add_argument("--samples", type=int, default=200_000, help="points sampled on each mesh (default: 200000)")


@command(
    "eval",
    help="mesh accuracy against a ground-truth mesh: accuracy, completeness, chamfer, F-score",
    description="Compare PRED with GT by sampling both surfaces: accuracy (pred->GT), completeness (GT->pred), "
    "chamfer, precision, recall and F-score at a threshold; prints JSON.",
)
@arguments(_eval_args)
def _eval(args: argparse.Namespace) -> int:
    from lotus3d.errors import InputError
    from lotus3d.mesh import load_mesh
    from lotus3d.metrics import evaluate_mesh
    from lotus3d.sfm import read_model

    for p in (args.pred, args.gt):
        if not p.is_file():
            raise InputError(f"mesh not found: {p}")
    cams = list(read_model(args.cameras).cameras.values()) if args.cameras else None
    metrics = evaluate_mesh(
        load_mesh(args.pred),
        load_mesh(args.gt),
        args.threshold,
        args.threshold_fraction,
        cams,
        args.samples,
    )
    print_json(metrics)
    return 0


# -------------------------------------------------------------------------------------- bench
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "stage",
        choices=["predict", "reconstruct", "single", "ray", "texture", "video"],
        help="which stage to benchmark",
    )
    p.add_argument(
        "--size",
        choices=["sd2", "tiny"],
        default="sd2",
        help="model size for 'predict' (sd2: the real checkpoints' sizes; default: sd2)",
    )
    p.add_argument(
        "--processing-res", type=int, default=768, help="processing resolution, 'predict' and photos (default: 768)"
    )
    p.add_argument("-o", "--out", type=Path, default=None, help="folder for outputs and summary.json")
    p.add_argument(
        "--prediction",
        choices=["realistic", "simple"],
        default="realistic",
        help="'reconstruct': simulated prediction errors (default: realistic, calibrated to Lotus)",
    )
    p.add_argument(
        "--family",
        action="store_true",
        help="'reconstruct': every simulated error mode on both scenes, parameters drawn per scene, then the mixed "
        "mode with our own SfM from the photos alone (slow: ~35 min)",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="'reconstruct': time and memory of the local correction alone at 1k, 10k, 50k points per view",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="'single': timed runs of each solver per input, interleaved; the median is reported (default: 3)",
    )
    p.add_argument(
        "--part",
        choices=["all", "solvers", "priors", "focal", "photos"],
        default="all",
        help="'single': which part to run: the integration solvers (panel, DiLiGenT), the depth step on "
        "simulated predictions (~6 min), the field of view recovered from the normals on views rendered at "
        "40, 55 and 75 degrees (~6 min), lotus3d single on the real photos (needs Lotus weights), or all",
    )
    p.add_argument(
        "--model",
        default=None,
        help="'single' photos: the depth checkpoint, a Hugging Face id or a local folder (default: as lotus3d single)",
    )
    p.add_argument(
        "--normal-model",
        default=None,
        help="'single' photos: the normal checkpoint (default: as lotus3d single)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="'single': the draw of scenes, cameras and prediction errors for the depth step (default 0: the "
        "figures in docs/benchmarks.md; any other: a held-out draw nothing was tuned on)",
    )
    p.add_argument(
        "--fov",
        type=float,
        default=None,
        help="'single': horizontal field of view of the depth step's views, degrees (default: 55 around the "
        "objects, 60 in the room)",
    )
    p.add_argument(
        "--normal-bias-scale",
        type=float,
        default=1.0,
        help="'single': scales the simulated normals' smooth bias (2-6 degrees) in the depth step's rows; 0 "
        "removes it, to measure what it costs (default: 1)",
    )
    p.add_argument(
        "--resolution",
        default="768x576",
        help="'single': WIDTHxHEIGHT of the depth step's views (default: 768x576)",
    )


@command(
    "bench",
    help="benchmarks: ours vs a baseline, measured side by side (not tests)",
    description="Benchmarks print ours vs a baseline measured in the same run, as ratios. "
    "'predict': depth + normal for one 640x480 image with random-initialised SD2-sized Lotus models "
    "(built once into ~/.cache/lotus3d/bench-models, or $LOTUS3D_CACHE/bench-models, ~10 GB) vs a plain "
    "reference of the official pipeline. "
    "'reconstruct': rendered scenes with exact ground truth, fused from GT depth, an oracle per-view affine fit, "
    "naive least squares and ours. 'single': normal integration vs a plain Jacobi-CG BiNI (as is and with BLAS "
    "on one thread) on a panel of six rendered views at three sizes and the DiLiGenT objects, then the whole "
    "depth step on simulated predictions of every error mode (objects on a floor, views inside a room) vs the "
    "prediction itself, naive and with the oracle shift (--part, --seed for held-out draws), the field of view "
    "recovered from the normals on views rendered at 40, 55 and 75 degrees, and lotus3d single on the shared "
    "real photos (with Lotus weights; qualitative). "
    "'ray': views per second, local vs a local Ray cluster. "
    "'texture': the baked texture vs vertex colours on the same geometry, PSNR in training and held-out cameras. "
    "'video': keyframes picked from rendered walk-around clips vs as many ideal photos, same pipeline.",
)
@arguments(_bench_args)
def _bench(args: argparse.Namespace) -> int:
    if args.stage == "predict":
        from lotus3d.bench.predict import run

        run(args.size, args.processing_res, out=args.out)
    elif args.stage == "ray":
        from lotus3d.bench.ray import run as run_ray

        run_ray(out=args.out)
    elif args.stage == "texture":
        from lotus3d.bench.texture import run as run_texture

        run_texture(out=args.out)
    elif args.stage == "video":
        from lotus3d.bench.video import run as run_video

        run_video(out=args.out)
    elif args.stage == "single":
        from lotus3d.bench.single import run as run_single_bench
        from lotus3d.configs import PredictConfig
        from lotus3d.errors import InputError

        if args.repeats < 1:
            raise InputError(f"--repeats must be at least 1, not {args.repeats}")
        try:
            size = tuple(int(x) for x in args.resolution.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 64:
            raise InputError(
                f"--resolution must be WIDTHxHEIGHT, each at least 64 (e.g. 768x576), not {args.resolution!r}"
            )
        if args.fov is not None and not 10 <= args.fov <= 120:
            raise InputError(f"--fov must be between 10 and 120 degrees, not {args.fov:g}")
        if not 0 <= args.normal_bias_scale <= 10:
            raise InputError(f"--normal-bias-scale must be between 0 and 10, not {args.normal_bias_scale:g}")
        models = {k: v for k, v in (("depth_model", args.model), ("normal_model", args.normal_model)) if v}
        part = {
            "all": {},
            "solvers": {"priors": False, "photos": False, "focal": False},
            "priors": {"sizes": (), "diligent": False, "photos": False, "focal": False},
            "focal": {"sizes": (), "diligent": False, "priors": False, "photos": False},
            "photos": {"sizes": (), "diligent": False, "priors": False, "focal": False},
        }[args.part]
        run_single_bench(
            repeats=args.repeats,
            out=args.out,
            seed=args.seed,
            prior_size=size,
            fov_deg=args.fov,
            normal_bias_scale=args.normal_bias_scale,
            pcfg=PredictConfig(processing_res=args.processing_res, **models),
            **part,
        )
    elif args.scaling:
        from lotus3d.bench.reconstruct import alignment_scaling

        alignment_scaling()
    elif args.family:
        from lotus3d.bench.reconstruct import run_family, run_own_sfm

        run_family(out=args.out)
        run_own_sfm(family=args.out)
    else:
        from lotus3d.bench.reconstruct import run as run_reconstruct
        from lotus3d.configs import ReconstructConfig

        extra = {
            "ours without consistency": ReconstructConfig(consistency=False),
            "ours, global fit only": ReconstructConfig(local_alignment=False, consistency=False, refine_rounds=0),
        }
        run_reconstruct(out=args.out, prediction=args.prediction, extra_variants=extra)
    return 0


# ---------------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lotus3d",
        description="3D reconstruction with Lotus depth and normals: photos in, coloured mesh out.",
        epilog="Run 'lotus3d COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output: -v progress notes, -vv debug"
    )
    parser.add_argument("--version", action="version", version=f"lotus3d {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, add, help_text, description) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description)
        add(p)
        p.set_defaults(_fn=fn)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lotus3d")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),  # warnings by default; -v info, -vv debug
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_libraries()
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 0
    try:
        return int(args._fn(args) or 0)
    except Lotus3DError as e:
        print(f"lotus3d {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk that cannot be written, a permission problem
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"lotus3d {args.command}: error: cannot access{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished views are kept and a re-run resumes", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Hide transformers / diffusers loading bars and info chatter (our own tqdm bars remain)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
