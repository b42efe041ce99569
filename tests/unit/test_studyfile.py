"""Study files: the built-in ones load, and every malformed one gets one line naming the key."""

import pytest

from hpo.errors import HpoError
from hpo.study import studyfile


@pytest.mark.parametrize("name", ["imdb", "reuters", "boston_housing", "mnist"])
def test_builtin_study_files_load(name):
    spec = studyfile.load(name)
    assert spec.dataset == name
    assert {
        "layers",
        "units",
        "activation",
        "optimizer",
        "learning_rate",
        "batch_size",
        "dropout",
    } <= set(spec.space.searched())
    assert spec.direction == ("minimize" if name == "boston_housing" else "maximize")


def test_book_holdouts_and_folds():
    assert str(studyfile.load("imdb").validation) == "first:10000"
    assert str(studyfile.load("reuters").validation) == "first:1000"
    assert str(studyfile.load("boston_housing").validation) == "kfold:4"
    assert studyfile.load("imdb").smooth_epochs == 1  # the default: the single best epoch
    assert set(studyfile.load("imdb").space.dims["loss"].values) == {"binary_crossentropy", "mse"}


def write(tmp_path, text):
    path = tmp_path / "my.toml"
    path.write_text(text)
    return str(path)


GOOD = '[study]\ndataset = "imdb"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[study\n", "not valid TOML"),
        ("[space]\nlayers = 2\n", "missing [study] table"),
        ('[study]\ndataset = "cifar"\n', "study.dataset: unknown dataset 'cifar'"),
        (GOOD + 'metric = "val_acc"\n', "study.metric: 'val_acc' is not a metric"),
        (GOOD + 'direction = "minimize"\n', "study.direction: val_accuracy must be maximized"),
        (GOOD + 'task = "regression"\n', "study.task: imdb is a binary dataset"),
        (GOOD + "max_epochs = 0\n", "study.max_epochs: must be a positive integer"),
        (GOOD + "smooth_epochs = 0\n", "study.smooth_epochs: must be an integer from 1"),
        (GOOD + "max_epochs = 5\nsmooth_epochs = 7\n", "to max_epochs (5), got 7"),
        (GOOD + 'smooth_epochs = "3"\n', "study.smooth_epochs: must be an integer"),
        (GOOD + "patience = -1\n", "study.patience: must be an integer ≥ 0"),
        (GOOD + "patience = 2.5\n", "study.patience: must be an integer ≥ 0"),
        (GOOD + 'validation = "half"\n', "study.validation: expected"),
        (GOOD + 'validation = "kfold:1"\n', "study.validation: kfold needs at least 2"),
        (GOOD + "epochs = 3\n", "study.epochs: unknown key"),
        (GOOD + "[tuning]\nx = 1\n", "unknown table [tuning]"),
        (
            GOOD
            + 'metric = "val_loss"\n[space]\nloss = { choices = ["mse", "binary_crossentropy"] }\n',
            "val_loss is not comparable",
        ),
        (GOOD + '[sampler]\nname = "bayes"\n', "sampler.name: must be one of tpe"),
        (GOOD + '[pruner]\nname = "median"\nwarmup = 3\n', "[pruner] median:"),
        (GOOD + "[space]\nunits = { int = [64, 16] }\n", "space.units: empty range"),
        (GOOD + '[data]\ntrain = "t.csv"\n', "study.dataset: a study tunes either"),
        ('[study]\nname = "x"\ndata = 3\n', "study.data: unknown key"),
        ('[study]\ntask = "ranking"\n[data]\ntrain = "t.csv"\n', "study.task: must be one of"),
        ('[study]\n[data]\ntest = "t.csv"\n', "data.train"),
    ],
)
def test_malformed_files_get_one_line(tmp_path, text, message):
    with pytest.raises(HpoError) as info:
        studyfile.load(write(tmp_path, text))
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "my.toml"))
    assert "\n" not in str(info.value)


def test_val_loss_allowed_when_loss_is_fixed(tmp_path):
    spec = studyfile.load(write(tmp_path, GOOD + 'metric = "val_loss"\n'))
    assert spec.direction == "minimize"


