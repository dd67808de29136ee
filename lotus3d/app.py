"""``lotus3d app``: photos in, interactive 3D out, in a browser (Gradio Blocks).

Two tabs over the same pipelines the command line runs:

- **Single image** (endpoint ``/single``): a photo -> coloured depth and normals, the textured mesh
  in a 3D viewer, downloads (GLB, PLY, OBJ zip, depth .npy / .png).
- **Scene** (endpoint ``/scene``): several photos, a video, or a zipped scene folder (``images/``,
  optionally ``predictions/`` and ``sparse/``) -> the reconstruction's mesh, its summary and a zip of
  the output folder; progress per stage (the pipeline's own progress bars). Without Lotus weights,
  the demo scene (simulated predictions, said so on the page) runs through the same pipeline.

Jobs run one at a time (a queue: this is a CPU machine's worth of work). Uploads are checked (kind,
size, pixels, count) before any work starts and land in a per-session folder under one temporary
root, removed when the session ends and when the server stops. Served on 127.0.0.1 unless
``host`` says otherwise.
"""

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .configs import FramesConfig, PredictConfig, ReconstructConfig, SingleConfig
from .errors import InputError, Lotus3DError
from .io import IMAGE_EXTENSIONS, load_image, save_image
from .video import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass
class AppLimits:
    """What an upload may be: size per file (MB), pixels per image, photos per scene."""

    max_upload_mb: int = 200
    max_pixels: int = 40_000_000
    max_photos: int = 150


class Models:
    """The Lotus predictor, loaded on first use and kept (one job at a time uses it)."""

    def __init__(self, pcfg: PredictConfig):
        self.pcfg = pcfg
        self._predictor = None
        self._lock = threading.Lock()

    def predict(self, image: np.ndarray, processing_res: int):
        """(H, W, 3) RGB in [0, 1] -> a Prediction, the model seeing ``processing_res`` pixels."""
        from .pipelines.predict import load_predictor

        with self._lock:
            if self._predictor is None:
                self._predictor = load_predictor(self.pcfg)
            self._predictor.options = replace(self._predictor.options, processing_res=int(processing_res))
            return self._predictor.predict(image)


