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
