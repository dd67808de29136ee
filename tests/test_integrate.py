"""Normal integration and the single-view helpers (groundwork of `lotus3d single`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lotus3d.errors import InputError
from lotus3d.integrate import angular_error_deg, depth_to_normals, integrate_normals
from lotus3d.single import check_convention, depth_to_mesh, recover_shift
from lotus3d.synthetic import smooth_field
from lotus3d.types import intrinsics_from_fov


def _rays(h, w, K):
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((h, w))], -1)


@pytest.fixture(scope="module")
def scene():
    """A sphere in front of a tilted plane, perspective camera: exact depth and normals."""
    h, w = 96, 128
    K = intrinsics_from_fov(w, h, 60.0)
    r = _rays(h, w, K)
    d = 4.0 / (1 - 0.2 * r[..., 0] + 0.1 * r[..., 1])
    rn = r / np.linalg.norm(r, axis=-1, keepdims=True)
    c = np.array([0.0, 0.0, 2.5])
    b = rn @ c
    disc = b**2 - (c @ c - 0.64)
    hit = disc > 0
    d = np.where(hit, (b - np.sqrt(np.maximum(disc, 0))) * rn[..., 2], d)
    n = depth_to_normals(d, K)
    return d, n, K, np.isfinite(n).all(-1), hit


def _median_scaled_error(est, gt, m):
    """Mean relative error of ``est`` against ``gt`` on ``m``, ``est`` scaled to ``gt``'s median."""
    est = est * np.nanmedian(gt[m]) / np.nanmedian(est[m])
    return np.nanmean(np.abs(est[m] - gt[m]) / gt[m])


def _made(est, gt, m):
    s = np.nanmedian(gt[m] / est[m])
    return float(np.nanmean(np.abs(s * est[m] - gt[m]) / gt[m]))


def test_depth_normals_are_the_cross_product_of_central_differences():
    """Per-component arithmetic, equal bit for bit to the textbook np.cross / np.linalg.norm form; a plane
    gives its own normal, facing the camera; NaN where the depth is NaN or flat along a difference."""
    from lotus3d.types import backproject

    rng = np.random.default_rng(0)
    h, w = 40, 56
    K = intrinsics_from_fov(w, h, 50.0)
    d = 2.0 + rng.random((h, w))
    d[5:8, 10:14] = np.nan
    for step in (1, 3):
        P = backproject(d, K)
        du, dv = np.full_like(P, np.nan), np.full_like(P, np.nan)
        du[:, step:-step] = P[:, 2 * step :] - P[:, : -2 * step]
        dv[step:-step] = P[2 * step :] - P[: -2 * step]
        want = np.cross(dv, du)
        want /= np.linalg.norm(want, axis=-1, keepdims=True)
        want[np.sum(want * P, -1) > 0] *= -1
        np.testing.assert_array_equal(depth_to_normals(d, K, step), want.astype(np.float32))
    r = _rays(h, w, K)
    plane = 3.0 / (1 - 0.3 * r[..., 0] + 0.2 * r[..., 1])  # the plane n.X = 3 with n = (-0.3, 0.2, 1)/|.|
    n = depth_to_normals(plane, K)
    true = -np.array([-0.3, 0.2, 1.0]) / np.linalg.norm([-0.3, 0.2, 1.0])  # facing the camera: -z
    np.testing.assert_allclose(n[1:-1, 1:-1], np.broadcast_to(true, n[1:-1, 1:-1].shape), atol=1e-5)
    assert np.isnan(n[0]).all() and np.isnan(n[:, -1]).all()


