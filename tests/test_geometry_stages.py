"""COLMAP models, rendering, depth filtering, TSDF fusion, mesh clean-up and metrics."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from lotus3d import fuse, mesh, metrics, scenes, sfm, synthetic
from lotus3d.types import Camera


@pytest.fixture(scope="module")
def small_scene():
    meshes = scenes.preset_meshes("orbit", seed=0)
    renderer = synthetic.Renderer(meshes)
    cams = scenes.preset_cameras("orbit", meshes, 8, 160, 120, seed=0)
    views = [renderer.render(c) for c in cams]
    return renderer, cams, views


def test_rendered_depth_and_normals_are_consistent(small_scene):
    renderer, cams, views = small_scene
    v = views[0]
    assert 0.2 < v.mask.mean() < 1.0
    # depth along z: back-projecting a pixel lands on the surface (distance to mesh ~ 0)
    ys, xs = np.nonzero(v.mask)
    i = len(ys) // 2
    z = v.depth[ys[i], xs[i]]
    p_cam = z * np.linalg.inv(v.camera.K) @ np.array([xs[i], ys[i], 1.0])
    p_world = v.camera.camera_to_world[:3, :3] @ p_cam + v.camera.camera_to_world[:3, 3]
    closest = renderer.scene.compute_closest_points(synthetic.o3d.core.Tensor(p_world[None].astype(np.float32)))[
        "points"
    ].numpy()[0]
    assert np.linalg.norm(closest - p_world) < 1e-3
    n = v.normal[v.mask]
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    # facing the camera: n . ray <= 0
    K_inv = np.linalg.inv(v.camera.K)
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ K_inv.T
    assert (np.sum(n * rays, -1) <= 1e-6).all()


def test_colmap_text_roundtrip_keeps_opencv_convention(tmp_path, small_scene):
    renderer, cams, views = small_scene
    sp = synthetic.sample_sparse_points(renderer, views, 300)
    names = [f"v{i}.png" for i in range(len(cams))]
    obs = {n: ([], []) for n in names}
    for pid, tr in enumerate(sp.tracks):
        for vi, u, v in tr:
            obs[names[vi]][0].append((u, v))
            obs[names[vi]][1].append(pid)
    model = sfm.SfMModel(
        dict(zip(names, cams, strict=True)),
        sp.xyz,
        sp.rgb,
        {
            n: sfm.ViewObservations(np.array(a, float).reshape(-1, 2), np.array(b, np.int64))
            for n, (a, b) in obs.items()
        },
    )
    sfm.write_model_text(model, tmp_path)
    back = sfm.read_model(tmp_path)
    for n in names:
        np.testing.assert_allclose(back.cameras[n].K, model.cameras[n].K, atol=1e-9)
        np.testing.assert_allclose(back.cameras[n].world_to_camera, model.cameras[n].world_to_camera, atol=1e-9)
    # observations are where the points project with K (OpenCV pixel centres)
    uv, z = back.point_depths(names[0])
    cam = back.cameras[names[0]]
    pid = back.observations[names[0]].point_ids
    pc = back.points[pid] @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
    proj = (pc @ cam.K.T)[:, :2] / pc[:, 2:]
    np.testing.assert_allclose(uv, proj, atol=1e-3)
    np.testing.assert_allclose(z, pc[:, 2])
    # and COLMAP itself sees its own convention (+0.5)
    rec = pycolmap.Reconstruction(str(tmp_path))
    c = rec.cameras[1]
    assert c.principal_point_x == pytest.approx(cam.K[0, 2] + 0.5)


def test_distorted_camera_gets_consistent_undistortion_maps():
    cam = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 100.0, 80, 60)
    cam.params = [100.0, 40.0, 30.0, 0.2]
    K, maps = sfm.pinhole_for(cam)
    assert maps is not None and maps[0].shape == (60, 80)
    # a pinhole pixel's map entry is where the distorted camera sees the same ray
    u, v = 70, 10
    ray = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
    src = np.asarray(cam.img_from_cam(ray[None]))[0] - 0.5
    assert maps[0][v, u] == pytest.approx(src[0], abs=1e-3) and maps[1][v, u] == pytest.approx(src[1], abs=1e-3)
    # points: distorted observation -> the pinhole pixel that the map sends there
    und = sfm._undistort_points(cam, src[None], K)[0]
    assert und == pytest.approx([u, v], abs=1e-3)
    img = np.random.default_rng(0).random((60, 80)).astype(np.float32)
    out = sfm.undistort(img, maps, nearest=True)
    assert out.shape == img.shape
    np.testing.assert_array_equal(out[v, u], img[int(round(maps[1][v, u])), int(round(maps[0][v, u]))])
    K2, none = sfm.pinhole_for(pycolmap.Camera.create_from_model_name(2, "PINHOLE", 100.0, 80, 60))
    assert none is None


def test_depth_edges_and_grazing_filter():
    d = np.full((20, 20), 2.0, np.float32)
    d[:, 10:] = 4.0  # a step: flying pixels would appear here
    edge = fuse.depth_edges(d, 0.04)
    assert edge[:, 9:11].all() and not edge[:, :8].any() and not edge[:, 12:].any()
    K = np.array([[20.0, 0, 9.5], [0, 20.0, 9.5], [0, 0, 1]])
    normal = np.zeros((20, 20, 3), np.float32)
    normal[..., 2] = -1
    normal[:5] = (0.0, -1.0, 0.0)  # surface seen edge-on
    out = fuse.filter_depth(d, K, normal, fuse.FilterOptions(edge_threshold=0.04, max_depth=3.0))
    assert np.isnan(out[:5]).all()  # grazing
    assert np.isnan(out[:, 10:]).all()  # beyond max depth
    assert np.isfinite(out[10:, :8]).all()


def test_tsdf_of_exact_depth_reproduces_the_surface(small_scene):
    renderer, cams, views = small_scene
    vol = fuse.TSDFVolume(fuse.TSDFOptions(voxel_size=0.02, trunc_voxels=4))
    for v in views:
        vol.integrate(v.depth, v.image, v.camera, depth_max=10.0)
    m = mesh.Mesh(*vol.extract_mesh(1.0))
    assert m.num_triangles > 1000 and m.colors is not None and m.colors.max() <= 1
    gt = renderer.mesh
    r = metrics.evaluate_mesh(m, mesh.Mesh(gt.vertices, gt.faces), cameras=cams, n_samples=30000)
    assert r["fscore"] > 0.9 and r["accuracy"] < 0.02


def test_remove_small_components_and_export(tmp_path):
    big = mesh.load_mesh(scenes.bundled_cow())
    tiny = synthetic.transformed(big, 0.01, None, np.array([5.0, 0, 0]))
    merged = synthetic.merge_meshes([big, tiny])
    m = mesh.Mesh(merged.vertices, merged.faces, np.full((len(merged.vertices), 3), 0.5))
    cleaned = mesh.remove_small_components(m, min_fraction=0.02)
    assert cleaned.vertices[:, 0].max() < 2.0  # the far, small copy is gone
    assert cleaned.num_triangles >= len(big.faces) * 0.99
    for suffix in ("ply", "glb", "obj"):
        p = mesh.export_mesh(cleaned, tmp_path / f"m.{suffix}")
        assert mesh.load_mesh(p).faces.shape[0] == cleaned.num_triangles
    with pytest.raises(ValueError, match="unsupported mesh format"):
        mesh.export_mesh(cleaned, tmp_path / "m.stl")
    assert mesh.simplify(cleaned, 1000).num_triangles <= 1000


def test_metrics_identity_and_offset():
    cow = mesh.load_mesh(scenes.bundled_cow())
    m = mesh.Mesh(cow.vertices, cow.faces)
    same = metrics.evaluate_mesh(m, m, n_samples=20000)
    assert same["fscore"] > 0.99 and same["chamfer"] < 0.01
    far = mesh.Mesh(cow.vertices + [15 * same["threshold"], 0.0, 0.0], cow.faces)
    off = metrics.evaluate_mesh(far, m, n_samples=20000)
    assert off["fscore"] < 0.3 and off["accuracy"] > same["accuracy"] * 5


def test_similarity_from_cameras_recovers_transform():
    rng = np.random.default_rng(0)
    ref = {}
    for i in range(6):
        T = synthetic.look_at(rng.normal(0, 3, 3), np.zeros(3), np.array([0, 1.0, 0]))
        ref[f"v{i}"] = Camera(np.eye(3), T, 10, 10)
    s, R = 0.5, synthetic.look_at(np.zeros(3), np.array([1.0, 2, 3]), np.array([0, 1.0, 0]))[:3, :3]
    t = np.array([1.0, -2, 0.5])
    est = {}
    for n, c in ref.items():  # est = inverse similarity applied to the reference centres
        center = R.T @ (c.center - t) / s
        Rc = c.world_to_camera[:3, :3] @ R
        T = np.eye(4)
        T[:3, :3] = Rc
        T[:3, 3] = -Rc @ center
        est[n] = Camera(np.eye(3), T, 10, 10)
    s2, R2, t2 = metrics.similarity_from_cameras(est, ref)
    assert s2 == pytest.approx(s) and np.allclose(R2, R, atol=1e-8) and np.allclose(t2, t, atol=1e-8)


def test_mesh_depth_rendering_matches_the_rendered_views(small_scene):
    """mesh.render_depth (what refinement ray casts the fused surface with) gives the views' own depth,
    at every pixel and at every stride-th one."""
    renderer, cams, views = small_scene
    merged = renderer.mesh
    m = mesh.Mesh(merged.vertices, merged.faces)
    full = mesh.render_depth(m, {"a": cams[0], "b": cams[3]})
    for name, v in (("a", views[0]), ("b", views[3])):
        assert np.array_equal(np.isfinite(full[name]), v.mask)
        np.testing.assert_allclose(full[name][v.mask], v.depth[v.mask], rtol=1e-5)
    strided = mesh.render_depth(m, {"a": cams[0]}, stride=4)["a"]
    assert strided.shape == (30, 40)
    np.testing.assert_allclose(strided, full["a"][::4, ::4], rtol=1e-5)
    empty = mesh.render_depth(mesh.Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64)), {"a": cams[0]})["a"]
    assert np.isnan(empty).all()


def test_back_projection_inverts_projection():
    """types.backproject: every pixel's point projects back onto that pixel through K; strided rays
    are the same rays."""
    from lotus3d.types import backproject, intrinsics_from_fov, pixel_rays

    K = intrinsics_from_fov(64, 48, 70.0)
    K[1, 1] *= 1.1  # non-square pixels
    depth = np.random.default_rng(0).uniform(0.5, 4.0, (48, 64))
    depth[3, 5] = np.nan
    P = backproject(depth, K)
    uv = P @ K.T
    u, v = np.meshgrid(np.arange(64.0), np.arange(48.0))
    ok = np.isfinite(depth)
    assert np.allclose(uv[ok][:, 0] / uv[ok][:, 2], u[ok]) and np.allclose(uv[ok][:, 1] / uv[ok][:, 2], v[ok])
    assert np.allclose(P[..., 2][ok], depth[ok]) and np.isnan(P[3, 5]).all()
    assert np.array_equal(pixel_rays(K, 64, 48, 4), pixel_rays(K, 64, 48)[::4, ::4])
