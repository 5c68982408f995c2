"""The GPU check (issue 19): one prepared script that runs every CUDA path once on a lent GPU.

    python experiments/gpu_check.py --prepare          # here, once: wheels and data -> .gpu_check/
    python3 experiments/gpu_check.py --out $OUT        # on the GPU machine (device tool, carry .gpu_check)
    python experiments/gpu_check.py --dry-run          # anywhere: CPU only, tiny sizes, same code paths

Steps, in order of priority, each in its own subprocess with its own time limit inside one global
budget (``--budget``, default 480 s: the whole call fits in 8 minutes):

==================== ==========================================================================
``setup``            make the harness importable: the carried wheels (``.gpu_check/wheels``) into a
                     ``--target`` folder, else ``pip install`` from PyPI (the GPU machine reaches no
                     registry: that failure is recorded); the repository itself goes on PYTHONPATH
``cuda_tests``       ``pytest -m cuda`` (tests that skip without a GPU carry the ``cuda`` marker)
``nomad_mnist_gpu``  ``python run.py method=nomad dataset=mnist trainer.accelerator=cuda``: MNIST-70k,
                     PCA-50; time per phase, NP@10, RTA, peak GPU memory
``nomad_mnist_cpu``  the same run on the machine's CPU cores; the ``np10_gpu_vs_cpu`` row checks
                     |NP@10 (GPU) - NP@10 (CPU)| <= 0.01
``dist_gloo_cuda``   two processes share the one GPU: a gloo process group, then ``NOMAD(devices=2,
                     accelerator="cuda")`` joins it as under torchrun, so nomad.distributed runs on
                     CUDA tensors (the collectives' tensor devices are recorded)
``dist_nccl_cuda``   the same over NCCL (NCCL refuses two ranks on one GPU; the error is recorded)
``nomad_1m_gpu``     NOMAD on 1M points (``mnist1m`` where conf/dataset/mnist1m.yaml exists, else
                     ``gaussians_1m``): time and peak GPU memory
``tsimcne_resnet18`` ``method=tsimcne method.backbone=resnet18`` on Fashion-MNIST, ``holdout=true``:
                     epochs sized to its time limit; held-out kNN accuracy (``knn_acc``: 10-NN
                     classifier on the embedded train split, scored on the transformed test split)
``torchdr_*_gpu``    TorchDR's InfoTSNE and UMAP on the GPU through the harness
                     (``experiments/gpu_peers.py`` lets the CPU wrappers take ``accelerator``)
==================== ==========================================================================

Harness runs go through ``run.py`` (results, cache and Hydra run dirs in a scratch folder) and
are read back from each run's ``metrics.json``; a small launcher around ``run.py`` records
``torch.cuda.max_memory_allocated`` at exit, and ``nvidia-smi`` is polled for the device-wide
peak. A step that fails, times out or cannot run is a row of the table, never a crash. Writes
``gpu_check.md`` (the table), ``gpu_check.json`` and ``gpu_check_logs.txt`` under ``--out``
(default ``$OUT``, else ``results/gpu_check``), after every step.

The script itself needs only the standard library, so that it starts on a bare machine.
``--dry-run`` forces the CPU, shrinks every step (digits or a 1,500-point MNIST subsample, a few
epochs, the small CNN for t-SimCNE) and skips what needs CUDA (the CUDA tests, NCCL) with a reason.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: what ``--prepare`` writes and the GPU machine reads (git-ignored through .git/info/exclude)
CARRY = ROOT / ".gpu_check"
NP10_TOLERANCE = 0.01
#: pure-Python packages the GPU image lacks (KINDS.md lists what it has): module -> distribution
NEEDED = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime"}
OPTIONAL = {"torchdr": "torchdr", "faiss": "faiss-cpu"}
#: what pip asks PyPI for, always with --no-deps: a dependency resolved there could replace the
#: image's CUDA build of torch (their other needs, numpy, PyYAML, packaging, are in the image)
PYPI_SPECS = {"hydra": "hydra-core==1.3.8", "omegaconf": "omegaconf==2.3.1",
              "antlr4": "antlr4-python3-runtime==4.9.3", "torchdr": "torchdr==0.5", "faiss": "faiss-cpu"}
#: expected in the GPU image; reported, never installed
BASE = ("torch", "numpy", "scipy", "sklearn", "pandas", "pyarrow", "matplotlib", "numba",
        "filelock", "psutil", "tqdm", "yaml", "pytest")
#: Fashion-MNIST rows carried: the first 20,000 train rows and the 10,000 test rows (~13 MB; the
#: whole file, 31 MB, would leave too little of the 64 MiB a device call carries)
FASHION_SUBSET = "fashion_mnist_30k.npz"
FASHION_ROWS = (20_000, 10_000)

# Runs run.py in this process and records the CUDA allocator's peaks at exit (a failed run exits
# through sys.exit, which runs atexit too).
LAUNCHER = """
import atexit, json, os, runpy, sys
def _gpu_peak():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        with open(os.environ["GPU_CHECK_MEM_FILE"], "w") as f:
            json.dump({"peak_gpu_alloc_gb": torch.cuda.max_memory_allocated() / 1e9,
                       "peak_gpu_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}, f)
atexit.register(_gpu_peak)
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.getcwd(), "run.py"), run_name="__main__")
"""

# Versions of the packages the steps need, and what torch sees (one JSON line).
PROBE = """
import importlib, importlib.metadata as md, json, os, sys
mods = json.loads(sys.argv[1]); out = {"python": sys.version.split()[0], "modules": {}}
for mod, dist in mods.items():
    try:
        importlib.import_module(mod)
        try:
            out["modules"][mod] = md.version(dist)
        except md.PackageNotFoundError:
            out["modules"][mod] = "present"
    except Exception as exc:
        out["modules"][mod] = None
        out.setdefault("errors", {})[mod] = f"{type(exc).__name__}: {exc}"[:300]