def test_the_compiled_shift_cost_equals_the_whole_map_one_bit_for_bit():
    """The shift search's cost, computed by one compiled pass at the compared pixels, is the same number
    as the angles of ``depth_to_normals`` of the whole shifted depth map, for both kinds of prediction,
    shifts that leave part of the map without depth, a hole in the map and pixels on its border."""
    from lotus3d.single import ANGLE_CAP_DEG, ComparisonGrid, depth_from_affine

    rng = np.random.default_rng(3)
    h, w = 48, 64
    K = intrinsics_from_fov(w, h, 55.0)
    grid = ComparisonGrid(np.ones((h, w), bool), K)  # step 1: the maps are full size
    a = 0.2 + rng.random((h, w))
    a[10:13, 20:24] = np.nan
    normal = rng.normal(size=(h, w, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[normal[..., 2] > 0] *= -1
    use = rng.random((h, w)) < 0.6  # border pixels included: no normal there
    level = (a, normal, *np.nonzero(use))
    costs = []
    for kind in ("disparity", "depth"):
        for shift in (-0.5, -0.1, 0.0, 0.37, 4.0):
            ang = grid.angles(depth_from_affine(a, kind, shift), normal, use)
            want = float(np.minimum(ang, ANGLE_CAP_DEG).mean())
            assert grid.affine_error([level, level], kind, shift) == want
            costs.append(want)
    assert len(set(costs)) == len(costs)  # every case a different figure: nothing was compared as a constant
    assert grid.affine_error([(a, normal, np.array([0]), np.array([0]))], "depth", 0.0) == 90.0  # no angle defined


def test_exact_normals_of_a_plane_integrate_to_its_depth():
    h, w = 60, 80
    K = intrinsics_from_fov(w, h, 50.0)
    r = _rays(h, w, K)
    d = 3.0 / (1 - 0.3 * r[..., 0] + 0.2 * r[..., 1])
    n = depth_to_normals(d, K)
    m = np.isfinite(n).all(-1)
    for solver in ("multigrid", "jacobi"):
        res = integrate_normals(n, K, m, solver=solver)
        assert _made(res.depth, d, m) < 1e-4, solver


def test_exact_normals_of_a_rendered_mesh_integrate_to_its_depth():
    """The Spot cow (the bundled copy of shared/data/mesh_spot_cow) ray-cast at 160 x 120: its legs,
    head and horns overlap, and the bilateral weights let the depth break there (k = 0, plain least
    squares, smooths every break into a ramp)."""
    from lotus3d.bench.single import cow_view

    d, n, K, m = cow_view(160, 120)
    res = integrate_normals(n, K, m)
    plain = integrate_normals(n, K, m, k=0.0)
    assert _made(res.depth, d, m) < 3e-3
    assert _made(res.depth, d, m) < 0.4 * _made(plain.depth, d, m)


def test_noisy_normals_with_warped_prior_beat_the_prior(scene):
    d, n, K, m, _ = scene
    rng = np.random.default_rng(0)
    noisy = n + rng.normal(0, 0.02, n.shape)
    noisy /= np.linalg.norm(noisy, axis=-1, keepdims=True)
    prior = d * (1 + 0.06 * smooth_field(d.shape, rng, cells=4)) * 1.7  # warped, wrong scale
    res = integrate_normals(noisy, K, m, prior_depth=prior, prior_weight=1e-3)
    assert _made(res.depth, d, m) < 0.7 * _made(prior, d, m)


def test_step_stays_a_step(scene):
    d, n, K, m, hit = scene
    res = integrate_normals(n, K, m)
    # across the sphere's rim the depth jumps within a pixel or two, as the truth does, not over a ramp
    edge = hit & ~np.roll(hit, 1, axis=1)
    ys, xs = np.nonzero(edge[:, 6:-6])
    xs = xs + 6
    z = np.log(res.depth)
    near = np.abs(z[ys, xs + 1] - z[ys, xs - 2])
    wide = np.abs(z[ys, xs + 5] - z[ys, xs - 6])
    true_jump = np.abs(np.log(d[ys, xs + 1]) - np.log(d[ys, xs - 2]))
    assert np.median(near / wide) > 0.7
    assert np.median(near) > 0.5 * np.median(true_jump)
    # and the bilateral weights lean away from the break at the rim, not in smooth regions
    asym = np.abs(res.weights[..., 0] - res.weights[..., 1])
    interior = m & ~hit & np.roll(~hit, 3, axis=1) & np.roll(~hit, -3, axis=1)
    assert np.median(asym[ys, xs]) > 5 * np.median(asym[interior])


def test_shift_recovery_finds_a_known_shift(scene):
    d, n, K, m, _ = scene
    pred = (1.0 / d - 0.1) / 0.5  # disparity = 0.5 * (pred + 0.2): the shift in prediction units is 0.2
    res = recover_shift(pred, "disparity", n, K, m)
    assert res.determined and res.shift == pytest.approx(0.2, rel=0.05)
    assert res.interval[0] <= res.shift * 1.2 and res.interval[1] >= res.shift * 0.8
    zero = res.errors[np.argmin(np.abs(res.candidates))]
    assert res.angular_error_deg < 4.0 and zero > res.angular_error_deg + 5  # no shift is clearly worse


def _tilted_plane(h=576, w=768):
    K = intrinsics_from_fov(w, h, 60.0)
    r = _rays(h, w, K)
    # a tilted plane (the shift bends it) with a bump on it
    bump = 0.08 * np.exp(-((r[..., 0] - 0.1) ** 2 + (r[..., 1] + 0.05) ** 2) / 0.02)
    d = 4.0 / (1 - 0.3 * r[..., 0] + 0.25 * r[..., 1]) * (1 - bump)
    return d, depth_to_normals(d, K), K


def test_shift_recovery_holds_on_a_prior_with_strong_pixel_noise():
    """Pixel-scale noise in the prediction (image texture copied into depth) makes the normals of its
    depth noise: compared pixel by pixel, a large shift that flattens the depth 'agrees' best. Compared
    at the reliable scales the known shift is found."""
    d, n, K = _tilted_plane()
    m = np.isfinite(n).all(-1)
    rng = np.random.default_rng(3)
    pred = (1.0 / d - 0.1) / 0.5
    noisy_pred = pred + rng.normal(0, 0.02 * np.ptp(pred), pred.shape)  # 2 % of the range, per pixel
    noisy_n = n + rng.normal(0, 0.03, n.shape)
    noisy_n /= np.linalg.norm(noisy_n, axis=-1, keepdims=True)
    pixelwise = angular_error_deg(depth_to_normals(1.0 / (noisy_pred + 0.2), K), noisy_n, m)
    flattened = angular_error_deg(depth_to_normals(1.0 / (noisy_pred + 20.0), K), noisy_n, m)
    assert flattened < pixelwise  # the trap: pixel by pixel, a flattened depth looks better
    res = recover_shift(noisy_pred, "disparity", noisy_n, K, m)
    assert res.determined and res.shift == pytest.approx(0.2, rel=0.1)


def _box_room(h=576, w=768, pitch_deg=20.0):
    """Depth and normals from inside a box room (floor, ceiling, four walls), camera looking down by
    ``pitch_deg``: nothing at infinity, so a normalised prediction's far end is not at zero."""
    K = intrinsics_from_fov(w, h, 60.0)
    r = _rays(h, w, K)
    c, s = np.cos(np.radians(pitch_deg)), np.sin(np.radians(pitch_deg))
    t = np.full(r.shape[:2], np.inf)
    room = (r[..., 0], r[..., 1] * c + s, -r[..., 1] * s + c)  # ray directions in the room's axes
    for comp, lo, hi in zip(room, (-2.0, -1.0, -1.0), (2.5, 1.4, 3.0), strict=True):
        with np.errstate(divide="ignore"):
            hit = np.where(comp > 0, hi / comp, lo / comp)
        t = np.minimum(t, np.where(hit > 0, hit, np.inf))
    return t, depth_to_normals(t, K), K  # rays have z = 1: t is the depth


def test_shift_recovery_in_a_room_whose_far_end_is_not_at_infinity():
    """An 8-bit prediction of a room with mid-frequency noise: its far end is at 0 but the true shift
    is about 1.4. Near 0 every quantisation step is a large relative jump; judged as such, they hid
    almost every pixel from the comparison (and the shift came out 0.77). Jumps are judged on the
    prediction raised by a quarter of its span."""
    from scipy import ndimage

    from lotus3d.single import JUMP_OFFSET, ComparisonGrid

    d, n, K = _box_room()
    noise = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 1, d.shape), 6.0)
    disp = 1.0 / (d * np.exp(0.01 * noise / noise.std()))
    lo, hi = np.percentile(disp, [2, 98])
    pred = np.round(np.clip((disp - lo) / (hi - lo), 0, 1) * 127) / 127
    m = (pred > 0.01) & np.isfinite(n).all(-1)
    grid = ComparisonGrid(m, K)
    masked = np.where(m, pred, np.nan)
    compared = [sum(u.sum() for *_, u in grid.levels(masked, n, jump_offset=o)) for o in (0, JUMP_OFFSET)]
    assert compared[1] > 10 * compared[0]
    res = recover_shift(pred, "disparity", n, K, m)
    assert res.determined
    assert res.shift == pytest.approx(lo / (hi - lo), rel=0.2)


