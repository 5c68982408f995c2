"""Run one method on one dataset (or a sweep with -m): python run.py method=<m> dataset=<d>.

The run contract and failure handling live in nebench/runner.py.
"""

import hydra
from omegaconf import DictConfig

from nebench.runner import main as run_experiment


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_experiment(cfg)


if __name__ == "__main__":
    main()
