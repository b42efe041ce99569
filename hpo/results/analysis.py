"""After the search: retrain the best trials from scratch for their best epoch, test them once.

This is the last step of every chapter-3 example: pick the epoch where the validation curve
peaked, train a fresh model on all the training data (validation included) for that many
epochs, and evaluate it on the test set. With several seeds the test metric comes with a
standard deviation, so one lucky initialisation is not mistaken for a better configuration.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.backend import import_keras, set_random_seed
from hpo.data.arrays import Prepared, cut_to
from hpo.data.values import some
from hpo.errors import HpoError, first_line
from hpo.results import handover as handover_lib
from hpo.results import report as report_lib
from hpo.results.retrained import Retrained, test_metrics
from hpo.search.progress import RetrainStatus
from hpo.study.space import DEFAULT_LOSS
from hpo.study.studyfile import StudySpec
from hpo.train import build_function, engine, programs, word_ids
from hpo.train import model as model_lib
from hpo.train.build_function import BuildFailed, BuildFn

log = logging.getLogger("hpo.analysis")


def ranked_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        raise HpoError(f"study {study.study_name!r} has no completed trial to analyze")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: t.value, reverse=maximize)[:top]


def best_epoch(trial: FrozenTrial) -> int:
    """The epoch count to retrain for; for k-fold studies the minimum of the averaged curve."""
    epoch = trial.user_attrs.get("best_epoch")
    if not isinstance(epoch, int) or epoch < 1:
        raise HpoError(f"trial {trial.number} has no recorded best epoch (was it run by hpo?)")
    return epoch


def trial_data(params: Mapping[str, Any], data: Prepared) -> Prepared:
    """The data a trial trained on: the study's, its word-id sequences cut to the trial's
    `maxlen` where it searched one (the last `maxlen` columns, hpo.data.arrays.cut_to)."""
    maxlen = params.get("maxlen")
    if maxlen is None or data.input_kind != "sequence":
        return data
    return cut_to(data, maxlen)


def build_model(
    params: Mapping[str, Any], data: Prepared, build: BuildFn | None = None
) -> tuple[Any, bool]:
    """(a fresh model of `params`, whether the build function compiled it): hpo's Dense stack,
    or the study's build function's model, compiled as the objective compiles it (hpo's
    optimizer, learning rate and loss, unless the function compiled it itself)."""
    if build is None:
        return model_lib.build(params, data), False
    inputs = build_function.inputs_of(data)
    try:
        model, by_user = build_function.call(build, params, inputs)
        if not model.built:  # a Sequential model without an Input, as the objective builds it
            model.build((None, *inputs.shape))
    except BuildFailed as exc:
        raise HpoError(f"retraining with {_params_text(params)}: {exc}") from exc
    except Exception as exc:  # Keras' error building the user's model for these inputs
        raise HpoError(
            f"retraining with {_params_text(params)}: its model could not be built for inputs "
            f"of shape {inputs.shape}: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    if not by_user:
        model_lib.compile_model(model, params, data.task)
    return model, by_user


def retrain(
    params: Mapping[str, Any],
    data: Prepared,
    epochs: int,
    seed: int,
    cache: programs.DeviceCache | None = None,
    build: BuildFn | None = None,
):
    """A fresh model trained on the whole training set; (model, test metrics).

    It trains in the loop the search trained in (engine.choose()): the fused loop takes the
    same optimizer steps as model.fit (tests/e2e/test_engine.py) at a fraction of the per-epoch
    cost, which is most of a small network's retrain. `cache` keeps the training arrays on
    the device, and the compiled programs, from one retrain to the next. A build function's
    model trains in the fused loop called whole (one input, one output, compiled by hpo),
    else, or where the fused loop fails on it, with model.fit from the same seed."""
    data = trial_data(params, data)
    model, by_user = _fresh(params, data, seed, build)
    # A model its function compiled trains on targets in the form of its own loss.
    loss = build_function.loss_name(model.loss, params["loss"]) if by_user else params["loss"]
    y = model_lib.targets(data.y_train, data.task, loss, data.n_outputs)
    if engine.choose() == "fused" and _fusable(model, by_user):
        options = dict(
            cache=cache or programs.DeviceCache(),
            loss=params["loss"],
            task=data.task,
            train=(data.x_train, y),
            validation=None,
            batch_size=params["batch_size"],
            seed=seed,
            epochs=epochs,
        )
        if build is None:
            first = word_ids.choose(data.packed, rows=len(data.x_train))
            programs.trainer(model, first_layer=first, **options).fit(epochs)
            return model, evaluate(model, params, data)
        try:
            programs.trainer(model, whole=True, **options).fit(epochs)
            return model, evaluate(model, params, data, by_user)
        except Exception as exc:  # the user's layers in a loop they were not written for
            log.warning(
                "retraining with model.fit: the fused loop cannot run this model (%s: %s)",
                type(exc).__name__,
                first_line(exc),
            )
            model, by_user = _fresh(params, data, seed, build)
    model.fit(data.x_train, y, epochs=epochs, batch_size=params["batch_size"], verbose=0)
    return model, evaluate(model, params, data, by_user)


def _fresh(
    params: Mapping[str, Any], data: Prepared, seed: int, build: BuildFn | None
) -> tuple[Any, bool]:
    """A new model of `params` from `seed`, in a fresh Keras session."""
    import_keras().backend.clear_session()
    set_random_seed(seed)
    return build_model(params, data, build)


def _fusable(model: Any, by_user: bool) -> bool:
    """Whether the fused loop can train this model, as the objective decides: one the build
    function compiled keeps its own compile (its loss, its optimizer), which only model.fit
    honours."""
    return not by_user and build_function.fit_reason(model) is None


def evaluate(
    model, params: Mapping[str, Any], data: Prepared, by_user: bool = False
) -> dict[str, float]:
    """The model's test metrics (test_metrics(task)), as Keras computes them. A model its build
    function compiled is scored as hpo compiles (the trial's loss, the task's metrics) through
    a wrapper sharing its weights, so every trial's test figures mean the same."""
    targets = model_lib.targets(data.y_test, data.task, params["loss"], data.n_outputs)
    if by_user:
        keras = import_keras()
        inputs = keras.Input(shape=data.x_test.shape[1:], dtype=str(data.x_test.dtype))
        model = keras.Model(inputs, model(inputs))
        model_lib.compile_model(model, params, data.task)
    scores = model.evaluate(
        data.x_test, targets, verbose=0, batch_size=model_lib.VALIDATION_BATCH, return_dict=True
    )
    return {metric: float(scores[metric]) for metric in test_metrics(data.task)}