def test_shift_recovery_says_when_the_normals_do_not_determine_it():
    """A fronto-parallel plane has the same normals whatever the shift: undetermined, shift kept at 0."""
    h, w = 240, 320
    K = intrinsics_from_fov(w, h, 60.0)
    n = np.zeros((h, w, 3), np.float32)
    n[..., 2] = -1
    pred = np.full((h, w), 0.5) + np.random.default_rng(0).normal(0, 0.01, (h, w))
    res = recover_shift(pred, "disparity", n, K)
    assert not res.determined and res.shift == 0.0 and res.reason


def test_flipped_x_normals_are_detected(scene):
    d, n, K, m, _ = scene
    c = check_convention(n * np.array([-1, 1, 1], np.float32), d, K, m)
    assert not c.ok and c.signs == (-1, 1, 1)
    assert check_convention(n, d, K, m).ok


def test_bad_inputs_are_refused(scene):
    d, n, K, m, _ = scene
    with pytest.raises(InputError, match="mask is"):
        integrate_normals(n, K, m[:10])
    with pytest.raises(InputError, match="nothing to integrate"):
        integrate_normals(n, K, np.zeros_like(m))
    with pytest.raises(InputError, match="nothing to integrate"):
        integrate_normals(np.full_like(n, np.nan), K)
    with pytest.raises(InputError, match="depth prior"):
        integrate_normals(n, K, m, prior_depth=d[:5])


def test_depth_mesh_cuts_across_discontinuities(scene):
    d, n, K, m, hit = scene
    whole = depth_to_mesh(d, K, max_relative_jump=10.0)
    cut = depth_to_mesh(d, K, max_relative_jump=0.05)
    assert len(cut.faces) < len(whole.faces)
    # no triangle of the cut mesh spans the sphere and the plane
    z = cut.vertices[cut.faces][..., 2]
    assert (z.max(1) / z.min(1)).max() <= 1.05 + 1e-6


def test_decimated_depth_mesh_keeps_its_surface_silhouette_and_texture(scene, tmp_path):
    """Decimation to a tenth of the triangles keeps the surface (ray-cast depth) and the silhouette
    (the sphere alone, nothing around it), and the texture still maps each vertex to the pixel it
    projects to (checked after a GLB round trip, on an image whose colours encode the pixel
    coordinates)."""
    import open3d as o3d
    import trimesh

    d, n, K, m, hit = scene
    d = np.where(hit, d, np.nan)
    h, w = d.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    image = np.stack([u / (w - 1), v / (h - 1), np.full((h, w), 0.5)], -1)
    full = depth_to_mesh(d, K, image)
    small = depth_to_mesh(d, K, image, max_triangles=len(full.faces) // 10)
    assert len(small.faces) <= len(full.faces) // 10

    def cast(mesh):
        sc = o3d.t.geometry.RaycastingScene()
        sc.add_triangles(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
        rays = np.concatenate([np.zeros((h, w, 3)), _rays(h, w, K)], -1).astype(np.float32)
        return sc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()

    t_full, t_small = cast(full), cast(small)
    seen = np.isfinite(t_full)
    assert np.isfinite(t_small[seen]).mean() > 0.97
    both = seen & np.isfinite(t_small)
    assert np.median(np.abs(t_small[both] / d[both] - 1)) < 2e-3
    assert not (np.isfinite(t_small) & ~np.isfinite(d)).any()

    small.export(tmp_path / "small.glb")
    loaded = trimesh.load(tmp_path / "small.glb", force="mesh", process=False)
    colours = loaded.visual.to_color().vertex_colors[:, :2] / 255.0  # the texture sampled at the UVs
    P = np.asarray(loaded.vertices)
    px, py = K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2], K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]
    expected = np.stack([px / (w - 1), py / (h - 1)], -1)
    assert np.median(np.abs(colours - expected), axis=0).max() < 2 / 255 + 1 / min(h, w)  # per channel
    assert np.allclose(small.metadata["vertex_colors"][:, :2] / 255.0, np.clip(expected, 0, 1), atol=3 / 255)


