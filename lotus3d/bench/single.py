"""Benchmark of normal integration: ours vs a straightforward BiNI with Jacobi-preconditioned CG.

``lotus3d bench single`` integrates, side by side with both solvers:

- a panel of six rendered views (PANEL: the bundled cow from four sides, the shared Fuze bottle
  from two) at 256x256, 512x512 and 768x576: exact depth and face normals, perspective, the
  object's mask; the cow's legs, head, ears and horns overlap, so there are depth discontinuities,
  and from some sides pieces that touch the rest only across a discontinuity (their offset is not
  in the normals). Each size ends with a summary over the panel: time summed over the views, and
  on how many views each solver had the lower error. One view decides little: which solver's
  error is lower changes from view to view (the fixed point of the reweighting is path dependent);
- the nine DiLiGenT objects in BiNI's format under ``shared/data/normal_maps_diligent`` (real
  photometric-stereo normals, 612x512, GT depth in mm), when that folder is present.

A third part (:func:`prior_family_rows`) runs ``lotus3d single``'s depth step on simulated
predictions of every error mode, three views of each of the two synthetic presets and four from
inside the shared copy-room scan at 768x576, and compares the result with the prediction itself:
naive (no shift), with the oracle shift and with our shift; other seeds, sizes and fields of view
draw held-out rows. A fourth (:func:`focal_rows`) recovers the field of view from the normals on
those views rendered at 40, 55 and 75 degrees. A fifth (:func:`photo_rows`) runs ``lotus3d single``
on the shared real photos with Lotus (qualitative: an overview image; skipped, with the reason,
without weights).

It reports time, peak memory (tracemalloc: numpy allocations) and the mean absolute depth error
after median scaling (MADE; relative to the mean GT depth for the panel, millimetres for DiLiGenT, as
BiNI reports it). The reference follows the BiNI formulation plainly: sparse difference matrices,
normal equations by sparse products each iteration, scipy ``cg`` with a Jacobi preconditioner warm
started from the last depth, k = 2, tol 1e-4, CG tol 1e-3 (on DiLiGenT it reproduces BiNI's
published mean MADE, 1.5036 mm, to 0.3 %). It is timed twice: as is, and with BLAS held to one
thread (on a 2-core VM numpy's multi-threaded dot products inside scipy's ``cg`` slowed it by a
varying 1.1-2x; ours calls no BLAS). Our numba kernels are compiled (or loaded from numba's disk
cache) once per process, before timing; that one-off time is printed too. Times are medians of
``repeats`` (3) runs, interleaved, each started after 0.5 s idle; peak memory comes from a separate
run of each.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import cg
from threadpoolctl import threadpool_limits

from ..configs import PredictConfig
from ..integrate import integrate_normals, log_depth_gradients
from ..io import load_image
from ..mesh import load_mesh
from ..scenes import bundled_cow
from ..simulate import ERROR_MODES, REALISTIC_NORMAL_BIAS_DEG, draw_error_model, simulate_mode, simulate_realistic
from ..synthetic import Renderer, look_at
from ..types import Camera, intrinsics_from_fov
from . import shared_data


def reference_bini(
    normal: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray,
    k: float = 2.0,
    tol: float = 1e-4,
    cg_tol: float = 1e-3,
    max_iter: int = 100,
) -> np.ndarray:
    """Plain perspective BiNI in log-depth (Jacobi-PCG), returning depth up to scale (NaN outside)."""
    h, w = mask.shape
    n = int(mask.sum())
    idx = -np.ones((h, w), np.int64)
    idx[mask] = np.arange(n)
    a_u, a_v, _ = log_depth_gradients(np.where(mask[..., None], normal, 0.0), K)
    ys, xs = np.nonzero(mask)
    mats, rhs = [], []
    for dy, dx, a, comp in ((0, 1, a_u, 0), (0, -1, a_u, 0), (1, 0, a_v, 1), (-1, 0, a_v, 1)):
        ny, nx = ys + dy, xs + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        ok[ok] &= mask[ny[ok], nx[ok]]
        i, j = idx[ys[ok], xs[ok]], idx[ny[ok], nx[ok]]
        s = 1.0 if dx + dy > 0 else -1.0
        av = a[ys[ok], xs[ok]]
        D = sp.csr_matrix(
            (np.concatenate([s * av, -s * av]), (np.concatenate([i, i]), np.concatenate([j, i]))), shape=(n, n)
        )
        b = np.zeros(n)
        b[i] = -normal[ys[ok], xs[ok], comp]
        mats.append(D)
        rhs.append(b)
    z = np.zeros(n)
    W = [np.full(n, 0.5) for _ in range(4)]
    energy = sum(float(Wd @ (D @ z - b) ** 2) for D, b, Wd in zip(mats, rhs, W, strict=True))
    for _ in range(max_iter):
        A = sum(D.T @ sp.diags(Wd) @ D for D, Wd in zip(mats, W, strict=True)) + sp.eye(n) * 1e-9
        bb = sum(D.T @ (Wd * b) for D, b, Wd in zip(mats, rhs, W, strict=True))
        M = sp.diags(1.0 / A.diagonal())
        z, _ = cg(A, bb, x0=z, rtol=cg_tol, M=M, maxiter=20000)
        wu = 0.5 * (1 + np.tanh(0.5 * k * ((mats[1] @ z) ** 2 - (mats[0] @ z) ** 2)))
        wv = 0.5 * (1 + np.tanh(0.5 * k * ((mats[3] @ z) ** 2 - (mats[2] @ z) ** 2)))
        W = [wu, 1 - wu, wv, 1 - wv]
        new = sum(float(Wd @ (D @ z - b) ** 2) for D, b, Wd in zip(mats, rhs, W, strict=True))
        if abs(energy - new) / max(energy, 1e-30) < tol:
            break
        energy = new
    depth = np.full((h, w), np.nan)
    depth[mask] = np.exp(z)
    return depth


# The benchmark's views: (name, mesh, direction from the mesh's centre to the camera). The camera
# looks at the centre of the bounding box from VIEW_DISTANCE bounding-box diagonals, y up, with a
# 40 degree horizontal field of view. "cow 1" is the view of the earlier single-view benchmark.
PANEL = (
    ("cow 1", "cow", (2.2, 0.8, 2.6)),
    ("cow 2", "cow", (-2.5, 1.0, 1.5)),
    ("cow 3", "cow", (0.3, 0.6, -3.0)),
    ("cow 4", "cow", (3.0, 2.0, -0.5)),
    ("bottle 1", "bottle", (2.2, 0.8, 2.6)),
    ("bottle 2", "bottle", (-2.5, 1.0, 1.5)),
)
VIEW_DISTANCE = 1.35


def _shared_bottle() -> Path | None:
    """shared/data's Fuze bottle mesh, or None when it is absent."""
    bottle = (shared_data() or Path("/nonexistent")) / "mesh_fuze_bottle" / "fuze.obj"
    return bottle if bottle.exists() else None


