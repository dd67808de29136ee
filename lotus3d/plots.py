"""Plots of a :class:`lotus3d.scene.Scene`; each returns the figure (a notebook shows it).

matplotlib for the 2D panels, plotly for the interactive 3D view (Jupyter and standalone HTML).
"""

from __future__ import annotations

import numpy as np

from .align import sample_prediction
from .io import load_image
from .mesh import Mesh, simplify
from .scene import Scene, View


def _mpl():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_frames(scene: Scene, thumbnails: int = 10):
    """A video scene's keyframe selection: a strip of picked frames (evenly chosen among them) above
    every frame's sharpness, blurred frames marked, picked frames highlighted. None without a video."""
    frames = scene.frames
    if not frames:
        return None
    plt = _mpl()
    picked = frames["picked"]
    per = frames["per_frame"]
    shown = [picked[int(i)] for i in np.linspace(0, len(picked) - 1, min(thumbnails, len(picked)))]
    fig = plt.figure(figsize=(16, 4.6), constrained_layout=True)
    grid = fig.add_gridspec(2, len(shown), height_ratios=[1, 1.3])
    for k, p in enumerate(shown):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(load_image(scene.image_path(p["name"])))
        ax.set_title(f"#{p['index']} ({p['time_s']:.1f} s)", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    t = np.arange(len(per["sharpness"]))
    sharp = np.asarray(per["sharpness"], float)
    ax.plot(t, sharp, color="0.4", lw=1, label="sharpness")
    blurred = np.asarray(frames["blurred"], int)
    ax.scatter(blurred, sharp[blurred], marker="x", color="tab:red", s=18, label=f"dropped ({len(blurred)})")
    idx = np.array([p["index"] for p in picked], int)
    ax.scatter(idx, sharp[idx], color="tab:green", s=14, zorder=3, label=f"picked ({len(idx)})")
    ax.set_xlabel("frame")
    ax.set_ylabel("variance of the Laplacian")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_view(view: View):
    """Image / aligned depth / predicted normals / residuals at the sparse points, side by side."""
    plt = _mpl()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), constrained_layout=True)
    axes[0].imshow(view.image)
    axes[0].set_title(view.name)
    depth = view.depth
    if depth is not None:
        im = axes[1].imshow(depth, cmap="turbo_r")
        fig.colorbar(im, ax=axes[1], shrink=0.8, label="depth (scene units)")
    axes[1].set_title("aligned depth" if depth is not None else "aligned depth (view excluded)")
    if view.normal is not None:
        axes[2].imshow(np.clip(-view.normal * 0.5 + 0.5, 0, 1))
    axes[2].set_title("predicted normals")
    uv, _, _ = view.points
    r = view.residuals()
    axes[3].imshow(view.image.mean(-1), cmap="gray", alpha=0.5)
    ok = np.isfinite(r)
    if ok.any():
        lim = max(float(np.percentile(np.abs(r[ok]), 95)), 1e-3)
        sc = axes[3].scatter(uv[ok, 0], uv[ok, 1], c=r[ok], cmap="coolwarm", vmin=-lim, vmax=lim, s=6)
        fig.colorbar(sc, ax=axes[3], shrink=0.8, label="depth / SfM depth - 1")
    axes[3].set_title(f"residuals at {int(ok.sum())} points")
    for a in axes:
        a.set_axis_off()
    return fig


