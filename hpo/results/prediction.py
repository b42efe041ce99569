"""Predictions of a tuned model on new rows, prepared exactly as the study's training rows were.

`hpo analyze` saves the models (model.keras; seed-ensemble.keras when it retrained several
seeds; trial-ensemble.keras, the trial ensemble), handover.json naming the one to use, and
preparation.json, what hpo learned from the training rows (a Preparation). Here
new rows go through that preparation and the model, and come out as the value (regression) or
the class with its probability (classification), with the original class labels.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from hpo import cache
from hpo.artifacts import is_artifact_id
from hpo.data import stored_preparation
from hpo.data.own import read_rows
from hpo.data.preparation import Preparation
from hpo.errors import HpoError, first_line
from hpo.results import handover as handover_lib
from hpo.results.handover import ATTR
from hpo.study import studyfile
from hpo.study.model_code import ModelCode, parse_model
from hpo.study.studyfile import Identity

MODEL_FILES = ("ensemble.keras", "model.keras")  # before handover.json: the ensemble first
# The only files a handover may name: hpo's, and the names earlier hpo gave them.
HANDED = (*handover_lib.FILES.values(), *handover_lib.OLD_FILES.values())
PREPARATION = "preparation.json"
WRITTEN = (".csv", ".parquet", ".npz")


@dataclass
class Predictor:
    """A saved model with the preparation of its data."""

    model: Any  # a keras.Model
    preparation: Preparation
    path: Path  # the .keras file

    def predict(self, rows: pd.DataFrame | np.ndarray, probabilities: bool = False) -> pd.DataFrame:
        """Predictions for raw rows (a DataFrame of the training file's columns, or an array
        shaped like x_train); the DataFrame's attrs["unseen"] counts categorical values never
        seen in training (each predicted from an all-zero one-hot row)."""
        x, unseen = self.preparation.transform(rows)
        return self._frame(x, unseen, probabilities)

    def predict_file(
        self,
        rows: str | Path | pd.DataFrame | np.ndarray,
        out: Path | None = None,
        probabilities: bool = False,
    ) -> pd.DataFrame:
        """Predictions for a file's rows (.csv, .parquet, .npz) or in-memory rows; table rows
        come back with the prediction columns appended. Written to `out` when given."""
        if out is not None and out.suffix not in WRITTEN:
            raise HpoError(f"--out {out}: write .csv, .parquet or .npz")
        if isinstance(rows, str | Path):
            frame, x, unseen = read_rows(Path(rows), self.preparation)
            self._check_columns(frame, probabilities, Path(rows).name)
            predicted = self._frame(x, unseen, probabilities)
        else:
            frame = rows if isinstance(rows, pd.DataFrame) else None
            self._check_columns(frame, probabilities, "rows")
            predicted = self.predict(rows, probabilities)
        if frame is not None:
            joined = pd.concat([frame.reset_index(drop=True), predicted], axis=1)
            joined.attrs = predicted.attrs
            predicted = joined
        if out is not None:
            write(predicted, out)
        return predicted

    def columns(self, probabilities: bool = False) -> list[str]:
        """The columns predictions come in."""
        prep = self.preparation
        if prep.task == "regression":
            return ["prediction"]
        extra = [f"probability_{label}" for label in prep.labels] if probabilities else []
        return ["prediction", "probability", *extra]

    def _check_columns(self, frame: pd.DataFrame | None, probabilities: bool, source: str) -> None:
        """Rows that already have a column the predictions add: refused, or the output would
        hold two `prediction` columns and a reader would take either."""
        if frame is None:
            return
        have = {str(c) for c in frame.columns}
        clash = [c for c in self.columns(probabilities) if c in have]
        if clash:
            raise HpoError(
                f"{source}: the rows already have a column {clash[0]!r}, which hpo predict "
                "adds; rename or drop it"
            )

    def _frame(self, x: np.ndarray, unseen: dict[str, int], probabilities: bool) -> pd.DataFrame:
        output = np.asarray(self.model.predict(x, batch_size=1024, verbose=0), dtype=np.float64)
        prep = self.preparation
        if prep.task == "regression":
            frame = pd.DataFrame({"prediction": output[:, 0]})
        else:
            if prep.task == "binary":  # the sigmoid output is the probability of labels[1]
                positive = output[:, 0]
                output = np.stack([1 - positive, positive], axis=1)
            index = output.argmax(axis=1)
            frame = pd.DataFrame(
                {
                    "prediction": prep.decode_labels(index),
                    "probability": output[np.arange(len(output)), index],
                }
            )
            if probabilities:
                for number, label in enumerate(prep.labels):
                    frame[f"probability_{label}"] = output[:, number]
        frame.attrs["unseen"] = {column: n for column, n in unseen.items() if n}
        return frame


def write(frame: pd.DataFrame, out: Path) -> None:
    """The predictions as .csv, .parquet or .npz (one array a column), written whole or not at
    all: to a temporary file of this process beside `out`, renamed onto it once complete, so an
    interrupted predict leaves the last output (or none), never a valid-looking part of one."""
    if out.suffix not in WRITTEN:
        raise HpoError(f"--out {out}: write .csv, .parquet or .npz")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with cache.replaced(out) as f:
            if out.suffix == ".csv":
                frame.to_csv(f, index=False)
            elif out.suffix == ".parquet":
                frame.to_parquet(f, index=False)
            else:
                # Text (labels, categories) as fixed-width strings: object arrays need pickle.
                columns = {str(c): frame[c].to_numpy() for c in frame.columns}
                np.savez(
                    f, **{c: a.astype(str) if a.dtype == object else a for c, a in columns.items()}
                )
    except ImportError as exc:
        raise HpoError(f"--out {out}: writing .parquet needs pyarrow: pip install pyarrow") from exc
    except OSError as exc:
        raise HpoError(f"--out {out}: cannot write there ({exc.strerror or exc})") from exc


def model_folder(
    explicit: Path | None,
    default: Path,
    study: Callable[[], optuna.Study],
    store: Callable[[], Any] | None = None,
) -> tuple[Path, Path | None]:
    """(the folder of analyze's output, the .keras file asked for if any): --model, the default
    report folder, the folder the study's analysis recorded, or the handed-over files fetched
    from the artifact store."""
    if explicit is not None:
        if explicit.suffix == ".keras":
            if not explicit.is_file():
                raise HpoError(f"--model {explicit}: no such file")
            return explicit.parent, explicit
        if not explicit.is_dir():
            raise HpoError(f"--model {explicit}: no such folder")
        return explicit, None
    if default.is_dir():
        return default, None
    found = study()
    analysis = found.user_attrs.get("analysis")
    report = analysis.get("report") if isinstance(analysis, dict) else None
    if isinstance(report, str):  # the storage's word: only a folder hpo wrote for this study
        recorded = Path(report).parent
        if handover_lib.read_mark(recorded).get("study") == found.study_name:
            return recorded, None
    if store is not None and ATTR in found.user_attrs:
        return fetch_handover(found, store()), None
    raise HpoError(f"no saved model in {default}: run hpo analyze first (or pass --model DIR)")


def handover_record(study: optuna.Study) -> tuple[str, dict[str, str]]:
    """The handed-over model's file name and {"model": id, "preparation": id} from the study's
    handover record, checked: whoever writes the storage must not choose a path on this
    machine, so only hpo's own file names and Optuna's artifact ids are taken."""
    record = study.user_attrs[ATTR]
    where = f"study {study.study_name!r}'s handover record"
    if not isinstance(record, dict):
        raise HpoError(f"{where} is not a mapping; run hpo analyze again")
    if record.get("file") not in HANDED:
        raise HpoError(
            f"{where} names {record.get('file')!r}, not one of {', '.join(HANDED)}; "
            "run hpo analyze again"
        )
    ids = {key: record[key] for key in ("model", "preparation") if key in record}
    bad = next((key for key in ("model", *ids) if not is_artifact_id(ids.get(key))), None)
    if bad is not None:
        raise HpoError(f"{where} holds no artifact id for the {bad} ({ids.get(bad)!r})")
    return record["file"], ids


def fetch_handover(study: optuna.Study, store: Any) -> Path:
    """The handed-over model and its data's preparation, fetched from the artifact store into
    hpo's cache folder (once: artifacts never change), for a machine without analyze's folder.
    The folder's name is a digest of the record: no name from the storage becomes a path."""
    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    file, ids = handover_record(study)
    folder = cache.root() / "models" / cache.key(study.study_name, file, ids)
    files = {"model": file, "preparation": PREPARATION}
    try:
        for key, name in files.items():
            if key in ids and not (folder / name).is_file():
                folder.mkdir(parents=True, exist_ok=True)
                # Downloaded into a folder of this process's own, renamed once whole: neither
                # a truncated model nor another process's (or a killed one's) leftover.
                part = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder))
                try:
                    download_artifact(
                        artifact_store=store, file_path=str(part / name), artifact_id=ids[key]
                    )
                    os.replace(part / name, folder / name)
                finally:
                    shutil.rmtree(part, ignore_errors=True)
        with cache.replaced(folder / "handover.json") as f:
            f.write(json.dumps({"model": file}).encode())
    except ArtifactNotFound as exc:
        raise HpoError(
            f"study {study.study_name!r}'s model is not in the artifact store (is --artifacts "
            "the store analyze wrote to?)"
        ) from exc
    except OSError as exc:
        raise HpoError(f"cannot fetch study {study.study_name!r}'s model ({exc})") from exc
    return folder


