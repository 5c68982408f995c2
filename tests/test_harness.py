"""The harness end to end: configs compose, a run writes its contract, sweeps run in parallel
without losing rows, and bad requests fail early, cleanly and without leaving results."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nebench.devices import multi_device_methods, resolve_devices
from nebench.errors import InputError
from nebench.method import EmbeddingMethod
from nebench.results import read_results
from nebench.runner import RESULT_FILES, constructor_parameters, prepare, run

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PROJECT_PACKAGES = ("nomad", "nebench", "baselines", "metrics", "experiments")
CONTRACT = ("embedding.npy", "metrics.json", "config.yaml", "embedding.png", "run.log")


def options(group: str) -> list[str]:
    """Selectable configs of a group (``_name.yaml`` files are shared parts, not options)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def composed(overrides: list[str]) -> DictConfig:
    """Config with its ``hydra`` node for ``overrides``; HydraConfig set so ``${hydra:...}``
    resolves."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def task_config(overrides: list[str]) -> DictConfig:
    """The config a Hydra task receives (no ``hydra`` node)."""
    cfg = composed(overrides)
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``python run.py args`` with every output path inside ``tmp_path``."""
    env = {
        **os.environ,
        "NEBENCH_RESULTS_DIR": str(tmp_path / "results"),
        "NEBENCH_CACHE_DIR": str(tmp_path / "cache"),
        "HYDRA_FULL_ERROR": "0",
    }
    dirs = [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args, *dirs],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )


def rows(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "results" / "results.jsonl"
    return read_results(path) if path.exists() else pd.DataFrame()


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        f"{group}={name}"
        for group in ("dataset", "trainer", "metrics", "paths")
        for name in options(group)
    ]
    + [f"hydra/launcher={name}" for name in ("parallel", "slurm", "joblib", "basic")],
)
def test_every_config_group_composes_and_resolves(override: str) -> None:
    cfg = composed(["method=pca", override])
    task = OmegaConf.to_container(task_config(["method=pca", override]), resolve=True)
    assert task["results_file"].endswith("results.jsonl")
    assert str(cfg.hydra.run.dir).startswith("outputs/pca/")
    OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize("name", options("method"))
def test_every_method_config_builds_its_method(name: str) -> None:
    """Each method config's keys are constructor arguments of its class (checked, not fitted).
    A peer method whose optional package is not installed skips, naming it."""
    cfg = task_config([f"method={name}", "trainer.accelerator=cpu"])
    try:
        importlib.import_module(cfg.method._target_.rpartition(".")[0])
    except ModuleNotFoundError as exc:
        if exc.name.split(".")[0] in PROJECT_PACKAGES:
            raise
        pytest.skip(f"method {name} needs the optional package {exc.name!r} (nebench[peers])")
    plan = prepare(cfg)
    assert isinstance(plan.method, EmbeddingMethod)
    assert plan.name and plan.accelerator == "cpu" and plan.devices == 1


def test_default_config_composes() -> None:
    cfg = composed([])
    assert cfg.method.name and cfg.dataset.name == "digits" and cfg.seed == 0


def test_launcher_configs_take_their_settings() -> None:
    parallel = composed(["method=pca", "hydra/launcher=parallel"]).hydra.launcher
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2
    slurm = composed(
        [
            "method=pca",
            "hydra/launcher=slurm",
            "trainer.gpus=4",
            "trainer.partition=gpu",
            "trainer.timeout_min=30",
        ]
    ).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.gpus_per_node, slurm.partition, slurm.timeout_min) == (4, "gpu", 30)


