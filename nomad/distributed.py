"""One process per device (nomad-projection Figure 2).

``run_sharded`` trains every shard on its own process: it spawns ``world_size`` workers
(NCCL on CUDA, gloo on CPU) or, when already launched under ``torchrun``, joins the
existing process group and trains this rank's shard. Shards travel to spawned workers
through files in a temporary directory; during training the processes exchange only
the cell-mean matrix (:class:`nomad.optimize.Comm`). A worker that dies makes the whole
job fail: ``torch.multiprocessing.spawn`` terminates the others and re-raises, and the
process-group timeout bounds any collective that waits on a dead peer. A peer that dies (its
process killed, its node lost) surfaces as ``PeerLostError``, naming the rank that saw it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

# torch.distributed.nn.functional binds ``group=group.WORLD`` as a default argument when it is
# first imported, and torch.optim imports it (through torch._dynamo) when the trainer builds
# its optimizer. Imported after init_process_group, it holds that group for good:
# destroy_process_group() no longer frees it, gloo's worker threads outlive it, and one that
# frees a tensor while the interpreter exits aborts the process ("terminate called without
# an active exception"). Imported here, before nomad makes any group, it binds None.
import torch.distributed.nn.functional

from .optimize import Comm, Shard, TrainSpec, train_shard

log = logging.getLogger(__name__)


#: what gloo, NCCL and the c10d store say when the process on the other end is gone
PEER_LOST_MESSAGES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                      "Timed out", "timed out", "timeout", "communicator was aborted")


class PeerLostError(RuntimeError):
    """A process of a multi-process run died or stopped answering; the run cannot finish."""


def _peer_lost(exc: BaseException, rank: int, world_size: int) -> PeerLostError | None:
    """The error to raise instead of ``exc`` if ``exc`` says a peer process is gone."""
    if not any(text in str(exc) for text in PEER_LOST_MESSAGES):
        return None
    return PeerLostError(
        f"NOMAD rank {rank} of {world_size}: another process of this run died or stopped "
        "answering during training (killed, out of memory, or its node lost; its log, or "
        f"torchrun's summary on its node, names the cause). {type(exc).__name__}: {exc}")


def launched_by_torchrun() -> bool:
    """True when this process is one rank of a job started by torchrun."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device(accelerator: str, rank: int) -> str:
    return f"cuda:{rank}" if accelerator == "cuda" else "cpu"


def _save_shard(path: Path, shard: Shard) -> None:
    np.savez(path, **{k: v for k, v in vars(shard).items() if isinstance(v, np.ndarray)},
             rank=shard.rank, n_total=shard.n_total)


def _load_shard(path: Path) -> Shard:
    with np.load(path) as z:
        return Shard(rank=int(z["rank"]), rows=z["rows"], Y0=z["Y0"], neighbors=z["neighbors"],
                     cell=z["cell"], cell_sizes=z["cell_sizes"], cell_rank=z["cell_rank"],
                     n_total=int(z["n_total"]))


def _train_rank(shard: Shard, spec: TrainSpec, world_size: int) -> tuple[np.ndarray, Comm]:
    comm = Comm(world_size, shard.rank)
    Y = train_shard(shard, spec, comm)
    return Y, comm


