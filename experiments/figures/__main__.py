"""Command line: ``python -m experiments.figures experiment=<figure> [key=value ...]``.

Composes ``conf/figure.yaml`` with ``conf/experiment/<figure>.yaml`` and calls the ``make(cfg)``
of the module the experiment names (``figure.module``); a bad request is reported in one line
and exits non-zero.
"""

from __future__ import annotations

import logging
import sys
from importlib import import_module

import hydra
from omegaconf import DictConfig

from nebench.errors import InputError

log = logging.getLogger(__name__)
PACKAGE = "experiments.figures"


def make_figure(cfg: DictConfig) -> object:
    """Run the figure ``cfg.figure`` describes; return what its ``make`` returns."""
    module = (cfg.get("figure") or {}).get("module")
    if not isinstance(module, str) or not module.startswith(f"{PACKAGE}."):
        raise InputError(
            f"the experiment names no figure module (figure.module={module!r}); pick a figure "
            f"experiment (see {PACKAGE}'s docstring): run.py sweep overlays such as fig3_nomad "
            "run with `python run.py -m +experiment=...`."
        )
    return import_module(module).make(cfg)


@hydra.main(config_path="../../conf", config_name="figure", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        make_figure(cfg)
    except InputError as exc:
        log.error("figure not made: %s", exc)
        sys.exit(1)
    log.info("figure written to %s", cfg.out_dir)


if __name__ == "__main__":
    main()
