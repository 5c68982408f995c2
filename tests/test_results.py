"""The results table (atomic, concurrent appends), atomic writes, and the report command."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nebench import report, results
from nebench.errors import InputError
from nebench.io import atomic_open
from nebench.plotting import plot_embedding
from nebench.results import append_row, code_version, read_results

WORKERS, ROWS_EACH = 8, 5
PAYLOAD = "x" * 2000  # long cells, so a torn write would show


def _append_rows(path: str, worker: int) -> None:
    for i in range(ROWS_EACH):
        append_row(path, {"worker": worker, "i": i, f"method.p{worker % 3}": i, "payload": PAYLOAD})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_concurrent_appends_keep_every_row_intact(tmp_path: Path, suffix: str) -> None:
    path = str(tmp_path / f"results{suffix}")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_rows, args=(path, w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    table = read_results(path)
    assert len(table) == WORKERS * ROWS_EACH
    assert sorted(zip(table["worker"], table["i"])) == [
        (w, i) for w in range(WORKERS) for i in range(ROWS_EACH)
    ]
    assert (table["payload"] == PAYLOAD).all()
    assert {"method.p0", "method.p1", "method.p2"} <= set(table.columns)  # union of columns
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_rows_keep_types_lists_and_mixed_columns(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    append_row(path, {"method": "a", "method.learning_rate": "auto", "method.ks": [10, 15]})
    append_row(path, {"method": "b", "method.learning_rate": 200.0, "np@15": 0.5})
    table = read_results(path)
    assert table["method"].tolist() == ["a", "b"]
    assert table["method.ks"].iloc[0] == "[10, 15]"
    assert str(table["method.learning_rate"].iloc[0]) == "auto"
    assert float(table["method.learning_rate"].iloc[1]) == 200.0
    assert pd.isna(table["np@15"].iloc[0]) and table["np@15"].iloc[1] == 0.5


def test_unknown_table_format_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=".xlsx"):
        append_row(tmp_path / "results.xlsx", {"a": 1})


def test_atomic_open_leaves_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write("new, half written")
        raise RuntimeError
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with atomic_open(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"


def test_code_version_from_git_else_the_package(monkeypatch) -> None:
    if (Path(results.__file__).parents[1] / ".git").exists():
        assert code_version() not in ("", "unknown")

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(results.subprocess, "run", no_git)
    monkeypatch.setattr(results.metadata, "version", lambda name: "9.9")
    code_version.cache_clear()
    try:
        assert code_version() == "9.9"
    finally:
        code_version.cache_clear()


@pytest.mark.parametrize("n", [500, 120_000])
def test_embedding_plot_for_small_and_large_n(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 3, n)
    Y = rng.normal(size=(n, 2)).astype(np.float32) + labels[:, None] * 3
    plot_embedding(Y, tmp_path / "e.png", labels, ["a", "b", "c"], "title")
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def _table() -> pd.DataFrame:
    """Two datasets; nomad at two epoch counts and two device counts, openTSNE once; 2 seeds."""
    rows = []
    for dataset in ("mnist", "arxiv"):
        for seed in (0, 1):
            for epochs, devices, time in ((100, 1, 10.0), (500, 1, 40.0), (500, 4, 15.0)):
                rows.append(
                    {
                        "method": "nomad",
                        "dataset": dataset,
                        "seed": seed,
                        "method.n_epochs": epochs,
                        "devices": devices,
                        "accelerator": "cuda",
                        "np@10": 0.3 + epochs / 5000,
                        "np@15": 0.35 + epochs / 5000 + seed / 100,
                        "rta": 0.6,
                        "knn_acc": 0.9,
                        "time_total_s": time + seed,
                    }
                )
            rows.append(
                {
                    "method": "opentsne",
                    "dataset": dataset,
                    "seed": seed,
                    "method.perplexity": 30,
                    "devices": 1,
                    "accelerator": "cpu",
                    "np@10": 0.4,
                    "np@15": 0.45,
                    "rta": 0.65,
                    "time_total_s": 100.0 + seed,
                }
            )
    return pd.DataFrame(rows)


def test_report_writes_summary_and_fig3_plots(tmp_path: Path) -> None:
    table = tmp_path / "results.csv"
    _table().to_csv(table, index=False)
    report.main([str(table), "--out", str(tmp_path / "out"), "--k", "10"])
    summary = (tmp_path / "out" / "summary.md").read_text()
    lines = [line for line in summary.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert {
        "dataset",
        "method",
        "method.n_epochs",
        "accelerator",
        "devices",
        "seeds",
        "NP@15",
        "RTA",
        "time (s)",
    } <= set(header)
    assert "method.perplexity" not in header  # it never varies
    assert len(lines) == 1 + 2 * 4  # per dataset: nomad at 3 settings, openTSNE
    nomad_500_1 = next(line for line in lines if "| mnist | nomad | 500 | cuda | 1 | 2 |" in line)
    assert "0.455 ± 0.007" in nomad_500_1  # NP@15 mean ± sd over the two seeds
    for name in ("np_vs_time.png", "rta_vs_time.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"


def test_fig3_series_split_by_device_setup() -> None:
    summary = report.summarize(_table(), ["np@15", "rta"])
    series = set(report.fig3_points(summary, "np@15")["series"])
    assert series == {"nomad (cuda x 1)", "nomad (cuda x 4)", "opentsne"}


@pytest.mark.parametrize("content", [None, "", "method,np@15\n"])
def test_report_explains_a_missing_or_empty_table(tmp_path: Path, capsys, content) -> None:
    table = tmp_path / "results.csv"
    if content is not None:
        table.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(table), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert str(table) in message and ("run.py" in message or "no rows" in message)
    assert not (tmp_path / "out").exists()


def test_report_names_the_available_k(tmp_path: Path, capsys) -> None:
    table = tmp_path / "results.parquet"
    _table().to_parquet(table)
    with pytest.raises(SystemExit):
        report.main([str(table), "--k", "30"])
    assert "np@10, np@15" in capsys.readouterr().err
