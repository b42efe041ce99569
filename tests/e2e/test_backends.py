"""hpo under Keras' JAX backend, the one the GPU machine runs: a real `hpo optimize` process.

The test process itself runs Keras on TensorFlow, and a process has one backend, so each
check runs hpo as a subprocess with KERAS_BACKEND=jax.
"""

import os
import subprocess
import sys

import optuna
import pytest
from conftest import run_cli, run_tests_under_jax, tiny_study

pytest.importorskip("jax")

# Every parameter fixed: each trial compiles the same programs.
FIXED_SPACE = """
layers = 1
units = 16
loss = "mse"
learning_rate = 0.01
batch_size = 16
"""


def optimize_under_jax(workdir, study, trials: int) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo",
            "optimize",
            str(study),
            "--trials",
            str(trials),
            "--seed",
            "0",
        ],
        cwd=workdir,
        # hpo's own cache folder, not one the user may have chosen for JAX
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("JAX_")},
            "KERAS_BACKEND": "jax",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_jax_trials_reuse_compiled_programs_across_processes(workdir):
    study = tiny_study(
        workdir, "boston_housing", epochs=2, validation="kfold:2", space=FIXED_SPACE, name="j"
    )
    out = optimize_under_jax(workdir, study, 2)
    cache = workdir / "cache" / "jax"  # under HPO_CACHE_DIR, which the workdir fixture sets
    compiled = sorted(p.name for p in cache.iterdir())
    assert compiled, "JAX's persistent compilation cache was not written"
    # Keras seeds TensorFlow whenever it is installed; its start-up notices stay hidden.
    assert "oneDNN" not in out and "absl" not in out, out

    optimize_under_jax(workdir, study, 4)  # a new process, the same shapes
    assert sorted(p.name for p in cache.iterdir()) == compiled, "programs were compiled again"

    trials = optuna.load_study(study_name="j", storage="sqlite:///storage/hpo.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert {t.user_attrs["worker"]["backend"] for t in trials} == {"jax"}
    # Under JAX too, each trial kept its best epoch's out-of-fold predictions of every row
    # (the tiny Boston's 120 houses: 96 training rows, two folds of 48).
    assert {t.user_attrs["val_predictions"]["rows"] for t in trials} == {96}


def test_the_exactness_tests_pass_under_jax_without_tensorflow():
    """The word-ids, stacked-trials and own-model exactness tests (marked jax_too), in one
    process running Keras on JAX: its optimizer steps run in a StatelessScope, its dropout
    masks come from rbg keys, its kernel gradient is JAX's autodiff of the gather. They train
    trials, key and copy their programs, seed and save models, and, run as hpo's commands run
    (without_tensorflow), never import TensorFlow."""
    if os.environ.get("KERAS_BACKEND") == "jax":
        pytest.skip("this process already runs JAX: the marked tests run here with the rest")
    files = [
        "tests/e2e/test_word_ids.py",
        "tests/e2e/test_batched_trials.py",
        "tests/e2e/test_own_model.py",
    ]
    assert run_tests_under_jax(files, "jax_too", passed=19) == ""


def test_hpo_commands_let_keras_run_without_tensorflow(monkeypatch, capsys):
    """hpo's own commands, and only they, set it (hpo.backend.without_tensorflow): importing
    hpo in a notebook leaves Keras' TensorFlow to the user's own uses."""
    from hpo import backend

    monkeypatch.setattr(backend, "_without_tensorflow", False)
    assert run_cli(capsys, "--version")[0] == 0
    assert backend._without_tensorflow is True
