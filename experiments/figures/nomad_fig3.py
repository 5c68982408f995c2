"""nomad-projection Fig. 3 (sec. 4.1): NP@15 and random triplet accuracy against wall time for
NOMAD Projection on 1 and 2 devices, InfoNC-t-SNE, UMAP and openTSNE, each over a range of
epoch budgets, on MNIST and on a text-embedding set.

Every point is one ``run.py`` run: the figure launches a single Hydra sweep over the series
(``+experiment=fig3_<series>``: the method, its devices, and which of its parameters the budget
``epochs`` sets), the budgets, the datasets and the seeds, with the basic launcher (jobs one after
another, so timings do not compete for the cores). Its rows go to a table of its own in the
figure's Hydra run dir; ``nebench.report.write_report`` turns them into ``summary.md`` (mean ± sd
over seeds), ``np_vs_time.png`` and ``rta_vs_time.png`` in ``out_dir``, beside a copy of the table.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.figures._common import check_whole
from nebench.errors import InputError
from nebench.io import atomic_open
from nebench.report import write_report
from nebench.results import read_results

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_DIR = ROOT / "conf" / "experiment"
TABLE = "results.jsonl"


def make(cfg: DictConfig) -> pd.DataFrame:
    """Run the sweep, then the report into ``cfg.out_dir``; return the results table."""
    spec = cfg.figure
    _check(spec, cfg.metrics)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    table = run_dir / TABLE
    command = sweep_command(cfg, table, run_dir / "sweep")
    log.info("sweep: %s", " ".join(command))
    returncode = subprocess.run(command, cwd=ROOT, check=False).returncode
    if not table.exists():
        raise RuntimeError(f"the sweep (exit {returncode}) produced no rows; see {run_dir}/sweep")
    out = Path(cfg.out_dir)
    write_report(table, out, spec.k)
    with atomic_open(out / TABLE, "wb") as f, table.open("rb") as src:
        shutil.copyfileobj(src, f)
    if returncode:
        raise RuntimeError(
            f"some runs of the sweep failed (exit {returncode}); the report covers those that "
            f"finished. Their error.txt files are under {run_dir}/sweep."
        )
    return read_results(table)


def sweep_command(cfg: DictConfig, table: Path, sweep_dir: Path) -> list[str]:
    """``python run.py -m`` over series x epochs x datasets x seeds; the figure's ``metrics``
    and data / cache paths are passed on, then ``figure.run_overrides``."""
    spec = cfg.figure
    metrics = OmegaConf.to_container(cfg.metrics, resolve=True)
    return [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "+experiment=" + ",".join(spec.series),
        "epochs=" + ",".join(str(e) for e in spec.epochs),
        "dataset=" + ",".join(spec.datasets),
        "seed=" + ",".join(str(s) for s in spec.seeds),
        f"results_file={_value(str(table))}",
        f"paths.data_dir={_value(str(cfg.paths.data_dir))}",
        f"paths.cache_dir={_value(str(cfg.paths.cache_dir))}",
        *(f"metrics.{key}={_value(value)}" for key, value in metrics.items()),
        f"hydra.sweep.dir={_value(str(sweep_dir))}",
        *spec.run_overrides,
    ]


def _value(value: Any) -> str:
    """A Hydra override value: quoted strings, null, true/false, [a,b] lists."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def _check(spec: DictConfig, metrics: DictConfig) -> None:
    for key in ("series", "epochs", "datasets", "seeds"):
        if not _nonempty_list(spec.get(key)):
            raise InputError(f"figure.{key}={spec.get(key)!r} must be a non-empty list.")
    unknown = [s for s in spec.series if not (EXPERIMENT_DIR / f"{s}.yaml").is_file()]
    if unknown:
        raise InputError(
            f"figure.series names {', '.join(unknown)}, which has no conf/experiment/<series>.yaml; "
            "the series are run.py overlays such as fig3_nomad, fig3_opentsne."
        )
    for key, least in (("epochs", 1), ("seeds", 0)):
        for value in spec[key]:
            check_whole(f"figure.{key}", value, least)
    if spec.k not in list(metrics.ks):
        raise InputError(
            f"figure.k={spec.k} is not among metrics.ks={list(metrics.ks)}; add it, e.g. "
            f"'metrics.ks=[10,{spec.k}]'."
        )


def _nonempty_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
