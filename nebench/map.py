"""Interactive offline maps: ``embedding.html`` of every run, and linked side-by-side pages.

A page is one self-contained HTML file: the renderer (``nebench/map_assets/map.js``, WebGL points
with a canvas 2D density fallback; pan, zoom, colour by label with a legend, hover showing row,
label and text, lasso and legend selection linked across maps) and its CSS are inlined, and the
data sit in a ``<script type="application/json" id="nebench-data">`` block. Nothing is loaded
from the network.

Size: coordinates are quantised per axis to uint16 over the map's bounds (1/65535 of the extent,
well below a pixel at any useful zoom) and stored base64, 4 bytes -> 5.33 characters per point;
labels are uint8 codes (uint16 above 254 classes), 1.33 characters per point. A labelled map of
n points without text is about 6.7 n bytes (1M points: 6.7 MB); hover text, where a dataset has
it, is cut to ``MAX_TEXT_CHARS`` characters. Above ``max_points`` points a page carries a density
raster of all points per map plus a seeded sample of ``sample_points`` for drawing, hover and
selection.

Command line::

    python -m nebench.map RUN_DIR [RUN_DIR ...] [--out PAGE.html] [--title TITLE]
                          [--screenshot PNG [--size WxH] [--select LABEL]]

writes one page with a map per run (runs of the same dataset and rows), linked: a lasso or a
legend label selected in one map highlights the same rows in all, and the hovered row is ringed
in every map.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import re
import sys
from collections.abc import Sequence
from importlib import resources
from os import PathLike
from pathlib import Path

import numpy as np

from nebench.errors import InputError
from nebench.io import atomic_open

log = logging.getLogger(__name__)

#: quantisation levels per axis (uint16)
LEVELS = 65535
#: above this many points a page shows a density raster of all and points of a sample
MAX_POINTS = 2_000_000
#: points drawn (and hoverable) on a page above ``MAX_POINTS``
SAMPLE_POINTS = 500_000
#: hover text is cut to this many characters
MAX_TEXT_CHARS = 200
#: longest side of a density raster, in pixels
DENSITY_PIXELS = 1024
UNLABELLED_HEX = "#aaaaaa"
_DATA_BLOCK = re.compile(
    r'<script type="application/json" id="nebench-data">(.*?)</script>', re.DOTALL
)


def quantise(Y: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """``Y`` (n x 2) as uint16 per axis over its bounds; returns (q, [xmin, xmax, ymin, ymax])."""
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[1] != 2:
        raise InputError(f"a map needs an n x 2 embedding, got shape {Y.shape}")
    if len(Y) and not np.isfinite(Y).all():
        raise InputError("the embedding has NaN or infinite coordinates: a map cannot place them")
    lo = Y.min(axis=0) if len(Y) else np.zeros(2)
    hi = Y.max(axis=0) if len(Y) else np.ones(2)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((Y - lo) / span * LEVELS).astype(np.uint16)
    return q, [float(lo[0]), float(lo[0] + span[0]), float(lo[1]), float(lo[1] + span[1])]


def dequantise(q: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    """The coordinates ``quantise`` stored (the map's positions of the points)."""
    q = np.asarray(q, dtype=np.float64).reshape(-1, 2)
    lo = np.array([bounds[0], bounds[2]])
    span = np.array([bounds[1] - bounds[0], bounds[3] - bounds[2]])
    return lo + q / LEVELS * span


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).decode()


def _unb64(s: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.dtype(dtype).newbyteorder("<"))