def _panel_mesh(name: str) -> Path | None:
    """The mesh file of a PANEL entry (None when the shared bottle is absent)."""
    return bundled_cow() if name == "cow" else _shared_bottle()


def room_views(width: int, height: int, n: int = 4, seed: int = 1, fov_deg: float = 60.0) -> list | None:
    """``n`` views from inside shared/data's copy-room scan (None when it is absent): cameras at
    random places in the room's middle 60 %, looking 15-35 degrees down, kept when they see a
    surface at 98 % of the pixels, nothing nearer than 0.5 m, and a depth range of at least 1.8x
    (a room, not a wall); every second such view. Nothing in them is at infinity, so a normalised
    prediction's far end is not at zero disparity: its true shift is positive (about 0.3-0.8)."""
    path = (shared_data() or Path("/nonexistent")) / "mesh_copyroom" / "copyroom_c2000_opt.obj"
    if not path.exists():
        return None
    mesh = load_mesh(path)
    renderer = Renderer(mesh)
    lo, hi = mesh.bounds
    K = intrinsics_from_fov(width, height, fov_deg)
    rng = np.random.default_rng(seed)
    views: list = []
    for _ in range(400):
        pos = lo + (hi - lo) * rng.uniform(0.2, 0.8, 3)
        a = rng.uniform(0, 2 * np.pi)
        ahead = np.array([np.cos(a), np.tan(np.radians(rng.uniform(15, 35))), np.sin(a)])  # the scan's +y is down
        v = renderer.render(Camera(K, look_at(pos, pos + ahead, np.array([0.0, -1.0, 0.0])), width, height))
        if v.mask.mean() < 0.98 or np.nanmin(v.depth) < 0.5 or np.nanmedian(v.depth) < 1.3:
            continue
        if np.nanpercentile(v.depth, 95) >= 1.8 * np.nanpercentile(v.depth, 5):
            views.append(v)
            if len(views) == 2 * n:
                break
    return views[::2]


