"""The results table: one row per successful run, CSV or parquet (chosen by the file extension).

Appending takes ``filelock.FileLock`` on ``<file>.lock``, reads the table, concatenates the new
row (columns are the union over all rows, since methods differ in hyperparameters) and replaces
the file atomically, so concurrent jobs of a sweep never lose or tear a row.
"""

from __future__ import annotations

import json
import logging
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
from nebench.io import atomic_open

log = logging.getLogger(__name__)

FORMATS = (".csv", ".parquet")
#: seconds to wait for another job's append before giving up
LOCK_TIMEOUT_S = 600.0


def check_results_path(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if its extension names a supported table format."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise InputError(
            f"results_file={path} has an unsupported extension {path.suffix!r}; "
            f"use one of {', '.join(FORMATS)} (e.g. results_file=results/results.csv)."
        )
    return path


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Load the results table at ``path`` (CSV or parquet by extension)."""
    path = check_results_path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def append_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` (column -> scalar) to the table at ``path``, creating it if needed."""
    path = check_results_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([{key: _scalar(value) for key, value in row.items()}])
    with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
        table = pd.concat([read_results(path), new], ignore_index=True) if path.exists() else new
        with atomic_open(path, "wb") as f:
            if path.suffix == ".parquet":
                _parquet_safe(table).to_parquet(f, index=False)
            else:
                table.to_csv(f, index=False)
    log.info("appended a row to %s (%d rows)", path, len(table))


def _scalar(value: Any) -> Any:
    """A table cell: scalars as they are, lists and dicts as JSON strings."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _parquet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Cast object columns that mix types (e.g. learning_rate 'auto' and 200.0) to strings."""
    table = table.copy()
    for column in table.columns[table.dtypes == object]:
        values = table[column].dropna()
        if values.map(type).nunique() > 1:
            table[column] = table[column].map(lambda v: v if pd.isna(v) else str(v))
    return table


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