def test_single_command_from_a_prediction_cache(tmp_path, capsys):
    from lotus3d import scenes, synthetic
    from lotus3d.cache import CacheMeta, PredictionCache
    from lotus3d.cli import main
    from lotus3d.io import save_image
    from lotus3d.simulate import simulate_realistic

    meshes = scenes.preset_meshes("orbit", 0)
    cam = scenes.preset_cameras("orbit", meshes, 8, 160, 120)[1]
    v = synthetic.Renderer(meshes).render(cam)
    save_image(tmp_path / "photo.png", v.image)
    cache = PredictionCache(tmp_path / "pred")
    cache.write_meta(CacheMeta("disparity", "simulated", "simulated"))
    cache.write("photo", simulate_realistic(v, np.random.default_rng(0)))
    np.savetxt(tmp_path / "K.txt", cam.K)
    for suffix in ("glb", "obj", "ply"):
        out = tmp_path / f"photo.{suffix}"
        assert (
            main(
                [
                    "single",
                    str(tmp_path / "photo.png"),
                    "-o",
                    str(out),
                    "--predictions",
                    str(tmp_path / "pred"),
                    "--K",
                    str(tmp_path / "K.txt"),
                    "--scale",
                    "3.0",
                ]
            )
            == 0
        )
        assert out.is_file() and out.with_suffix(".preview.png").is_file()
    printed = capsys.readouterr().out
    assert "mesh:" in printed and "intrinsics: given" in printed
    depth = np.load(tmp_path / "photo.depth.npy")
    assert depth.shape == (120, 160) and np.nanmedian(depth) == pytest.approx(3.0, rel=1e-3)
    m = v.mask & np.isfinite(depth)
    assert m.sum() > 0.8 * v.mask.sum()  # the object and floor are reconstructed, the background is not
    assert not np.isfinite(depth[~v.mask]).any() or np.isfinite(depth[~v.mask]).mean() < 0.2
    from lotus3d.mesh import load_mesh

    assert len(load_mesh(tmp_path / "photo.glb").faces) > 1000
    # decimated on request
    args = [
        "single",
        str(tmp_path / "photo.png"),
        "-o",
        str(tmp_path / "small.glb"),
        "--predictions",
        str(tmp_path / "pred"),
    ]
    assert main([*args, "--simplify", "2000"]) == 0
    assert 0 < len(load_mesh(tmp_path / "small.glb").faces) <= 2000
    report = json.loads((tmp_path / "small.json").read_text())  # no K, no EXIF: the focal from the normals,
    source = report["intrinsics_source"]  # or the default where the normals do not determine it (said so)
    assert source.startswith("estimated from the normals") or "(default: " in source
    # settings from a YAML file (SingleConfig), the command line winning; --fov with --K refused
    (tmp_path / "cfg.yaml").write_text("single:\n  scale: 2.0\n  simplify: 1500\n")
    assert main([*args, "--config", str(tmp_path / "cfg.yaml"), "--scale", "5.0"]) == 0
    assert 0 < len(load_mesh(tmp_path / "small.glb").faces) <= 1500
    assert np.nanmedian(np.load(tmp_path / "small.depth.npy")) == pytest.approx(5.0, rel=1e-3)
    capsys.readouterr()
    assert main([*args, "--fov", "50", "--K", str(tmp_path / "K.txt")]) == 2
    assert "either --fov or --K" in capsys.readouterr().err
    fov = np.degrees(2 * np.arctan(0.5 * 160 / report["intrinsics"][0][0]))
    assert fov == pytest.approx(55.0, rel=0.15)  # the preset's cameras: 55 degrees
    assert set(report["integration"]) >= {"used", "fallback", "checks"} and "shift_determined" in report
    assert main([*args, "--simplify", "-5"]) == 2
    assert "--simplify" in capsys.readouterr().err
    # bad input: predictions at another size
    cache.write(
        "photo",
        simulate_realistic(
            synthetic.Renderer(meshes).render(scenes.preset_cameras("orbit", meshes, 8, 80, 60)[1]),
            np.random.default_rng(0),
        ),
    )
    assert main(["single", str(tmp_path / "photo.png"), "--predictions", str(tmp_path / "pred")]) == 2
    assert "does not match the image" in capsys.readouterr().err