def mesh_view(
    path: str | Path, direction, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(depth (H, W), normal (H, W, 3) OpenCV camera frame, K (3, 3), mask (H, W)) of a mesh seen
    from ``direction`` (see PANEL), exact: ray-cast depth and face normals."""
    mesh = load_mesh(path)
    K = intrinsics_from_fov(width, height, 40.0)
    lo, hi = mesh.bounds
    c = (lo + hi) / 2
    d = np.asarray(direction, np.float64)
    eye = c + d / np.linalg.norm(d) * VIEW_DISTANCE * np.linalg.norm(hi - lo)
    v = Renderer(mesh).render(Camera(K, look_at(eye, c, np.array([0.0, 1.0, 0.0])), width, height))
    return v.depth, v.normal, K, v.mask


def cow_view(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The panel's "cow 1": (depth, normal, K, mask), exact."""
    return mesh_view(bundled_cow(), PANEL[0][2], width, height)


def _median_scaled(est: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(est, gt) over ``mask``, est scaled so that the median of gt / est is 1."""
    return np.nanmedian(gt[mask] / est[mask]) * est[mask], gt[mask]


def made(est: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute depth error after median scaling, relative to the mean GT depth."""
    return made_mm(est, gt, mask) / float(np.nanmean(gt[mask]))


def made_percent(est: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """:func:`made` in percent."""
    return 100 * made(est, gt, mask)


def load_bini_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(normal (H, W, 3) OpenCV camera frame, mask (H, W), K (3, 3), GT depth or None) from a folder
    in BiNI's format: normal_map.png (RGB = OpenGL camera frame x right, y up, z towards the camera),
    mask.png, K.txt and optionally depth_gt.npz."""
    n = load_image(folder / "normal_map.png").astype(np.float64) * 2 - 1  # 8- or 16-bit, as [0, 1]
    n *= np.array([1.0, -1.0, -1.0])  # OpenGL -> OpenCV: flip y and z
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    mask = load_image(folder / "mask.png")[..., 0] > 0.5
    K = np.loadtxt(folder / "K.txt")
    gt = None
    if (folder / "depth_gt.npz").exists():
        gt = np.load(folder / "depth_gt.npz")["depth_gt"].astype(np.float64)
        mask &= np.isfinite(gt)
    return n, mask, K, gt


def made_mm(est: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """BiNI's DiLiGenT metric: mean absolute depth error after median scaling, in GT units."""
    e, g = _median_scaled(est, gt, mask)
    return float(np.nanmean(np.abs(e - g)))


def warm_up() -> float:
    """Compile (or load from numba's cache) the single-view kernels, the Jacobi solver's too; returns
    the seconds it took."""
    from ..single import warm_up as warm_up_kernels

    t0 = time.perf_counter()
    warm_up_kernels()
    depth, normal, K, mask = cow_view(64, 64)
    integrate_normals(normal, K, mask, solver="jacobi", max_iter=2)
    return time.perf_counter() - t0


def _peak_memory(fn) -> int:
    """Peak bytes of numpy / Python allocations during fn() (tracemalloc)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def _reference_one_blas_thread(normal, K, mask) -> np.ndarray:
    """The reference with BLAS on one thread: on this 2-core VM numpy's multi-threaded dot products
    in scipy's ``cg`` made it up to 2x slower (the same depth)."""
    with threadpool_limits(1, user_api="blas"):
        return reference_bini(normal, K, mask)


# idle time before each timed run (see _compare)
IDLE_SECONDS = 0.5


def _compare(name: str, normal, K, mask, gt, metric, unit: str, repeats: int = 3) -> dict:
    contenders = {
        "ours": lambda: integrate_normals(normal, K, mask).depth,
        "reference": lambda: reference_bini(normal, K, mask),
        "reference_1blas": lambda: _reference_one_blas_thread(normal, K, mask),
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    out = {}
    for _ in range(repeats):  # interleaved, so that all see the same machine; the median is reported
        for key, fn in contenders.items():
            # start each on an idle machine: after the reference's two-thread BLAS calls, OpenBLAS's
            # worker spins on the second core for a while (the 256^2 cow right after it: 0.069 s
            # instead of 0.036 s)
            time.sleep(IDLE_SECONDS)
            t0 = time.perf_counter()
            out[key] = fn()
            times[key].append(time.perf_counter() - t0)
    t_o, t_r, t_1 = (float(np.median(times[k])) for k in contenders)
    m_o, m_r = (_peak_memory(contenders[k]) for k in ("ours", "reference"))
    ours, ref = out["ours"], out["reference"]
    row = {
        "input": name,
        "pixels": int(mask.sum()),
        "ours_s": t_o,
        "reference_s": t_r,
        "speedup": t_r / t_o,
        "reference_1blas_s": t_1,
        "speedup_1blas": t_1 / t_o,
        "ours_peak_mb": m_o / 2**20,
        "reference_peak_mb": m_r / 2**20,
        "ours_made": metric(ours, gt, mask),
        "reference_made": metric(ref, gt, mask),
        "unit": unit,
    }
    print(
        f"{name:>24s} ({row['pixels']:6d} px): ours {t_o:6.3f} s, reference {t_r:6.2f} s -> "
        f"{row['speedup']:5.1f}x faster (1 BLAS thread: {t_1:6.2f} s, {row['speedup_1blas']:5.1f}x); "
        f"peak {row['ours_peak_mb']:4.0f} vs {row['reference_peak_mb']:4.0f} MB; "
        f"MADE {row['ours_made']:.4f} vs {row['reference_made']:.4f} {unit}",
        flush=True,
    )
    return row


def summary(label: str, rows: list[dict]) -> dict:
    """Totals over a group of rows: time ratios of the summed times, the per-row range of the
    one-thread ratio, the mean errors and on how many rows ours had the lower error."""
    t_o, t_r, t_1 = (sum(r[k] for r in rows) for k in ("ours_s", "reference_s", "reference_1blas_s"))
    lower = sum(r["ours_made"] <= r["reference_made"] for r in rows)
    per_row = [r["speedup_1blas"] for r in rows]
    out = {
        "input": label,
        "views": len(rows),
        "ours_s": t_o,
        "reference_s": t_r,
        "speedup": t_r / t_o,
        "reference_1blas_s": t_1,
        "speedup_1blas": t_1 / t_o,
        "speedup_1blas_range": [min(per_row), max(per_row)],
        "ours_mean_made": float(np.mean([r["ours_made"] for r in rows])),
        "reference_mean_made": float(np.mean([r["reference_made"] for r in rows])),
        "ours_lower_error": lower,
        "unit": rows[0]["unit"],
    }
    print(
        f"{label:>24s}: ours {t_o:6.2f} s, reference {t_r:6.2f} s -> {out['speedup']:5.1f}x faster "
        f"(1 BLAS thread: {t_1:6.2f} s, {out['speedup_1blas']:5.1f}x; per view {min(per_row):.1f}-"
        f"{max(per_row):.1f}x); mean MADE {out['ours_mean_made']:.4f} vs {out['reference_mean_made']:.4f} "
        f"{out['unit']}, ours lower on {lower} of {len(rows)}",
        flush=True,
    )
    return out


def run(
    sizes=((256, 256), (512, 512), (768, 576)),
    diligent: bool = True,
    priors: bool = True,
    repeats: int = 3,
    out: Path | None = None,
    seed: int = 0,
    prior_size: tuple[int, int] = (768, 576),
    fov_deg: float | None = None,
    photos: bool = True,
    pcfg: PredictConfig | None = None,
    normal_bias_scale: float = 1.0,
    focal: bool = True,
) -> list[dict]:
    """Run the benchmark (see the module docstring), print each row as it is measured, write the rows
    to ``out``/summary.json (default bench_out/single) and return them. ``sizes=()`` and
    ``diligent=False`` leave only the prior-family rows, drawn with ``seed`` at ``prior_size`` (width,
    height), ``fov_deg`` and ``normal_bias_scale`` (:func:`prior_family_rows`); ``focal`` adds the field of
    view's recovery on those views rendered at 40, 55 and 75 degrees (:func:`focal_rows`, the same
    ``seed``, size and bias); ``photos`` adds the real photos (:func:`photo_rows`, Lotus from ``pcfg``)."""
    print(f"numba kernels compiled / loaded in {warm_up():.1f} s (once per process, not timed below)")
    rows = []
    panel = [(name, _panel_mesh(mesh), direction) for name, mesh, direction in PANEL] if sizes else []
    missing = [name for name, path, _ in panel if path is None]
    if missing:
        print(f"(panel views {', '.join(missing)} skipped: no shared/data/mesh_fuze_bottle)")
    for w, h in sizes:
        group = []
        for name, path, direction in panel:
            if path is None:
                continue
            depth, normal, K, mask = mesh_view(path, direction, w, h)
            group.append(_compare(f"{name} {w}x{h}", normal, K, mask, depth, made_percent, "%", repeats))
        rows += group + [summary(f"panel {w}x{h}", group)]
    folder = (shared_data() or Path("/nonexistent")) / "normal_maps_diligent"
    objects = sorted(p for p in folder.glob("*") if (p / "depth_gt.npz").exists()) if diligent else []
    if diligent and not objects:
        print(f"(DiLiGenT rows skipped: no {folder})")
    dili = [_compare(f"DiLiGenT {p.name}", *_bini_case(p), made_mm, "mm", repeats) for p in objects]
    if dili:
        rows += dili + [summary("DiLiGenT, all 9", dili)]
        print(f"{'':>24s}  (BiNI paper: mean MADE 1.5036 mm)")
    bias = f", the normals' smooth bias scaled by {normal_bias_scale:g}" if normal_bias_scale != 1 else ""
    if priors:
        print(
            "with a depth prior, simulated predictions of every error mode (ours vs the prior itself), "
            f"{prior_size[0]}x{prior_size[1]}, seed {seed}"
            + (f", {fov_deg:g} deg field of view" if fov_deg else "")
            + bias
            + ":"
        )
        rows += prior_family_rows(*prior_size, seed=seed, fov_deg=fov_deg, normal_bias_scale=normal_bias_scale)
    if focal:
        print(
            "field of view from the normals (no K, no EXIF), views rendered at 40, 55 and 75 degrees, exact and "
            f"simulated predictions, {prior_size[0]}x{prior_size[1]}, seed {seed}" + bias + ":"
        )
        rows += focal_rows(*prior_size, seed=seed, normal_bias_scale=normal_bias_scale)
    out = Path(out or "bench_out/single")
    if photos:
        print("real photos, lotus3d single with Lotus (no ground truth: see the overview image):")
        rows += photo_rows(out / "photos", pcfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=float))
    print(f"rows written to {out / 'summary.json'}")
    return rows


def prior_family_rows(
    width: int = 768,
    height: int = 576,
    offsets: tuple[float, ...] = (0.0, 0.3),
    presets: tuple[str, ...] = ("orbit", "objects", "room"),
    views: tuple[int, ...] = (0, 3, 5),
    modes: tuple[str, ...] | None = None,
    seed: int = 0,
    fov_deg: float | None = None,
    normal_bias_scale: float = 1.0,
) -> list[dict]:
    """``lotus3d single``'s depth (:func:`lotus3d.single.reconstruct_depth`, K known) on simulated
    predictions of every error mode (:data:`lotus3d.simulate.ERROR_MODES` and the calibrated
    "realistic" one), three views of each synthetic preset (``views``) and four from inside the shared
    copy-room scan ("room", :func:`room_views`; true shift positive), each prediction also with its
    disparity raised by each of ``offsets`` (a prediction whose far end is not at zero: the true
    shift is then lower by the offset). Per row: mean relative depth error (median-scaled) of the naive prior (no
    shift), of the prior with the oracle shift (the best for the ground truth), and of ours; ours /
    oracle; the median angle between the normals of our surface and the true ones (and of the
    predicted normals), and whether ours fell back to the prior. ``seed`` draws the scenes' layout, the
    cameras and the prediction errors: 0 gives the rows docs/benchmarks.md reports, other seeds held-out
    rows nothing was tuned on. ``fov_deg`` (horizontal) replaces the presets' 55 and the room's 60 degrees.
    ``normal_bias_scale`` scales the simulated normals' smooth bias (0: none; the same draws otherwise).

    Where the view shows background over more than 2 % of the image (the presets), the normalised
    prediction's far end is exactly at zero disparity, so the shift that generated it is known (minus
    the offset): its error is ``true_shift_error``, the yardstick of a method that recovers that shift
    exactly; the oracle shift may differ from it, as it also offsets errors that are not affine."""
    from .. import single
    from ..integrate import depth_to_normals

    rows = []
    for preset in presets:
        for i, v in _family_views(preset, width, height, seed, fov_deg, views):
            K = v.camera.K
            known = float((~v.mask).mean()) > 0.02  # the normalisation's 2 % quantile is background: 0
            for mode in modes or PRIOR_MODES:
                p = _simulate_prior(v, mode, _prior_rng(i, mode, seed), normal_bias_scale)
                for off in offsets:
                    pred = np.where(v.mask, p.depth + off, 0.0).astype(np.float32)
                    mask = v.mask & np.isfinite(p.normal).all(-1) & (pred > 0.01 + off)
                    t0 = time.perf_counter()
                    view = single.reconstruct_depth(pred, "disparity", p.normal, K, mask)
                    seconds = time.perf_counter() - t0
                    m = view.mask
                    true_shift = -off if known else None
                    row = {
                        "input": f"{preset} view {i + 1} {mode}" + (f" +{off:g}" if off else ""),
                        "mode": mode,
                        "offset": off,
                        "seconds": seconds,
                        "shift": view.shift.shift,
                        "shift_determined": view.shift.determined,
                        "fallback": view.refined.fallback,
                        "naive_error": _shifted_prior_error(pred, v.depth, m, 0.0),
                        "oracle_error": _oracle_shift_error(pred, v.depth, m),
                        "ours_error": _relative_error(view.refined.depth, v.depth, m),
                        "own_prior_error": _relative_error(view.prior, v.depth, m),
                        "true_shift": true_shift,
                        "true_shift_error": None
                        if true_shift is None
                        else _shifted_prior_error(pred, v.depth, m, true_shift),
                        "ours_normal_deg": _median_angle(depth_to_normals(view.refined.depth, K), v.normal, m),
                        "predicted_normal_deg": _median_angle(p.normal, v.normal, m),
                    }
                    row["ours_over_oracle"] = row["ours_error"] / row["oracle_error"]
                    rows.append(row)
                    print(
                        f"{row['input']:>34s}: naive {row['naive_error']:.4f}  oracle shift {row['oracle_error']:.4f}  "
                        + (f"generating shift {row['true_shift_error']:.4f}  " if known else "")
                        + f"our shift {row['own_prior_error']:.4f}  "
                        f"ours {row['ours_error']:.4f} ({row['ours_over_oracle']:.2f}x oracle)  normals "
                        f"{row['ours_normal_deg']:4.1f} deg (predicted {row['predicted_normal_deg']:.1f})  "
                        f"shift {view.shift.shift:+.3f}{'' if view.shift.determined else ' (kept)'}  {seconds:.1f} s"
                        + ("  FELL BACK" if view.refined.fallback else ""),
                        flush=True,
                    )
    groups = {"all": rows} | {m: [r for r in rows if r["mode"] == m] for m in PRIOR_MODES}
    groups |= {p: [r for r in rows if r["input"].startswith(p + " ")] for p in presets}
    for name, group in groups.items():
        if group:
            print(_family_summary(name, group))
    return rows


PRIOR_MODES = (*ERROR_MODES, "realistic")  # the simulated error modes of the prior family


def _prior_rng(view: int, mode: str, seed: int) -> np.random.Generator:
    """The draw of one view's prediction errors in one mode (seed 0: the documented rows)."""
    return np.random.default_rng([view, PRIOR_MODES.index(mode)] + ([seed] if seed else []))


def _simulate_prior(view, mode: str, rng: np.random.Generator, normal_bias_scale: float = 1.0):
    """A simulated prediction (:class:`lotus3d.types.Prediction`) of a rendered ``view`` in one of
    :data:`PRIOR_MODES`, the normals' smooth bias scaled by ``normal_bias_scale``."""
    if mode == "realistic":
        return simulate_realistic(view, rng, normal_bias_deg=REALISTIC_NORMAL_BIAS_DEG * normal_bias_scale)
    params = draw_error_model(mode, rng)
    params["normal_bias_deg"] *= normal_bias_scale
    return simulate_mode(view, params, rng)


def _family_views(preset: str, width: int, height: int, seed: int, fov_deg: float | None, views) -> list:
    """[(index, rendered view)] of one preset: ``views`` of the synthetic presets' six cameras (55 degrees
    unless ``fov_deg``), or four views from inside the shared copy-room scan (60 degrees unless
    ``fov_deg``); empty, saying why, when the preset's mesh is not in the shared data."""
    from .. import scenes, synthetic

    if preset == "room":
        rendered = room_views(width, height, seed=1 + seed, fov_deg=fov_deg or 60.0)
        if rendered is None:
            print("(room rows skipped: no shared/data/mesh_copyroom)")
        return list(enumerate(rendered or []))
    bottle = _shared_bottle()
    if preset == "objects" and bottle is None:
        print("(objects rows skipped: no shared/data/mesh_fuze_bottle)")
        return []
    meshes = scenes.preset_meshes(preset, seed, bottle if preset == "objects" else None)
    renderer = synthetic.Renderer(meshes)
    cams = scenes.preset_cameras(preset, meshes, 6, width, height, seed=seed, fov_deg=fov_deg or 55.0)
    return [(i, renderer.render(cams[i])) for i in views]


def focal_rows(
    width: int = 768,
    height: int = 576,
    fovs: tuple[float, ...] = (40.0, 55.0, 75.0),
    presets: tuple[str, ...] = ("orbit", "objects", "room"),
    views: tuple[int, ...] = (0, 3, 5),
    seed: int = 0,
    normal_bias_scale: float = 1.0,
) -> list[dict]:
    """``lotus3d single``'s field of view when neither K nor an EXIF focal length is given
    (:func:`lotus3d.single.recover_focal`), on the views of :func:`prior_family_rows` rendered at each
    of ``fovs`` (horizontal, degrees): from the exact disparity and normals (mode "exact", the control)
    and from simulated predictions of every error mode, drawn as there. Per row: the true and the used
    field of view, whether it was determined (else the default was kept, ``reason`` says why) and its
    relative error. 55 degrees is also the default, so at 55 keeping it is right."""
    from .. import single

    rows = []
    for fov in fovs:
        for preset in presets:
            for i, v in _family_views(preset, width, height, seed, fov, views):
                for mode in ("exact", *PRIOR_MODES):
                    if mode == "exact":
                        with np.errstate(divide="ignore", invalid="ignore"):
                            pred, normal = 1.0 / v.depth, v.normal
                    else:
                        p = _simulate_prior(v, mode, _prior_rng(i, mode, seed), normal_bias_scale)
                        pred, normal = p.depth, p.normal
                    pred = np.where(v.mask, pred, 0.0).astype(np.float32)
                    mask = v.mask & np.isfinite(normal).all(-1) & (pred > 0.01)
                    t0 = time.perf_counter()
                    res = single.recover_focal(pred, "disparity", np.nan_to_num(normal).astype(np.float32), mask)
                    row = {
                        "input": f"{preset} view {i + 1} {mode} at {fov:g} deg",
                        "mode": mode,
                        "true_fov_deg": fov,
                        "fov_deg": res.fov_deg,
                        "determined": res.determined,
                        "reason": res.reason,
                        "fov_error": res.fov_deg / fov - 1,
                        "seconds": time.perf_counter() - t0,
                    }
                    rows.append(row)
                    print(
                        f"{row['input']:>38s}: {res.fov_deg:5.1f} deg ({row['fov_error']:+.0%})  "
                        f"{'determined' if res.determined else 'default kept: ' + res.reason}  {row['seconds']:.1f} s",
                        flush=True,
                    )
    groups = {
        f"{kind} at {fov:g} deg": [
            r for r in rows if r["true_fov_deg"] == fov and (r["mode"] == "exact") == (kind == "exact")
        ]
        for fov in fovs
        for kind in ("exact", "simulated")
    }
    # per mode, the views whose field of view is not the default (where keeping it is right)
    off_default = [r for r in rows if r["true_fov_deg"] != single.DEFAULT_FOV_DEG]
    groups |= {m: [r for r in off_default if r["mode"] == m] for m in ("exact", *PRIOR_MODES)}
    for name, group in groups.items():
        if group:
            print(_focal_summary(name, group))
    return rows


def _focal_summary(name: str, rows: list[dict]) -> str:
    """One line over focal rows: used field of view within 10 % of the truth, determined, and
    determined but more than 10 % off (the worst such error)."""
    err = np.array([r["fov_error"] for r in rows])
    det = np.array([r["determined"] for r in rows])
    wrong = det & (np.abs(err) > 0.1)
    worst = f" (worst {err[wrong][np.argmax(np.abs(err[wrong]))]:+.0%})" if wrong.any() else ""
    return (
        f"{name:>24s} ({len(rows)} views): field of view within 10 % on {(np.abs(err) <= 0.1).sum()}; "
        f"determined on {det.sum()}, more than 10 % off on {wrong.sum()}{worst}; default kept on {(~det).sum()}"
    )


def photo_rows(out: Path, pcfg: PredictConfig | None = None, folder: Path | None = None) -> list[dict]:
    """``lotus3d single`` on real photos (``folder``, default shared/data/photos_single): no ground
    truth, so the rows are qualitative: the predictions are cached in ``out``/predictions, each
    photo's mesh, preview and report written to ``out``, and ``out``/overview.png shows every photo
    beside its refined depth and predicted normals. Per row: the field of view and where it came from,
    the shift, the prior's disagreement with the normals, whether the integration was kept, the
    time from the cached prediction to the written mesh. Needs Lotus weights (``pcfg``, default the
    Hugging Face ids); without them it prints why and returns no rows."""
    import cv2

    from ..configs import SingleConfig
    from ..errors import Lotus3DError, ModelError
    from ..io import list_images, save_image
    from ..pipelines.predict import predict_scene
    from ..pipelines.single import run_single

    folder = folder or (shared_data() or Path("/nonexistent")) / "photos_single"
    if not folder.is_dir():
        print(f"(photo rows skipped: no {folder})")
        return []
    pcfg = pcfg or PredictConfig()
    out = Path(out)
    try:
        predict_scene(folder, pcfg, out=out / "predictions", progress=False)
    except ModelError as e:
        print(f"(photo rows skipped: no Lotus weights here: {e})")
        return []
    rows, sheet = [], []
    for image in list_images(folder):
        t0 = time.perf_counter()
        try:
            res = run_single(image, out / f"{image.stem}.glb", SingleConfig(), pcfg, out / "predictions")
        except Lotus3DError as e:
            rows.append({"input": f"photo {image.name}", "failed": str(e)})
            print(f"{rows[-1]['input']:>34s}: FAILED: {e}", flush=True)
            continue
        r = res.report
        checks = r["integration"]["checks"]
        row = {
            "input": f"photo {image.name}",
            "model": pcfg.depth_model,
            "seconds": time.perf_counter() - t0,
            "intrinsics_source": r["intrinsics_source"],
            "shift": r["shift"],
            "shift_determined": r["shift_determined"],
            "normal_agreement_deg": r["normal_agreement_deg"],
            "prior_vs_normals_deg": checks.get("prior_vs_normals_deg"),
            "fallback": r["integration"]["fallback"],
            "preview": str(res.preview),
        }
        rows.append(row)
        print(
            f"{row['input']:>34s}: {row['intrinsics_source']}; shift {row['shift']:+.3f}"
            f"{'' if row['shift_determined'] else ' (kept)'}; normals vs prior "
            f"{row['prior_vs_normals_deg'] or float('nan'):.1f} deg; "
            f"{'FELL BACK: ' + row['fallback'] if row['fallback'] else 'integration kept'}; {row['seconds']:.1f} s",
            flush=True,
        )
        pair = [load_image(image), load_image(res.preview)]
        sheet.append(
            np.concatenate(
                [
                    cv2.resize(a, (round(a.shape[1] * 240 / a.shape[0]), 240), interpolation=cv2.INTER_AREA)
                    for a in pair
                ],
                1,
            )
        )
    if sheet:
        width = max(a.shape[1] for a in sheet)
        save_image(
            out / "overview.png", np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0))) for a in sheet])
        )
        print(f"photos beside their depth and normals: {out / 'overview.png'}")
    return rows


