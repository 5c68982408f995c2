"""Tests for NOMAD on several devices (nomad/distributed.py, sharding in nomad/engine.py).

nomad-projection Figure 2: cells are sharded across devices, positive forces stay local and
only the matrix of cell means is all-gathered (once per epoch). Here the devices are CPU
processes on gloo. The multi-process runs take ~10 s each (process start-up and imports
dominate), so one instrumented run is shared by several tests; the fault, torchrun and
NP@10 runs are marked slow.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numba
import numpy as np
import psutil
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import nomad.engine as engine_module
from nebench.errors import InputError
from nomad import NOMAD, distributed
from nomad.affinities import p_ji
from nomad.engine import assign_cells_to_devices, make_shards
from nomad.index import build_index
from nomad.losses import InfoNCE
from nomad.optimize import Comm, TrainSpec, _ShardTrainer

REPO = Path(__file__).resolve().parents[1]

#: every torch.distributed call that moves data or synchronises processes
COLLECTIVES = (
    "all_gather", "all_gather_into_tensor", "all_gather_object", "all_reduce", "all_to_all",
    "all_to_all_single", "barrier", "batch_isend_irecv", "broadcast", "broadcast_object_list",
    "gather", "gather_object", "irecv", "isend", "monitored_barrier", "recv", "reduce",
    "reduce_scatter", "reduce_scatter_tensor", "scatter", "scatter_object_list", "send",
)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n, n_features=10, centers=5, random_state=seed)
    return X.astype(np.float32), y


pytestmark = pytest.mark.usefixtures("one_thread")


# -- an instrumented 2-process run -----------------------------------------------------------------
def _instrumented_worker(rank: int, outdir: str, worker, *args) -> None:
    """Runs nomad's worker with every torch.distributed collective counted, noting whether
    it happened during training, and the thread counts the worker set for training."""
    import torch.distributed as dist

    import nomad.distributed as nd

    log = {"calls": [], "threads": None}
    phase = ["setup"]
    for name in COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counted(*a, _original=original, _name=name, **kw):
            tensors = [x for x in a if isinstance(x, torch.Tensor)]
            log["calls"].append({"op": _name, "phase": phase[0],
                                 "shapes": [list(t.shape) for t in tensors],
                                 "dtypes": [str(t.dtype) for t in tensors]})
            return _original(*a, **kw)

        setattr(dist, name, counted)
    train_rank = nd._train_rank

    def train_and_note(*a, **kw):
        log["threads"] = [torch.get_num_threads(), numba.get_num_threads()]
        phase[0] = "train"
        try:
            return train_rank(*a, **kw)
        finally:
            phase[0] = "after"

    nd._train_rank = train_and_note
    try:
        worker(rank, *args)
    finally:
        Path(outdir, f"rank{rank}.json").write_text(json.dumps(log))


N_EPOCHS = 10
FIT_KW = {"n_epochs": N_EPOCHS, "devices": 2, "accelerator": "cpu", "n_cells": 6, "random_state": 0}


@pytest.fixture(scope="module")
def two_process_fit(tmp_path_factory):
    import torch.multiprocessing as mp

    outdir = tmp_path_factory.mktemp("collectives")
    real_spawn = mp.spawn

    def spawn(fn, args=(), nprocs=1, join=True, **kwargs):
        return real_spawn(_instrumented_worker, args=(str(outdir), fn, *args), nprocs=nprocs,
                          join=join, **kwargs)

    X, y = blobs(1000)
    model = NOMAD(**FIT_KW)
    with pytest.MonkeyPatch.context() as mp_patch:
        mp_patch.setattr(mp, "spawn", spawn)
        Y = model.fit_transform(X)
    logs = [json.loads((outdir / f"rank{r}.json").read_text()) for r in range(2)]
    return {"X": X, "y": y, "Y": Y, "model": model, "logs": logs}


def test_two_processes_embed_in_input_order(two_process_fit):
    Y, y, model = two_process_fit["Y"], two_process_fit["y"], two_process_fit["model"]
    assert Y.shape == (1000, 2) and Y.dtype == np.float32 and np.isfinite(Y).all()
    # rows come back in input order: the labels of the input still match the clusters
    assert cross_val_score(KNeighborsClassifier(10), Y, y, cv=5).mean() > 0.95
    assert model.n_cells_ >= 2
    assert len(model.loss_history_) == N_EPOCHS and np.isfinite(model.loss_history_).all()
    assert {"knn", "init", "fit"} <= set(model.timings_)


def test_only_cell_means_cross_process_boundaries(two_process_fit):
    model = two_process_fit["model"]
    max_cells = int(np.bincount(assign_cells_to_devices(model.index_.cell_sizes(), 2)).max())
    per_call = 2 * max_cells * 2 * 4  # world_size x (max cells per rank, 2) float32
    for stats in model.comm_stats_:
        assert stats["bytes_by_tag"] == {"cell_means": N_EPOCHS * per_call}
        assert stats["calls_by_tag"] == {"cell_means": N_EPOCHS}  # mean_refresh="epoch"
    assert model.bytes_per_epoch_ == per_call
    for log in two_process_fit["logs"]:
        during = [c for c in log["calls"] if c["phase"] == "train"]
        assert [c["op"] for c in during] == ["all_gather"] * N_EPOCHS
        for call in during:
            assert call["shapes"] == [[max_cells, 2]] and call["dtypes"] == ["torch.float32"]
        after = [c["op"] for c in log["calls"] if c["phase"] != "train"]
        assert set(after) <= {"barrier"}  # results travel through files, not collectives


def test_cpu_workers_share_the_cores(two_process_fit):
    budget = max(1, (os.cpu_count() or 1) // 2)
    for log in two_process_fit["logs"]:
        torch_threads, numba_threads = log["threads"]
        assert torch_threads <= budget and numba_threads <= budget


@pytest.mark.slow
def test_torchrun_joins_the_process_group_and_matches_spawn(two_process_fit, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import glob
        import os
        import sys
        import numpy as np
        import torch.distributed as dist
        from sklearn.datasets import make_blobs
        from nomad import NOMAD, distributed

        X, _ = make_blobs(1000, n_features=10, centers=5, random_state=0)
        model = NOMAD(**{FIT_KW!r})
        Y = model.fit_transform(X.astype(np.float32))
        if int(os.environ["RANK"]) == 0:
            np.save(sys.argv[1], Y)
            print("CALLS", model.comm_stats_[1]["calls_by_tag"]["cell_means"])
        assert not dist.is_initialized()  # nomad closes the group it created
        # ... and frees it: gloo's threads of a group that outlives destroy_process_group()
        # can abort the interpreter's exit
        gloo = [t for t in glob.glob("/proc/self/task/*/comm") if "gloo" in open(t).read()]
        assert not gloo, f"{{len(gloo)}} gloo threads outlive the process group"
    """))
    out = tmp_path / "Y.npy"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(out)],
        check=False, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"CALLS {N_EPOCHS}" in proc.stdout
    np.testing.assert_array_equal(np.load(out), two_process_fit["Y"])  # same shards, same seeds


