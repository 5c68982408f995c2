"""The kernel benchmark runs both compiled loops and prints its table (tiny n; no timing asserted)."""

from __future__ import annotations

import sys

from experiments import kernel_bench


def test_kernel_bench_prints_a_row_per_loop(monkeypatch, capsys, one_thread):
    monkeypatch.setattr(sys, "argv", ["kernel_bench", "--n", "2000", "--repeats", "1"])
    kernel_bench.main()
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("| heads", "| edges"))]
    assert [r.split("|")[1].strip() for r in rows] == ["heads", "edges"]
    assert all(float(r.split("|")[3]) > 0 for r in rows)