def test_real_photometric_stereo_normals_integrate_to_the_scanned_depth(shared_data):
    """DiLiGenT 'cat' in BiNI's format: real normals, a GT depth in mm (~1.5 m away)."""
    from lotus3d.bench.single import load_bini_folder, made_mm

    normal, mask, K, gt = load_bini_folder(shared_data / "normal_maps_diligent" / "cat")
    # the OpenGL -> OpenCV conversion at the file boundary agrees with the GT depth's own normals
    assert check_convention(normal, gt, K, mask).ok
    res = integrate_normals(normal, K, mask)
    assert made_mm(res.depth, gt, mask) < 0.2  # mm; BiNI itself gets 0.074, a wrong sign gets > 10
    flipped = integrate_normals(normal * np.array([1, -1, 1]), K, mask)
    assert made_mm(flipped.depth, gt, mask) > 5 * made_mm(res.depth, gt, mask)


def test_prior_jumps_keep_blurred_normals_from_smearing_a_step(scene):
    """Predicted normals are blurred across silhouettes; integrated as they are, the sphere's rim
    becomes a ramp. Edges where the prior jumps carry no normal equations, so the step survives."""
    from scipy import ndimage

    d, n, K, m, hit = scene
    rng = np.random.default_rng(1)
    blurred = np.stack([ndimage.gaussian_filter(n[..., c], 1.5) for c in range(3)], -1)
    blurred /= np.linalg.norm(blurred, axis=-1, keepdims=True)
    prior = d * (1 + 0.04 * smooth_field(d.shape, rng, cells=3))
    rim = ndimage.binary_dilation(hit, iterations=3) & ~ndimage.binary_erosion(hit, iterations=3) & m
    kept = integrate_normals(blurred, K, m, prior_depth=prior)
    smeared = integrate_normals(blurred, K, m, prior_depth=prior, prior_breaks=0)
    rim_err = [np.mean(np.abs(r.depth[rim] / d[rim] - 1)) for r in (kept, smeared)]
    assert rim_err[0] < 0.5 * rim_err[1]
    assert _made(kept.depth, d, m) < _made(prior, d, m) < _made(smeared.depth, d, m)


def test_converged_integration_equals_plain_bini(scene):
    """Solved to convergence, our solver reaches the fixed point of the plain BiNI formulation (the
    benchmark's scipy reference, which follows BiNI's code): same one-sided equations, weights and
    boundary handling (a pixel with one neighbour in a direction keeps at most half the weight)."""
    from lotus3d.bench.single import cow_view, reference_bini

    d, n, K, m, _ = scene
    cases = [(n, K, m), cow_view(64, 48)[1:]]
    for normal, KK, mask in cases:
        tight = dict(tol=1e-10, cg_tol=1e-10, max_iter=300)
        ref = reference_bini(normal, KK, mask, **tight)
        ours = integrate_normals(normal, KK, mask, **tight).depth
        assert np.nanmax(np.abs(ours / (ref / np.nanmedian(ref)) - 1)) < 1e-3


def test_capped_steps_with_a_prior_reach_the_same_depth(shared_data, monkeypatch):
    """With a prior, each reweighting step runs at most STEP_CG_ITERATIONS CG iterations and the next
    continues from there: on a realistic simulated prediction (the prior's cuts along silhouettes
    slow CG down) the result matches solving every step to its tolerance, with far fewer iterations."""
    from lotus3d import integrate, scenes, single, synthetic
    from lotus3d.simulate import simulate_realistic

    meshes = scenes.preset_meshes("objects", 0, shared_data / "mesh_fuze_bottle" / "fuze.obj")
    cam = scenes.preset_cameras("objects", meshes, 6, 320, 240, seed=0)[5]
    v = synthetic.Renderer(meshes).render(cam)
    p = simulate_realistic(v, np.random.default_rng(0))
    m = v.mask & np.isfinite(p.depth) & np.isfinite(p.normal).all(-1)
    shift = single.recover_shift(p.depth, p.kind, p.normal, cam.K, m)
    prior = single.depth_from_affine(p.depth, p.kind, shift.shift)
    m &= np.isfinite(prior)
    capped = integrate_normals(p.normal, cam.K, m, prior_depth=prior)
    monkeypatch.setattr(integrate, "STEP_CG_ITERATIONS", 500)
    full = integrate_normals(p.normal, cam.K, m, prior_depth=prior)
    assert capped.cg_iterations < 0.6 * full.cg_iterations
    e_capped, e_full, e_prior = (_made(x, v.depth, m) for x in (capped.depth, full.depth, prior))
    assert abs(e_capped - e_full) < 0.03 * e_full
    assert e_capped < 0.9 * e_prior
    assert np.nanmean(np.abs(capped.depth / full.depth - 1)) < 5e-3


