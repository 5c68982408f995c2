"""The side-by-side benchmark: one row per method from one run, times relative to openTSNE, a
method that is not installed skipped and one that raises reported, bad requests refused before
any work, and the command line printing and writing the table."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from experiments import bench
from nebench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
#: small budgets: the numbers only have to be real, not good
BUDGETS = [
    "+method_overrides.nomad.n_epochs=20",
    "+method_overrides.opentsne.n_iter=50",
    "+method_overrides.opentsne.early_exaggeration_iter=50",
]
#: extra method configs: one whose package is not installed, one that raises when fitted
EXTRA_METHODS = {
    "not_installed": "name: not_installed\n_target_: not_installed_peer.Embedding\n",
    "raises": "name: raises\n_target_: baselines.pca.PCA\nsvd_solver: no_such_solver\n",
}


@pytest.fixture(scope="module")
def extra_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("conf")
    (root / "method").mkdir()
    for name, text in EXTRA_METHODS.items():
        (root / "method" / f"{name}.yaml").write_text(text)
    return root


def run_in_process(overrides: list[str], extra: Path, out: Path) -> bench.Report:
    """``run_benchmark`` on the composed bench config, Hydra set up as ``@hydra.main`` does."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEBENCH_RESULTS_DIR", str(out / "results"))
        mp.setenv("NEBENCH_CACHE_DIR", str(out / "cache"))
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                "bench",
                overrides=[*overrides, f"hydra.searchpath=[file://{extra}]"],
                return_hydra_config=True,
            )
            HydraConfig.instance().set_config(cfg)
            return bench.run_benchmark(cfg)


