"""The texture atlas on scenes with exact geometry: photos reproduced, seams levelled, occlusion respected."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from lotus3d import synthetic, texture
from lotus3d.bench.texture import psnr
from lotus3d.mesh import Mesh, export_mesh, render_colors
from lotus3d.scenes import world_light
from lotus3d.synthetic import Renderer
from lotus3d.types import intrinsics_from_fov


def _fine(m: Mesh, levels: int) -> Mesh:
    """``m`` with every face split into 4 ``levels`` times (UVs interpolated), as fine as a TSDF mesh."""
    v, f, uv = m.vertices, m.faces, m.uv
    for _ in range(levels):
        v, f, attrs = trimesh.remesh.subdivide(v, f, vertex_attributes={"uv": uv})
        uv = attrs["uv"]
    return Mesh(v, f, uv=uv, texture=m.texture)


@pytest.fixture(scope="module")
def floor_scene():
    """A finely textured floor 2 m wide (edges of 1.6-2.2 cm, like a TSDF mesh) seen by 6 cameras, lit
    from the world."""
    rng = np.random.default_rng(0)
    floor = _fine(synthetic.textured_floor(np.zeros(3), 2.0, 0.0, rng, resolution=512), 7)
    r = Renderer(floor)
    cams = synthetic.orbit_cameras(floor, 6, 320, 240, fov_deg=55.0, distance=1.6, elevations=(50.0, 65.0), seed=0)
    photos = [r.render(c, world_light(c)) for c in cams]
    return floor, cams, photos


def _vertex_colours(m: Mesh, cams, photos) -> np.ndarray:
    """Per vertex, the photo's colour at its projection in the first view that sees it."""
    colors = np.zeros((len(m.vertices), 3))
    done = np.zeros(len(m.vertices), bool)
    for cam, view in zip(cams, photos, strict=True):
        pc = m.vertices @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
        uv = pc[:, :2] / pc[:, 2:] * np.diag(cam.K)[:2] + cam.K[:2, 2]
        xi, yi = np.round(uv).astype(int).T
        ok = ~done & (xi >= 0) & (yi >= 0) & (xi < cam.width) & (yi < cam.height)
        colors[ok] = view.image[yi[ok], xi[ok]]
        done |= ok
    return colors


def test_baked_texture_reproduces_the_photos(floor_scene):
    floor, cams, photos = floor_scene
    geometry = Mesh(floor.vertices, floor.faces, _vertex_colours(floor, cams, photos))
    baked = texture.bake(geometry, cams, lambda i: photos[i].image)
    assert baked.mesh.textured and baked.stats["faces_unseen"] < 0.01 * len(floor.faces)
    assert baked.stats["size"] <= 4096
    for i in (0, 3):
        tex, depth = render_colors(baked.mesh, cams[i])
        vc, _ = render_colors(geometry, cams[i])
        mask = photos[i].mask & np.isfinite(depth)
        ours, vertex = psnr(tex, photos[i].image, mask), psnr(vc, photos[i].image, mask)
        # vertex colours 2 cm apart cannot carry the texture's detail; the atlas holds the photos' pixels
        assert ours > 33.0 and vertex < 30.0, (ours, vertex)


def test_levelling_removes_a_per_view_exposure_change(floor_scene):
    floor, cams, photos = floor_scene
    geometry = Mesh(floor.vertices, floor.faces, np.full((len(floor.vertices), 3), 0.5))
    images = [p.image.copy() for p in photos]
    images[2] = images[2] * 0.7  # one photo 30 % darker (exposure)
    # each patch from its own view's pixels only: merged views would already dilute one photo's exposure
    levelled = texture.bake(geometry, cams, lambda i: images[i], texture.TextureOptions(detail=1))
    plain = texture.bake(geometry, cams, lambda i: images[i], texture.TextureOptions(level=False, detail=1))
    assert (levelled.labels == 2).sum() > 100  # the dark view does texture part of the floor
    others = np.delete(levelled.gains, 2, axis=0)
    ratio = levelled.gains[2] / np.exp(np.log(others).mean(0))
    np.testing.assert_allclose(ratio, 1 / 0.7, rtol=0.05)
    # the levelled texture reproduces the true (unchanged) appearance in the other views better
    for i in (0, 4):
        truth = photos[i]
        a, da = render_colors(levelled.mesh, cams[i])
        b, db = render_colors(plain.mesh, cams[i])
        m = truth.mask & np.isfinite(da) & np.isfinite(db)
        assert psnr(a, truth.image, m) > psnr(b, truth.image, m) + 1.0


