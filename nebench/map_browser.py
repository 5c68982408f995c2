"""Open map pages in headless Chromium, offline: screenshots and the page's own self-test.

Used by the tests (``tests/test_map.py``), the frame-time benchmark (``experiments/map_bench.py``)
and the README gallery. Chromium draws WebGL without a GPU through SwiftShader
(``--use-gl=swiftshader --enable-unsafe-swiftshader``); every network feature is switched off and
each call gets a fresh profile directory. A page opened with ``#selftest`` (or ``#bench=N``) runs
synthetic hover, legend, lasso, zoom and pan events through its own handlers and writes the result
as JSON into ``<pre id="nebench-result">``, which ``--dump-dom`` returns.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from os import PathLike
from pathlib import Path

#: names the Debian, Ubuntu and Google packages install
BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--use-gl=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
)
log = logging.getLogger(__name__)
_RESULT = re.compile(r'<pre id="nebench-result"[^>]*>(.*?)</pre>', re.DOTALL)


def find_chromium() -> str | None:
    """The path of a Chromium binary, or None (install it: ``apt-get install -y chromium``)."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float, attempts: int = 2) -> subprocess.CompletedProcess:
    """Chromium with ``args``; a run that hangs past ``timeout`` is started once more (headless
    Chromium with a virtual time budget now and then never exits on a loaded machine)."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no Chromium found: install it with `apt-get install -y chromium`")
    for attempt in range(attempts):
        with tempfile.TemporaryDirectory(prefix="nebench-chromium-") as profile:
            try:
                return subprocess.run(
                    [binary, *FLAGS, f"--user-data-dir={profile}", *args],
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                log.warning("Chromium did not exit within %.0f s (attempt %d of %d)",
                            timeout, attempt + 1, attempts)
    raise RuntimeError(f"Chromium hung {attempts} times (>{timeout:.0f} s each): {' '.join(args)}")


def screenshot(page: str | PathLike, png: str | PathLike, width: int = 1200, height: int = 800,
               timeout: float = 60, fragment: str = "") -> Path:
    """Render ``page`` (a local file; ``#fragment`` such as ``select=Shirt``) to ``png``;
    raises when Chromium writes no image."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    # Chromium writes a temporary file beside the target, renamed into place when complete
    tmp = png.with_name(f".{png.name}.{os.getpid()}.tmp.png")
    try:
        return _screenshot(page, png, tmp, width, height, timeout, fragment)
    finally:
        tmp.unlink(missing_ok=True)


def _screenshot(page, png: Path, tmp: Path, width: int, height: int, timeout: float,
                fragment: str) -> Path:
    proc = _run(
        # every compositor stage before the capture, and software compositing: without them a
        # capture now and then shows the WebGL canvases before the GPU process presented them
        [f"--window-size={width},{height}", "--virtual-time-budget=5000",
         "--run-all-compositor-stages-before-draw", "--disable-gpu-compositing",
         f"--screenshot={tmp}", Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")],
        timeout,
    )
    if not tmp.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    os.replace(tmp, png)
    return png


def page_result(page: str | PathLike, fragment: str = "selftest", width: int = 1200,
                height: int = 800, timeout: float = 120, virtual_time: bool = True) -> dict:
    """Open ``page#fragment`` and return the JSON its script wrote into ``#nebench-result``.

    ``virtual_time`` lets the page's asynchronous work (decoding a density raster) finish
    before the DOM is dumped; timings need real time (``virtual_time=False``), and then only a
    page whose result does not wait on a raster is dumped with it. The raster is decoded off the
    page's thread, outside virtual time, so on a loaded machine the DOM can be dumped before it
    is ready: a page that wrote no result is opened once more with a 4x larger budget."""
    for budget_ms in (5000, 20000) if virtual_time else (None,):
        budget = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
        proc = _run(
            [f"--window-size={width},{height}", *budget, "--dump-dom",
             f"{Path(page).resolve().as_uri()}#{fragment}"],
            timeout,
        )
        match = _RESULT.search(proc.stdout)
        if match:
            break
    if not match:
        raise RuntimeError(
            f"the page wrote no #nebench-result (exit {proc.returncode}); Chromium said:\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(html.unescape(match.group(1)))