def retrain_config(
    params: Mapping[str, Any],
    data: Prepared,
    epochs: int,
    seeds: list[int],
    trial: int | None = None,
    on_run: Callable[[int], None] | None = None,
    ensemble: bool = False,
    cache: programs.DeviceCache | None = None,
    build: BuildFn | None = None,
    notes: list[str] | None = None,
) -> Retrained:
    """Retrain with each seed; with `ensemble` and several seeds, also test their mean prediction
    (by convexity its MAE is never above the seeds' mean MAE: it is the model to deploy). A
    model Keras cannot copy into an ensemble (combine) gets none, and a line in `notes`."""
    result = Retrained(trial, dict(params), epochs, list(seeds))
    members = []
    for seed in seeds:
        model, metrics = retrain(params, data, epochs, seed, cache, build)
        result.runs.append(metrics)
        members.append(model)
        if on_run:
            on_run(seed)
    result.model = members[0] if members else None
    result.models = members
    if ensemble and len(members) > 1:
        cut = trial_data(params, data)
        try:
            result.ensemble_model = combine(members, [1.0] * len(members), params, cut)
        except EnsembleFailed as exc:
            if notes is not None:
                notes.append(f"no seeds' ensemble of trial {trial}: {exc}")
        else:
            result.ensemble = evaluate(result.ensemble_model, params, cut)
    return result


class EnsembleFailed(Exception):
    """Keras could not copy a member into an ensemble (a subclassed model without get_config):
    one line, and the single model is handed over instead."""


def combine(
    members: list[Any], weights: list[float], params: Mapping[str, Any], data: Prepared
) -> Any:
    """model_lib.ensemble of trained `members` taking `data`'s input: a member that reads
    shorter word-id sequences (a trial's own `maxlen`) is given the last columns it trained on
    (fitted_to). Keras' clone_model copies functional and Sequential models, and subclassed
    ones that serialize (get_config, a registered class); one that does not raises
    EnsembleFailed."""
    try:
        fitted = [fitted_to(member, data) for member in members]
        return model_lib.ensemble(fitted, weights, params, data)
    except Exception as exc:  # Keras' errors on a model it cannot clone: any type
        raise EnsembleFailed(
            f"Keras cannot copy the model into one ({type(exc).__name__}: {first_line(exc)})"
        ) from exc


