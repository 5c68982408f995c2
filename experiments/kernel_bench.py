"""Per-epoch time of the compiled CPU kernels (``nomad/cpu_kernel.py``) on synthetic input.

    python -m experiments.kernel_bench [--n 70000 1000000] [--repeats 2]

One row per n for each loop: ``heads`` (:func:`fused_epoch`, NOMAD's defaults: k = 8, S = 256
noise samples per head, shared by groups of ``--noise-group`` heads, n/10 heads a step,
momentum 0.8, so 10 steps an epoch) and ``edges``
(:func:`fused_edge_epoch`, cne's defaults: 15 n edges an epoch in batches of 2^15, m = 5). The
positions, neighbours and edges are random (``--layout random``: a worst case for cache
locality), or laid out as the engine lays them out (``--layout cells``: rows sorted by K-means
cell of 8,192 points, each row's neighbours in its own cell), where the heads loop also runs with
NOMAD's ``approximate=others`` (noise from the head's own cell, every other cell as its mean). The
first call compiles and is not timed. Prints a markdown table of the best of ``repeats`` epochs.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from nomad.cpu_kernel import epoch_workspace, fused_edge_epoch, fused_epoch
from nomad.optimize import group_size


def _best(call, repeats: int) -> float:
    call()  # compilation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return min(times)


CELL_SIZE = 8192  # the engine's default points per K-means cell


def heads_epoch(n: int, repeats: int, k: int = 8, S: int = 256, G: int = 1, layout: str = "random",
                approximate: str = "remote", group_domain: str = "cell") -> float:
    rng = np.random.default_rng(0)
    Y = (rng.standard_normal((n, 2)) * 10).astype(np.float32)
    p = np.full(k, 1 / k, np.float32)
    C = max(1, n // CELL_SIZE) if layout == "cells" else 1
    lo = np.arange(C + 1) * n // C  # cell c holds rows lo[c] .. lo[c + 1] - 1
    cell = np.repeat(np.arange(C), np.diff(lo))
    size = np.diff(lo)[cell]
    nbrs = lo[cell, None] + (rng.random((n, k)) * size[:, None]).astype(np.int64)
    mu, c_mu = np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    dom_lo, dom_n = np.zeros(n, np.int64), np.full(n, n, np.int64)
    if approximate == "others":
        mu = (rng.standard_normal((C, 2)) * 10).astype(np.float32)
        c_mu = (10_000.0 * np.diff(lo) / n).astype(np.float32)
        dom_lo, dom_n = lo[cell], size
    # a group's heads from its first head's cell (the engine), or from all rows (before 2026-12-04)
    group_lo, group_n = (lo[cell], size) if group_domain == "cell" else (np.zeros(n, np.int64), np.full(n, n))
    B = n // 10
    args = (Y, np.zeros_like(Y), nbrs, p, dom_lo, dom_n, group_lo, group_n, n, 10_000.0,
            np.full(10, 1e-3), 0.8, 0.0, mu, c_mu, cell, approximate == "others", False, 1.0, 0, 0,
            1.0, 0.0, False, 1e-3, 1.0, 1.0, 3, numba.get_num_threads(),
            epoch_workspace(n, B, k, S, group_size(B, G)))
    return _best(lambda: fused_epoch(*args), repeats)


def edges_epoch(n: int, repeats: int, B: int = 32768, m: int = 5) -> float:
    rng = np.random.default_rng(0)
    E = 15 * n
    Y = (rng.standard_normal((n, 2)) * 10).astype(np.float32)
    heads, tails, take = rng.integers(0, n, E), rng.integers(0, n, E), rng.permutation(E)
    args = (Y, np.zeros_like(Y), heads, tails, take, m, B, np.full(-(-E // B), 1e-3), 0.0, 4.0, False,
            True, 1.0, 0, 0, 1.0, 0.0, False, 1e-3, 1.0, 1.0, 7, numba.get_num_threads())
    return _best(lambda: fused_edge_epoch(*args), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[70_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--noise-group", type=int, nargs="+", default=[1, 16],
                        help="heads loop: heads sharing one noise draw (method.noise_group)")
    parser.add_argument("--layout", choices=["random", "cells"], default="random",
                        help="random rows and neighbours, or the engine's cell-ordered layout")
    parser.add_argument("--group-domain", choices=["cell", "all"], nargs="+", default=["cell"],
                        help="heads loop: a group's heads from its first head's cell (the engine) "
                             "or from all rows (the engine before 2026-12-04)")
    parser.add_argument("--no-edges", action="store_true", help="time the heads loop only")
    args = parser.parse_args()
    print(f"numba threads: {numba.get_num_threads()}, layout: {args.layout}\n")
    print("| loop | n | noise group | group's heads | noise | seconds per epoch |\n|---|---|---|---|---|---|")
    approximations = ["remote", "others"] if args.layout == "cells" else ["remote"]
    for n in args.n:
        for G in args.noise_group:
            for approximate in approximations:
                for group_domain in args.group_domain:
                    noise = "all points" if approximate == "remote" else "own cell + cell means"
                    seconds = heads_epoch(n, args.repeats, G=G, layout=args.layout, approximate=approximate,
                                          group_domain=group_domain)
                    heads = "one cell" if group_domain == "cell" else "all rows"
                    print(f"| heads | {n:,} | {G} | {heads} | {noise} | {seconds:.3g} |", flush=True)
        if not args.no_edges:
            print(f"| edges | {n:,} | - | - | m = 5 | {edges_epoch(n, args.repeats):.3g} |", flush=True)


if __name__ == "__main__":
    main()
