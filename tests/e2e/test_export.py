"""The handed-over model in production: it loads with plain Keras where hpo is not installed,
and `hpo export` writes it as .keras, a SavedModel and ONNX, each predicting what `hpo predict
--probabilities` predicts (your own table's raw columns in) or what the handed-over model
predicts (a built-in dataset's float vectors in)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_cli, tiny_study

import hpo

pytestmark = pytest.mark.slow
COLUMNS = ["plan", "tenure_months", "monthly_charges", "support_calls"]  # examples/churn.toml's

# Run in a Python that has Keras but not hpo: the editable install's finder (a .pth file puts
# it on sys.meta_path) and the repository's folder (not the virtual environment's packages
# inside it) are removed before anything is imported.
WITHOUT_HPO = f"""
import sys
def hpo_s(x):
    return "__editable__" in getattr(x, "__module__", "")
sys.meta_path[:] = [f for f in sys.meta_path if not hpo_s(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not hpo_s(h)]
sys.path_importer_cache.clear()
sys.path[:] = [p for p in sys.path if "site-packages" in p or not p.startswith({str(REPO)!r})]
try:
    import hpo
except ImportError:
    pass
else:
    raise SystemExit("hpo is importable here")
import numpy as np
import keras
x = np.load("x.npy")
for number, path in enumerate(sys.argv[1:]):
    as_hpo = keras.saving.load_model(path, compile=False)  # as hpo loads it
    compiled = keras.saving.load_model(path)  # Keras' default: compiled as it was saved
    as_hpo, compiled = as_hpo.predict(x, verbose=0), compiled.predict(x, verbose=0)
    np.savez(f"plain_{{number}}.npz", as_hpo=as_hpo, compiled=compiled)
"""


@pytest.fixture(scope="module")
def churn(tmp_path_factory):
    """examples/churn.toml searched (2 trials of 2 epochs) and analyzed (1 seed), once for the
    module; (its folder, the study file, `hpo predict --probabilities` of churn_new.csv)."""
    folder = tmp_path_factory.mktemp("churn")
    for name in ("churn.csv", "churn_new.csv"):
        shutil.copy(REPO / "examples" / name, folder / name)
    text = (REPO / "examples" / "churn.toml").read_text()
    study = folder / "churn.toml"
    study.write_text(text.replace("max_epochs = 30", "max_epochs = 2"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("HPO_CACHE_DIR", str(folder / "cache"))
        patch.setenv("KERAS_HOME", str(folder / "keras_home"))
        patch.delenv("HPO_STORAGE", raising=False)
        hpo.optimize(study, trials=2, seed=0, progress=False)
        hpo.analyze(study, seeds=1, progress=False)
        expected = hpo.predict(study, folder / "churn_new.csv", probabilities=True)
        yield folder, study, expected[["probability_no", "probability_yes"]].to_numpy()


def rows(folder: Path, as_tensors: bool) -> dict:
    """churn_new.csv's raw columns, one (rows, 1) array each: text as strings, numbers as
    float32; tf.constant for Keras and TensorFlow, numpy for onnxruntime."""
    import tensorflow as tf

    table = pd.read_csv(folder / "churn_new.csv")
    fed = {}
    for column in COLUMNS:
        values = table[[column]].to_numpy()
        values = values.astype(str).astype(object) if column == "plan" else values.astype("f4")
        fed[column] = tf.constant(values) if as_tensors else values
    return fed


def export(capsys, folder: Path, study: Path, fmt: str, out: str) -> Path:
    code, stdout, err = run_cli(capsys, "export", str(study), "--format", fmt, "--out", out)
    assert code == 0, err
    assert "plan (text), tenure_months (number)" in stdout
    assert "probabilities of churned no, yes" in stdout
    return folder / out


def test_keras_export_takes_the_raw_columns(churn, capsys):
    import keras

    folder, study, expected = churn
    model = keras.saving.load_model(export(capsys, folder, study, "keras", "churn.keras"))
    assert sorted(x.name for x in model.inputs) == sorted(COLUMNS)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"StringLookup", "Normalization"} <= kinds
    np.testing.assert_allclose(np.asarray(model(rows(folder, True))), expected, atol=1e-5)


def test_saved_model_export_serves_the_raw_columns(churn, capsys):
    import tensorflow as tf

    folder, study, expected = churn
    loaded = tf.saved_model.load(str(export(capsys, folder, study, "saved_model", "churn_sm")))
    serving = loaded.signatures["serving_default"]  # TF Serving's signature
    (output,) = serving(**rows(folder, True)).values()
    np.testing.assert_allclose(output.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(loaded.serve(rows(folder, True)).numpy(), expected, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime(churn, capsys):
    ort = pytest.importorskip("onnxruntime")
    folder, study, expected = churn
    session = ort.InferenceSession(str(export(capsys, folder, study, "onnx", "churn.onnx")))
    assert sorted(i.name for i in session.get_inputs()) == sorted(COLUMNS)
    (output,) = session.run(None, rows(folder, False))
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_onnx_export_under_jax(churn):
    """hpo running Keras on JAX (as the GPU machine trains): the .keras model exports, its
    SavedModel and ONNX through a TensorFlow child process, JAX's graph taking no strings."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("jax")
    folder, study, expected = churn
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    command = ["export", str(study), "--format", "onnx", "--out", "jax.onnx"]
    done = subprocess.run(
        [sys.executable, "-m", "hpo", *command],
        cwd=folder,
        env={**env, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "oneDNN" not in done.stdout + done.stderr  # TensorFlow's notices kept quiet
    (output,) = ort.InferenceSession(str(folder / "jax.onnx")).run(None, rows(folder, False))
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_bad_exports_are_one_line(churn, capsys):
    _, study, _ = churn
    code, _, err = run_cli(capsys, "export", str(study), "--format", "pmml", "--out", "m.pmml")
    assert code == 2 and err.strip() == "error: --format 'pmml': one of keras, saved_model, onnx"
    code, _, err = run_cli(capsys, "export", str(study), "--format", "onnx", "--out", "m.keras")
    assert code == 2 and len(err.strip().splitlines()) == 1 and ".onnx file" in err


def test_a_builtin_dataset_model_loads_without_hpo_and_exports(workdir, capsys):
    """A tiny IMDB study's handed-over model (bit-packed input, unpacked by hpo's UnpackBits
    in training) is saved with standard layers: Keras loads it in a Python where hpo cannot be
    imported, and it predicts exactly what hpo's own loading predicts. Exported, it takes the
    book's multi-hot float vectors."""
    from hpo.data import builtin
    from hpo.results import prediction

    study = tiny_study(workdir, "imdb", epochs=2)
    hpo.optimize(study, trials=2, seed=0, progress=False)
    code, _, err = run_cli(capsys, "export", str(study), "--format", "keras", "--out", "m.keras")
    assert code == 2 and err.strip() == "error: no analysis of study 'tiny': run hpo analyze first"

    result = hpo.analyze(study, seeds=1, progress=False)
    data = builtin.load("imdb", num_words=100)
    assert data.packed  # bit-packed: the model starts with an unpacking step
    x = data.x_test[:64]
    np.save(workdir / "x.npy", x)
    paths = [result.folder / "model.keras", result.model_path]  # and trial-ensemble.keras
    done = subprocess.run(
        [sys.executable, "-I", "-c", WITHOUT_HPO, *map(str, paths)],
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for number, path in enumerate(paths):
        own = prediction.load_keras(path).predict(x, verbose=0)
        plain = np.load(workdir / f"plain_{number}.npz")
        np.testing.assert_array_equal(plain["as_hpo"], own)
        # a compiled model's program: oneDNN may round the last bit apart
        np.testing.assert_allclose(plain["compiled"], own, atol=1e-6)

    code, out, err = run_cli(capsys, "export", str(study), "--format", "keras", "--out", "m.keras")
    assert code == 0, err
    assert "x (float32 (100,))" in out
    import keras

    exported = keras.saving.load_model(workdir / "m.keras")
    vectors = np.unpackbits(x, axis=1)[:, :100].astype(np.float32)  # the book's multi-hot rows
    handed = prediction.load_keras(result.model_path)
    np.testing.assert_allclose(
        exported.predict(vectors, verbose=0), handed.predict(x, verbose=0), atol=1e-6
    )

    # ONNX through Keras' own export (no text inputs here), run in onnxruntime
    ort = pytest.importorskip("onnxruntime")
    code, _, err = run_cli(capsys, "export", str(study), "--format", "onnx", "--out", "m.onnx")
    assert code == 0, err
    session = ort.InferenceSession(str(workdir / "m.onnx"))
    (output,) = session.run(None, {session.get_inputs()[0].name: vectors})
    np.testing.assert_allclose(output, handed.predict(x, verbose=0), atol=1e-5)