def test_integration_does_not_depend_on_the_number_of_threads():
    """The kernels run on all cores; every reduction adds per-row sums in order, so the depth is the
    same bit for bit with one thread (the IRLS path is sensitive to rounding: a different sum order
    moves the final error by a few percent)."""
    import numba

    from lotus3d import threads as policy
    from lotus3d.bench.single import cow_view

    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    if threads < 2:
        pytest.skip("one core: nothing to compare")
    _, normal, K, mask = cow_view(256, 200)  # cropped grid above PARALLEL_PIXELS: parallel sweeps too
    ys, xs = np.nonzero(mask)  # and enough pixels for two threads (threads_for)
    assert (np.ptp(ys) + 3) * (np.ptp(xs) + 3) >= 2 * policy.PIXELS_PER_THREAD
    depths = []
    for n in (1, threads):
        numba.set_num_threads(n)
        try:
            depths.append(integrate_normals(normal, K, mask).depth)
        finally:
            numba.set_num_threads(threads)
    assert np.array_equal(depths[0], depths[1], equal_nan=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_integrates_on_one_thread_to_the_same_depth():
    """GNU OpenMP cannot start threads in a process forked from one that used it (numba terminates
    the child); there the kernels run single-threaded twins, which compute the same numbers."""
    from lotus3d.bench.single import cow_view

    _, normal, K, mask = cow_view(256, 200)
    parent = integrate_normals(normal, K, mask).depth  # the parent's OpenMP threads are running now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the depth through the pipe, exit without running pytest's teardown
        code = 1
        try:
            depth = integrate_normals(normal, K, mask).depth
            with os.fdopen(write, "wb") as f:
                f.write(depth.tobytes())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = np.frombuffer(data, parent.dtype).reshape(parent.shape)
    assert np.array_equal(child, parent, equal_nan=True)


def test_single_benchmark_compares_both_solvers_and_writes_its_rows(tmp_path, monkeypatch):
    """`lotus3d bench single` stays runnable: on a tiny panel both solvers reach small errors, the
    summary adds up the views, and the rows land in summary.json."""
    import json

    from lotus3d.bench import single as bench

    monkeypatch.setattr(bench, "IDLE_SECONDS", 0.0)
    rows = bench.run(sizes=((64, 48),), diligent=False, priors=False, focal=False, repeats=1, out=tmp_path)
    views, (total,) = rows[:-1], rows[-1:]
    assert len(views) >= 4 and total["views"] == len(views)
    for r in views:
        assert 0 < r["ours_made"] < 5 and 0 < r["reference_made"] < 5  # percent of the mean depth
        assert r["ours_s"] > 0 and r["reference_s"] > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(rows, default=float))


def test_guarded_integration_improves_a_noisy_prior_and_falls_back_on_wrong_normals():
    from lotus3d.simulate import _rotate
    from lotus3d.single import refine_with_normals

    d, n, K = _tilted_plane(288, 384)
    m = np.isfinite(n).all(-1)
    rng = np.random.default_rng(0)
    prior = d * np.exp(rng.normal(0, 0.01, d.shape))  # 1 % pixel noise

    good = refine_with_normals(n, K, m, prior)
    assert not good.fallback and good.integration is not None
    assert _median_scaled_error(good.depth, d, m) < 0.3 * _median_scaled_error(prior, d, m)
    assert good.checks["result_vs_normals_deg"] < good.checks["prior_vs_normals_deg"]
    tilt = np.broadcast_to(np.radians([0.0, 40.0, 0.0]), n.shape)
    for wrong in (n * np.array([-1, 1, 1], np.float32), _rotate(n.astype(np.float64), tilt).astype(np.float32)):
        bad = refine_with_normals(wrong, K, m, prior)
        assert "disagree" in bad.fallback
        assert bad.depth is prior  # the prediction itself, said so


