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
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from hpo import resources
from hpo.backend import import_keras, set_random_seed
from hpo.data import builtin, own
from hpo.data.arrays import Prepared
from hpo.errors import first_line
from hpo.study.studyfile import StudySpec
from hpo.train import engine, predictions, programs, word_ids
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
    ) -> None:
        self.spec = spec
        self.data = data
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
        # The fused loop trains text's first layer on word ids (hpo.train.word_ids).
        fused = self.engine == "fused"
        rows = len(data.x_train)
        folds = spec.validation.folds
        self.first_layer = word_ids.choose(data.packed, folds, rows) if fused else None
        self.worker = {
            **resources.worker_info(),
            "backend": keras.backend.backend(),
            "engine": self.engine,
            "input": data.layout,
            **({"first_layer": self.first_layer} if self.first_layer else {}),
        }
        # The fused loop's arrays on the device and its compiled programs, kept across trials.
        self._cache = programs.DeviceCache()
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
            if self.engine == "fused":
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

    def _fit_args(self, params: dict[str, Any], x, y, validation) -> dict[str, Any]:
        to_targets = self._targets(params)
        return {
            "x": x,
            "y": to_targets(y),
            "batch_size": params["batch_size"],
            "validation_data": (validation[0], to_targets(validation[1])),
            "validation_batch_size": model_lib.validation_batch(params["batch_size"]),
            "verbose": self.verbose,
        }

    def _targets(self, params: dict[str, Any]):
        data = self.data
        return lambda y: model_lib.targets(y, data.task, params["loss"], data.n_outputs)

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

    def prepare(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        """Compile the program a begun trial will train in, if this worker has none of its
        structure (hpo.train.programs.compile_ahead); on the fused loop only. It may run on
        a thread beside another trial's epochs (hpo.search.ahead): it builds its own model,
        and the trial's run() later builds the trial's, from the trial's seed as always."""
        if self.engine != "fused":
            return
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
        if self.engine != "fused":
            return f"the {keras.backend.backend()} backend trains with model.fit"
        if self.first_layer != "dense":
            return "text trains its first layer on word ids, one trial at a time"
        return None

    def stackable(self, params: dict[str, Any]) -> bool:
        """Whether a trial can train side by side with others of its structure: on the fused
        loop, with a dense first layer (word ids gather per trial), and an optimizer that
        steps each variable on its own (engine.STACKABLE_OPTIMIZERS)."""
        return self.unstackable() is None and params["optimizer"] in engine.STACKABLE_OPTIMIZERS

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