def _worker(rank: int, world_size: int, workdir: str, accelerator: str, timeout_s: float) -> None:
    backend = "nccl" if accelerator == "cuda" else "gloo"
    if accelerator == "cuda":
        torch.cuda.set_device(rank)
    else:  # share the cores between the CPU workers
        import numba

        threads = max(1, (os.cpu_count() or 1) // world_size)
        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    try:
        wd = Path(workdir)
        with open(wd / "spec.pkl", "rb") as f:
            spec: TrainSpec = pickle.load(f)
        spec.device = _device(accelerator, rank)
        spec.verbose = spec.verbose and rank == 0
        Y, comm = _train_rank(_load_shard(wd / f"shard{rank}.npz"), spec, world_size)
        np.save(wd / f"Y{rank}.tmp.npy", Y)
        os.replace(wd / f"Y{rank}.tmp.npy", wd / f"Y{rank}.npy")
        stats = {"bytes_by_tag": comm.bytes_by_tag, "calls_by_tag": comm.calls_by_tag,
                 "loss_history": spec.loss_history}
        (wd / f"stats{rank}.tmp").write_text(json.dumps(stats))
        os.replace(wd / f"stats{rank}.tmp", wd / f"stats{rank}.json")  # last: this rank is done
        dist.barrier()
    except RuntimeError as exc:
        lost = _peer_lost(exc, rank, world_size)
        if lost is None:
            raise
        raise lost from exc
    # Not in a ``finally``: after an error the group stays up until this process exits, so its
    # peers learn of the failure only once this worker has reported it, and spawn, which
    # re-raises the error of the first worker to exit, names the cause, not a lost peer.
    dist.destroy_process_group()


def run_sharded(shards: list[Shard], spec: TrainSpec, accelerator: str,
                timeout_s: float = 600.0) -> tuple[list[np.ndarray], list[dict]]:
    """Train the shards on one process each; returns their embeddings and comm stats."""
    world_size = len(shards)
    if launched_by_torchrun():
        return _run_joined(shards, spec, accelerator, timeout_s)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="nomad_") as wd:
        wd = Path(wd)
        for s in shards:
            _save_shard(wd / f"shard{s.rank}.npz", s)
        with open(wd / "spec.pkl", "wb") as f:
            pickle.dump(spec, f)
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            mp.spawn(_worker, args=(world_size, str(wd), accelerator, timeout_s),
                     nprocs=world_size, join=True)
        except mp.ProcessExitedException as exc:  # killed by a signal or exited without an error
            if not _all_done(wd, world_size):
                hint = ("SIGKILL usually means the out-of-memory killer or the job's memory limit: "
                        "use more devices or a machine with more memory."
                        if exc.signal_name == "SIGKILL" else "Its output above says why.")
                raise PeerLostError(
                    f"NOMAD worker process {exc.error_index} of {world_size} died ({exc}); the "
                    f"other workers were stopped. {hint}") from exc
            log.warning("NOMAD worker process %d of %d died after every worker had saved its "
                        "results (%s), while closing its process group; the results are complete "
                        "and kept", exc.error_index, world_size, exc)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        Ys = [np.load(wd / f"Y{r}.npy") for r in range(world_size)]
        stats = [json.loads((wd / f"stats{r}.json").read_text()) for r in range(world_size)]
    spec.loss_history[:] = stats[0]["loss_history"]
    return Ys, stats


def _all_done(wd: Path, world_size: int) -> bool:
    """Whether every rank saved its embedding and stats (each written atomically, stats last)."""
    return all((wd / f"stats{r}.json").exists() for r in range(world_size))


def _run_joined(shards: list[Shard], spec: TrainSpec, accelerator: str,
                timeout_s: float) -> tuple[list[np.ndarray], list[dict]]:
    """Under torchrun: train this rank's shard, then share all shards' results."""
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if accelerator == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size != len(shards):
        raise ValueError(f"torchrun started {world_size} processes but devices={len(shards)}: "
                         f"set trainer.devices={world_size}")
    if accelerator == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    spec.device = _device(accelerator, int(os.environ.get("LOCAL_RANK", rank)))
    try:
        Y, comm = _train_rank(shards[rank], spec, world_size)
        results: list = [None] * world_size
        dist.all_gather_object(results, (Y, {"bytes_by_tag": comm.bytes_by_tag,
                                             "calls_by_tag": comm.calls_by_tag}))
    except RuntimeError as exc:  # torch.distributed's errors are RuntimeErrors
        lost = _peer_lost(exc, rank, world_size)
        if lost is None:
            raise
        raise lost from exc
    if created:  # a group the caller made is the caller's to close
        dist.destroy_process_group()
    return [r[0] for r in results], [r[1] for r in results]
