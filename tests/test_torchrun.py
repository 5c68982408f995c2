"""Runs across processes and nodes, and runs that die: torchrun on one machine acting as two
nodes, a node or a worker process killed mid-fit, a run killed with SIGKILL.

The device checks a torchrun launch gets come first, on their own. Every other test starts real
processes (``python run.py`` or two ``torchrun`` launches) on digits with every output path in
``tmp_path``; their process trees are killed when a test ends, whatever happens. On this
machine's 2 shared cores they take 10-60 s each (marked slow).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from baselines.pca import PCA
from nebench.devices import launch_rank, resolve_devices
from nebench.errors import InputError
from nebench.results import read_results
from nebench.runner import RESULT_FILES, STAGING_DIR
from nomad import NOMAD

ROOT = Path(__file__).resolve().parents[1]
#: a dead peer must end the run with an error within this many seconds (issues 15.6, 20.2)
DEAD_PEER_BOUND_S = 60
#: NOMAD settings shared by the one-process and the two-node run: the same 8 cells, so the
#: two differ only by the sharding (each node sees the other's cells as their means)
SAME_CELLS = ["method.n_cells=8"]
#: long enough that a run is still training when it is killed; rank 0 logs every 200 epochs
LONG_FIT = ["method.n_epochs=2000", "method.verbose=true"]
FIRST_EPOCH_LOG = "epoch 200/2000"
#: the metrics these tests do not look at, skipped
FEWER_METRICS = ["metrics.n_trust=0", "metrics.n_pairs=0"]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env(tmp_path: Path) -> dict[str, str]:
    """Results and cache in ``tmp_path``; one thread per process (the "nodes" share 2 cores)."""
    return {
        **os.environ,
        "NEBENCH_RESULTS_DIR": str(tmp_path / "results"),
        "NEBENCH_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "0",
    }


def node_cmd(node_rank: int, port: int, args: list[str], run_dir: Path) -> list[str]:
    """One node of a two-node torchrun launch, one process per node, rendezvous on 127.0.0.1."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
        "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
        str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}",
    ]


@contextmanager
def started(cmds: list[list[str]], env: dict[str, str] | list[dict[str, str]],
            tmp_path: Path) -> Iterator[list]:
    """Start ``cmds`` (output to files in tmp_path) with ``env`` (one, or one per command);
    on exit kill them and every descendant."""
    envs = env if isinstance(env, list) else [env] * len(cmds)
    procs, trees = [], []
    try:
        for i, cmd in enumerate(cmds):
            out = open(tmp_path / f"proc{i}.log", "w")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen(cmd, cwd=ROOT, env=envs[i], stdout=out,
                                           stderr=subprocess.STDOUT), out))
            trees.append(psutil.Process(procs[-1][0].pid))
        yield [p for p, _ in procs]
    finally:
        for tree in trees:
            kill_tree(tree)
        for proc, out in procs:
            proc.wait()
            out.close()


