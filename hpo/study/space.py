"""The search space: what a study file's [space] table may say, and how a trial samples it.

Every model hpo builds is described by the same eight parameters. A study file gives each one
as a fixed value, a list of choices, or an int/float range; parameters it leaves out keep the
book's configuration for a built-in dataset, and are searched over `table_space` for the
user's own data. Fixed values are still suggested (as a one-choice categorical) so that
`trial.params` alone is enough to rebuild any trial's model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.errors import HpoError

LOSSES: dict[str, tuple[str, ...]] = {
    "binary": ("binary_crossentropy", "mse", "mae", "hinge"),
    "multiclass": ("categorical_crossentropy", "sparse_categorical_crossentropy"),
    "regression": ("mse", "mae", "huber"),
}
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "silu", "leaky_relu")
OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd", "nadam")


def _int_at_least(low: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        return None if value >= low else f"must be at least {low}, got {value}"

    return check


def _float_in(low: float, high: float, *, open_low: bool, open_high: bool) -> Callable:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return f"must be a number, got {value!r}"
        too_low = value <= low if open_low else value < low
        too_high = value >= high if open_high else value > high
        if too_low or too_high:
            left, right = "(" if open_low else "[", ")" if open_high else "]"
            return f"must lie in {left}{low:g}, {high:g}{right}, got {value:g}"
        return None

    return check


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}; got {value!r}"

    return check


@dataclass(frozen=True)
class ParamRule:
    """What values one parameter may take; `kind` says which range forms make sense."""

    kind: str  # "int" | "float" | "str"
    check: Callable[[Any], str | None]


PARAMS: dict[str, ParamRule] = {
    "layers": ParamRule("int", _int_at_least(1)),
    "units": ParamRule("int", _int_at_least(1)),
    "activation": ParamRule("str", _one_of(ACTIVATIONS)),
    "loss": ParamRule("str", lambda v: None),  # checked against the task in parse_space
    "optimizer": ParamRule("str", _one_of(OPTIMIZERS)),
    "learning_rate": ParamRule("float", _float_in(0.0, 10.0, open_low=True, open_high=False)),
    "batch_size": ParamRule("int", _int_at_least(1)),
    "dropout": ParamRule("float", _float_in(0.0, 1.0, open_low=False, open_high=True)),
}

DEFAULT_LOSS = {
    "binary": "binary_crossentropy",
    "multiclass": "sparse_categorical_crossentropy",
    "regression": "mse",
}
# The book's model for each built-in dataset (Deep Learning with Python, chapters 2 and 3):
# what a study file's [space] leaves out keeps these values, and `hpo experiment` varies them.
BOOK_CONFIGS: dict[str, dict[str, Any]] = {
    "imdb": {
        "layers": 2,
        "units": 16,
        "activation": "relu",
        "loss": "binary_crossentropy",
        "optimizer": "rmsprop",
        "learning_rate": 1e-3,
        "batch_size": 512,
        "dropout": 0.0,
    },
    "reuters": {
        "layers": 2,
        "units": 64,
        "activation": "relu",
        "loss": "categorical_crossentropy",
        "optimizer": "rmsprop",
        "learning_rate": 1e-3,
        "batch_size": 512,
        "dropout": 0.0,
    },
    "boston_housing": {
        "layers": 2,
        "units": 64,
        "activation": "relu",
        "loss": "mse",
        "optimizer": "rmsprop",
        "learning_rate": 1e-3,
        "batch_size": 16,
        "dropout": 0.0,
    },
    "mnist": {
        "layers": 1,
        "units": 512,
        "activation": "relu",
        "loss": "sparse_categorical_crossentropy",
        "optimizer": "rmsprop",
        "learning_rate": 1e-3,
        "batch_size": 128,
        "dropout": 0.0,
    },
}


def book_config(dataset: str | None, task: str) -> dict[str, Any]:
    """The book's model for a built-in `dataset`; for your own data (None), the book's first
    Dense stack (IMDB's: 2 × 16 relu units, rmsprop at 1e-3, batch 512) with the task's loss."""
    if dataset is not None:
        return dict(BOOK_CONFIGS[dataset])
    return {**BOOK_CONFIGS["imdb"], "loss": DEFAULT_LOSS[task]}


# Your own data: what a study file without [space] searches, and its epoch budget.
TABLE_SPACE: dict[str, Any] = {
    "layers": {"int": [1, 3]},
    "units": {"choices": [16, 32, 64, 128]},
    "activation": {"choices": ["relu", "tanh"]},
    "optimizer": {"choices": ["rmsprop", "adam"]},
    "learning_rate": {"float": [1e-4, 1e-2], "log": True},
    "dropout": {"float": [0.0, 0.3]},
}
STEPS_PER_EPOCH = 8  # at least this many optimizer steps an epoch at the largest batch size
TOTAL_STEPS = 1000  # the epoch budget gives the largest batch size about this many steps
BATCH_RANGE = (32, 512)  # the largest batch size offered lies in here
EPOCH_RANGE = (20, 200)  # and the epoch budget in here


def table_batch_sizes(rows: int) -> list[int]:
    """Batch sizes for a trial that fits on `rows` rows: three powers of two, the largest the
    biggest in BATCH_RANGE that still gives STEPS_PER_EPOCH steps an epoch."""
    largest = BATCH_RANGE[0]
    while largest < BATCH_RANGE[1] and 2 * largest * STEPS_PER_EPOCH <= rows:
        largest *= 2
    return [largest // 4, largest // 2, largest]


def table_max_epochs(rows: int) -> int:
    """The epoch budget for `rows` fitting rows: TOTAL_STEPS steps at the largest batch size,
    within EPOCH_RANGE."""
    steps = math.ceil(rows / table_batch_sizes(rows)[-1])
    return min(max(math.ceil(TOTAL_STEPS / steps), EPOCH_RANGE[0]), EPOCH_RANGE[1])


def table_space(rows: int) -> dict[str, Any]:
    """The [space] a study of the user's own table searches where its file says nothing;
    `rows`: the rows one trial fits on (the training rows less the validation ones).

    Why: the book's configuration (2 × 16 units, batch 512, 20 epochs) was chosen for IMDB's
    15,000 training reviews. On a table of a few hundred rows batch 512 is one optimizer step
    an epoch, 20 steps in all, and with nothing searched every trial is that same model.
    Instead, the ranges of the built-in and example studies (1–3 layers of 16–128 units, relu
    or tanh, rmsprop or Adam, learning rate 1e-4–1e-2 on a log scale, dropout up to 0.3), with
    batch sizes scaled to the rows so that an epoch is at least 8 steps: 8/16/32 below 512
    rows, 16/32/64 from 512, doubling with the rows up to 128/256/512 from 4,096 (the imdb
    study's). `table_max_epochs` then gives the largest batch about 1,000 steps in all (the
    book's Boston model takes some 1,500 to its best epoch): 200 epochs up to 160 rows, 63 to
    167 up to 8,191 rows, fewer above, 20 from 25,000. The loss stays the task's usual one, so
    that val_loss stays comparable across trials."""
    return {**TABLE_SPACE, "batch_size": {"choices": table_batch_sizes(rows)}}


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    @property
    def searched(self) -> bool:
        return len(self.values) > 1


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    @property
    def searched(self) -> bool:
        return self.high > self.low


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    @property
    def searched(self) -> bool:
        return self.high > self.low


Dimension = Choice | IntRange | FloatRange


@dataclass(frozen=True)
class Space:
    """The parsed [space] table: one dimension per model parameter, all eight present."""

    dims: Mapping[str, Dimension]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {name: dim.suggest(trial, name) for name, dim in self.dims.items()}

    def searched(self) -> list[str]:
        return [name for name, dim in self.dims.items() if dim.searched]

    def admits(self, params: Mapping[str, Any]) -> str | None:
        """Why a stored trial's parameters do not fit this space, or None when they do."""
        for name, dim in self.dims.items():
            if name not in params:
                return f"parameter {name} is missing"
            value = params[name]
            inside = (
                value in dim.values if isinstance(dim, Choice) else dim.low <= value <= dim.high
            )
            if not inside:
                return f"{name}={value!r} lies outside the study file's space"
        return None


def _fail(source: str, key: str, why: str) -> HpoError:
    return HpoError(f"{source}: space.{key}: {why}")


def _check_value(source: str, key: str, rule: ParamRule, value: Any, allowed: Callable) -> None:
    problem = allowed(value) or rule.check(value)
    if problem:
        raise _fail(source, key, problem)


def _parse_range(source: str, key: str, rule: ParamRule, entry: dict, allowed: Callable):
    form = "int" if "int" in entry else "float"
    bounds = entry[form]
    extra = set(entry) - {form, "log", "step"}
    if extra:
        allowed_options = f"{form}, log, step"
        raise _fail(
            source, key, f"unknown option {sorted(extra)[0]!r} (allowed: {allowed_options})"
        )
    if rule.kind == "str":
        raise _fail(source, key, "takes names, not a numeric range; use choices = [...]")
    if rule.kind == "int" and form == "float":
        raise _fail(source, key, "is an integer parameter; use int = [low, high]")
    if not (isinstance(bounds, list) and len(bounds) == 2):
        raise _fail(source, key, f"{form} must be [low, high], got {bounds!r}")
    low, high = bounds
    for bound in bounds:
        _check_value(source, key, rule, bound, allowed)
    if low > high:
        raise _fail(source, key, f"empty range: low {low} is greater than high {high}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise _fail(source, key, f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise _fail(source, key, f"a log range needs low > 0, got {low}")
    step = entry.get("step")
    if step is not None:
        if log:
            raise _fail(source, key, "step and log cannot be combined")
        if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
            raise _fail(source, key, f"step must be a positive number, got {step!r}")
    if form == "int":
        if step is not None and not isinstance(step, int):
            raise _fail(source, key, f"an int range needs an integer step, got {step!r}")
        return IntRange(low, high, step or 1, log)
    return FloatRange(float(low), float(high), None if step is None else float(step), log)


def _parse_entry(source: str, key: str, entry: Any, allowed: Callable) -> Dimension:
    rule = PARAMS[key]
    if not isinstance(entry, dict):
        _check_value(source, key, rule, entry, allowed)
        return Choice((entry,))
    forms = [form for form in ("choices", "int", "float") if form in entry]
    if len(forms) != 1:
        forms_text = "choices = [...], int = [lo, hi], float = [lo, hi]"
        raise _fail(source, key, f"give exactly one of {forms_text}")
    if forms[0] != "choices":
        return _parse_range(source, key, rule, entry, allowed)
    values = entry["choices"]
    if set(entry) != {"choices"}:
        raise _fail(source, key, f"unknown option {sorted(set(entry) - {'choices'})[0]!r}")
    if not isinstance(values, list) or not values:
        raise _fail(source, key, "choices must be a non-empty list")
    if len(set(map(repr, values))) != len(values):
        raise _fail(source, key, f"choices repeat a value: {values!r}")
    for value in values:
        _check_value(source, key, rule, value, allowed)
    return Choice(tuple(values))


def parse_space(
    table: Any, task: str, source: str, defaults: Mapping[str, Any] | None = None
) -> Space:
    """Validate a [space] table for `task`; `source` names the file in error messages.
    Parameters the table leaves out take `defaults` (entries as [space] writes them: a
    dataset's `book_config`, or `table_space`), else `book_config(None, task)`."""
    if not isinstance(table, dict):
        raise HpoError(f"{source}: [space] must be a table of parameters")
    unknown = set(table) - set(PARAMS)
    if unknown:
        name = sorted(unknown)[0]
        raise _fail(source, name, f"unknown parameter (known: {', '.join(PARAMS)})")
    losses = LOSSES[task]

    def allowed(key: str) -> Callable[[Any], str | None]:
        if key == "loss":
            return lambda v: (
                None
                if v in losses
                else (f"{v!r} is not a loss for a {task} task (use one of {', '.join(losses)})")
            )
        return lambda v: None

    fallback = {**book_config(None, task), **(defaults or {})}
    dims = {
        key: _parse_entry(source, key, table.get(key, fallback[key]), allowed(key))
        for key in PARAMS
    }
    return Space(dims)
