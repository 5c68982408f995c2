"""The results table: one row per successful run, an append-only JSON Lines file.

Each row is one line, one JSON object, appended by a single ``write`` on a file opened with
``O_APPEND``, under ``filelock.FileLock`` on ``<file>.lock`` and followed by ``fsync``. An append
never reads or rewrites the rows before it, so it costs O(1) whatever the table's size, and
concurrent jobs of a sweep never lose or tear a row. A writer killed mid-append (SIGKILL, power
loss) can leave at most its own last line incomplete: the next append starts on a fresh line
and ``read_results`` skips such a line with a warning, so every completed row stays readable.

Types. JSON keeps each value's type, so a string that looks like a number (a ``git describe``
of digits, a label "007") stays a string; lists and dicts are stored as JSON strings (one
hashable cell). The columns every row has are typed by ``SCHEMA``: ``append_row`` refuses a row
that breaks it, and ``read_results`` gives those columns fixed pandas dtypes. The other columns
(``method.*``, ``dataset.*``, ``metrics.*``, the metrics and times) keep their JSON types; a
column whose values are all strings is a string column.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from nebench.errors import InputError

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
#: seconds to wait for another job's append before giving up
LOCK_TIMEOUT_S = 600.0
#: the columns of every row, with their Python types and pandas dtypes
SCHEMA: dict[str, tuple[type, str]] = {
    "method": (str, "string"),
    "dataset": (str, "string"),
    "n": (int, "Int64"),
    "dim": (int, "Int64"),
    "seed": (int, "Int64"),
    "holdout": (bool, "boolean"),
    "accelerator": (str, "string"),
    "devices": (int, "Int64"),
    "time_total_s": (float, "Float64"),
    "code_version": (str, "string"),
    "run_dir": (str, "string"),
    "timestamp": (str, "string"),
}


def check_results_path(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it names a JSON Lines table."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise InputError(
            f"results_file={path} has the extension {path.suffix!r}; the results table is an "
            f"append-only JSON Lines file: use {SUFFIX} (e.g. results_file=results/results.jsonl). "
            "For a CSV or parquet copy, read it with nebench.results.read_results and save that "
            "(python -m nebench.report also writes runs.csv)."
        )
    return path


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Load the table at ``path``: one row per complete line, ``SCHEMA`` columns typed."""
    path = check_results_path(path)
    records, torn = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                torn += 1
    if torn:
        log.warning(
            "%s: skipped %d incomplete line(s) left by a writer that was killed mid-append",
            path,
            torn,
        )
    table = pd.DataFrame.from_records(records)
    for column in table.columns:
        if column in SCHEMA:
            table[column] = table[column].astype(SCHEMA[column][1])
        elif table[column].map(lambda v: isinstance(v, str) or _missing(v)).all():
            table[column] = table[column].astype("string")
    return table


def append_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` (column -> scalar) to the table at ``path``, creating it if needed."""
    path = check_results_path(path)
    _check_schema(row)
    line = json.dumps({key: _cell(value) for key, value in row.items()}) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a killed writer's torn line
                line = "\n" + line
            data = line.encode()
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    log.info("appended a row to %s", path)


def _check_schema(row: Mapping[str, Any]) -> None:
    for column, (kind, _) in SCHEMA.items():
        value = row.get(column)
        if value is None:
            continue
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise TypeError(
                f"results row: {column}={value!r} is a {type(value).__name__}, the schema "
                f"says {kind.__name__} (nebench.results.SCHEMA)"
            )


def _cell(value: Any) -> Any:
    """A table cell: JSON scalars as they are, lists and dicts as JSON strings."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty`` of the checkout, else the installed package version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return metadata.version("nebench")
        except metadata.PackageNotFoundError:
            return "unknown"


def timestamp() -> str:
    """Local time with its UTC offset, ISO 8601, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")