def _family_summary(name: str, rows: list[dict]) -> str:
    """One line over prior-family rows: ours / oracle-shift and ours / naive (median, max), rows within
    1.2x the oracle and above the naive prior and above its own shifted prior (the integration's input),
    our surface's median normal error, fall-backs."""
    o = np.array([r["ours_over_oracle"] for r in rows])
    n = np.array([r["ours_error"] / r["naive_error"] for r in rows])
    own = np.array([r["ours_error"] / r["own_prior_error"] for r in rows])
    deg = np.array([r["ours_normal_deg"] for r in rows])
    g = np.array([r["ours_error"] / r["true_shift_error"] for r in rows if r.get("true_shift_error")])
    generating = (
        f"ours / prior at the generating shift {np.median(g):.2f} (max {g.max():.2f}), within 1.2x on "
        f"{(g <= 1.2).sum()} of {len(g)}; "
        if len(g)
        else ""
    )
    return (
        f"{name:>12s} ({len(rows)} rows): ours / oracle-shift prior {np.median(o):.2f} (max {o.max():.2f}), "
        f"within 1.2x on {(o <= 1.2).sum()}; {generating}ours / naive prior {np.median(n):.2f} (max {n.max():.2f}), "
        f"above on {(n > 1).sum()}; above its own shifted prior on {(own > 1).sum()} (max {own.max():.2f}); "
        f"normals {np.median(deg):.1f} deg (max {deg.max():.1f}); shift kept at 0 on "
        f"{sum(not r['shift_determined'] for r in rows)}; fell back on {sum(bool(r['fallback']) for r in rows)}"
    )


