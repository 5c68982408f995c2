"""Peak memory is the run's own: not inherited from earlier work in the process, and it counts
the processes the run starts."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np

from nebench.memory import PeakMemory

MB = 1e6


def _hold(n_bytes: int, seconds: float) -> None:
    block = np.ones(n_bytes, dtype=np.uint8)  # touched, so resident
    time.sleep(seconds)
    del block


def test_an_earlier_peak_in_the_same_process_is_not_inherited() -> None:
    _hold(800 * 1_000_000, 0.0)  # an earlier "job" of this worker
    with PeakMemory() as small:
        _hold(50 * 1_000_000, 0.2)
    with PeakMemory() as large:
        _hold(400 * 1_000_000, 0.2)
    assert large.gb - small.gb > 0.3  # the 400 MB job peaks higher than the 50 MB one
    assert small.gb < large.gb < 0.8 + small.gb  # and neither carries the earlier 800 MB


def test_a_child_process_counts() -> None:
    ctx = multiprocessing.get_context("spawn")
    with PeakMemory() as alone:
        time.sleep(0.3)
    with PeakMemory() as peak:
        child = ctx.Process(target=_hold, args=(300 * 1_000_000, 1.5))
        child.start()
        child.join()
    assert peak.gb - alone.gb > 0.25
