"""Realistic simulated predictions (calibration) and the steps that close the accuracy gap."""

from __future__ import annotations

import numpy as np
import pytest

from lotus3d import align, consistency, scenes, synthetic
from lotus3d.simulate import affine_absrel, simulate_realistic


@pytest.fixture(scope="module")
def views(shared_data):
    meshes = scenes.preset_meshes("objects", 0, shared_data / "mesh_fuze_bottle" / "fuze.obj")
    r = synthetic.Renderer(meshes)
    cams = scenes.preset_cameras("objects", meshes, 6, 320, 240, seed=0)
    return r, [r.render(c) for c in cams]


def test_realistic_predictions_are_calibrated(views):
    _, vs = views
    rng = np.random.default_rng(0)
    for v in vs[:4]:
        p = simulate_realistic(v, rng)
        assert p.depth.min() >= 0 and p.depth.max() <= 1 and p.kind == "disparity"
        assert 0.03 <= affine_absrel(p.depth, v.depth, v.mask) <= 0.06


def test_errors_look_like_a_monocular_models(views):
    _, vs = views
    v = vs[0]
    p = simulate_realistic(v, np.random.default_rng(1), blur_px=0.0)
    # best affine fit over the whole image, then the residual per object: objects are off by different amounts
    m = v.mask
    A = np.stack([p.depth[m], np.ones(m.sum())], -1)
    (s, t), *_ = np.linalg.lstsq(A, 1 / v.depth[m], rcond=None)
    log_err = np.full(v.depth.shape, np.nan)
    log_err[m] = np.log(v.depth[m] * (s * p.depth[m] + t))
    per_object = [np.nanmedian(log_err[v.segments == k]) for k in np.unique(v.segments[m])]
    assert np.ptp(per_object) > 0.01
    # the error is smooth (spatially correlated), not pixel noise: neighbours share it
    e = np.nan_to_num(log_err - np.nanmean(log_err))
    corr = np.sum(e[:, 1:] * e[:, :-1]) / np.sum(e * e)
    assert corr > 0.9
    # normals: a smooth bias of a few degrees (neighbouring errors correlated)
    ang = np.degrees(np.arccos(np.clip(np.sum(p.normal * np.nan_to_num(v.normal), -1), -1, 1)))
    assert 1.0 < np.median(ang[m]) < 10.0
    # silhouette blur: values between foreground and background appear next to object edges
    blurred = simulate_realistic(v, np.random.default_rng(1), blur_px=2.5)
    edge = synthetic.ndimage.binary_dilation(~m, iterations=2) & ~synthetic.ndimage.binary_erosion(~m, iterations=2)
    assert np.abs(blurred.depth - p.depth)[edge].mean() > 5 * np.abs(blurred.depth - p.depth)[~edge].mean()


def _points_for(renderer, v, n=2000, seed=0):
    sp = synthetic.sample_sparse_points(renderer, [v, v], n, seed=seed)
    uv = np.array([tr[0][1:] for tr in sp.tracks])
    pc = sp.xyz @ v.camera.world_to_camera[:3, :3].T + v.camera.world_to_camera[:3, 3]
    return uv, pc[:, 2]


def test_local_correction_fixes_per_object_errors(views):
    r, vs = views
    v = vs[1]
    p = simulate_realistic(v, np.random.default_rng(2), blur_px=0.0)
    uv, z = _points_for(r, v)
    al = align.fit_scale_shift(align.sample_prediction(p.depth, uv), z, "disparity")
    d0 = align.apply_alignment(p.depth, al)
    corr = align.fit_local_correction(d0, uv, z)
    assert corr is not None and corr.heldout_after < 0.7 * corr.heldout_before
    d1 = align.apply_local_correction(d0, corr)
    m = v.mask & np.isfinite(d0)
    err0 = np.median(np.abs(d0[m] - v.depth[m]) / v.depth[m])
    err1 = np.median(np.abs(d1[m] - v.depth[m]) / v.depth[m])
    assert err1 < 0.5 * err0
    # and per object, not only on average
    for k in np.unique(v.segments[m]):
        sel = m & (v.segments == k)
        if sel.sum() > 500:
            assert np.median(np.abs(d1[sel] - v.depth[sel]) / v.depth[sel]) < 0.03


def test_local_correction_declines_when_it_cannot_help():
    # the depth is already right: no kernel beats "no correction" on held-out points
    rng = np.random.default_rng(0)
    depth = np.full((60, 80), 3.0, np.float32)
    uv = rng.uniform([0, 0], [79, 59], (200, 2))
    z = np.full(200, 3.0) * np.exp(rng.normal(0, 0.01, 200))
    corr = align.fit_local_correction(depth, uv, z)
    assert corr is None or abs(corr.field).max() < 0.01


def test_consistency_drops_what_other_views_contradict(views):
    _, vs = views
    depths = {str(i): v.depth.copy() for i, v in enumerate(vs)}
    cams = {str(i): v.camera for i, v in enumerate(vs)}
    bad = depths["0"]
    region = np.zeros(bad.shape, bool)
    region[80:160, 100:220] = True
    region &= np.isfinite(bad)
    bad[region] *= 0.8  # a patch 20 % too near, as a badly aligned object
    masks = consistency.consistency_masks(depths, cams, consistency.ConsistencyOptions(neighbours=3))
    m0 = masks["0"]
    assert m0[region].mean() < 0.5
    good = np.isfinite(vs[0].depth) & ~region
    assert m0[good].mean() > 0.8
