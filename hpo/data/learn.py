"""Learning a user's file: read it, check every column, split off the test rows, learn the
preparation on the training rows and apply it to both.

The rows are shuffled once with data.split_seed; the test set is a separate file, the .npz's
test arrays, or a seeded random data.test_fraction of the training file. Returns the arrays,
the Preparation and one-line notes for the user (the task, the test rows, the features).
"""

from __future__ import annotations

import numpy as np

from hpo.data.files import read
from hpo.data.preparation import Preparation, mean_std
from hpo.data.spec import DataSpec
from hpo.data.task import task_and_labels
from hpo.data.values import (
    check_finite,
    check_present,
    distinct,
    format_labels,
    numeric_array,
    some,
    to_float,
)
from hpo.errors import HpoError

Learned = tuple[Preparation, dict[str, np.ndarray], dict, list[str]]


def split_rows(n: int, spec: DataSpec, has_test: bool, source: str):
    """(training row indices, held-out test indices or None): one seeded shuffle."""
    perm = np.random.default_rng(spec.split_seed).permutation(n)
    if has_test:
        return perm, None
    n_test = max(1, int(n * spec.test_fraction + 0.5))
    if n - n_test < 1:
        raise HpoError(
            f"{source}: {n} rows are too few to hold out a test set "
            f"(data.test_fraction = {spec.test_fraction:g})"
        )
    return perm[: n - n_test], perm[n - n_test :]


def learn_table(spec: DataSpec) -> tuple[Preparation, dict[str, np.ndarray], dict, list[str]]:
    import pandas as pd

    name = spec.train.name
    df = read(spec.train, "train")
    columns = list(df.columns)
    if spec.target not in df.columns:
        raise HpoError(
            f"{name}: no target column {spec.target!r} (columns: {some(columns)}); "
            "name it with data.target"
        )
    for key in ("drop", "categorical"):
        absent = [c for c in getattr(spec, key) if c not in df.columns]
        if absent:
            raise HpoError(
                f"{name}: data.{key} names {some([repr(c) for c in absent])}, not a column of "
                f"the file (columns: {some(columns)})"
            )
    test_df = None
    if spec.test is not None:
        test_df = read(spec.test, "test")
        kept = [c for c in columns if c not in spec.drop]
        test_kept = [c for c in test_df.columns if c not in spec.drop]
        missing = [c for c in kept if c not in set(test_kept)]
        extra = [c for c in test_kept if c not in set(kept)]
        if missing or extra:
            parts = ([f"missing {some(missing)}"] if missing else []) + (
                [f"extra {some(extra)}"] if extra else []
            )
            raise HpoError(
                f"{spec.test.name}: its columns differ from {name}'s: {'; '.join(parts)}"
            )
    features = [c for c in columns if c != spec.target and c not in spec.drop]
    if not features:
        raise HpoError(f"{name}: no feature columns left besides the target {spec.target!r}")
    categorical = [
        c for c in features if c in spec.categorical or isinstance(df[c].dtype, pd.CategoricalDtype)
    ]
    numeric = [c for c in features if c not in categorical]

    # Every check on the whole file first, so counts are the file's, not a part's.
    named = [(df, name)] + ([(test_df, spec.test.name)] if test_df is not None else [])
    matrices = {}
    for frame, source in named:
        matrices[source] = (
            np.column_stack([to_float(frame[c], c, source) for c in numeric])
            if numeric
            else np.zeros((len(frame), 0))
        )
        for c in [*categorical, spec.target]:
            check_present(frame[c], c, source)

    train_idx, test_idx = split_rows(len(df), spec, test_df is not None, name)
    train_rows = df.iloc[train_idx]
    test_rows = test_df if test_df is not None else df.iloc[test_idx]
    test_source = spec.test.name if test_df is not None else name

    if spec.standardize and numeric:
        mean, std = mean_std(matrices[name][train_idx])
    else:
        mean, std = np.zeros(len(numeric)), np.ones(len(numeric))
    categories = {c: distinct([train_rows[c].to_numpy()]) for c in categorical}
    y_all = [df[spec.target].to_numpy()]
    if test_df is not None:
        y_all.append(test_df[spec.target].to_numpy())
    task, labels, task_note = task_and_labels(
        spec,
        df[spec.target].to_numpy(),
        train_rows[spec.target].to_numpy(),
        y_all,
        name,
        spec.target,
    )
    n_features = len(numeric) + sum(len(v) for v in categories.values())
    prep = Preparation(
        kind="table",
        task=task,
        target=spec.target,
        columns=features,
        numeric=numeric,
        means=[float(v) for v in mean],
        stds=[float(v) for v in std],
        categories=categories,
        labels=labels,
        feature_shape=[n_features],
        dtype="float32",
        standardize=spec.standardize,
    )
    x_train, _ = prep.transform(train_rows, name)
    x_test, unseen = prep.transform(test_rows, test_source)
    arrays = {
        "x_train": x_train,
        "y_train": prep.encode_labels(train_rows[spec.target], name),
        "x_test": x_test,
        "y_test": prep.encode_labels(test_rows[spec.target], test_source),
    }
    notes = [task_note, _test_note(spec, len(test_rows), test_source, name)]
    notes.append(
        f"features: {len(numeric)} numeric"
        + (", standardized with the training rows' mean and std" if spec.standardize else "")
        + (f"; {len(categorical)} categorical, one-hot" if categorical else "")
        + f" → {n_features} inputs"
    )
    notes += [
        f"{c}: {count} test rows had a value not seen in training (all-zero one-hot)"
        for c, count in unseen.items()
    ]
    notes += _test_only_classes(prep, arrays)
    return prep, arrays, unseen, notes


