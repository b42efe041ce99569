"""A study's own model code: the `[model]` table's `build = "module:function"`, where that
module's file is found, and its SHA-256.

Nothing here imports the user's module (hpo.train.build_function does, on a worker that
trains): a study file is parsed by `hpo list`, `hpo submit` and the dashboard too, and a
shared storage must never make a process run code. A study records the module's SHA-256, so a
worker whose copy differs refuses the study instead of training another model under its name.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import HpoError

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MODEL_KEYS = {"build"}


@dataclass(frozen=True)
class ModelCode:
    """`[model] build = "module:function"`, and the folder of the study file that names it
    (looked in first for the module; then `--code-path` folders, then the Python path)."""

    build: str
    folder: str = ""

    @property
    def module(self) -> str:
        return self.build.partition(":")[0]

    @property
    def function(self) -> str:
        return self.build.partition(":")[2]


def check_build(value: Any, source: str) -> str:
    """A `build` value as `module:function`, or one line saying why not."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise HpoError(f'{source}: model.build: must be "module:function", got {value!r}')
    module, function = value.split(":")
    if not _DOTTED.match(module) or not function.isidentifier():
        raise HpoError(f'{source}: model.build: must be "module:function", got {value!r}')
    return value


def parse_model(table: Any, source: str) -> ModelCode:
    """A study file's [model] table → ModelCode; `source`: the study file's path."""
    if not isinstance(table, dict):
        raise HpoError(f"{source}: [model] must be a table")
    unknown = set(table) - MODEL_KEYS
    if unknown:
        raise HpoError(f"{source}: model.{sorted(unknown)[0]}: unknown key (allowed: build)")
    if "build" not in table:
        raise HpoError(f'{source}: model.build: missing ("module:function")')
    return ModelCode(check_build(table["build"], source), str(Path(source).resolve().parent))


def search_path(code: ModelCode, code_paths: Sequence[str | Path] = ()) -> list[str]:
    """Where the module is looked for, in order: the `--code-path` folders, the study file's
    folder, then the Python path (an installed module)."""
    folders = [str(Path(p).resolve()) for p in code_paths]
    if code.folder:
        folders.append(code.folder)
    return folders + [p for p in sys.path if p not in folders]


def locate(code: ModelCode, code_paths: Sequence[str | Path] = ()) -> Path:
    """The file that defines the module (a package's __init__.py), found without importing
    it; one line when there is none."""
    top, _, rest = code.module.partition(".")
    spec = importlib.machinery.PathFinder.find_spec(top, search_path(code, code_paths))
    if spec is not None and rest:
        for part in rest.split("."):
            places = spec.submodule_search_locations
            spec = places and importlib.machinery.PathFinder.find_spec(part, list(places))
            if not spec:
                break
    origin = getattr(spec, "origin", None) if spec else None
    if not origin or not Path(origin).is_file():
        where = f" beside {code.folder}" if code.folder else ""
        raise HpoError(
            f"model.build: no module {code.module!r}{where}, on --code-path or installed"
        )
    return Path(origin)


def digest(path: Path) -> str:
    """The SHA-256 of a module's file: what a study records and a worker compares."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
