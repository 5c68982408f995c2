"""Size and interactivity of the interactive maps (``nebench/map.py``) at up to 1M points.

    python -m experiments.map_bench [--n 10000 100000 1000000] [--frames 30] [--text-n 100000]

For each n: a map of n points in 10 labelled 2-D Gaussian clusters is written (bytes, bytes per
point, Python write time), opened offline in headless Chromium (``nebench.map_browser``) with
``#bench=FRAMES``, and the page's own code reports: load (JSON parse, base64 decode, hover grid,
GPU upload and first frame), the frame time of a redraw at a new view (median and max over
FRAMES frames, a one-pixel ``readPixels`` inside the timing, so the GPU work is counted; "moving":
the frames drawn while the view moves, which show a uniform sample of 250,000 points until the
view rests for 200 ms), one hover lookup,
and one lasso selection of a quarter of the map (selection, highlight buffers, redraw).
``--text-n`` adds a row of n points with 80-character hover text, ``--canvas`` rows of the canvas
2D density fallback. Chromium draws WebGL in software here (SwiftShader on the CPU cores), so the
frame times are an upper bound for a browser with a GPU. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from nebench.map import write_map
from nebench.map_browser import find_chromium, page_result


def clusters(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    centres = rng.normal(scale=12, size=(10, 2))
    return (centres[y] + rng.normal(size=(n, 2))).astype(np.float32), y


def bench_one(n: int, frames: int, folder: Path, text: bool = False, canvas: bool = False) -> dict:
    Y, y = clusters(n)
    words = [f"point {i:07d} " + "lorem ipsum dolor sit amet consectetur adipiscing elit sed do"
             for i in range(n)] if text else None
    page = folder / f"map_{n}{'_text' if text else ''}.html"
    start = time.perf_counter()
    size = write_map(Y, page, y, [f"class {k}" for k in range(10)], words, f"bench n={n}")
    write_s = time.perf_counter() - start
    fragment = f"bench={frames}&renderer=" + ("canvas" if canvas else "webgl")
    r = page_result(page, fragment, virtual_time=False, timeout=600)
    return {
        "n": n,
        "text": "80 chars" if text else "-",
        "renderer": r["renderer"] + (" (SwiftShader)" if "SwiftShader" in str(r["gl_renderer"]) else ""),
        "page MB": size / 1e6,
        "bytes/point": size / n,
        "write s": write_s,
        "load ms": r["load_ms"],
        "frame ms (median)": r["frame_ms_median"],
        "frame ms (max)": r["frame_ms_max"],
        "moving frame ms": r["moving_frame_ms_median"],
        "moving points": r["moving_points"],
        "hover ms": r["hover_ms"],
        "lasso ms": r["lasso_select_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--text-n", type=int, nargs="*", default=[100_000])
    parser.add_argument("--canvas", type=int, nargs="*", default=[1_000_000],
                        help="n of the canvas 2D (no WebGL) rows")
    args = parser.parse_args()
    if find_chromium() is None:
        raise SystemExit("no Chromium: install it with `apt-get install -y chromium`")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in args.n:
            rows.append(bench_one(n, args.frames, folder))
        for n in args.text_n:
            rows.append(bench_one(n, args.frames, folder, text=True))
        for n in args.canvas:
            rows.append(bench_one(n, min(args.frames, 5), folder, canvas=True))
    if not rows:
        raise SystemExit("nothing to measure: give --n, --text-n or --canvas sizes")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for row in rows:
        cells = [f"{v:,}" if isinstance(v, int) else f"{v:.2f}" if isinstance(v, float) else str(v)
                 for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
