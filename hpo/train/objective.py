"""The objective: train one trial's model, report each epoch to Optuna, return the best epoch.

What a finished (or pruned, or failed) trial holds:
- intermediate values: the validation metric after each epoch (fold-averaged for k-fold);
- user attr `history`: per-epoch train and validation loss and metric, fold-averaged;
- user attr `best_epoch`: the 1-based epoch with the best validation metric; the trial's value
  is the metric at that epoch, not at the last one (with `smooth_epochs` > 1 in the study file:
  the best mean over that many consecutive epochs, centred on `best_epoch`);
  with `patience` in the study file, the trial stops (and completes) that many epochs after
  its best one, as Keras' EarlyStopping would;
- user attr `fail_reason` when the trial failed (e.g. the loss became NaN);
- user attr `val_predictions` when the study keeps them (an artifact store): the best epoch's
  validation predictions, an artifact of the trial (hpo.train.predictions; fused loop only);
- user attr `worker`: host, pid, backend, training loop (`engine`), input layout (`input`), how
  the fused loop computes a text model's first layer (`first_layer`: `ids` or `dense`), GPU
  memory share and the process' data-load counts.

Trials train through hpo.train.engine's fused loop (one compiled call per epoch) on TensorFlow and
JAX, through model.fit otherwise; either way hpo.train.reporting's EpochReporter sees every
epoch's logs. On the fused loop its storage calls run on a thread while the next epoch trains
(ReportAhead).

A study with a build function (`[model] build`, or `build=` from Python) trains the user's
model (hpo.train.build_function), built afresh for each trial (and each fold), compiled by hpo
with the trial's optimizer, learning rate and loss unless the function compiled it. The fused
loop calls it whole; model.fit trains it where the fused loop cannot (the function compiled
it, several inputs or outputs, a first epoch that fails to trace), which is said once per
reason and recorded in the trial's `worker` (`engine`: fit, `fit_reason`). A function that
raises, or returns no model, fails its trial with one line (`fail_reason`); the study goes on.
k-fold folds that cannot stack (a user's model, or hpo's with model.stack_blocker) train one
after another, an epoch of each in turn, their logs averaged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from hpo import resources
from hpo.backend import import_keras, set_random_seed
from hpo.data import arrays, builtin, own
from hpo.data.arrays import Prepared
from hpo.errors import HpoError, first_line
from hpo.study.studyfile import StudySpec
from hpo.train import build_function, engine, predictions, programs, word_ids
from hpo.train import model as model_lib
from hpo.train.reporting import (
    STORAGE_CALLS,
    EpochReporter,
    ReportAhead,
    TrialFailed,
    interrupted,
)

keras = import_keras()  # through hpo.backend, which keeps the backend's start-up quiet
log = logging.getLogger("hpo.objective")

COMPILED_BY_USER = (
    "the build function compiled its model: hpo keeps its optimizer, loss and metrics "
    "(trained with model.fit)"
)
_said: set[str] = set()  # the lines said once per process (say_once)


def say_once(line: str) -> None:
    """Warn with `line` the first time this process meets it: a study's every trial would
    repeat it."""
    if line not in _said:
        _said.add(line)
        log.warning(line)


class Objective:
    """Callable for study.optimize; holds the prepared data so no trial reloads it."""

    def __init__(
        self,
        spec: StudySpec,
        data: Prepared,
        *,
        verbose: int = 0,
        on_epoch: Callable[[int, int, float], None] | None = None,
        check_interrupt: Callable[[], None] | None = None,
        admit: Callable[[optuna.Trial], None] | None = None,
        artifact_store: Any = None,
        build: build_function.BuildFn | None = None,
        code_paths: Sequence[str | Path] = (),
    ) -> None:
        self.spec = spec
        self.data = data
        # The user's build function (None: hpo's Dense model): given, or the study's
        # [model] build imported once (a missing module or function is one line).
        if build is None and spec.model is not None:
            build = build_function.load(spec.model, code_paths)
        self.build_fn = build
        self.admit = admit  # raises when the study's trial budget is already taken
        # Where each trial keeps its best epoch's validation predictions (None: nowhere).
        self.artifact_store = artifact_store
        self._kept: predictions.BestEpochs | None = None  # the running trial's predictions
        # Which rows the kept predictions are of, so analyze scores them on those rows only.
        rows = spec.validation.kept_rows(len(data.y_train))
        self._rows = {
            "validation": str(spec.validation),
            "targets": predictions.rows_digest(data.y_train[rows]),
        }
        self.verbose = verbose
        self.on_epoch = on_epoch  # (trial number, epoch, monitored value), for progress display
        self.check_interrupt = check_interrupt  # raises KeyboardInterrupt after Ctrl-C
        self.engine = engine.choose()
        # The fused loop trains text's first layer on word ids (hpo.train.word_ids): hpo's
        # own Dense model only; a user's model reads the rows as they are.
        fused = self.engine == "fused"
        rows = len(data.x_train)
        folds = spec.validation.folds
        self.first_layer = word_ids.choose(data.packed, folds, rows) if fused else None
        if fused and build is not None:
            self.first_layer = "dense"
        self.worker = {
            **resources.worker_info(),
            "backend": keras.backend.backend(),
            "engine": self.engine,
            "input": data.layout,
            **({"first_layer": self.first_layer} if self.first_layer else {}),
        }
        # The fused loop's arrays on the device and its compiled programs, kept across trials;
        # and each fold's, for folds that train one after another (_start_apart).
        self._cache = programs.DeviceCache()
        self._fold_caches: list[programs.DeviceCache] = []
        self.trial_number: int | None = None  # the trial running, or run last

    def __call__(self, trial: optuna.Trial) -> float:
        if self.admit:
            self.admit(trial)
        return self.run(trial, self.begin(trial))

    def begin(self, trial: optuna.Trial) -> dict[str, Any]:
        """Start `trial`: record which worker runs it, sample its parameters (returned)."""
        self.trial_number = trial.number
        # Which process ran it, and how often that process has read or vectorized the data
        # (once per worker: every later trial finds it in memory).
        loads = (builtin if self.data.preparation is None else own).stats
        trial.set_user_attr("worker", {**self.worker, "data_loads": dict(loads)})
        return self.spec.space.suggest(trial)

    def _fresh_session(self) -> None:
        """Drop the previous trial's graphs and layer names, when no program compiles beside
        (prepare(): Keras' state is replaced for every thread). Without a collection: the
        callers (study.optimize(gc_after_trial=True), hpo.search) ran one after that trial."""
        keras.backend.clear_session(free_memory=False)

    def seed(self, trial: optuna.Trial) -> int | None:
        return None if self.spec.seed is None else self.spec.seed + trial.number

    def reporter(self, trial: optuna.Trial, checks_interrupt: bool = True) -> EpochReporter:
        """The trial's EpochReporter, showing its epochs in the progress display."""
        on_epoch = self.on_epoch and (
            lambda epoch, value: self.on_epoch(trial.number, epoch, value)
        )
        return EpochReporter(
            trial,
            self.spec.metric,
            self.spec.direction,
            on_epoch,
            self.check_interrupt if checks_interrupt else None,
            smooth_epochs=self.spec.smooth_epochs,
            patience=self.spec.patience,
        )

    def run(
        self,
        trial: optuna.Trial,
        params: dict[str, Any],
        beside: Callable[[], None] | None = None,
    ) -> float:
        """Train a begun trial alone; its value (the best epoch's metric). `beside` is called
        once, when the fused loop's program for the trial is ready and before its first epoch
        (hpo.search.ahead: the next trial is asked for and its program compiled meanwhile)."""
        self.trial_number = trial.number
        self._fresh_session()
        seed = self.seed(trial)
        if seed is not None:
            set_random_seed(seed)
        reporter = self.reporter(trial)
        if self.artifact_store is not None:
            self._kept = predictions.BestEpochs(self.spec.smooth_epochs)
        try:
            if self.build_fn is not None:
                self._train_own(trial, params, reporter, seed, beside)
            elif self.engine == "fused" and self._apart(params):
                data = self.data
                models = [model_lib.build(params, data) for _ in range(self.spec.validation.folds)]
                if beside:
                    beside()
                self._run_apart(*self._start_apart(params, data, models, seed, False), reporter)
            elif self.engine == "fused":
                self._train_fused(params, reporter, seed, beside)
            elif self.spec.validation.kind == "kfold":
                self._fit_folds(params, reporter)
            else:
                self._fit_holdout(params, reporter)
            best = self.finish(trial, reporter, self._kept)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, or `hpo stop` (its own reason)
            interrupted(trial, reporter, exc)
            raise
        finally:
            self._kept = None
        return best

    def finish(
        self, trial: optuna.Trial, reporter: EpochReporter, kept: predictions.BestEpochs | None
    ) -> float:
        """Save a trial's curve and its best epoch's predictions; its value."""
        reporter.save()
        best = reporter.best()
        assert best is not None  # record() fails the trial at its first non-finite value
        self._keep_predictions(trial, best[0], kept)
        return best[1]

    def _keep_predictions(
        self, trial: optuna.Trial, epoch: int, kept: predictions.BestEpochs | None
    ) -> None:
        """Keep the best epoch's validation predictions; a store that fails (a full disk, a
        bucket's credentials) costs the trial its kept predictions, not its result."""
        if kept is None or epoch not in kept.by_epoch:
            return  # no store, or model.fit (torch, HPO_ENGINE=fit): nothing to keep
        try:
            predictions.keep(trial, self.artifact_store, kept.by_epoch[epoch], epoch, self._rows)
        except Exception as exc:
            log.warning(
                "trial %d: its validation predictions could not be kept (%s: %s)",
                trial.number,
                type(exc).__name__,
                first_line(exc),
            )

    def _fit_args(
        self, params: dict[str, Any], x, y, validation, loss: str | None = None
    ) -> dict[str, Any]:
        to_targets = self._targets(params, loss)
        return {
            "x": x,
            "y": to_targets(y),
            "batch_size": params["batch_size"],
            "validation_data": (validation[0], to_targets(validation[1])),
            "validation_batch_size": model_lib.validation_batch(params["batch_size"]),
            "verbose": self.verbose,
        }

    def _targets(self, params: dict[str, Any], loss: str | None = None):
        """Labels → the targets `loss` (default: the trial's) expects."""
        data, loss = self.data, loss or params["loss"]
        return lambda y: model_lib.targets(y, data.task, loss, data.n_outputs)

    def _fit_holdout(self, params: dict[str, Any], reporter: EpochReporter) -> None:
        """Train a holdout trial with model.fit (torch, or HPO_ENGINE=fit)."""
        ((train, val),) = self.spec.validation.splits(self.data.x_train, self.data.y_train)
        model = model_lib.build(params, self.data)
        model.fit(
            **self._fit_args(params, *train, val), epochs=self.spec.max_epochs, callbacks=[reporter]
        )

    def _fit_folds(self, params: dict[str, Any], reporter: EpochReporter) -> None:
        """Train the k fold models of a k-fold trial with model.fit (torch, or HPO_ENGINE=fit)
        and report their averaged metric: k models side by side, a chunk of epochs at a time,
        the pruner checked after every chunk: one fit() call per fold and epoch would cost more
        than the epochs themselves on small data."""
        folds = list(self.spec.validation.splits(self.data.x_train, self.data.y_train))
        models = [model_lib.build(params, self.data) for _ in folds]
        fit_args = [self._fit_args(params, *train, val) for train, val in folds]
        chunk = max(1, self.spec.max_epochs // 10)
        for start in range(0, self.spec.max_epochs, chunk):
            stop = min(start + chunk, self.spec.max_epochs)
            curves = [
                model.fit(**args, initial_epoch=start, epochs=stop).history
                for model, args in zip(models, fit_args, strict=True)
            ]
            for offset in range(stop - start):
                averaged = {
                    key: float(np.mean([c[key][offset] for c in curves])) for key in curves[0]
                }
                if reporter.record(start + offset + 1, averaged):
                    return

    def _fused_split(self) -> tuple[tuple, tuple]:
        """The fused loop's (training, validation) arrays: the holdout's, or the k folds'
        stacked (model_lib.stack_folds) for the k models that train as one (FoldDense)."""
        splits = list(self.spec.validation.splits(self.data.x_train, self.data.y_train))
        return model_lib.stack_folds(splits) if len(splits) > 1 else splits[0]

    def _train_fused(
        self,
        params: dict[str, Any],
        reporter: EpochReporter,
        seed: int | None,
        beside: Callable[[], None] | None = None,
    ) -> None:
        """The fused loop (hpo.train.engine): one compiled call per epoch, logs to the reporter."""
        train, val = self._fused_split()
        model = model_lib.build(params, self.data, folds=self.spec.validation.folds)
        options = self._options(params, train, val, seed)
        trainer = programs.trainer(model, cache=self._cache, **options)
        if beside:
            beside()
        with ReportAhead(reporter, STORAGE_CALLS) as ahead:
            for epoch in range(1, self.spec.max_epochs + 1):
                logs = trainer.run_epoch()  # while the previous epoch is told (ReportAhead)
                ahead.settle()
                self._keep_epoch(self._kept, reporter, epoch, trainer.val_predictions)
                if ahead.record(epoch, logs):
                    return

    # --- folds one after another, and the user's own model -------------------------------------

    def _apart(self, params: dict[str, Any]) -> str | None:
        """Why a k-fold trial's folds train one after another rather than stacked as one
        model (None: they stack, or there is one split), said once per reason."""
        if self.spec.validation.folds == 1:
            return None
        why = (
            "a build function's model"
            if self.build_fn is not None
            else model_lib.stack_blocker(params)
        )
        if why:
            say_once(f"k-fold: the folds of this model train one after another: {why}")
        return why

    def _caches(self, splits: int) -> list[programs.DeviceCache]:
        """A device cache per split: each holds its own fold's arrays (InputCache keys on the
        arrays' shapes, which all folds share), kept across trials."""
        if splits == 1:
            return [self._cache]
        while len(self._fold_caches) < splits:
            self._fold_caches.append(programs.DeviceCache())
        return self._fold_caches[:splits]

    def _start_apart(
        self,
        params: dict[str, Any],
        data: Prepared,
        models: list[keras.Model],
        seed: int | None,
        whole: bool,
    ) -> tuple[list[engine.FusedTrainer], list[dict[str, float]]]:
        """A fused trainer for each split's model (holdout: one), and their first epoch's logs
        (where tracing fails, if it does). `whole`: a user's model, called whole."""
        splits = list(self.spec.validation.splits(data.x_train, data.y_train))
        trainers = []
        for model, (train, val), cache in zip(
            models, splits, self._caches(len(splits)), strict=True
        ):
            options = self._options(params, train, val, seed)
            trainers.append(programs.trainer(model, cache=cache, whole=whole, **options))
        return trainers, [trainer.run_epoch() for trainer in trainers]

    def _run_apart(
        self,
        trainers: list[engine.FusedTrainer],
        first: list[dict[str, float]],
        reporter: EpochReporter,
    ) -> None:
        """Train each split's trainer an epoch in turn, from the second epoch (the first's
        logs: `first`); report the folds' mean logs every epoch, and keep the validation
        predictions as the stacked model's (rows per fold, folds, outputs)."""
        with ReportAhead(reporter, STORAGE_CALLS) as ahead:
            for epoch in range(1, self.spec.max_epochs + 1):
                # while the previous epoch is told (ReportAhead)
                each = first if epoch == 1 else [trainer.run_epoch() for trainer in trainers]
                ahead.settle()
                logs = {key: float(np.mean([fold[key] for fold in each])) for key in each[0]}
                if self._kept is not None:
                    kept = [trainer.val_predictions for trainer in trainers]
                    self._keep_epoch(
                        self._kept,
                        reporter,
                        epoch,
                        kept[0] if len(kept) == 1 else np.stack(kept, 1),
                    )
                if ahead.record(epoch, logs):
                    return

    def _trial_data(self, params: dict[str, Any]) -> Prepared:
        """The data a trial trains on: word-id sequences cut to its `maxlen` if it has one
        (hpo.data.arrays.cut_to: views, no copy), else the study's."""
        if "maxlen" in params and getattr(self.data, "input_kind", None) == "sequence":
            return arrays.cut_to(self.data, params["maxlen"])
        return self.data

    def _build_own(
        self, trial: optuna.Trial, params: dict[str, Any], inputs: build_function.Inputs
    ) -> tuple[keras.Model, bool]:
        """The build function's model for `params`, compiled (by hpo unless the function did),
        and whether the function compiled it. A function that raises or returns no model, or
        a model that cannot be built for the inputs, fails the trial with one line."""
        try:
            model, by_user = build_function.call(self.build_fn, params, inputs)
            if isinstance(model, keras.Sequential) and not model.built:  # without an Input
                model.build((None, *inputs.shape))
        except Exception as exc:
            reason = (
                str(exc)
                if isinstance(exc, build_function.BuildFailed)
                else f"its model could not be built for inputs of shape {inputs.shape}: "
                f"{type(exc).__name__}: {first_line(exc)}"
            )
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from None
        if by_user:
            say_once(COMPILED_BY_USER)
        else:
            model_lib.compile_model(model, params, inputs.task)
        return model, by_user

    def _train_own(
        self,
        trial: optuna.Trial,
        params: dict[str, Any],
        reporter: EpochReporter,
        seed: int | None,
        beside: Callable[[], None] | None = None,
    ) -> None:
        """Train the build function's model for `params`: in the fused loop, called whole,
        each fold one after another; else (or where its first epoch fails to trace) with
        model.fit, said once per reason and recorded in the trial's `worker`."""
        data = self._trial_data(params)
        inputs = build_function.inputs_of(data)
        model, by_user = self._build_own(trial, params, inputs)
        folds = self.spec.validation.folds
        self._apart(params)
        why = None
        if by_user:
            why = COMPILED_BY_USER
        elif self.engine == "fused":
            why = build_function.fit_reason(model)
            if why is None:
                models = [model] + [
                    self._build_own(trial, params, inputs)[0] for _ in range(folds - 1)
                ]
                if beside:  # no program to compile ahead for the next trial (prepare)
                    beside()
                try:
                    started = self._start_apart(params, data, models, seed, True)
                except (KeyboardInterrupt, TrialFailed, optuna.TrialPruned, HpoError):
                    raise
                except Exception as exc:  # the first epoch compiles: the model's, or its code's
                    why = (
                        "the fused loop could not trace this model "
                        f"({type(exc).__name__}: {first_line(exc)})"
                    )
                    self._fresh_session()  # a fresh model, from the trial's seed
                    if seed is not None:
                        set_random_seed(seed)
                    model, by_user = self._build_own(trial, params, inputs)
                else:
                    self._run_apart(*started, reporter)
                    return
            if why != COMPILED_BY_USER:
                say_once(f"{why}: trained with model.fit")
        if self.engine == "fused":
            trial.set_user_attr(
                "worker", {**trial.user_attrs.get("worker", {}), "engine": "fit", "fit_reason": why}
            )
        self._fit_own(trial, params, data, inputs, model, by_user, reporter)

    def _fit_own(
        self,
        trial: optuna.Trial,
        params: dict[str, Any],
        data: Prepared,
        inputs: build_function.Inputs,
        model: keras.Model,
        by_user: bool,
        reporter: EpochReporter,
    ) -> None:
        """Train the user's model with model.fit; k-fold: a model per fold, an epoch of each in
        turn, their mean logs reported every epoch. The model's own error in fit fails the
        trial with one line; so does a compiled model whose logs lack the study's metric."""
        loss = build_function.loss_name(model.loss, params["loss"]) if by_user else params["loss"]
        splits = list(self.spec.validation.splits(data.x_train, data.y_train))
        models = [model] + [self._build_own(trial, params, inputs)[0] for _ in splits[1:]]
        fit_args = [self._fit_args(params, *train, val, loss) for train, val in splits]
        if len(splits) == 1:
            report = _HeldReport(reporter, by_user)
            _fitting(
                reporter, model, **fit_args[0], epochs=self.spec.max_epochs, callbacks=[report]
            )
            if report.raised is not None:
                raise report.raised
            return
        for epoch in range(1, self.spec.max_epochs + 1):
            each = [
                _fitting(reporter, m, **a, initial_epoch=epoch - 1, epochs=epoch).history
                for m, a in zip(models, fit_args, strict=True)
            ]
            logs = {key: float(np.mean([fold[key][0] for fold in each])) for key in each[0]}
            if reporter.record(epoch, _checked(reporter, logs) if by_user else logs):
                return

    def prepare(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        """Compile the program a begun trial will train in, if this worker has none of its
        structure (hpo.train.programs.compile_ahead); on the fused loop only. It may run on
        a thread beside another trial's epochs (hpo.search.ahead): it builds its own model,
        and the trial's run() later builds the trial's, from the trial's seed as always."""
        if self.engine != "fused" or self.build_fn is not None:
            return  # a user's model has a program of its own: nothing to share or prepare
        if self.spec.validation.folds > 1 and model_lib.stack_blocker(params):
            return  # folds one after another: no stacked program
        train, val = self._fused_split()
        model = model_lib.build(params, self.data, folds=self.spec.validation.folds)
        options = self._options(params, train, val, self.seed(trial))
        programs.compile_ahead(model, cache=self._cache, **options)

    def _options(self, params: dict[str, Any], train, val, seed: int | None) -> dict[str, Any]:
        """hpo.train.programs.trainer's options for a trial of `params` on these arrays."""
        to_targets = self._targets(params)
        return dict(
            loss=params["loss"],
            task=self.data.task,
            train=(train[0], to_targets(train[1])),
            validation=(val[0], to_targets(val[1])),
            batch_size=params["batch_size"],
            validation_batch_size=model_lib.validation_batch(params["batch_size"]),
            seed=seed,
            first_layer=self.first_layer,
            epochs=self.spec.max_epochs,
        )

    def _keep_epoch(
        self,
        kept: predictions.BestEpochs | None,
        reporter: EpochReporter,
        epoch: int,
        epoch_predictions: np.ndarray,
    ) -> None:
        if kept is not None:
            best = reporter.best()
            kept.add(
                epoch, predictions.compact(epoch_predictions, self.data.task), best and best[0]
            )

    # --- trials side by side (hpo.search.batched) ---------------------------------------------

    def unstackable(self) -> str | None:
        """Why no trial of this study can train side by side with others (None: some can)."""
        if self.build_fn is not None:
            return "a build function's models train one trial at a time"
        if self.engine != "fused":
            return f"the {keras.backend.backend()} backend trains with model.fit"
        if self.first_layer != "dense":
            return "text trains its first layer on word ids, one trial at a time"
        return None

    def stackable(self, params: dict[str, Any]) -> bool:
        """Whether a trial can train side by side with others of its structure: on the fused
        loop, with a dense first layer (word ids gather per trial), an optimizer that steps
        each variable on its own (engine.STACKABLE_OPTIMIZERS), and hpo's model stackable
        (stack_blocker: batch normalization is not)."""
        return (
            self.unstackable() is None
            and params["optimizer"] in engine.STACKABLE_OPTIMIZERS
            and model_lib.stack_blocker(params) is None
        )

    def run_stacked(
        self,
        trials: list[optuna.Trial],
        params: list[dict[str, Any]],
        tell: Callable[[optuna.Trial, TrialState, float | None], None],
    ) -> None:
        """Train begun trials of one structure (all parameters alike but the learning rate and
        the dropout rate) side by side as one model, one compiled call per epoch for all.

        Each trial reports every epoch and is pruned, failed or stopped early (patience) on its
        own, and `tell` hears of it at once (a pruning after the next epoch trained: the trials'
        storage calls run beside it, ReportAhead); its slot trains on unused until the last
        trial ends, which is when the group stops. Each trial trains exactly as it would alone, but
        from the initial weights and batch order that the seed of its group's first trial
        gives."""
        n = len(trials)
        self._fresh_session()
        structure = {**params[0], "dropout": max(p["dropout"] for p in params)}
        seed = self.seed(trials[0])
        if seed is not None:
            set_random_seed(seed)
        train, val = self._fused_split()
        model = model_lib.build(structure, self.data, folds=self.spec.validation.folds, trials=n)
        rates = {key: [p[key] for p in params] for key in ("learning_rate", "dropout")}
        options = self._options(structure, train, val, seed)
        trainer = programs.trainer(model, cache=self._cache, **options, trials=n, rates=rates)
        # Ctrl-C is checked once all trials have recorded an epoch: none loses it.
        reporters = [self.reporter(trial, checks_interrupt=False) for trial in trials]
        store = self.artifact_store is not None
        kept = [predictions.BestEpochs(self.spec.smooth_epochs) if store else None for _ in trials]
        for trial in trials:
            trial.set_user_attr("worker", {**trial.user_attrs["worker"], "stacked": n})
        aheads = [ReportAhead(reporter, STORAGE_CALLS) for reporter in reporters]
        live = list(range(n))

        def end(t: int, state: TrialState, value: float | None = None) -> None:
            live.remove(t)
            tell(trials[t], state, value)

        try:
            with contextlib.ExitStack() as waits:  # an exception waits for every pending tell
                for ahead in aheads:
                    waits.enter_context(ahead)
                for epoch in range(1, self.spec.max_epochs + 1):
                    logs = trainer.run_epoch_each()  # while the last epoch is told (ReportAhead)
                    for t in list(live):
                        try:
                            aheads[t].settle()
                        except optuna.TrialPruned:
                            end(t, TrialState.PRUNED)
                    for t in list(live):
                        self._keep_epoch(kept[t], reporters[t], epoch, trainer.trial_predictions[t])
                        try:
                            if aheads[t].record(epoch, logs[t]) or epoch == self.spec.max_epochs:
                                aheads[t].settle()  # pruned at its last epoch, or complete
                                value = self.finish(trials[t], reporters[t], kept[t])
                                end(t, TrialState.COMPLETE, value)
                        except optuna.TrialPruned:
                            end(t, TrialState.PRUNED)
                        except TrialFailed:
                            end(t, TrialState.FAIL)
                    if not live:
                        return
                    if self.check_interrupt:
                        self.check_interrupt()
        except KeyboardInterrupt as exc:
            for t in live:
                interrupted(trials[t], reporters[t], exc)
            raise


def _checked(reporter: EpochReporter, logs: dict[str, Any]) -> dict[str, Any]:
    """`logs`, which must hold the study's metric: a model the build function compiled may
    log other metrics, and then its trial fails with one line naming what it logs."""
    if reporter.monitor not in logs:
        reason = (
            f"the build function's compiled model logs no {reporter.monitor} "
            f"(it logs {', '.join(sorted(logs)) or 'nothing'}): compile it with that metric, "
            "or leave it uncompiled for hpo to compile"
        )
        reporter.trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason)
    return logs


def _fitting(reporter: EpochReporter, model: keras.Model, **fit_args: Any) -> Any:
    """model.fit(**fit_args) of a user's model, whose own error (not hpo's: pruning, a failed
    trial, Ctrl-C, a storage error, which _HeldReport holds back) fails the trial with one
    line."""
    try:
        return model.fit(**fit_args)
    except (TrialFailed, optuna.TrialPruned, HpoError):
        raise
    except Exception as exc:
        reporter.save()
        reason = f"model.fit failed: {type(exc).__name__}: {first_line(exc)}"
        reporter.trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason) from None


class _HeldReport(keras.callbacks.Callback):
    """The reporter as model.fit's callback, what it raises (pruning, a failed trial, Ctrl-C,
    a lost storage) held back from fit, which stops there, and raised after it: anything else
    that leaves fit is the model's own error (_fitting)."""

    def __init__(self, reporter: EpochReporter, check: bool) -> None:
        super().__init__()
        self.reporter = reporter
        self.check = check  # the model's own metrics: check the study's is among them
        self.raised: BaseException | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        try:
            if self.reporter.record(
                epoch + 1, _checked(self.reporter, logs) if self.check else logs
            ):
                self.model.stop_training = True
        except BaseException as exc:  # raised again once fit has returned
            self.raised = exc
            self.model.stop_training = True