# -- a dying worker fails the job ------------------------------------------------------------------
def run_bounded(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, set[int], set[int]]:
    """Run cmd, collecting the pids of its descendants; return its exit code, stderr, those pids
    and the ones still running 5 s after it exited (found before this helper's own clean-up,
    which kills everything, past the timeout too)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd} still running after {timeout} s")
            try:
                seen |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.2)
        _, err = proc.communicate()
        grace = time.monotonic() + 5.0
        while any(running(p) for p in seen) and time.monotonic() < grace:
            time.sleep(0.2)
        return proc.returncode, err, seen, {p for p in seen if running(p)}
    finally:
        for pid in seen | {proc.pid}:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


@pytest.mark.slow  # 16-26 s: a parent interpreter plus two workers start and import torch
def test_a_dying_worker_fails_the_job(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from sklearn.datasets import make_blobs
        from nomad import NOMAD, distributed

        if __name__ == "__main__":
            X, _ = make_blobs(600, n_features=8, centers=4, random_state=0)
            NOMAD(n_epochs=5, devices=2, accelerator="cpu", n_cells=4).fit_transform(
                X.astype(np.float32))
    """))
    rc, err, children, left = run_bounded([sys.executable, str(script)],
                                          subprocess_env(NOMAD_FAULT_RANK="1"), timeout=120)
    assert rc != 0
    assert "injected fault on rank 1" in err
    assert children, "no worker processes were started"
    assert not left, "workers were left running"


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- 2 processes vs 1 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture_3000() -> np.ndarray:
    """3000 points of 8 Gaussians in 3 dimensions, rotated into 20."""
    Z, _ = make_blobs(3000, n_features=3, centers=8, cluster_std=1.0, center_box=(-15, 15),
                      random_state=0)
    R = np.linalg.qr(np.random.default_rng(0).normal(size=(20, 20)))[0][:3]
    return (Z @ R).astype(np.float32)



