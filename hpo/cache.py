"""hpo's cache folder, and arrays saved there atomically and read back memory-mapped.

The lowest module of the package: it imports nothing from hpo, so both the backend set-up
(JAX's compilation cache lives here too) and the datasets can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger("hpo.cache")


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[BinaryIO]:
    """A new file of this process beside `path` (created as any new file is, umask), renamed
    onto `path` when the block ends: a reader finds the old file or the whole new one, never
    part of one, and nothing is left of it after an error or an interrupt."""
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        with partial.open("xb") as f:
            yield f
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def root() -> Path:
    """$HPO_CACHE_DIR, else $XDG_CACHE_HOME/hpo, else ~/.cache/hpo."""
    env = os.environ.get("HPO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "hpo"


def key(*parts: Any) -> str:
    """A short name for a cache entry: the hash of what it was made from (JSON-ready parts)."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def read_arrays(folder: Path, keys: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The arrays saved in `folder`, memory-mapped (workers on one machine share their pages);
    None when one is missing, or damaged (then the folder is removed)."""
    keys = list(keys)
    if not all((folder / f"{key}.npy").is_file() for key in keys):
        return None
    try:
        return {key: np.load(folder / f"{key}.npy", mmap_mode="r") for key in keys}
    except (ValueError, OSError) as exc:
        log.warning("cache %s is damaged (%s); preparing again", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def write_arrays(
    folder: Path, arrays: dict[str, np.ndarray], documents: dict[str, Any] | None = None
) -> None:
    """Write to a temporary sibling and rename, so a reader never sees half a folder; with
    `documents`, also NAME.json files of JSON-ready values. A failure (a read-only home) is
    logged, not raised: it only costs time."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    except OSError as exc:
        log.warning("could not write the cache %s (%s)", folder, exc)
        return
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        for name, value in (documents or {}).items():
            (tmp / f"{name}.json").write_text(json.dumps(value, indent=1))
        with contextlib.suppress(OSError):  # another process won the race: same arrays
            tmp.rename(folder)
    except OSError as exc:
        log.warning("could not write the cache %s (%s)", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