def _test_note(spec: DataSpec, n_test: int, test_source: str, name: str) -> str:
    if test_source != name:
        return f"test: {test_source}, {n_test} rows"
    return (
        f"test: {spec.test_fraction * 100:g}% of {name} (split_seed {spec.split_seed}), "
        f"{n_test} rows"
    )


def _test_only_classes(prep: Preparation, arrays: dict) -> list[str]:
    if prep.labels is None:
        return []
    trained = np.bincount(arrays["y_train"], minlength=len(prep.labels))
    tested = np.bincount(arrays["y_test"], minlength=len(prep.labels))
    only = np.flatnonzero((trained == 0) & (tested > 0))
    if not len(only):
        return []
    classes = format_labels([prep.labels[i] for i in only])
    return [
        f"{len(only)} class(es) occur only in the test rows ({classes}: "
        f"{int(tested[only].sum())} rows), never in training"
    ]


def _xy(arrays: dict, x_key: str, y_key: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim < 1 or len(x) == 0:
        raise HpoError(f"{source}: array {x_key} holds no samples")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise HpoError(
            f"{source}: array {y_key} must hold one target per sample, has shape {y.shape}"
        )
    if len(x) != len(y):
        raise HpoError(
            f"{source}: {x_key} has {len(x)} samples but {y_key} has {len(y)}; they must match"
        )
    numeric_array(x, x_key, source)
    if y.dtype.kind == "f":
        check_finite(y, y_key, source)
    elif y.dtype.kind not in "biuUS":
        raise HpoError(f"{source}: array {y_key} has dtype {y.dtype}, not numbers or text")
    return x, y


def learn_arrays(spec: DataSpec) -> tuple[Preparation, dict[str, np.ndarray], dict, list[str]]:
    name = spec.train.name
    f = read(spec.train, "train")
    absent = [k for k in ("x_train", "y_train") if k not in f]
    if absent:
        raise HpoError(
            f"{name}: missing array {' and '.join(absent)} (arrays: {some(sorted(f)) or 'none'}; "
            "hpo reads keras' layout: x_train, y_train and optionally x_test, y_test)"
        )
    x_train, y_train = _xy(f, "x_train", "y_train", name)
    if spec.test is not None:
        test_name = spec.test.name
        g = read(spec.test, "test")
        pair = next(
            (
                p
                for p in (("x_test", "y_test"), ("x", "y"), ("x_train", "y_train"))
                if set(p) <= set(g)
            ),
            None,
        )
        if pair is None:
            raise HpoError(
                f"{test_name}: missing arrays x_test and y_test (arrays: {some(sorted(g))})"
            )
        x_test, y_test = _xy(g, *pair, test_name)
    elif "x_test" in f or "y_test" in f:
        if not ("x_test" in f and "y_test" in f):
            raise HpoError(f"{name}: has only one of x_test and y_test; give both or neither")
        test_name = f"x_test/y_test of {name}"
        x_test, y_test = _xy(f, "x_test", "y_test", name)
    else:
        test_name = name
        x_test = y_test = None
    if x_test is not None and x_test.shape[1:] != x_train.shape[1:]:
        raise HpoError(
            f"{test_name}: test samples have shape {x_test.shape[1:]}, training samples "
            f"{x_train.shape[1:]}"
        )
    train_idx, test_idx = split_rows(len(x_train), spec, x_test is not None, name)
    y_file = y_train
    if x_test is None:
        x_test, y_test = x_train[test_idx], y_train[test_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]
    flat = x_train.reshape(len(x_train), -1)
    if spec.standardize:
        mean, std = mean_std(flat)
        means, stds, dtype = [float(v) for v in mean], [float(v) for v in std], "float32"
    else:
        compact = x_train.dtype == np.bool_ or x_train.dtype == np.uint8
        means, stds, dtype = [], [], "uint8" if compact else "float32"
    task, labels, task_note = task_and_labels(
        spec, y_file, y_train, [y_train, y_test], name, "y_train"
    )
    prep = Preparation(
        kind="arrays",
        task=task,
        target="y",
        columns=[],
        numeric=[],
        means=means,
        stds=stds,
        categories={},
        labels=labels,
        feature_shape=[flat.shape[1]],
        dtype=dtype,
        standardize=spec.standardize,
        input_shape=list(x_train.shape[1:]),
    )
    arrays = {
        "x_train": prep.transform(x_train, name)[0],
        "y_train": prep.encode_labels(y_train, name),
        "x_test": prep.transform(x_test, test_name)[0],
        "y_test": prep.encode_labels(y_test, test_name),
    }
    notes = [task_note, _test_note(spec, len(x_test), test_name, name)]
    if list(x_train.shape[1:]) != prep.feature_shape:
        notes.append(f"x: samples of shape {tuple(x_train.shape[1:])} flattened to {flat.shape[1]}")
    notes += _test_only_classes(prep, arrays)
    return prep, arrays, {}, notes
