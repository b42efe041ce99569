"""Trials of one structure share one compiled program of the fused loop (hpo.train.engine).

Compiling is most of a short trial: on a CPU a Boston program takes about as long to trace and
compile, whatever its size, as a 200-epoch trial takes to train (docs/engine.md, "Compiling
less"; the figures: docs/lab/performance.md).
The learning rate (an optimizer variable) and the dropout rates are inputs of the compiled epoch,
not constants in it, so a later trial of the same layers, optimizer, loss and batch size
trains in an earlier trial's program: its initial weights and seed are copied into the
program's own model and its trained weights out again (FusedTrainer.load, write_back).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np

from hpo.backend import import_keras
from hpo.train import model as model_lib
from hpo.train.engine import FusedTrainer, use_xla
from hpo.train.inputs import InputCache

keras = import_keras()


class DeviceCache(InputCache):
    """What the fused loop keeps from one trial to the next in a process (an Objective's
    trials, analyze's retrains): the data as tensors, and the compiled programs of the last
    PROGRAMS model structures (trainer())."""

    PROGRAMS = 8

    def __init__(self) -> None:
        super().__init__()
        self.programs: OrderedDict[str, FusedTrainer] = OrderedDict()


def trainer(
    model: keras.Model, *, cache: DeviceCache, whole: bool = False, **options: Any
) -> FusedTrainer:
    """A FusedTrainer for `model` (FusedTrainer's options): the program an earlier model of
    the same structure compiled, if `cache` holds it, restarted with this model's weights,
    learning rate, dropout rates and seed; else a new one, kept in `cache`. In a search many
    trials repeat an earlier trial's layers, units, activation, loss, optimizer and batch size
    (docs/engine.md, "Compiling less").

    A model that is not hpo's own (`whole`: a build function's) gets a program of its own,
    which trains it in place and is not kept: its layers' configurations need not say all
    that the program depends on (a custom layer's get_config may leave out what its call
    does), so no two such models are proven alike. Only `cache`'s arrays are shared."""
    if whole:
        return FusedTrainer(model, cache=cache, whole=True, **options)
    key = program_key(model, **options)
    program = cache.programs.pop(key, None)
    if program is None:
        # The program trains its own copy (TensorFlow trains it in place), never a trial's
        # model, which is handed over (analyze's seeds of one configuration share a program).
        program = FusedTrainer(_structural_copy(model), cache=cache, **options)
    program.load(
        model, options["train"], options["validation"], options.get("seed"), options.get("rates")
    )
    _keep(cache, key, program)
    return program


def compile_ahead(model: keras.Model, *, cache: DeviceCache, **options: Any) -> None:
    """Compile the program trainer() will find for a model of this structure, unless `cache`
    holds it: trace and compile it with one epoch of its own model (XLA compiles at the first
    call), from the seed in `options`, so that a text program's word capacity is the one the
    trial's first epoch sets (FusedTrainer.run_epoch). trainer() restarts it from the trial's
    model, its weights and seed. Called on a thread (hpo.search.ahead) while the worker's
    current trial trains in another program: that one stays the newest but one in `cache`."""
    key = program_key(model, **options)
    if key in cache.programs:
        return
    program = FusedTrainer(_structural_copy(model), cache=cache, **options)
    program.run_epoch()
    _keep(cache, key, program)


def _keep(cache: DeviceCache, key: str, program: FusedTrainer) -> None:
    """Keep `program` as the newest in `cache`, the oldest dropped beyond cache.PROGRAMS."""
    cache.programs[key] = program
    while len(cache.programs) > cache.PROGRAMS:
        cache.programs.popitem(last=False)


def program_key(
    model: keras.Model,
    *,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray] | None,
    **options: Any,
) -> str:
    """What a compiled program depends on: the model's layers and optimizer (without names,
    the learning rate and dropout rates, which are its inputs), the arrays' shapes and types,
    and the trainer's options (batch sizes, loss, task, first layer form)."""
    layers = [
        (type(layer).__name__, _config(layer.get_config(), ("name", "rate", "seed")))
        for layer in model_lib.chain(model)
    ]
    optimizer = model.optimizer
    arrays = [train] if validation is None else [train, validation]
    shapes = [(a.shape, str(a.dtype)) for pair in arrays for a in pair]
    options.pop("seed", None)
    options.pop("rates", None)  # stacked trials' learning and dropout rates: inputs too
    epochs = options.pop("epochs", None)
    xla = use_xla(options.get("first_layer", "dense"), len(train[0]), options["batch_size"], epochs)
    structure = [
        layers,
        type(optimizer).__name__,
        _config(optimizer.get_config(), ("name", "learning_rate")),
        shapes,
        validation is None,
        xla,
        sorted(options.items()),
    ]
    return json.dumps(structure, sort_keys=True, default=str)


def _structural_copy(model: keras.Model) -> keras.Model:
    """A model of the same layers and optimizer (its own variables, their values unset)."""
    copy = keras.models.clone_model(model)
    optimizer = model.optimizer
    copy.compile(optimizer=type(optimizer).from_config(optimizer.get_config()))
    return copy


def _config(config: dict, leave_out: tuple[str, ...]) -> dict:
    return {key: value for key, value in config.items() if key not in leave_out}
