"""Paper protocols as configs (conf/protocol/) and cne's early exaggeration in the engine
(``spectrum_exaggeration_epochs``): the early epochs optimise the loss at s_early = max(s, 1), the
protocol sets the ICLR paper's values on every engine method it supports and leaves a method's
defaults alone when not asked for, and a reduced protocol run embeds digits sensibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from nebench.config import engine_methods, method_defaults
from nebench.errors import InputError
from nebench.runner import prepare
from nomad import NOMAD, InfoNCTSNE, NCVis, NegTSNE, UMAPLoss
from nomad.losses import NCE, InfoNCE
from nomad.losses import NegTSNE as NegTSNELoss
from nomad.losses import UMAPLoss as UMAPLossFn
from nomad.options import EdgesOptions, ParametricEdgesOptions

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ENGINE_METHODS = ("infonc_tsne", "neg_tsne", "ncvis", "umap_loss", "nomad")
WITH_SPECTRUM = ("infonc_tsne", "neg_tsne", "nomad")  # cne's early exaggeration applies


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def knn_score(Y: np.ndarray, y: np.ndarray) -> float:
    return float(cross_val_score(KNeighborsClassifier(10), Y, y, cv=3).mean())


# --- the loss at s_early --------------------------------------------------------------------------


def test_infonce_early_spectrum_is_s_at_least_one():
    assert InfoNCE(0.0).spectrum_early().s == 1.0  # repulsion x 4^-1 (cne's ince_spec = 4)
    assert InfoNCE(0.5).spectrum_early().s == 1.0
    assert InfoNCE(1.5).spectrum_early().s == 1.5  # beyond the UMAP end: unchanged


@pytest.mark.parametrize("n,m", [(1000, 5), (70_000, 5), (5000, 50)])
def test_negtsne_early_spectrum_is_the_umap_end(n, m):
    """s <= 1 -> nu = 1 (Z-bar = n^2/m); s > 1 kept; a given z_bar -> max(z_bar, n^2/m)."""
    for s in (-1.0, 0.0, 0.5, 1.0):
        assert float(NegTSNELoss(n, m, s=s).spectrum_early().log_nu()) == pytest.approx(0.0, abs=1e-9)
    beyond = NegTSNELoss(n, m, s=1.5)
    assert float(beyond.spectrum_early().log_nu()) == pytest.approx(float(beyond.log_nu()))
    small = NegTSNELoss(n, m, z_bar=100.0 * n)
    assert small.s is None and small.spectrum_early().z_bar == pytest.approx(n * n / m)
    big = NegTSNELoss(n, m, z_bar=10.0 * n * n)
    assert big.spectrum_early().z_bar == pytest.approx(10.0 * n * n)


def test_losses_without_a_spectrum_have_no_early_point():
    assert NCE(5).spectrum_early() is None and UMAPLossFn(1.0, 1.0).spectrum_early() is None


def epochs_of(cls, X, **kwargs) -> tuple[list[np.ndarray], list[float]]:
    """The embedding after each of 3 epochs and the loss history of a seeded fit."""
    out: list[np.ndarray] = []
    model = cls(n_epochs=3, random_state=0, callbacks=lambda e, loss, Y: out.append(Y.copy()), **kwargs)
    model.fit(X)
    return out, model.loss_history_


CASES = [  # (class, target settings, the same method at s_early)
    (InfoNCTSNE, {"s": 0.0}, {"s": 1.0}),
    (InfoNCTSNE, {"s": 0.0, "sampling": "edges", "noise": "batch_neighbors"}, {"s": 1.0, "sampling": "edges",
                                                                               "noise": "batch_neighbors"}),
    (InfoNCTSNE, {"s": 0.0, "parametric": True}, {"s": 1.0, "parametric": True}),
    (NegTSNE, {"s": 0.0}, {"s": 1.0}),
    (NegTSNE, {"s": 0.0, "sampling": "edges"}, {"s": 1.0, "sampling": "edges"}),
    (NegTSNE, {"s": None, "z_bar": 4000.0, "sampling": "edges"}, {"s": 1.0, "sampling": "edges"}),
    (NOMAD, {"s": 0.0, "n_noise": 50, "noise_samples": 16}, {"s": 1.0, "n_noise": 50, "noise_samples": 16}),
]


@pytest.mark.parametrize("cls,target,early", CASES, ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_exaggerated_epochs_are_the_run_at_s_early(digits, cls, target, early):
    """With spectrum_exaggeration_epochs=1 the first epoch is, step for step, the run at
    s_early (same draws, same learning rates); the next epoch is at the target again."""
    X = digits[0][:400]
    exaggerated, loss_ee = epochs_of(cls, X, spectrum_exaggeration_epochs=1, **target)
    at_early, loss_early = epochs_of(cls, X, **early)
    plain, _ = epochs_of(cls, X, **target)
    np.testing.assert_allclose(exaggerated[0], at_early[0], atol=1e-5)
    assert loss_ee[0] == pytest.approx(loss_early[0], rel=1e-5)
    scale = np.abs(plain[0]).max()
    assert np.abs(exaggerated[0] - plain[0]).max() > 1e-3 * scale  # the early loss made a difference
    assert np.abs(exaggerated[1] - at_early[1]).max() > 1e-3 * scale  # and the target takes over


@pytest.mark.parametrize("cls,sampling", [(InfoNCTSNE, "heads"), (NegTSNE, "edges")])
def test_exaggerated_epochs_on_the_torch_path(digits, monkeypatch, cls, sampling):
    """The same on the torch ops that CUDA runs (the fused CPU kernel switched off)."""
    from nomad.optimize import _ShardTrainer

    init = _ShardTrainer.__init__

    def torch_ops(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.fused = False

    monkeypatch.setattr(_ShardTrainer, "__init__", torch_ops)
    X = digits[0][:300]
    exaggerated, _ = epochs_of(cls, X, s=0.0, sampling=sampling, spectrum_exaggeration_epochs=1)
    at_early, _ = epochs_of(cls, X, s=1.0, sampling=sampling)
    plain, _ = epochs_of(cls, X, s=0.0, sampling=sampling)
    np.testing.assert_allclose(exaggerated[0], at_early[0], atol=1e-5)
    assert np.abs(exaggerated[0] - plain[0]).max() > 1e-3 * np.abs(plain[0]).max()


def test_optimize_continues_at_the_target(digits):
    model = InfoNCTSNE(n_epochs=2, spectrum_exaggeration_epochs=2, random_state=0).fit(digits[0][:300])
    assert model.loss_.s == 0.0
    model.optimize(1)  # no exaggeration when continuing; the target loss is untouched
    assert model.loss_.s == 0.0 and model.n_epochs_ == 3


@pytest.mark.parametrize("cls", [NCVis, UMAPLoss])
def test_methods_without_a_spectrum_refuse_it(digits, cls):
    with pytest.raises(InputError, match="spectrum_exaggeration_epochs=5.*no spectrum parameter.*set it to 0"):
        cls(n_epochs=10, spectrum_exaggeration_epochs=5).fit(digits[0][:200])


@pytest.mark.parametrize("value,match", [(-1, "must be an integer >= 0"), (1.5, "must be an integer"),
                                         (11, "more than method.n_epochs=10")])
def test_bad_exaggeration_epochs_are_refused(digits, value, match):
    with pytest.raises(InputError, match=match):
        InfoNCTSNE(n_epochs=10, spectrum_exaggeration_epochs=value).fit(digits[0][:200])


# --- the protocol configs ---------------------------------------------------------------------------


def task(overrides: list[str]):
    """The task config of ``python run.py <overrides>`` (HydraConfig set, hydra node dropped)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