def handed_over(folder: Path) -> Path:
    """The model analyze handed over in `folder` (handover.json names it, one of hpo's model
    files); in a folder of an earlier hpo, the seeds' ensemble, else the model."""
    record = folder / "handover.json"
    if record.is_file():
        try:
            name = json.loads(record.read_text(encoding="utf-8"))["model"]
        except (ValueError, KeyError, TypeError) as exc:
            raise HpoError(f"{record}: not a handover record; run hpo analyze again") from exc
        if name not in HANDED:
            raise HpoError(f"{record}: the handover names {name!r}, not one of {', '.join(HANDED)}")
        path = folder / name
        if not path.is_file():
            raise HpoError(f"{path}: the handed-over model is missing; run hpo analyze again")
        return path
    path = next((folder / f for f in MODEL_FILES if (folder / f).is_file()), None)
    if path is None:
        raise HpoError(f"no model.keras in {folder}: run hpo analyze first")
    return path


def model_code(target: str) -> ModelCode | None:
    """The [model] build a study file names (None: hpo's own model), read without the rest of
    the file: predict runs where the training data is not."""
    path = studyfile.resolve(target)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HpoError(f"{path}: cannot read the study file ({exc})") from exc
    return parse_model(doc["model"], str(path)) if "model" in doc else None


