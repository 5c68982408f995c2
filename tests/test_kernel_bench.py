"""The kernel benchmark runs both compiled loops and prints its table (tiny n; no timing asserted)."""

from __future__ import annotations

import sys

from experiments import kernel_bench


def test_kernel_bench_prints_a_row_per_loop(monkeypatch, capsys, one_thread):
    monkeypatch.setattr(sys, "argv", ["kernel_bench", "--n", "2000", "--repeats", "1", "--noise-group", "1", "4"])
    kernel_bench.main()
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("| heads", "| edges"))]
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
    assert [(c[0], c[2]) for c in cells] == [("heads", "1"), ("heads", "4"), ("edges", "-")]
    assert all(float(c[3]) > 0 for c in cells)