def test_photos_with_nan_borders_give_a_finite_texture(floor_scene):
    """Undistorted photos are NaN where the original image ends: no NaN may reach the atlas or the
    exposure gains, and with the valid masks the faces there take their colour from other views."""
    floor, cams, photos = floor_scene
    geometry = Mesh(floor.vertices, floor.faces, _vertex_colours(floor, cams, photos))
    images = []
    for p in photos:
        image = p.image.copy()
        image[:, :16], image[:, -16:], image[:16], image[-16:] = np.nan, np.nan, np.nan, np.nan
        images.append(image)
    mask = lambda i: np.isfinite(images[i]).all(-1)  # noqa: E731
    for detail in (1, 2):
        opts = texture.TextureOptions(detail=detail)
        clean = texture.bake(geometry, cams, lambda i: photos[i].image, opts)
        blind = texture.bake(geometry, cams, lambda i: images[i], opts)
        masked = texture.bake(geometry, cams, lambda i: images[i], opts, valid=mask)
        scores = []
        for baked in (clean, blind, masked):
            assert np.isfinite(baked.mesh.texture).all() and np.isfinite(baked.gains).all()
            assert np.abs(np.log(baked.gains)).max() < 0.05  # one exposure everywhere: gains stay near 1
            tex, depth = render_colors(baked.mesh, cams[0])
            scores.append(psnr(tex, photos[0].image, photos[0].mask & np.isfinite(depth)))
        assert scores[2] > scores[0] - 1.5, scores
        if detail == 1:  # one view's pixels per patch: without the masks, NaN borders leave holes filled blindly
            assert scores[1] < scores[2] - 3.0, scores
        else:  # merged views: a NaN pixel is no sample, other views' pixels fill in
            assert scores[1] > scores[0] - 1.5, scores


def test_occluded_faces_take_no_colour_from_the_occluding_view():
    """A red card floats in front of a grey wall; camera 0 sees the wall's middle only through the card,
    camera 1 sees the wall from the side, past the card."""
    wall = _plane(np.array([0.0, 0.0, 0.0]), 2.0, 0.05, (0.5, 0.5, 0.5))
    card = _plane(np.array([0.0, 0.0, 0.6]), 0.5, 0.05, (1.0, 0.0, 0.0))
    r = Renderer([wall, card])
    K = intrinsics_from_fov(320, 240, 60.0)
    up = np.array([0.0, 1.0, 0.0])
    cams = [
        synthetic.Camera(K, synthetic.look_at(np.array([0.0, 0.0, 2.5]), np.zeros(3), up), 320, 240),
        synthetic.Camera(K, synthetic.look_at(np.array([1.6, 0.0, 1.2]), np.zeros(3), up), 320, 240),
    ]
    photos = [r.render(c, world_light(c)).image for c in cams]
    both = synthetic.merge_meshes([wall, card])
    geometry = Mesh(both.vertices, both.faces, np.full((len(both.vertices), 3), 0.5))
    fv = texture.view_quality(geometry, cams)
    n_wall = len(wall.faces)
    centre = geometry.vertices[geometry.faces[:n_wall]].mean(1)
    behind = (np.abs(centre[:, 0]) < 0.15) & (np.abs(centre[:, 1]) < 0.15)  # hidden from camera 0 by the card
    assert behind.sum() > 10
    assert not (fv.views[:n_wall][behind] == 0).any()
    baked = texture.bake(geometry, cams, lambda i: photos[i])
    assert (baked.labels[:n_wall][behind] == 1).all()
    # rendered from camera 1, the wall behind the card is grey, not red
    image, depth = render_colors(baked.mesh, cams[1])
    hits = np.isfinite(depth)
    wall_px = hits & (image[..., 1] > 0.2)  # the card is pure red; the wall has green
    assert wall_px.sum() > 1000
    red = image[..., 0] - image[..., 1]
    pc = _pixel_points(depth, cams[1])
    hidden_px = hits & (np.abs(pc[..., 0]) < 0.15) & (np.abs(pc[..., 1]) < 0.15) & (np.abs(pc[..., 2]) < 0.01)
    assert hidden_px.sum() > 50 and np.abs(red[hidden_px]).max() < 0.1


def _plane(center: np.ndarray, size: float, edge: float, color) -> Mesh:
    n = int(round(size / edge)) + 1
    xs = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(xs, xs)
    v = np.column_stack([x.ravel(), y.ravel(), np.zeros(n * n)]) + center
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, 1:].ravel(), i[1:, :-1].ravel()
    f = np.concatenate([np.column_stack([a, b, c]), np.column_stack([a, c, d])])
    return Mesh(v, f, colors=np.tile(np.asarray(color, np.float32), (len(v), 1)))