@pytest.mark.slow
def test_two_processes_match_one_in_neighborhood_preservation(mixture_3000):
    from metrics import neighborhood_preservation

    X = mixture_3000
    # each head its own noise draw: at 150 heads per device a step, groups of 16 cost the two
    # processes about 0.02 NP@10 more than one (README, "Defaults"); this checks the sharding at
    # the paper's n/10 (at NOMAD's n/5 the 1,500-point shards lose 0.05 at these 50 epochs)
    kw = {"n_epochs": 50, "n_cells": 8, "accelerator": "cpu", "random_state": 0, "noise_group": 1,
          "lr_scale": 0.1}
    np1 = neighborhood_preservation(X, NOMAD(devices=1, **kw).fit_transform(X), ks=(10,),
                                    n_eval=None)[10][0]
    np2 = neighborhood_preservation(X, NOMAD(devices=2, **kw).fit_transform(X), ks=(10,),
                                    n_eval=None)[10][0]
    assert np1 > 0.3
    assert abs(np1 - np2) <= 0.03, (np1, np2)


# -- sharding and the multi-device surrogate, in one process ---------------------------------------
@pytest.fixture(scope="module")
def four_cell_index():
    X, _ = make_blobs(400, n_features=6, centers=4, random_state=0)
    idx, _ = build_index(X.astype(np.float32), 5, n_cells=4, seed=0)
    Y0 = np.random.default_rng(0).normal(scale=2.0, size=(400, 2)).astype(np.float32)
    return idx, Y0


def test_assign_cells_to_devices_balances_the_load():
    sizes = np.array([50, 10, 40, 30, 20, 25])
    owner = assign_cells_to_devices(sizes, 3)
    load = np.bincount(owner, weights=sizes, minlength=3)
    assert load.sum() == sizes.sum() and set(owner) == {0, 1, 2}
    assert load.max() - load.min() <= sizes.max()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_make_shards_keeps_cells_whole_and_neighbours_local(four_cell_index, world_size):
    idx, Y0 = four_cell_index
    shards = make_shards(idx, Y0, world_size)
    rows = np.concatenate([s.rows for s in shards])
    np.testing.assert_array_equal(np.sort(rows), np.arange(400))  # a partition of the points
    for s in shards:
        assert s.rank == shards.index(s) and s.n_total == 400
        assert (np.diff(s.cell) >= 0).all()  # contiguous, sorted by cell
        np.testing.assert_array_equal(s.cell, idx.labels[s.rows])
        np.testing.assert_array_equal(s.Y0, Y0[s.rows])
        assert (s.cell_rank[s.cell] == s.rank).all()  # every cell lives on one device
        assert s.neighbors.min() >= 0 and s.neighbors.max() < len(s.rows)
        np.testing.assert_array_equal(s.rows[s.neighbors], idx.neighbors[s.rows])


def test_more_devices_than_cells_is_an_input_error(four_cell_index):
    idx, Y0 = four_cell_index
    with pytest.raises(InputError, match="n_cells"):
        make_shards(idx, Y0, 5)


class TwoRankComm(Comm):
    """Rank 0 of two, in one process: the all-gather returns this rank's block and a given
    block for rank 1."""

    def __init__(self, other_block: torch.Tensor):
        super().__init__(world_size=2, rank=0)
        self.other_block = other_block

    def all_gather(self, t, tag):
        self.calls_by_tag[tag] = self.calls_by_tag.get(tag, 0) + 1
        return [t, self.other_block]


def spec_for(approximate: str, batch_size: int = 40) -> TrainSpec:
    return TrainSpec(loss=InfoNCE(), p=p_ji(5), n_epochs=1, learning_rate=40.0,
                     batch_size=batch_size, n_noise=20.0, noise_samples=4,
                     approximate=approximate, backend="torch", seed=0)