try:
    import torch
    out["torch"] = torch.__version__; out["torch_cuda"] = torch.version.cuda
    out["cuda"] = torch.cuda.is_available(); out["gpus"] = torch.cuda.device_count() if out["cuda"] else 0
    if out["cuda"]:
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = p.name; out["gpu_mem_gib"] = round(p.total_memory / 2**30, 1)
        out["gpu_capability"] = f"{p.major}.{p.minor}"
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"[:300]
print("PROBE " + json.dumps(out))
"""


class Skip(Exception):
    """The step cannot run here; the message says why."""


class StepFailed(Exception):
    """The step ran and failed; the message says how."""


@dataclass
class Step:
    name: str
    what: str
    fn: Callable[[Context, Step, float], dict[str, Any]]
    limit_s: float        # on the GPU machine
    dry_limit_s: float    # in a dry run
    min_s: float = 20.0   # not started with less time than this left
    needs: tuple[str, ...] = ("hydra",)  # modules the step imports (skipped where one is missing)


@dataclass
class Context:
    args: argparse.Namespace
    dry: bool
    out: Path
    scratch: Path
    data_dir: Path
    python: str
    start: float
    deadline: float
    env: dict[str, str] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cuda(self) -> bool:
        return not self.dry and bool(self.probe.get("cuda"))

    def has(self, module: str) -> bool:
        return bool(self.probe.get("modules", {}).get(module))

    def log_path(self, name: str) -> Path:
        return self.scratch / "logs" / f"{name}.log"

    def left(self) -> float:
        return self.deadline - time.monotonic()


# -- subprocesses ---------------------------------------------------------------------------------
@dataclass
class Proc:
    rc: int | None  # None: killed at its time limit
    seconds: float
    log: Path
    pid: int

    @property
    def timed_out(self) -> bool:
        return self.rc is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(_read(self.log).splitlines()[-lines:])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _stop(proc: subprocess.Popen) -> None:
    """End a child this script started, with everything it started (its own session)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def start(ctx: Context, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**ctx.env, **(env or {})},
                                start_new_session=True)


def run_cmd(ctx: Context, cmd: list[str], log: Path, timeout: float,
            env: dict[str, str] | None = None) -> Proc:
    """Run ``cmd`` from the repository root, output appended to ``log``; killed after ``timeout`` s."""
    t0 = time.monotonic()
    proc = start(ctx, cmd, log, env)
    try:
        rc: int | None = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        _stop(proc)
        rc = None
    return Proc(rc, time.monotonic() - t0, log, proc.pid)


