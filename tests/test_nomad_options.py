"""The engine's options in groups (nomad/options.py): every flat parameter in one group, an option
of another trainer refused with one message that names it and the fix, the flat scikit-learn API
round-tripping, and the Hydra config of each engine method equal to its constructor defaults
(nebench/config.py builds it from them, so the two cannot drift)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from sklearn.base import clone
from sklearn.datasets import load_digits

from nebench.config import CODE_KEYS, HARNESS_VALUES, RUNTIME_KEYS, engine_methods
from nebench.runner import prepare
from nomad import NOMAD, InfoNCTSNE, InputError, NCVis, NegTSNE, UMAPLoss
from nomad.engine import ContrastiveEmbedding
from nomad.options import (
    RUN,
    SELECTORS,
    TRAINERS,
    DeviceOptions,
    EdgesOptions,
    HeadsOptions,
    IndexOptions,
    InitOptions,
    NoiseOptions,
    ParametricEdgesOptions,
    ParametricOptions,
    ScheduleOptions,
    group_fields,
)

ENGINE = {"nomad": NOMAD, "infonc_tsne": InfoNCTSNE, "neg_tsne": NegTSNE, "ncvis": NCVis, "umap_loss": UMAPLoss}
# ParametricEdgesOptions joins two trainers' options (hidden, graph): not a group of its own
GROUPS = (IndexOptions, NoiseOptions, ScheduleOptions, InitOptions, DeviceOptions,
          *(t for t in TRAINERS if t is not ParametricEdgesOptions))
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return d.data.astype(np.float32), d.target


def test_every_engine_parameter_is_in_exactly_one_group():
    names = [name for group in GROUPS for name in group_fields(group)] + [*SELECTORS, *RUN]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(ContrastiveEmbedding.default_params())


def test_each_trainer_gets_its_own_variant():
    assert isinstance(InfoNCTSNE().options().trainer, HeadsOptions)
    edges = UMAPLoss(sampling="edges", graph="umap").options().trainer
    assert edges == EdgesOptions(graph="umap", push_noise=False, correct_repulsion=False, loss_log_every=0,
                                 loss_log_pairs=10**8)
    assert InfoNCTSNE(parametric=True, hidden=[16, 8]).options().trainer == ParametricOptions((16, 8))
    encoder_on_edges = UMAPLoss(parametric=True, sampling="edges", graph="umap").options().trainer
    assert encoder_on_edges == ParametricEdgesOptions((100, 100, 100), graph="umap")
    assert set(group_fields(ParametricEdgesOptions)) == {"hidden", "graph"}  # parametric's and edges' own
    # "auto" and None resolved where the devices decide them
    opts = NOMAD(devices=2, accelerator="cpu").options()
    assert (opts.index.knn, opts.index.n_probe, opts.noise.approximate) == ("cells", 1, "remote")
    assert InfoNCTSNE().options().noise.approximate == "none"


FOREIGN = [  # (class, parameters, the option named, the fix named)
    (InfoNCTSNE, {"graph": "umap"}, "method.graph='umap'", "method.sampling=edges"),
    (UMAPLoss, {"push_noise": True, "sampling": "heads", "correct_repulsion": True}, "method.correct_repulsion",
     "method.sampling=edges"),
    (UMAPLoss, {"loss_log_every": 10}, "method.loss_log_every=10", "method.sampling=edges"),
    (NCVis, {"loss_log_pairs": 1000}, "method.loss_log_pairs=1000", "method.sampling=edges"),
    (InfoNCTSNE, {"push_noise": False}, "method.push_noise=False", "method.sampling=edges"),
    (InfoNCTSNE, {"hidden": [16]}, r"method.hidden=\[16\]", "method.parametric=true"),
    (NegTSNE, {"sampling": "edges", "hidden": (10,)}, r"method.hidden=\(10,\)", "method.parametric=true"),
    (InfoNCTSNE, {"parametric": True, "graph": "umap"}, "method.graph='umap'", "method.sampling=edges"),
    (InfoNCTSNE, {"sampling": "edges", "noise_group": 4}, "method.noise_group=4", "method.sampling=heads"),
    # the encoder on edges: the closest fix keeps it parametric, or keeps it on edges
    (NegTSNE, {"sampling": "edges", "parametric": True, "noise_samples": 3}, "method.noise_samples=3",
     "set method.parametric=true and method.sampling=heads"),
    (UMAPLoss, {"sampling": "edges", "parametric": True, "correct_repulsion": True},
     "method.correct_repulsion=True is read by the edges trainer only", "method.parametric=false"),
    (NegTSNE, {"sampling": "edges", "hidden": (10,)}, "parametric_edges trainer",
     "set method.parametric=true and method.sampling=edges"),
    (InfoNCTSNE, {"parametric": True, "graph": "umap"}, "the parametric_edges trainer and the edges trainer",
     "set method.parametric=true and method.sampling=edges"),
    (NCVis, {"sampling": "edges", "noise_samples": 3}, "method.noise_samples=3", "method.sampling=heads"),
    (UMAPLoss, {"sampling": "edges", "approximate": "others"}, "sampling='edges'", "exact noise"),
    (InfoNCTSNE, {"mean_weight": "reference"}, "method.mean_weight='reference'", "method.approximate=remote"),
    (InfoNCTSNE, {"n_probe": 2}, "method.n_probe=2", "method.knn=cells"),
    (InfoNCTSNE, {"knn": "cells", "ivf_nprobe": 4}, "method.ivf_nprobe=4", "method.knn=faiss_ivf"),
    (NOMAD, {"devices": 2, "accelerator": "cpu", "sampling": "edges"}, "sampling='edges'", "devices=1"),
    (NOMAD, {"devices": 2, "accelerator": "cpu", "knn": "cells", "n_probe": 3}, "n_probe=3", "method.n_probe=1"),
    (NOMAD, {"devices": 2, "accelerator": "cpu", "parametric": True}, "parametric=true", "parametric=false"),
    (NOMAD, {"parametric": True, "sampling": "edges"}, "sampling='edges'", "infonc_tsne"),
    (InfoNCTSNE, {"parametric": True, "sampling": "edges", "graph": "umap", "metric": "inner_product"},
     "graph='umap'", "method.metric=euclidean"),
    (NOMAD, {"lr_scale": 0.1, "learning_rate": 500.0}, "method.lr_scale=0.1", "set one of the two"),
    (InfoNCTSNE, {"lr_scale": 0.3, "aggregation": "sum"}, "method.lr_scale=0.3", "sum aggregation"),
    (InfoNCTSNE, {"lr_scale": 0.3, "parametric": True}, "method.lr_scale=0.3", "Adam"),
]


@pytest.mark.parametrize("cls,params,option,fix", FOREIGN,
                         ids=[f"{c.__name__}-{p}" for c, p, _, _ in FOREIGN])
def test_an_option_the_trainer_would_ignore_is_refused_with_one_message(digits, cls, params, option, fix):
    with pytest.raises(InputError, match=option) as err:
        cls(**params).options()
    assert fix in str(err.value)
    with pytest.raises(InputError, match=option):  # fit stops there, before any work
        cls(n_epochs=1, **params).fit(digits[0][:100])


@pytest.mark.parametrize("cls,params", [
    (UMAPLoss, {}),  # push_noise=False is its default, read by edge sampling only
    (UMAPLoss, {"parametric": True, "push_noise": True}),  # what heads and the encoder do anyway
    (InfoNCTSNE, {"hidden": (100, 100, 100), "graph": "binary"}),  # defaults, set explicitly
    (InfoNCTSNE, {"hidden": [100, 100, 100]}),  # a config's list equals the tuple default
    (InfoNCTSNE, {"sampling": "edges", "approximate": "none", "noise_samples": "auto"}),
    (InfoNCTSNE, {"knn": "cells", "n_probe": 64}),
    (NegTSNE, {"parametric": True, "sampling": "edges", "push_noise": True, "graph": "umap"}),
    (NOMAD, {"parametric": True, "approximate": "none", "noise_samples": "auto", "noise_group": 1}),
])
def test_defaults_and_what_a_trainer_does_anyway_pass(cls, params):
    cls(**params).options()


@pytest.mark.parametrize("cls", list(ENGINE.values()))
def test_get_params_clone_and_pickle_round_trip(cls):
    model = cls(n_epochs=7, sampling="edges" if cls is not NOMAD else "heads", graph="binary", knn="cells",
                n_probe=2, hidden=(100, 100, 100), random_state=None, clip_grad=3.0)
    params = model.get_params()
    assert set(params) == set(cls.default_params())
    assert clone(model).get_params() == params
    assert pickle.loads(pickle.dumps(model)).get_params() == params
    assert clone(model).options() == model.options()
    assert cls(**params).options() == model.options()
    model.set_params(n_epochs=9, parametric=True, sampling="heads")
    assert model.options().schedule.n_epochs == 9 and isinstance(model.options().trainer, ParametricOptions)


def test_the_auto_learning_rate_is_lr_scale_times_n(digits):
    X = digits[0][:300]
    assert NOMAD(n_epochs=1).fit(X).learning_rate_ == pytest.approx(0.2 * 300)  # NOMAD: n/5
    assert NOMAD(n_epochs=1, lr_scale=0.1).fit(X).learning_rate_ == pytest.approx(30.0)  # the paper's n/10
    assert InfoNCTSNE(n_epochs=1).fit(X).learning_rate_ == pytest.approx(30.0)
    assert InfoNCTSNE(n_epochs=1, aggregation="sum").fit(X).learning_rate_ == 1.0
    NOMAD(lr_scale=0.2, learning_rate=7.0).options()  # lr_scale at its default: nothing to refuse


def test_fit_records_the_options_it_used(digits):
    model = InfoNCTSNE(n_epochs=2, knn="cells", n_probe=1).fit(digits[0][:150])
    assert model.options_ == model.options() and model.options_.index.knn == "cells"
    assert pickle.loads(pickle.dumps(model)).options_ == model.options_


# --- the Hydra config of each engine method: its constructor defaults, written nowhere else -----------


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("name", list(ENGINE))
def test_composed_method_config_is_the_constructor_defaults(name):
    cfg = composed([f"method={name}"])
    method = OmegaConf.to_container(cfg.method, resolve=True)
    cls = ENGINE[name]
    assert (method.pop("name"), method.pop("_target_")) == (name, f"nomad.{cls.__name__.removesuffix('Method')}")
    assert method.pop("cache_dir") == cfg.paths.cache_dir  # the harness's value (HARNESS_VALUES)
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in cls.default_params().items()
                if k not in (*RUNTIME_KEYS, *CODE_KEYS, *HARNESS_VALUES)}
    assert method == defaults  # every parameter shown, each at the constructor's default
    assert list(method) == list(defaults)  # in the constructor's order
    # the yaml file adds nothing but the harness's keys: a default is written once
    own = OmegaConf.to_container(OmegaConf.load(CONF / "method" / f"{name}.yaml"))
    assert own.pop("defaults") == [f"_defaults_{cls.__name__.removesuffix('Method')}", "_self_"]
    assert set(own) == {"name", "_target_"}


def test_every_exported_engine_method_has_a_node_and_a_method_file():
    assert {cls for cls in engine_methods().values()} == set(ENGINE.values())


def test_overrides_reach_the_constructor_without_a_plus():
    cfg = composed(["method=infonc_tsne", "method.n_epochs=50", "method.knn=cells", "method.sampling=edges",
                    "method.hidden=[8,8]", "trainer.accelerator=cpu"])
    with pytest.raises(InputError, match=r"method.hidden=\[8, 8\].*method.parametric=true"):
        prepare(cfg).method.fit(np.zeros((30, 3), dtype=np.float32))
    cfg = composed(["method=infonc_tsne", "method.n_epochs=50", "method.knn=cells", "method.sampling=edges",
                    "trainer.accelerator=cpu"])
    options = prepare(cfg).method.options()
    assert (options.schedule.n_epochs, options.index.knn, type(options.trainer)) == (50, "cells", EdgesOptions)


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("[!_]*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiments_engine_methods_resolve_their_options(experiment):
    """The figures' engine-method settings, with each of a figure's modes, are valid combinations
    (no option the trainer would ignore): the configs never rely on one being dropped silently."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    methods = cfg.get("methods")
    modes = cfg.figure.get("modes") if "figure" in cfg else None
    modes = OmegaConf.to_container(modes, resolve=True) if modes is not None else {"": {}}
    for node in (methods.values() if OmegaConf.is_dict(methods) else []):
        params = OmegaConf.to_container(node, resolve=True)
        cls = ENGINE.get(params.pop("name", None))
        if cls is None:
            continue
        params.pop("_target_")
        for mode in modes.values():
            cls(**{**params, **(mode or {})}).options()
