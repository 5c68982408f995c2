"""Shared test settings and checks."""

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numba
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's torch and numba code on one thread: the 2 cores are shared with the
    workers some tests spawn, and thread contention only slows small problems down."""
    threads, nb_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(nb_threads)


def check_cpu_method_config(path, name: str) -> None:
    """A baseline's conf/method yaml lists every constructor argument with its default, and
    the class builds from it (CPU-only, single device)."""
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg.pop("name") == name
    cls = get_class(cfg.pop("_target_"))
    assert cls.accelerators == ("cpu",) and cls.multi_device is False
    defaults = {
        k: p.default for k, p in inspect.signature(cls).parameters.items() if k != "random_state"
    }
    assert cfg == defaults  # every hyperparameter listed, with the constructor's default
    method = cls(**cfg, random_state=5)
    assert method.random_state == 5
    assert all(getattr(method, k) == v for k, v in cfg.items())


@contextmanager
def hydra_config(name: str, overrides: list[str], tmp_path: Path) -> Iterator[DictConfig]:
    """Config ``name`` as its ``python -m`` entry point composes it, results and cache in
    ``tmp_path``; Hydra stays initialised inside (a benchmark composes method configs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEBENCH_RESULTS_DIR", str(tmp_path / "results"))
        mp.setenv("NEBENCH_CACHE_DIR", str(tmp_path / "cache"))
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(name, overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            yield cfg