def test_paths_follow_environment_variables(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEBENCH_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("NEBENCH_RESULTS_DIR", str(tmp_path / "r"))
    cfg = composed(["method=pca"])
    assert cfg.paths.data_dir == str(tmp_path / "d")
    assert cfg.results_file == str(tmp_path / "r" / "results.jsonl")
    monkeypatch.delenv("NEBENCH_DATA_DIR")
    assert composed(["method=pca"]).paths.data_dir == str(Path.cwd() / "data")


# --- checks before any work ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["+method.bogus=1"], "bogus"),
        (["+method.n_epochs=-1"], "method.n_epochs=-1"),
        (["+method.learning_rate=0"], "method.learning_rate=0"),
        (["+method.random_state=3"], "seed="),
        (["+metrics.bogus=1"], "bogus"),
        (["+metrics.seed=1"], "seed"),
        (["seed=-1"], "seed=-1"),
        (["holdout=true"], "method 'pca' does not offer: use an engine method"),
    ],
)
def test_prepare_rejects_bad_requests(overrides: list[str], expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        prepare(task_config(["method=pca", *overrides]))


class _Base(EmbeddingMethod):
    def __init__(self, a=1, accelerator="cpu", devices=1, random_state=None) -> None:
        self.a, self.accelerator, self.devices, self.random_state = (
            a,
            accelerator,
            devices,
            random_state,
        )


class _Forwarding(_Base):
    """Like the engine's methods: own parameters, the rest forwarded to the base."""

    def __init__(self, b=2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.b = b


def test_seed_and_devices_reach_methods_that_forward_kwargs() -> None:
    assert constructor_parameters(_Forwarding) == (
        ["b", "a", "accelerator", "devices", "random_state"],
        False,
    )
    forwarding = [
        "method=pca",
        "~method.svd_solver",
        "~method.n_jobs",
        f"method._target_={__name__}._Forwarding",
        "seed=7",
    ]
    method = prepare(task_config([*forwarding, "+method.a=5"])).method
    assert (method.a, method.b, method.accelerator, method.devices, method.random_state) == (
        5,
        2,
        "cpu",
        1,
        7,
    )
    with pytest.raises(InputError, match="no parameter bogus"):
        prepare(task_config([*forwarding, "+method.bogus=1"]))


class _Method(EmbeddingMethod):
    accelerators = ("cpu", "cuda")
    multi_device = True


class _CpuMethod(EmbeddingMethod):
    accelerators = ("cpu",)


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_devices_resolve_requests(four_gpus) -> None:
    assert resolve_devices({"accelerator": "auto", "devices": 1}, _Method, "m") == ("cuda", 1)
    assert resolve_devices({"accelerator": "auto", "devices": 1}, _CpuMethod, "c") == ("cpu", 1)
    assert resolve_devices({"gpus": 3}, _Method, "m") == ("cuda", 3)
    assert resolve_devices({"accelerator": "gpu", "devices": 4}, _Method, "m") == ("cuda", 4)
    assert resolve_devices({"accelerator": "cpu", "devices": 8}, _Method, "m") == ("cpu", 8)


@pytest.mark.parametrize(
    ("trainer", "cls", "expected"),
    [
        ({"gpus": 5}, _Method, "5 GPU.*sees 4.*trainer.accelerator=cpu trainer.devices=5"),
        ({"accelerator": "cuda"}, _CpuMethod, "runs on cpu only"),
        ({"accelerator": "cpu", "gpus": 1}, _Method, "trainer.accelerator=cpu"),
        ({"accelerator": "cpu", "devices": 2}, _CpuMethod, "runs on one device"),
        ({"accelerator": "tpu"}, _Method, "tpu"),
        ({"devices": 0}, _Method, "trainer.devices=0"),
        ({"gpus": 0}, _Method, "trainer.gpus=0"),
    ],
)
def test_devices_reject_impossible_requests(four_gpus, trainer, cls, expected) -> None:
    with pytest.raises(InputError, match=expected):
        resolve_devices(trainer, cls, "m")


def test_multi_device_methods_are_found_from_configs(tmp_path: Path) -> None:
    (tmp_path / "multi.yaml").write_text(f"_target_: {__name__}._Method\n")
    (tmp_path / "single.yaml").write_text(f"_target_: {__name__}._CpuMethod\n")
    (tmp_path / "broken.yaml").write_text("_target_: no.such.Class\n")
    assert multi_device_methods(tmp_path) == ["multi"]


class _Diverging(EmbeddingMethod):
    def __init__(self, **params) -> None:
        self.params = params

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return np.full((len(X), 2), np.nan, dtype=np.float32)


def test_a_diverged_embedding_is_not_a_result(tmp_path: Path) -> None:
    cfg = task_config(
        ["method=pca", f"method._target_={__name__}._Diverging", f"results_file={tmp_path}/r.jsonl"]
    )
    with pytest.raises(RuntimeError, match="NaN"):
        run(cfg, tmp_path)
    assert not any((tmp_path / name).exists() for name in RESULT_FILES)
    assert not (tmp_path / "r.jsonl").exists()


class _SlowFirstCall(EmbeddingMethod):
    """Records every fit; the first fit in the process pays a one-off cost (like numba)."""

    fits: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, n_epochs: int = 50, **params) -> None:
        self.n_epochs, self.params = n_epochs, params

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        if not _SlowFirstCall.fits:
            time.sleep(1.0)  # the "compilation"
        _SlowFirstCall.fits.append((len(X), self.n_epochs))
        return np.asarray(X[:, :2], dtype=np.float32)


def test_one_off_work_lands_in_the_warm_up_not_the_total(tmp_path: Path) -> None:
    _SlowFirstCall.fits.clear()
    overrides = ["method=pca", f"method._target_={__name__}._SlowFirstCall",
                 "+method.n_epochs=50", f"results_file={tmp_path}/r.jsonl"]  # fmt: skip
    metrics = run(task_config(overrides), tmp_path)
    assert _SlowFirstCall.fits == [(300, 2), (1797, 50)]  # a capped copy on 300 rows first
    assert metrics["time_warmup_s"] >= 1.0 > metrics["time_total_s"]
    _SlowFirstCall.fits.clear()
    cold = run(task_config([*overrides, "trainer.warmup=false"]), tmp_path)
    assert _SlowFirstCall.fits == [(1797, 50)] and cold["time_total_s"] >= 1.0


# --- real runs ----------------------------------------------------------------------------


def test_holdout_places_the_test_split_with_a_free_map_transform(tmp_path: Path) -> None:
    """A non-parametric engine method embeds the held-out rows with its openTSNE-style
    transform; the held-out metrics land beside the fit's."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(4, 10))
    y = rng.integers(0, 4, 800)
    X = (centres[y] + rng.normal(size=(800, 10))).astype(np.float32)
    np.savez(tmp_path / "blobs.npz", X=X, y=y, n_train=600)
    cfg = task_config(["method=infonc_tsne", "method.n_epochs=30", "dataset=vectors",
                       f"dataset.path={tmp_path / 'blobs.npz'}", "holdout=true",
                       "trainer.accelerator=cpu", "trainer.warmup=false",
                       f"results_file={tmp_path}/r.jsonl", "method.cache_dir=null"])  # fmt: skip
    metrics = run(cfg, tmp_path)
    assert metrics["knn_acc"] > 0.9  # the 200 placed test points land by their own blob
    assert 0 < metrics["heldout_np@10"] <= 1 and metrics["time_transform_s"] > 0


def test_a_run_says_when_its_knn_index_came_from_the_cache(tmp_path: Path) -> None:
    """time_total_s holds no kNN search when the engine read its index from the cache; the
    metrics say which search ran and whether it was cached."""
    overrides = ["method=infonc_tsne", "method.n_epochs=5", "trainer.accelerator=cpu",
                 "trainer.warmup=false", f"results_file={tmp_path}/r.jsonl",
                 f"method.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    first = run(task_config(overrides), tmp_path / "a")
    again = run(task_config(overrides), tmp_path / "b")
    assert (first["knn_cached"], again["knn_cached"]) == (False, True)
    assert first["knn_index"] == again["knn_index"] and first["knn_index"]
    uncached = run(task_config([*overrides[:-1], "method.cache_dir=null"]), tmp_path / "c")
    assert uncached["knn_cached"] is False


def test_an_encoder_reads_the_raw_rows_and_the_graph_the_pca_rows(tmp_path: Path, monkeypatch) -> None:
    """dataset.encoder_input=raw: a parametric fit and its transform read the rows before PCA,
    the kNN graph and the metrics the PCA'd rows; a free-position method is refused."""
    from nomad.engine import ContrastiveEmbedding

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(4, 30))
    y = rng.integers(0, 4, 800)
    X = (centres[y] + rng.normal(size=(800, 30))).astype(np.float32)
    np.savez(tmp_path / "blobs.npz", X=X, y=y, n_train=600)
    seen = []
    fit, transform = ContrastiveEmbedding.fit, ContrastiveEmbedding.transform

    def fit_spy(self, X, y=None, **kw):
        seen.append(("fit", np.shape(X)[1], np.shape(kw["X_knn"])[1]))
        return fit(self, X, y, **kw)

    def transform_spy(self, X, **kw):
        seen.append(("transform", np.shape(X)[1]))
        return transform(self, X, **kw)

    monkeypatch.setattr(ContrastiveEmbedding, "fit", fit_spy)
    monkeypatch.setattr(ContrastiveEmbedding, "transform", transform_spy)
    overrides = ["method=neg_tsne", "method.n_epochs=30", "method.hidden=[32]", "dataset=vectors",
                 f"dataset.path={tmp_path / 'blobs.npz'}", "+dataset.pca=5", "holdout=true",
                 "+dataset.encoder_input=raw", "trainer.accelerator=cpu", "trainer.warmup=false",
                 f"results_file={tmp_path}/r.jsonl", "method.cache_dir=null"]  # fmt: skip
    metrics = run(task_config([*overrides, "method.parametric=true"]), tmp_path)
    assert seen == [("fit", 30, 5), ("transform", 30)]
    assert metrics["dim"] == 5 and metrics["knn_acc"] > 0.9
    with pytest.raises(InputError, match="not parametric"):
        run(task_config(overrides), tmp_path)


