"""Conjugate gradients with a multigrid preconditioner for weighted 5-point Laplacians on image grids.

The systems solved here have the form ``(L + diag(lam)) z = b`` on a pixel grid, where L is the graph
Laplacian with a conductance on every edge between 4-neighbours:

    cx[y, x] >= 0   edge (y, x) - (y, x + 1)      cy[y, x] >= 0   edge (y, x) - (y + 1, x)

and ``diag`` holds the full diagonal (lam plus the incident conductances). Every array is padded by
one pixel on each side (border: not valid, zero conductance), so the kernels need no bounds checks.
Pixels outside ``valid`` are decoupled (zero conductances, diagonal 1, right-hand side 0).

Conductances may jump by orders of magnitude (the bilateral weights of normal integration switch
edges off at depth discontinuities), which defeats plain geometric multigrid; here the coarse levels
are Galerkin products of a 2 x 2 piecewise-constant aggregation, so a switched-off edge stays off on
every level, and each coarse operator is again a 5-point Laplacian (conductances summed across block
borders). One V-cycle (symmetric red-black Gauss-Seidel, an over-corrected or A-norm-optimal
coarse correction, a dense Cholesky solve on the coarsest level) preconditions CG. The kernels are
numba loops over rows, parallel on all cores: on large levels each half-sweep, the restriction and
the prolongation is its own parallel loop; on small ones (below PARALLEL_PIXELS) the pre-smoothing
shares one single-threaded pass with the restriction and the post-smoothing with the prolongation.
Reductions add per-row sums in order, so results do not depend on the number of threads (the
integration's path is sensitive to rounding). Nothing here calls BLAS: an OpenBLAS worker left
spinning after a LAPACK pseudo-inverse or numpy's dot products took the second core of a 2-core
machine, which made the single-threaded kernels 1.6x slower and hid any gain from threads. Two
cores now give about 1.6x (768 x 576 cow: 0.6-0.7 s instead of 1.0-1.1 s). How many threads the
kernels use, and what a forked child does, is :mod:`lotus3d.threads`' policy.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .threads import forked_child, kernel

# Piecewise-constant prolongation underestimates smooth corrections; scaling the coarse correction
# (the preconditioner stays symmetric) cut CG iterations about 3x on normal-integration systems
# with smooth conductances. Where conductances are rough (noisy normals: bilateral weights near 0
# scattered everywhere) it overshoots; there the step that minimises the error's A-norm along the
# coarse correction (a nonlinear preconditioner, hence flexible CG) needed 2-3x fewer iterations.
OVER_CORRECTION = 1.8
# Levels with at least this many pixels smooth, restrict and prolong on all cores, one colour at a
# time (each a parallel loop over rows); smaller ones in one fused pass on one core, where starting
# threads would cost more than the sweep. Both orders compute the same numbers.
PARALLEL_PIXELS = 16384


@njit(cache=True, inline="always")
def _neighbours(cx, cy, z, y, x):
    """Sum over the four edges of pixel (y, x) of conductance * z at the other end."""
    return cx[y, x] * z[y, x + 1] + cx[y, x - 1] * z[y, x - 1] + cy[y, x] * z[y + 1, x] + cy[y - 1, x] * z[y - 1, x]


@njit(cache=True, parallel=True)
def residual(cx, cy, diag, b, z, out):
    """out = b - A z on the interior (padded (H+2, W+2) arrays)."""
    h, w = diag.shape
    for y in prange(1, h - 1):
        for x in range(1, w - 1):
            out[y, x] = b[y, x] - diag[y, x] * z[y, x] + _neighbours(cx, cy, z, y, x)


# Reductions sum each row on its own and then the row sums in order, so that the result does not
# depend on how many threads share the rows.
@njit(cache=True)
def ordered_sum(values):
    """Sum of a 1-D array, left to right (``values.sum()`` in a parallel kernel becomes a parallel
    reduction, whose rounding depends on the number of threads)."""
    total = 0.0
    for v in values:
        total += v
    return total


@njit(cache=True, parallel=True)
def _matvec_dot(cx, cy, diag, p, out):
    """out = A p on the interior; returns p . A p."""
    h, w = diag.shape
    rows = np.zeros(h)
    for y in prange(1, h - 1):
        s = 0.0
        for x in range(1, w - 1):
            v = diag[y, x] * p[y, x] - _neighbours(cx, cy, p, y, x)
            out[y, x] = v
            s += v * p[y, x]
        rows[y] = s
    return ordered_sum(rows)


@njit(cache=True, parallel=True)
def _optimal_step(cx, cy, diag, zc, bc):
    """The coarse correction's A-norm-optimal scale (e.r) / (e.A e) for e = P zc, from the coarse
    level alone: e.r = zc.bc (bc: the restricted residual) and, the coarse operator being the Galerkin
    product, e.A e = zc.(P^T A P) zc. 1 when e.A e is not positive."""
    h, w = diag.shape
    num, den = np.zeros(h), np.zeros(h)
    for y in prange(1, h - 1):
        s = q = 0.0
        for x in range(1, w - 1):
            s += zc[y, x] * bc[y, x]
            q += zc[y, x] * (diag[y, x] * zc[y, x] - _neighbours(cx, cy, zc, y, x))
        num[y], den[y] = s, q
    eae = ordered_sum(den)
    return ordered_sum(num) / eae if eae > 0 else 1.0


_optimal_step_serial = njit(cache=True)(_optimal_step.py_func)  # small levels, forked children


@njit(cache=True, parallel=True)
def dot(a, b):
    """Sum of a * b over two (H, W) arrays."""
    rows = np.zeros(a.shape[0])
    for y in prange(a.shape[0]):
        s = 0.0
        for x in range(a.shape[1]):
            s += a[y, x] * b[y, x]
        rows[y] = s
    return ordered_sum(rows)


# The row kernels below that touch one colour compute their formula for the whole row into a scratch
# row t first (a unit-stride loop, which the compiler vectorises) and then keep the colour's pixels:
# twice the arithmetic, yet 1.2-1.5x faster than a stride-2 loop, with the same numbers.
@njit(cache=True, inline="always")
def _relax_row(cx, cy, inv_diag, b, z, y, colour, t):
    """Gauss-Seidel update of row y's pixels with (x + y) % 2 == colour (mutually independent: each
    reads only the other colour); t: scratch of length W + 2."""
    w = z.shape[1]
    for x in range(1, w - 1):
        t[x] = (b[y, x] + _neighbours(cx, cy, z, y, x)) * inv_diag[y, x]
    for x in range(1 + (y + 1 + colour) % 2, w - 1, 2):
        z[y, x] = t[x]


@njit(cache=True, inline="always")
def _prolong_row(zc, z, y, scale, t):
    """Row y of z += scale * P zc (piecewise constant: each pixel adds its block's coarse value; at
    pixels outside the mask this is harmless, the smoothing that follows overwrites them with 0);
    t: scratch of length W + 2."""
    yc = (y + 1) // 2
    w = z.shape[1]
    for x in range(1, w - 1):
        t[x] = scale * zc[yc, (x + 1) >> 1]
    for x in range(1, w - 1):
        z[y, x] += t[x]


@njit(cache=True, inline="always")
def _red_residual_row(cx, cy, diag, b, z, y, out, t):
    """Add row y's residuals b - A z at its red pixels ((x + y) % 2 == 0) to their coarse blocks; t:
    scratch of length W + 2."""
    w = z.shape[1]
    for x in range(1, w - 1):
        t[x] = b[y, x] - diag[y, x] * z[y, x] + _neighbours(cx, cy, z, y, x)
    yc = (y + 1) // 2
    for x in range(1 + (y + 1) % 2, w - 1, 2):
        out[yc, (x + 1) // 2] += t[x]


@njit(cache=True)
def _presmooth_restrict(cx, cy, diag, inv_diag, b, z, out):
    """Pre-smoothing from z = 0 and restriction in one pass over the rows.

    One Gauss-Seidel sweep, red pixels then black (from zero, a red pixel's neighbours are all 0, so
    z = b / diag there; black pixels are overwritten, so z needs no clearing), then block sums of the
    residual into ``out``. The residual is zero at the black pixels (updated last, from their final
    neighbours), so only the red ones are summed; each trails the updates by the rows it reads."""
    out[:] = 0.0
    h, w = diag.shape
    t = np.empty(w)
    for y in range(1, h - 1):
        for x in range(1, w - 1):  # red (the black pixels are overwritten before anything reads them)
            z[y, x] = b[y, x] * inv_diag[y, x]
        if y > 1:
            _relax_row(cx, cy, inv_diag, b, z, y - 1, 1, t)
        if y > 2:
            _red_residual_row(cx, cy, diag, b, z, y - 2, out, t)
    _relax_row(cx, cy, inv_diag, b, z, h - 2, 1, t)
    for y in range(max(1, h - 3), h - 1):
        _red_residual_row(cx, cy, diag, b, z, y, out, t)


@njit(cache=True)
def _prolong_postsmooth(cx, cy, inv_diag, b, z, zc, scale):
    """z += scale * P zc (piecewise constant), then one Gauss-Seidel sweep, black pixels
    then red (the reverse of the pre-smoothing, so the V-cycle is symmetric), in one pass: row y + 1
    is corrected before row y's black pixels and row y - 1's red pixels are updated."""
    h, w = z.shape
    t = np.empty(w)
    for y in range(0, h - 1):
        if y + 1 < h - 1:
            _prolong_row(zc, z, y + 1, scale, t)
        if y >= 1:
            _relax_row(cx, cy, inv_diag, b, z, y, 1, t)
        if y >= 2:
            _relax_row(cx, cy, inv_diag, b, z, y - 1, 0, t)
    _relax_row(cx, cy, inv_diag, b, z, h - 2, 0, t)


@njit(cache=True, parallel=True)
def _presmooth_restrict_parallel(cx, cy, diag, inv_diag, b, z, out):
    """:func:`_presmooth_restrict` one colour at a time, each a parallel loop over rows (each row
    with its own scratch)."""
    h, w = diag.shape
    for y in prange(1, h - 1):
        for x in range(1, w - 1):  # red; black is overwritten next
            z[y, x] = b[y, x] * inv_diag[y, x]
    for y in prange(1, h - 1):
        _relax_row(cx, cy, inv_diag, b, z, y, 1, np.empty(w))
    for yc in prange(out.shape[0]):  # coarse row yc gathers fine rows 2 yc - 1 and 2 yc
        out[yc, :] = 0.0
        t = np.empty(w)
        for y in range(max(1, 2 * yc - 1), min(2 * yc + 1, h - 1)):
            _red_residual_row(cx, cy, diag, b, z, y, out, t)


@njit(cache=True, parallel=True)
def _prolong_postsmooth_parallel(cx, cy, inv_diag, b, z, zc, scale):
    """:func:`_prolong_postsmooth` one colour at a time, each a parallel loop over rows (each row
    with its own scratch)."""
    h, w = z.shape
    for y in prange(1, h - 1):
        _prolong_row(zc, z, y, scale, np.empty(w))
    for y in prange(1, h - 1):
        _relax_row(cx, cy, inv_diag, b, z, y, 1, np.empty(w))
    for y in prange(1, h - 1):
        _relax_row(cx, cy, inv_diag, b, z, y, 0, np.empty(w))


def coarse_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """Padded shape of the level below a padded (H+2, W+2) grid: (ceil(H/2) + 2, ceil(W/2) + 2)."""
    return (shape[0] - 1) // 2 + 2, (shape[1] - 1) // 2 + 2


@njit(cache=True, parallel=True)
def coarsen(cx, cy, diag, valid, cxc, cyc, dc, vc):
    """Galerkin system P^T A P of 2 x 2 piecewise-constant aggregation of the valid pixels, into
    (cxc, cyc, dc, vc) of :func:`coarse_shape` (allocated by the caller, so that numpy sees them and
    a hierarchy can reuse them; every entry is overwritten).

    Fine interior pixel (y, x) (1-based) joins coarse pixel ((y + 1) // 2, (x + 1) // 2); empty blocks
    are decoupled."""
    hc, wc = cxc.shape
    for i in range(max(hc, wc)):  # the padding, in a plain loop (slice assignments here would each
        for yc, xc in ((0, i), (hc - 1, i), (i, 0), (i, wc - 1)):  # become a parallel loop of their own)
            if yc < hc and xc < wc:
                cxc[yc, xc] = cyc[yc, xc] = 0.0
                dc[yc, xc] = 1.0
                vc[yc, xc] = False
    for yc in prange(1, hc - 1):  # block (yc, xc) holds fine rows y0, y0 + 1 and columns x0, x0 + 1
        y0 = 2 * yc - 1  # a block at the last row or column may hang into the padding (not valid)
        for xc in range(1, wc - 1):
            x0 = 2 * xc - 1
            # added up in the order of the fine pixels; an edge inside the block cancels (-2 c), one
            # across its right or lower border is summed into the coarse conductance
            d = ex = ey = 0.0
            any_valid = False
            if valid[y0, x0]:
                any_valid = True
                d += diag[y0, x0]
                d -= 2.0 * cx[y0, x0]
                d -= 2.0 * cy[y0, x0]
            if valid[y0, x0 + 1]:
                any_valid = True
                d += diag[y0, x0 + 1]
                ex += cx[y0, x0 + 1]
                d -= 2.0 * cy[y0, x0 + 1]
            if valid[y0 + 1, x0]:
                any_valid = True
                d += diag[y0 + 1, x0]
                d -= 2.0 * cx[y0 + 1, x0]
                ey += cy[y0 + 1, x0]
            if valid[y0 + 1, x0 + 1]:
                any_valid = True
                d += diag[y0 + 1, x0 + 1]
                ex += cx[y0 + 1, x0 + 1]
                ey += cy[y0 + 1, x0 + 1]
            cxc[yc, xc] = ex
            cyc[yc, xc] = ey
            dc[yc, xc] = d if any_valid else 1.0
            vc[yc, xc] = any_valid


@njit(cache=True, parallel=True)
def _direction(p, z, beta):
    """p = z + beta p."""
    h, w = p.shape
    for y in prange(1, h - 1):
        for x in range(1, w - 1):
            p[y, x] = z[y, x] + beta * p[y, x]


@njit(cache=True, parallel=True)
def _cg_step(x, r, p, Ap, alpha):
    """x += alpha p, r -= alpha A p; returns |r|^2."""
    h, w = x.shape
    rows = np.zeros(h)
    for y in prange(1, h - 1):
        s = 0.0
        for i in range(1, w - 1):
            x[y, i] += alpha * p[y, i]
            r[y, i] -= alpha * Ap[y, i]
            s += r[y, i] * r[y, i]
        rows[y] = s
    return ordered_sum(rows)


@njit(cache=True)
def _cholesky(A, rcond=1e-12):
    """(L, keep) for a small symmetric positive semi-definite A: L L^T = A where keep is 1. A pivot
    below rcond times its diagonal belongs to a part that floats free (a piece with no prior cut off
    by zero conductances); its column is dropped (keep 0, unit diagonal), so that solving with the
    factor gives 0 there, as a pseudo-inverse would."""
    n = A.shape[0]
    L = np.zeros_like(A)
    keep = np.ones(n)
    for j in range(n):
        d = A[j, j]
        for k in range(j):
            d -= L[j, k] * L[j, k]
        if not d > rcond * A[j, j]:
            L[j, j] = 1.0
            keep[j] = 0.0
            continue
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, n):
            t = A[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / L[j, j]
    return L, keep


@njit(cache=True)
def _dense_solve(L, keep, b, z):
    """z = L^-T diag(keep) L^-1 b on the interior of padded arrays (symmetric; see _cholesky)."""
    h, w = b.shape[0] - 2, b.shape[1] - 2
    n = h * w
    y = np.empty(n)
    for i in range(n):
        t = b[1 + i // w, 1 + i % w]
        for k in range(i):
            t -= L[i, k] * y[k]
        y[i] = keep[i] * t / L[i, i]
    for i in range(n - 1, -1, -1):
        t = y[i]
        for k in range(i + 1, n):
            t -= L[k, i] * y[k]
        y[i] = t / L[i, i]
        z[1 + i // w, 1 + i % w] = y[i]


@njit(cache=True)
def _dense(cx, cy, diag):
    """The interior system of padded (H+2, W+2) arrays as a dense (H W, H W) matrix (row-major
    pixels)."""
    h, w = diag.shape[0] - 2, diag.shape[1] - 2
    A = np.zeros((h * w, h * w))
    for y in range(h):
        for x in range(w):
            i = y * w + x
            A[i, i] = diag[y + 1, x + 1]
            if x + 1 < w:
                A[i, i + 1] = A[i + 1, i] = -cx[y + 1, x + 1]
            if y + 1 < h:
                A[i, i + w] = A[i + w, i] = -cy[y + 1, x + 1]
    return A


def _buffer(work: dict, key, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """work[key] if it has this shape, else a new zero array stored there. The kernels write only the
    interior of the arrays they fill (or all of them), so a reused one keeps its zero padding."""
    a = work.get(key)
    if a is None or a.shape != shape:
        a = work[key] = np.zeros(shape, dtype)
    return a


def _hierarchy_arrays(work: dict, shape: tuple[int, int], coarse_size: int):
    """(levels, z, rhs) for a hierarchy on a padded grid of ``shape``, kept in ``work`` for the next
    hierarchy on that grid: per level (cx, cy, diag, valid, inv_diag) (level 0: only inv_diag, the
    others are the caller's), and the cycles' work arrays z and rhs (None on level 0, where the
    caller's arrays serve)."""
    key = ("hierarchy", shape, coarse_size)
    if key not in work:
        shapes = [shape]
        while (shapes[-1][0] - 2) * (shapes[-1][1] - 2) > coarse_size:  # halves every dimension above 1
            shapes.append(coarse_shape(shapes[-1]))
        levels = [(None, None, None, None, np.zeros(shape))]
        levels += [(*(np.zeros(s) for _ in range(3)), np.zeros(s, bool), np.zeros(s)) for s in shapes[1:]]
        z, rhs = ([None, *(np.zeros(s) for s in shapes[1:])] for _ in range(2))
        work[key] = levels, z, rhs
    return work[key]


class Multigrid:
    """V-cycle preconditioner for the padded system (cx, cy, diag, valid); built in O(H W).

    ``step``: scale of the coarse corrections (a fixed number keeps the preconditioner linear and
    symmetric) or None for the A-norm-optimal step (nonlinear). ``coarse_size``: at most this many
    pixels on the coarsest level, solved densely (a Cholesky factor that drops the parts that float
    free, as a pseudo-inverse would)."""

    def __init__(
        self,
        cx,
        cy,
        diag,
        valid,
        step: float | None = OVER_CORRECTION,
        coarse_size: int = 64,
        work: dict | None = None,
    ):
        self.step = step
        work = {} if work is None else work
        # the kernels for this process, chosen once here rather than on every cycle (see kernel)
        self.threads = not forked_child()
        levels, z, self.rhs = _hierarchy_arrays(work, diag.shape, coarse_size)
        self.z = list(z)  # z[0] becomes each call's output
        coarsen_ = kernel(coarsen)
        self.levels = [(cx, cy, diag, valid, np.divide(1.0, diag, out=levels[0][4]))]
        for cxc, cyc, dc, vc, inv in levels[1:]:
            coarsen_(cx, cy, diag, valid, cxc, cyc, dc, vc)
            cx, cy, diag, valid = cxc, cyc, dc, vc
            self.levels.append((cx, cy, diag, valid, np.divide(1.0, diag, out=inv)))
        # a Cholesky factor in numba rather than a pseudo-inverse through LAPACK: 4x faster here, and
        # no BLAS thread left spinning on a core the kernels need
        self.coarse_factor = _cholesky(_dense(cx, cy, diag))

    def __call__(self, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """M b, into ``out`` when given (an array of the finest level's (H+2, W+2) shape)."""
        self.z[0] = np.zeros_like(b) if out is None else out
        return self._cycle(0, b)

    def _cycle(self, level: int, b: np.ndarray) -> np.ndarray:
        z = self.z[level]
        if level == len(self.levels) - 1:
            _dense_solve(*self.coarse_factor, b, z)
            return z
        cx, cy, diag, _, inv = self.levels[level]
        bc = self.rhs[level + 1]
        parallel = self.threads and diag.size >= PARALLEL_PIXELS
        (_presmooth_restrict_parallel if parallel else _presmooth_restrict)(cx, cy, diag, inv, b, z, bc)
        zc = self._cycle(level + 1, bc)
        step = self.step
        if step is None:
            cxc, cyc, dc = self.levels[level + 1][:3]
            step = (_optimal_step if parallel else _optimal_step_serial)(cxc, cyc, dc, zc, bc)
        (_prolong_postsmooth_parallel if parallel else _prolong_postsmooth)(cx, cy, inv, b, z, zc, step)
        return z


def solve(
    cx,
    cy,
    diag,
    valid,
    b,
    x0,
    rtol: float = 1e-3,
    maxiter: int = 500,
    precondition: str = "multigrid",
    step: float | None = OVER_CORRECTION,
    work: dict | None = None,
):
    """Preconditioned CG on padded (H+2, W+2) arrays, started from ``x0``; stops once
    ||b - A x|| <= rtol ||b|| (as scipy's ``cg``). ``precondition``: "multigrid" (``step``: see
    :class:`Multigrid`; flexible CG when it is None) or "jacobi". ``work``: a dict kept across the
    solves of one grid, so that their work arrays are allocated once. Returns (x, iterations)."""
    work = {} if work is None else work
    flexible = precondition == "multigrid" and step is None
    if precondition == "multigrid":
        M = Multigrid(cx, cy, diag, valid, step, work=work)
    else:

        def M(r, out):
            np.divide(r, diag, out=out)
            return out

    x = x0.copy()
    r, p, Ap, z, z_old = (_buffer(work, key, b.shape) for key in ("r", "p", "Ap", "z", "z_old"))
    dot_, cg_step, matvec_dot, direction = (kernel(f) for f in (dot, _cg_step, _matvec_dot, _direction))
    kernel(residual)(cx, cy, diag, b, x, r)
    stop2 = rtol**2 * dot_(b, b)
    if dot_(r, r) <= stop2:
        return x, 0
    M(r, z)
    p[...] = z
    rz = dot_(r, z)
    for it in range(1, maxiter + 1):
        if cg_step(x, r, p, Ap, rz / matvec_dot(cx, cy, diag, p, Ap)) <= stop2:
            return x, it
        z_old, z = z, z_old
        M(r, z)
        rz, rz_old = dot_(r, z), rz
        beta = (rz - dot_(r, z_old)) / rz_old if flexible else rz / rz_old  # Polak-Ribiere if flexible
        direction(p, z, beta)
    return x, maxiter