def plot_alignment(view: View):
    """The view's prediction at its SfM points vs the points' target (1/z or z), with the fitted
    line and the inliers."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    a = view.alignment
    pred = view.prediction
    uv, z, _ = view.points
    if pred is None or len(z) == 0:
        ax.set_title(f"{view.name}: no prediction or points")
        return fig
    p = sample_prediction(pred.depth, uv)
    target = 1.0 / z if pred.kind == "disparity" else z
    ok = np.isfinite(p) & np.isfinite(target)
    inlier = np.zeros(len(p), bool)
    if a is not None and a.ok:
        rel = (a.scale * p + a.shift) * (z if pred.kind == "disparity" else 1.0 / z) - 1.0
        thr = max(3 * (a.residual_percentiles or {}).get("p50", 0.01), 0.01)
        inlier = np.abs(rel) < thr
    ax.scatter(p[ok & ~inlier], target[ok & ~inlier], s=6, c="tab:red", label="outliers", alpha=0.6)
    ax.scatter(p[ok & inlier], target[ok & inlier], s=6, c="tab:blue", label="inliers", alpha=0.6)
    if a is not None:
        xs = np.linspace(np.nanmin(p[ok]), np.nanmax(p[ok]), 50)
        ax.plot(xs, a.scale * xs + a.shift, "k-", lw=1.5, label=f"fit: {a.scale:.3g} p + {a.shift:.3g}")
    ax.set_xlabel(f"predicted {pred.kind} (relative)")
    ax.set_ylabel("1 / SfM depth" if pred.kind == "disparity" else "SfM depth")
    ax.set_title(f"{view.name}: {'aligned' if a and a.ok else 'excluded'}")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_alignment_quality(scene: Scene, factor: float = 3.0):
    """Median relative depth residual per view; outliers (> factor x the scene's median) and
    excluded views in red."""
    plt = _mpl()
    names = list(scene.views)
    q = np.array([scene.views[n].quality for n in names])
    bad = set(scene.outliers(factor))
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names)), 3.8), constrained_layout=True)
    colors = ["tab:red" if n in bad else "tab:blue" for n in names]
    ax.bar(range(len(names)), np.nan_to_num(q, nan=0.0), color=colors)
    for i in np.nonzero(~np.isfinite(q))[0]:
        ax.text(i, 0, "excluded", rotation=90, ha="center", va="bottom", fontsize=7, color="tab:red")
    finite = q[np.isfinite(q)]
    if len(finite):
        ax.axhline(factor * np.median(finite), color="tab:red", ls="--", lw=1, label=f"{factor:g} x median")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), [scene.views[n].stem for n in names], rotation=90, fontsize=7)
    ax.set_ylabel("median |depth / SfM depth - 1|")
    ax.set_title("alignment quality per view")
    return fig


def _rgb(colors: np.ndarray) -> list[str]:
    return [f"rgb({r},{g},{b})" for r, g, b in (np.clip(colors, 0, 1) * 255).astype(int)]


def texture_face_colors(textured: Mesh, points: np.ndarray) -> np.ndarray:
    """(N, 3) colours of the textured mesh at the faces nearest to ``points`` (N, 3), sampled from
    the texture at those faces' UV centroids (a decimated copy of the mesh shows the texture)."""
    from scipy.spatial import cKDTree

    from .mesh import sample_texture

    _, nearest = cKDTree(textured.vertices[textured.faces].mean(1)).query(points)
    return sample_texture(textured.texture, textured.uv[textured.faces[nearest]].mean(1))


def _frustum(cam, size: float) -> np.ndarray:
    """(5 + 1 gaps) polyline of a camera frustum in world coordinates."""
    w, h = cam.width, cam.height
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float) @ np.linalg.inv(cam.K).T * size
    T = cam.camera_to_world
    c = T[:3, 3]
    pts = corners @ T[:3, :3].T + c
    path = [c, pts[0], pts[1], c, pts[2], pts[3], c, pts[0], pts[3], pts[2], pts[1]]
    return np.array(path)


def plot_3d(scene: Scene, max_triangles: int = 150_000, max_points: int = 20_000, factor: float = 3.0):
    """Interactive plotly figure: the mesh (decimated to ``max_triangles``; each face coloured from the
    baked texture when the GLB has one, else vertex colours), camera frustums coloured by alignment
    quality (red: outlier / excluded), and the sparse points."""
    import plotly.graph_objects as go

    fig = go.Figure()
    mesh: Mesh = simplify(scene.mesh, max_triangles)
    v, f = mesh.vertices, mesh.faces
    colors = face_colors = None
    textured = scene.textured_mesh
    if textured is not None and len(f):
        face_colors = _rgb(texture_face_colors(textured, v[f].mean(1)))
    elif mesh.colors is not None and len(mesh.colors) == len(v):
        colors = _rgb(mesh.colors)
    fig.add_trace(
        go.Mesh3d(
            x=v[:, 0],
            y=v[:, 1],
            z=v[:, 2],
            i=f[:, 0],
            j=f[:, 1],
            k=f[:, 2],
            vertexcolor=colors,
            facecolor=face_colors,
            color=None if colors or face_colors else "lightgray",
            name="mesh",
            flatshading=True,
            showlegend=True,
        )
    )
    pts = scene.model.points
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(0).choice(len(pts), max_points, replace=False)]
    fig.add_trace(
        go.Scatter3d(
            x=pts[:, 0],
            y=pts[:, 1],
            z=pts[:, 2],
            mode="markers",
            name="sparse points",
            marker={"size": 1.5, "color": "black"},
        )
    )
    bad = set(scene.outliers(factor))
    lo, hi = np.percentile(scene.model.points, [2, 98], axis=0) if len(scene.model.points) else (0, 1)
    size = 0.05 * float(np.linalg.norm(np.asarray(hi) - np.asarray(lo)))
    for name, view in scene.views.items():
        path = _frustum(view.camera, size)
        color = "red" if name in bad else "green"
        fig.add_trace(
            go.Scatter3d(
                x=path[:, 0],
                y=path[:, 1],
                z=path[:, 2],
                mode="lines",
                name=view.stem,
                line={"color": color, "width": 3},
                showlegend=False,
                hovertext=f"{name}: quality {view.quality:.4f}",
                hoverinfo="text",
            )
        )
    fig.update_layout(
        scene={"aspectmode": "data"},
        margin={"l": 0, "r": 0, "t": 30, "b": 0},
        title=f"{len(scene.views)} views, {mesh.num_triangles} triangles shown",
    )
    return fig
