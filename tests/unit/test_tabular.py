"""Users' own data ([data] in a study file): parsing, reading, preparing, every bad input."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpo.data import files
from hpo.data import own as own_data
from hpo.data.preparation import Preparation
from hpo.data.spec import DataSpec, parse_table
from hpo.errors import HpoError


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Files in tmp_path, the cache inside it, nothing remembered from another test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    own_data.clear_caches()
    yield tmp_path
    own_data.clear_caches()


def houses(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "rooms": rng.integers(1, 6, n),
            "area": rng.normal(80, 20, n).round(2),
            "city": rng.choice(["Paris", "Lyon", "Nice"], n),
            "garden": rng.random(n) > 0.5,
            "id": np.arange(n),
            "target": rng.choice(["no", "yes"], n),
        }
    )


def write(df: pd.DataFrame, name: str) -> Path:
    path = Path.cwd() / name
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def spec(**table) -> DataSpec:
    return parse_table(table, "study.toml", Path.cwd())


def fails(match: str, **table) -> None:
    with pytest.raises(HpoError, match=match) as info:
        own_data.load(spec(**table))
    assert "\n" not in str(info.value)


# --- parse_table ---------------------------------------------------------------------------


def test_parse_table_defaults_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = parse_table({"train": "data/train.csv"}, "s.toml", tmp_path / "studies")
    assert s.train == tmp_path / "studies" / "data" / "train.csv" and s.train.is_absolute()
    assert (s.test, s.target, s.drop, s.categorical) == (None, "target", (), ())
    assert (s.test_fraction, s.split_seed, s.standardize, s.task) == (0.2, 0, True, None)
    s = parse_table(
        {"train": "~/a.parquet", "test": "/abs/b.csv", "drop": ["id"], "categorical": ["c"]},
        "s.toml",
        tmp_path,
    )
    assert s.train == tmp_path / "a.parquet" and s.test == Path("/abs/b.csv")
    record = s.record()
    assert json.loads(json.dumps(record)) == record and record["drop"] == ["id"]
    assert record["train"] == str(tmp_path / "a.parquet")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, r"s\.toml: data\.train: missing"),
        ({"train": "a.csv", "colour": 1}, r"data\.colour: unknown key \(allowed: categorical,"),
        ({"train": 3}, r"data\.train: must be a file path, got 3"),
        ({"train": "a.xlsx"}, r"data\.train: a\.xlsx: unknown file type \.xlsx"),
        ({"train": "a.csv", "test": "b.npz"}, r"data\.test: b\.npz is not the same kind"),
        ({"train": "a.csv", "test": "b.csv", "test_fraction": 0.3}, r"data\.test_fraction: not"),
        ({"train": "a.csv", "test_fraction": 0}, r"data\.test_fraction: must be a number betw"),
        ({"train": "a.csv", "test_fraction": 1.0}, r"data\.test_fraction: must be a number"),
        ({"train": "a.csv", "test_fraction": True}, r"data\.test_fraction: must be a number"),
        ({"train": "a.csv", "split_seed": 1.5}, r"data\.split_seed: must be an integer"),
        ({"train": "a.csv", "split_seed": -1}, r"data\.split_seed: must be an integer ≥ 0"),
        ({"train": "a.csv", "standardize": "yes"}, r"data\.standardize: must be true or false"),
        ({"train": "a.csv", "target": ""}, r"data\.target: must be a column name"),
        ({"train": "a.csv", "drop": "id"}, r"data\.drop: must be a list of column names"),
        ({"train": "a.csv", "drop": ["id", "id"]}, r"data\.drop: names 'id' twice"),
        ({"train": "a.csv", "drop": ["target"]}, r"data\.drop: names the target column"),
        ({"train": "a.csv", "categorical": [1]}, r"data\.categorical: must be a list"),
        ({"train": "a.csv", "drop": ["c"], "categorical": ["c"]}, r"'c' is also in data\.drop"),
        ({"train": "a.npz", "drop": ["c"]}, r"data\.drop: only for tables"),
    ],
)
def test_parse_table_refuses(table, message):
    with pytest.raises(HpoError, match=message) as info:
        parse_table(table, "s.toml", Path("/base"))
    assert str(info.value).startswith("s.toml: ") and "\n" not in str(info.value)


# --- tables: the preparation ---------------------------------------------------------------


def test_table_prepared_as_the_book_does():
    write(houses(), "train.csv")
    own = own_data.load(spec(train="train.csv", drop=["id"], categorical=["city"]))
    prep = own.preparation
    assert (prep.kind, prep.task, prep.labels, prep.n_outputs) == (
        "table",
        "binary",
        ["no", "yes"],
        1,
    )
    assert prep.columns == ["rooms", "area", "city", "garden"]
    assert prep.numeric == ["rooms", "area", "garden"]  # bool is numeric 0/1
    assert prep.categories == {"city": ["Lyon", "Nice", "Paris"]}  # sorted
    assert prep.n_features == 6 and prep.feature_shape == [6]
    assert own.x_train.shape == (32, 6) and own.x_test.shape == (8, 6)
    assert own.x_train.dtype == np.float32 and own.y_train.dtype == np.int64
    np.testing.assert_allclose(own.x_train[:, :3].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(own.x_train[:, :3].std(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(own.x_train[:, 3:].sum(axis=1), 1)  # one-hot
    assert own.notes[0].startswith("task inferred: binary (2 classes: 'no', 'yes')")
    assert 'set task = "multiclass" in [study]' in own.notes[0]
    assert own.notes[1] == "test: 20% of train.csv (split_seed 0), 8 rows"


def test_standardized_with_the_training_rows_only():
    train = houses(30)
    test = houses(30, seed=1)
    test["area"] = test["area"] * 100 + 5000  # a very different test set
    write(train, "train.csv")
    write(test, "test.csv")
    own = own_data.load(spec(train="train.csv", test="test.csv", drop=["id"], categorical=["city"]))
    prep = own.preparation
    assert prep.means[1] == pytest.approx(train["area"].mean())
    assert prep.stds[1] == pytest.approx(train["area"].std(ddof=0))
    expected = (test["area"] - train["area"].mean()) / train["area"].std(ddof=0)
    np.testing.assert_allclose(own.x_test[:, 1], expected, rtol=1e-5)
    assert own.notes[1] == "test: test.csv, 30 rows"


def test_constant_column_has_std_one_and_standardize_false_keeps_values():
    df = houses(20).assign(const=7.0)
    write(df, "train.csv")
    own = own_data.load(spec(train="train.csv", drop=["id", "city"]))
    i = own.preparation.numeric.index("const")
    assert own.preparation.stds[i] == 1.0 and np.all(own.x_train[:, i] == 0)
    raw = own_data.load(spec(train="train.csv", drop=["id", "city"], standardize=False))
    assert np.all(raw.x_train[:, i] == 7.0) and set(raw.x_train[:, 0]) <= {1, 2, 3, 4, 5}


def test_unseen_test_category_is_an_all_zero_row_counted_not_an_error():
    train, test = houses(20), houses(10, seed=2)
    test.loc[[0, 3, 5], "city"] = "Berlin"
    write(train, "train.csv")
    write(test, "test.csv")
    own = own_data.load(spec(train="train.csv", test="test.csv", drop=["id"], categorical=["city"]))
    assert own.unseen == {"city": 3}
    np.testing.assert_array_equal(own.x_test[[0, 3, 5], 3:], 0)
    assert own.x_test[1, 3:].sum() == 1
    assert "city: 3 test rows had a value not seen in training (all-zero one-hot)" in own.notes


def test_integer_categories_and_category_dtype_from_parquet():
    df = houses(24).drop(columns="city")
    df["zone"] = np.tile([10, 2, 33], 8)
    df["kind"] = pd.Categorical(np.tile(["b", "a"], 12))
    write(df, "train.parquet")
    prep = own_data.load(spec(train="train.parquet", categorical=["zone"], drop=["id"])).preparation
    assert prep.categories == {"zone": [2, 10, 33], "kind": ["a", "b"]}
    assert json.loads(json.dumps(prep.to_dict()))["categories"]["zone"] == [2, 10, 33]


def test_text_column_of_numbers_is_converted():
    df = houses(20).drop(columns="city")
    df["price"] = [str(v) for v in np.linspace(1.5, 9, 20)]
    write(df, "train.parquet")  # parquet keeps it as text
    own = own_data.load(spec(train="train.parquet", drop=["id"], standardize=False))
    i = own.preparation.numeric.index("price")
    assert sorted(np.r_[own.x_train[:, i], own.x_test[:, i]]) == pytest.approx(
        np.linspace(1.5, 9, 20)
    )


def test_rows_are_shuffled_once_with_the_seed():
    df = houses(40).sort_values("target")  # sorted by class, as files often are
    write(df, "train.csv")
    a = own_data.load(spec(train="train.csv", drop=["city"]))
    b = own_data.load(spec(train="train.csv", drop=["city"], split_seed=1))
    ids = a.x_train[:, a.preparation.numeric.index("id")]
    assert not np.all(np.diff(a.y_train) >= 0)  # not sorted by class any more
    assert set(a.y_test) == {0, 1}
    assert not np.array_equal(a.x_train, b.x_train) and len(set(ids)) == 32
    again = own_data.load(spec(train="train.csv", drop=["city"]))
    np.testing.assert_array_equal(again.x_train, a.x_train)


def test_transform_of_the_training_rows_reproduces_x_train():
    df = houses(30)
    write(df, "train.csv")
    write(houses(10, seed=3), "test.csv")
    own = own_data.load(spec(train="train.csv", test="test.csv", drop=["id"], categorical=["city"]))
    rows, x, unseen = own_data.read_rows(Path("train.csv"), own.preparation)
    perm = np.random.default_rng(0).permutation(30)  # the shuffle: split_seed 0
    np.testing.assert_array_equal(x[perm], own.x_train)
    np.testing.assert_array_equal(own.preparation.encode_labels(rows["target"])[perm], own.y_train)
    assert unseen == {} and list(rows.columns) == list(df.columns)


def test_preparation_round_trips_through_json():
    write(houses(30), "train.csv")
    own = own_data.load(spec(train="train.csv", drop=["id"], categorical=["city"]))
    text = json.dumps(own.preparation.to_dict())
    back = Preparation.from_dict(json.loads(text))
    assert back == own.preparation
    new = houses(7, seed=9)
    np.testing.assert_array_equal(back.transform(new)[0], own.preparation.transform(new)[0])
    with pytest.raises(HpoError, match="not a saved data preparation"):
        Preparation.from_dict({"kind": "table"})


def test_transform_checks_new_rows():
    write(houses(30), "train.csv")
    prep = own_data.load(spec(train="train.csv", drop=["id"], categorical=["city"])).preparation
    new = houses(5, seed=4).drop(columns=["id", "target"]).assign(extra=1)  # extra: ignored
    x, unseen = prep.transform(new, "new.csv")
    assert x.shape == (5, 6) and unseen == {}
    with pytest.raises(HpoError, match=r"^new\.csv is missing columns: rooms, city$"):
        prep.transform(new.drop(columns=["rooms", "city"]), "new.csv")
    with pytest.raises(HpoError, match=r"^the rows are missing columns: garden$"):
        prep.transform(new.drop(columns=["garden"]))
    with pytest.raises(HpoError, match=r"^rows: expected a table \(DataFrame\) of rows"):
        prep.transform(np.zeros((2, 4)))
    new.loc[[1, 2], "area"] = np.nan
    with pytest.raises(HpoError, match=r"new\.csv: column 'area' has 2 missing \(NaN\) values"):
        prep.transform(new, "new.csv")


def test_labels_mapped_in_sorted_order_and_decoded():
    df = houses(30).assign(target=np.tile([2, 1], 15))
    write(df, "train.csv")
    prep = own_data.load(spec(train="train.csv", drop=["city"])).preparation
    assert prep.task == "binary" and prep.labels == [1, 2]  # labels[1] is the positive class
    np.testing.assert_array_equal(prep.encode_labels([1, 2, 2.0]), [0, 1, 1])
    np.testing.assert_array_equal(prep.decode_labels(np.array([1, 0])), [2, 1])
    with pytest.raises(HpoError, match=r"1 rows have a class that is not one of the training"):
        prep.encode_labels([1, 3])


def test_a_class_only_in_the_test_file_is_an_output_and_a_note():
    write(houses(30), "train.csv")
    write(houses(10, seed=1).assign(target=["maybe"] * 2 + ["no"] * 8), "test.csv")
    own = own_data.load(spec(train="train.csv", test="test.csv", categorical=["city"]))
    assert own.preparation.task == "multiclass" and own.preparation.labels == ["maybe", "no", "yes"]
    note = "1 class(es) occur only in the test rows ('maybe': 2 rows), never in training"
    assert note in own.notes
    assert set(own.y_train) == {1, 2} and list(own.y_test[:2]) == [0, 0]


# --- the task ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "task", "labels"),
    [
        (np.tile(["no", "yes"], 15), "binary", ["no", "yes"]),
        (np.tile(["a", "b", "c"], 10), "multiclass", ["a", "b", "c"]),
        (np.tile([True, False], 15), "binary", [False, True]),
        (np.tile([0, 1, 2, 3], 8)[:30], "multiclass", [0, 1, 2, 3]),
        (np.tile([1.0, 2.0], 15), "binary", [1, 2]),
        (np.linspace(0, 3, 30), "regression", None),
        (np.arange(30) * 3, "regression", None),  # whole numbers, more than 20 distinct
    ],
)
def test_task_inferred_from_the_target(target, task, labels):
    write(houses(30).assign(target=target), "train.csv")
    s = spec(train="train.csv", drop=["city"])
    assert own_data.infer_task(s) == task
    own = own_data.load(s)
    assert own.preparation.labels == labels
    assert own.notes[0].startswith(f"task inferred: {task}")
    expected = np.float32 if task == "regression" else np.int64
    assert own.y_train.dtype == expected and own.preparation.n_outputs == (
        len(labels) if task == "multiclass" else 1
    )
    if task == "regression":  # whole numbers might be classes; fractions cannot
        fractional = not np.allclose(target, np.round(target))
        assert ('set task = "multiclass"' in own.notes[0]) != fractional


def test_stated_task_checked_and_shared_with_inference():
    write(houses(30), "train.csv")
    s = spec(train="train.csv", drop=["city"])
    read = files.stats["files_read"]
    own_data.load(s)
    stated = own_data.load(dataclasses.replace(s, task="binary"))
    assert stated.notes[0] == "task: binary (2 classes: 'no', 'yes') (stated in the study file)"
    assert files.stats["files_read"] == read + 1  # one reading, one preparation
    multi = own_data.load(dataclasses.replace(s, task="multiclass"))  # 2 classes: allowed
    assert multi.preparation.n_outputs == 2 and multi.preparation.task == "multiclass"
    write(houses(30).assign(target=np.tile([1, 2, 3], 10)), "ints.csv")
    reg = own_data.load(
        dataclasses.replace(spec(train="ints.csv", drop=["city"]), task="regression")
    )
    assert reg.y_train.dtype == np.float32 and reg.preparation.labels is None


@pytest.mark.parametrize(
    ("target", "task", "message"),
    [
        (np.tile(["a", "b", "c"], 10), "binary", r"task binary needs 2 classes, the target 'targ"),
        (np.repeat("yes", 30), None, r"train\.csv: the target 'target' has one class \('yes'\)"),
        (np.tile(["a", "b", "c"], 10), "regression", r"the target 'target' is not numeric \(e\.g"),
    ],
)
def test_bad_targets(target, task, message):
    write(houses(30).assign(target=target), "train.csv")
    with pytest.raises(HpoError, match=message):
        own_data.load(dataclasses.replace(spec(train="train.csv", drop=["city"]), task=task))


# --- bad data ------------------------------------------------------------------------------


def nan_in(column: str, rows: list[int]):
    def make():
        df = houses(30)
        df[column] = df[column].astype(object if column in ("city", "target") else float)
        df.loc[rows, column] = np.nan
        return df

    return make


def inf_in_area():
    df = houses(30)
    df.loc[[4], "area"] = np.inf
    return df


def text_in_city():
    return houses(30)


@pytest.mark.parametrize(
    ("make", "table", "message"),
    [
        (nan_in("rooms", [1, 5, 9]), {}, r"^train\.csv: column 'rooms' has 3 missing \(NaN\) valu"),
        (nan_in("city", [2]), {}, r"^train\.csv: column 'city' has 1 missing \(NaN\) values"),
        (nan_in("target", [0, 1]), {}, r"^train\.csv: column 'target' has 2 missing"),
        (inf_in_area, {}, r"^train\.csv: column 'area' has 1 infinite values"),
        (
            text_in_city,
            {"categorical": []},
            r"^train\.csv: column 'city' holds text \(e\.g\. '\w+'\); list it in data\.categorical "
            r"or data\.drop$",
        ),
        (houses, {"target": "price"}, r"^train\.csv: no target column 'price' \(columns: rooms, "),
        (houses, {"drop": ["colour"]}, r"^train\.csv: data\.drop names 'colour', not a column"),
        (houses, {"categorical": ["city", "x"]}, r"^train\.csv: data\.categorical names 'x'"),
    ],
)
def test_bad_training_file(make, table, message):
    write(make(), "train.csv")
    fails(message, **{"train": "train.csv", "categorical": ["city"], **table})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.assign(rooms=np.nan), r"^test\.csv: column 'rooms' has 10 missing \(NaN\)"),
        (lambda df: df.assign(area=np.inf), r"^test\.csv: column 'area' has 10 infinite values"),
        (lambda df: df.assign(target=None), r"^test\.csv: column 'target' has 10 missing"),
        (lambda df: df.drop(columns=["rooms"]), r"^test\.csv: its columns differ from train\.csv"),
        (
            lambda df: df.drop(columns=["area"]).assign(floor=1),
            r"columns differ from train\.csv's: missing area; extra floor$",
        ),
        (lambda df: df.drop(columns=["id"]), None),  # a dropped column may be absent
    ],
)
def test_bad_test_file(change, message):
    write(houses(30), "train.csv")
    write(change(houses(10, seed=5)), "test.csv")
    table = {"train": "train.csv", "test": "test.csv", "categorical": ["city"], "drop": ["id"]}
    if message is None:
        assert len(own_data.load(spec(**table)).x_test) == 10
    else:
        fails(message, **table)


def test_missing_file_and_unknown_extension(tmp_path):
    fails(rf"^data\.train: {tmp_path}/nope\.csv: no such file$", train="nope.csv")
    write(houses(), "train.csv")
    fails(r"^data\.test: .*/nope\.csv: no such file$", train="train.csv", test="nope.csv")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(HpoError, match=r"^data\.train: data\.xlsx: unknown file type \.xlsx"):
        own_data.load(DataSpec(train=tmp_path / "data.xlsx"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("train.csv", b"", r"^train\.csv: empty file"),
        ("train.csv", b"a,b,target\n", r"^train\.csv: no rows \(only the header\)$"),
        ("train.csv", b"a,b\n\xff\xfe\x00,1\n", r"^train\.csv: not UTF-8 text"),
        ("train.parquet", b"not parquet at all", r"^train\.parquet: not a readable parquet file"),
        ("train.npz", b"not a zip", r"^train\.npz: not a readable \.npz file"),
        ("train.npz", b"PK\x03\x04broken", r"^train\.npz: not a readable \.npz file"),
    ],
)
def test_unreadable_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    fails(message, train=name)


def test_a_column_named_twice_is_refused(tmp_path):
    """pandas would rename the second `area` to `area.1` and hpo would train on it."""
    (tmp_path / "train.csv").write_text("area,rooms,area,target\n" + "1,2,3,0\n4,5,6,1\n" * 10)
    fails(
        r"^train\.csv: the header names column 'area' twice; rename or remove one$",
        train="train.csv",
    )
    # A column that is really called `area.1` is no copy of anything.
    (tmp_path / "ok.csv").write_text("area,rooms,area.1,target\n" + "1,2,3,0\n4,5,6,1\n" * 10)
    assert own_data.load(spec(train="ok.csv")).preparation.numeric == ["area", "rooms", "area.1"]


def test_parquet_without_pyarrow(monkeypatch):
    write(houses(), "train.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "fastparquet", None)
    fails(r"^reading \.parquet needs pyarrow: pip install pyarrow$", train="train.parquet")


def test_too_few_rows():
    write(houses(5), "train.csv")
    s = spec(train="train.csv", categorical=["city"])
    message = r"^train\.csv: 4 training rows, validation kfold:4 needs at least 8$"
    with pytest.raises(HpoError, match=message):
        own_data.load(s, min_train_rows=8, why="validation kfold:4")
    with pytest.raises(HpoError, match=message):
        own_data.load(s, min_train_rows=8, why="validation kfold:4 needs at least 8")
    with pytest.raises(HpoError, match=r"^train\.csv: 4 training rows, hpo needs at least 5$"):
        own_data.load(s, min_train_rows=5)
    assert len(own_data.load(s, min_train_rows=4).x_train) == 4
    write(houses(1), "one.csv")
    fails(r"^one\.csv: 1 rows are too few to hold out a test set", train="one.csv", drop=["city"])


# --- .npz ----------------------------------------------------------------------------------


def images(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 4, 3)).astype(np.uint8), rng.integers(0, 3, n)


def test_npz_keras_layout_standardized_per_feature():
    x, y = images(40)
    xt, yt = images(10, seed=1)
    np.savez("train.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    own = own_data.load(spec(train="train.npz"))
    prep = own.preparation
    assert (prep.kind, prep.task, prep.labels, prep.dtype) == (
        "arrays",
        "multiclass",
        [0, 1, 2],
        "float32",
    )
    assert prep.feature_shape == [12] and prep.input_shape == [4, 3] and len(prep.means) == 12
    assert own.x_train.shape == (40, 12) and own.x_test.shape == (10, 12)
    flat = x.reshape(40, -1).astype(np.float64)
    np.testing.assert_allclose(prep.means, flat.mean(axis=0))  # the training arrays only
    expected = (xt.reshape(10, -1) - flat.mean(axis=0)) / flat.std(axis=0)
    np.testing.assert_allclose(own.x_test, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(own.y_test, yt)  # the test arrays keep their order
    perm = np.random.default_rng(0).permutation(40)
    np.testing.assert_array_equal(own.y_train, y[perm])
    assert own.notes[1] == "test: x_test/y_test of train.npz, 10 rows"
    np.savez("new.npz", x=xt)
    _, again, _ = own_data.read_rows(Path("new.npz"), Preparation.from_dict(prep.to_dict()))
    np.testing.assert_array_equal(again, own.x_test)


def test_npz_unstandardized_keeps_uint8_and_splits_without_test_arrays():
    x, y = images(40)
    np.savez("train.npz", x_train=x, y_train=y)
    own = own_data.load(spec(train="train.npz", standardize=False, test_fraction=0.25))
    assert own.x_train.dtype == np.uint8 and own.preparation.dtype == "uint8"
    assert own.x_train.shape == (30, 12) and own.x_test.shape == (10, 12)
    assert own.notes[1] == "test: 25% of train.npz (split_seed 0), 10 rows"
    np.savez("f.npz", x_train=x.astype(np.float64) / 255, y_train=y + 0.5)
    f = own_data.load(spec(train="f.npz", standardize=False))
    assert f.x_train.dtype == np.float32 and f.preparation.task == "regression"


def test_npz_separate_test_file():
    x, y = images(30)
    xt, yt = images(10, seed=1)
    np.savez("train.npz", x_train=x, y_train=y)
    np.savez("test.npz", x_test=xt, y_test=yt)
    own = own_data.load(spec(train="train.npz", test="test.npz"))
    assert own.x_test.shape == (10, 12) and own.notes[1] == "test: test.npz, 10 rows"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, r"^train\.npz: missing array x_train and y_t"),
        ({"x_train": np.zeros((4, 2))}, r"^train\.npz: missing array y_train \(arrays: x_train;"),
        (
            {"x_train": np.zeros((4, 2)), "y_train": np.zeros(3)},
            r"^train\.npz: x_train has 4 samples but y_train has 3; they must match$",
        ),
        (
            {"x_train": np.r_[[[np.nan, 1]] * 4], "y_train": np.arange(4)},
            r"^train\.npz: array x_train has 4 missing \(NaN\) values",
        ),
        (
            {"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((2, 2))},
            r"has only one of x_test and y_test",
        ),
        (
            {
                "x_train": np.zeros((4, 2)),
                "y_train": np.arange(4),
                "x_test": np.zeros((2, 3)),
                "y_test": np.arange(2),
            },
            r"test samples have shape \(3,\), training samples \(2,\)",
        ),
        (
            {"x_train": np.array(["a", "b", "c", "d"]), "y_train": np.arange(4)},
            r"array x_train is not numeric",
        ),
        ({"x_train": np.zeros((0, 2)), "y_train": np.zeros(0)}, r"array x_train holds no samples"),
    ],
)
def test_bad_npz(arrays, message):
    np.savez("train.npz", **arrays)
    fails(message, train="train.npz")


def test_npz_with_python_objects_is_refused():
    ragged = np.empty(4, dtype=object)
    ragged[:] = [[1], [1, 2], [3], [4, 5]]
    np.savez("train.npz", x_train=ragged, y_train=np.arange(4))
    fails(r"^train\.npz: holds Python objects", train="train.npz")


# --- the caches ----------------------------------------------------------------------------


def test_cached_in_memory_then_on_disk(tmp_path, monkeypatch):
    write(houses(30), "train.csv")
    s = spec(train="train.csv", categorical=["city"])
    before = dict(own_data.stats)
    first = own_data.load(s)
    assert own_data.load(s) is first and own_data.stats["memory_hits"] == before["memory_hits"] + 1
    folders = list((tmp_path / "cache").glob("own-*"))
    assert len(folders) == 1 and (folders[0] / "preparation.json").is_file()

    own_data.clear_caches()  # as a new worker process would start

    def no_reading(*args, **kwargs):
        raise AssertionError("read the CSV again")

    with monkeypatch.context() as patch:
        patch.setattr(pd, "read_csv", no_reading)
        again = own_data.load(s)
        assert own_data.infer_task(s) == "binary"
    assert own_data.stats["disk_hits"] == before["disk_hits"] + 1
    assert again.preparation == first.preparation and again.notes == first.notes
    np.testing.assert_array_equal(again.x_train, first.x_train)
    np.testing.assert_array_equal(again.y_test, first.y_test)

    write(houses(31), "train.csv")  # a changed file is prepared again
    assert len(own_data.load(s).x_train) + len(own_data.load(s).x_test) == 31


def test_stated_classification_of_fractional_numbers_is_refused():
    write(houses(30).assign(target=np.linspace(0, 3, 30)), "train.csv")
    s = dataclasses.replace(spec(train="train.csv", drop=["city"]), task="multiclass")
    with pytest.raises(HpoError, match='fractional numbers; use task = "regression"'):
        own_data.load(s)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"scale": 0.5}, "only with standardize = false"),
        ({"scale": -1, "standardize": False}, "must be a positive number"),
        ({"scale": "1/255", "standardize": False}, "must be a positive number"),
    ],
)
def test_scale_is_checked(table, message):
    with pytest.raises(HpoError, match=message):
        spec(train="train.npz", **table)
