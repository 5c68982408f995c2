"""experiments.scale: one measured row per (n, method), saved after each method, a re-run
measuring only what is missing, and the table and figure written from the saved rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from experiments import bench
from experiments.scale import CODE, load_table, save_table

ROOT = Path(__file__).resolve().parents[1]


def scale(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NEBENCH_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "experiments.scale", "dataset=digits", f"table={tmp_path / 't.csv'}",
         f"output={tmp_path / 't.md'}", f"figure={tmp_path / 't.png'}",
         f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_rows_per_size_and_method_resume_and_plot(tmp_path: Path) -> None:
    first = scale(tmp_path, "ns=[600,300]", "methods=[pca]")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "t.csv")
    assert sorted(rows["n"]) == [300, 600] and set(rows["method"]) == {"pca"}
    assert (rows[bench.TOTAL] > 0).all() and rows["NP@10"].between(0, 1).all()
    assert rows["load"].str.fullmatch(r"[\d.]+ / [\d.]+").all()  # load average before / after

    # nomad's override reaches nomad's rows only (the bench, run per method, refuses others')
    again = scale(tmp_path, "ns=[300,150]", "methods=[nomad,pca]", "+method_overrides.nomad.n_epochs=5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pca at n=300: in" in again.stdout + again.stderr  # measured already: not run again
    rows = pd.read_csv(tmp_path / "t.csv")
    assert sorted(zip(rows["n"], rows["method"])) == [
        (150, "nomad"), (150, "pca"), (300, "nomad"), (300, "pca"), (600, "pca")]
    text = (tmp_path / "t.md").read_text()
    assert text in again.stdout and "600" in text and "nomad" in text
    assert (tmp_path / "t.png").stat().st_size > 10_000

    before = pd.read_csv(tmp_path / "t.csv")
    other = scale(tmp_path, "ns=[100,300]", "methods=[pca]", "seed=1")  # not the rows' settings
    assert other.returncode == 1 and "measured at other settings" in other.stdout + other.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), before)  # refused before n=100 ran

    replot = scale(tmp_path, "plot_only=true", "table=" + str(tmp_path / "t.csv"))
    assert replot.returncode == 0 and (tmp_path / "t.md").read_text().count("pca") == 3


def test_bad_sizes_are_refused_in_one_line(tmp_path: Path) -> None:
    done = scale(tmp_path, "ns=[1]", "methods=[pca]")
    assert done.returncode == 1
    assert "ns=[1] must be a list of sizes >= 2" in done.stdout + done.stderr
    assert not (tmp_path / "t.csv").exists()


def test_saved_rows_keep_their_text_columns(tmp_path: Path) -> None:
    """A code version of digits and one 'e' (24e5681) is text, not the float 24 x 10^5681."""
    table = pd.DataFrame({"n": [300], "method": ["pca"], CODE: ["24e5681"], bench.NOTE: [""]})
    save_table(table, tmp_path / "t.csv")
    loaded = load_table(tmp_path / "t.csv")
    assert loaded[CODE].tolist() == ["24e5681"] and loaded[bench.NOTE].tolist() == [""]
