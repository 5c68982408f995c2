"""The kernel benchmark runs both compiled loops and prints its table (tiny n; no timing asserted)."""

from __future__ import annotations

import sys

from experiments import kernel_bench


def _rows(capsys) -> list[list[str]]:
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("| heads", "| edges"))]
    return [[c.strip() for c in r.split("|")[1:-1]] for r in rows]


def test_kernel_bench_prints_a_row_per_loop(monkeypatch, capsys, one_thread):
    monkeypatch.setattr(sys, "argv", ["kernel_bench", "--n", "2000", "--repeats", "1", "--noise-group", "1", "4"])
    kernel_bench.main()
    cells = _rows(capsys)
    assert [(c[0], c[2]) for c in cells] == [("heads", "1"), ("heads", "4"), ("edges", "-")]
    assert all(float(c[5]) > 0 for c in cells)


def test_the_cell_layout_times_both_noise_domains(monkeypatch, capsys, one_thread):
    argv = ["kernel_bench", "--n", "20000", "--repeats", "1", "--noise-group", "16", "--layout", "cells",
            "--group-domain", "cell", "all", "--no-edges"]
    monkeypatch.setattr(sys, "argv", argv)
    kernel_bench.main()
    cells = _rows(capsys)
    assert [(c[3], c[4]) for c in cells] == [
        ("one cell", "all points"), ("all rows", "all points"),
        ("one cell", "own cell + cell means"), ("all rows", "own cell + cell means")]
    assert all(float(c[5]) > 0 for c in cells)