@contextlib.contextmanager
def gpu_memory_poll(ctx: Context) -> Iterator[dict[str, float]]:
    """Device-wide peak of nvidia-smi's memory.used (GB) while the block runs (CUDA only)."""
    peak: dict[str, float] = {}
    smi = shutil.which("nvidia-smi")
    if not ctx.cuda or smi is None:
        yield peak
        return
    proc = subprocess.Popen([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                             "-lms", "250"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    used: list[float] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            with contextlib.suppress(ValueError):
                used.append(float(line.split(",")[0]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield peak
    finally:
        _stop(proc)
        reader.join(2)
        if used:
            peak["gpu_mem_used_peak_gb"] = max(used) * 2**20 / 1e9  # MiB -> GB


# -- harness runs -------------------------------------------------------------------------------
def harness_run(ctx: Context, step: Step, timeout: float, overrides: list[str]) -> dict[str, Any]:
    """``python run.py <overrides>`` in a scratch run dir; returns its metrics.json (+ GPU peaks)."""
    run_dir = ctx.scratch / "runs" / step.name
    mem_file = ctx.scratch / "runs" / f"{step.name}.gpu_mem.json"
    shutil.rmtree(run_dir, ignore_errors=True)
    mem_file.unlink(missing_ok=True)
    cmd = [ctx.python, "-c", LAUNCHER, *overrides, f"hydra.run.dir={run_dir}"]
    env = {"NEBENCH_CACHE_DIR": str(ctx.scratch / "cache" / step.name),  # kNN built afresh
           "GPU_CHECK_MEM_FILE": str(mem_file)}
    with gpu_memory_poll(ctx) as smi:
        proc = run_cmd(ctx, cmd, ctx.log_path(step.name), timeout, env)
    command = "python run.py " + " ".join(overrides)
    if proc.timed_out:
        raise StepFailed(f"run.py killed at its {timeout:.0f} s limit ({command})")
    metrics_file = run_dir / "metrics.json"
    if proc.rc != 0 or not metrics_file.exists():
        error = _read(run_dir / "error.txt").strip() or proc.tail(8)
        raise StepFailed(f"run.py exited {proc.rc}: {error}")
    metrics = json.loads(metrics_file.read_text())
    if mem_file.exists():
        metrics.update(json.loads(mem_file.read_text()))
    metrics.update(smi)
    metrics["command"] = command
    return metrics


def _phases(m: dict[str, Any]) -> str:
    """``total T s (knn a, init b, fit c)``; the runner's untimed warm-up and the held-out
    transform (not part of the total) after it."""
    apart = {"time_total_s": "", "time_metrics_s": "", "time_warmup_s": "warm-up (not in total)",
             "time_transform_s": "transform (not in total)"}
    phases = [f"{k[5:-2]} {v:.1f}" for k, v in m.items() if k.startswith("time_") and k.endswith("_s")
              and k not in apart and isinstance(v, (int, float))]
    text = f"total {m.get('time_total_s', float('nan')):.1f} s" + (f" ({', '.join(phases)})" if phases else "")
    for key, label in apart.items():
        if label and isinstance(m.get(key), (int, float)):
            text += f", {label} {m[key]:.1f} s"
    return text


def _gpu_mem(m: dict[str, Any]) -> str:
    parts = []
    if "peak_gpu_alloc_gb" in m:
        parts.append(f"peak GPU alloc {m['peak_gpu_alloc_gb']:.2f} GB")
    if "gpu_mem_used_peak_gb" in m:
        parts.append(f"nvidia-smi peak {m['gpu_mem_used_peak_gb']:.2f} GB")
    return ", ".join(parts)


def summarise_run(m: dict[str, Any]) -> str:
    parts = [f"n={m.get('n', '?'):,}" if isinstance(m.get("n"), int) else "", _phases(m)]
    for key, label in (("np@10", "NP@10"), ("rta", "RTA"), ("knn_acc", "kNN acc")):
        if isinstance(m.get(key), (int, float)):
            parts.append(f"{label} {m[key]:.3f}")
    parts += [_gpu_mem(m), f"peak RSS {m['peak_rss_gb']:.2f} GB" if "peak_rss_gb" in m else ""]
    parts.append(f"on {m.get('accelerator', '?')}")
    return "; ".join(p for p in parts if p)


def _accelerator(ctx: Context) -> str:
    return "cuda" if ctx.cuda else "cpu"


def _needs_cuda(ctx: Context) -> str:
    """The note of a GPU step run on the CPU (dry run); Skip where the machine has no GPU."""
    if ctx.dry:
        return "dry run: on the CPU at a tiny size"
    if not ctx.cuda:
        raise Skip("torch sees no CUDA device")
    return ""


def _mnist(ctx: Context) -> list[str]:
    if (ctx.data_dir / "mnist.npz").exists():
        return ["dataset=mnist", *(["dataset.n=1500"] if ctx.dry else [])]
    if ctx.dry:
        return ["dataset=digits"]
    raise Skip(f"no mnist.npz in {ctx.data_dir} (run --prepare here and carry .gpu_check)")


# -- steps -----------------------------------------------------------------------------------------
def step_setup(ctx: Context, step: Step, timeout: float) -> dict[str, Any]:
    """Probe the packages; install the missing ones (carried wheels first, then PyPI)."""
    log = ctx.log_path(step.name)
    deadline = time.monotonic() + timeout
    ctx.probe = probe(ctx, log, deadline)
    missing = [m for m in (*NEEDED, *OPTIONAL) if not ctx.has(m)]
    notes, failures = [], []
    if missing and ctx.dry:
        notes.append("dry run: nothing installed")
    elif missing:
        site = Path(ctx.args.site)
        wheels = sorted(Path(ctx.args.wheels).glob("*.whl"))
        if wheels:
            proc = run_cmd(ctx, [ctx.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                 "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                                 *map(str, wheels)], log, deadline - time.monotonic())
            (notes if proc.rc == 0 else failures).append(
                f"{len(wheels)} carried wheels -> {site}: " + ("ok" if proc.rc == 0 else f"pip exited {proc.rc}"))
            ctx.probe = probe(ctx, log, deadline)
        still = [m for m in (*NEEDED, *OPTIONAL) if not ctx.has(m)]
        if still:
            dists = [PYPI_SPECS[m] for m in still]
            proc = run_cmd(ctx, [ctx.python, "-m", "pip", "install", "-q", "--no-deps", "--retries", "0",
                                 "--timeout", "5", "--target", str(site), *dists], log,
                           min(60.0, deadline - time.monotonic()))
            outcome = "ok" if proc.rc == 0 else ("timed out" if proc.timed_out else f"pip exited {proc.rc}")
            (notes if proc.rc == 0 else failures).append(f"pip install {' '.join(dists)} from PyPI: {outcome}")
            ctx.probe = probe(ctx, log, deadline)
    missing = [m for m in (*NEEDED, *OPTIONAL) if not ctx.has(m)]
    versions = {m: v for m, v in ctx.probe.get("modules", {}).items() if v}
    result = {"versions": versions, "missing": missing, "summary": ", ".join(
        f"{m} {v}" for m, v in versions.items() if m in (*NEEDED, *OPTIONAL, "torch", "numpy", "numba"))}
    if any(m in NEEDED for m in missing):
        still = f"still missing: {', '.join(missing)} (the harness steps are skipped)"
        raise StepFailed("; ".join([*failures, still]))
    if missing:
        notes.append(f"optional, missing: {', '.join(missing)}")
    files = sorted(f.name for f in ctx.data_dir.glob("*.npz"))
    notes.append(f"data: {', '.join(files)}" if files else f"no .npz files in {ctx.data_dir}")
    result["note"] = "; ".join([*notes, *failures])
    return result


def probe(ctx: Context, log: Path, deadline: float) -> dict[str, Any]:
    mods = {**{m: m for m in BASE}, **NEEDED, **OPTIONAL}
    mods.update(sklearn="scikit-learn", yaml="PyYAML")
    proc = run_cmd(ctx, [ctx.python, "-c", PROBE, json.dumps(mods)], log,
                   min(120.0, max(deadline - time.monotonic(), 30.0)))
    for line in reversed(_read(log).splitlines()):
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise StepFailed(f"the package probe failed (exit {proc.rc}): {proc.tail(5)}")


def step_cuda_tests(ctx: Context, step: Step, timeout: float) -> dict[str, Any]:
    if ctx.dry:
        raise Skip("dry run: the CUDA tests need a GPU")
    if not ctx.cuda:
        raise Skip("torch sees no CUDA device")
    base = [ctx.python, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-o", "addopts=",
            "--continue-on-collection-errors", "tests"]
    log = ctx.log_path(step.name)
    proc = run_cmd(ctx, [*base, "-m", "cuda"], log, timeout)
    selection = "-m cuda"
    if proc.rc == 5:  # no test carries the marker: the tests named after CUDA instead
        selection = "-k 'cuda or gpu'"
        proc = run_cmd(ctx, [*base, "-k", "cuda or gpu"], log, timeout - proc.seconds)
    if proc.timed_out:
        raise StepFailed(f"pytest {selection} killed at its limit")
    counts = {k: int(v) for v, k in re.findall(
        r"(\d+) (passed|failed|skipped|errors?|deselected)", proc.tail(3))}
    summary = f"pytest {selection}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
    lines = proc.tail(300).splitlines()
    # "ERROR tests/x.py - ModuleNotFoundError": a module that needs a package the image lacks
    # (openTSNE, umap-learn, ...) cannot be collected; its tests are not CUDA tests
    uncollected = [line.split()[1] for line in lines
                   if line.startswith("ERROR ") and "::" not in line.split(" - ")[0]]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR")) and
              (line.startswith("FAILED") or "::" in line.split(" - ")[0])]
    note = f"not collected: {', '.join(uncollected)}" if uncollected else ""
    if failed or proc.rc not in (0, 1) or not counts.get("passed") or (proc.rc == 1 and not uncollected):
        raise StepFailed(summary + ("; " + "; ".join(failed[:5]) if failed else f" (exit {proc.rc})"))
    return {"counts": counts, "summary": summary, "note": note}


def step_nomad_mnist(accelerator: str) -> Callable[[Context, Step, float], dict[str, Any]]:
    def step(ctx: Context, step: Step, timeout: float) -> dict[str, Any]:
        note = _needs_cuda(ctx) if accelerator == "cuda" else ""
        acc = _accelerator(ctx) if accelerator == "cuda" else "cpu"
        overrides = ["method=nomad", *_mnist(ctx), f"trainer.accelerator={acc}"]
        if ctx.dry:
            overrides += ["method.n_epochs=30", "metrics.n_triplets=5000"]
        m = harness_run(ctx, step, timeout, overrides)
        return {"metrics": m, "summary": summarise_run(m), "note": note}
    return step


def step_nomad_1m(ctx: Context, step: Step, timeout: float) -> dict[str, Any]:
    note = _needs_cuda(ctx)
    run = ["method=nomad", f"trainer.accelerator={_accelerator(ctx)}"]
    if (ROOT / "conf" / "dataset" / "mnist1m.yaml").exists() and not ctx.dry:
        t0 = time.monotonic()
        try:
            m = harness_run(ctx, step, timeout, [*run, "dataset=mnist1m"])
            return {"metrics": m, "summary": "mnist1m: " + summarise_run(m), "note": note}
        except StepFailed as exc:  # e.g. its file is not carried: gaussians_1m with the time left
            if "killed at its" in str(exc):
                raise
            note = f"mnist1m failed ({str(exc)[:200]}), so gaussians_1m"
            timeout -= time.monotonic() - t0
    dry = ["dataset.n_samples=3000", "method.n_epochs=20", "metrics.n_triplets=5000"] if ctx.dry else []
    m = harness_run(ctx, step, timeout, [*run, "dataset=gaussians_1m", *dry])
    return {"metrics": m, "summary": "gaussians_1m: " + summarise_run(m), "note": note}


def step_dist(backend: str) -> Callable[[Context, Step, float], dict[str, Any]]:
    def step(ctx: Context, step: Step, timeout: float) -> dict[str, Any]:
        if backend == "nccl" and not ctx.cuda:
            raise Skip("NCCL needs CUDA" + (" (dry run)" if ctx.dry else ""))
        note = _needs_cuda(ctx)
        return run_dist(ctx, step, timeout, backend, note)
    return step


def run_dist(ctx: Context, step: Step, timeout: float, backend: str, note: str) -> dict[str, Any]:
    """Two worker processes (``--dist-worker``) on the one GPU, or on the CPU in a dry run."""
    world = 2
    work = ctx.scratch / "dist" / backend
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = {"world_size": world, "backend": backend, "accelerator": _accelerator(ctx),
            "port": _free_port(), "work": str(work), "timeout": max(20.0, min(90.0, timeout - 15)),
            "n": 1000 if ctx.dry else 20_000, "n_epochs": 10 if ctx.dry else 200,
            "mnist": str(ctx.data_dir / "mnist.npz")}
    log = ctx.log_path(step.name)
    procs = [start(ctx, [ctx.python, str(Path(__file__).resolve()), "--dist-worker",
                         json.dumps({**spec, "rank": r})], log) for r in range(world)]
    t_end = time.monotonic() + timeout
    failed_at: float | None = None
    with gpu_memory_poll(ctx) as smi:
        while any(p.poll() is None for p in procs) and time.monotonic() < t_end:
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.monotonic()  # one rank died: give the other a moment, then stop it
            if failed_at is not None and time.monotonic() - failed_at > 10:
                break
            time.sleep(0.2)
    timed_out = time.monotonic() >= t_end and any(p.poll() is None for p in procs)
    for p in procs:
        _stop(p)
    result_file = work / "result.json"
    rcs = [p.returncode for p in procs]
    if not result_file.exists() or any(rc != 0 for rc in rcs):
        tail = "\n".join(_read(log).splitlines()[-300:])
        errors = [line.strip() for line in tail.splitlines()
                  if re.search(r"Error|error:|Duplicate GPU|NCCL", line)]
        why = errors[-1][:400] if errors else "\n".join(tail.splitlines()[-3:])
        state = "killed at the step's limit" if timed_out else f"exit codes {rcs}"
        raise StepFailed(f"{backend} with {world} processes on one device: {state}: {why}")
    r = json.loads(result_file.read_text())
    r.update(smi)
    same = r.get("ranks_agree")
    summary = (f"{world} processes, {backend}, {r['n']:,} points, {r['n_epochs']} epochs in "
               f"{r['time_s']:.1f} s; NP@10 {r.get('np@10', float('nan')):.3f}, kNN acc "
               f"{r.get('knn_acc', float('nan')):.3f}; all_gather tensors on "
               f"{'/'.join(r['collective_devices']) or 'none'} ({r['all_gather_calls']} calls); "
               f"ranks' embeddings {'identical' if same else 'DIFFER'}")
    if _gpu_mem(r):
        summary += f"; {_gpu_mem(r)}"
    if not same:
        raise StepFailed(summary)
    if spec["accelerator"] == "cuda" and "cuda" not in r["collective_devices"]:
        raise StepFailed(summary + " (expected CUDA tensors in the collectives)")
    return {"metrics": r, "summary": summary, "note": note}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_worker(spec: dict[str, Any]) -> None:
    """One rank: join a process group as torchrun would, then NOMAD(devices=world) joins it.

    Both ranks use device 0 (LOCAL_RANK=0): ``torch.cuda.device_count`` is made to report the
    world size so that NOMAD's check (devices <= visible GPUs) lets two ranks share the one GPU.
    ``dist.all_gather`` is wrapped to record the device of the tensors it moves.
    """
    from datetime import timedelta

    rank, world = spec["rank"], spec["world_size"]
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0",
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(spec["port"]))
    import numpy as np
    import torch
    import torch.distributed as dist

    cuda = spec["accelerator"] == "cuda"
    if cuda:
        torch.cuda.set_device(0)
        visible = torch.cuda.device_count()
        torch.cuda.device_count = lambda: max(visible, world)
    devices: set[str] = set()
    calls = [0]
    all_gather = dist.all_gather

    def recording_all_gather(out, tensor, *args, **kwargs):
        devices.add(tensor.device.type)
        calls[0] += 1
        return all_gather(out, tensor, *args, **kwargs)

    dist.all_gather = recording_all_gather
    from nomad import NOMAD  # before the group exists (nomad/distributed.py says why)

    dist.init_process_group(spec["backend"], rank=rank, world_size=world,
                            timeout=timedelta(seconds=spec["timeout"]))

    def barrier() -> None:
        if cuda and spec["backend"] == "nccl":  # NCCL guesses the device from the rank
            dist.barrier(device_ids=[0])
        else:
            dist.barrier()

    X, y = _dist_data(spec, np)
    t0 = time.perf_counter()
    model = NOMAD(n_epochs=spec["n_epochs"], accelerator=spec["accelerator"], devices=world,
                  random_state=0)
    Y = model.fit_transform(X)
    seconds = time.perf_counter() - t0
    work = Path(spec["work"])
    np.save(work / f"Y{rank}.npy", Y)
    barrier()
    result: dict[str, Any] = {"n": len(X), "n_epochs": spec["n_epochs"], "time_s": seconds,
                              "backend": spec["backend"], "collective_devices": sorted(devices),
                              "all_gather_calls": calls[0],
                              "bytes_per_epoch": float(getattr(model, "bytes_per_epoch_", float("nan")))}
    if cuda:
        result["peak_gpu_alloc_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if rank == 0:
        others = [np.load(work / f"Y{r}.npy") for r in range(world)]
        result["ranks_agree"] = all(np.array_equal(Y, o) for o in others)
        try:
            from metrics import evaluate

            n_train = int(0.8 * len(X))
            scores = evaluate(X, Y, y, n_train, ks=(10,), n_eval=2000, n_triplets=10_000, seed=0)
            result.update({k: float(v) for k, v in scores.items()})
        except Exception as exc:  # noqa: BLE001 - the metrics are a sanity check, not the point
            result["metrics_error"] = f"{type(exc).__name__}: {exc}"
        (work / "result.json").write_text(json.dumps(result, indent=2))
    barrier()
    dist.destroy_process_group()


def _dist_data(spec: dict[str, Any], np):
    """MNIST's first n rows, PCA-50 (numpy), or seeded Gaussian clusters without the file."""
    n = spec["n"]
    path = Path(spec["mnist"])
    if path.exists():
        with np.load(path) as z:
            X, y = z["X"][:n].astype(np.float32) / 255, z["y"][:n]
        X -= X.mean(axis=0)
        _, vecs = np.linalg.eigh(X.T @ X)
        return np.ascontiguousarray(X @ vecs[:, ::-1][:, :50], dtype=np.float32), y
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    X = rng.normal(0, 2, (10, 50))[y] + rng.normal(0, 1, (n, 50))
    return X.astype(np.float32), y


def step_torchdr(which: str) -> Callable[[Context, Step, float], dict[str, Any]]:
    def step(ctx: Context, step: Step, timeout: float) -> dict[str, Any]:
        if not ctx.has("torchdr"):
            raise Skip("torchdr is not installed (not in the GPU image; carry its wheel: --prepare)")
        note = _needs_cuda(ctx)
        overrides = [f"method=torchdr_{which}",
                     f"method._target_=experiments.gpu_peers.TorchDR{'InfoTSNE' if which == 'infotsne' else 'UMAP'}OnDevice",
                     f"trainer.accelerator={_accelerator(ctx)}", "method.backend=null"]
        if ctx.dry:
            overrides += ["dataset=digits", "method.max_iter=30", "metrics.n_triplets=5000"]
            if which == "infotsne":
                overrides.append("method.early_exaggeration_iter=10")
        else:
            overrides += _mnist(ctx)
        m = harness_run(ctx, step, timeout, overrides)
        note = "; ".join(p for p in (note, "kNN by plain torch (method.backend=null)") if p)
        return {"metrics": m, "summary": summarise_run(m), "note": note}
    return step


def step_tsimcne(ctx: Context, step: Step, timeout: float) -> dict[str, Any]:
    note = _needs_cuda(ctx)
    full = ctx.data_dir / "fashion_mnist.npz"
    subset = ctx.data_dir / FASHION_SUBSET
    if full.exists():
        data = ["dataset=fashion_mnist", f"dataset.n={400 if ctx.dry else ctx.args.tsimcne_n}"]
    elif subset.exists():  # what --prepare carries: 20,000 train + 10,000 test rows
        data = ["dataset=fashion_mnist", f"dataset.file={FASHION_SUBSET}",
                *(["dataset.n=400"] if ctx.dry else [])]
    else:
        raise Skip(f"no fashion_mnist.npz (or {FASHION_SUBSET}) in {ctx.data_dir}")
    if ctx.dry:
        backbone, batch, epochs = "small_cnn", 64, [1, 1, 1]
    else:
        backbone, batch = "resnet18", 1024
        epochs = tsimcne_epochs(timeout, ctx.args.tsimcne_s_per_epoch, ctx.args.tsimcne_epochs)
    overrides = ["method=tsimcne", *data, "dataset.pca=null", "holdout=true",
                 f"method.backbone={backbone}", f"method.batch_size={batch}",
                 f"method.n_epochs=[{','.join(map(str, epochs))}]",
                 f"trainer.accelerator={_accelerator(ctx)}"]
    m = harness_run(ctx, step, timeout, overrides)
    m["epochs"] = epochs
    summary = (f"{backbone}, epochs {epochs}, batch {batch}; held-out kNN acc "
               f"{m.get('knn_acc', float('nan')):.3f}; " + summarise_run(m))
    if ctx.dry:
        note = f"{note}; small_cnn in the dry run (ResNet-18 on the GPU)"
    return {"metrics": m, "summary": summary, "note": note}


def tsimcne_epochs(seconds: float, per_epoch: float, fixed: list[int] | None) -> list[int]:
    """Stages in the paper's 1000:50:450 proportions, their total fitting ``seconds`` (60 s kept
    for start-up, the transform and the metrics), at least [2, 1, 1]."""
    if fixed:
        return fixed
    total = max(4, int((seconds - 60) / per_epoch))
    return [max(2, round(total * 1000 / 1500)), max(1, round(total * 50 / 1500)),
            max(1, round(total * 450 / 1500))]


STEPS = [  # in order of priority: a step that overruns takes its time from the last ones
    Step("setup", "imports; carried wheels, else pip", step_setup, 90, 120, needs=()),
    Step("cuda_tests", "pytest -m cuda", step_cuda_tests, 120, 60),
    Step("nomad_mnist_gpu", "NOMAD, MNIST-70k PCA-50, GPU", step_nomad_mnist("cuda"), 150, 150),
    Step("nomad_mnist_cpu", "the same run on the CPU cores", step_nomad_mnist("cpu"), 150, 150),
    Step("dist_gloo_cuda", "2 processes on one GPU, gloo", step_dist("gloo"), 120, 120,
         needs=("numba",)),
    Step("dist_nccl_cuda", "2 processes on one GPU, NCCL", step_dist("nccl"), 45, 60,
         needs=("numba",)),
    Step("nomad_1m_gpu", "NOMAD on 1M points, GPU", step_nomad_1m, 200, 150, min_s=60),
    Step("tsimcne_resnet18", "t-SimCNE ResNet-18, Fashion-MNIST, GPU", step_tsimcne, 170, 150,
         min_s=90),
    Step("torchdr_infotsne_gpu", "TorchDR InfoTSNE, MNIST, GPU", step_torchdr("infotsne"), 90, 120,
         min_s=30),
    Step("torchdr_umap_gpu", "TorchDR UMAP, MNIST, GPU", step_torchdr("umap"), 90, 120, min_s=30),
]


# -- the run --------------------------------------------------------------------------------------
def run_step(ctx: Context, step: Step) -> dict[str, Any]:
    limit = step.dry_limit_s if ctx.dry else step.limit_s
    timeout = min(limit, ctx.left() - 5)
    row: dict[str, Any] = {"step": step.name, "what": step.what, "limit_s": round(limit),
                           "status": "skipped", "seconds": 0.0, "summary": "", "note": ""}
    t0 = time.monotonic()
    try:
        if step.name != "setup":
            setup = ctx.results.get("setup", {})
            if setup.get("status") == "failed" and "hydra" in step.needs:
                raise Skip("setup failed: the harness cannot import")
            missing = [m for m in step.needs if ctx.probe and not ctx.has(m)]
            if missing:
                raise Skip(f"missing module(s): {', '.join(missing)}")
        if timeout < step.min_s:
            raise Skip(f"out of budget ({max(timeout, 0):.0f} s left of --budget {ctx.args.budget:.0f})")
        out = step.fn(ctx, step, timeout)
        row.update(status="ok", summary=out.pop("summary", ""), note=out.pop("note", ""), **out)
    except Skip as exc:
        row["note"] = str(exc)
    except StepFailed as exc:
        row.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug in one step must not sink the others
        row.update(status="failed", error=f"{type(exc).__name__} in the check script: {exc}")
    row["seconds"] = round(time.monotonic() - t0, 1)
    with ctx.lock:
        ctx.results[step.name] = row
        write_report(ctx)
    print(f"[gpu_check] {step.name}: {row['status']} ({row['seconds']} s) "
          f"{row.get('summary') or row.get('error') or row['note']}", flush=True)
    return row


def np10_check(ctx: Context) -> dict[str, Any]:
    """NP@10 of the GPU run within NP10_TOLERANCE of the CPU run's."""
    gpu, cpu = (ctx.results.get(k, {}) for k in ("nomad_mnist_gpu", "nomad_mnist_cpu"))
    row: dict[str, Any] = {"step": "np10_gpu_vs_cpu", "what": f"|NP@10 GPU - CPU| <= {NP10_TOLERANCE}",
                           "status": "skipped", "seconds": 0.0, "summary": "", "note": ""}
    if gpu.get("status") != "ok" or cpu.get("status") != "ok":
        row["note"] = "needs both MNIST runs"
        return row
    g, c = gpu["metrics"], cpu["metrics"]
    diff = abs(g["np@10"] - c["np@10"])
    speedup = c["time_total_s"] / max(g["time_total_s"], 1e-9)
    row["summary"] = (f"NP@10 {g['np@10']:.4f} ({g['accelerator']}) vs {c['np@10']:.4f} (cpu): "
                      f"diff {diff:.4f}; RTA {g['rta']:.3f} vs {c['rta']:.3f}; total time "
                      f"{g['time_total_s']:.1f} s vs {c['time_total_s']:.1f} s ({speedup:.2f}x)")
    row["metrics"] = {"np10_diff": diff, "speedup": speedup}
    row["status"] = "ok" if diff <= NP10_TOLERANCE else "failed"
    if row["status"] == "failed":
        row["error"] = f"NP@10 differs by {diff:.4f} > {NP10_TOLERANCE}"
    if ctx.dry:
        row["note"] = "dry run: both on the CPU"
    return row


def meta(ctx: Context) -> dict[str, Any]:
    p = ctx.probe
    gpu = (f"{p['gpu']} ({p.get('gpu_mem_gib')} GiB, capability {p.get('gpu_capability')})"
           if p.get("gpu") else "none visible")
    return {
        "mode": "dry run (CPU, tiny sizes)" if ctx.dry else "full",
        "gpu": gpu,
        "driver": _driver() if p.get("gpu") else None,
        "torch": f"{p.get('torch')} (CUDA {p.get('torch_cuda')})" if p.get("torch") else None,
        "python": p.get("python") or platform.python_version(),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "memory_gib": _mem_gib(),
        "host": platform.node(),
        "code": code_version(),
        "started": dt.datetime.fromtimestamp(time.time() - (time.monotonic() - ctx.start),
                                             dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "budget_s": ctx.args.budget,
        "elapsed_s": round(time.monotonic() - ctx.start, 1),
        "data_dir": str(ctx.data_dir),
    }


@functools.lru_cache(maxsize=1)
def _driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             check=False, capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else None
    return None


def _mem_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             check=False, capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    carried = _read(CARRY / "commit.txt").strip()
    return f"{carried} (from --prepare)" if carried else "unknown"


def ordered_rows(ctx: Context) -> list[dict[str, Any]]:
    rows = [ctx.results[s.name] for s in STEPS if s.name in ctx.results]
    if "np10_gpu_vs_cpu" in ctx.results:
        rows.insert(next((i + 1 for i, r in enumerate(rows) if r["step"] == "nomad_mnist_cpu"),
                         len(rows)), ctx.results["np10_gpu_vs_cpu"])
    return rows


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def markdown(ctx: Context) -> str:
    m = meta(ctx)
    lines = [
        f"**GPU check** ({m['mode']})",
        "",
        f"- GPU: {m['gpu']}" + (f", driver {m['driver']}" if m["driver"] else ""),
        f"- host: {m['cpu']}, {m['memory_gib']} GiB RAM; Python {m['python']}, torch {m['torch']}",
        f"- code: nebench {m['code']}, started {m['started']}",
        f"- command: `{m['command']}`; budget {m['budget_s']:.0f} s, used {m['elapsed_s']:.0f} s",
        "",
        "| step | what | status | time (s) | result | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in ordered_rows(ctx):
        result = r.get("summary") or r.get("error", "")
        if r["status"] == "failed" and r.get("summary"):
            result = f"{r['summary']} ({r.get('error', '')})"
        lines.append("| " + " | ".join(_cell(c) for c in (
            r["step"], r["what"], r["status"], f"{r['seconds']:.0f}", result, r.get("note", ""))) + " |")
    return "\n".join(lines) + "\n"


def write_report(ctx: Context) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta(ctx), "probe": ctx.probe, "steps": ordered_rows(ctx)}
    _atomic_write(ctx.out / "gpu_check.json", json.dumps(doc, indent=2, default=str))
    _atomic_write(ctx.out / "gpu_check.md", markdown(ctx))
    logs = []
    for s in STEPS:
        text = _read(ctx.log_path(s.name))
        if text:
            keep = 400 if ctx.results.get(s.name, {}).get("status") == "failed" else 120
            logs.append(f"===== {s.name} (last {keep} lines) =====\n" + "\n".join(text.splitlines()[-keep:]))
    _atomic_write(ctx.out / "gpu_check_logs.txt", "\n\n".join(logs) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_all(ctx: Context, names: list[str] | None = None, jobs: int = 1) -> list[dict[str, Any]]:
    steps = [s for s in STEPS if names is None or s.name in names or s.name == "setup"]
    run_step(ctx, steps[0])
    rest = steps[1:]
    if jobs > 1:  # dry run only: the steps are subprocesses, so threads overlap them
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda s: run_step(ctx, s), rest))
    else:
        for s in rest:
            run_step(ctx, s)
    if names is None or {"nomad_mnist_gpu", "nomad_mnist_cpu"} <= set(names):
        with ctx.lock:
            ctx.results["np10_gpu_vs_cpu"] = np10_check(ctx)
    with ctx.lock:
        write_report(ctx)
    return ordered_rows(ctx)


# -- --prepare (on the development machine, which reaches PyPI) --------------------------------------
def prepare(args: argparse.Namespace) -> None:
    """Wheels of the missing packages and the data files into .gpu_check/, git-ignored."""
    import importlib.metadata as md

    wheels, data = CARRY / "wheels", CARRY / "data"
    shutil.rmtree(CARRY, ignore_errors=True)
    wheels.mkdir(parents=True)
    data.mkdir()
    exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT,
                                  capture_output=True, text=True, check=True).stdout.strip())
    exclude = exclude if exclude.is_absolute() else ROOT / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu_check/" not in _read(exclude).split():
        with open(exclude, "a") as f:
            f.write("/.gpu_check/\n")

    def pin(dist: str, default: str) -> str:
        try:
            return f"{dist}=={md.version(dist)}"
        except md.PackageNotFoundError:
            return f"{dist}=={default}"

    pure = [pin("hydra-core", "1.3.8"), pin("omegaconf", "2.3.1"),
            pin("antlr4-python3-runtime", "4.9.3"), pin("torchdr", "0.5")]
    # pure-Python: built or fetched as py3-none-any wheels (antlr4 4.9.3 exists only as an sdist)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), *pure],
                   check=True)
    if not args.no_faiss:
        platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                 "manylinux_2_17_x86_64", "manylinux2014_x86_64") for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platforms, "-d",
                        str(wheels), pin("faiss-cpu", "1.9.0")], check=True)
    src = Path(os.environ.get("NEBENCH_DATA_DIR", ROOT / "data"))
    shutil.copy2(src / "mnist.npz", data / "mnist.npz")
    import numpy as np

    with np.load(src / "fashion_mnist.npz", allow_pickle=False) as z:
        n_train, (train, test) = int(z["n_train"]), FASHION_ROWS
        rows = np.r_[0:train, n_train:n_train + test]
        np.savez_compressed(data / FASHION_SUBSET, X=z["X"][rows], y=z["y"][rows],
                            n_train=np.int64(train), label_names=z["label_names"])
    (CARRY / "commit.txt").write_text(code_version() + "\n")
    carried = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((ROOT / os.fsdecode(p)).stat().st_size for p in listed if p and (ROOT / os.fsdecode(p)).is_file())
    total = (carried + tree) / 2**20
    print(f"{CARRY}: {carried / 2**20:.1f} MiB carried + {tree / 2**20:.1f} MiB working tree = "
          f"{total:.1f} MiB of the 64 MiB a device call takes"
          + (" -- TOO LARGE: use --no-faiss or remove untracked files" if total > 63 else ""))
    for f in sorted(CARRY.rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(ROOT)}  {f.stat().st_size / 2**20:.1f} MiB")


