"""Fused CPU kernel for one batch gradient (numba), the same math as the torch path.

On CPU, the torch path spends its time in ~40 small passes over (B, k+S, 2) tensors and
in ``index_add_``; this kernel computes each head's forces in registers, in parallel
over heads, then scatters them in parallel too, each thread owning a block of rows and
visiting the forces in serial order (no write conflicts, the same sum for any thread count,
equal to the torch path's batch gradient up to float rounding). One step
(:func:`batch_forces`, used when cell means are refreshed every step) takes its heads and
noise from torch's generator; a whole epoch (:func:`fused_epoch`, :func:`fused_edge_epoch`)
draws them itself from a counter-based generator (:func:`_draw`), so the compiled epoch and
the torch loop draw from the same distributions but not the same random stream.

Force on head i from another point o (positive, noise sample or cell mean):
``dL/dy_i += 2 (dL/dq_io) (dq/dd^2)(y_i - y_o)``, and the opposite on o (not on means).
``loss_kind``: 0 InfoNCE (``alpha`` = 4^-s), 1 binary NCE with ``nu`` (Neg-t-SNE, NCE),
2 UMAP cross-entropy; ``kernel_kind``: 0 Cauchy, 1 UMAP's 1/(1 + a d^{2b}).
"""

from __future__ import annotations

import numba
import numpy as np

_EPS = 1e-10


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _kernel(d2, kernel_kind, a, b):
    if kernel_kind == 0:
        return 1.0 / (1.0 + d2)
    return 1.0 / (1.0 + a * max(d2, 0.0) ** b)


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _kernel_grad(d2, q, kernel_kind, a, b):
    if kernel_kind == 0:
        return -q * q
    return -a * b * max(d2, 1e-12) ** (b - 1.0) * q * q


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _noise_term(q, c, loss_kind, alpha, inv_sum, nu, log_nu, with_value):
    """(dL/dq, loss, dL/dlog(nu)) of one noise column of weight c (a sample or a cell mean)."""
    if loss_kind == 0:  # InfoNCE: the column only enters the heads' normalisers
        return alpha * c * inv_sum, 0.0, 0.0
    if loss_kind == 1:  # binary NCE
        value = c * (np.log(q + nu) - log_nu) if with_value else 0.0
        return c / (q + nu), value, c * (nu / (q + nu) - 1.0)
    one_minus_q = max(1.0 - q, 1e-4)  # UMAP
    value = -c * np.log(one_minus_q) if with_value else 0.0
    return c / one_minus_q, value, 0.0


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _noise_kernels(yi0, yi1, yn, qn, kernel_kind, a, b):
    """q(y_i, y_m) of one head against its group's noise positions ``yn`` (2, S) into ``qn``;
    returns their sum. The Cauchy kernel gets a float32 loop without branches over
    coordinate rows (structure of arrays), which LLVM vectorizes; the general loop keeps the
    kernel choice inside."""
    total = np.float32(0.0)
    xs, ys = yn[0], yn[1]
    if kernel_kind == 0:
        one = np.float32(1.0)
        for s in range(qn.shape[0]):
            dx, dy = yi0 - xs[s], yi1 - ys[s]
            q = one / (one + dx * dx + dy * dy)
            qn[s] = q
            total += q
    else:
        for s in range(qn.shape[0]):
            dx, dy = yi0 - xs[s], yi1 - ys[s]
            qn[s] = _kernel(dx * dx + dy * dy, kernel_kind, a, b)
            total += qn[s]
    return total


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _infonce_cauchy_noise_forces(yi0, yi1, yn, qn, fn, w0):
    """InfoNCE under the Cauchy kernel: every noise column has dL/dq = alpha c inv_sum and
    dq/dd^2 = -q^2, so its force weight is w0 q^2 with w0 = -2 alpha c inv_sum. Adds each
    force to ``fn`` (2, S) and returns their sum (the head's share): the same as the general
    loop, vectorized."""
    w0 = np.float32(w0)
    xs, ys, gx, gy = yn[0], yn[1], fn[0], fn[1]
    fx, fy = np.float32(0.0), np.float32(0.0)
    for s in range(qn.shape[0]):
        dx, dy = yi0 - xs[s], yi1 - ys[s]
        w = w0 * qn[s] * qn[s]
        gx[s] += w * dx
        gy[s] += w * dy
        fx += w * dx
        fy += w * dy
    return fx, fy


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _infonce_cauchy_positive_forces(yi0, yi1, fp, p, z, rho, alpha):
    """InfoNCE under the Cauchy kernel on a head's K positives, whose positions ``fp`` (2, K)
    are overwritten by their forces: dL/dq_j = -rho p_j / q_j + alpha p_j / (q_j + z) and
    dq/dd^2 = -q^2. Returns the head's share (fx, fy) and inv_sum = sum_j p_j / (q_j + z).
    Without branches, so LLVM vectorizes over the K positives (the general loop does not)."""
    one, eps, z = np.float32(1.0), np.float32(_EPS), np.float32(z)
    rho, alpha = np.float32(rho), np.float32(alpha)
    xs, ys = fp[0], fp[1]
    fx, fy, inv_sum = np.float32(0.0), np.float32(0.0), np.float32(0.0)
    for j in range(p.shape[0]):
        dx, dy = yi0 - xs[j], yi1 - ys[j]
        q = one / (one + dx * dx + dy * dy)
        inv = p[j] / (q + z)
        inv_sum += inv
        w = np.float32(2.0) * (rho * p[j] / (q + eps) - alpha * inv) * q * q
        xs[j], ys[j] = w * dx, w * dy
        fx += w * dx
        fy += w * dy
    return fx, fy, inv_sum