def test_run_writes_the_contract_and_one_row_and_two_runs_get_two_dirs(tmp_path: Path) -> None:
    """Two runs started together (same second) from another cwd: own dirs, one row each."""
    env = {**os.environ, "NEBENCH_RESULTS_DIR": str(tmp_path / "results")}
    cmd = [sys.executable, str(ROOT / "run.py"), "method=pca", "dataset=digits"]
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "NP@10" in outputs[0] and "RTA" in outputs[0]  # the result table

    run_dirs = sorted((tmp_path / "outputs" / "pca" / "digits").iterdir())
    assert len(run_dirs) == 2
    table = rows(tmp_path)
    assert len(table) == 2
    assert sorted(Path(d).resolve() for d in table["run_dir"]) == [d.resolve() for d in run_dirs]
    for run_dir in run_dirs:
        assert all((run_dir / name).is_file() for name in CONTRACT)
        Y = np.load(run_dir / "embedding.npy")
        assert Y.shape == (1797, 2) and Y.dtype == np.float32 and np.isfinite(Y).all()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for key in (
            "np@10",
            "np@15",
            "rta",
            "np@10_ci95",
            "rta_ci95",
            "knn_acc",
            "time_total_s",
            "time_fit_s",
            "time_warmup_s",
            "peak_rss_gb",
            "trustworthiness",
            "continuity",
            "distance_spearman",
            "n",
            "dim",
            "knn_index",
            "knn_cached",
        ):
            assert key in metrics, key
        assert (metrics["n"], metrics["dim"]) == (1797, 64)
        assert 0.5 < metrics["rta"] <= 1 and metrics["knn_acc"] > 0.3  # PCA beats chance (0.1)
        assert (run_dir / "embedding.png").read_bytes()[:4] == b"\x89PNG"
    row = table.iloc[0]
    assert (row["method"], row["dataset"], row["n"], row["dim"], row["seed"]) == (
        "pca",
        "digits",
        1797,
        64,
        0,
    )
    assert {"method.svd_solver", "code_version", "timestamp", "devices", "time_total_s"} <= set(
        table
    )
    # a row carries the dataset's preprocessing, the holdout flag and the metric options
    assert {"dataset.n", "dataset.pca", "dataset.l2_normalize", "holdout"} <= set(table)
    assert {"metrics.ks", "metrics.n_eval", "metrics.n_trust", "trainer.warmup"} <= set(table)
    assert not row["holdout"] and row["metrics.n_eval"] == 5000
    assert 0 < row["peak_rss_gb"] < 50


