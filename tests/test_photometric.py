"""Photometric refinement on a floor with exact cameras: a known displacement undone, a blank surface left alone."""

from __future__ import annotations

import numpy as np
import trimesh

from lotus3d import photometric, synthetic
from lotus3d.mesh import Mesh
from lotus3d.scenes import world_light
from lotus3d.synthetic import Renderer


def _floor(texture: bool) -> Mesh:
    """A 2 m floor at y = 0 split into edges of about 1.6 cm (as fine as a TSDF mesh)."""
    floor = synthetic.textured_floor(np.zeros(3), 2.0, 0.0, np.random.default_rng(0), resolution=512)
    v, f = floor.vertices, floor.faces
    for _ in range(7):
        v, f = trimesh.remesh.subdivide(v, f)
    if not texture:
        return Mesh(v, f, colors=np.full((len(v), 3), 0.6))
    return Mesh(v, f, uv=(v[:, [0, 2]] + 1.0) / 2.0, texture=floor.texture)  # corners -> the unit square


def _scene(texture: bool):
    truth = _floor(texture)
    cams = synthetic.orbit_cameras(truth, 8, 320, 240, fov_deg=55.0, distance=1.6, elevations=(45.0, 65.0), seed=0)
    r = Renderer(truth)
    photos = [r.render(c, world_light(c)).image for c in cams]
    x, z = truth.vertices[:, 0], truth.vertices[:, 2]
    bump = 0.015 * np.sin(3.0 * x) * np.cos(2.0 * z)  # up to 1.5 cm: several pixels of parallax
    moved = truth.vertices + np.column_stack([np.zeros_like(x), bump, np.zeros_like(x)])
    return Mesh(moved, truth.faces, colors=np.full((len(moved), 3), 0.5)), cams, photos


def test_a_known_displacement_is_undone_where_the_surface_has_texture():
    mesh, cams, photos = _scene(texture=True)
    before = np.abs(mesh.vertices[:, 1])
    result = photometric.refine_mesh(mesh, cams, lambda i: photos[i])
    after = np.abs(result.mesh.vertices[:, 1])
    assert result.accepted, result.reason
    inner = np.abs(mesh.vertices[:, [0, 2]]).max(1) < 0.6  # well inside every view
    assert np.median(after[inner]) < 0.3 * np.median(before[inner])
    assert np.array_equal(result.mesh.faces, mesh.faces) and np.array_equal(result.mesh.colors, mesh.colors)
    passes = result.stats["passes"]
    assert passes[0]["variance_after"] < passes[0]["variance_before"]


def test_a_blank_surface_is_left_where_it_is():
    mesh, cams, photos = _scene(texture=False)
    result = photometric.refine_mesh(mesh, cams, lambda i: photos[i])
    moved = np.linalg.norm(result.mesh.vertices - mesh.vertices, axis=1)
    # flat colours say nothing about depth: away from the floor's silhouette (where the photos' black
    # background slides into the samples) nothing moves by more than a fraction of a millimetre
    inner = np.abs(mesh.vertices[:, [0, 2]]).max(1) < 0.8
    assert np.percentile(moved[inner], 99) < 5e-4 or not result.accepted


def test_too_few_views_leave_the_mesh_unchanged():
    mesh, cams, photos = _scene(texture=True)
    result = photometric.refine_mesh(mesh, cams[:2], lambda i: photos[i])
    assert not result.accepted and result.mesh is mesh and "too few views" in result.reason