@numba.njit(cache=True, error_model="numpy")
def workspace(B, K, S, G=1):
    """Scratch arrays of :func:`batch_forces` for batches of up to B heads in groups of G:
    the positives' positions, then forces (B, 2, K), the noise points' positions and summed forces
    (ceil(B/G), 2, S) each, and one head's noise kernels per group (ceil(B/G), S). The noise
    arrays hold x and y in separate rows (structure of arrays): interleaved (S, 2) rows kept
    LLVM from vectorizing the noise loops, 7x slower. Allocated once, not every step: fresh
    ones cost page faults that, at 10^5 heads a step, took 40% of the time."""
    Bg = -(-B // G)
    return (np.empty((B, 2, K), dtype=np.float32), np.empty((Bg, 2, S), dtype=np.float32),
            np.empty((Bg, 2, S), dtype=np.float32), np.empty((Bg, S), dtype=np.float32))


def _batch_forces(Y, heads, pos, p, noise, c_noise, mu, c_mu, exclude_cell, rho,
                 loss_kind, kernel_kind, alpha, nu, a, b, grad, with_value, n_threads, push_noise, work):
    """Add the batch gradient to ``grad`` (n, 2); return per-head losses (when
    ``with_value``; zeros otherwise, saving two logs per pair) and dL/dlog(nu).

    ``noise`` (ceil(B/G), S): heads ``gG .. gG + G - 1`` share the draw ``noise[g]`` (each
    head's estimate of the noise sum stays unbiased; the group's forces on a noise point are summed
    before they are scattered). ``push_noise=False`` leaves the noise points' own forces
    out (umap-learn's sampler); ``work`` is a :func:`workspace` for at least this batch."""
    B, K = pos.shape
    Bg, S = noise.shape
    G = -(-B // Bg)
    C = mu.shape[0]
    f_head = np.zeros((B, 2), dtype=np.float32)
    f_pos, y_noise, f_noise, q_noise = work[0][:B], work[1][:Bg], work[2][:Bg], work[3][:Bg]
    value = np.zeros(B, dtype=np.float64)
    d_lognu = np.zeros(B, dtype=np.float64)
    log_nu = np.log(nu) if nu > 0 else 0.0
    for grp in numba.prange(Bg):
        yn, fn, qn = y_noise[grp], f_noise[grp], q_noise[grp]
        for s in range(S):
            m = noise[grp, s]
            yn[0, s], yn[1, s] = Y[m, 0], Y[m, 1]
            fn[0, s], fn[1, s] = 0.0, 0.0
        for h in range(grp * G, min(grp * G + G, B)):
            i = heads[h]
            yi0, yi1 = Y[i, 0], Y[i, 1]
            z = c_noise[h] * _noise_kernels(yi0, yi1, yn, qn, kernel_kind, a, b)  # + cell means
            for r in range(C):
                if r != exclude_cell[h] and c_mu[r] > 0:
                    dx, dy = yi0 - mu[r, 0], yi1 - mu[r, 1]
                    z += c_mu[r] * _kernel(dx * dx + dy * dy, kernel_kind, a, b)
            hx, hy = 0.0, 0.0
            inv_sum = 0.0  # sum_j p_j / (q_j + z), InfoNCE's noise gradient factor
            fp = f_pos[h]  # the positives' positions, then the forces on them
            for j in range(K):
                o = pos[h, j]
                fp[0, j], fp[1, j] = Y[o, 0], Y[o, 1]
            if with_value:
                for j in range(K):
                    dx, dy = yi0 - fp[0, j], yi1 - fp[1, j]
                    q = _kernel(dx * dx + dy * dy, kernel_kind, a, b)
                    if loss_kind == 0:
                        value[h] += p[j] * (-rho * np.log(q + _EPS) + alpha * np.log(q + z))
                    elif loss_kind == 1:
                        value[h] += rho * p[j] * (np.log(q + nu) - np.log(q + _EPS))
                    else:
                        value[h] += -rho * p[j] * np.log(max(q, 1e-4))
            if loss_kind == 0 and kernel_kind == 0:
                hx, hy, inv_sum = _infonce_cauchy_positive_forces(yi0, yi1, fp, p, z, rho, alpha)
            for j in range(0 if loss_kind == 0 and kernel_kind == 0 else K):
                dx, dy = yi0 - fp[0, j], yi1 - fp[1, j]
                d2 = dx * dx + dy * dy
                q = _kernel(d2, kernel_kind, a, b)
                pj = p[j]
                if loss_kind == 0:
                    inv = pj / (q + z)
                    inv_sum += inv
                    g = -rho * pj / (q + _EPS) + alpha * inv
                elif loss_kind == 1:
                    g = rho * pj * (-1.0 / (q + _EPS) + 1.0 / (q + nu))
                    d_lognu[h] += rho * pj * nu / (q + nu)
                else:
                    g = -rho * pj / max(q, 1e-4)
                w = 2.0 * g * _kernel_grad(d2, q, kernel_kind, a, b)
                fp[0, j], fp[1, j] = w * dx, w * dy
                hx += w * dx
                hy += w * dy
            if loss_kind == 0 and kernel_kind == 0:
                fx, fy = _infonce_cauchy_noise_forces(yi0, yi1, yn, qn, fn,
                                                      -2.0 * alpha * c_noise[h] * inv_sum)
                hx += fx
                hy += fy
            for s in range(0 if loss_kind == 0 and kernel_kind == 0 else S):
                dx, dy = yi0 - yn[0, s], yi1 - yn[1, s]
                d2 = dx * dx + dy * dy
                q = qn[s]
                g, v, dl = _noise_term(q, c_noise[h], loss_kind, alpha, inv_sum, nu, log_nu, with_value)
                value[h] += v
                d_lognu[h] += dl
                w = 2.0 * g * _kernel_grad(d2, q, kernel_kind, a, b)
                fn[0, s] += w * dx
                fn[1, s] += w * dy
                hx += w * dx
                hy += w * dy
            for r in range(C):
                if r != exclude_cell[h] and c_mu[r] > 0:
                    dx, dy = yi0 - mu[r, 0], yi1 - mu[r, 1]
                    d2 = dx * dx + dy * dy
                    q = _kernel(d2, kernel_kind, a, b)
                    g, v, dl = _noise_term(q, c_mu[r], loss_kind, alpha, inv_sum, nu, log_nu, with_value)
                    value[h] += v
                    d_lognu[h] += dl
                    w = 2.0 * g * _kernel_grad(d2, q, kernel_kind, a, b)
                    hx += w * dx
                    hy += w * dy
            f_head[h, 0], f_head[h, 1] = hx, hy
    # scatter, owner-computes: thread t adds only into rows [lo, hi), visiting the forces in
    # the same order as a serial loop would, so the sum is bitwise the same for any thread count
    n = grad.shape[0]
    T = n_threads
    for t in numba.prange(T):
        lo, hi = t * n // T, (t + 1) * n // T
        for h in range(B):
            i = heads[h]
            if lo <= i < hi:
                grad[i, 0] += f_head[h, 0]
                grad[i, 1] += f_head[h, 1]
            for j in range(K):
                o = pos[h, j]
                if lo <= o < hi:
                    grad[o, 0] -= f_pos[h, 0, j]
                    grad[o, 1] -= f_pos[h, 1, j]
        for grp in range(Bg if push_noise else 0):
            for s in range(S):
                m = noise[grp, s]
                if lo <= m < hi:
                    grad[m, 0] -= f_noise[grp, 0, s]
                    grad[m, 1] -= f_noise[grp, 1, s]
    return value, d_lognu


batch_forces = numba.njit(parallel=True, fastmath=True, cache=True, error_model="numpy")(_batch_forces)
#: the same kernel on one thread: small batches, where thread start-up costs more than it saves
batch_forces_serial = numba.njit(fastmath=True, cache=True, error_model="numpy")(_batch_forces)
#: pairs per batch below which the serial kernel is used
PARALLEL_MIN_PAIRS = 100_000


@numba.njit(cache=True, error_model="numpy")
def _forces(args, parallel, n_threads, push_noise, work, learn_nu, lr_nu, log_nu):
    """One step's :func:`batch_forces` (``args`` up to ``with_value``), parallel or serial;
    returns the mean loss per head and log(nu) after NCE's plain SGD step at ``lr_nu``."""
    if parallel:
        value, d_lognu = batch_forces(*args, n_threads, push_noise, work)
    else:
        value, d_lognu = batch_forces_serial(*args, 1, push_noise, work)
    if learn_nu:
        log_nu -= lr_nu * d_lognu.sum()
    return value.sum() / value.shape[0], log_nu


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@numba.njit(inline="always", error_model="numpy")
def _mix(x):
    """splitmix64's finaliser: a well-mixed 64-bit integer from a counter."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@numba.njit(inline="always", error_model="numpy")
def _uniform_int(counter, size):
    """An integer uniform in [0, size) from a counter (53 random bits)."""
    u = np.float64(_mix(counter) >> _S11) * (1.0 / 9007199254740992.0)
    return min(np.int64(u * size), size - 1)


def _draw(heads, noise, c_noise, exclude, dom_lo, dom_n, cell_lo, cell_n, head_cell, exclude_own, pool,
          nbrs, n_local, n_noise, n_total, base):
    """B heads in groups of G = ceil(B / len(noise)) that share one draw of S noise points
    (``noise[g]``) from their noise domain (or, with ``pool``, from the batch's positives, as
    the reference code does).

    A group's first head is uniform over the shard, the others uniform over its cell
    [cell_lo, cell_lo + cell_n), so every head is uniform over the shard; the noise is uniform
    over the first head's domain [dom_lo, dom_lo + dom_n) (the shard, or its cell when other
    cells enter as means). The groups are taken in row order of their first heads (the draws
    are exchangeable, so sorting them changes no distribution): rows are laid out by cell, so a
    step then walks the cells in memory order and a group's heads and their positives share one
    cell's rows, which stay in cache. Counter-based (the random numbers are a function of
    (base, g, slot) only), so the draws are the same for any thread count and can be made in
    parallel.
    """
    B = heads.shape[0]
    Bg, S = noise.shape
    G = -(-B // Bg)
    K = nbrs.shape[1]
    stride = np.uint64(G + S)
    first = np.empty(Bg, dtype=np.int64)
    for grp in numba.prange(Bg):
        first[grp] = _uniform_int(base + np.uint64(grp) * stride, n_local)
    first.sort()
    for grp in numba.prange(Bg):
        counter = base + np.uint64(grp) * stride
        f = first[grp]
        lo, size, dom = cell_lo[f], cell_n[f], dom_n[f]
        for h in range(grp * G, min(grp * G + G, B)):
            i = f if h == grp * G else lo + _uniform_int(counter + np.uint64(h - grp * G), size)
            heads[h] = i
            exclude[h] = head_cell[i] if exclude_own else -1
            # the pool stands for the head's domain as uniform draws would: weight |M| p(m in D) / S,
            # so that pool and cell means together weigh |M| (eq. 4)
            c_noise[h] = n_noise * dom / n_total / S
    for grp in numba.prange(Bg):
        counter = base + np.uint64(grp) * stride + np.uint64(G)
        lo, size = dom_lo[first[grp]], dom_n[first[grp]]
        for s in range(S):
            if pool:
                slot = _uniform_int(counter + np.uint64(s), B * K)
                noise[grp, s] = nbrs[heads[slot // K], slot % K]
            else:
                noise[grp, s] = lo + _uniform_int(counter + np.uint64(s), size)


draw = numba.njit(parallel=True, cache=True, error_model="numpy")(_draw)
draw_serial = numba.njit(cache=True, error_model="numpy")(_draw)


def _sgd_rows(Y, velocity, grad, lr, momentum, clip):
    """Every row's SGD step (torch's momentum rule), the gradient zeroed for the next step."""
    for i in numba.prange(Y.shape[0]):
        for d in range(2):
            g = grad[i, d]
            if clip > 0:
                g = min(max(g, -clip), clip)
            if momentum > 0:
                velocity[i, d] = momentum * velocity[i, d] + g
                g = velocity[i, d]
            Y[i, d] -= lr * g
            grad[i, d] = 0.0


sgd_rows = numba.njit(parallel=True, cache=True, error_model="numpy")(_sgd_rows)
sgd_rows_serial = numba.njit(cache=True, error_model="numpy")(_sgd_rows)


@numba.njit(cache=True, error_model="numpy")
def epoch_workspace(n, B, K, S, G):
    """The arrays :func:`fused_epoch` reuses in every step of every epoch of a fit: the
    gradient (n, 2), zero between steps; the B heads, their (B, K) positives, the ceil(B/G)
    groups' S noise points, the heads' noise weights and excluded cells; and a
    :func:`workspace`. Allocated once per fit: fresh ones every epoch or step (numba's
    ``nbrs[heads]`` allocates) cost their page faults again: 7-25% of an epoch at 10M (README)."""
    Bg = -(-B // G)
    return (np.zeros((n, 2), dtype=np.float32), np.empty(B, dtype=np.int64), np.empty((B, K), dtype=np.int64),
            np.empty((Bg, S), dtype=np.int64), np.empty(B, dtype=np.float32),
            np.full(B, -1, dtype=np.int64), workspace(B, K, S, G))


def _gather_rows(table, rows, out):
    """``out[:] = table[rows]``, into an existing array."""
    for h in numba.prange(rows.shape[0]):
        for j in range(table.shape[1]):
            out[h, j] = table[rows[h], j]


gather_rows = numba.njit(parallel=True, cache=True, error_model="numpy")(_gather_rows)
gather_rows_serial = numba.njit(cache=True, error_model="numpy")(_gather_rows)


@numba.njit(cache=True, error_model="numpy")
def fused_epoch(Y, velocity, nbrs, p, dom_lo, dom_n, cell_lo, cell_n, n_total, n_noise, lrs, momentum, clip,
                mu, c_mu, head_cell, exclude_own, pool, rho, loss_kind, kernel_kind, alpha, log_nu,
                learn_nu, lr_nu, a, b, seed, n_threads, arrays):
    """One epoch of SGD steps, all in compiled code (the CPU fast path).

    Each step draws B heads uniformly, in groups of G from one cell [cell_lo, cell_lo + cell_n),
    and S noise points for each group from its domain [dom_lo, dom_lo + dom_n) (:func:`draw`,
    counter-based from ``seed``, so the result does not depend on the thread count), computes the batch gradient with
    :func:`batch_forces`, clips it, and takes an SGD step with momentum (torch's rule:
    v = momentum v + g; y -= lr v) at ``lrs[step]``. NCE's log(nu) takes plain SGD steps
    at ``lr_nu``. ``arrays``: an :func:`epoch_workspace`, whose shapes give B, G and S.
    Returns the first step's mean loss per head and the final log(nu).
    """
    n_local = Y.shape[0]
    grad, heads, pos, noise, c_noise, exclude, work = arrays
    B, S = heads.shape[0], noise.shape[1]
    first_loss = 0.0
    parallel = B * (nbrs.shape[1] + S + mu.shape[0]) >= PARALLEL_MIN_PAIRS
    for step in range(lrs.shape[0]):
        base = _mix(np.uint64(seed) * np.uint64(1_000_003) + np.uint64(step)) * np.uint64(1 << 20)
        draw_args = (heads, noise, c_noise, exclude, dom_lo, dom_n, cell_lo, cell_n, head_cell,
                     exclude_own, pool, nbrs, n_local, n_noise, n_total, base)
        if parallel:
            draw(*draw_args)
            gather_rows(nbrs, heads, pos)
        else:
            draw_serial(*draw_args)
            gather_rows_serial(nbrs, heads, pos)
        args = (Y, heads, pos, p, noise, c_noise, mu, c_mu, exclude, rho, loss_kind,
                kernel_kind, alpha, np.exp(log_nu), a, b, grad, step == 0)
        value, log_nu = _forces(args, parallel, n_threads, True, work, learn_nu, lr_nu, log_nu)
        first_loss = value if step == 0 else first_loss
        # serial: one parallel region a step (the forces) keeps multi-process runs' thread pools calm
        sgd_rows_serial(Y, velocity, grad, lrs[step], momentum, clip)
    return first_loss, log_nu


def _edge_batch(heads_e, tails_e, take, lo, heads, pos, noise, n, pool, base):
    """The edges ``take[lo:lo + len(heads)]`` as heads and positives, and m negatives per edge
    (counter-based, as :func:`_draw`): uniform over all n points or over the batch's tails."""
    nb, m = noise.shape
    for e in numba.prange(nb):
        heads[e] = heads_e[take[lo + e]]
        pos[e, 0] = tails_e[take[lo + e]]
    for e in numba.prange(nb):
        counter = base + np.uint64(e) * np.uint64(m + 1)
        for s in range(m):
            r = _uniform_int(counter + np.uint64(s + 1), nb if pool else n)
            noise[e, s] = tails_e[take[lo + r]] if pool else r