def test_remote_cells_enter_as_their_means_by_hand(four_cell_index):
    """Figure 2 on rank 0 of 2: local noise sampled, every cell of rank 1 a mean (eq. 4)."""
    idx, Y0 = four_cell_index
    shards = make_shards(idx, Y0, 2)
    s0, s1 = shards
    sizes = idx.cell_sizes().astype(np.float64)
    remote_cells = np.unique(s1.cell)  # ascending ids: rank 1's block order
    block = torch.zeros(int(np.bincount(s0.cell_rank).max()), 2)
    block[: len(remote_cells)] = torch.as_tensor(
        np.stack([s1.Y0[s1.cell == r].mean(0) for r in remote_cells]))
    tr = _ShardTrainer(s0, spec_for("remote"), TwoRankComm(block))
    assert tr.uses_means

    mu = tr.cell_means()
    mu_hand = np.stack([Y0[idx.labels == r].mean(0) for r in range(4)])
    np.testing.assert_allclose(mu.numpy(), mu_hand, rtol=1e-5, atol=1e-6)

    n, M, S, n0 = 400, 20.0, 4, len(s0.rows)
    heads, noise, size = tr._sample(tr.B, S)
    assert (size == n0).all() and int(noise.max()) < n0  # noise only from local points
    c_noise = M * size.float() / n / S
    c_mu = tr._mean_weights(heads)
    expected = M * sizes / n * np.isin(np.arange(4), remote_cells)
    np.testing.assert_allclose(c_mu.numpy(), np.broadcast_to(expected, c_mu.shape), rtol=1e-6)

    def q(a, b):
        return 1.0 / (1.0 + ((a - b) ** 2).sum(-1))

    Y, h, nz = s0.Y0.astype(np.float64), heads.numpy(), noise.numpy()
    z = (M * n0 / n / S) * q(Y[h][:, None], Y[nz]).sum(1)
    z += sum(M * sizes[r] / n * q(Y[h], mu_hand[r]) for r in remote_cells)
    q_pos = q(Y[h][:, None], Y[s0.neighbors[h]])
    by_hand = (p_ji(5).numpy() * (-np.log(q_pos) + np.log(q_pos + z[:, None]))).sum()
    for backend_grad in (tr._grad_torch, tr._grad_fused):
        _, value, _ = backend_grad(heads, noise, c_noise, mu, c_mu, 1.0)
        assert value == pytest.approx(by_hand, rel=1e-5)


def test_a_step_moves_points_as_on_one_device(four_cell_index):
    """With approximate='others' one and two devices optimise the same surrogate: each
    head's forces stay in its cell and the cell means are constants. The same samples
    must then move every point by the same amount."""
    idx, Y0 = four_cell_index
    (one,), two = make_shards(idx, Y0, 1), make_shards(idx, Y0, 2)
    tr1 = _ShardTrainer(one, spec_for("others"), Comm())
    tr2 = [_ShardTrainer(s, spec_for("others"), Comm(world_size=2, rank=s.rank)) for s in two]
    assert tr1.B == sum(t.B for t in tr2) == 40
    mu = torch.as_tensor(np.stack([Y0[idx.labels == r].mean(0) for r in range(4)]),
                         dtype=torch.float32)
    local_of = np.empty(400, dtype=np.int64)
    local_of[one.rows] = np.arange(400)  # global row -> index on the single device

    rng = np.random.default_rng(0)
    draws1 = []
    for s, t in zip(two, tr2):
        heads = rng.choice(len(s.rows), t.B, replace=False)
        lo, size = t.cell_lo[heads].numpy(), t.cell_n[heads].numpy()
        noise = lo[:, None] + rng.integers(0, size[:, None], (t.B, 4))
        draw = (torch.as_tensor(heads), torch.as_tensor(noise), torch.as_tensor(size))
        t._sample = lambda B, S, draw=draw: draw
        draws1.append((local_of[s.rows[heads]], local_of[s.rows[noise]], size))
    heads1, noise1, size1 = (np.concatenate(parts) for parts in zip(*draws1))
    tr1._sample = lambda B, S: tuple(map(torch.as_tensor, (heads1, noise1, size1)))

    tr1.step(mu, 40.0, 1.0)
    for s, t in zip(two, tr2):
        t.step(mu, 40.0, 1.0)
        moved1 = tr1.Y.detach().numpy()[local_of[s.rows]] - s.Y0
        moved2 = t.Y.detach().numpy() - s.Y0
        assert np.abs(moved1).max() > 0
        np.testing.assert_allclose(moved2, moved1, rtol=1e-4, atol=1e-6)


