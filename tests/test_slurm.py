"""Sweeps on a real SLURM cluster: hydra/launcher=slurm (submitit) against a single-node cluster
started on localhost by tests/slurm/cluster.sh (munged, slurmctld, slurmd with 2 CPUs, its config
and state in a temporary directory), stopped at the end whatever happens.

Needs root and Debian's slurm-wlm and munge (.ci/run installs them); elsewhere the tests skip
and say why. The test cluster has no accounting database, so submitit warns "Bypassing sacct
error" and learns that a job finished from the result file the job writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nebench.results import read_results

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
#: the test node has 2 CPUs; the launcher's default (8 per task) would never be scheduled
ONE_CPU = "hydra.launcher.cpus_per_task=1"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A running single-node cluster; yields the environment that talks to it."""
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(CLUSTER), "start", str(state), "2"], capture_output=True,
                           text=True, timeout=120, check=False)
    try:
        if start.returncode == 2:
            pytest.skip(start.stdout.strip() or start.stderr.strip())
        assert start.returncode == 0, start.stdout + start.stderr + logs(state)
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], timeout=120, check=False)


def logs(state: Path) -> str:
    return "".join(f"\n== {p}\n{p.read_text()[-2000:]}" for p in sorted(state.glob("log/*")))


def sweep(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``python run.py -m hydra/launcher=slurm args``, every output path in tmp_path."""
    env = {
        **env,
        "NEBENCH_RESULTS_DIR": str(tmp_path / "results"),
        "NEBENCH_CACHE_DIR": str(tmp_path / "cache"),
        "HYDRA_FULL_ERROR": "0",
    }
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=slurm", *args, ONE_CPU,
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)


def rows(tmp_path: Path):
    return read_results(tmp_path / "results" / "results.jsonl")


def test_a_sweep_runs_on_slurm_and_lands_one_row_per_job(slurm, tmp_path: Path) -> None:
    result = sweep(["method=nomad,umap", "dataset=digits"], slurm, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    table = rows(tmp_path)
    assert sorted(table["method"]) == ["nomad", "umap"]

    sweep_dir = tmp_path / "sweep"
    # submitted with sbatch by submitit: one array job, its settings from trainer.* and the
    # launcher config, one task per Hydra job
    scripts = list((sweep_dir / ".submitit").glob("*/*_submission.sh"))
    assert len(scripts) == 1, scripts
    script = scripts[0].read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --time=60" in script
    assert "#SBATCH --cpus-per-task=1" in script
    array_id = scripts[0].parent.name
    for task, method in enumerate(("nomad", "umap")):
        job_dir = sweep_dir / f"{task}_{method}_digits_s0"
        assert str(job_dir) in set(table["run_dir"])
        assert "appended a row" in (job_dir / "run.log").read_text()  # the job's log
        task_logs = sweep_dir / ".submitit" / f"{array_id}_{task}"  # SLURM's stdout and stderr
        assert (task_logs / f"{array_id}_{task}_0_log.err").is_file()
        assert f"job_id={array_id}_{task}" in (task_logs / f"{array_id}_{task}_0_log.out").read_text()


def test_a_job_failing_on_slurm_fails_the_sweep_and_the_other_row_lands(slurm, tmp_path) -> None:
    # a bad method parameter that only the fit (on the cluster) finds: scikit-learn rejects it
    result = sweep(["method=pca", "dataset=digits", "method.svd_solver=full,bogus"], slurm,
                   tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-5000:]
    assert "1 job(s) of the sweep failed" in out and "svd_solver" in out, out[-5000:]
    table = rows(tmp_path)
    assert table["method.svd_solver"].tolist() == ["full"]
    failed = tmp_path / "sweep" / "1_pca_digits_s0"
    assert "svd_solver" in (failed / "error.txt").read_text()
    assert not (failed / "metrics.json").exists()