def kill_tree(root: psutil.Process) -> None:
    """SIGKILL ``root`` and its descendants (torchrun starts its workers in new sessions, so
    a process group would miss them)."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def output(tmp_path: Path, i: int) -> str:
    return (tmp_path / f"proc{i}.log").read_text()


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen in {timeout} s")
        time.sleep(0.2)


def log_has(run_dir: Path, text: str) -> bool:
    log = run_dir / "run.log"
    return log.exists() and text in log.read_text()


def rows(tmp_path: Path):
    path = tmp_path / "results" / "results.jsonl"
    return read_results(path) if path.exists() else None


def assert_no_result(tmp_path: Path) -> None:
    """Nothing under tmp_path looks like a result, and the results table has no row."""
    table = rows(tmp_path)
    assert table is None or table.empty, table
    left = [p for name in RESULT_FILES for p in tmp_path.rglob(name) if STAGING_DIR not in p.parts]
    assert not left, left


def exit_within(proc: subprocess.Popen, seconds: float, what: str) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} still running {seconds} s after its peer died")


# -- what a torchrun launch asks for --------------------------------------------------------------
@pytest.fixture
def torchrun_env(monkeypatch):
    """This process as rank 1 of a launch of 8 processes, 4 per node, on nodes of 4 GPUs."""
    for key, value in {"RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("nebench.devices._visible_gpus", lambda: 4)


def test_launch_rank_reads_torchrun_s_environment(torchrun_env, monkeypatch) -> None:
    assert launch_rank() == (1, 8)
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key)
    assert launch_rank() == (0, 1)


def test_torchrun_devices_count_every_node_and_gpus_count_per_node(torchrun_env) -> None:
    assert resolve_devices({"gpus": 8}, NOMAD, "nomad") == ("cuda", 8)  # 2 nodes x 4 GPUs
    with pytest.raises(InputError, match="trainer.devices=8"):
        resolve_devices({"gpus": 4}, NOMAD, "nomad")
    with pytest.raises(InputError, match="'pca' runs on one device"):
        resolve_devices({"accelerator": "cpu"}, PCA, "pca")


def test_torchrun_needs_as_many_gpus_per_node_as_processes(torchrun_env, monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 processes on one node of 4 GPUs
    with pytest.raises(InputError, match=r"8 GPU\(s\) requested on this node but torch sees 4"):
        resolve_devices({"gpus": 8}, NOMAD, "nomad")


# -- two nodes ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_torchrun_nodes_make_one_run_one_row_and_match_one_process(tmp_path: Path) -> None:
    """Issue 20.2 and 15.6: two launches as two nodes run one NOMAD fit; rank 0 alone writes
    the run and its row, and NP@10 is within 0.03 of the one-process run."""
    env = run_env(tmp_path)
    common = ["method=nomad", "dataset=digits", "trainer.accelerator=cpu", *SAME_CELLS,
              *FEWER_METRICS]
    port = free_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    args = [*common, "trainer.devices=2"]
    one = [sys.executable, str(ROOT / "run.py"), *common, "trainer.warmup=false",
           f"hydra.run.dir={tmp_path / 'one'}"]
    # all three at once; the one-process run builds its index in a cache of its own
    envs = [env, env, {**env, "NEBENCH_CACHE_DIR": str(tmp_path / "cache_one")}]
    with started([*(node_cmd(r, port, args, nodes[r]) for r in (0, 1)), one], envs,
                 tmp_path) as procs:
        codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0, 0], "\n".join(output(tmp_path, i)[-3000:] for i in range(3))

    table = rows(tmp_path)
    assert len(table) == 2  # the one-process run's and the two nodes' (not one per rank)
    single, multi = (table[table["devices"] == d].iloc[0] for d in (1, 2))
    assert Path(multi["run_dir"]) == nodes[0]
    assert all((nodes[0] / name).is_file() for name in ("embedding.npy", "metrics.json"))
    # rank 1 fitted its share and wrote nothing but its log
    assert not [p.name for p in nodes[1].iterdir() if p.name not in ("run.log", ".hydra")]
    assert "rank 1 of 2: fit done" in (nodes[1] / "run.log").read_text()
    assert single["np@10"] > 0.4
    assert abs(multi["np@10"] - single["np@10"]) <= 0.03, (multi["np@10"], single["np@10"])


@pytest.mark.slow
def test_a_dead_node_ends_the_run_with_a_clear_error(tmp_path: Path) -> None:
    """Issue 20.2: node 1 (its torchrun agent and worker) is SIGKILLed mid-fit; node 0 ends
    within DEAD_PEER_BOUND_S with an error that says a peer died, and records no result."""
    port = free_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    args = ["method=nomad", "dataset=digits", "trainer.accelerator=cpu", "trainer.devices=2",
            *LONG_FIT, *FEWER_METRICS]
    with started([node_cmd(r, port, args, nodes[r]) for r in (0, 1)], run_env(tmp_path),
                 tmp_path) as procs:
        wait_for(lambda: log_has(nodes[0], FIRST_EPOCH_LOG) or procs[0].poll() is not None,
                 "the first epochs")
        assert procs[0].poll() is None, output(tmp_path, 0)[-3000:]
        kill_tree(psutil.Process(procs[1].pid))
        code = exit_within(procs[0], DEAD_PEER_BOUND_S, "node 0")
    out = output(tmp_path, 0)
    assert code != 0
    assert "PeerLostError" in out and "another process of this run died" in out, out[-3000:]
    assert "another process of this run died" in (nodes[0] / "error.txt").read_text()
    assert_no_result(tmp_path)


# -- one machine, spawned workers ------------------------------------------------------------------
@pytest.mark.slow
def test_a_dead_worker_process_ends_the_run_with_a_clear_error(tmp_path: Path) -> None:
    """Issue 15.6: one of the two spawned CPU workers is SIGKILLed mid-fit; the run ends
    within DEAD_PEER_BOUND_S, names the dead worker, stops the other and records nothing."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run.py"), "method=nomad", "dataset=digits",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.warmup=false", *LONG_FIT,
           f"hydra.run.dir={run_dir}"]
    with started([cmd], run_env(tmp_path), tmp_path) as (proc,):
        parent = psutil.Process(proc.pid)

        def workers() -> list[psutil.Process]:
            try:
                kids = parent.children()
                return [p for p in kids if "spawn_main" in " ".join(p.cmdline())]
            except psutil.NoSuchProcess:
                return []

        def busy() -> bool:  # both workers up and past their imports (a second of CPU each)
            try:
                return len(found := workers()) == 2 and all(w.cpu_times().user > 1 for w in found)
            except psutil.NoSuchProcess:
                return False

        wait_for(lambda: proc.poll() is not None or busy(), "two busy workers")
        assert proc.poll() is None, output(tmp_path, 0)[-3000:]
        others = workers()
        victim = others.pop()
        victim.send_signal(signal.SIGKILL)
        code = exit_within(proc, DEAD_PEER_BOUND_S, "the run")
    out = output(tmp_path, 0)
    assert code != 0
    assert "PeerLostError" in out and "terminated with signal SIGKILL" in out, out[-3000:]
    assert "of 2 died" in (run_dir / "error.txt").read_text()
    assert not [p for p in others if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert_no_result(tmp_path)


# -- a run killed with SIGKILL ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_killed_mid_fit_leaves_no_result_and_no_row(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run.py"), "method=nomad", "dataset=digits",
           "trainer.accelerator=cpu", "trainer.warmup=false", *LONG_FIT,
           f"hydra.run.dir={run_dir}"]
    with started([cmd], run_env(tmp_path), tmp_path) as (proc,):
        wait_for(lambda: log_has(run_dir, FIRST_EPOCH_LOG) or proc.poll() is not None,
                 "the first epochs")
        assert proc.poll() is None, output(tmp_path, 0)[-3000:]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    assert_no_result(tmp_path)
    assert (run_dir / "config.yaml").is_file()  # what the runner writes before the fit


@pytest.mark.slow
def test_a_run_killed_while_writing_its_files_leaves_no_result_and_no_row(tmp_path: Path) -> None:
    """The kill lands after the embedding and the plot are written, before the map: the
    files wait in the hidden staging dir, so nothing in the run dir looks like a result."""
    run_dir = tmp_path / "run"
    script = tmp_path / "killed_run.py"
    script.write_text(
        "import os, runpy, signal, sys\n"
        "import nebench.runner\n"
        "nebench.runner.write_map = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"sys.argv = [{str(ROOT / 'run.py')!r}, *sys.argv[1:]]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script), "method=pca", "dataset=digits", "trainer.warmup=false",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=run_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert (run_dir / STAGING_DIR / "embedding.npy").is_file()  # the kill came after it
    assert_no_result(tmp_path)
