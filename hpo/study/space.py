"""The search space: what a study file's [space] table may say, and how a trial samples it.

hpo's Dense stack is described by eight parameters, plus two optional ones (l2, batch_norm)
present only where [space] lists them. A study file gives each one as a fixed value, a list of
choices, or an int/float range; parameters it leaves out keep the book's configuration for a
built-in dataset, and are searched over `table_space` for the user's own data. A study with its
own build function ([model]) may name any parameter; of the eight, only the training ones
(optimizer, learning_rate, loss, batch_size) are then always there.

An entry may hold `when = { parent = value or [values] }`: the parameter exists in a trial only
where every parent has one of those values (Optuna's define-by-run sampling: an absent
parameter is absent from `trial.params`, and TPE sees it so). `per_layer = true` gives
name_1 … name_L, one value per layer, L the trial's `layers`. Fixed values are still suggested
(as a one-choice categorical) so that `trial.params` alone is enough to rebuild any trial's
model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


def _float_at_least(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return f"must be a number, got {value!r}"
        return None if value >= low else f"must be at least {low:g}, got {value:g}"

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


def _scalar(value: Any) -> str | None:
    """A custom parameter's value: what Optuna stores (a number, a string or a boolean)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if isinstance(value, bool | int | float | str):
        return None
    return f"must be a number, a string or true/false, got {value!r}"


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}; got {value!r}"

    return check


@dataclass(frozen=True)
class ParamRule:
    """What values one parameter may take; `kind` says which range forms make sense."""

    kind: str  # "int" | "float" | "str" | "bool" | "any" (a build function's own parameter)
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
# hpo always trains with these, whatever builds the model: [space] or the defaults give them.
TRAINING = ("optimizer", "learning_rate", "loss", "batch_size")
# The Dense stack's optional parameters: in a trial's params only where [space] lists them,
# so the trials of a study written before them still fit its space (Space.admits).
OPTIONAL: dict[str, ParamRule] = {
    "l2": ParamRule("float", _float_at_least(0.0)),  # L2 penalty on the hidden layers' kernels
    "batch_norm": ParamRule("bool", _boolean),  # Dense → BatchNormalization → activation
}
RULES: dict[str, ParamRule] = {**PARAMS, **OPTIONAL}
CUSTOM = ParamRule("any", _scalar)  # a name only the user's build function reads

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


LAYERS = "layers"  # what a per-layer parameter counts its layers by


def _same(a: Any, b: Any) -> bool:
    """Equal as parameter values: true is not 1, and "1" is not 1 (Python says True == 1)."""
    if isinstance(a, bool) != isinstance(b, bool) or isinstance(a, str) != isinstance(b, str):
        return False
    return a == b


def _inside(dim: Dimension, value: Any) -> bool:
    """Whether `value` is one a trial may draw from `dim` (a stored value is untrusted data)."""
    if isinstance(dim, Choice):
        return any(_same(value, v) for v in dim.values)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(dim, IntRange):
        on_step = isinstance(value, int) and (value - dim.low) % dim.step == 0
        return on_step and dim.low <= value <= dim.high
    return dim.low <= value <= dim.high


def _show(value: Any) -> str:
    """A value as a study file writes it: "sgd", true, 0.5."""
    return json.dumps(value)


def _describe(dim: Dimension) -> str:
    if isinstance(dim, Choice):
        return "its choices: " + ", ".join(map(_show, dim.values))
    form = "int" if isinstance(dim, IntRange) else "float"
    step = f" step {dim.step:g}" if dim.step not in (None, 1) else ""
    return f"its range: {form} [{dim.low:g}, {dim.high:g}]{step}"


