"""One run: one method on one dataset, measured as the NOMAD paper measures it.

``run`` checks the whole request before any heavy work (method parameters, devices, metric
options, then the data), times ``method.fit_transform(X)`` (``fit_transform(X_encoder, X_knn=X)``
under ``dataset.encoder_input=raw``; from the array in memory to the 2-D embedding, kNN and
affinities included, metrics excluded; nomad-projection sec. 4.1), evaluates the embedding
and writes the run contract into the Hydra run dir:

* ``config.yaml``: the resolved config;
* ``embedding.npy``: n x 2 float32, rows in dataset order;
* ``embedding.png``: scatter plot coloured by label (density-shaded for large n);
* ``embedding.html``: interactive offline map (pan, zoom, hover, selection; ``nebench.map``);
* ``loss_log.csv``: only for methods that log losses per epoch (``umap_loss`` with
  ``sampling=edges loss_log_every=N``: purported, effective and actual loss, umap-true-loss);
* ``metrics.json``: flat metrics, ``time_total_s``, ``time_<phase>_s``, ``time_metrics_s``
  (not part of the total), ``peak_rss_gb``, ``n``, ``dim``, ``accelerator``, ``devices``;
  written last of the files, then one row is appended to the results table.

The result files are written into a hidden ``.incomplete/`` dir and moved in at the end,
``metrics.json`` last, so a run killed before then (SIGKILL, a node lost) leaves no file that
looks like a result and no row. Under ``torchrun`` every rank fits its share; only rank 0
writes ``config.yaml``, evaluates, writes the files and appends the row.

``main`` is the Hydra task: a failed run removes its result files, leaves ``error.txt`` and
exits non-zero (a job of a sweep returns instead, so the sweep goes on; ``SweepFailures``
makes the sweep exit non-zero at its end).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metrics import evaluate
from nebench.config import RUNTIME_KEYS
from nebench.datasets import Dataset, check_data, load_dataset
from nebench.devices import launch_rank, resolve_devices
from nebench.errors import InputError
from nebench.io import atomic_open
from nebench.map import write_map
from nebench.memory import PeakMemory
from nebench.method import EmbeddingMethod
from nebench.plotting import plot_embedding
from nebench.results import append_row, check_results_path, code_version, timestamp
from nomad.knn import threads

log = logging.getLogger(__name__)

#: files that only a successful run leaves (removed when a run fails)
RESULT_FILES = ("embedding.npy", "embedding.png", "embedding.html", "metrics.json", "loss_log.csv")
ERROR_FILE = "error.txt"
#: hidden dir in the run dir where the result files are written before they are moved in
STAGING_DIR = ".incomplete"
#: method config keys that are not constructor arguments
CONFIG_KEYS = ("name", "_target_")
#: constructor arguments that are not hyperparameters (kept out of the results table)
NOT_HYPERPARAMETERS = ("cache_dir",)
#: rows and step cap of the untimed warm-up fit, and what it always runs with
WARM_UP_ROWS = 300
WARM_UP_STEPS = 2
WARM_UP_FIXED = {"devices": 1, "cache_dir": None}
#: arguments of ``metrics.evaluate`` the runner fills in itself
EVALUATE_INPUTS = ("X", "Y", "y", "n_train", "seed")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


#: key -> (check, rule, example value) for hyperparameters shared by several methods
HYPERPARAMETER_RULES: dict[str, tuple[Callable[[Any], bool], str, Any]] = {
    "n_epochs": (
        lambda v: _is_count(v) or (isinstance(v, list) and bool(v) and all(map(_is_count, v))),
        "a whole number >= 0 (t-SimCNE: one per stage, e.g. [1000, 50, 450])",
        500,
    ),
    "n_iter": (_is_count, "a whole number >= 0", 500),
    "n_neighbors": (lambda v: _is_count(v) and v >= 1, "a whole number >= 1", 15),
    "learning_rate": (lambda v: v == "auto" or _is_positive(v), "a number > 0 or auto", "auto"),
}


@dataclass(frozen=True)
class Plan:
    """A checked request: the built (not yet fitted) method and how to run and measure it."""

    name: str
    method: EmbeddingMethod
    hyperparameters: dict[str, Any]
    accelerator: str
    devices: int
    metric_options: dict[str, Any]
    min_points: int
    #: the constructor arguments ``method`` was built with (``warm_up`` builds a copy)
    kwargs: dict[str, Any]


def prepare(cfg: DictConfig) -> Plan:
    """Check everything that needs no data and build the method (its ``__init__`` does no work)."""
    seed = cfg.seed
    if not _is_count(seed):
        raise InputError(f"seed={seed!r} must be a whole number >= 0; e.g. seed=0.")
    method_cfg = _container(cfg.method, "method")
    name = str(method_cfg.get("name", "?"))
    cls = _method_class(name, method_cfg.get("_target_"))
    hyperparameters = {k: v for k, v in method_cfg.items() if k not in CONFIG_KEYS}
    _check_hyperparameters(name, hyperparameters)
    accelerator, devices = resolve_devices(_container(cfg.trainer, "trainer"), cls, name)

    accepted, open_ended = constructor_parameters(cls)
    runtime = {"random_state": seed, "accelerator": accelerator, "devices": devices}
    kwargs = {**hyperparameters, **{k: v for k, v in runtime.items() if k in accepted}}
    if "image_shape" in accepted and kwargs.get("image_shape") in (None, "auto"):
        # image methods (t-SimCNE) get the dataset's shape; a PCA'd dataset fails in the fit
        shape = (cfg.get("dataset") or {}).get("image_shape")
        kwargs["image_shape"] = None if shape is None else [int(s) for s in shape]
    unknown = [] if open_ended else sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InputError(
            f"method {name!r} has no parameter {', '.join(unknown)}; its parameters are: "
            f"{', '.join(p for p in accepted if p not in RUNTIME_KEYS)}. Remove or rename the "
            "method.<key> override (or the key in its conf/method/ file)."
        )
    parametric = hyperparameters.get("parametric", False) or getattr(cls, "always_parametric", False)
    if cfg.get("holdout", False) and not (parametric or cls.transforms_new_points):
        fix = ("set method.parametric=true, use" if "parametric" in accepted else "use")
        raise InputError(
            f"holdout=true embeds the test split with transform, which method {name!r} "
            f"{'offers only as a parametric model' if 'parametric' in accepted else 'does not offer'}: "
            f"{fix} an engine method (their transform places new points in a fixed map) or "
            "tsimcne, or set holdout=false."
        )
    metric_options = _container(cfg.metrics, "metrics")
    _check_metric_options(metric_options)
    try:
        method = cls(**kwargs)
    except TypeError as exc:  # __init__ only stores its arguments: this is a config mismatch
        raise InputError(f"method {name!r}: {exc}; fix its conf/method/ file.") from exc

    n_neighbors = kwargs.get("n_neighbors")
    return Plan(
        name=name,
        method=method,
        hyperparameters=hyperparameters,
        accelerator=accelerator,
        devices=devices,
        metric_options=metric_options,
        min_points=n_neighbors + 1 if n_neighbors is not None else 2,
        kwargs=kwargs,
    )


def warm_up(plan: Plan, X: np.ndarray, seed: int) -> float:
    """Fit a copy of the method, untimed, on ``WARM_UP_ROWS`` seeded rows of X with its step
    counts capped at ``WARM_UP_STEPS``; return the seconds it took.

    Its purpose is one-off work that is not the method's: numba compiling umap-learn's,
    pynndescent's and our kernels on their first call in a process (umap-learn's ~55 s would
    otherwise land in its total while ours hide in numba's disk cache), torch's lazy
    initialisation, imports done on first use. Every method gets the same treatment, so
    ``time_total_s`` compares like with like; the warm-up's time is reported in its own column
    (``time_warmup_s``). The copy runs on one device in this process and uses no kNN cache. A
    failure is logged and ignored: the timed fit meets the same problem and reports it.
    """
    rows = np.sort(np.random.default_rng(seed).permutation(len(X))[:WARM_UP_ROWS])
    kwargs = {key: _capped_steps(key, value) for key, value in plan.kwargs.items()}
    kwargs.update({k: v for k, v in WARM_UP_FIXED.items() if k in plan.kwargs})
    start = time.perf_counter()
    try:
        type(plan.method)(**kwargs).fit_transform(np.asarray(X[rows]))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("warm-up fit of %s failed (%s); the timed fit follows anyway", plan.name, exc)
    seconds = time.perf_counter() - start
    log.info("warm-up (one-off compilation, not timed): %.1f s", seconds)
    return seconds


def _capped_steps(key: str, value: Any) -> Any:
    """``value`` with each step count at most ``WARM_UP_STEPS`` if ``key`` counts steps."""
    if not key.endswith(("epochs", "_iter")):
        return value
    if isinstance(value, list):
        return [min(v, WARM_UP_STEPS) if _is_count(v) else v for v in value]
    return min(value, WARM_UP_STEPS) if _is_count(value) else value


def _fit_with_holdout(plan: Plan, data, cfg: DictConfig) -> tuple[np.ndarray, float, dict[str, float]]:
    """Fit on the train split, embed the test split with ``transform`` (parametric methods,
    and the engine's free methods, whose ``transform`` places new points in the fixed map).

    Returns the embedding of all rows, the fit time, and ``heldout_*`` metrics: the run's
    metrics on the held-out points alone (no kNN accuracy), the time of ``transform`` and its
    speed-up over the fit.
    """
    n_train = data.n_train
    if n_train >= len(data.X):
        raise InputError(f"holdout=true needs a test split, but dataset {data.name!r} has none "
                         "(n_train = n): use a dataset with one, such as mnist")
    start = time.perf_counter()
    Y_train = _fit_rows(plan, data, slice(0, n_train))
    time_fit = time.perf_counter() - start
    start = time.perf_counter()
    Y_test = plan.method.transform(_encoder_rows(data)[n_train:])
    time_transform = time.perf_counter() - start
    Y_test = check_embedding(Y_test, len(data.X) - n_train, plan.name)
    scores = evaluate(data.X[n_train:], Y_test, None, None, **plan.metric_options, seed=cfg.seed)
    heldout = {f"heldout_{k}": v for k, v in scores.items()}
    heldout.update(time_transform_s=time_transform, transform_speedup=time_fit / max(time_transform, 1e-9))
    return np.concatenate([np.asarray(Y_train, dtype=np.float32), Y_test]), time_fit, heldout


def _fit_rows(plan: Plan, data: Dataset, rows: slice) -> np.ndarray:
    """``fit_transform`` on ``rows`` of the data; where the dataset gives the encoder its own
    rows (``dataset.encoder_input=raw``), the encoder reads them and the kNN graph comes from X."""
    if data.X_encoder is None:
        return plan.method.fit_transform(data.X[rows])
    return plan.method.fit_transform(data.X_encoder[rows], X_knn=data.X[rows])


def _encoder_rows(data: Dataset) -> np.ndarray:
    """The rows a parametric method's encoder reads (``transform``'s input)."""
    return data.X if data.X_encoder is None else data.X_encoder


def _check_encoder_input(cfg: DictConfig, plan: Plan) -> None:
    """``dataset.encoder_input=raw`` is for parametric methods only (checked before loading)."""
    dataset = cfg.get("dataset") or {}
    if dataset.get("encoder_input", "pca") == "raw" and not plan.hyperparameters.get("parametric"):
        raise InputError(f"dataset.encoder_input=raw feeds a parametric method's encoder, but {plan.name} "
                         "is not parametric: set method.parametric=true (engine methods), or "
                         "dataset.encoder_input=pca")


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the configured method on the configured dataset; write the run contract into
    ``out_dir``, append the results row, and return the contents of ``metrics.json``."""
    resolved = _container(cfg, "the config")
    rank, world = launch_rank()
    if rank == 0:
        with atomic_open(out_dir / "config.yaml", "w") as f:
            f.write(OmegaConf.to_yaml(resolved))
    results_file = check_results_path(cfg.results_file)
    plan = prepare(cfg)
    _check_encoder_input(cfg, plan)

    holdout = bool(cfg.get("holdout", False))
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, cfg.seed, fit_on_train=holdout)
    check_data(data.X, min_points=plan.min_points)
    n, dim = data.X.shape
    log.info("%s on %s: n=%d, dim=%d", plan.name, data.name, n, dim)

    trainer = _container(cfg.trainer, "trainer")
    time_warmup = float("nan")
    if trainer.get("warmup", True) and world == 1:  # a torchrun rank must not fit alone
        time_warmup = warm_up(plan, data.X, cfg.seed)
    heldout: dict[str, float] = {}
    with PeakMemory() as peak:
        if holdout:
            Y, time_total, heldout = _fit_with_holdout(plan, data, cfg)
        else:
            start = time.perf_counter()
            Y = _fit_rows(plan, data, slice(None))
            time_total = time.perf_counter() - start
    if rank != 0:  # every rank holds the whole embedding; one evaluates and records it
        log.info("rank %d of %d: fit done; rank 0 evaluates, writes the run's files and "
                 "appends its row", rank, world)
        return {}
    Y = check_embedding(Y, n, plan.name)

    start = time.perf_counter()
    scores = evaluate(data.X, Y, data.y, data.n_train, **plan.metric_options, seed=cfg.seed)
    time_metrics = time.perf_counter() - start
    phases = getattr(plan.method, "timings_", {})
    metrics = _plain(
        {
            **scores,
            **heldout,
            "time_total_s": time_total,
            **{f"time_{phase}_s": seconds for phase, seconds in phases.items()},
            "time_metrics_s": time_metrics,
            "time_warmup_s": time_warmup,
            "peak_rss_gb": peak.gb,
            "n": n,
            "dim": dim,
            "accelerator": plan.accelerator,
            "devices": plan.devices,
            # which neighbour search the fit used, and whether the engine read its index from
            # the cache (then time_total_s holds no kNN search: compare it with care)
            "knn_index": getattr(plan.method, "knn_index_", None),
            "knn_cached": bool(getattr(plan.method, "index_cached_", False)),
            "cpus": threads(),  # the cores this run could use ("-1" threads)
        }
    )

    # result files go to a hidden staging dir first: a run killed while writing them (a plot
    # of 10^6 points takes seconds) leaves nothing in out_dir that looks like a result
    stage = out_dir / STAGING_DIR
    stage.mkdir(exist_ok=True)
    with atomic_open(stage / "embedding.npy") as f:
        np.save(f, Y)
    loss_log = getattr(plan.method, "loss_log_", None)
    if loss_log:  # umap_loss with sampling=edges: umap-true-loss Fig. 3's curves
        with atomic_open(stage / "loss_log.csv", "w") as f:
            pd.DataFrame(loss_log).to_csv(f, index=False)
    title = f"{plan.name} on {data.name} (n={n:,}, seed {cfg.seed}, {time_total:.1f} s)"
    plot_embedding(Y, stage / "embedding.png", data.y, data.label_names, title)
    write_map(Y, stage / "embedding.html", data.y, data.label_names, data.text, title, data.name)
    with atomic_open(stage / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    _publish(stage, out_dir)
    log.info("result:\n%s", result_table(plan.name, data.name, metrics))
    row = {
        "method": plan.name,
        "dataset": data.name,
        "n": n,
        "dim": dim,
        "seed": cfg.seed,
        **{
            f"method.{key}": value
            for key, value in plan.hyperparameters.items()
            if key not in NOT_HYPERPARAMETERS
        },
        **{f"dataset.{key}": value for key, value in resolved["dataset"].items() if key != "name"},
        "holdout": bool(cfg.get("holdout", False)),
        **{f"metrics.{key}": value for key, value in plan.metric_options.items()},
        "trainer.warmup": bool(trainer.get("warmup", True)),
        **metrics,
        "code_version": code_version(),
        "run_dir": str(out_dir),
        "timestamp": timestamp(),
    }
    append_row(results_file, row)
    return metrics


def main(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra task: ``run`` into the job's output dir; on failure leave ``error.txt`` instead."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        return run(cfg, out_dir)
    except BaseException as exc:
        _record_failure(out_dir, exc)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
            raise
        if hydra_cfg.mode == RunMode.RUN:
            sys.exit(1)
        return None


class SweepFailures(Callback):
    """Hydra callback: a sweep in which any job failed exits non-zero once all jobs are done.

    Jobs report failure through ``error.txt`` in their run dirs, which works alike for the
    basic, joblib and submitit launchers (jobs may run in other processes or on other hosts).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._before = _error_files(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        errors = _error_files(Path(config.hydra.sweep.dir))
        failed = sorted(path for path, mtime in errors.items() if self._before.get(path) != mtime)
        if failed:
            log.error(
                "%d job(s) of the sweep failed:\n%s",
                len(failed),
                "\n".join(f"  {path.parent}: {path.read_text().strip()}" for path in failed),
            )
            sys.exit(1)


def result_table(method: str, dataset: str, metrics: dict[str, Any]) -> str:
    """The short result table printed after a run."""
    row = {"method": method, "dataset": dataset, "n": metrics["n"]}
    for key, value in metrics.items():
        if key.startswith("np@") and not key.endswith("_ci95"):
            row[key.upper()] = value
    row["RTA"] = metrics.get("rta")
    if "knn_acc" in metrics:
        row["knn_acc"] = metrics["knn_acc"]
    row["time (s)"] = metrics["time_total_s"]
    return pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.4f}")


def _container(node: Any, what: str) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        raise InputError(
            f"{what} does not resolve: {exc}. Fix the override or config value it names "
            "(or set the environment variable it reads)."
        ) from exc


def _method_class(name: str, target: str | None) -> type[EmbeddingMethod]:
    if not target:
        raise InputError(
            f"the config of method {name!r} has no _target_; add `_target_: package.module.Class` "
            "(an nebench.method.EmbeddingMethod subclass) to its file in conf/method/."
        )
    try:
        cls = get_class(target)
    except Exception as exc:
        raise InputError(
            f"method {name!r}: cannot import its _target_ {target} ({exc}); fix _target_ in its "
            "conf/method/ file or install the package it needs."
        ) from exc
    if not issubclass(cls, EmbeddingMethod):
        raise InputError(
            f"method {name!r}: {target} is not an nebench.method.EmbeddingMethod; point _target_ "
            "at a class that follows the method contract (nebench/method.py)."
        )
    return cls


def _check_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> None:
    for key in RUNTIME_KEYS:
        if key in hyperparameters:
            raise InputError(
                f"method {name!r} sets {key} in its config, but the harness sets it (random_state "
                f"from seed, accelerator and devices from trainer); remove method.{key} and use "
                "seed=... or trainer.accelerator=... / trainer.devices=... instead."
            )
    for key, (ok, rule, example) in HYPERPARAMETER_RULES.items():
        value = hyperparameters.get(key)
        if value is not None and not ok(value):
            raise InputError(
                f"method.{key}={value!r} for method {name!r}: must be {rule}; "
                f"e.g. method.{key}={example}."
            )


def constructor_parameters(cls: type) -> tuple[list[str], bool]:
    """Keyword parameters of ``cls(...)``, following ``**kwargs`` up the MRO (subclasses that
    forward ``**kwargs`` to their base's ``__init__``); the flag is True when the chain ends in
    ``**kwargs`` (any keyword may be accepted: the constructor decides)."""
    names: list[str] = []
    for klass in cls.__mro__[:-1]:  # not object
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        names += [
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names, False
    return names, True


def _check_metric_options(options: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(evaluate).parameters if p not in EVALUATE_INPUTS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"metrics has no option {', '.join(unknown)} (the runner sets X, Y, y, n_train and "
            f"seed itself); its options are: {', '.join(accepted)}. Remove or rename the "
            "metrics.<key> override."
        )


def check_embedding(Y: Any, n: int, name: str) -> np.ndarray:
    Y = np.asarray(Y)
    if Y.shape != (n, 2):
        raise RuntimeError(f"method {name!r} returned an array of shape {Y.shape}, not ({n}, 2)")
    bad = int(np.count_nonzero(~np.isfinite(Y).all(axis=1)))
    if bad:
        raise RuntimeError(
            f"method {name!r} returned NaN/inf in {bad} of {n} rows: the optimisation diverged; "
            "lower method.learning_rate or check the scale of the data"
        )
    return Y.astype(np.float32, copy=False)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars as Python scalars (JSON and table cells)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}


def _publish(stage: Path, out_dir: Path) -> None:
    """Move the staged result files into the run dir, ``metrics.json`` last (each move is an
    atomic rename), and remove the staging dir."""
    for path in sorted(stage.iterdir(), key=lambda p: p.name == "metrics.json"):
        os.replace(path, out_dir / path.name)
    stage.rmdir()


def _record_failure(out_dir: Path, exc: BaseException) -> None:
    shutil.rmtree(out_dir / STAGING_DIR, ignore_errors=True)
    for name in RESULT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    if isinstance(exc, InputError):
        message = str(exc)
        log.error("run failed: %s", message)
    else:
        message = f"{type(exc).__name__}: {exc} (traceback in the log in {out_dir})"
        log.error("run failed: %s", message, exc_info=exc)
    with atomic_open(out_dir / ERROR_FILE, "w") as f:
        f.write(message + "\n")


def _error_files(sweep_dir: Path) -> dict[Path, int]:
    if not sweep_dir.exists():
        return {}
    return {path: path.stat().st_mtime_ns for path in sweep_dir.rglob(ERROR_FILE)}