@pytest.fixture(scope="module")
def report(extra_conf: Path, tmp_path_factory: pytest.TempPathFactory) -> bench.Report:
    methods = "methods=[pca,raises,nomad,not_installed,opentsne]"
    return run_in_process(
        ["dataset=digits", methods, *BUDGETS], extra_conf, tmp_path_factory.mktemp("bench")
    )


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if the benchmark gets as far as loading the data."""

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was loaded before the request was checked")

    monkeypatch.setattr(bench, "load_dataset", loaded)
    yield


def row(table: pd.DataFrame, method: str) -> pd.Series:
    (match,) = table.index[table["method"] == method]
    return table.loc[match]


# --- one run of five methods (~35 s on 2 shared cores: a fresh process per method) -----------


@pytest.mark.slow
def test_one_row_per_method_in_the_order_asked(report: bench.Report) -> None:
    assert list(report.table["method"]) == ["pca", "raises", "nomad", "not_installed", "opentsne"]


@pytest.mark.slow
def test_a_row_off_its_defaults_says_so(report: bench.Report) -> None:
    settings = dict(zip(report.table["method"], report.table[bench.SETTING]))
    assert settings["pca"] == "defaults"
    assert settings["nomad"] == "defaults + n_epochs=20"
    assert settings["opentsne"] == "defaults = paper + n_iter=50, early_exaggeration_iter=50"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pca", "nomad", "opentsne"])
def test_methods_that_ran_have_finite_measurements(report: bench.Report, method: str) -> None:
    measured = row(report.table, method)
    numbers = [bench.OPTIMISATION, bench.TOTAL, bench.RSS, "NP@10", "NP@15", bench.RTA]
    values = measured[[*numbers, bench.KNN_ACC, bench.SCALE, bench.RATIO]].astype(float)
    assert np.isfinite(values).all(), measured.to_dict()
    assert measured[bench.TOTAL] > 0 and measured[bench.RSS] > 0.01 and measured[bench.SCALE] > 0
    assert 0 <= measured["NP@10"] <= measured["NP@15"] <= 1
    assert measured[bench.NOTE] == "" and measured["device"] == "cpu"


@pytest.mark.slow
def test_phase_times_add_up_to_at_most_the_total(report: bench.Report) -> None:
    for method in ("nomad", "opentsne"):  # methods with a kNN phase
        measured = row(report.table, method)
        assert measured[bench.KNN] > 0
        assert measured[bench.KNN] + measured[bench.OPTIMISATION] <= measured[bench.TOTAL]
    assert np.isnan(row(report.table, "pca")[bench.KNN])  # PCA has no kNN phase


@pytest.mark.slow
def test_each_row_names_the_knn_search_its_method_used(report: bench.Report) -> None:
    searches = dict(zip(report.table["method"], report.table[bench.KNN_INDEX]))
    assert searches["nomad"] == "faiss IVF"  # the engine on one device
    assert searches["opentsne"] in ("Annoy", "BallTree", "NNDescent")  # openTSNE's "auto"
    assert searches["pca"] == ""  # no kNN


@pytest.mark.slow
def test_times_are_relative_to_opentsne_from_the_same_run(report: bench.Report) -> None:
    table = report.table
    assert row(table, "opentsne")[bench.RATIO] == 1.0
    reference = row(table, "opentsne")[bench.TOTAL]
    for method in ("pca", "nomad"):
        assert row(table, method)[bench.RATIO] == row(table, method)[bench.TOTAL] / reference


@pytest.mark.slow
def test_scores_tell_methods_apart(report: bench.Report) -> None:
    """A neighbour embedding keeps far more kNN than the 2-D PCA projection of digits."""
    assert row(report.table, "nomad")["NP@10"] > row(report.table, "pca")["NP@10"] + 0.1


@pytest.mark.slow
def test_method_not_installed_is_skipped_with_a_note(report: bench.Report) -> None:
    skipped = row(report.table, "not_installed")
    assert skipped[bench.NOTE].startswith("skipped:")
    assert "not_installed_peer" in skipped[bench.NOTE]
    assert np.isnan(skipped[bench.TOTAL])


@pytest.mark.slow
def test_method_that_raises_is_reported_and_the_run_goes_on(report: bench.Report) -> None:
    failed = row(report.table, "raises")
    assert failed[bench.NOTE].startswith("failed:") and "svd_solver" in failed[bench.NOTE]
    assert np.isnan(failed[bench.TOTAL])
    assert np.isfinite(row(report.table, "nomad")[bench.TOTAL])  # listed after it


@pytest.mark.slow
def test_markdown_names_input_hardware_and_command(report: bench.Report) -> None:
    text = report.markdown()
    assert "digits: n=1,797, PCA-50 of 64 dims" in text
    assert "python -m experiments.bench" in text and "'methods=[pca,raises,nomad" in text
    assert "cores usable" in text and "GPU:" in text
    assert "time / opentsne" in text and "failed [1]" in text and "skipped [2]" in text
    assert "[1] raises failed: InvalidParameterError" in text


# --- requests refused before any work -------------------------------------------------------


def test_unknown_method_is_refused_before_loading_data(
    extra_conf: Path, tmp_path: Path, no_data: None
) -> None:
    with pytest.raises(InputError, match="no method 'tsne_typo'.*opentsne"):
        run_in_process(["methods=[pca,tsne_typo]"], extra_conf, tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["methods=[pca,pca]"], "more than once"),
        (["methods=[pca]", "+method_overrides.nomad.n_epochs=5"], "'nomad' is not in methods"),
        (["methods=[nomad]", "+method_overrides.nomad.no_such_key=1"], "no parameter no_such_key"),
        (["methods=[pca]", "pca_dims=0"], "pca_dims=0"),
    ],
)
def test_bad_requests_are_refused_before_loading_data(
    extra_conf: Path, tmp_path: Path, no_data: None, overrides: list[str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        run_in_process(overrides, extra_conf, tmp_path)


# --- the command line ------------------------------------------------------------------------


def test_command_line_prints_and_writes_the_table(tmp_path: Path) -> None:
    """Methods run in processes spawned from ``python -m experiments.bench``; no openTSNE, so
    no ratio column; ``pca_dims=null`` keeps the 64 pixel dims."""
    output = tmp_path / "table.md"
    env = {**os.environ, "NEBENCH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [
            sys.executable, "-m", "experiments.bench", "methods=[pca]", "pca_dims=null",
            f"output={output}", f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text()
    assert text in done.stdout
    assert "digits: n=1,797, 64 dims" in text and "pca" in text
    assert "time / opentsne" not in text and "failed" not in text
    assert not list((tmp_path / "cache").glob("bench-*"))  # scratch files removed
    numbers = pd.read_csv(output.with_suffix(".csv"))  # the same rows as numbers, for plots
    assert list(numbers["method"]) == ["pca"] and list(numbers["n"]) == [1797]
    assert numbers.loc[0, bench.METRICS] > 0 and numbers.loc[0, bench.TOTAL] > 0


def test_cne_match_gives_our_methods_the_settings_cne_runs_with():
    """``--config-name cne_match``: our InfoNC-t-SNE and Neg-t-SNE get the values cne's adapter
    runs with (graph, batch, negatives, epochs, lr, aggregation, clipping, start), and the cne
    rows run the same loss and spectrum point as ours."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("cne_match", overrides=["dataset=digits"])
        cne = {name: compose("config", overrides=[f"method={name}"]).method for name in ("cne", "cne_neg")}
        neg = compose("config", overrides=["method=neg_tsne"]).method
    assert list(cfg.methods) == ["infonc_tsne", "cne", "neg_tsne", "cne_neg"]
    for ours, theirs in (("infonc_tsne", "cne"), ("neg_tsne", "cne_neg")):
        o, t = cfg.method_overrides[ours], cne[theirs]
        assert o.sampling == "edges" and o.graph == "binary" and o.noise == "batch_neighbors"
        assert (o.n_neighbors, o.n_noise, o.n_epochs, o.batch_size) == (
            t.n_neighbors, t.negative_samples, t.n_epochs, t.batch_size)
        # cne's auto lr: 1.0 non-parametric, and it clips each coordinate at 4; its InfoNCE loss is
        # half ours (temperature / base_temperature = 0.5), so ours takes lr 0.5 and clips at 8
        factor = 0.5 if ours == "infonc_tsne" else 1.0
        assert o.learning_rate == 1.0 * factor and t.learning_rate == "auto"
        assert o.clip_grad == 4 / factor and t.clip_grad is True
        assert o.aggregation == t.loss_aggregation and o.init_scale == t.init_scale
        assert cfg.method_overrides[theirs].early_exaggeration is False
        assert cfg.method_overrides[theirs].knn == "exact" and o.knn == "cells" and o.n_probe >= 64  # one graph
    assert cne["cne_neg"].loss_mode == "neg" and cne["cne_neg"].s == neg.s


def test_the_printed_command_names_a_config_other_than_the_default():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, flag in (("cne_match", "--config-name cne_match "), ("bench", "")):
            cfg = compose(name, overrides=["dataset=digits"], return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            assert bench.command() == f"python -m experiments.bench {flag}dataset=digits"