@dataclass(frozen=True)
class Space:
    """The parsed [space] table: one dimension per parameter, parents before the parameters
    whose `when` names them and `layers` before per-layer ones (the order trials draw them in).

    `when[name]`: parent → the values for which `name` exists; `per_layer`: the names drawn
    once per layer, as name_1 … name_L."""

    dims: Mapping[str, Dimension]
    when: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    per_layer: frozenset[str] = frozenset()

    def active(self, name: str, params: Mapping[str, Any]) -> bool:
        """Whether parameter `name` exists in a trial whose parents drew `params`."""
        return all(
            parent in params and any(_same(params[parent], v) for v in values)
            for parent, values in self.when.get(name, {}).items()
        )

    def keys(self, name: str, params: Mapping[str, Any]) -> list[str]:
        """The trial parameters dimension `name` gives where its parents drew `params`: none
        where its condition is false, name_1 … name_L for a per-layer one, else name."""
        if not self.active(name, params):
            return []
        if name not in self.per_layer:
            return [name]
        layers = params.get(LAYERS, 0)
        count = layers if isinstance(layers, int) and not isinstance(layers, bool) else 0
        return [f"{name}_{i}" for i in range(1, count + 1)]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw a trial's parameters, define-by-run: an inactive one is never suggested, so it
        is absent from trial.params and TPE models it as absent, not as a dummy value."""
        params: dict[str, Any] = {}
        for name, dim in self.dims.items():
            for key in self.keys(name, params):
                params[key] = dim.suggest(trial, key)
        return params

    def searched(self) -> list[str]:
        """The [space] entries the search varies, in sampling order: a per-layer one by its
        own name (units, whose trials hold units_1 … units_L), a conditional one even though
        some trials lack it (hpo.results.summary.param_columns spreads them over trials)."""
        return [name for name, dim in self.dims.items() if dim.searched]

    def outside(self, name: str, value: Any) -> str | None:
        """Why `value` is not one a trial may draw for dimension `name`, or None: for a value
        given by hand ([[enqueue]]) or read from another study (a warm start)."""
        dim = self.dims[name]
        return None if _inside(dim, value) else f"{_show(value)} lies outside {_describe(dim)}"

    def admits(self, params: Mapping[str, Any]) -> str | None:
        """Why a stored trial's parameters do not fit this space, or None when they do. Each
        parameter the trial's own values make active must be there and inside its dimension;
        a parameter this space does not give is ignored (as a name it does not know)."""
        for name, dim in self.dims.items():
            for key in self.keys(name, params):
                if key not in params:
                    return f"parameter {key} is missing"
                if not _inside(dim, params[key]):
                    return f"{key}={params[key]!r} lies outside the study file's space"
        return None


def _fail(source: str, key: str, why: str) -> HpoError:
    return HpoError(f"{source}: space.{key}: {why}")


def _check_value(source: str, key: str, rule: ParamRule, value: Any, allowed: Callable) -> None:
    problem = allowed(value) or rule.check(value)
    if problem:
        raise _fail(source, key, problem)


def _bound_check(rule: ParamRule, form: str) -> ParamRule:
    """A custom parameter's range bounds: integers for int = [...], numbers for float."""
    if rule.kind != "any":
        return rule
    return ParamRule(
        form, _int_at_least(-math.inf) if form == "int" else _float_at_least(-math.inf)
    )


def _parse_range(source: str, key: str, rule: ParamRule, entry: dict, allowed: Callable):
    form = "int" if "int" in entry else "float"
    bounds = entry[form]
    extra = set(entry) - {form, "log", "step"}
    if extra:
        allowed_options = f"{form}, log, step, when, per_layer"
        raise _fail(
            source, key, f"unknown option {sorted(extra)[0]!r} (allowed: {allowed_options})"
        )
    if rule.kind == "str":
        raise _fail(source, key, "takes names, not a numeric range; use choices = [...]")
    if rule.kind == "bool":
        raise _fail(source, key, "takes true or false, not a range; use choices = [false, true]")
    if rule.kind == "int" and form == "float":
        raise _fail(source, key, "is an integer parameter; use int = [low, high]")
    if not (isinstance(bounds, list) and len(bounds) == 2):
        raise _fail(source, key, f"{form} must be [low, high], got {bounds!r}")
    low, high = bounds
    for bound in bounds:
        _check_value(source, key, _bound_check(rule, form), bound, allowed)
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


def _parse_entry(
    source: str, key: str, entry: Any, rule: ParamRule, allowed: Callable
) -> tuple[Dimension, Any, bool]:
    """One [space] entry → (its dimension, its raw `when` or None, whether it is per-layer)."""
    if not isinstance(entry, dict):
        _check_value(source, key, rule, entry, allowed)
        return Choice((entry,)), None, False
    layered = entry.get("per_layer", False)
    if not isinstance(layered, bool):
        raise _fail(source, key, f"per_layer must be true or false, got {layered!r}")
    when = entry.get("when")
    entry = {
        option: value for option, value in entry.items() if option not in ("when", "per_layer")
    }
    forms = [form for form in ("choices", "int", "float") if form in entry]
    if len(forms) != 1:
        forms_text = "choices = [...], int = [lo, hi], float = [lo, hi]"
        raise _fail(source, key, f"give exactly one of {forms_text}")
    if forms[0] != "choices":
        return _parse_range(source, key, rule, entry, allowed), when, layered
    values = entry["choices"]
    if set(entry) != {"choices"}:
        option = sorted(set(entry) - {"choices"})[0]
        raise _fail(source, key, f"unknown option {option!r} (allowed: choices, when, per_layer)")
    if not isinstance(values, list) or not values:
        raise _fail(source, key, "choices must be a non-empty list")
    if len(set(map(repr, values))) != len(values):
        raise _fail(source, key, f"choices repeat a value: {values!r}")
    for value in values:
        _check_value(source, key, rule, value, allowed)
    return Choice(tuple(values)), when, layered


