"""`lotus3d app`: the real server in a subprocess with tiny random checkpoints; the page in headless
Chromium, the /single and /scene endpoints through gradio_client, bad uploads, a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from lotus3d.io import save_image
from lotus3d.scenes import preset_cameras, preset_meshes, world_light, write_scene
from lotus3d.synthetic import Renderer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    """The app on a free local port; its temporary files under a folder of its own."""
    tmp = tmp_path_factory.mktemp("app-tmp")
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "lotus3d.cli", "app", "--port", str(port), "--model", str(tiny_models["depth_g"])]
    cmd += ["--normal-model", str(tiny_models["normal_g"])]
    log = open(tmp / "app.log", "w")  # noqa: SIM115 (open for the server's whole life)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited early:\n{(tmp / 'app.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the app did not answer within 180 s")
    yield {"url": url, "proc": proc, "tmp": tmp}
    if proc.poll() is None:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    meshes = preset_meshes("orbit")
    cam = preset_cameras("orbit", meshes, 8, 320, 240)[1]
    path = tmp_path_factory.mktemp("photo") / "cow.png"
    save_image(path, Renderer(meshes, background=(0.8, 0.8, 0.85)).render(cam, world_light(cam)).image)
    return path


def test_page_renders_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server["url"], wait_until="load", timeout=120_000)
        page.get_by_role("button", name="Reconstruct", exact=True).wait_for(timeout=60_000)
        assert page.get_by_text("Single image").first.is_visible() and page.get_by_text("Scene").first.is_visible()
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.std() > 10  # not a blank page
    assert not errors, errors


def test_single_endpoint_returns_a_mesh(server, photo):
    client = Client(server["url"], verbose=False)
    t0 = time.perf_counter()
    depth, normals, mesh, downloads = client.predict(handle_file(str(photo)), 256, 0, 20000, api_name="/single")
    seconds = time.perf_counter() - t0
    loaded = trimesh.load(mesh, force="mesh")
    assert len(loaded.faces) > 1000 and isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    names = sorted(Path(d).name for d in downloads)
    assert names == ["depth.png", "mesh.depth.npy", "mesh.glb", "mesh.ply", "mesh_obj.zip"]
    assert np.load(next(d for d in downloads if d.endswith(".npy"))).shape == (240, 320)
    assert seconds < 60, f"/single took {seconds:.1f} s"
    print(f"/single with the tiny checkpoints: {seconds:.1f} s")


def test_bad_uploads_get_a_message_not_a_traceback(server, tmp_path):
    client = Client(server["url"], verbose=False)
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    with pytest.raises(AppError, match="Invalid file type"):  # refused on upload, before any work
        client.predict(handle_file(str(text)), 256, 0, 0, api_name="/single")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG but not really")
    with pytest.raises(AppError, match="not a readable image"):
        client.predict(handle_file(str(fake)), 256, 0, 0, api_name="/single")
    with pytest.raises(AppError, match="at least two photos"):
        client.predict([handle_file(str(fake))], 256, 0, False, 80, api_name="/scene")


def test_scene_with_cached_predictions_completes(server, tmp_path):
    """A zipped 10-photo scene with its predictions and poses: the whole pipeline through the app."""
    scene = tmp_path / "scene"
    write_scene(scene, "orbit", 10, 320, 240, seed=1, sparse_points=800)
    archive = tmp_path / "my_scene.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for sub in ("images", "predictions", "sparse"):
            for f in (scene / sub).rglob("*"):
                if f.is_file():
                    zf.write(f, Path("my_scene") / f.relative_to(scene))
    client = Client(server["url"], verbose=False)
    mesh, summary, out_zip = client.predict([handle_file(str(archive))], 256, 0, False, 80, api_name="/scene")
    assert "10 of 10 images registered, 10 aligned" in summary
    assert len(trimesh.load(mesh, force="mesh").faces) > 1000
    with zipfile.ZipFile(out_zip) as zf:
        assert {"report.json", "mesh.ply", "mesh.glb"} <= set(zf.namelist())


def test_staging_refuses_mixtures_and_keeps_zip_paths_inside(tmp_path):
    from lotus3d.app import AppLimits, stage_scene
    from lotus3d.errors import InputError

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        save_image(p, np.full((8, 8, 3), 0.5))
    (tmp_path / "v.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match="not a mixture"):
        stage_scene([a, tmp_path / "v.mp4"], tmp_path / "s1", AppLimits())
    with pytest.raises(InputError, match="at most 1"):
        stage_scene([a, b], tmp_path / "s2", AppLimits(max_photos=1))
    archive = tmp_path / "scene.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(a, "top/images/a.png")
        zf.write(b, "top/images/b.png")
        zf.writestr("__MACOSX/top/images/._a.png", b"resource fork")
        zf.writestr("top/images/../../../escaped.txt", b"no")
        zf.writestr("top/notes/readme.txt", b"ignored")
    scene = stage_scene([archive], tmp_path / "s3", AppLimits())
    assert sorted(p.name for p in (scene / "images").iterdir()) == ["a.png", "b.png"]
    assert not list(tmp_path.rglob("escaped.txt")) and not (scene / "notes").exists()


def test_server_stops_cleanly(server):
    proc = server["proc"]
    sessions = list(Path(server["tmp"]).glob("lotus3d-app-*"))
    assert len(sessions) == 1 and any(sessions[0].rglob("mesh.glb"))  # jobs wrote under the app's root
    assert any(sessions[0].glob("uploads/**/cow.png"))  # the uploads too
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (Path(server["tmp"]) / "app.log").read_text()[-3000:]
    assert not list(Path(server["tmp"]).glob("lotus3d-app-*"))  # its temporary files and the uploads are gone
