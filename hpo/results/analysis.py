"""After the search: retrain the best trials from scratch for their best epoch, test them once.

This is the last step of every chapter-3 example: pick the epoch where the validation curve
peaked, train a fresh model on all the training data (validation included) for that many
epochs, and evaluate it on the test set. With several seeds the test metric comes with a
standard deviation, so one lucky initialisation is not mistaken for a better configuration.
"""

from __future__ import annotations

import json
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
from hpo.data.arrays import Prepared
from hpo.data.values import some
from hpo.errors import HpoError
from hpo.results import handover as handover_lib
from hpo.results import report as report_lib
from hpo.results.retrained import Retrained, test_metrics
from hpo.search.progress import RetrainStatus
from hpo.study.space import DEFAULT_LOSS
from hpo.study.studyfile import StudySpec
from hpo.train import engine, programs, word_ids
from hpo.train import model as model_lib


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


def retrain(
    params: Mapping[str, Any],
    data: Prepared,
    epochs: int,
    seed: int,
    cache: programs.DeviceCache | None = None,
):
    """A fresh model trained on the whole training set; (model, test metrics).

    It trains in the loop the search trained in (engine.choose()): the fused loop takes the
    same optimizer steps as model.fit (tests/e2e/test_engine.py) at a fraction of the per-epoch
    cost, which is most of a small network's retrain. `cache` keeps the training arrays on
    the device, and the compiled programs, from one retrain to the next."""
    keras = import_keras()
    keras.backend.clear_session()
    set_random_seed(seed)
    model = model_lib.build(params, data)
    y = model_lib.targets(data.y_train, data.task, params["loss"], data.n_outputs)
    if engine.choose() == "fused":
        trainer = programs.trainer(
            model,
            cache=cache or programs.DeviceCache(),
            loss=params["loss"],
            task=data.task,
            train=(data.x_train, y),
            validation=None,
            batch_size=params["batch_size"],
            seed=seed,
            first_layer=word_ids.choose(data.packed, rows=len(data.x_train)),
            epochs=epochs,
        )
        trainer.fit(epochs)
    else:
        model.fit(data.x_train, y, epochs=epochs, batch_size=params["batch_size"], verbose=0)
    return model, evaluate(model, params, data)


def evaluate(model, params: Mapping[str, Any], data: Prepared) -> dict[str, float]:
    """The model's test metrics (test_metrics(task)), as Keras computes them."""
    targets = model_lib.targets(data.y_test, data.task, params["loss"], data.n_outputs)
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
) -> Retrained:
    """Retrain with each seed; with `ensemble` and several seeds, also test their mean prediction
    (by convexity its MAE is never above the seeds' mean MAE: it is the model to deploy)."""
    result = Retrained(trial, dict(params), epochs, list(seeds))
    members = []
    for seed in seeds:
        model, metrics = retrain(params, data, epochs, seed, cache)
        result.runs.append(metrics)
        members.append(model)
        if on_run:
            on_run(seed)
    result.model = members[0] if members else None
    result.models = members
    if ensemble and len(members) > 1:
        result.ensemble_model = model_lib.average(members, params, data)
        result.ensemble = evaluate(result.ensemble_model, params, data)
    return result


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
) -> AnalysisResult:
    """Retrain the top trials and the members of the ensemble chosen from the candidates'
    kept predictions (with an artifact store), save the models, write the report and the
    study attrs; the model handed over is `handover`'s, or the next one that exists."""
    check_options(seeds, top, candidates, handover)
    handover = handover_lib.canonical(handover)
    check_target(folder)  # before any retraining
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
        results = [
            retrain_config(t.params, data, best_epoch(t), seed_list, t.number, on_run, True, cache)
            for t in trials
        ]
        retrained = {r.trial: r for r in results}
        for t in extra:
            retrained[t.number] = retrain_config(
                t.params, data, best_epoch(t), seed_list, t.number, on_run, cache=cache
            )
        best = results[0]
        best.model.save(staging / handover_lib.FILES["best"])
        if best.ensemble_model is not None:
            best.ensemble_model.save(staging / handover_lib.FILES["seeds"])
        ensemble_test = None
        if chosen is not None:
            selected, ensemble_test = _trial_ensemble_model(
                [(retrained[t.number], w) for t, w in members], data
            )
            selected.save(staging / handover_lib.FILES["trial-ensemble"])
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


def _trial_ensemble_model(members: list[tuple[Retrained, float]], data: Prepared):
    """The weighted ensemble of the selected trials' retrained models (each trial's weight
    shared by its seeds' models), and its test metrics."""
    models, weights = [], []
    for retrained, weight in members:
        models += retrained.models
        weights += [weight / len(retrained.models)] * len(retrained.models)
    # Members may have trained on different losses: the ensemble's test loss is the task's
    # usual one (cross-entropy for classes), whatever its members'.
    params = {**members[0][0].params, "loss": DEFAULT_LOSS[data.task]}
    model = model_lib.ensemble(models, weights, params, data)
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
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