# -- entry point ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU only, tiny sizes")
    p.add_argument("--prepare", action="store_true",
                   help="here: fetch the wheels and data into .gpu_check/ (then carry it)")
    p.add_argument("--no-faiss", action="store_true", help="--prepare: leave out faiss-cpu (19 MB)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results" / "gpu_check"),
                   help="where the table, JSON and logs go (default $OUT, else results/gpu_check)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all steps (default 480 on the GPU, 300 in a dry run)")
    p.add_argument("--steps", default=None, help="comma-separated subset of: "
                   + ", ".join(s.name for s in STEPS))
    p.add_argument("--jobs", type=int, default=1, help="steps at a time (only with --dry-run)")
    p.add_argument("--data-dir", default=None, help="default $NEBENCH_DATA_DIR, else .gpu_check/data")
    p.add_argument("--wheels", default=str(CARRY / "wheels"))
    p.add_argument("--site", default=None, help="pip --target for installs (default: in --scratch)")
    p.add_argument("--scratch", default=None, help="run dirs, caches, logs (default: a temp dir)")
    p.add_argument("--tsimcne-n", type=int, default=30_000,
                   help="Fashion-MNIST rows for t-SimCNE when the whole file is there")
    p.add_argument("--tsimcne-s-per-epoch", type=float, default=3.0,
                   help="assumed seconds per t-SimCNE epoch (ResNet-18, 20k train images, H200)")
    p.add_argument("--tsimcne-epochs", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="fixed stage epochs, e.g. 20,2,8 (default: from the time left)")
    p.add_argument("--dist-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.jobs > 1 and not args.dry_run:
        p.error("--jobs > 1 would distort the GPU timings; use it with --dry-run only")
    if args.budget is None:
        args.budget = 300.0 if args.dry_run else 480.0
    if args.steps is not None:
        args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(args.steps) - {s.name for s in STEPS})
        if unknown:
            p.error(f"unknown step(s) {', '.join(unknown)}; the steps are: "
                    + ", ".join(s.name for s in STEPS))
    return args