# -- under torchrun (environment detection, one-rank group) ----------------------------------------
def test_launched_by_torchrun_reads_the_environment(monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    assert not distributed.launched_by_torchrun()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched_by_torchrun()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert distributed.launched_by_torchrun()


@pytest.fixture
def one_rank_group(monkeypatch):
    """Environment of a one-process torchrun job; the group is torn down afterwards."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(distributed._free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not dist.is_initialized()
    yield dist
    if dist.is_initialized():
        dist.destroy_process_group()


def test_torchrun_world_size_must_match_devices(four_cell_index, one_rank_group):
    idx, Y0 = four_cell_index
    with pytest.raises(ValueError, match="devices"):
        distributed.run_sharded(make_shards(idx, Y0, 2), spec_for("remote"), "cpu", timeout_s=30)


def test_torchrun_one_rank_trains_its_shard(four_cell_index, one_rank_group):
    idx, Y0 = four_cell_index
    shards = make_shards(idx, Y0, 1)
    Ys, stats = distributed.run_sharded(shards, spec_for("remote"), "cpu", timeout_s=30)
    assert len(Ys) == 1 and Ys[0].shape == (400, 2) and np.isfinite(Ys[0]).all()
    assert np.abs(Ys[0] - shards[0].Y0).max() > 0
    assert stats == [{"bytes_by_tag": {}, "calls_by_tag": {}}]


# -- CUDA paths ------------------------------------------------------------------------------------
def _no_cuda_beyond_device_count(monkeypatch, count: int) -> None:
    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"torch.cuda.{name} called")
        return call

    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    for name in ("is_available", "init", "_lazy_init", "set_device", "current_device",
                 "synchronize", "get_device_name", "get_device_properties", "mem_get_info"):
        if hasattr(torch.cuda, name):
            monkeypatch.setattr(torch.cuda, name, forbidden(name))

    def no_index(*args, **kwargs):
        raise AssertionError("the index was built before the accelerator was checked")

    monkeypatch.setattr(engine_module, "build_index", no_index)


@pytest.mark.parametrize("visible,devices", [(0, 1), (0, 2), (1, 2)])
def test_cuda_without_enough_gpus_is_an_input_error(monkeypatch, visible, devices):
    _no_cuda_beyond_device_count(monkeypatch, visible)
    X, _ = blobs(200)
    with pytest.raises(InputError, match=rf"{devices} CUDA devices but {visible} are visible"):
        NOMAD(accelerator="cuda", devices=devices).fit_transform(X)


def test_auto_accelerator_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    X, _ = blobs(300)
    Y = NOMAD(n_epochs=5, accelerator="auto").fit_transform(X)
    assert Y.shape == (300, 2) and np.isfinite(Y).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_embeds():
    X, y = blobs(1000)
    Y = NOMAD(n_epochs=30, accelerator="cuda").fit_transform(X)
    assert Y.shape == (1000, 2) and Y.dtype == np.float32 and np.isfinite(Y).all()
    assert cross_val_score(KNeighborsClassifier(10), Y, y, cv=5).mean() > 0.95


def test_joined_run_tears_down_the_group_it_created(four_cell_index, one_rank_group):
    idx, Y0 = four_cell_index
    distributed.run_sharded(make_shards(idx, Y0, 1), spec_for("remote"), "cpu", timeout_s=30)
    assert not one_rank_group.is_initialized()


def test_joined_run_keeps_the_callers_group(four_cell_index, one_rank_group):
    one_rank_group.init_process_group("gloo")
    idx, Y0 = four_cell_index
    distributed.run_sharded(make_shards(idx, Y0, 1), spec_for("remote"), "cpu", timeout_s=30)
    assert one_rank_group.is_initialized()


# -- a worker dying after its results are saved ------------------------------------------------------
def _spawn_that_dies_in_teardown(saved_ranks):
    """A stand-in for mp.spawn: the ranks in saved_ranks save their results as _worker does,
    then process 0 dies of SIGABRT (as gloo's teardown can: "terminate called without an
    active exception")."""
    import torch.multiprocessing as mp

    def spawn(fn, args=(), nprocs=1, join=True, **kwargs):
        wd = Path(args[1])
        for r in saved_ranks:
            np.save(wd / f"Y{r}.npy", np.full((3, 2), r, dtype=np.float32))
            (wd / f"stats{r}.json").write_text(json.dumps({"loss_history": [float(r)]}))
        raise mp.ProcessExitedException("process 0 terminated with signal SIGABRT", error_index=0,
                                        error_pid=1, exit_code=-6, signal_name="SIGABRT")

    return spawn


def _run_with_spawn(monkeypatch, saved_ranks):
    import types

    import torch.multiprocessing as mp

    monkeypatch.setattr(distributed, "_save_shard", lambda path, shard: None)
    monkeypatch.setattr(mp, "spawn", _spawn_that_dies_in_teardown(saved_ranks))
    spec = types.SimpleNamespace(loss_history=[])
    Ys, _ = distributed.run_sharded([types.SimpleNamespace(rank=r) for r in range(2)], spec, "cpu")
    return Ys, spec


def test_a_worker_dying_after_every_rank_saved_keeps_the_results(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="nomad.distributed"):
        Ys, spec = _run_with_spawn(monkeypatch, (0, 1))
    assert [Y[0, 0] for Y in Ys] == [0.0, 1.0] and spec.loss_history == [0.0]
    assert "after every worker had saved its results" in caplog.text


def test_a_worker_dying_before_saving_fails_the_job(monkeypatch):
    with pytest.raises(distributed.PeerLostError, match="process 0 of 2 died"):
        _run_with_spawn(monkeypatch, (1,))
