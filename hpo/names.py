"""Study names as folder names: a new study's name must be one plain path segment.

A study's name becomes a folder (storage/reports/NAME) and a log file name, so `..`, `.`, an
absolute path or a name with a slash would make hpo write, or replace, a folder the user never
named. New names are checked where a study is created; a study made before the check, or by
Optuna directly, keeps its name and loads as before, and gets a safe folder name instead.
"""

from __future__ import annotations

import hashlib
import re

from hpo.errors import HpoError

MAX_LENGTH = 200  # bytes: leaves room for suffixes within a file system's 255 per name
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=@,-]+")


def problem(name: str) -> str | None:
    """Why `name` cannot name a new study's folder, or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return f"{name} names a folder above or the folder itself"
    if "/" in name or "\\" in name:
        return "it holds a path separator (/ or \\)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it holds a control character (a newline, a tab, …)"
    if name != name.strip():
        return "it starts or ends with a space"
    if len(name.encode()) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} bytes"
    return None


def check_new(name: str) -> str:
    """`name` if it may name a new study; else one HpoError line saying why."""
    why = problem(name)
    if why is not None:
        raise HpoError(
            f"study name {name!r} is not one plain folder name ({why}); choose another --study"
        )
    return name


def folder(name: str) -> str:
    """The folder name for study `name`: the name itself when it is one plain path segment,
    else its safe characters and a digest of the whole name (two odd names never share one)."""
    if problem(name) is None:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = _UNSAFE.sub("_", name).strip("._")[:60]
    return f"{readable}-{digest}" if readable else f"study-{digest}"