edge_batch = numba.njit(parallel=True, cache=True, error_model="numpy")(_edge_batch)
edge_batch_serial = numba.njit(cache=True, error_model="numpy")(_edge_batch)




@numba.njit(cache=True, error_model="numpy")
def fused_edge_epoch(Y, velocity, heads_e, tails_e, take, m, B, lrs, momentum, clip, pool,
                     push_noise, rho, loss_kind, kernel_kind, alpha, log_nu, learn_nu, lr_nu,
                     a, b, seed, n_threads):
    """One epoch of edge sampling (:mod:`nomad.edges`) in compiled code.

    Step k takes the edges ``take[kB:(k+1)B]`` (already drawn with probability mu_ij and
    shuffled): each edge ij is a head i with the single positive j of weight 1 and m
    negatives of weight 1 (:func:`_edge_batch`). The batch gradient is :func:`batch_forces`
    with k = 1; the SGD step with momentum follows torch's rule. Without momentum, when a
    batch touches fewer rows than there are, only those rows move (the others have zero
    gradient), so a small step costs O(B m), not O(n). Thread-count independent, like
    :func:`fused_epoch`. Returns the first step's mean loss per edge and the final log(nu).
    """
    n = Y.shape[0]
    grad = np.zeros_like(Y)
    p = np.ones(1, dtype=np.float32)
    c_noise = np.ones(B, dtype=np.float32)
    mu, c_mu = np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.float32)
    exclude = np.full(B, -1, dtype=np.int64)
    work = workspace(B, 1, m, 1)
    first_loss = 0.0
    for step in range(lrs.shape[0]):
        lo, hi = step * B, min((step + 1) * B, take.shape[0])
        nb = hi - lo
        if nb <= 0:
            break
        heads = np.empty(nb, dtype=np.int64)
        pos = np.empty((nb, 1), dtype=np.int64)
        noise = np.empty((nb, m), dtype=np.int64)
        base = _mix(np.uint64(seed) * np.uint64(1_000_003) + np.uint64(step)) * np.uint64(1 << 20)
        parallel = nb * (1 + m) >= PARALLEL_MIN_PAIRS
        if parallel:
            edge_batch(heads_e, tails_e, take, lo, heads, pos, noise, n, pool, base)
        else:
            edge_batch_serial(heads_e, tails_e, take, lo, heads, pos, noise, n, pool, base)
        args = (Y, heads, pos, p, noise, c_noise[:nb], mu, c_mu, exclude[:nb], rho, loss_kind,
                kernel_kind, alpha, np.exp(log_nu), a, b, grad, step == 0)
        value, log_nu = _forces(args, parallel, n_threads, push_noise, work, learn_nu, lr_nu, log_nu)
        first_loss = value if step == 0 else first_loss
        lr = lrs[step]
        if momentum > 0 or nb * (2 + m) >= n:
            if parallel:
                sgd_rows(Y, velocity, grad, lr, momentum, clip)
            else:
                sgd_rows_serial(Y, velocity, grad, lr, momentum, clip)
        else:  # only touched rows have a gradient; each is applied once, then zeroed
            for e in range(nb):
                for which in range(2 + (m if push_noise else 0)):
                    i = heads[e] if which == 0 else pos[e, 0] if which == 1 else noise[e, which - 2]
                    for d in range(2):
                        g = grad[i, d]
                        if clip > 0:
                            g = min(max(g, -clip), clip)
                        Y[i, d] -= lr * g
                        grad[i, d] = 0.0
    return first_loss, log_nu
