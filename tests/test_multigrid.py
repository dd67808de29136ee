"""The multigrid-preconditioned CG for weighted 5-point Laplacians (lotus3d.multigrid)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from lotus3d import multigrid, threads


def _system(h: int, w: int, seed: int = 0):
    """A padded random system: conductances over a decade, a hole, a nearly cut column."""
    rng = np.random.default_rng(seed)
    valid = np.zeros((h + 2, w + 2), bool)
    valid[1:-1, 1:-1] = True
    valid[h // 3 : h // 2, w // 3 : w // 2] = False
    cx = np.where(valid & np.roll(valid, -1, 1), 10 ** rng.uniform(0, 1, valid.shape), 0.0)
    cy = np.where(valid & np.roll(valid, -1, 0), 10 ** rng.uniform(0, 1, valid.shape), 0.0)
    cx[:, w // 2] *= 1e-6  # a nearly cut column, as at a depth discontinuity
    lam = np.where(valid, 1e-2, 0.0)
    diag = lam + cx + np.roll(cx, 1, 1) + cy + np.roll(cy, 1, 0)
    diag = np.where(valid, diag, 1.0)
    b = np.where(valid, rng.normal(size=valid.shape), 0.0)
    return cx, cy, diag, valid, b


def _sparse(cx, cy, diag):
    A = multigrid._dense(cx, cy, diag)
    return sp.csr_matrix(A)


def test_coarse_operator_is_the_galerkin_product():
    cx, cy, diag, valid, _ = _system(9, 7)
    A = multigrid._dense(cx, cy, diag)
    h, w = 9, 7
    # P: fine interior pixel -> its 2x2 block, valid pixels only
    hc, wc = (h + 1) // 2, (w + 1) // 2
    P = np.zeros((h * w, hc * wc))
    for y in range(h):
        for x in range(w):
            if valid[y + 1, x + 1]:
                P[y * w + x, (y // 2) * wc + x // 2] = 1.0
    shape = multigrid.coarse_shape(diag.shape)
    cxc, cyc, dc = (np.full(shape, 5.0) for _ in range(3))  # stale contents: all overwritten
    vc = np.ones(shape, bool)
    multigrid.coarsen(cx, cy, diag, valid, cxc, cyc, dc, vc)
    Ac = multigrid._dense(cxc, cyc, dc)
    G = P.T @ A @ P
    used = P.any(0)
    np.testing.assert_allclose(Ac[np.ix_(used, used)], G[np.ix_(used, used)], rtol=1e-12, atol=1e-12)
    assert np.array_equal(vc[1:-1, 1:-1].ravel(), used)
    border = np.ones(shape, bool)
    border[1:-1, 1:-1] = False
    assert (cxc[border] == 0).all() and (cyc[border] == 0).all() and (dc[border] == 1).all() and not vc[border].any()


def test_solve_matches_a_direct_solver_with_jumping_coefficients():
    cx, cy, diag, valid, b = _system(61, 47)
    exact = spsolve(_sparse(cx, cy, diag).tocsc(), b[1:-1, 1:-1].ravel()).reshape(61, 47)
    x, it = multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-10)
    np.testing.assert_allclose(x[1:-1, 1:-1], exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max())
    _, it_jacobi = multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-10, precondition="jacobi")
    assert it < it_jacobi / 5  # the multigrid preconditioner is what makes it fast
    # the nonlinear variant (A-norm-optimal coarse steps, flexible CG) reaches the same solution
    x_opt, it_opt = multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-10, step=None)
    np.testing.assert_allclose(x_opt[1:-1, 1:-1], exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max())
    assert it_opt < it_jacobi / 5


def test_optimal_coarse_steps_help_where_conductances_are_rough():
    """Bilateral weights of noisy normals: many edges nearly cut at random. The fixed over-correction
    overshoots there; the A-norm-optimal step does not."""
    cx, cy, diag, valid, b = _system(96, 128, seed=3)
    rng = np.random.default_rng(4)
    cut_x, cut_y = rng.random(cx.shape) < 0.15, rng.random(cy.shape) < 0.15
    cx, cy = np.where(cut_x, cx * 1e-4, cx), np.where(cut_y, cy * 1e-4, cy)
    lam = 0.05
    diag = np.where(valid, lam + cx + np.roll(cx, 1, 1) + cy + np.roll(cy, 1, 0), 1.0)
    _, it_fixed = multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-8)
    _, it_opt = multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-8, step=None)
    assert it_opt < it_fixed


def test_preconditioner_is_symmetric_positive_definite():
    cx, cy, diag, valid, _ = _system(13, 11, seed=1)
    M = multigrid.Multigrid(cx, cy, diag, valid)
    rng = np.random.default_rng(2)
    u, v = (np.where(valid, rng.normal(size=valid.shape), 0.0) for _ in range(2))
    assert np.vdot(u, M(v)) == pytest.approx(np.vdot(v, M(u)), rel=1e-9)
    assert np.vdot(u, M(u)) > 0 and np.vdot(v, M(v)) > 0


def test_a_one_pixel_strip_still_coarsens_to_a_small_dense_level():
    valid = np.zeros((3, 3002), bool)
    valid[1, 1:-1] = True
    cx = np.where(valid & np.roll(valid, -1, 1), 1.0, 0.0)
    cy = np.zeros_like(cx)
    diag = np.where(valid, 1e-3 + cx + np.roll(cx, 1, 1), 1.0)
    M = multigrid.Multigrid(cx, cy, diag, valid)
    assert M.coarse_factor[0].shape[0] <= 64
    b = np.where(valid, np.sin(np.arange(3002))[None], 0.0)
    x, it = multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-8)
    r = np.zeros_like(b)
    multigrid.residual(cx, cy, diag, b, x, r)
    assert np.linalg.norm(r) <= 1e-8 * np.linalg.norm(b) and it < 100


@pytest.mark.parametrize("shape", [(9, 7), (10, 12), (1, 6), (2, 5)])
def test_fused_smoothing_equals_separate_gauss_seidel_sweeps(shape):
    """The one-pass kernels equal the textbook steps: a red and a black half-sweep from zero, then the
    block sums of the full residual (zero at the black pixels); a prolonged correction, then a black
    and a red half-sweep."""
    cx, cy, diag, valid, b = _system(*shape, seed=5)
    inv = 1.0 / diag
    h, w = diag.shape
    colour = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(int)
    interior = np.zeros((h, w), bool)
    interior[1:-1, 1:-1] = True

    def half_sweep(z, c):
        nb = cx * np.roll(z, -1, 1) + np.roll(cx * z, 1, 1) + cy * np.roll(z, -1, 0) + np.roll(cy * z, 1, 0)
        return np.where(interior & (colour == c), (b + nb) * inv, z)

    z = half_sweep(half_sweep(np.zeros_like(b), 0), 1)
    r = np.zeros_like(b)
    multigrid.residual(cx, cy, diag, b, z, r)
    assert np.abs(r[interior & (colour == 1)]).max() < 1e-9 * np.abs(b).max()
    expected = np.zeros(((h - 1) // 2 + 2, (w - 1) // 2 + 2))
    for y, x in zip(*np.nonzero(valid), strict=True):
        expected[(y + 1) // 2, (x + 1) // 2] += r[y, x]
    got_z = np.full_like(b, 7.0)  # stale values: the kernel must not read them
    got_z[~interior] = 0.0
    got = np.zeros_like(expected)
    multigrid._presmooth_restrict(cx, cy, diag, inv, b, got_z, got)
    np.testing.assert_allclose(got_z, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())

    # the parallel variant (one colour at a time, rows on all cores) computes the same numbers
    par_z, par = np.full_like(b, 7.0), np.full_like(expected, 3.0)
    par_z[~interior] = 0.0
    multigrid._presmooth_restrict_parallel(cx, cy, diag, inv, b, par_z, par)
    assert np.array_equal(par_z, got_z) and np.array_equal(par, got)

    zc = np.random.default_rng(6).normal(size=expected.shape)
    blocks = zc[(np.arange(h) + 1) // 2][:, (np.arange(w) + 1) // 2]  # each pixel's coarse value
    corrected = np.where(valid, z + 1.8 * blocks, z)
    want = half_sweep(half_sweep(corrected, 1), 0)
    par_z = z.copy()
    multigrid._prolong_postsmooth(cx, cy, inv, b, z, zc, 1.8)
    np.testing.assert_allclose(z, want, rtol=1e-12, atol=1e-12)
    multigrid._prolong_postsmooth_parallel(cx, cy, inv, b, par_z, zc, 1.8)
    assert np.array_equal(par_z, z)


def test_solves_do_not_depend_on_the_number_of_threads():
    """Reductions add per-row sums in order, so one thread and several give the same iterates."""
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    if threads < 2:
        pytest.skip("one core: nothing to compare")
    cx, cy, diag, valid, b = _system(150, 140, seed=7)  # above PARALLEL_PIXELS: parallel sweeps too
    assert diag.size >= multigrid.PARALLEL_PIXELS
    results = []
    for n in (1, threads):
        numba.set_num_threads(n)
        try:
            results.append(multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-8, step=None))
        finally:
            numba.set_num_threads(threads)
    assert results[0][1] == results[1][1]
    assert np.array_equal(results[0][0], results[1][0])


def test_coarsest_solve_handles_a_piece_that_floats_free():
    """A piece with no prior (lam = 0) cut off by zero conductances makes the coarsest system
    singular; its Cholesky factor drops that part, and the solve still satisfies A z = b for a
    right-hand side in the range (as a pseudo-inverse would), through a symmetric operator."""
    cx, cy, diag, valid, _ = _system(6, 5, seed=8)
    piece = np.zeros_like(valid)
    piece[1:3, 1:3] = True  # a 2 x 2 corner (one pixel of it is in the system's hole)
    piece &= valid
    cx[1:3, 2] = 0.0  # cut it off: right side ...
    cy[2, 1:3] = 0.0  # ... and below
    lam = np.where(valid & ~piece, 1e-2, 0.0)
    diag = np.where(valid, lam + cx + np.roll(cx, 1, 1) + cy + np.roll(cy, 1, 0), 1.0)
    A = multigrid._dense(cx, cy, diag)
    assert np.linalg.matrix_rank(A) == A.shape[0] - 1
    L, keep = multigrid._cholesky(A)
    assert keep.sum() == A.shape[0] - 1
    rng = np.random.default_rng(9)
    b = np.where(valid, rng.normal(size=valid.shape), 0.0)
    b[piece] -= b[piece].mean()  # in the range: the free piece's load sums to zero
    z = np.zeros_like(b)
    multigrid._dense_solve(L, keep, b, z)
    np.testing.assert_allclose(A @ z[1:-1, 1:-1].ravel(), b[1:-1, 1:-1].ravel(), atol=1e-9)
    u, v = (np.where(valid, rng.normal(size=valid.shape), 0.0) for _ in range(2))
    Mu, Mv = np.zeros_like(u), np.zeros_like(v)
    multigrid._dense_solve(L, keep, u, Mu)
    multigrid._dense_solve(L, keep, v, Mv)
    assert np.vdot(u, Mv) == pytest.approx(np.vdot(v, Mu), rel=1e-9)


def test_work_arrays_kept_across_solves_give_the_same_results():
    """Reused work arrays (dirty from an earlier solve on the same grid) change nothing."""
    work: dict = {}
    for seed, step in ((10, None), (11, multigrid.OVER_CORRECTION), (12, None)):
        cx, cy, diag, valid, b = _system(40, 30, seed=seed)
        fresh = multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-8, step=step)
        reused = multigrid.solve(cx, cy, diag, valid, b, np.zeros_like(b), rtol=1e-8, step=step, work=work)
        assert fresh[1] == reused[1] and np.array_equal(fresh[0], reused[0])
    assert work  # something was kept for the next solve; what exactly is the solver's business


def test_small_grids_use_fewer_threads_and_the_count_is_restored():
    before = numba.get_num_threads()
    for pixels in (100, 10_000, 20_000, 10**7):
        with threads.threads_for(pixels):
            assert numba.get_num_threads() == max(1, min(before, pixels // threads.PIXELS_PER_THREAD))
        assert numba.get_num_threads() == before
    with pytest.raises(RuntimeError), threads.threads_for(10):
        raise RuntimeError("a failing solve")
    assert numba.get_num_threads() == before
