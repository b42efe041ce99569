"""Own data that travels with a submitted study, so a worker without the user's file trains it.

`hpo submit` packs the prepared arrays (and their preparation) into one compressed .npz, named
by the SHA-256 of its bytes, and uploads it into the artifact store the workers share. A
worker downloads it once into its cache folder, found again by that hash, and checks the hash:
a damaged or substituted file is refused, never trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hpo import cache
from hpo.data.arrays import Prepared
from hpo.data.preparation import Preparation
from hpo.errors import HpoError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def pack(prepared: Prepared) -> bytes:
    """The arrays and what describes them, as the bytes of one compressed .npz."""
    meta = {
        "name": prepared.name,
        "task": prepared.task,
        "n_outputs": prepared.n_outputs,
        "input_scale": prepared.input_scale,
        "n_features": prepared.n_features,
        "packed": prepared.packed,
        "preparation": prepared.preparation and prepared.preparation.to_dict(),
        "notes": list(prepared.notes),
    }
    buffer = io.BytesIO()
    arrays = {name: np.asarray(getattr(prepared, name)) for name in ARRAYS}
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    return buffer.getvalue()


def unpack(data: bytes) -> Prepared:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        arrays = {name: npz[name] for name in ARRAYS}
    preparation, notes = meta.pop("preparation"), tuple(meta.pop("notes"))
    return Prepared(
        **meta,
        **arrays,
        preparation=preparation and Preparation.from_dict(preparation),
        notes=notes,
        input_kind="table",  # only own data travels (hpo submit)
    )


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(prepared: Prepared, store: Any, study: Any, known: dict | None = None) -> dict:
    """Put the packed arrays into `store`, linked to `study`; returns the record a worker
    fetches them by. Arrays already uploaded (`known`, the study's record) are not sent again."""
    from optuna.artifacts import upload_artifact

    data = pack(prepared)
    sha = digest(data)
    if known and known.get("sha256") == sha:
        return known
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{sha[:16]}.npz"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's artifacts are "experimental"
            artifact = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=study
            )
    return {"artifact_id": artifact, "sha256": sha, "bytes": len(data)}


def fetch(record: dict, store: Any) -> Prepared:
    """The arrays of `record`, from this machine's cache or else downloaded from `store`."""
    sha = record["sha256"]
    cached = cache.root() / "shipped" / f"{sha}.npz"
    if cached.is_file():
        data = cached.read_bytes()
        if digest(data) == sha:
            return unpack(data)
    try:
        with store.open_reader(record["artifact_id"]) as reader:
            data = reader.read()
    except Exception as exc:
        raise HpoError(
            f"the study's data ({record['artifact_id']}) is not in the artifact store "
            f"({type(exc).__name__}): give the worker the submitter's --artifacts"
        ) from exc
    if digest(data) != sha:
        raise HpoError(f"the study's data ({record['artifact_id']}) is damaged: its hash differs")
    _save(cached, data)
    return unpack(data)


def _save(path: Path, data: bytes) -> None:
    """Written whole or not at all; a cache that cannot be written only costs a download."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with cache.replaced(path) as out:
            out.write(data)
