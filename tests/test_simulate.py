"""The family of simulated error modes: each mode produces the error it names."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lotus3d import scenes, synthetic
from lotus3d.fuse import depth_edges
from lotus3d.simulate import ERROR_MODES, best_affine_disparity, draw_error_model, simulate_mode


@pytest.fixture(scope="module")
def view(shared_data):
    meshes = scenes.preset_meshes("objects", 0, shared_data / "mesh_fuze_bottle" / "fuze.obj")
    cam = scenes.preset_cameras("objects", meshes, 4, 240, 180, seed=0)[1]
    return synthetic.Renderer(meshes).render(cam)


def _log_error(pred, view, mask=None):
    """log(predicted depth / true depth) after the best global affine fit in disparity."""
    m = view.mask if mask is None else mask
    s, t = best_affine_disparity(pred.depth, view.depth, m)
    out = np.full(view.depth.shape, np.nan)
    out[m] = -np.log(view.depth[m] * (s * pred.depth[m].astype(np.float64) + t))
    return out


def _only(mode, value, **extra):
    p = draw_error_model("warp", np.random.default_rng(0))
    p.update(dict.fromkeys(("texture", "object_gain", "warp", "edge_blur", "fronto", "quantise", "noise"), 0.0))
    p[mode] = value
    p.update(extra)
    return p


def test_every_mode_draws_its_parameters_and_gives_a_valid_prediction(view):
    rng = np.random.default_rng(1)
    for mode in ERROR_MODES:
        params = draw_error_model(mode, rng)
        pred = simulate_mode(view, params, rng)
        assert pred.kind == "disparity" and pred.depth.shape == view.depth.shape
        assert 0 <= pred.depth.min() and pred.depth.max() <= 1
        np.testing.assert_allclose(np.linalg.norm(pred.normal, axis=-1), 1, atol=1e-5)
        active = [k for k in ("texture", "object_gain", "warp", "edge_blur", "fronto", "quantise") if params[k] > 0]
        assert mode in active or (mode == "mixed" and len(active) >= 3)
    with pytest.raises(ValueError, match="unknown error mode"):
        draw_error_model("nonsense", rng)


def test_object_gain_is_a_per_object_offset_after_a_global_fit(view):
    err = _log_error(simulate_mode(view, _only("object_gain", 0.1), np.random.default_rng(2)), view)
    segs = view.segments
    medians = [np.nanmedian(err[segs == k]) for k in np.unique(segs[view.mask])]
    spread_within = np.mean([np.nanstd(err[segs == k]) for k in np.unique(segs[view.mask])])
    assert np.ptp(medians) > 0.05  # objects are off by different amounts ...
    assert spread_within < 0.25 * np.ptp(medians)  # ... each as a whole


def test_texture_mode_copies_the_image_into_depth(view):
    err = _log_error(simulate_mode(view, _only("texture", 0.03), np.random.default_rng(3)), view)
    lum = view.image.mean(-1)
    band = ndimage.gaussian_filter(lum, 0.5) - ndimage.gaussian_filter(lum, 2.0)
    m = view.mask & np.isfinite(err)
    assert np.corrcoef(err[m], band[m])[0, 1] > 0.7
    # and nothing of it in the plain smooth mode
    smooth = _log_error(simulate_mode(view, _only("warp", 0.08), np.random.default_rng(3)), view)
    assert abs(np.corrcoef(smooth[m], band[m])[0, 1]) < 0.2


def test_warp_is_smooth_over_the_image(view):
    err = _log_error(simulate_mode(view, _only("warp", 0.1), np.random.default_rng(4)), view)
    m = view.mask & ~ndimage.binary_dilation(depth_edges(np.where(view.mask, view.depth, np.nan), 0.05), iterations=2)
    dx = np.abs(np.diff(err, axis=1))[m[:, 1:] & m[:, :-1]]
    assert np.nanstd(err[view.mask]) > 0.01 and np.nanmedian(dx) < 0.002  # large but slowly varying


def test_edge_blur_puts_the_error_at_silhouettes(view):
    err = np.abs(_log_error(simulate_mode(view, _only("edge_blur", 3.0), np.random.default_rng(5)), view))
    edges = ndimage.binary_dilation(depth_edges(np.where(view.mask, view.depth, np.nan), 0.05), iterations=2)
    inner = view.mask & ~ndimage.binary_dilation(edges, iterations=6)
    assert np.nanmean(err[edges & view.mask]) > 5 * np.nanmean(err[inner])


def test_fronto_flattens_each_objects_relief(view):
    logd = np.log(np.where(view.mask, view.depth, 1.0))

    def relief_ratios(fronto):  # per object: std of predicted log depth / std of the true one
        err = _log_error(simulate_mode(view, _only("fronto", fronto), np.random.default_rng(6)), view)
        ids = np.unique(view.segments[view.mask])
        return np.array([np.std((logd + err)[view.segments == k]) / np.std(logd[view.segments == k]) for k in ids])

    assert np.allclose(relief_ratios(0.0), 1.0, atol=0.05)
    assert np.median(relief_ratios(0.3)) < 0.93


def test_quantise_leaves_few_levels(view):
    pred = simulate_mode(view, _only("quantise", 64.0), np.random.default_rng(7))
    assert len(np.unique(pred.depth)) <= 64
    fine = simulate_mode(view, _only("warp", 0.0), np.random.default_rng(7))
    assert len(np.unique(fine.depth)) > 1000


def test_preset_cameras_at_another_field_of_view_frame_the_objects_alike():
    """The held-out benchmark draws views at other fields of view: the cameras move so that the
    objects cover about as much of the image as at the default 55 degrees, with that field of view."""
    meshes = scenes.preset_meshes("orbit", 0)
    objects = synthetic.Renderer(meshes[:-1])
    cover = {}
    for fov in (40.0, 55.0, 75.0):
        cams = scenes.preset_cameras("orbit", meshes, 4, 160, 120, seed=0, fov_deg=fov)
        assert cams[1].K[0, 0] == pytest.approx(80 / np.tan(np.radians(fov / 2)), rel=1e-3)
        cover[fov] = np.mean([objects.render(c).mask.mean() for c in cams])
    assert 0.1 < cover[55.0] < 0.6
    assert cover[40.0] == pytest.approx(cover[55.0], rel=0.15) and cover[75.0] == pytest.approx(cover[55.0], rel=0.15)
