"""How many workers one machine runs (`--workers auto`) and what share of a GPU each takes.

Measured on one H100 with Keras/JAX (shared/gpu/README.md): K worker processes reach
4.98 trials/min at K=1, 18.7 at K=8 and 19.2 at K=16, so eight workers per GPU is where the
gain stops, as long as each has a core of its own to dispatch from. On a CPU-only machine a
TensorFlow worker spreads its matrix work over all cores but traces and dispatches each trial
on one, so a worker per core keeps the cores busy: on this project's 2-core machine a second
worker adds trials a minute (docs/benchmarks.md, "How many more trials a minute").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

WORKERS_PER_GPU = 8
MAX_CPU_WORKERS = 8  # each TensorFlow worker holds about 1 GB
GPU_MEMORY_USED = 0.9  # of each GPU, split between its workers; the rest for the driver


def gpu_count() -> int:
    """NVIDIA GPUs visible to this process (CUDA_VISIBLE_DEVICES respected), without
    importing any backend: the parent must decide before its children load one."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def auto_workers(cpus: int | None = None, gpus: int | None = None) -> int:
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    gpus = gpus if gpus is not None else gpu_count()
    if gpus:
        return max(1, min(WORKERS_PER_GPU * gpus, cpus))
    return max(1, min(cpus, MAX_CPU_WORKERS))


def parse_workers(text: str, gpus: int) -> int:
    """`--workers` value: a positive count or "auto"."""
    if text == "auto":
        return auto_workers(gpus=gpus)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--workers must be a positive number or auto, got {text!r}")
    return int(text)


def share_gpu_memory(workers: int, gpus: int) -> dict[str, str]:
    """Environment for K workers sharing the GPUs, set before any backend is imported (and
    inherited by the children): JAX preallocates only its share instead of 75% of the GPU,
    TensorFlow grows on demand. A value the user set is kept. Returns what this process uses."""
    per_gpu = max(1, -(-workers // max(gpus, 1)))  # workers on the busiest GPU
    wanted = {
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{GPU_MEMORY_USED / per_gpu:.3f}",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    }
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in wanted}


def worker_info() -> dict[str, object]:
    """Who ran a trial, recorded in its user attrs: which machine, process and GPU share."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu_memory_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
    }


def resident_mb(pid: int | None = None) -> float | None:
    """The resident memory of process `pid` (default: this one) now, in MB, read from /proc
    (Linux). Without /proc: this process's peak so far, and None for another process (or
    one that has ended)."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        if pid is not None:
            return None
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)