def test_unknown_target_names_the_builtins():
    with pytest.raises(HpoError, match=r"unknown dataset 'cifar10'.*imdb"):
        studyfile.resolve("cifar10")
    with pytest.raises(HpoError, match="no such study file"):
        studyfile.resolve("missing.toml")


def test_overrides():
    spec = studyfile.load("imdb").with_overrides(pruner="hyperband", max_epochs=5, sampler=None)
    assert spec.pruner == {"name": "hyperband"}
    assert spec.max_epochs == 5
    assert spec.sampler["name"] == "tpe"
    with pytest.raises(HpoError, match="--max-epochs"):
        studyfile.load("imdb").with_overrides(max_epochs=0)
    assert studyfile.load("imdb").with_overrides(patience=0).patience == 0
    with pytest.raises(HpoError, match="--patience must be at least 0"):
        studyfile.load("imdb").with_overrides(patience=-1)


def test_own_data_study_infers_its_task_and_a_percent_holdout(tmp_path):
    rows = "a,b,label\n" + "".join(f"{i},{i % 3},{'yes' if i % 2 else 'no'}\n" for i in range(30))
    (tmp_path / "t.csv").write_text(rows)
    spec = studyfile.load(write(tmp_path, '[study]\n[data]\ntrain = "t.csv"\ntarget = "label"\n'))
    assert (spec.dataset, spec.task, spec.metric) == ("t.csv", "binary", "val_accuracy")
    assert str(spec.validation) == "first:20%"
    assert spec.data.train == tmp_path / "t.csv"  # relative to the study file
    (tmp_path / "t.csv").unlink()
    with pytest.raises(HpoError, match=f"data.train: {tmp_path / 't.csv'}: no such file"):
        studyfile.load(str(tmp_path / "my.toml"))


# --- your own table without [space]: a default space scaled to its rows -------------------

SEARCHED = {"layers", "units", "activation", "optimizer", "learning_rate", "batch_size", "dropout"}


def own_table(tmp_path, monkeypatch, rows: int, study: str = "", space: str = "") -> str:
    """A 3-class table of `rows` rows and a study file with [study] and [data] (and `space`)."""
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    i = range(rows)
    table = "a,b,target\n" + "".join(f"{k % 7},{k % 5 * 0.5},{k % 3}\n" for k in i)
    (tmp_path / "t.csv").write_text(table)
    data = '[data]\ntrain = "t.csv"\ntest_fraction = 0.2\nsplit_seed = 0\n'
    return write(tmp_path, f"[study]\n{study}{data}{space}")


def test_own_table_without_space_searches_a_default_space(tmp_path, monkeypatch):
    spec = studyfile.load(own_table(tmp_path, monkeypatch, 200))
    assert spec.task == "multiclass"
    assert set(spec.space.searched()) == SEARCHED  # not the book's one fixed configuration
    dims = spec.space.dims
    assert (dims["layers"].low, dims["layers"].high) == (1, 3)
    assert dims["units"].values == (16, 32, 64, 128)
    assert (
        dims["learning_rate"].log and dims["learning_rate"].low < 1e-3 < dims["learning_rate"].high
    )
    assert dims["loss"].values == ("sparse_categorical_crossentropy",)  # val_loss comparable
    # 160 training rows, 128 fit each trial (first:20% validates): batch 512 would be one step.
    assert dims["batch_size"].values == (8, 16, 32)
    assert spec.max_epochs == 200
    # The metric may be val_loss: the loss is not searched.
    spec = studyfile.load(own_table(tmp_path, monkeypatch, 200, 'metric = "val_loss"\n'))
    assert spec.metric == "val_loss" and "loss" not in spec.space.searched()


