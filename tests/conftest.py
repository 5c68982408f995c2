"""Shared test settings and checks."""

import inspect

import numba
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf


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
