"""nebench: the harness (datasets, runner, results table, plots, reports).

Importing it registers the engine methods' default config nodes with Hydra
(:mod:`nebench.config`), which the method files in ``conf/method/`` build on.
"""

from nebench.config import register as _register_configs

_register_configs()