# ------------------------------------------------------------------------------ checking uploads
def check_image(path: str | Path, limits: AppLimits) -> np.ndarray:
    """The upload as an (H, W, 3) RGB image in [0, 1].

    Raises:
        InputError: not an image we read, or more pixels than ``limits.max_pixels``.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"{path.name} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:
        raise InputError(f"{path.name} is not a readable image") from None
    if w * h > limits.max_pixels:
        raise InputError(f"{path.name} has {w * h / 1e6:.0f} megapixels; at most {limits.max_pixels / 1e6:.0f}")
    return load_image(path)


def stage_scene(files: list[str | Path], folder: Path, limits: AppLimits) -> Path:
    """Put uploaded photos, one video, or one zipped scene folder into ``folder``; returns the scene
    (a folder, or the video's path for ``reconstruct``).

    Raises:
        InputError: a mixture, an unsupported file, too many photos, a zip without images/.
    """
    paths = [Path(f) for f in files or []]
    if not paths:
        raise InputError("upload photos, a video or a zipped scene folder")
    kinds = {_kind(p) for p in paths}
    if None in kinds:
        bad = next(p.name for p in paths if _kind(p) is None)
        raise InputError(f"{bad}: not a photo, a video or a .zip scene folder")
    if len(kinds) > 1 or (kinds != {"image"} and len(paths) > 1):
        raise InputError("upload either photos, or one video, or one .zip scene folder, not a mixture")
    folder.mkdir(parents=True, exist_ok=True)
    kind = kinds.pop()
    if kind == "video":
        target = folder / f"video{paths[0].suffix.lower()}"
        shutil.copyfile(paths[0], target)
        return target
    scene = folder / "scene"
    if kind == "zip":
        _unzip(paths[0], scene, limits)
        return scene
    if len(paths) < 2:
        raise InputError("a scene needs at least two photos (for one photo, use the Single image tab)")
    if len(paths) > limits.max_photos:
        raise InputError(f"{len(paths)} photos; at most {limits.max_photos}")
    (scene / "images").mkdir(parents=True, exist_ok=True)
    for p in paths:
        check_image(p, limits)
        shutil.copyfile(p, scene / "images" / p.name)
    return scene


def _kind(p: Path) -> str | None:
    s = p.suffix.lower()
    return "image" if s in IMAGE_EXTENSIONS else "video" if s in VIDEO_EXTENSIONS else "zip" if s == ".zip" else None


def _unzip(archive: Path, scene: Path, limits: AppLimits) -> None:
    """Extract a zipped scene folder (its images/ at the top or one folder down) into ``scene``."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise InputError(f"{archive.name} is not a readable zip file") from None
    with zf:
        names = [
            n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/") and "/._" not in f"/{n}"
        ]
        images = [n for n in names if "/images/" in f"/{n}" and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise InputError(f"{archive.name} has no images/ folder with photos")
        if len(images) > limits.max_photos:
            raise InputError(f"{archive.name} has {len(images)} photos; at most {limits.max_photos}")
        prefix = images[0][: f"/{images[0]}".index("/images/")]
        total = sum(zf.getinfo(n).file_size for n in names)
        if total > 4 * limits.max_upload_mb * 2**20:
            raise InputError(f"{archive.name} unpacks to {total / 2**20:.0f} MB; too large")
        for n in names:
            if not n.startswith(prefix):
                continue
            rel = Path(n[len(prefix) :].lstrip("/"))
            if rel.is_absolute() or ".." in rel.parts or rel.parts[0] not in ("images", "predictions", "sparse"):
                continue
            dst = scene / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(n) as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
    for p in (scene / "images").iterdir():
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            check_image(p, limits)


# ------------------------------------------------------------------------------------------ jobs
@dataclass
class SingleOutputs:
    depth_png: Path
    normal_png: Path
    glb: Path
    downloads: list[Path]
    report: dict


def single_job(
    image_path: str | Path,
    folder: Path,
    models: Models,
    limits: AppLimits,
    processing_res: int = 768,
    fov_deg: float = 0.0,
    simplify: int = 200_000,
) -> SingleOutputs:
    """One photo -> mesh and downloads in ``folder`` (the same steps as ``lotus3d single``).

    ``fov_deg`` 0: from EXIF, else estimated from the normals.
    """
    import trimesh

    from .cache import CacheMeta, PredictionCache
    from .mesh import export_mesh
    from .pipelines.single import run_single

    image = check_image(image_path, limits)
    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / f"photo{Path(image_path).suffix.lower()}"
    shutil.copyfile(image_path, photo)
    pred = models.predict(image, processing_res)
    cache = PredictionCache(folder / "predictions")
    cache.write_meta(CacheMeta(pred.kind, str(models.pcfg.depth_model), str(models.pcfg.normal_model)))
    cache.write(photo.stem, pred)
    cfg = SingleConfig(fov=fov_deg if fov_deg and fov_deg > 0 else None, simplify=int(simplify))
    result = run_single(photo, folder / "mesh.glb", cfg, predictions=folder / "predictions")
    textured = trimesh.load(result.mesh, force="mesh", process=False)
    ply = export_mesh(_with_vertex_colours(textured), folder / "mesh.ply")
    export_mesh(textured, folder / "obj" / "mesh.obj")
    obj_zip = Path(shutil.make_archive(str(folder / "mesh_obj"), "zip", folder / "obj"))
    preview = load_image(result.preview)
    w = preview.shape[1] // 2
    depth_png, normal_png = folder / "depth.png", folder / "normals.png"
    save_image(depth_png, preview[:, :w])
    save_image(normal_png, preview[:, w:])
    return SingleOutputs(
        depth_png, normal_png, result.mesh, [result.mesh, ply, obj_zip, result.depth, depth_png], result.report
    )


def _with_vertex_colours(tm):
    import trimesh

    if isinstance(tm.visual, trimesh.visual.TextureVisuals):
        colours = tm.visual.to_color().vertex_colors
        return trimesh.Trimesh(tm.vertices, tm.faces, vertex_colors=colours, process=False)
    return tm


@dataclass
class SceneOutputs:
    mesh: Path
    summary: str
    archive: Path


def scene_job(
    files: list[str | Path],
    folder: Path,
    pcfg: PredictConfig,
    limits: AppLimits,
    processing_res: int = 768,
    simplify: int = 0,
    texture: bool = True,
    max_frames: int = 80,
) -> SceneOutputs:
    """Photos / a video / a zipped scene -> reconstruction in ``folder``; the mesh to view, a summary
    (markdown) and a zip of the output folder."""
    from .pipelines.reconstruct import reconstruct

    scene = stage_scene(files, folder, limits)
    cfg = ReconstructConfig(simplify=int(simplify), texture=bool(texture), formats="ply,glb")
    frames = FramesConfig(max_frames=int(max_frames), min_frames=min(FramesConfig.min_frames, int(max_frames)))
    t0 = time.perf_counter()
    result = reconstruct(
        scene, folder / "out", cfg, replace(pcfg, processing_res=int(processing_res)), frames_cfg=frames
    )
    r = result.report
    lines = [
        f"**{r['sfm'].get('registered')} of {r['sfm'].get('total')} images registered, {r['aligned_views']} aligned, "
        f"{len(r['excluded_views'])} excluded; {r['fusion'].get('triangles')} triangles; "
        f"{time.perf_counter() - t0:.0f} s.**",
        f"Predictions: {r['predictions'].get('depth', {})}.",
    ]
    if r.get("video"):
        v = r["video"]
        lines.append(f"Video: {v['picked']} keyframes of {v['decoded_frames']} frames ({v['blurred']} blurred).")
    lines += [f"- excluded {n}: {why}" for n, why in r["excluded_views"].items()]
    archive = Path(shutil.make_archive(str(folder / "reconstruction"), "zip", result.out))
    glb = result.out / "mesh.glb"
    return SceneOutputs(glb if glb.is_file() else result.mesh_paths[0], "\n\n".join(lines), archive)


def demo_job(folder: Path) -> SceneOutputs:
    """The bundled demo scene (simulated predictions) -> mesh, summary, zip."""
    from .pipelines.demo import run_demo

    r = run_demo(folder / "demo", views=16, mode="simulated", progress=True)
    m = r.metrics
    summary = (
        "**Predictions SIMULATED, not Lotus output** (the way Lotus errs); poses, alignment, fusion and meshing "
        f"are the real pipeline. F-score {m['fscore']:.3f} against the exact ground truth; {r.seconds:.0f} s."
    )
    archive = Path(shutil.make_archive(str(folder / "demo_reconstruction"), "zip", r.mesh.parent))
    glb = r.mesh.with_suffix(".glb")
    return SceneOutputs(glb if glb.is_file() else r.mesh, summary, archive)


EXAMPLE_PHOTO = Path(__file__).resolve().parent / "data" / "examples" / "spot_cow.jpg"  # see its SOURCE.txt


# ------------------------------------------------------------------------------------------- page
def build_app(pcfg: PredictConfig, limits: AppLimits | None = None, root: Path | None = None):
    """The Gradio Blocks of the app; ``root`` holds per-session folders (default: a new temporary one)."""
    import gradio as gr

    from .pipelines.demo import lotus_available

    limits = limits or AppLimits()
    root = Path(root or tempfile.mkdtemp(prefix="lotus3d-app-"))
    models = Models(pcfg)
    has_weights, why = lotus_available(pcfg)
    counter = {"n": 0}
    counter_lock = threading.Lock()

    def job_folder(request: gr.Request | None, kind: str) -> Path:
        with counter_lock:
            counter["n"] += 1
            n = counter["n"]
        session = getattr(request, "session_hash", None) or "anonymous"
        return root / "sessions" / str(session) / f"{kind}_{n:04d}"

    def user_error(e: Exception) -> gr.Error:
        return gr.Error(str(e), print_exception=False)

    def on_photo(path):
        try:
            return check_image(path, limits) if path else None
        except InputError as e:
            raise user_error(e) from None

    def on_single(image, processing_res, fov_deg, simplify, request: gr.Request):
        if not image:
            raise gr.Error("upload a photo first", print_exception=False)
        if not has_weights:
            raise gr.Error(f"{why}. Start the app with --model PATH (and --normal-model PATH).", print_exception=False)
        try:
            o = single_job(image, job_folder(request, "single"), models, limits, processing_res, fov_deg, simplify)
        except Lotus3DError as e:
            raise user_error(e) from None
        return str(o.depth_png), str(o.normal_png), str(o.glb), [str(p) for p in o.downloads]

    track = gr.Progress(track_tqdm=True)  # the pipelines' tqdm bars become the page's progress

    def on_scene(files, processing_res, simplify, texture, max_frames, request: gr.Request, progress=track):
        try:
            o = scene_job(
                [getattr(f, "name", f) for f in files or []],
                job_folder(request, "scene"),
                pcfg,
                limits,
                processing_res,
                simplify,
                texture,
                max_frames,
            )
        except Lotus3DError as e:
            raise user_error(e) from None
        return str(o.mesh), o.summary, str(o.archive)

    def on_demo(request: gr.Request, progress=track):
        o = demo_job(job_folder(request, "demo"))
        return str(o.mesh), o.summary, str(o.archive)

    def on_unload(request: gr.Request):
        session = getattr(request, "session_hash", None)
        if session:
            shutil.rmtree(root / "sessions" / str(session), ignore_errors=True)

    status = (
        f"Lotus weights: **{pcfg.depth_model}** (depth), **{pcfg.normal_model}** (normals)."
        if has_weights
        else f"**No Lotus weights here** ({why.split(' (')[0]}). The *demo scene* (Scene tab) runs with simulated "
        "predictions; "
        "start the app with `--model PATH --normal-model PATH` for the real model."
    )
    with gr.Blocks(title="lotus3d", delete_cache=(3600, 6 * 3600), analytics_enabled=False) as app:
        gr.Markdown(
            "# lotus3d\nDepth and normals from **Lotus** (one diffusion step per image), turned into 3D: "
            f"one photo into a textured mesh, or many photos (or a video) into a scene.\n\n{status}"
        )
        with gr.Tab("Single image"):
            with gr.Row():
                with gr.Column():
                    # a file, not gr.Image: a wrong upload then reaches our check and gets our message
                    image = gr.File(label="photo", file_types=["image"], type="filepath")
                    shown = gr.Image(label="the photo", interactive=False, height=240)
                    res = gr.Slider(256, 1536, value=pcfg.processing_res, step=64, label="processing resolution (px)")
                    fov = gr.Number(0, label="horizontal field of view, degrees (0: from EXIF or estimated)")
                    simplify = gr.Number(200_000, precision=0, label="at most this many triangles (0: all)")
                    go = gr.Button("Reconstruct", variant="primary")
                    gr.Examples([[str(EXAMPLE_PHOTO)]], inputs=[image])
                with gr.Column():
                    with gr.Row():
                        depth_img = gr.Image(label="depth (near = warm)", interactive=False)
                        normal_img = gr.Image(label="normals", interactive=False)
                    viewer = gr.Model3D(label="mesh", clear_color=(0.95, 0.95, 0.95, 1.0))
                    files = gr.File(label="downloads: GLB, PLY, OBJ (zip), depth .npy / .png", file_count="multiple")
            go.click(on_single, [image, res, fov, simplify], [depth_img, normal_img, viewer, files], api_name="single")
            image.change(on_photo, [image], [shown], api_visibility="private")
        with gr.Tab("Scene"):
            with gr.Row():
                with gr.Column():
                    uploads = gr.File(
                        label=f"photos (2-{limits.max_photos}), one video, or a zipped scene folder",
                        file_count="multiple",
                        file_types=["image", "video", ".zip"],
                    )
                    sres = gr.Slider(256, 1536, value=pcfg.processing_res, step=64, label="processing resolution (px)")
                    ssimplify = gr.Number(0, precision=0, label="at most this many triangles (0: all)")
                    stexture = gr.Checkbox(True, label="bake a texture from the photos")
                    sframes = gr.Slider(10, 200, value=80, step=5, label="video: at most this many keyframes")
                    sgo = gr.Button("Reconstruct scene", variant="primary")
                    demo_go = gr.Button("Run the demo scene (simulated predictions)")
                with gr.Column():
                    sviewer = gr.Model3D(label="scene mesh", clear_color=(0.95, 0.95, 0.95, 1.0))
                    summary = gr.Markdown()
                    archive = gr.File(label="the output folder (zip)")
            sgo.click(
                on_scene, [uploads, sres, ssimplify, stexture, sframes], [sviewer, summary, archive], api_name="scene"
            )
            demo_go.click(on_demo, [], [sviewer, summary, archive], api_name="demo")
        app.unload(on_unload)
    app.queue(default_concurrency_limit=1, max_size=32)
    app.lotus3d_root = root  # where sessions live (removed by serve on exit)
    return app


def serve(
    pcfg: PredictConfig,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: AppLimits | None = None,
    block: bool = True,
):
    """Start the app; with ``block`` serve until interrupted, then remove its temporary files."""
    import gradio as gr

    limits = limits or AppLimits()
    root = Path(tempfile.mkdtemp(prefix="lotus3d-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "uploads")  # Gradio's upload cache: inside ours, removed with it
    app = build_app(pcfg, limits, root)
    theme = gr.themes.Base(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    try:
        app.launch(
            server_name=host,
            server_port=port,
            max_file_size=f"{limits.max_upload_mb}mb",
            theme=theme,
            prevent_thread_lock=True,
            quiet=True,
            footer_links=["api"],
            ssr_mode=False,
        )
        print(f"lotus3d app: http://{host}:{port} (Ctrl+C to stop)", flush=True)
        if not block:
            return app
        while True:
            # a service manager's stop: clean up as for Ctrl+C. Re-asserted: pycolmap's logging (glog)
            # puts its own crash handler on SIGTERM when a scene first runs SfM.
            signal.signal(signal.SIGTERM, _interrupt)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if block:
            app.close()
            shutil.rmtree(app.lotus3d_root, ignore_errors=True)
    return app


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