def _pixel_points(depth: np.ndarray, cam) -> np.ndarray:
    """World points (H, W, 3) of a depth map."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(cam.K).T
    pc = rays * depth[..., None]
    return (pc - cam.world_to_camera[:3, 3]) @ cam.world_to_camera[:3, :3]


def test_glb_and_obj_round_trip_keep_uvs_and_texture(floor_scene, tmp_path):
    floor, cams, photos = floor_scene
    geometry = Mesh(floor.vertices, floor.faces, np.full((len(floor.vertices), 3), 0.5))
    baked = texture.bake(geometry, cams, lambda i: photos[i].image).mesh
    for suffix in ("glb", "obj"):
        path = export_mesh(baked, tmp_path / f"mesh.{suffix}")
        loaded = trimesh.load(path, force="mesh", process=False)
        assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
        material = loaded.visual.material
        image = np.asarray(getattr(material, "baseColorTexture", None) or material.image)
        assert image.shape[:2] == baked.texture.shape[:2]
        expected = (np.clip(baked.texture, 0, 1) * 255 + 0.5).astype(np.uint8)
        assert np.abs(image[..., :3].astype(int) - expected).max() <= 1
        assert len(loaded.faces) == len(baked.faces)
        np.testing.assert_allclose(loaded.visual.uv[loaded.faces], baked.uv[baked.faces], atol=1e-6)
    assert (tmp_path / "mesh.mtl").is_file() and (tmp_path / "mesh.png").is_file()


def test_atlas_packing_and_filling():
    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 60, (300, 2))
    side = 768
    pos = texture.pack(sizes, side)
    assert pos is not None
    canvas = np.zeros((side, side), int)
    for (x, y), (w, h) in zip(pos, sizes, strict=True):
        canvas[y : y + h, x : x + w] += 1
    assert canvas.max() == 1  # no overlap, all inside
    assert texture.pack(sizes, 256) is None  # less area than the rectangles
    image = np.zeros((32, 32, 3), np.float32)
    known = np.zeros((32, 32), bool)
    image[:8, :8], known[:8, :8] = 1.0, True
    filled = texture.push_pull(image, known)
    assert (filled[known] == 1.0).all() and filled[~known].min() > 0.5  # holes take the known colour


def test_smoothness_makes_fewer_patches(floor_scene):
    floor, cams, _ = floor_scene
    geometry = Mesh(floor.vertices, floor.faces)
    fv = texture.view_quality(geometry, cams)
    # qualities perturbed by up to 30 %: the best view alone flips from face to face
    noisy = fv.quality * np.random.default_rng(1).uniform(0.7, 1.0, fv.quality.shape)
    order = np.argsort(-noisy, 1)
    rows = np.arange(len(noisy))[:, None]
    fv = texture.FaceViews(fv.views[rows, order], noisy[rows, order])
    adjacency, _ = texture.face_adjacency(geometry.faces)
    best = texture.select_views(fv, adjacency, texture.TextureOptions(smoothness=0.0))
    smooth = texture.select_views(fv, adjacency, texture.TextureOptions())
    np.testing.assert_array_equal(best, fv.views[:, 0])
    changed = lambda labels: int((labels[adjacency[:, 0]] != labels[adjacency[:, 1]]).sum())  # noqa: E731
    assert changed(smooth) < 0.5 * changed(best)


def test_fine_texture_scenes_add_texel_scale_detail_and_leave_the_others_alone():
    from lotus3d.scenes import preset_meshes

    plain, fine = preset_meshes("orbit", 3), preset_meshes("orbit", 3, fine_texture=True)

    def detail(tex: np.ndarray) -> float:  # mean |difference| between neighbouring texels
        return float(np.abs(np.diff(tex, axis=1)).mean())

    assert fine[-1].texture.shape[0] == 2 * plain[-1].texture.shape[0]
    assert detail(fine[-1].texture) > 3 * detail(plain[-1].texture)  # the floor
    assert detail(fine[0].texture) > 3 * detail(plain[0].texture)  # the cow
    np.testing.assert_array_equal(preset_meshes("orbit", 3)[-1].texture, plain[-1].texture)


def test_merged_views_keep_detail_finer_than_a_pixel():
    """Grain finer than a pixel: every photo samples it at other sub-pixel offsets, so the views' pixels
    merged at 2 texels per pixel predict an unseen camera better than one view's pixels."""
    rng = np.random.default_rng(3)
    floor = _fine(synthetic.textured_floor(np.zeros(3), 2.0, 0.0, rng, resolution=1024), 7)
    floor.texture = np.clip(floor.texture + rng.normal(0.0, 0.15, floor.texture.shape), 0, 1).astype(np.float32)
    r = Renderer(floor)
    cams = synthetic.orbit_cameras(floor, 14, 320, 240, fov_deg=55.0, distance=1.6, elevations=(50.0, 65.0), seed=0)
    train, held = cams[:12], cams[12:]
    photos = [r.render(c, world_light(c)).image for c in train]
    geometry = Mesh(floor.vertices, floor.faces, np.full((len(floor.vertices), 3), 0.5))
    scores = {}
    for detail in (1, 2):
        baked = texture.bake(geometry, train, lambda i: photos[i], texture.TextureOptions(detail=detail))
        values = []
        for cam in held:
            truth = r.render(cam, world_light(cam))
            image, depth = render_colors(baked.mesh, cam)
            values.append(psnr(image, truth.image, truth.mask & np.isfinite(depth)))
        scores[detail] = (float(np.mean(values)), baked.stats["size"])
    assert scores[2][1] > 1.5 * scores[1][1]  # the atlas holds twice the photos' resolution
    assert scores[2][0] > scores[1][0] + 1.0, scores