def _shifted_prior_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, shift: float) -> float:
    """Mean relative depth error (median-scaled) of disparity ``pred`` under ``shift``, over ``mask``
    where that depth is finite."""
    from ..single import depth_from_affine

    d = depth_from_affine(pred, "disparity", shift)
    return _relative_error(d, gt, mask & np.isfinite(d))


def _oracle_shift_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """The least error of the prior over shifts (either sign, keeping 95 % of the pixels finite): a
    log-spaced grid, then golden-section search around its best point (the grid's steps are 8 % of the
    distance to the far end, 0.03-0.06 in a room: on a nearly exact prior, up to 9x the least error)."""
    from ..single import depth_from_affine, grid_then_golden

    def error(t: float) -> float:
        d = depth_from_affine(pred, "disparity", t)
        ok = mask & np.isfinite(d)
        return _relative_error(d, gt, ok) if ok.sum() >= 0.95 * mask.sum() else np.inf

    lo = float(np.percentile(pred[mask], 1))
    grid = np.sort(np.concatenate([[0.0], -lo + np.logspace(-4, 1, 150)]))
    t, errors = grid_then_golden(error, grid, 20)
    return float(min(error(t), errors.min()))


def _median_angle(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    cos = np.clip(np.sum(a * b, -1), -1, 1)
    ok = mask & np.isfinite(cos)
    return float(np.degrees(np.median(np.arccos(cos[ok]))))


def _relative_error(est: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Mean relative depth error after median scaling."""
    e, g = _median_scaled(est, gt, mask)
    return float(np.nanmean(np.abs(e - g) / g))


def _bini_case(folder: Path):
    normal, mask, K, gt = load_bini_folder(folder)
    return normal, K, mask, gt


if __name__ == "__main__":
    run()