ICLR = {  # ALGORITHMS.md 1.6 (and 1.1-1.3 for cne's defaults the scripts keep)
    "n_neighbors": 15, "p_model": "uniform", "graph": "binary", "n_noise": 5,
    "aggregation": "sum", "momentum": 0.0, "lr_schedule": "linear",
    "init": "pca", "init_scale": 1.0, "n_epochs": 750, "noise": "batch_neighbors",
    "push_noise": True, "early_exaggeration": 1.0, "early_exaggeration_epochs": 0,
    "hidden": [100, 100, 100],
}


@pytest.mark.parametrize("parametric", [False, True])
@pytest.mark.parametrize("name", ENGINE_METHODS)
def test_damrich_iclr_sets_the_papers_protocol_on_every_engine_method(name, parametric):
    cfg = task([f"method={name}", "protocol=damrich_iclr", f"method.parametric={str(parametric).lower()}",
                "trainer.accelerator=cpu"])
    plan = prepare(cfg)
    params = plan.method.get_params()
    for key, value in ICLR.items():
        assert params[key] == value, (key, params[key])
    # edges of the symmetric graph drive free positions and the network alike, 1,024 a batch
    assert (params["sampling"], params["batch_size"]) == ("edges", 1024)
    assert params["spectrum_exaggeration_epochs"] == (250 if name in WITH_SPECTRUM else 0)
    assert params["parametric"] is parametric
    # the paper's network reads the raw features (MNIST's pixels), its graph the PCA'd rows
    assert cfg.dataset.encoder_input == ("raw" if parametric else "pca")
    # SGD at 1.0 with sum aggregation ("auto"), but 0.5 for InfoNC-t-SNE, whose loss cne halves;
    # Adam at 1e-3 ("auto")
    halved = name == "infonc_tsne" and not parametric
    assert params["learning_rate"] == (0.5 if halved else "auto")
    # cne clips the gradient of the halved loss at 4: ours at 8, under SGD and Adam alike
    assert params["clip_grad"] == (8.0 if name == "infonc_tsne" else 4.0)
    if name == "nomad":  # refused at fit (test_nomad_refuses_the_protocol)
        return
    spec = resolved_spec(plan.method, n=2000)
    assert spec.learning_rate == (1e-3 if parametric else 0.5 if halved else 1.0)
    assert spec.batch_size == 1024
    assert isinstance(plan.method.options().trainer, ParametricEdgesOptions if parametric else EdgesOptions)


