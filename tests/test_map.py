"""Interactive maps (nebench.map): packing, self-containment, hover text from datasets, the
side-by-side CLI, and the pages themselves in headless Chromium (offline)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from nebench import map as nbmap
from nebench.datasets import load_dataset
from nebench.errors import InputError
from nebench.map_browser import find_chromium, page_result, screenshot

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("NEBENCH_DATA_DIR", ROOT.parent / "shared" / "data"))
NAMES = ["alpha", "beta", "gamma"]
needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="headless Chromium is not installed (apt-get install -y chromium; .ci/run does it)",
)


def blobs(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Three labelled Gaussian blobs in 2-D and a text per point."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    Y = (rng.normal(size=(n, 2)) + np.array([[0, 0], [6, 1], [3, 6]])[y]).astype(np.float32)
    return Y, y, [f"doc {i} of {NAMES[c]}" for i, c in enumerate(y)]


def fake_run(run_dir: Path, Y: np.ndarray, y, text, method: str, dataset: dict) -> Path:
    """A run dir as the runner leaves it (embedding.npy, config.yaml, metrics.json, page)."""
    run_dir.mkdir(parents=True)
    np.save(run_dir / "embedding.npy", Y)
    cfg = {"seed": 0, "method": {"name": method}, "dataset": dataset, "paths": {"data_dir": "."}}
    (run_dir / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    (run_dir / "metrics.json").write_text(json.dumps({"np@10": 0.5, "time_total_s": 1.0}))
    nbmap.write_map(Y, run_dir / "embedding.html", y, NAMES, text, method, dataset["name"])
    return run_dir


# ---------------------------------------------------------------- packing and the page


def test_quantised_coordinates_are_within_half_a_level():
    Y, _, _ = blobs()
    q, bounds = nbmap.quantise(Y)
    err = np.abs(nbmap.dequantise(q, bounds) - Y)
    span = np.array([bounds[1] - bounds[0], bounds[3] - bounds[2]])
    assert q.dtype == np.uint16 and q.min() == 0 and q.max() == nbmap.LEVELS
    assert (err <= span / nbmap.LEVELS / 2 + 1e-6).all()


def test_page_is_self_contained_and_about_seven_bytes_per_point():
    n = 100_000
    Y, y, _ = blobs(n)
    page = nbmap.render_page(nbmap.page_data([("m", Y)], y, NAMES))
    # no network: no external script, style, font or image, nothing fetched by URL
    assert not re.search(r"<script[^>]+src=|<link|@import|url\(|https?://|fetch\(|XMLHttpRequest", page)
    asset = len(nbmap._asset("map.js")) + len(nbmap._asset("map.css"))
    per_point = (len(page.encode()) - asset) / n
    assert per_point < 7.0, per_point  # 4 B of uint16 x, y + 1 B label, base64: 6.67


def test_text_cannot_end_the_data_block(tmp_path):
    Y, y, _ = blobs(10)
    text = ["</script><script>document.title='x'</script>"] * 10
    nbmap.write_map(Y, tmp_path / "p.html", y, NAMES, text, title="<b>t</b>")
    page = (tmp_path / "p.html").read_text()
    assert page.count("</script>") == 2  # the data block's and the renderer's
    assert nbmap.read_page_data(tmp_path / "p.html")["text"] == text


def test_long_text_is_cut():
    Y, y, _ = blobs(3)
    d = nbmap.page_data([("m", Y)], y, NAMES, ["x" * 1000, None, b"bytes"])
    assert len(d["text"][0]) == nbmap.MAX_TEXT_CHARS and d["text"][1:] == ["", "bytes"]


def test_above_max_points_a_page_holds_density_and_a_sample():
    Y, y, _ = blobs(5000)
    d = nbmap.page_data([("a", Y), ("b", -Y)], y, NAMES, max_points=1000, sample_points=400)
    ids = nbmap._unb64(d["ids"], "u4")
    assert (d["n"], d["n_shown"], len(ids)) == (5000, 400, 400) and len(set(ids)) == 400
    codes = nbmap._unb64(d["labels"], d["label_dtype"])
    np.testing.assert_array_equal(codes, y[ids] + 1)  # labels of the sampled rows
    for spec in d["maps"]:
        png = imread(io.BytesIO(base64.b64decode(spec["density"]["png"])))
        assert png.shape[2] == 4 and (png[..., 3] > 0).sum() > 1000  # all 5000 points binned


def test_bad_inputs_name_the_problem():
    Y, y, _ = blobs(10)
    with pytest.raises(InputError, match="NaN"):
        nbmap.quantise(np.full((3, 2), np.nan))
    with pytest.raises(InputError, match="labels have shape"):
        nbmap.page_data([("m", Y)], y[:5])
    with pytest.raises(InputError, match="same rows"):
        nbmap.page_data([("a", Y), ("b", Y[:5])])


# ---------------------------------------------------------------- hover text from datasets


def test_npz_text_key_follows_subsampling(tmp_path):
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(20) % 2, text=np.array([f"t{i}" for i in range(20)]))
    ds = load_dataset({"loader": "npz", "file": "d.npz", "n": 7}, tmp_path, seed=3)
    assert [f"t{int(x) // 2}" for x in ds.X[:, 0]] == list(ds.text)
    with pytest.raises(InputError, match="no key 'title' for dataset.text_key"):
        load_dataset({"loader": "npz", "file": "d.npz", "text_key": "title"}, tmp_path)
    np.savez(tmp_path / "bad.npz", X=X, text=np.arange(20))
    with pytest.raises(InputError, match="one string per row"):
        load_dataset({"loader": "npz", "file": "bad.npz"}, tmp_path)


def test_parquet_text_column(tmp_path):
    import pandas as pd

    X = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    pd.DataFrame({"emb": list(X), "title": ["a", None, "c", "d"]}).to_parquet(tmp_path / "v.parquet")
    cfg = {"loader": "vectors", "path": "v.parquet", "column": "emb", "text_column": "title"}
    assert list(load_dataset(cfg, tmp_path).text) == ["a", "", "c", "d"]
    with pytest.raises(InputError, match="no column 'name'"):
        load_dataset({**cfg, "text_column": "name"}, tmp_path)
    np.save(tmp_path / "v.npy", X)
    with pytest.raises(InputError, match="text_column is for .parquet"):
        load_dataset({**cfg, "path": "v.npy"}, tmp_path)


def test_arxiv_minilm_hover_text_is_its_titles():
    if not (DATA_DIR / "arxiv_minilm.npz").is_file():
        pytest.skip(f"{DATA_DIR / 'arxiv_minilm.npz'} is absent (set NEBENCH_DATA_DIR)")
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "dataset" / "arxiv_minilm.yaml")
    ds = load_dataset({**OmegaConf.to_container(cfg), "n": 50}, DATA_DIR, seed=0)
    with np.load(DATA_DIR / "arxiv_minilm.npz") as f:
        titles = set(f["title"].tolist())
    assert len(ds.text) == 50 and set(ds.text.tolist()) <= titles


# ---------------------------------------------------------------- runs and the CLI


def test_a_run_writes_its_map(tmp_path):
    env = {**os.environ, "NEBENCH_RESULTS_DIR": str(tmp_path / "results")}
    cmd = [sys.executable, str(ROOT / "run.py"), "method=pca", "dataset=digits",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = nbmap.read_page_data(tmp_path / "run" / "embedding.html")
    assert d["n"] == d["n_shown"] == 1797 and d["label_names"] == [str(k) for k in range(10)]
    q = nbmap._unb64(d["maps"][0]["xy"], "u2")
    Y = np.load(tmp_path / "run" / "embedding.npy")
    np.testing.assert_allclose(nbmap.dequantise(q, d["maps"][0]["bounds"]), Y, atol=1e-3)


def test_cli_writes_one_linked_page_and_rejects_other_rows(tmp_path, capsys):
    Y, y, text = blobs(300)
    ds = {"name": "blobs", "loader": "npz", "file": "b.npz", "n": None, "pca": 50}
    a = fake_run(tmp_path / "a", Y, y, text, "nomad", ds)
    b = fake_run(tmp_path / "b", Y[:, ::-1].copy(), y, text, "umap", {**ds, "pca": None})
    out = tmp_path / "cmp.html"
    assert nbmap.main([str(a), str(b), "--out", str(out)]) == 0
    d = nbmap.read_page_data(out)
    assert [m["title"].split(" ")[0] for m in d["maps"]] == ["nomad", "umap"]
    assert d["text"] == text and d["label_names"] == NAMES
    np.testing.assert_array_equal(nbmap._unb64(d["labels"], "u1"), y + 1)

    other = fake_run(tmp_path / "c", Y, y, text, "pca", {**ds, "file": "other.npz"})
    assert nbmap.main([str(a), str(other), "--out", str(out)]) == 2
    assert "did not embed the same rows" in capsys.readouterr().err
    assert nbmap.main([str(tmp_path), "--out", str(out)]) == 2
    assert "not a finished run dir" in capsys.readouterr().err


def test_cli_reloads_labels_and_text_when_the_run_page_holds_a_sample(tmp_path):
    Y, y, text = blobs(300)
    np.savez(tmp_path / "b.npz", X=Y, y=y, label_names=np.array(NAMES), text=np.array(text))
    ds = {"name": "blobs", "loader": "npz", "file": str(tmp_path / "b.npz"), "n": None, "pca": 2}
    runs = [fake_run(tmp_path / m, Y * s, y, text, m, ds) for m, s in (("a", 1), ("b", -1))]
    nbmap.write_map(Y, runs[0] / "embedding.html", y, NAMES, text, max_points=100, sample_points=50)
    (runs[1] / "embedding.html").unlink()  # a run from before maps existed
    out = tmp_path / "cmp.html"
    for order in (runs, runs[::-1]):
        assert nbmap.main([*map(str, order), "--out", str(out)]) == 0
        d = nbmap.read_page_data(out)
        assert d["text"] == text and d["label_names"] == NAMES and d["ids"] is None
        np.testing.assert_array_equal(nbmap._unb64(d["labels"], "u1"), y + 1)


# ---------------------------------------------------------------- in a real browser


def non_blank_pixels(png: Path) -> tuple[int, int]:
    """(pixels of the map area that are not background, distinct saturated colours among them);
    the area leaves out the header, map titles, stage borders and the legend (x > 950 px)."""
    img = imread(png)[80:-30, 15:930, :3]
    ink = (img < 0.9).any(axis=2)
    vivid = img[ink & (img.max(axis=2) - img.min(axis=2) > 0.3)]
    return int(ink.sum()), len({tuple(c) for c in np.round(vivid * 4).astype(int).tolist()})


def expected_lasso(Y: np.ndarray, result: dict) -> set[int]:
    """The rows inside the self-test's lasso, computed here from the page's view."""
    q, bounds = nbmap.quantise(Y)
    P = nbmap.dequantise(q, bounds)
    v = result["view"]
    px = v["W"] / 2 + (P[:, 0] - v["cx"]) * v["k"]
    py = v["H"] / 2 - (P[:, 1] - v["cy"]) * v["k"]
    (x0, y0), _, (x1, y1), _ = result["lasso"]["polygon_px"]
    return set(np.flatnonzero((px > x0) & (px < x1) & (py > y0) & (py < y1)).tolist())


@needs_chromium
@pytest.mark.parametrize("renderer", ["webgl", "canvas"])
def test_browser_draws_the_map_and_hover_selection_zoom_work(tmp_path, renderer):
    Y, y, text = blobs()
    page = tmp_path / "one.html"
    nbmap.write_map(Y, page, y, NAMES, text, "blobs")
    if renderer == "webgl":
        ink, colours = non_blank_pixels(screenshot(page, tmp_path / "one.png"))
        assert ink > 10_000 and colours >= 3  # points drawn in the three class colours
    r = page_result(page, "selftest" if renderer == "webgl" else "selftest&renderer=canvas")
    assert r["renderer"] == [renderer] and r["drawn_pixels"][0] > 2000
    row = r["hover"]["target_row"]
    assert r["hover"]["hovered_row"] == row and r["hover"]["tooltip_visible"]
    assert r["hover"]["tooltip_head"] == f"#{row} \u00b7 {NAMES[y[row]]}"
    assert r["hover"]["tooltip"].endswith(text[row])
    assert r["legend"]["selected"] == np.sum(y == 0) and r["legend"]["legend_on"]
    lassoed = set(r["lasso"]["selected_rows"])
    assert len(lassoed ^ expected_lasso(Y, r)) <= 2 and len(lassoed) > 100
    assert r["zoom"]["k_ratio"] > 1.2 and r["zoom"]["cx_moved"]


@needs_chromium
def test_browser_links_selection_across_maps(tmp_path):
    Y, y, text = blobs()
    other = np.c_[-Y[:, 1], Y[:, 0] * 2]  # the same rows, placed elsewhere
    a = fake_run(tmp_path / "a", Y, y, text, "nomad", {"name": "blobs", "n": None})
    b = fake_run(tmp_path / "b", other, y, text, "umap", {"name": "blobs", "n": None})
    out = tmp_path / "cmp.html"
    nbmap.write_comparison([a, b], out)
    ink, colours = non_blank_pixels(screenshot(out, tmp_path / "cmp.png"))
    assert ink > 10_000 and colours >= 3
    r = page_result(out)
    assert r["maps"] == 2 and r["renderer"] == ["webgl", "webgl"] and min(r["drawn_pixels"]) > 2000
    assert min(r["hover"]["ring_pixels"]) > 20  # the hovered row is ringed in both maps
    assert r["legend"]["per_map_selected"] == [np.sum(y == 0)] * 2
    rows = r["lasso"]["selected_rows"]
    assert len(set(rows) ^ expected_lasso(Y, r)) <= 2
    assert r["lasso"]["per_map_selected"] == [len(rows)] * 2  # highlighted in both maps
    # the picture of a selection (opened with #select=beta): beta's colour, the rest grey
    img = imread(screenshot(out, tmp_path / "sel.png", fragment="select=beta"))[80:-30, 15:930, :3]
    spread = img.max(axis=2) - img.min(axis=2)
    grey = (spread < 0.05) & (img.max(axis=2) < 0.9)
    vivid = img[spread > 0.3]
    assert grey.sum() > 5000 and len(vivid) > 1000
    # beta is tab10's orange (R > G > B); alpha's blue and gamma's green are not drawn in colour
    orange = (vivid[:, 0] > vivid[:, 1]) & (vivid[:, 1] > vivid[:, 2])
    assert orange.mean() > 0.95


@needs_chromium
def test_browser_density_fallback_hovers_the_sample(tmp_path):
    Y, y, text = blobs(4000)
    page = tmp_path / "big.html"
    nbmap.write_map(Y, page, y, NAMES, text, max_points=1000, sample_points=300)
    ids = set(nbmap._unb64(nbmap.read_page_data(page)["ids"], "u4").tolist())
    r = page_result(page)
    assert r["n_shown"] == 300 and r["drawn_pixels"][0] > 0
    assert r["hover"]["hovered_row"] == r["hover"]["target_row"] and r["hover"]["target_row"] in ids
    assert r["hover"]["tooltip"].endswith(text[r["hover"]["target_row"]])
    assert r["density_pixels"][0] > 800  # the raster of all 4000 points, under the sample
    ink, _ = non_blank_pixels(screenshot(page, tmp_path / "big.png"))
    assert ink > 2000


@needs_chromium
def test_browser_map_without_labels_or_text(tmp_path):
    Y, _, _ = blobs(500)
    nbmap.write_map(Y, tmp_path / "plain.html")
    r = page_result(tmp_path / "plain.html")
    assert r["drawn_pixels"][0] > 1000 and r["hover"]["hovered_row"] == r["hover"]["target_row"]
    assert r["hover"]["tooltip"] == f"#{r['hover']['target_row']} \u00b7 unlabelled"
    assert (r["legend"]["code"], r["legend"]["selected"]) == (0, 500)  # "unlabelled" selects all