def fitted_to(member: Any, data: Prepared) -> Any:
    """`member` taking `data`'s samples: as it is, or, where it reads shorter word-id
    sequences than `data` holds (its trial searched a lower `maxlen`), behind standard Keras
    layers that pass it the last columns, as hpo.data.arrays.cut_to does (Reshape to one
    channel, Cropping1D from the front, Reshape back). Standard layers only: the ensemble's
    file loads where hpo is not installed, and under safe_mode."""
    keras = import_keras()
    length = data.x_train.shape[1:]
    try:
        wanted = tuple(member.inputs[0].shape[1:])
    except (AttributeError, IndexError, ValueError):  # a subclassed model: fed as it is
        return member
    if data.input_kind != "sequence" or len(length) != 1 or len(wanted) != 1:
        return member
    if wanted[0] is None or wanted[0] == length[0]:
        return member
    if wanted[0] > length[0]:
        raise ValueError(f"a member reads {wanted[0]} word ids, more than the data's {length[0]}")
    inputs = keras.Input(shape=length, dtype=str(data.x_train.dtype))
    x = keras.layers.Reshape((length[0], 1))(inputs)
    x = keras.layers.Cropping1D((length[0] - wanted[0], 0))(x)
    x = keras.layers.Reshape(wanted)(x)
    return keras.Model(inputs, member(x), name=f"last_{wanted[0]}_ids")


def check_fits(spec: StudySpec, trial: FrozenTrial) -> None:
    problem = spec.space.admits(trial.params)
    if problem:
        raise HpoError(f"trial {trial.number}'s parameters no longer fit {spec.path}: {problem}")


@dataclass
class AnalysisResult:
    study: str  # the study's name
    task: str
    results: list[Retrained]  # the retrained trials, best first
    folder: Path
    report: Path
    model_path: Path  # the handed-over model, the one hpo predict uses
    handed: handover_lib.Handed  # which it is, and the trial ensemble if one was built

    @property
    def best(self) -> Retrained:
        return self.results[0]


# What analyze wrote before it marked its folders (handover.MARK): such a folder, holding
# nothing else, is hpo's to replace.
LEGACY = {
    "report.md",
    "params.json",
    "handover.json",
    "preparation.json",
    *handover_lib.FILES.values(),
    *handover_lib.OLD_FILES.values(),
}


def check_target(folder: Path) -> None:
    """Refuse a report folder that is not hpo's to replace: a file, a link, or a folder holding
    anything hpo did not write there (its mark lists what it wrote). An absent or empty folder
    is fine. So `--out ~/thesis` is one line, never the loss of the user's files."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise HpoError(f"{folder}: not a folder hpo wrote (a file or a link); choose another --out")
    try:
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        raise HpoError(f"{folder}: cannot read it ({exc.strerror})") from exc
    if not entries:
        return
    mark = handover_lib.read_mark(folder)
    if mark:
        written = mark.get("files")
        ours = {f for f in written if isinstance(f, str)} if isinstance(written, list) else set()
        ours.add(handover_lib.MARK)
    elif "params.json" in entries:  # a report of an hpo that did not mark its folders
        ours = LEGACY | {e for e in entries if e.endswith(".png")}
    else:
        raise HpoError(
            f"{folder}: not a report folder hpo wrote (it holds {some(entries)}); hpo replaces "
            "only its own: choose another --out"
        )
    foreign = [e for e in entries if e not in ours]
    if foreign:
        raise HpoError(
            f"{folder}: holds {some(foreign)}, which hpo did not write there; move it out or "
            "choose another --out"
        )


def _replace_dir(staging: Path, folder: Path) -> None:
    """Move a finished staging folder into place, so `folder` is never half-written. The folder
    it replaces, checked again to be hpo's, is first moved into a new hidden folder of this
    process's own, so no other name beside it is touched, then deleted."""
    try:
        if not folder.exists() and not folder.is_symlink():
            staging.rename(folder)
            return
        check_target(folder)  # again: it may have changed while the models trained
        trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
        try:
            folder.rename(trash / folder.name)
            try:
                staging.rename(folder)
            except OSError:
                (trash / folder.name).rename(folder)  # the old report stays
                raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    except OSError as exc:
        raise HpoError(f"{folder}: cannot put the report there ({exc.strerror or exc})") from exc


def _staging_dir(folder: Path) -> Path:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would carry over to the report folder
        return staging
    except OSError as exc:
        raise HpoError(f"--out {folder}: cannot write there ({exc.strerror})") from exc


def check_options(seeds: int, top: int, candidates: int, handover: str) -> None:
    """analyze's options, checked before anything is opened or loaded."""
    if seeds < 1 or top < 1 or candidates < 1:
        raise HpoError("--seeds, --top and --candidates must be at least 1")
    if handover_lib.canonical(handover) not in handover_lib.HANDOVERS:
        raise HpoError(f"--handover must be one of {', '.join(handover_lib.HANDOVERS)}")