@pytest.mark.parametrize("parametric", ["false", "true"])
def test_nomad_refuses_the_protocol(digits, parametric):
    """Edge sampling has no cell means: NOMAD under damrich_iclr, free or parametric, stops before
    any work, naming the methods that take it."""
    plan = prepare(task(["method=nomad", "protocol=damrich_iclr", "trainer.accelerator=cpu",
                         f"method.parametric={parametric}"]))
    with pytest.raises(InputError, match="sampling='edges'.*infonc_tsne, neg_tsne"):
        plan.method.fit(digits[0][:100])


def resolved_spec(method, n: int):
    """The training settings a fit on n points would resolve ("auto" values), without data: just
    enough fitted state for ``_train_spec``."""
    method.random_state_, method.n_epochs_, method.loss_, method._early_loss = 0, 0, None, None
    return method._train_spec(n, method.options(), int(method.n_epochs), None, True)


def test_protocol_does_not_set_method_specific_keys_and_command_line_wins():
    cfg = task(["method=neg_tsne", "method.s=0", "protocol=damrich_iclr", "method.n_epochs=30",
                "method.spectrum_exaggeration_epochs=10"])
    assert (cfg.method.s, cfg.method.z_bar, cfg.method.n_epochs) == (0, None, 30)
    assert cfg.method.spectrum_exaggeration_epochs == 10
    assert "s" not in task(["method=ncvis", "protocol=damrich_iclr"]).method  # never added
    assert task(["method=umap_loss", "protocol=damrich_iclr"]).method.min_dist == 0.1


def method_file(name: str):
    """conf/method/<name>.yaml merged over what its defaults list names (all end in _self_): files,
    or an engine class's defaults node (nebench/config.py)."""
    if name.startswith("_defaults_"):
        return OmegaConf.create(method_defaults(engine_methods()[name.removeprefix("_defaults_")]))
    own = OmegaConf.load(CONF / "method" / f"{name}.yaml")
    bases = [method_file(b) for b in own.pop("defaults", []) if b != "_self_"]
    return OmegaConf.merge(*bases, own)


@pytest.mark.parametrize("name", [*ENGINE_METHODS, "cne", "cne_neg", "opentsne"])
def test_without_a_protocol_a_method_keeps_its_own_config(name):
    """``method=<name>`` alone is exactly its class's defaults node + <name>.yaml (the reference
    packages' defaults): the protocol group's default touches nothing."""
    expected = method_file(name)
    got = task([f"method={name}"])
    assert "protocol" not in got
    assert OmegaConf.to_container(got.method) == OmegaConf.to_container(expected)


def test_damrich_iclr_cne_sets_cnes_keys():
    cfg = task(["method=cne_neg", "method.s=0", "protocol=damrich_iclr_cne"])
    m = cfg.method
    assert (m.n_epochs, m.batch_size, m.negative_samples, m.init_scale) == (750, 1024, 5, 1.0)
    assert m.early_exaggeration is True and m.optimizer == "sgd" and m.loss_aggregation == "sum"
    assert cfg.dataset.encoder_input == "pca"
    assert m.clamp_low == 1e-10  # the paper's scripts; cne's default "auto" is 1e-4
    assert task(["method=cne_neg"]).method.clamp_low == "auto"
    parametric = task(["method=cne", "protocol=damrich_iclr_cne", "method.parametric=true"])
    # Adam, and the paper's network reads the raw features while the graph comes from the PCA'd rows
    assert parametric.method.optimizer == "adam" and parametric.dataset.encoder_input == "raw"


def test_a_protocol_on_a_method_without_its_keys_is_refused_naming_them():
    with pytest.raises(InputError, match="has no parameter .*sampling"):
        prepare(task(["method=opentsne", "protocol=damrich_iclr"]))


# --- a reduced protocol run embeds sensibly -----------------------------------------------------------


