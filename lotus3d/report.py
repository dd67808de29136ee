"""``lotus3d report OUT``: one self-contained HTML file to open or share.

The summary table, the per-view quality chart, each view's panel and alignment scatter (PNG
embedded as base64) and the interactive 3D view (plotly, its JavaScript inlined so the file works
offline). Written atomically to ``OUT/report.html``.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from .io import atomic_write
from .scene import Scene


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(rows) -> str:
    if hasattr(rows, "reset_index"):
        rows = rows.reset_index().to_dict("records")
    if not rows:
        return "<p>no views</p>"
    cols = list(rows[0])

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out: str | Path, max_views: int = 60, max_triangles: int = 40_000) -> Path:
    """Write ``OUT/report.html`` for the reconstruction in ``out``; returns its path.

    With more than ``max_views`` views, the panels show the worst ``max_views`` by quality.
    """
    from .plots import plot_3d, plot_alignment, plot_alignment_quality, plot_frames, plot_view

    scene = Scene.load(out)
    views = sorted(scene.views.values(), key=lambda v: -v.quality if v.quality == v.quality else -1e9)
    views = sorted(views[:max_views], key=lambda v: v.name)
    sections = []
    for v in views:
        sections.append(
            f'<section class="view"><h3>{html.escape(v.name)}</h3>'
            f'<img alt="panel {html.escape(v.name)}" src="{_png(plot_view(v))}">'
            f'<img alt="alignment {html.escape(v.name)}" src="{_png(plot_alignment(v))}"></section>'
        )
    fig3d = plot_3d(scene, max_triangles=max_triangles).to_html(full_html=False, include_plotlyjs=True)
    rep = scene.report
    fusion = rep.get("fusion", {})
    video = ""
    frames_fig = plot_frames(scene)
    if frames_fig is not None:
        fr = scene.frames
        video = (
            f"<h2>Video</h2><p>{html.escape(str(fr.get('video')))}: {len(fr['picked'])} keyframes picked of "
            f"{fr['decoded_frames']} frames; {len(fr['blurred'])} dropped as blurred or blank.</p>"
            f'<img alt="keyframes" src="{_png(frames_fig)}">'
        )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lotus3d report: {html.escape(str(scene.out))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
section.view img {{ max-width: 100%; margin-right: 1em; vertical-align: top; }}
</style></head><body>
<h1>lotus3d reconstruction report</h1>
<p>{html.escape(str(rep.get("scene", "")))}: {rep.get("sfm", {}).get("registered")} of {rep.get("sfm", {}).get("total")}
images registered, {rep.get("aligned_views")} aligned, {len(rep.get("excluded_views", {}))} excluded;
mesh with {fusion.get("triangles")} triangles (voxel {fusion.get("voxel_size", 0):.4g}).
Predictions: {html.escape(str(rep.get("predictions", {}).get("depth", {})))}.</p>
{video}
<h2>3D view</h2>
{fig3d}
<h2>Alignment quality</h2>
<img alt="quality per view" src="{_png(plot_alignment_quality(scene))}">
<h2>Views</h2>
{_table(scene.summary())}
<h2>Per view</h2>
{"".join(sections)}
</body></html>
"""
    path = scene.layout.report_html
    with atomic_write(path, "w") as f:
        f.write(doc)
    return path