def import_model_code(code: ModelCode | None, code_paths: Sequence[str | Path] = ()) -> None:
    """Import the study's model module, so the custom layers it registers
    (keras.saving.register_keras_serializable) are known when its saved model loads. Found as
    training found it: on `code_paths`, beside the study file, or installed; never a path read
    from the storage. A missing module is one line."""
    if code is None:
        return
    from hpo.train import build_function

    try:
        build_function.load(code, code_paths)
    except HpoError as exc:
        raise HpoError(f"loading the study's model needs its code: {exc}") from exc


def load_keras(path: Path) -> Any:
    """A saved .keras model, loaded in Keras' safe mode: a Lambda layer's code is refused (the
    file may come from a shared store), so custom layers must be registered classes."""
    from hpo.backend import import_keras

    keras = import_keras()
    import hpo.train.model  # noqa: F401  (registers hpo's layers, so saved models load)

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)  # no Lambda's code
    except Exception as exc:
        why = f"{type(exc).__name__}: {first_line(exc)}"
        hint = ""
        if "could not be deserialized" in why or "Could not locate" in why:
            hint = " (a custom layer? register it in the study's model module)"
        raise HpoError(f"{path}: cannot load the model ({why}){hint}") from exc


def open_predictor(
    study_file: Identity,
    explicit: Path | None,
    default: Path,
    study: Callable[[], optuna.Study],
    name: str,
    store: Callable[[], Any] | None = None,
    *,
    code: ModelCode | None = None,
    code_paths: Sequence[str | Path] = (),
) -> Predictor:
    """The model `hpo analyze` saved for study `name` of `study_file` (in `explicit`, else in
    `default`, analyze's default folder), and the preparation of its data (beside the model,
    or stored in the study). `code`: the study's [model], imported first (import_model_code)."""
    if not study_file.own_data:
        raise HpoError(
            f"hpo predict needs a study of your own data ([data] in the study file); "
            f"{study_file.dataset} is a built-in dataset"
        )
    folder, path = model_folder(explicit, default, study, store)
    if path is None:
        path = handed_over(folder)
    preparation = load_preparation(folder, study, name)
    import_model_code(code, code_paths)
    return Predictor(load_keras(path), preparation, path)


def load_preparation(folder: Path, study: Callable[[], optuna.Study], name: str) -> Preparation:
    """The preparation of study `name`'s data: analyze's preparation.json in `folder`, else
    the one stored in the study."""
    saved = folder / PREPARATION
    if saved.is_file():
        preparation = json.loads(saved.read_text(encoding="utf-8"))
    else:
        preparation = stored_preparation.load(study())
        if preparation is None:
            raise HpoError(f"study {name!r} has no stored preparation of its data")
    return Preparation.from_dict(preparation)
