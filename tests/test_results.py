"""The results table (atomic, concurrent appends), atomic writes, and the report command."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nebench import report, results
from nebench.errors import InputError
from nebench.io import atomic_open
from nebench.plotting import in_budget_order, plot_embedding
from nebench.results import append_row, code_version, read_results

WORKERS, ROWS_EACH = 8, 5
PAYLOAD = "x" * 2000  # long cells, so a torn write would show


def _append_rows(path: str, worker: int) -> None:
    for i in range(ROWS_EACH):
        append_row(path, {"worker": worker, "i": i, f"method.p{worker % 3}": i, "payload": PAYLOAD})


def test_concurrent_appends_keep_every_row_intact(tmp_path: Path) -> None:
    path = str(tmp_path / "results.jsonl")
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


def test_an_append_never_rewrites_earlier_rows(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    append_row(path, {"method": "a", "np@10": 0.5})
    first = path.read_bytes()
    inode = path.stat().st_ino
    append_row(path, {"method": "b", "method.other": 1})
    assert path.read_bytes().startswith(first) and path.stat().st_ino == inode


def test_rows_keep_types_lists_and_mixed_columns(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_row(path, {"method": "a", "method.learning_rate": "auto", "method.ks": [10, 15]})
    append_row(path, {"method": "b", "method.learning_rate": 200.0, "np@15": 0.5})
    append_row(path, {"method": "c", "code_version": "0123", "dataset.label": "007", "n": 5})
    table = read_results(path)
    assert table["method"].tolist() == ["a", "b", "c"]
    assert table["method.ks"].iloc[0] == "[10, 15]"
    assert table["method.learning_rate"].iloc[0] == "auto"
    assert table["method.learning_rate"].iloc[1] == 200.0
    assert pd.isna(table["np@15"].iloc[0]) and table["np@15"].iloc[1] == 0.5
    # strings that look like numbers stay strings: no lost leading zeros
    assert table["code_version"].iloc[2] == "0123" and table["dataset.label"].iloc[2] == "007"
    assert table["code_version"].dtype == "string" and table["dataset.label"].dtype == "string"
    assert table["n"].dtype == "Int64" and table["n"].iloc[2] == 5


def test_a_row_that_breaks_the_schema_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="code_version"):
        append_row(tmp_path / "r.jsonl", {"method": "a", "code_version": 123})
    with pytest.raises(TypeError, match="seed"):
        append_row(tmp_path / "r.jsonl", {"method": "a", "seed": True})
    assert not (tmp_path / "r.jsonl").exists()


def _append_forever(path: str) -> None:
    i = 0
    while True:
        append_row(path, {"i": i, "payload": "y" * 200_000})
        i += 1


def test_a_writer_killed_mid_append_leaves_every_completed_row(tmp_path: Path) -> None:
    """SIGKILL a writer of large rows at random moments; whatever it left, every complete row
    reads back intact, and the next append lands on its own line."""
    path = tmp_path / "r.jsonl"
    append_row(path, {"i": -1, "payload": "before"})
    ctx = multiprocessing.get_context("fork")
    for delay in (0.05, 0.13, 0.21):
        proc = ctx.Process(target=_append_forever, args=(str(path),))
        lines = path.read_bytes().count(b"\n")
        proc.start()
        deadline = time.monotonic() + 30
        while path.read_bytes().count(b"\n") <= lines and time.monotonic() < deadline:
            time.sleep(0.01)  # until it has completed a row of its own
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    # and the torn line such a kill can leave, made by hand (a write cut short)
    with open(path, "ab") as f:
        f.write(b'{"i": 999, "payload": "tor')
    append_row(path, {"i": -2, "payload": "after"})
    table = read_results(path)
    assert table["payload"].iloc[0] == "before" and table["payload"].iloc[-1] == "after"
    middle = table.iloc[1:-1]
    assert len(middle) >= 3  # each killed writer had written at least one row
    assert (middle["payload"] == "y" * 200_000).all() and 999 not in set(table["i"])
    assert len(path.read_bytes().splitlines()) >= len(table)


def test_unknown_table_format_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.csv.*results\.jsonl"):
        append_row(tmp_path / "results.csv", {"a": 1})


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
            for epochs, devices, seconds in ((100, 1, 10.0), (500, 1, 40.0), (500, 4, 15.0)):
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
                        "time_total_s": seconds + seed,
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


def _write(table: pd.DataFrame, path: Path) -> Path:
    for row in table.to_dict("records"):
        append_row(path, {k: v for k, v in row.items() if not pd.isna(v)})
    return path


def test_report_writes_summary_and_fig3_plots(tmp_path: Path) -> None:
    table = _write(_table(), tmp_path / "results.jsonl")
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
    nomad_500_1 = next(line for line in lines if "| mnist | nomad | cuda | 1 | 500 | 2 |" in line)
    assert "0.455 ± 0.007" in nomad_500_1  # NP@15 mean ± sd over the two seeds
    for name in ("np_vs_time.png", "rta_vs_time.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == len(_table())


@pytest.mark.parametrize(
    "key, a, b",
    [("dataset.n", 1000, 2000), ("holdout", False, True), ("metrics.n_eval", 5000, None),
     ("code_version", "abc", "abd"), ("dataset.pca", 50, None), ("knn_cached", False, True),
     ("cpus", 2, 16)],
)  # fmt: skip
def test_report_keeps_runs_apart_that_differ_in_more_than_the_seed(key, a, b) -> None:
    base = {"method": "nomad", "dataset": "mnist", "np@10": 0.4, "rta": 0.6, "time_total_s": 1.0}
    table = pd.DataFrame(
        [{**base, "seed": seed, key: value} for value in (a, b) for seed in (0, 1)]
    )
    summary = report.summarize(table, ["np@10", "rta"])
    assert len(summary) == 2 and summary["seeds"].tolist() == [2, 2]
    assert key in summary.columns  # the key that tells the rows apart is shown
    lines = report.markdown(summary, ["np@10"]).splitlines()
    assert key in lines[0] and len(lines) == 4


def test_fig3_series_join_in_budget_order_not_time() -> None:
    """A first run inflated by compilation (50 epochs slower than 100) must not zigzag."""
    rows = [
        {"method": "nomad", "dataset": "mnist", "seed": 0, "method.n_epochs": e,
         "np@15": q, "rta": 0.6, "time_total_s": t}
        for e, q, t in ((50, 0.27, 30.0), (100, 0.31, 12.0), (200, 0.33, 20.0))
    ]  # fmt: skip
    points = report.fig3_points(report.summarize(pd.DataFrame(rows), ["np@15", "rta"]), "np@15")
    assert in_budget_order(points)["budget"].tolist() == [50, 100, 200]
    tsimcne = pd.DataFrame([{**rows[0], "method.n_epochs": "[10, 1, 5]"}])
    assert report.summarize(tsimcne, ["np@15"])["budget"].tolist() == [16]


def test_a_seed_run_twice_counts_once_and_the_runs_are_shown() -> None:
    base = {"method": "nomad", "dataset": "mnist", "np@10": 0.4, "rta": 0.6, "time_total_s": 1.0}
    table = pd.DataFrame([{**base, "seed": seed} for seed in (0, 0, 1)])
    summary = report.summarize(table, ["np@10"])
    assert (summary["seeds"].tolist(), summary["runs"].tolist()) == ([2], [3])
    header = report.markdown(summary, ["np@10"]).splitlines()[0]
    assert "| seeds | runs |" in header
    once = report.summarize(table.drop_duplicates("seed"), ["np@10"])
    assert "runs" not in report.markdown(once, ["np@10"]).splitlines()[0]


def test_fig3_series_of_cached_index_runs_stand_apart() -> None:
    rows = [{"method": "nomad", "dataset": "mnist", "seed": 0, "method.n_epochs": e, "knn_cached": c,
             "np@15": 0.3, "rta": 0.6, "time_total_s": 1.0} for e, c in ((50, False), (100, True))]
    points = report.fig3_points(report.summarize(pd.DataFrame(rows), ["np@15", "rta"]), "np@15")
    assert set(points["series"]) == {"nomad", "nomad (kNN index cached)"}
    all_cached = pd.DataFrame(rows).assign(knn_cached=True)  # no column varies: still labelled
    points = report.fig3_points(report.summarize(all_cached, ["np@15", "rta"]), "np@15")
    assert set(points["series"]) == {"nomad (kNN index cached)"}


def test_fig3_series_split_by_device_setup() -> None:
    summary = report.summarize(_table(), ["np@15", "rta"])
    series = set(report.fig3_points(summary, "np@15")["series"])
    assert series == {"nomad (cuda x 1)", "nomad (cuda x 4)", "opentsne"}


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_report_explains_a_missing_or_empty_table(tmp_path: Path, capsys, content) -> None:
    table = tmp_path / "results.jsonl"
    if content is not None:
        table.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(table), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert str(table) in message and ("run.py" in message or "no rows" in message)
    assert not (tmp_path / "out").exists()


def test_report_names_the_available_k(tmp_path: Path, capsys) -> None:
    table = _write(_table(), tmp_path / "results.jsonl")
    with pytest.raises(SystemExit):
        report.main([str(table), "--k", "30"])
    assert "np@10, np@15" in capsys.readouterr().err