@pytest.mark.slow
def test_parallel_sweep_lands_every_row(tmp_path: Path) -> None:
    args = [
        "-m",
        "method=pca",
        "seed=0,1,2,3",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=4",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    table = rows(tmp_path)
    assert sorted(table["seed"]) == [0, 1, 2, 3]
    assert table[["np@10", "rta", "time_total_s"]].notna().all().all()
    assert len(set(table["run_dir"])) == 4
    assert all(Path(d, "metrics.json").is_file() for d in table["run_dir"])


@pytest.mark.parametrize(
    "launcher",
    ["hydra/launcher=basic", pytest.param("hydra/launcher=parallel", marks=pytest.mark.slow)],
)
def test_a_failed_job_does_not_stop_the_sweep(tmp_path: Path, launcher: str) -> None:
    result = run_cli(["-m", "method=pca", "trainer.devices=2,1", launcher], tmp_path)
    assert result.returncode != 0
    assert "1 job(s) of the sweep failed" in result.stdout + result.stderr
    table = rows(tmp_path)
    assert len(table) == 1 and table["devices"].tolist() == [1]
    failed = [p.parent for p in (tmp_path / "sweep").rglob("error.txt")]
    assert len(failed) == 1 and "one device" in (failed[0] / "error.txt").read_text()
    assert not (failed[0] / "embedding.npy").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["method=no_such_method"], ["no_such_method", "Available options"]),
        (["method=pca", "dataset=no_such_dataset"], ["no_such_dataset", "Available options"]),
        (["method=pca", "dataset=mnist", "paths.data_dir={tmp}/empty"], ["mnist.npz", "data_dir"]),
        (["method=pca", "+method.bogus=1"], ["bogus", "'pca'"]),
        (["method=pca", "trainer.gpus=8"], ["8 GPU", "trainer.accelerator=cpu trainer.devices=8"]),
        (["method=pca", "trainer.devices=2"], ["'pca' runs on one device", "trainer.devices=1"]),
    ],
    ids=["method", "dataset", "data-file", "kwarg", "gpus", "devices"],
)
def test_bad_input_fails_cleanly(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    result = run_cli([a.format(tmp=tmp_path) for a in args], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert all(text in output for text in expected), output
    assert "Traceback" not in output
    assert rows(tmp_path).empty
    assert not list(tmp_path.rglob("embedding.npy")) and not list(tmp_path.rglob("metrics.json"))
    run_dir = tmp_path / "run"
    if run_dir.exists():  # the run started: its error is recorded next to its log
        assert expected[0] in (run_dir / "error.txt").read_text()
