"""The Scene API, plots, the HTML report (rendered in headless Chromium) and the example notebook."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lotus3d import Scene
from lotus3d.align import sample_prediction
from lotus3d.cli import main
from lotus3d.errors import InputError
from lotus3d.pipelines.reconstruct import reconstruct
from lotus3d.scenes import write_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    write_scene(root / "scene", "orbit", 10, 240, 180, seed=4, sparse_points=1200, outlier_fraction=0.1)
    reconstruct(root / "scene", progress=False)
    out = root / "scene" / "lotus3d"
    # spoil one view's aligned depth so that the inspection tools have an outlier to find
    d = out / "depth" / "view_003.npy"
    np.save(d, np.load(d) * 1.3)
    return out


def test_load_is_lazy_and_views_carry_everything(out):
    scene = Scene.load(out)
    assert len(scene) == 10 and "mesh" not in scene.__dict__
    v = scene["view_002"]
    assert "image" not in v.__dict__ and "depth" not in v.__dict__
    assert v.image.shape == (180, 240, 3) and v.depth.shape == (180, 240)
    assert v.normal.shape == (180, 240, 3) and v.prediction.kind == "disparity"
    uv, z, xyz = v.points
    assert len(uv) == len(z) == len(xyz) > 50
    assert v.camera.K.shape == (3, 3) and v.camera.world_to_camera.shape == (4, 4)
    assert v.alignment.ok and v.alignment.num_inliers > 0
    assert scene.mesh.num_triangles > 1000 and "mesh" in scene.__dict__
    assert Scene.load(out.parent).out == out  # the scene folder works too


def test_summary_and_outliers(out):
    scene = Scene.load(out)
    table = scene.summary()
    assert len(table) == 10 and {"aligned", "points", "inliers", "scale", "shift", "quality"} <= set(table.columns)
    assert table.loc["view_003.png", "quality"] > 0.2  # the spoilt view
    assert scene.outliers() == ["view_003.png"]
    # each stage's error on held-out points, per view, refinement rounds included (from report.json)
    stages = {f"heldout_{k}" for r in scene.report["refinement"] if r["accepted"] for k in [f"refined_{r['round']}"]}
    assert {"heldout_global", "heldout_local", *stages} <= set(table.columns)
    assert (table["heldout_global"] > 0).all() and (table["heldout_local"] < 0.1).all()


def test_plots_return_figures_with_the_data(out):
    from lotus3d.plots import plot_3d, plot_alignment, plot_alignment_quality, plot_view

    scene = Scene.load(out)
    v = scene["view_001.png"]
    fig = plot_view(v)
    titles = [a.get_title() for a in fig.axes[:4]]
    assert titles[0] == "view_001.png" and titles[1] == "aligned depth" and "residuals" in titles[3]
    assert fig.axes[1].images[0].get_array().shape == (180, 240)
    fig = plot_alignment(v)
    ax = fig.axes[0]
    n_scatter = sum(len(c.get_offsets()) for c in ax.collections)
    uv, _, _ = v.points
    assert n_scatter == np.isfinite(sample_prediction(v.prediction.depth, uv)).sum() > 50
    assert ax.lines and "fit" in ax.lines[0].get_label()
    fig = plot_alignment_quality(scene)
    bars = fig.axes[0].patches
    assert len(bars) == 10
    red = [b for b in bars if b.get_facecolor()[0] > 0.8 and b.get_facecolor()[2] < 0.3]
    assert len(red) == 1 and red[0].get_height() == pytest.approx(scene["view_003"].quality)
    f3 = plot_3d(scene, max_triangles=5000)
    kinds = [t.type for t in f3.data]
    assert kinds.count("mesh3d") == 1 and len(f3.data[0].i) <= 5000
    # its faces take their colours from the baked texture (the GLB), not the vertex colours
    assert f3.data[0].facecolor is not None and len(f3.data[0].facecolor) == len(f3.data[0].i)
    assert f3.data[0].vertexcolor is None and scene.textured_mesh.texture.shape[0] >= 128
    frustums = [t for t in f3.data if t.type == "scatter3d" and t.mode == "lines"]
    assert len(frustums) == 10 and sum(t.line.color == "red" for t in frustums) == 1


def test_report_renders_in_headless_chromium(out, tmp_path):
    from playwright.sync_api import sync_playwright

    assert main(["report", str(out)]) == 0
    page_errors = []
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: page_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto((out / "report.html").as_uri())
        page.wait_for_selector(".js-plotly-plot", timeout=30000)
        page.screenshot(path=str(shot), full_page=False)
        n_imgs = page.locator("img").count()
        browser.close()
    assert page_errors == []
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.std() > 10  # not blank
    assert n_imgs >= 1 + 2 * 10  # quality chart + panel and scatter per view


def test_missing_or_partial_output_names_the_stage(out, tmp_path):
    with pytest.raises(InputError, match="run 'lotus3d reconstruct SCENE' first"):
        Scene.load(tmp_path / "nothing")
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "report.json").unlink()
    with pytest.raises(InputError, match="fusion / mesh stage did not finish"):
        Scene.load(partial)
    shutil.rmtree(partial / "work")
    with pytest.raises(InputError, match="alignment stage did not finish"):
        Scene.load(partial)
    shutil.rmtree(partial / "sparse")
    with pytest.raises(InputError, match="poses stage did not finish"):
        Scene.load(partial)
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_example_notebook_executes():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "inspect_scene.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    outputs = [c.outputs for c in nb.cells if c.cell_type == "code"]
    assert all(not any(o.output_type == "error" for o in out) for out in outputs)
    assert any(o.output_type == "display_data" for out in outputs for o in out)  # figures were shown