def make_context(args: argparse.Namespace) -> Context:
    start_t = time.monotonic()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="gpu_check_"))
    scratch.mkdir(parents=True, exist_ok=True)
    args.site = args.site or str(scratch / "site")
    data_dir = Path(args.data_dir or os.environ.get("NEBENCH_DATA_DIR") or CARRY / "data")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (args.site, str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(PYTHONUNBUFFERED="1", NEBENCH_DATA_DIR=str(data_dir),
               NEBENCH_RESULTS_DIR=str(scratch / "results"), MPLBACKEND="Agg")
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU only, whatever the machine has
    return Context(args=args, dry=args.dry_run, out=Path(args.out), scratch=scratch,
                   data_dir=data_dir, python=sys.executable, start=start_t,
                   deadline=start_t + args.budget, env=env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dist_worker:
        dist_worker(json.loads(args.dist_worker))
        return 0
    if args.prepare:
        prepare(args)
        return 0
    ctx = make_context(args)
    print(f"[gpu_check] out: {ctx.out}, scratch: {ctx.scratch}, data: {ctx.data_dir}", flush=True)
    rows = run_all(ctx, args.steps, args.jobs if args.dry_run else 1)
    print(markdown(ctx), flush=True)
    failed = [r["step"] for r in rows if r["status"] == "failed"]
    print(f"[gpu_check] wrote {ctx.out / 'gpu_check.md'}, gpu_check.json, gpu_check_logs.txt; "
          f"{len(failed)} step(s) failed{': ' + ', '.join(failed) if failed else ''}", flush=True)
    return 0  # failures are rows of the table, not an exit status: the files are the result


if __name__ == "__main__":
    sys.exit(main())