@pytest.mark.parametrize("overrides,floor", [
    (["method=neg_tsne", "method.s=0", "method.n_epochs=60", "method.spectrum_exaggeration_epochs=20"], 0.9),
    (["method=infonc_tsne", "method.n_epochs=60", "method.spectrum_exaggeration_epochs=20"], 0.9),
    (["method=infonc_tsne", "method.parametric=true", "method.n_epochs=20",
      "method.spectrum_exaggeration_epochs=7"], 0.8),
])
def test_reduced_protocol_run_embeds_digits(digits, overrides, floor):
    """The protocol, shortened (a third of the epochs exaggerated, as in cne), on digits: kNN
    accuracy far above chance (0.1). Measured: 0.97, 0.97 and 0.96 (the parametric setup: 20
    epochs of ~37 Adam steps of 1,024 edges)."""
    X, y = digits
    cfg = task([*overrides, "protocol=damrich_iclr", "trainer.accelerator=cpu", "method.cache_dir=null"])
    torch.manual_seed(0)
    Y = prepare(cfg).method.fit_transform(X)
    assert np.isfinite(Y).all()
    assert knn_score(Y, y) > floor


# --- the benchmark: a row at the paper's protocol beside the defaults row ---------------------------


def bench_config(overrides: list[str], out: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEBENCH_RESULTS_DIR", str(out / "results"))
        mp.setenv("NEBENCH_CACHE_DIR", str(out / "cache"))
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("bench", overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            OmegaConf.resolve(cfg.paths)
            return cfg


@pytest.mark.slow
def test_bench_runs_each_method_at_its_defaults_and_at_its_papers_protocol(tmp_path, monkeypatch):
    """``python -m experiments.bench``: infonc_tsne gets a second row at damrich_iclr (the
    protocol's values, shortened by protocol_overrides only), nomad at its defaults only."""
    from experiments import bench

    cfg = bench_config(["dataset=digits", "methods=[nomad,infonc_tsne]", "+method_overrides.nomad.n_epochs=20",
                        "+method_overrides.infonc_tsne.n_epochs=20",
                        "+protocol_overrides.infonc_tsne.n_epochs=30",
                        "+protocol_overrides.infonc_tsne.spectrum_exaggeration_epochs=10"], tmp_path)
    seen = []
    entry = bench._entry
    monkeypatch.setattr(bench, "_entry", lambda *a, **k: seen.append(entry(*a, **k)) or seen[-1])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        HydraConfig.instance().set_config(cfg)
        report = bench.run_benchmark(cfg)
    table = report.table
    assert list(zip(table["method"], table[bench.SETTING])) == [
        ("nomad", "defaults + n_epochs=20"), ("infonc_tsne", "defaults + n_epochs=20"),
        ("infonc_tsne", "protocol damrich_iclr + n_epochs=30, spectrum_exaggeration_epochs=10")]
    assert (table[bench.KNN_ACC] > 0.8).all() and np.isfinite(table[bench.WARMUP]).all()
    defaults, protocol = (e.config["method"] for e in seen[1:])
    assert (defaults["n_epochs"], defaults["sampling"], defaults["batch_size"]) == (20, "heads", "auto")
    assert (protocol["n_epochs"], protocol["spectrum_exaggeration_epochs"]) == (30, 10)
    assert (protocol["sampling"], protocol["batch_size"], protocol["aggregation"]) == ("edges", 1024, "sum")
    assert "protocol damrich_iclr" in report.markdown()


@pytest.mark.parametrize("overrides,match", [
    (["methods=[infonc_tsne]", "protocols={infonc_tsne: no_such_protocol}"], "no protocol 'no_such_protocol'"),
    (["methods=[nomad]", "+protocol_overrides.infonc_tsne.n_epochs=5"], "'infonc_tsne' is not in methods"),
    (["methods=[infonc_tsne]", "protocols={infonc_tsne: 3}"], "must map method names"),
])
def test_bench_refuses_bad_protocol_requests_before_loading_data(tmp_path, monkeypatch, overrides, match):
    from experiments import bench

    monkeypatch.setattr(bench, "load_dataset", lambda *a, **k: pytest.fail("data loaded before the check"))
    cfg = bench_config(["dataset=digits", *overrides], tmp_path)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        HydraConfig.instance().set_config(cfg)
        with pytest.raises(InputError, match=match):
            bench.run_benchmark(cfg)


def test_cne_match_keeps_cnes_defaults_and_offers_the_protocol():
    """The cross-check runs without protocol rows; asked for, the protocol rows keep one exact
    kNN graph on both sides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("cne_match", overrides=["dataset=digits"])
    assert cfg.protocols is None
    assert cfg.method_overrides.infonc_tsne.n_epochs == 200  # cne's defaults, unchanged
    assert cfg.protocol_overrides.cne.knn == "exact" and cfg.protocol_overrides.infonc_tsne.n_probe >= 64