def _hex(rgba: np.ndarray) -> str:
    r, g, b = (round(float(c) * 255) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _label_codes(labels: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes present, code per point: 0 = unlabelled, k + 1 = classes[k])."""
    if labels is None:
        return np.empty(0, dtype=np.int64), np.zeros(n, dtype=np.uint8)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise InputError(f"labels have shape {labels.shape}, the embedding has {n} rows")
    classes = np.unique(labels[labels >= 0])
    if len(classes) > 65534:
        log.warning("map: %d classes are too many to colour; drawing all points grey", len(classes))
        return np.empty(0, dtype=np.int64), np.zeros(n, dtype=np.uint8)
    codes = np.zeros(n, dtype=np.uint8 if len(classes) < 255 else np.uint16)
    codes[labels >= 0] = np.searchsorted(classes, labels[labels >= 0]) + 1
    return classes, codes


def _texts(text: Sequence | np.ndarray | None, rows: np.ndarray, n: int) -> list[str] | None:
    if text is None:
        return None
    if len(text) != n:
        raise InputError(f"text has {len(text)} entries, the embedding has {n} rows")
    out = []
    for i in rows:
        t = text[int(i)]
        t = "" if t is None else t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
        out.append(t if len(t) <= MAX_TEXT_CHARS else t[: MAX_TEXT_CHARS - 1] + "\u2026")
    return out


def _density_png(Y: np.ndarray, codes: np.ndarray, colors: list[str], bounds: list[float]) -> str:
    """All points as a raster: a pixel's colour is the mean colour of its points, its opacity
    grows with log density (as ``plotting._density``); base64 PNG, row 0 at the top."""
    from matplotlib.image import imsave

    xr, yr = bounds[1] - bounds[0], bounds[3] - bounds[2]
    nx = DENSITY_PIXELS if xr >= yr else max(1, round(DENSITY_PIXELS * xr / yr))
    ny = DENSITY_PIXELS if yr >= xr else max(1, round(DENSITY_PIXELS * yr / xr))
    ix = np.minimum(((Y[:, 0] - bounds[0]) / xr * nx).astype(np.int64), nx - 1)
    iy = np.minimum(((Y[:, 1] - bounds[2]) / yr * ny).astype(np.int64), ny - 1)
    cell = (ny - 1 - iy) * nx + ix  # row 0 = top
    palette = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in [UNLABELLED_HEX, *colors]])
    total = np.bincount(cell, minlength=nx * ny).astype(np.float64)
    rgba = np.zeros((nx * ny, 4))
    for ch in range(3):
        rgba[:, ch] = np.bincount(cell, weights=palette[codes, ch], minlength=nx * ny)
    rgba[:, :3] /= np.maximum(total, 1)[:, None] * 255
    rgba[:, 3] = np.where(total > 0, 0.3 + 0.7 * np.log1p(total) / np.log1p(max(total.max(), 1)), 0)
    buf = io.BytesIO()
    imsave(buf, rgba.reshape(ny, nx, 4).clip(0, 1), format="png")
    return base64.b64encode(buf.getvalue()).decode()


def page_data(
    embeddings: Sequence[tuple[str, np.ndarray]],
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    text: Sequence | np.ndarray | None = None,
    title: str = "",
    dataset: str = "",
    max_points: int = MAX_POINTS,
    sample_points: int = SAMPLE_POINTS,
    seed: int = 0,
) -> dict:
    """The JSON block of a page: one map per ``(title, Y)``, all over the same rows."""
    from nebench.plotting import class_colors

    if not embeddings:
        raise InputError("a map page needs at least one embedding")
    n = len(embeddings[0][1])
    for name, Y in embeddings:
        if len(Y) != n:
            raise InputError(f"map {name!r} has {len(Y)} rows, the first map has {n}: "
                             "side-by-side maps must embed the same rows")
    classes, codes = _label_codes(labels, n)
    colors = [_hex(c) for c in class_colors(len(classes))] if len(classes) else []
    names = [
        str(label_names[c]) if label_names is not None and 0 <= c < len(label_names) else str(c)
        for c in classes.tolist()
    ]
    sampled = n > max_points
    rows = (
        np.sort(np.random.default_rng(seed).choice(n, size=min(sample_points, n), replace=False))
        if sampled
        else np.arange(n)
    )
    shown = len(rows)
    alpha = int(np.clip(255 * np.sqrt(20_000 / max(shown, 1)), 60, 120 if sampled else 255))
    maps = []
    for name, Y in embeddings:
        Y = np.asarray(Y)
        q, bounds = quantise(Y)
        spec = {"title": name, "bounds": bounds, "xy": _b64(q[rows] if sampled else q), "alpha": alpha}
        if sampled:
            spec["density"] = {"png": _density_png(dequantise(q, bounds), codes, colors, bounds),
                               "bounds": bounds}
        maps.append(spec)
    return {
        "version": 1,
        "title": title,
        "dataset": dataset,
        "n": n,
        "n_shown": shown,
        "ids": _b64(rows.astype(np.uint32)) if sampled else None,
        "labels": _b64(codes[rows] if sampled else codes),
        "label_dtype": "u1" if codes.dtype == np.uint8 else "u2",
        "label_names": names,
        "label_values": classes.tolist(),
        "label_counts": np.bincount(codes, minlength=len(classes) + 1).tolist(),
        "colors": colors,
        "text": _texts(text, rows, n),
        "maps": maps,
    }


def _asset(name: str) -> str:
    return resources.files("nebench").joinpath("map_assets", name).read_text(encoding="utf-8")


def render_page(data: dict) -> str:
    """The self-contained HTML page for a ``page_data`` block."""
    # "<" escaped, so no string in the data (a title holding "</script>") can end the block
    block = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    title = (data.get("title") or "nebench map").replace("&", "&amp;").replace("<", "&lt;")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>\n{_asset('map.css')}</style>\n</head><body>\n"
        "<div id=\"nebench-app\"></div>\n"
        f"<script type=\"application/json\" id=\"nebench-data\">{block}</script>\n"
        f"<script>\n{_asset('map.js')}</script>\n</body></html>\n"
    )


def read_page_data(path: str | PathLike) -> dict:
    """The JSON block of a page ``render_page`` wrote."""
    text = Path(path).read_text(encoding="utf-8")
    match = _DATA_BLOCK.search(text)
    if not match:
        raise InputError(f"{path} is not a nebench map page (no nebench-data block)")
    return json.loads(match.group(1))


def write_map(
    Y: np.ndarray,
    path: str | PathLike,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    text: Sequence | np.ndarray | None = None,
    title: str = "",
    dataset: str = "",
    **options,
) -> int:
    """Write the interactive map of one embedding to ``path`` (atomically); returns its bytes."""
    data = page_data([(title or "embedding", Y)], labels, label_names, text, title, dataset, **options)
    page = render_page(data).encode("utf-8")
    with atomic_open(path, "wb") as f:
        f.write(page)
    return len(page)


# ---------------------------------------------------------------- side-by-side pages


def _run_info(run_dir: Path) -> tuple[dict, np.ndarray, dict]:
    """(config, embedding, metrics) of a run dir, with errors that name the fix."""
    from omegaconf import OmegaConf

    if not (run_dir / "embedding.npy").is_file() or not (run_dir / "config.yaml").is_file():
        raise InputError(
            f"{run_dir} is not a finished run dir (it needs embedding.npy and config.yaml): "
            "give the run dirs that `python run.py` wrote (outputs/<method>/<dataset>/<time>_s<seed>/)"
        )
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)
    Y = np.load(run_dir / "embedding.npy", allow_pickle=False)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return cfg, Y, metrics


def _rows_key(cfg: dict) -> tuple:
    """What fixes a run's rows: its dataset config and, when it subsamples, the seed."""
    ds = dict(cfg.get("dataset") or {})
    for key in ("pca", "l2_normalize"):  # preprocessing that keeps the rows
        ds.pop(key, None)
    return json.dumps(ds, sort_keys=True, default=str), cfg.get("seed") if ds.get("n") else None


def _labels_of_run(run_dir: Path, cfg: dict) -> tuple[np.ndarray | None, list | None, list | None]:
    """Labels, label names and text of a run's rows: from its embedding.html when that page holds
    every row, else by loading its dataset again (without PCA)."""
    page = run_dir / "embedding.html"
    if page.is_file():
        d = read_page_data(page)
        if d.get("ids") is None:
            codes = _unb64(d["labels"], d["label_dtype"]).astype(np.int64)
            values = np.array([-1, *d["label_values"]], dtype=np.int64)
            by_value = dict(zip(d["label_values"], d["label_names"]))
            top = max(d["label_values"], default=-1)
            names = [by_value.get(v, str(v)) for v in range(top + 1)]
            return values[codes], names, d.get("text")
    from nebench.datasets import load_dataset

    ds_cfg = dict(cfg["dataset"])
    ds_cfg["pca"] = None
    data_dir = (cfg.get("paths") or {}).get("data_dir", ".")
    data = load_dataset(ds_cfg, data_dir, int(cfg.get("seed", 0)))
    return data.y, data.label_names, getattr(data, "text", None)


def _map_title(cfg: dict, metrics: dict, run_dir: Path) -> str:
    method = (cfg.get("method") or {}).get("name", run_dir.name)
    parts = [f"{method} (seed {cfg.get('seed', '?')})"]
    if "np@10" in metrics:
        parts.append(f"NP@10 {metrics['np@10']:.3f}")
    if "time_total_s" in metrics:
        parts.append(f"{metrics['time_total_s']:.1f} s")
    return " \u00b7 ".join(parts)


def write_comparison(
    run_dirs: Sequence[str | PathLike], out: str | PathLike, title: str | None = None, **options
) -> int:
    """One page with a map per run (same dataset, same rows), linked; returns its bytes."""
    if not run_dirs:
        raise InputError("give at least one run dir")
    runs = [(Path(d), *_run_info(Path(d))) for d in run_dirs]
    first_dir, first_cfg, first_Y, _ = runs[0]
    key = _rows_key(first_cfg)
    for run_dir, cfg, Y, _ in runs[1:]:
        if _rows_key(cfg) != key or len(Y) != len(first_Y):
            raise InputError(
                f"{run_dir} did not embed the same rows as {first_dir} (dataset config, n "
                f"{len(Y)} vs {len(first_Y)}, or the seed of a dataset.n subsample differ): "
                "side-by-side maps link points by row, so give runs of one dataset config "
                "(and one seed when dataset.n subsamples)"
            )
    labels, names, text = _labels_of_run(first_dir, first_cfg)
    dataset = str((first_cfg.get("dataset") or {}).get("name", ""))
    if title is None:
        title = f"{dataset} (n={len(first_Y):,}): " + " / ".join(
            str((cfg.get("method") or {}).get("name", d.name)) for d, cfg, _, _ in runs
        )
    embeddings = [(_map_title(cfg, metrics, d), Y) for d, cfg, Y, metrics in runs]
    data = page_data(embeddings, labels, names, text, title, dataset, **options)
    page = render_page(data).encode("utf-8")
    with atomic_open(out, "wb") as f:
        f.write(page)
    return len(page)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nebench.map",
        description="Write one interactive page with a linked map per run (runs of one dataset).",
    )
    parser.add_argument("run_dirs", nargs="+", help="run dirs written by `python run.py`")
    parser.add_argument("--out", default="map.html", help="the page to write (default: map.html)")
    parser.add_argument("--title", default=None, help="page title (default: dataset and methods)")
    parser.add_argument("--max-points", type=int, default=MAX_POINTS,
                        help=f"above this, density + a sample of points (default {MAX_POINTS:,})")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="also save a picture of the page (headless Chromium)")
    parser.add_argument("--size", default="1500x520", help="screenshot window WxH (default 1500x520)")
    parser.add_argument("--select", default=None, metavar="LABEL",
                        help="screenshot with this label selected in every map")
    args = parser.parse_args(argv)
    try:
        size = write_comparison(args.run_dirs, args.out, args.title, max_points=args.max_points)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, {len(args.run_dirs)} maps)")
    if args.screenshot:
        from urllib.parse import quote

        from nebench.map_browser import find_chromium, screenshot

        if find_chromium() is None:
            print("error: --screenshot needs Chromium: apt-get install -y chromium", file=sys.stderr)
            return 2
        width, height = (int(v) for v in args.size.lower().split("x"))
        fragment = f"select={quote(args.select)}" if args.select else ""
        screenshot(args.out, args.screenshot, width, height, fragment=fragment)
        print(f"wrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
