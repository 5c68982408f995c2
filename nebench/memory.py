"""Peak resident memory of one run: this process and every process it starts, from now on.

``getrusage``'s ``ru_maxrss`` is the high-water mark of the whole process life (and, for
children, of every child that ever ended), so a sweep worker that runs several jobs would
report the largest job so far. ``PeakMemory`` instead:

* restarts this process's high-water mark (``/proc/self/clear_refs``, Linux) and reads it back
  as ``VmHWM`` at the end, which catches spikes between samples in this process;
* samples, every ``interval_s`` seconds on a daemon thread (psutil), the summed RSS of this
  process and its live descendants (device workers, spawned kNN or t-SimCNE workers).

The peak is the larger of the two, in GB of 1e9 bytes. Elsewhere than Linux, only the samples
count. A child that lives shorter than one interval can be missed: the reported peak is a lower
bound, never inherited from an earlier run.
"""

from __future__ import annotations

import threading
from contextlib import suppress
from pathlib import Path

import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """``with PeakMemory() as peak: ...``; then ``peak.gb`` is the run's peak RSS."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.gb = 0.0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def __enter__(self) -> PeakMemory:  # noqa: PYI034 (final class)
        with suppress(OSError):
            _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sampled = max(self._sampled, _tree_rss())
        self.gb = max(self._sampled, _high_water_mark()) / 1e9

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sampled = max(self._sampled, _tree_rss())


def _tree_rss() -> int:
    """Bytes resident in this process and its live descendants."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def _high_water_mark() -> int:
    """This process's VmHWM in bytes (0 where /proc is not there)."""
    with suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
