"""Shared fixtures: tiny datasets in keras' own file formats, an isolated working directory.

In CI (CI=true) a skipped test is a failure: a missing service or dataset must not pass
silently.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("HPO_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {report.longrepr}"


def _ragged(rows: list[list[int]]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = list(row)
    return out


def _texts(rng: np.random.Generator, labels: np.ndarray, vocab: int) -> list[list[int]]:
    """Word-index sequences whose words give the label away: label k favours words near 10*k."""
    rows = []
    for label in labels:
        length = int(rng.integers(5, 30))
        signal = rng.integers(10 * int(label) + 4, 10 * int(label) + 9, size=length // 2)
        noise = rng.integers(1, vocab, size=length - length // 2)
        rows.append([int(w) for w in rng.permutation(np.concatenate([signal, noise]))])
    return rows


def write_tiny_datasets(folder: Path, seed: int = 0) -> Path:
    """Small, learnable copies of the four datasets, in the layout keras' loaders read."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y_train, y_test = rng.integers(0, 2, 400), rng.integers(0, 2, 100)
    np.savez(
        folder / "imdb.npz",
        x_train=_ragged(_texts(rng, y_train, 300)),
        y_train=y_train,
        x_test=_ragged(_texts(rng, y_test, 300)),
        y_test=y_test,
    )
    y = rng.integers(0, 5, 500)
    np.savez(folder / "reuters.npz", x=_ragged(_texts(rng, y, 300)), y=y)
    x = rng.normal(size=(120, 13)) * rng.uniform(1, 100, 13) + rng.uniform(0, 50, 13)
    y = (x[:, :3] @ np.array([0.05, -0.02, 0.01]) + 22 + rng.normal(0, 1, 120)).astype(float)
    np.savez(folder / "boston_housing.npz", x=x, y=y)
    y_train, y_test = rng.integers(0, 10, 300), rng.integers(0, 10, 100)

    def images(labels):
        base = rng.integers(0, 40, size=(len(labels), 28, 28))
        for i, label in enumerate(labels):
            base[i, 2 * label : 2 * label + 4, :] = 250
        return base.astype(np.uint8)

    np.savez(
        folder / "mnist.npz",
        x_train=images(y_train),
        y_train=y_train,
        x_test=images(y_test),
        y_test=y_test,
    )
    return folder


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with tiny datasets; the cache and storage live inside it."""
    data_dir = write_tiny_datasets(tmp_path / "datasets")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # never the user's cache
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    from hpo.data import builtin

    builtin._load_cached.cache_clear()
    return tmp_path


TINY_STUDY = """
[study]
dataset = "{dataset}"
metric = "{metric}"
max_epochs = {epochs}
validation = "{validation}"
num_words = 100

[sampler]
name = "random"

[pruner]
name = "{pruner}"

[space]
{space}
"""

TINY_SPACES = {
    "imdb": """
layers = { int = [1, 2] }
units = { choices = [8, 16] }
loss = { choices = ["binary_crossentropy", "mse"] }
learning_rate = { float = [0.003, 0.01], log = true }
batch_size = 64
""",
    "boston_housing": """
layers = 1
units = 16
loss = { choices = ["mse", "mae"] }
learning_rate = 0.01
batch_size = 16
""",
}


def tiny_study(
    folder: Path,
    dataset: str = "imdb",
    *,
    epochs: int = 3,
    validation: str = "first:100",
    pruner: str = "none",
    metric: str | None = None,
    space: str | None = None,
    name: str = "tiny",
) -> Path:
    metric = metric or ("val_mae" if dataset == "boston_housing" else "val_accuracy")
    text = TINY_STUDY.format(
        dataset=dataset,
        metric=metric,
        epochs=epochs,
        validation=validation,
        pruner=pruner,
        space=textwrap.dedent(space or TINY_SPACES[dataset]),
    )
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def run_tests_under_jax(files: list[str], marker: str, passed: int) -> str:
    """Run the tests of `files` marked `marker` in one process with Keras on JAX (one start of
    pytest, TensorFlow and JAX for them all), check that `passed` of them passed, and return
    the modules of other backends that process loaded, one a line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    pytest_args = ["-q", "-n", "0", "-p", "no:cacheprovider", "-m", marker, *files]
    program = (  # as hpo's commands do (hpo.cli.main): TensorFlow need not be imported
        "import sys, pytest\n"
        "from hpo.backend import without_tensorflow\n"
        "without_tensorflow()\n"
        f"code = pytest.main({pytest_args!r})\n"
        "print(*(f'loaded: {m}' for m in ('tensorflow', 'torch') if m in sys.modules), sep='\\n')\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env={**env, "KERAS_BACKEND": "jax", "CI": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(rf"\b{passed} passed\b", done.stdout), done.stdout[-3000:]
    return "\n".join(line for line in done.stdout.splitlines() if line.startswith("loaded: "))


def default_sigint() -> None:
    """Popen's preexec_fn for a child that Ctrl-C must reach: a child of a background job (CI
    started with `&`, nohup) inherits SIGINT ignored, and hpo leaves an ignored SIGINT so; a
    user's terminal does not ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run `hpo ARGS` in this process through the real entry point; (exit code, stdout, stderr)."""
    from hpo.cli import main

    saved = sys.argv
    sys.argv = ["hpo", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_hpo_process(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `hpo ARGS` as its own process in `workdir` (for what needs one: a worker that
    restarts itself with exec); its exit code and text output."""
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# What `hpo analyze` stores as a study's artifacts: its figures, its report and the
# handed-over model (the default handover: the trial ensemble).
ANALYSIS_ARTIFACTS = [
    "curves.png",
    "history.png",
    "importances.png",
    "report.md",
    "trial-ensemble.keras",
]

# The database servers of this machine (.ci/run starts them when they are down).
SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}


def reachable(url: str) -> bool:
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@functools.cache
def rdb(url: str) -> optuna.storages.RDBStorage:
    """One storage, so one connection pool, per server for the tests' own reads: a new
    RDBStorage per poll would hold server connections until garbage collection."""
    return optuna.storages.RDBStorage(url)


@pytest.fixture(params=sorted(SERVERS))
def server_url(request) -> str:
    """Each real database server in turn; a skip (a failure under CI=true) when one is down."""
    url = SERVERS[request.param]
    if not reachable(url):
        pytest.skip(f"{request.param} is not reachable at {url}")
    return url