def analyze_study(
    study: optuna.Study,
    spec: StudySpec,
    data: Prepared,
    *,
    seeds: int,
    top: int,
    folder: Path,
    store: Any = None,
    candidates: int = handover_lib.CANDIDATES,
    handover: str = handover_lib.DEFAULT,
    progress: RetrainStatus | None = None,
    build: BuildFn | None = None,
    code_paths: tuple[str, ...] = (),
) -> AnalysisResult:
    """Retrain the top trials and the members of the ensemble chosen from the candidates'
    kept predictions (with an artifact store), save the models, write the report and the
    study attrs; the model handed over is `handover`'s, or the next one that exists.

    A study with a build function ([model]) retrains its models from it: `build`, else the
    function imported from the study's module (beside the study file, on `code_paths`, or
    installed: never a path the storage names); importing it also registers the custom layers
    its models are saved with."""
    check_options(seeds, top, candidates, handover)
    handover = handover_lib.canonical(handover)
    check_target(folder)  # before any retraining
    if build is None and spec.model is not None:
        build = build_function.load(spec.model, code_paths)
    ranked = ranked_trials(study, max(top, candidates))
    trials = ranked[:top]
    notes: list[str] = []
    chosen = None
    if store is not None:
        chosen, note = handover_lib.choose_ensemble(ranked[:candidates], spec, data, store)
        notes += [note] if note else []
    members = chosen.members() if chosen else []
    extra = [t for t, _ in members if t.number not in {x.number for x in trials}]
    for trial in [*trials, *extra]:
        check_fits(spec, trial)
        best_epoch(trial)
    if progress is not None:
        progress.expect(seeds * (len(trials) + len(extra)))
    on_run = progress
    staging = _staging_dir(folder)
    try:
        base = spec.seed or 0
        seed_list = list(range(base, base + seeds))
        cache = programs.DeviceCache()  # the arrays and programs, made once for every retrain
        given = {"cache": cache, "build": build, "notes": notes}
        results = [
            retrain_config(
                t.params, data, best_epoch(t), seed_list, t.number, on_run, True, **given
            )
            for t in trials
        ]
        retrained = {r.trial: r for r in results}
        for t in extra:
            retrained[t.number] = retrain_config(
                t.params, data, best_epoch(t), seed_list, t.number, on_run, **given
            )
        best = results[0]
        _save(best.model, staging / handover_lib.FILES["best"])
        if best.ensemble_model is not None:
            _save(best.ensemble_model, staging / handover_lib.FILES["seeds"])
        ensemble_test = None
        if chosen is not None:
            try:
                selected, ensemble_test = _trial_ensemble_model(
                    [(retrained[t.number], w) for t, w in members], data
                )
            except EnsembleFailed as exc:
                notes.append(f"no trial ensemble: {exc}")
                chosen = None
            else:
                _save(selected, staging / handover_lib.FILES["trial-ensemble"])
        name, note = _handed_over(handover, chosen is not None, best.ensemble_model is not None)
        notes += [note] if note else []
        handed = handover_lib.Handed(name, chosen, ensemble_test, notes)
        (staging / "params.json").write_text(
            json.dumps({**best.summary(), **handed.summary()}, indent=2)
        )
        (staging / "handover.json").write_text(
            json.dumps({"handover": name, "model": handed.file}, indent=2)
        )
        if data.preparation is not None:  # new rows are prepared from it: hpo predict
            (staging / "preparation.json").write_text(
                json.dumps(data.preparation.to_dict(), indent=2)
            )
        result = AnalysisResult(
            study.study_name,
            spec.task,
            results,
            folder,
            folder / "report.md",
            folder / handed.file,
            handed,
        )
        report_lib.write(study, spec, results, staging, data.notes, handed)
        handover_lib.mark(staging, study.study_name)
        # Uploaded from the finished staging folder, before it replaces the local report: the
        # local folder then runs ahead of the storage only for a rename and two writes.
        record = _upload(study, staging, store, handed) if store is not None else None
        _replace_dir(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Published last, once every file is uploaded: an interrupted analyze leaves the storage
    # handing over the previous model, whole, and describing it, never a half-uploaded one.
    if record is not None:
        study.set_user_attr(handover_lib.ATTR, record)
    study.set_user_attr(
        "analysis",
        {
            "best": best.summary(),
            "top": [r.summary() for r in results[1:]],
            **handed.summary(),
            "report": str(folder / "report.md"),
        },
    )
    _save_note(study, spec, result)
    return result


def _save(model: Any, path: Path) -> None:
    """Save a model as .keras, as plain Keras loads it (model_lib.portable); a model Keras
    cannot save (a subclassed one without get_config) is one line."""
    try:
        # hpo's training-time layers rebuilt from standard ones: the file loads with plain
        # Keras, where hpo is not installed
        model_lib.portable(model).save(path)
    except Exception as exc:  # Keras' serialization errors: any type
        raise HpoError(
            f"{path.name}: Keras cannot save the model ({type(exc).__name__}: {first_line(exc)});"
            " a subclassed model needs get_config and keras.saving.register_keras_serializable"
        ) from exc


def _trial_ensemble_model(members: list[tuple[Retrained, float]], data: Prepared):
    """The weighted ensemble of the selected trials' retrained models (each trial's weight
    shared by its seeds' models), and its test metrics. It takes the study's input: a member
    whose trial searched a shorter `maxlen` reads the last columns (fitted_to)."""
    models, weights = [], []
    for retrained, weight in members:
        models += retrained.models
        weights += [weight / len(retrained.models)] * len(retrained.models)
    # Members may have trained on different losses: the ensemble's test loss is the task's
    # usual one (cross-entropy for classes), whatever its members'.
    params = {**members[0][0].params, "loss": DEFAULT_LOSS[data.task]}
    model = combine(models, weights, params, data)
    return model, evaluate(model, params, data)


def _handed_over(wanted: str, selected: bool, seeds: bool) -> tuple[str, str | None]:
    """The handover that exists, nearest to `wanted`, and a note when it is not `wanted`."""
    exists = {"trial-ensemble": selected, "seeds": seeds, "best": True}
    for name in handover_lib.HANDOVERS[handover_lib.HANDOVERS.index(wanted) :: -1]:
        if exists[name]:
            if name == wanted or wanted == "seeds":  # one seed's ensemble is its model
                return name, None
            why = "no trial ensemble was built"
            return name, f"handover {wanted} not available ({why}): handing over {name}"
    raise AssertionError("best always exists")


def _upload(
    study: optuna.Study, folder: Path, store: Any, handed: handover_lib.Handed
) -> dict[str, str]:
    """Figures and report as Optuna artifacts, so optuna-dashboard shows them with the study;
    the handed-over model and its data's preparation too, so `hpo predict` finds them on any
    machine that reaches the storage and the artifact store (prediction.fetch_handover).
    Returns the handover record, for the caller to publish once all is uploaded."""
    from optuna.artifacts import upload_artifact

    def upload(path: Path) -> str:
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for path in [*sorted(folder.glob("*.png")), folder / "report.md"]:
            upload(path)
        files = {"model": handed.file, "preparation": "preparation.json"}
        kept = {
            key: upload(folder / name) for key, name in files.items() if (folder / name).is_file()
        }
    return {"file": handed.file, **kept}


def _save_note(study: optuna.Study, spec: StudySpec, result: AnalysisResult) -> None:
    """A study note for optuna-dashboard: the best configuration, the handed-over model and
    their test results."""
    from optuna_dashboard import save_note

    best = result.best
    metrics = test_metrics(spec.task)
    tested = ", ".join(f"test {m} {best.mean(m):.4f} ± {best.std(m):.4f}" for m in metrics)
    retrained = f"Retrained for {best.epochs} epochs on train+validation, {len(best.seeds)} seed(s)"
    body = (
        f"## Best configuration (trial {best.trial})\n\n{_params_text(best.params)}\n\n"
        f"{retrained}: {tested}"
    )
    if best.ensemble is not None:
        body += "\n\nTheir ensemble (mean prediction): " + ", ".join(
            f"test {m} {best.ensemble[m]:.4f}" for m in metrics
        )
    handed = result.handed
    if handed.selection is not None and handed.trial_ensemble_test is not None:
        body += "\n\n## Trial ensemble\n\n" + ", ".join(
            f"test {m} {handed.trial_ensemble_test[m]:.4f}" for m in metrics
        )
        for trial, weight in handed.selection.members():
            body += f"\n- trial {trial.number}, weight {weight:.2f}: {_params_text(trial.params)}"
    body += f"\n\nHanded over: **{handed.name}** (`{handed.file}`)"
    save_note(study, body)


def _params_text(params: Mapping[str, Any]) -> str:
    """A trial's parameters on one line, whatever their names; a trial lacks those whose
    `when` was false, and per-layer ones come as name_1 … name_L."""
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
