"""TensorFlow's persistent XLA cache in hpo's cache folder, safe for many workers at once.

A Boston program takes about 1–2 s to compile with XLA on a 2-core CPU, most of a 200-epoch
trial, and each new process (a second search, a resumed one, a second worker, a recycled one)
compiled every structure again. TensorFlow can keep the compiled programs on disk
(`TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR`, keyed by a hash of the program's
HLO), but it writes an entry in place and fails the call that reads a partial one, so two
workers sharing DIR could fail a trial. Here each process gets a private DIR filled with hard
links to the shared folder's complete entries; after a new program compiles, its entry is
linked into the shared folder in one atomic step (`sync`), and entries other processes added
are linked into the private one. The shared folder is per TensorFlow version and processor,
so no entry meets a runtime or CPU it was not compiled for.

`$HPO_XLA_CACHE=0`, or a TF_XLA_FLAGS that already names a persistent cache, leaves it off.
JAX's own cache is hpo.backend.use_jax_compilation_cache.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import socket
import tempfile
import time
from pathlib import Path

from hpo import cache

log = logging.getLogger("hpo.xla_cache")

FLAG = "--tf_xla_persistent_cache_directory"
STALE_SECONDS = 7 * 24 * 3600  # a private folder left by a process that did not exit cleanly

_folders: tuple[Path, Path] | None = None  # (shared, private) while the cache is on


def shared_folder() -> Path:
    """This TensorFlow's and this processor's folder of compiled programs."""
    try:
        version = importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        version = "none"
    return cache.root() / "xla" / f"tf{version}-{platform.machine()}-{_cpu_features()}"


def _cpu_features() -> str:
    """A short hash of the processor's instruction-set flags: an executable compiled for
    AVX-512 must not load on a machine without it (a shared cache folder on NFS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha256(flags.encode()).hexdigest()[:8]


def configure() -> None:
    """Turn the cache on for this process: set TF_XLA_FLAGS (read when TensorFlow starts, so
    this runs before it is imported) to a private folder seeded from the shared one."""
    global _folders
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if _folders is not None or os.environ.get("HPO_XLA_CACHE", "1") == "0" or FLAG in flags:
        return
    shared = shared_folder()
    try:
        shared.mkdir(parents=True, exist_ok=True)
        _remove_stale(shared.parent)
        prefix = f".{socket.gethostname()}-{os.getpid()}-"
        private = Path(tempfile.mkdtemp(prefix=prefix, dir=shared.parent))
    except OSError as exc:  # a read-only home: compiling again only costs time
        log.warning("no XLA cache in %s (%s)", shared, exc)
        return
    _folders = (shared, private)
    _link_new(shared, private)
    os.environ["TF_XLA_FLAGS"] = f"{flags} {FLAG}={private}".strip()
    atexit.register(_close)


def sync() -> None:
    """Publish the programs this process compiled since the last call, and take in those other
    processes published. Called before and after a new program's first epoch."""
    if _folders is not None:
        shared, private = _folders
        _link_new(private, shared)
        _link_new(shared, private)


def _link_new(source: Path, target: Path) -> None:
    """Link each complete entry of `source` that `target` lacks into it, atomically: a hard
    link, or a copy renamed into place where the file system has no hard links."""
    try:
        missing = {p.name for p in source.glob("*.pb")} - {p.name for p in target.glob("*.pb")}
    except OSError:
        return
    for name in missing:
        with contextlib.suppress(OSError):  # another process won the race: the same entry
            try:
                os.link(source / name, target / name)
            except FileExistsError:
                continue
            except OSError:
                tmp = target / f".{name}.{os.getpid()}.tmp"
                shutil.copyfile(source / name, tmp)
                os.replace(tmp, target / name)


def _remove_stale(parent: Path) -> None:
    """Private folders of processes gone from this host, or untouched for STALE_SECONDS.
    Removing one in use only costs that process a compilation: TensorFlow recreates it."""
    host = socket.gethostname()
    for folder in parent.glob(".*-*-*"):
        name_host, _, rest = folder.name[1:].rpartition("-")[0].rpartition("-")
        pid = int(rest) if rest.isdigit() else None
        try:
            old = time.time() - folder.stat().st_mtime > STALE_SECONDS
        except OSError:
            continue
        if old or (name_host == host and pid is not None and not _alive(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _close() -> None:
    """At exit: publish what is left, and remove the private folder (its entries are links)."""
    global _folders
    if _folders is not None:
        sync()
        shutil.rmtree(_folders[1], ignore_errors=True)
        _folders = None
