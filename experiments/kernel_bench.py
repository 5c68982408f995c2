"""Per-epoch time of the compiled CPU kernels (``nomad/cpu_kernel.py``) on synthetic input.

    python -m experiments.kernel_bench [--n 70000 1000000] [--repeats 2]

One row per n for each loop: ``heads`` (:func:`fused_epoch`, NOMAD's defaults: k = 8, S = 256
noise samples per head, shared by groups of ``--noise-group`` heads, n/10 heads a step,
momentum 0.8, so 10 steps an epoch) and ``edges``
(:func:`fused_edge_epoch`, cne's defaults: 15 n edges an epoch in batches of 2^15, m = 5). The
positions, neighbours and edges are random (a worst case for cache locality); the first call
compiles and is not timed. Prints a markdown table of the best of ``repeats`` epochs.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from nomad.cpu_kernel import fused_edge_epoch, fused_epoch


def _best(call, repeats: int) -> float:
    call()  # compilation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return min(times)


def heads_epoch(n: int, repeats: int, k: int = 8, S: int = 256, G: int = 1) -> float:
    rng = np.random.default_rng(0)
    Y = (rng.standard_normal((n, 2)) * 10).astype(np.float32)
    nbrs = rng.integers(0, n, (n, k))
    p = np.full(k, 1 / k, np.float32)
    zeros = np.zeros(n, np.int64)
    args = (Y, np.zeros_like(Y), nbrs, p, zeros, np.full(n, n, np.int64), n, 10_000.0, S, G, n // 10,
            np.full(10, 1e-3), 0.8, 0.0, np.zeros((0, 2), np.float32), np.zeros(0, np.float32), zeros,
            False, False, 1.0, 0, 0, 1.0, 0.0, False, 1e-3, 1.0, 1.0, 3, numba.get_num_threads())
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
    args = parser.parse_args()
    print(f"numba threads: {numba.get_num_threads()}\n")
    print("| loop | n | noise group | seconds per epoch |\n|---|---|---|---|")
    for n in args.n:
        for G in args.noise_group:
            print(f"| heads | {n:,} | {G} | {heads_epoch(n, args.repeats, G=G):.3g} |", flush=True)
        print(f"| edges | {n:,} | - | {edges_epoch(n, args.repeats):.3g} |", flush=True)

if __name__ == "__main__":
    main()
