"""The GPU check (experiments/gpu_check.py): its CPU dry run end to end, its step machinery, and
the CUDA tests it runs on a lent GPU (``-m cuda``; they skip without one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import gpu_check

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def dry_run(tmp_path: Path) -> tuple[dict[str, dict], str, dict]:
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--dry-run", "--jobs", "2",
           "--out", str(out), "--scratch", str(tmp_path / "scratch")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check_logs.txt").exists()
    return {r["step"]: r for r in doc["steps"]}, (out / "gpu_check.md").read_text(), doc


def check_common(rows: dict[str, dict], table: str, doc: dict) -> None:
    assert doc["meta"]["mode"].startswith("dry run")
    assert "| step | what | status | time (s) | result | note |" in table
    for name, row in rows.items():
        assert f"| {name} |" in table
        assert row["status"] in ("ok", "skipped", "failed")
    assert rows["setup"]["status"] == "ok", rows["setup"]
    for name in ("cuda_tests", "dist_nccl_cuda"):  # need CUDA: skipped with a reason
        assert rows[name]["status"] == "skipped" and rows[name]["note"]
    for name in ("nomad_mnist_gpu", "nomad_mnist_cpu"):
        m = rows[name]["metrics"]
        assert rows[name]["status"] == "ok", rows[name]
        assert m["accelerator"] == "cpu" and m["knn_acc"] > 0.5  # 10 classes: chance is 0.1
        assert m["time_total_s"] > 0 and 0 < m["np@10"] <= 1
    dist = rows["dist_gloo_cuda"]
    assert dist["status"] == "ok", dist
    assert dist["metrics"]["ranks_agree"] and dist["metrics"]["collective_devices"] == ["cpu"]
    assert dist["metrics"]["all_gather_calls"] > 0 and dist["metrics"]["knn_acc"] > 0.5


@pytest.mark.slow  # every step at tiny sizes: 95 s on a 2-core machine
def test_dry_run_runs_every_step_and_writes_the_table_and_json(tmp_path):
    rows, table, doc = dry_run(tmp_path)
    check_common(rows, table, doc)
    assert set(rows) == {step.name for step in gpu_check.STEPS} | {"np10_gpu_vs_cpu"}
    # the same seed and code on the CPU twice: the comparison row passes
    assert rows["np10_gpu_vs_cpu"]["status"] == "ok"
    assert rows["np10_gpu_vs_cpu"]["metrics"]["np10_diff"] <= gpu_check.NP10_TOLERANCE
    assert rows["nomad_1m_gpu"]["status"] == "ok", rows["nomad_1m_gpu"]
    torchdr = bool(doc["probe"]["modules"].get("torchdr"))
    for name in ("torchdr_infotsne_gpu", "torchdr_umap_gpu"):
        assert rows[name]["status"] == ("ok" if torchdr else "skipped"), rows[name]
        if torchdr:
            assert rows[name]["metrics"]["knn_acc"] > 0.5
    tsimcne = rows["tsimcne_resnet18"]
    if tsimcne["status"] == "skipped":  # no Fashion-MNIST in NEBENCH_DATA_DIR
        assert "fashion_mnist" in tsimcne["note"]
    else:
        assert tsimcne["status"] == "ok", tsimcne
        assert 0 <= tsimcne["metrics"]["knn_acc"] <= 1 and "heldout_np@10" in tsimcne["metrics"]


# -- the machinery, in this process ---------------------------------------------------------------
@pytest.fixture
def ctx(tmp_path):
    args = gpu_check.parse_args(["--dry-run", "--out", str(tmp_path / "out"),
                                 "--scratch", str(tmp_path / "scratch")])
    context = gpu_check.make_context(args)
    context.probe = {"modules": {"hydra": "1.3"}}
    return context


def _step(name, fn, **kw):
    return gpu_check.Step(name, f"what {name}", fn, limit_s=30, dry_limit_s=30, min_s=1, **kw)


def test_each_outcome_is_a_row_and_the_rest_still_run(ctx):
    def ok(ctx, step, timeout):
        return {"summary": "fine", "metrics": {"x": 1}}

    def skip(ctx, step, timeout):
        raise gpu_check.Skip("not here")

    def fail(ctx, step, timeout):
        raise gpu_check.StepFailed("broke")

    def bug(ctx, step, timeout):
        raise KeyError("oops")

    rows = [gpu_check.run_step(ctx, _step(n, f))
            for n, f in (("a", ok), ("b", skip), ("c", fail), ("d", bug), ("e", ok))]
    assert [r["status"] for r in rows] == ["ok", "skipped", "failed", "failed", "ok"]
    assert rows[0]["metrics"] == {"x": 1} and rows[1]["note"] == "not here"
    assert rows[2]["error"] == "broke" and "KeyError in the check script" in rows[3]["error"]
    doc = json.loads((ctx.out / "gpu_check.json").read_text())  # written after every step
    assert doc["meta"]["mode"].startswith("dry run")


def test_a_step_is_skipped_when_the_budget_is_spent_or_a_module_is_missing(ctx):
    ctx.deadline = 0.0  # long past
    row = gpu_check.run_step(ctx, _step("late", lambda *a: {}))
    assert row["status"] == "skipped" and "out of budget" in row["note"]
    ctx.deadline = float("inf")
    row = gpu_check.run_step(ctx, _step("peer", lambda *a: {}, needs=("torchdr",)))
    assert row["status"] == "skipped" and "torchdr" in row["note"]


def test_a_command_past_its_limit_is_killed(ctx, tmp_path):
    log = tmp_path / "sleep.log"
    proc = gpu_check.run_cmd(ctx, [sys.executable, "-c", "import time; time.sleep(300)"], log,
                             timeout=3)
    assert proc.timed_out and proc.rc is None
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left running
        os.kill(proc.pid, 0)
    done = gpu_check.run_cmd(ctx, [sys.executable, "-c", "raise SystemExit(3)"], log, timeout=60)
    assert done.rc == 3 and not done.timed_out


def test_a_failing_rank_fails_the_step_with_its_error(ctx):
    # NCCL on CPU tensors (or a torch without NCCL) cannot work: both ranks exit with an error
    step = _step("dist_nccl_cuda", gpu_check.step_dist("nccl"))
    with pytest.raises(gpu_check.StepFailed, match="nccl with 2 processes on one device: exit codes"):
        gpu_check.run_dist(ctx, step, 120, "nccl", "")


def test_a_failed_harness_run_reports_the_runners_error(ctx):
    step = _step("bad_run", None)
    with pytest.raises(gpu_check.StepFailed, match=r"run.py exited 1: .*n_epochs"):
        gpu_check.harness_run(ctx, step, 300, ["method=nomad", "dataset=digits", "method.n_epochs=-1",
                                               "trainer.accelerator=cpu"])


def test_np10_row_compares_gpu_with_cpu(ctx):
    def runs(gpu, cpu):
        for name, v, acc in (("nomad_mnist_gpu", gpu, "cuda"), ("nomad_mnist_cpu", cpu, "cpu")):
            ctx.results[name] = {"status": "ok", "metrics": {
                "np@10": v, "rta": 0.6, "time_total_s": 10.0, "accelerator": acc}}
        return gpu_check.np10_check(ctx)

    assert runs(0.360, 0.355)["status"] == "ok"
    row = runs(0.340, 0.360)
    assert row["status"] == "failed" and "0.0200" in row["error"]
    ctx.results["nomad_mnist_cpu"]["status"] = "failed"
    assert gpu_check.np10_check(ctx)["status"] == "skipped"


def test_tsimcne_epochs_fit_the_time_in_the_papers_proportions():
    e = gpu_check.tsimcne_epochs(360, 2.0, None)
    assert sum(e) == pytest.approx(150, abs=2) and e[0] > e[2] > e[1] >= 1
    tiny = gpu_check.tsimcne_epochs(10, 2.0, None)  # no time at all: the documented floor
    assert tiny[0] >= 2 and tiny[1] >= 1 and tiny[2] >= 1 and sum(tiny) <= 6
    assert gpu_check.tsimcne_epochs(999, 2.0, [5, 1, 2]) == [5, 1, 2]


def test_table_cells_cannot_break_the_table(ctx):
    ctx.results["setup"] = {"step": "setup", "what": "a | b", "status": "failed", "seconds": 1.0,
                            "summary": "", "note": "", "error": "line1\nline2 | x"}
    line = next(x for x in gpu_check.markdown(ctx).splitlines() if x.startswith("| setup"))
    assert line.count(" | ") == 5 and "line1 line2 \\| x" in line


def test_unknown_steps_and_jobs_without_dry_run_are_refused():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "nomad_mnist_gpu,typo"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--jobs", "2"])


# -- the GPU peers' device wrappers ---------------------------------------------------------------
def blobs(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    return (rng.normal(0, 6, (4, 10))[y] + rng.normal(0, 1, (n, 10))).astype(np.float32), y


def _knn_acc(Y: np.ndarray, y: np.ndarray) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return cross_val_score(KNeighborsClassifier(10), Y, y, cv=4).mean()


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_torchdr_on_device_embeds(accelerator):
    pytest.importorskip("torchdr")
    from experiments.gpu_peers import TorchDRUMAPOnDevice

    assert "cuda" in TorchDRUMAPOnDevice.accelerators
    X, y = blobs()
    method = TorchDRUMAPOnDevice(accelerator=accelerator, max_iter=100, backend=None, n_jobs=1)
    Y = method.fit_transform(X)
    assert Y.shape == (len(X), 2) and np.isfinite(Y).all()
    assert _knn_acc(Y, y) > 0.9 and set(method.timings_) == {"knn", "fit"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tsimcne_resnet18_trains_on_cuda():
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    cls = get_class(OmegaConf.load(ROOT / "conf" / "method" / "tsimcne.yaml")["_target_"])
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (512, 28 * 28)).astype(np.float32)
    model = cls(image_shape=[28, 28], backbone="resnet18", n_epochs=[1, 1, 1], batch_size=128,
                accelerator="cuda", random_state=0)
    Y = model.fit_transform(X)
    assert Y.shape == (512, 2) and np.isfinite(Y).all()
    assert np.isfinite(model.transform(X[:64])).all()