def _check_per_layer(
    source: str, dims: Mapping[str, Dimension], per_layer: set[str], custom: bool
) -> None:
    for name in per_layer:
        if name == LAYERS or name in TRAINING:
            raise _fail(source, name, f"per_layer: {name} is one value a trial, not one a layer")
        if not custom and name != "units":
            raise _fail(
                source,
                name,
                "per_layer: hpo's Dense stack takes per-layer units only "
                "(a [model] build function may make any parameter per-layer)",
            )
        if LAYERS not in dims:
            raise _fail(
                source,
                name,
                f"per_layer needs layers in [space]: it gives {name}_1 … {name}_L, "
                "L the trial's layers",
            )
        for other in dims:
            if re.fullmatch(rf"{re.escape(name)}_\d+", other):
                raise _fail(source, other, f"clashes with per-layer {name} ({name}_1, {name}_2 …)")


def _check_conditions(
    source: str,
    dims: Mapping[str, Dimension],
    raw: Mapping[str, Any],
    per_layer: set[str],
    custom: bool,
) -> dict[str, dict[str, tuple[Any, ...]]]:
    """`when` tables → parent → the values it must take; one line for each bad one."""
    when: dict[str, dict[str, tuple[Any, ...]]] = {}
    for name, conditions in raw.items():
        if name in TRAINING:
            raise _fail(
                source, name, f"when: hpo trains every trial with {name}; it cannot be absent"
            )
        if not custom and name not in OPTIONAL:
            raise _fail(
                source,
                name,
                f"when: hpo's Dense stack needs {name} in every trial; only "
                f"{' and '.join(OPTIONAL)} may have a condition "
                "(a [model] build function may condition any parameter)",
            )
        if not isinstance(conditions, dict) or not conditions:
            raise _fail(
                source,
                name,
                'when must be a table of parameter = value(s), e.g. { optimizer = "sgd" }',
            )
        when[name] = {}
        for parent, values in conditions.items():
            where = f"when.{parent}"
            if parent not in dims:
                raise _fail(source, name, f"{where}: {parent} is not a parameter of this space")
            if parent in per_layer:
                raise _fail(
                    source, name, f"{where}: {parent} is per-layer; a condition needs one value"
                )
            values = values if isinstance(values, list) else [values]
            if not values:
                raise _fail(source, name, f"{where}: give a value or a non-empty list of values")
            for value in values:
                problem = _scalar(value)
                if problem:
                    raise _fail(source, name, f"{where}: {problem}")
                if not _inside(dims[parent], value):
                    raise _fail(
                        source,
                        name,
                        f"{where}: {parent} never takes {_show(value)} in this space "
                        f"({_describe(dims[parent])})",
                    )
            when[name][parent] = tuple(values)
    return when


def _order(
    source: str, names: list[str], when: Mapping[str, Mapping], per_layer: set[str]
) -> list[str]:
    """`names` with each parent before its children, otherwise as given; a cycle is one line."""
    parents = {n: set(when.get(n, {})) | ({LAYERS} if n in per_layer else set()) for n in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise _fail(source, *_cycle(names, ordered, parents))
        ordered.append(ready[0])
    return ordered


def _cycle(names: list[str], ordered: list[str], parents: Mapping[str, set[str]]) -> tuple:
    """(first name, why) for the parameters left unordered: each waits on another of them."""
    path = [next(n for n in names if n not in ordered)]
    while True:
        parent = sorted(parents[path[-1]] - set(ordered))[0]
        if parent in path:
            loop = [*path[path.index(parent) :], parent]
            return loop[0], "when: the conditions form a cycle (" + " → ".join(loop) + ")"
        path.append(parent)


def parse_space(
    table: Any,
    task: str,
    source: str,
    defaults: Mapping[str, Any] | None = None,
    custom: bool = False,
) -> Space:
    """Validate a [space] table for `task`; `source` names the file in error messages.
    Parameters the table leaves out take `defaults` (entries as [space] writes them: a
    dataset's `book_config`, or `table_space`), else `book_config(None, task)`.

    `custom`: the study builds its model with its own function ([model]), so [space] may name
    any parameter, of any value kind; of hpo's eight, only the training ones (TRAINING) are
    then given where the table leaves them out."""
    if not isinstance(table, dict):
        raise HpoError(f"{source}: [space] must be a table of parameters")
    for name in table:
        if custom and not name.isidentifier():
            raise _fail(source, name, "a parameter's name must be a Python identifier")
        if not custom and name not in RULES:
            raise _fail(
                source,
                name,
                f"unknown parameter (known: {', '.join(RULES)}; "
                "a [model] build function may take any)",
            )
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
    names = [n for n in PARAMS if not custom or n in TRAINING or n in table]
    names += [n for n in table if n not in names]
    dims: dict[str, Dimension] = {}
    raw_when: dict[str, Any] = {}
    per_layer: set[str] = set()
    for name in names:
        entry = table[name] if name in table else fallback[name]
        dim, when, layered = _parse_entry(
            source, name, entry, RULES.get(name, CUSTOM), allowed(name)
        )
        dims[name] = dim
        if when is not None:
            raw_when[name] = when
        if layered:
            per_layer.add(name)
    _check_per_layer(source, dims, per_layer, custom)
    when = _check_conditions(source, dims, raw_when, per_layer, custom)
    order = _order(source, names, when, per_layer)
    return Space({n: dims[n] for n in order}, when, frozenset(per_layer))
