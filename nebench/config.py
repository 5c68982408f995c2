"""Config nodes the harness builds from the library: each engine method's defaults, for Hydra.

The engine's constructor signatures (``nomad/engine.py``, ``nomad/methods.py``) are the one
place a default is written. :func:`register` stores, for every engine method ``nomad.<Class>``,
the Hydra node ``method/_defaults_<Class>``: every constructor parameter at its default
(:meth:`nomad.engine.ContrastiveEmbedding.default_params`) except those the harness sets per
run (``RUNTIME_KEYS``) and ``callbacks`` (code, not config), with ``cache_dir`` set to the
harness's ``${paths.cache_dir}``. A method's file in ``conf/method/`` lists it first in its
defaults list and adds only the harness's keys (``name``, ``_target_``) and what it sets
differently from the class::

    defaults:
      - _defaults_NOMAD
      - _self_
    name: nomad
    _target_: nomad.NOMAD

so ``method.<key>=value`` overrides every parameter without ``+``, and a run's saved config
(``python run.py --cfg job``) shows all of them. ``import nebench`` registers the nodes, so every
entry point that imports the harness composes them.
"""

from __future__ import annotations

from typing import Any

#: constructor arguments the harness sets (from ``seed`` and ``trainer``), never the method config
RUNTIME_KEYS = ("random_state", "accelerator", "devices")
#: constructor arguments of the engine that no config sets (callables)
CODE_KEYS = ("callbacks",)
#: engine arguments whose config value is the harness's, not the constructor's default
HARNESS_VALUES = {"cache_dir": "${paths.cache_dir}"}
#: the config node name of an engine method class's defaults, in the ``method`` group
NODE = "_defaults_{}"


def engine_methods() -> dict[str, type]:
    """The engine methods the library exports, by public name (``nomad.NegTSNE``, ...)."""
    import nomad
    from nomad.engine import ContrastiveEmbedding

    classes = {name: getattr(nomad, name) for name in nomad.__all__}
    return {name: cls for name, cls in classes.items()
            if isinstance(cls, type) and issubclass(cls, ContrastiveEmbedding)}


def method_defaults(cls: type) -> dict[str, Any]:
    """The config node of ``cls``: its constructor defaults as config values (tuples as lists),
    without the runtime and code arguments, ``cache_dir`` the harness's."""
    node = {}
    for key, value in cls.default_params().items():
        if key in RUNTIME_KEYS or key in CODE_KEYS:
            continue
        node[key] = list(value) if isinstance(value, tuple) else value
    node.update({k: v for k, v in HARNESS_VALUES.items() if k in node})
    return node


def register() -> None:
    """Store ``method/_defaults_<Class>`` for every engine method (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, cls in engine_methods().items():
        store.store(group="method", name=NODE.format(name), node=method_defaults(cls), provider="nebench")