def test_focal_recovery_on_unrelated_noise_keeps_the_default_and_says_why():
    """Depth and normals with nothing in common (what a random-initialised model gives): no crash,
    the default field of view, undetermined, with the reason."""
    from lotus3d.single import DEFAULT_FOV_DEG, recover_focal

    rng = np.random.default_rng(0)
    pred = rng.uniform(0.05, 0.9, (96, 128)).astype(np.float32)
    normal = rng.normal(size=(96, 128, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    r = recover_focal(pred, "disparity", normal.astype(np.float32))
    assert r.fov_deg == DEFAULT_FOV_DEG and not r.determined and "nothing to compare" in r.reason


def test_focal_length_is_recovered_from_the_normals_of_a_rendered_view(shared_data):
    from lotus3d import scenes, synthetic
    from lotus3d.single import recover_focal

    meshes = scenes.preset_meshes("objects", 0, shared_data / "mesh_fuze_bottle" / "fuze.obj")
    for fov in (40.0, 70.0):
        cam = synthetic.orbit_cameras(synthetic.merge_meshes(meshes[:-1]), 3, 320, 240, fov_deg=fov, distance=2.0)[1]
        v = synthetic.Renderer(meshes).render(cam)
        pred = np.where(v.mask, 1.0 / v.depth, 0.0)
        pred = (pred - 0.05) / np.ptp(pred[v.mask])  # affine-invariant: unknown scale and shift
        res = recover_focal(pred.astype(np.float32), "disparity", np.nan_to_num(v.normal), v.mask)
        assert res.fov_deg == pytest.approx(fov, rel=0.1)


def test_warmup_compiles_once_and_later_processes_load_the_kernels(tmp_path):
    """``lotus3d warmup`` on a machine with an empty numba cache compiles the kernels into it; a later
    process integrating another map and searching its shift compiles nothing (every kernel a cache hit)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    first = subprocess.run([sys.executable, "-m", "lotus3d.cli", "warmup"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "kernels ready" in first.stdout
    assert list((tmp_path / "numba").rglob("*.nbi")), "nothing cached"
    probe = (
        "import numpy as np\n"
        "from lotus3d import integrate, multigrid, single\n"
        "from lotus3d.bench.single import cow_view\n"
        "d, n, K, m = cow_view(200, 180)\n"
        "integrate.integrate_normals(n, K, m, prior_depth=d)\n"
        "single.recover_shift(np.where(m, 1 / d, 0), 'disparity', n, K, m)\n"
        "fns = [f for mod in (integrate, multigrid, single) for f in vars(mod).values() if hasattr(f, 'stats')]\n"
        "print(sum(f.stats.cache_misses.get(k, 0) for f in fns for k in f.stats.cache_misses),"
        " sum(sum(f.stats.cache_hits.values()) for f in fns))\n"
    )
    second = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    misses, hits = (int(x) for x in second.stdout.split())
    assert misses == 0 and hits > 5


def test_prior_family_benchmark_rows_compare_ours_with_the_prediction():
    """The single-view prior benchmark on a small view: a prediction whose far end is not at zero
    (true shift -0.3) is fixed by the recovered shift; every row carries its comparison figures. Another
    seed draws another scene and other errors (the held-out rows), where the same holds."""
    from lotus3d.bench.single import prior_family_rows

    drawn = {}
    for seed in (0, 1):
        rows = prior_family_rows(
            192, 144, offsets=(0.3,), presets=("orbit",), views=(0,), modes=("texture", "warp"), seed=seed
        )
        assert [r["mode"] for r in rows] == ["texture", "warp"]
        for r in rows:
            assert r["shift_determined"] and -0.4 < r["shift"] < -0.15  # a smooth warp biases it somewhat
            assert r["ours_error"] < r["naive_error"] and r["oracle_error"] <= r["naive_error"]
            assert r["own_prior_error"] < r["naive_error"]  # the prior under our shift
            assert r["ours_over_oracle"] == pytest.approx(r["ours_error"] / r["oracle_error"])
            # background fills more than 2 % of the view: the generating shift is known, -0.3
            assert r["true_shift"] == -0.3 and r["oracle_error"] <= 1.002 * r["true_shift_error"] < r["naive_error"]
        drawn[seed] = rows
    assert all(abs(a["naive_error"] / b["naive_error"] - 1) > 0.01 for a, b in zip(*drawn.values(), strict=True))
    # the normals' smooth bias removed: the same draws otherwise (the depth is identical), better normals
    unbiased = prior_family_rows(
        192, 144, offsets=(0.3,), presets=("orbit",), views=(0,), modes=("texture", "warp"), normal_bias_scale=0.0
    )
    for a, b in zip(drawn[0], unbiased, strict=True):
        assert a["naive_error"] == b["naive_error"] and a["oracle_error"] == b["oracle_error"]
        assert b["predicted_normal_deg"] < a["predicted_normal_deg"] - 0.5


def test_focal_benchmark_rows_recover_the_field_of_view_of_exact_predictions():
    """The focal part of ``lotus3d bench single``: views rendered at 40 and 75 degrees; from the exact
    disparity and normals the field of view is determined within 10 %; every row's error is the used
    field of view against the true one, and a row kept at the default says why."""
    from lotus3d.bench.single import focal_rows
    from lotus3d.single import DEFAULT_FOV_DEG

    rows = focal_rows(320, 240, fovs=(40.0, 75.0), presets=("orbit",), views=(0,))
    assert len(rows) == 2 * 9 and {r["true_fov_deg"] for r in rows} == {40.0, 75.0}
    for r in rows:
        assert r["fov_error"] == pytest.approx(r["fov_deg"] / r["true_fov_deg"] - 1)
        assert r["determined"] or (r["fov_deg"] == DEFAULT_FOV_DEG and r["reason"])
    exact = [r for r in rows if r["mode"] == "exact"]
    assert len(exact) == 2 and all(r["determined"] and abs(r["fov_error"]) <= 0.1 for r in exact)


def test_oracle_shift_error_finds_a_shift_between_its_grid_steps():
    """The benchmark's oracle on an exact prior whose true shift lies between grid points (the far
    end well above zero, as seen from inside a room): the refined search finds it, the error is ~0."""
    from lotus3d.bench.single import _oracle_shift_error

    yy, xx = np.mgrid[0:96, 0:128]
    depth = 2.0 + 0.03 * xx + 0.01 * yy  # 2 to 6.8 units
    mask = np.ones(depth.shape, bool)
    for true_shift in (0.537, 0.9):
        pred = (1.0 / depth) / 0.4 - true_shift  # disparity, scaled and shifted; + true_shift undoes it
        assert _oracle_shift_error(pred, depth, mask) < 2e-4


def test_prior_family_room_rows_recover_a_positive_shift(shared_data):
    """Views from inside the shared copy-room scan see nothing at infinity: a normalised prediction's
    far end is not at zero and its true shift is positive. The shift is recovered, not kept at 0,
    and the depth is far closer than the naive inversion's."""
    from lotus3d.bench.single import prior_family_rows

    rows = prior_family_rows(192, 144, offsets=(0.0,), presets=("room",), modes=("texture",))
    assert [r["input"] for r in rows] == [f"room view {i} texture" for i in (1, 2, 3, 4)]
    for r in rows:
        assert r["shift_determined"] and r["shift"] > 0.2
        assert r["true_shift"] is None and r["true_shift_error"] is None  # nothing at infinity: not known
        assert r["ours_error"] < 0.3 * r["naive_error"] and r["ours_over_oracle"] < 2.0


def test_a_prior_warped_as_a_whole_is_held_loosely_unless_that_fails_the_self_check():
    """Where the prior disagrees with the normals over the whole image (median angle well beyond the
    normals' own error), its weight is lowered everywhere, and the normals (3-degree smooth bias)
    correct more of its warp than under the per-region weight alone. Where the looser result departs
    too far from the prior at the large scale, the per-region weight is tried again before falling back."""
    from lotus3d.simulate import _rotate
    from lotus3d.single import refine_with_normals

    d, n, K = _tilted_plane(288, 384)
    m = np.isfinite(n).all(-1)
    for seed, amplitude, loosened in ((2, 0.1, True), (1, 0.15, False)):
        rng = np.random.default_rng(seed)
        bias = np.stack([smooth_field(d.shape, rng, cells=3) for _ in range(3)], -1) * np.radians(3.0)
        normal = _rotate(n.astype(np.float64), bias).astype(np.float32)
        warped = d * np.exp(amplitude * smooth_field(d.shape, rng, cells=2))
        overall = refine_with_normals(normal, K, m, warped)
        per_region = refine_with_normals(normal, K, m, warped, warped_floor=1.0)
        assert not overall.fallback and not per_region.fallback
        assert overall.checks["prior_vs_normals_deg"] > 10.0
        if loosened:
            assert overall.checks["overall_weight_factor"] < 0.5 and "failed_attempts" not in overall.checks
            err = _median_scaled_error(overall.depth, d, m)
            assert err < 0.6 * _median_scaled_error(per_region.depth, d, m)
            assert err < 0.4 * _median_scaled_error(warped, d, m)
        else:  # the loose attempt departed too far: the per-region one is returned, not the prior
            assert overall.checks["overall_weight_factor"] == 1.0
            assert "large scale" in overall.checks["failed_attempts"][0]
            np.testing.assert_array_equal(overall.depth, per_region.depth)
            assert _median_scaled_error(overall.depth, d, m) < _median_scaled_error(warped, d, m)


def test_prior_weight_holds_an_agreeing_prior_and_yields_to_a_tilted_one():
    """Per region, the prior weight follows how the prior and the normals agree. An exact prior with
    normals of a smooth 4-degree bias: held more firmly than under the plain weight, so less of the
    bias gets in. A prior warped by 30 % in log depth (tilted by 15-30 degrees) with good normals:
    the normals have more say than under the plain weight, and correct more of the warp."""
    from lotus3d.simulate import _rotate
    from lotus3d.single import refine_with_normals

    d, n, K = _tilted_plane(288, 384)
    m = np.isfinite(n).all(-1)
    rng = np.random.default_rng(1)
    bias = np.stack([smooth_field(d.shape, rng, cells=3) for _ in range(3)], -1) * np.radians(4.0)
    biased = _rotate(n.astype(np.float64), bias).astype(np.float32)
    warped = d * np.exp(0.3 * smooth_field(d.shape, rng, cells=2))

    for normal, prior, gain in ((biased, d, 0.8), (n, warped, 0.9)):
        adaptive = refine_with_normals(normal, K, m, prior)
        plain = refine_with_normals(normal, K, m, prior, weight_range=(1.0, 1.0))
        assert not adaptive.fallback and not plain.fallback
        assert _median_scaled_error(adaptive.depth, d, m) < gain * _median_scaled_error(plain.depth, d, m)
    assert _median_scaled_error(adaptive.depth, d, m) < 0.9 * _median_scaled_error(warped, d, m)


def test_bench_photos_part_runs_lotus3d_single_on_the_real_photos(shared_data, tiny_models, tmp_path):
    """`lotus3d bench single --part photos` predicts the shared photos with the given checkpoints (tiny
    random ones here: their predictions are noise, so the integration is refused, said so per photo)
    and writes each photo's mesh, preview and report, an overview image and the rows."""
    from lotus3d.io import list_images, load_image, load_json

    cmd = [sys.executable, "-m", "lotus3d.cli", "bench", "single", "--part", "photos", "-o", str(tmp_path)]
    cmd += ["--model", str(tiny_models["depth_g"]), "--normal-model", str(tiny_models["normal_g"])]
    done = subprocess.run([*cmd, "--processing-res", "128"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    photos = list_images(shared_data / "photos_single")
    rows = load_json(tmp_path / "summary.json")
    assert [r["input"] for r in rows] == [f"photo {p.name}" for p in photos]
    for photo, row in zip(photos, rows, strict=True):
        assert (tmp_path / "photos" / f"{photo.stem}.glb").stat().st_size > 0
        assert (tmp_path / "photos" / "predictions" / "depth" / f"{photo.stem}.npy").exists()
        assert row["fallback"] and row["fallback"] in done.stdout  # noise does not pass the checks, and says so
    assert load_image(tmp_path / "photos" / "overview.png").shape[0] == 240 * len(photos)


def test_bench_photos_part_without_weights_says_so_and_measures_nothing(shared_data, tmp_path, capsys):
    from lotus3d.bench.single import photo_rows
    from lotus3d.configs import PredictConfig

    rows = photo_rows(tmp_path, PredictConfig(depth_model=str(tmp_path / "no-such-model")))
    assert rows == [] and "no Lotus weights here" in capsys.readouterr().out
    assert not (tmp_path / "overview.png").exists()