@pytest.mark.parametrize(
    ("rows", "validation", "batches", "epochs"),
    [
        (200, "first:20%", (8, 16, 32), 200),  # 128 fitting rows
        (1000, "first:20%", (16, 32, 64), 100),  # 640: 10 steps an epoch at batch 64
        (1000, "kfold:4", (16, 32, 64), 100),  # 600
        (1000, "kfold:2", (8, 16, 32), 77),  # 400: 13 steps at batch 32
        (6000, "first:20%", (64, 128, 256), 67),  # 3,840
        (40000, "first:20%", (128, 256, 512), 20),  # 25,600
    ],
)
def test_default_batch_sizes_and_epochs_scale_with_the_rows(
    tmp_path, monkeypatch, rows, validation, batches, epochs
):
    spec = studyfile.load(own_table(tmp_path, monkeypatch, rows, f'validation = "{validation}"\n'))
    assert spec.space.dims["batch_size"].values == batches
    assert spec.max_epochs == epochs


def test_the_scaling_rule():
    from hpo.study.space import table_batch_sizes, table_max_epochs

    for rows in range(1, 60000, 37):
        batches = table_batch_sizes(rows)
        largest = batches[-1]
        assert batches == [largest // 4, largest // 2, largest] and 32 <= largest <= 512
        if largest > 32:  # at least 8 steps an epoch at the largest batch, when it can
            assert rows // largest >= 8
        if largest < 512:  # and the largest batch that gives them
            assert rows // (2 * largest) < 8
        epochs = table_max_epochs(rows)
        assert 20 <= epochs <= 200
        steps = -(-rows // largest) * epochs  # optimizer steps at the largest batch
        assert steps >= 1000 or epochs == 200


def test_own_space_and_max_epochs_win(tmp_path, monkeypatch):
    space = "[space]\nbatch_size = 512\nunits = { choices = [8, 12] }\n"
    path = own_table(tmp_path, monkeypatch, 200, "max_epochs = 7\n", space)
    spec = studyfile.load(path)
    assert spec.max_epochs == 7
    assert spec.space.dims["batch_size"].values == (512,)
    assert spec.space.dims["units"].values == (8, 12)
    assert set(spec.space.searched()) == SEARCHED - {"batch_size"}  # the rest: the defaults
    assert spec.with_overrides(max_epochs=3).max_epochs == 3  # --max-epochs wins too
    # Everything written out: the book's configuration, nothing searched.
    book = (
        "[space]\nlayers = 2\nunits = 16\nactivation = 'relu'\noptimizer = 'rmsprop'\n"
        "learning_rate = 1e-3\nbatch_size = 512\ndropout = 0.0\n"
    )
    assert studyfile.load(own_table(tmp_path, monkeypatch, 200, space=book)).space.searched() == []


@pytest.mark.parametrize(
    ("name", "units", "batch", "loss"),
    [
        ("boston_housing", (64, 64), 16, "mse"),
        ("imdb", (16, 16), 512, "binary_crossentropy"),
        ("reuters", (64, 64), 512, "categorical_crossentropy"),
        ("mnist", (512,), 128, "sparse_categorical_crossentropy"),
    ],
)
def test_an_empty_space_is_the_books_model_for_that_dataset(tmp_path, name, units, batch, loss):
    # A built-in dataset's file that leaves [space] and max_epochs out: the book's model for it.
    spec = studyfile.load(write(tmp_path, f'[study]\ndataset = "{name}"\n'))
    assert spec.space.searched() == [] and spec.max_epochs == 20
    assert {name: dim.values[0] for name, dim in spec.space.dims.items()} == {
        "layers": len(units),
        "units": units[0],
        "activation": "relu",
        "loss": loss,
        "optimizer": "rmsprop",
        "learning_rate": 1e-3,
        "batch_size": batch,
        "dropout": 0.0,
    }


def test_builtin_study_files_keep_their_own_epochs_and_batches():
    # The built-in study files: their own epochs and batch sizes, as written.
    epochs = {"imdb": 20, "reuters": 20, "boston_housing": 200, "mnist": 15}
    batches = {
        "imdb": (128, 256, 512),
        "reuters": (128, 256, 512),
        "boston_housing": (8, 16, 32, 64),
        "mnist": (64, 128, 256),
    }
    for name in epochs:
        spec = studyfile.load(name)
        assert spec.max_epochs == epochs[name]
        assert spec.space.dims["batch_size"].values == batches[name]
