"""A user's own model through hpo: a convnet epoch against a bare model.fit, a worker's memory,
and (optionally) the handed-over MNIST test accuracy of examples/mnist_convnet.toml.

    python bench/own_model.py [--rows 20000] [--epochs 4] [--repeats 2]
        [--backends tensorflow,jax] [--rss-epochs 1] [--accuracy-seeds 0,1 --trials 20]
        [--data-dir ../shared/datasets]

Question: does hpo train a model of your own (examples/mnist_convnet.py, the book's chapter-8
convnet) as fast as a bare `model.fit` of it, in how much memory, and what does a search of
it hand over?
Goal: an epoch through hpo <= 1.0x a bare fit's, TensorFlow and JAX; a worker's peak RSS <=
1.5 GB; the handed-over model's MNIST test accuracy >= 0.992 (2 search seeds).
Machine: any; needs the real mnist.npz (--data-dir or HPO_DATA_DIR, e.g. ../shared/datasets).

- Epochs: for each backend (a child process each: KERAS_BACKEND is read at import), the book's
  convnet (3 blocks of 32/64/128 3x3 filters, rmsprop at 1e-3, batch 128) built by the
  example's build function, on the first --rows training images (the study's first 10,000
  validate, the rest train). Seconds per epoch, epoch 1 (which compiles) left out, validation
  pass included, of: a bare fit (what a reader of the book writes: float32 pixels / 255 into
  `model.fit`), hpo's objective with HPO_ENGINE=fused (uint8 pixels from the cache, scaled in
  the compiled step) and with HPO_ENGINE=fit; each --repeats times, in turn, so that a load
  that comes and goes meets all three. The fastest epoch of each (the least disturbed) and the
  median, and the ratios of the fused loop to the bare fit.
- Memory: `hpo optimize examples/mnist_convnet.toml --trials 1 --max-epochs E` on the whole
  of MNIST, under TensorFlow, its process tree's peak RSS (VmHWM) sampled every 0.1 s.
- Accuracy (only with --accuracy-seeds): bench/handover.py's search and analyze for each
  search seed (--trials trials), the handed-over model's test accuracy. Hours on 2 CPU cores.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "mnist_convnet.toml"
WAYS = ("bare fit", "hpo fused", "hpo fit")
# The book's convnet (§8.1) in the example's space: no dropout, no batch norm, rmsprop.
BOOK = {
    "layers": 3,
    "filters": 32,
    "kernel_size_1": 3,
    "kernel_size_2": 3,
    "kernel_size_3": 3,
    "batch_norm": False,
    "dropout": 0.0,
    "optimizer": "rmsprop",
    "learning_rate": 1e-3,
    "batch_size": 128,
}


class EpochClock:
    def __init__(self) -> None:
        self.stamps = [time.perf_counter()]

    def tick(self, *_: object) -> None:
        self.stamps.append(time.perf_counter())

    def gaps(self) -> list[float]:
        """Seconds of each epoch after the first (which includes compilation)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)][1:]


def bare_fit(prepared, holdout: int, epochs: int) -> list[float]:
    """The book's listing: float32 pixels / 255 and integer labels into model.fit, the model
    the example's build function makes of the book's parameters."""
    import dataclasses

    import keras
    import numpy as np

    sys.path.insert(0, str(STUDY.parent))
    import mnist_convnet

    from hpo.train.build_function import inputs_of

    x = (prepared.x_train.astype(np.float32) / 255).reshape(len(prepared.x_train), 28, 28, 1)
    y = np.asarray(prepared.y_train)
    inputs = dataclasses.replace(inputs_of(prepared), dtype="float32", scale=1.0)
    model = mnist_convnet.build(dict(BOOK), inputs)
    model.compile(
        optimizer=keras.optimizers.RMSprop(BOOK["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    clock = EpochClock()
    model.fit(
        x[holdout:],
        y[holdout:],
        epochs=epochs,
        batch_size=BOOK["batch_size"],
        verbose=0,
        validation_data=(x[:holdout], y[:holdout]),
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=clock.tick)],
    )
    return clock.gaps()


def hpo_epochs(prepared, spec, epochs: int, engine: str) -> tuple[list[float], dict]:
    """Seconds per epoch of one trial of the book's parameters through hpo's objective, and
    the trial's worker record (which loop ran it)."""
    import optuna

    from hpo.train.objective import Objective

    os.environ["HPO_ENGINE"] = engine
    spec = spec.with_overrides(max_epochs=epochs, pruner="none", patience=0)
    clock = EpochClock()
    objective = Objective(spec, prepared, on_epoch=lambda *_: clock.tick())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({**BOOK, "loss": "sparse_categorical_crossentropy"})
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise SystemExit(f"the hpo trial ({engine}) ended {trial.state.name}")
    return clock.gaps(), trial.user_attrs.get("worker", {})


def child(data_dir: str | None, epochs: int, rows: int, repeats: int) -> None:
    """One backend's per-epoch figures, as one JSON line on stdout: each way `repeats` times
    in turn (bare, fused, fit, bare, …), so that a load that comes and goes meets them all;
    the fastest epoch of each (the least disturbed) and the median."""
    import dataclasses

    from hpo.backend import import_keras
    from hpo.data.load import load_source
    from hpo.study import studyfile

    keras = import_keras()
    spec = studyfile.load(str(STUDY))
    prepared = load_source(spec.source, data_dir)
    prepared = dataclasses.replace(
        prepared, x_train=prepared.x_train[:rows], y_train=prepared.y_train[:rows]
    )
    holdout = spec.validation.n
    bare_fit(prepared, holdout, 2)  # warm the backend up so neither side pays for it
    epochs_of: dict[str, list[float]] = {"bare fit": [], "hpo fused": [], "hpo fit": []}
    worker: dict = {}
    for _ in range(repeats):
        epochs_of["bare fit"] += bare_fit(prepared, holdout, epochs)
        gaps, worker = hpo_epochs(prepared, spec, epochs, "fused")
        epochs_of["hpo fused"] += gaps
        epochs_of["hpo fit"] += hpo_epochs(prepared, spec, epochs, "fit")[0]
    out: dict = {"backend": keras.backend.backend(), "rows": rows, "holdout": holdout}
    out["fused worker"] = {k: worker.get(k) for k in ("engine", "input", "backend")}
    out["epochs"] = {way: [round(g, 3) for g in gaps] for way, gaps in epochs_of.items()}
    for way, gaps in epochs_of.items():
        out[way] = {"fastest": min(gaps), "median": statistics.median(gaps)}
    for stat in ("fastest", "median"):
        out[f"ratio {stat}"] = out["hpo fused"][stat] / out["bare fit"][stat]
    print(json.dumps(out))


def peak_rss(epochs: int, data_dir: str | None, python: str) -> dict:
    """Peak RSS (VmHWM, MB) of `hpo optimize examples/mnist_convnet.toml --trials 1` under
    TensorFlow, over its process tree, sampled every 0.1 s."""
    from imdb_overhead import memory_kb, process_tree

    with tempfile.TemporaryDirectory() as tmp:
        args = ["optimize", str(STUDY), "--trials", "1", "--seed", "0"]
        args += ["--max-epochs", str(epochs), "--storage", f"sqlite:///{tmp}/bench.db"]
        if data_dir:  # the worker runs in the temporary folder
            args += ["--data-dir", str(Path(data_dir).resolve())]
        env = _common.hpo_env(Path(tmp) / "cache", KERAS_BACKEND="tensorflow")
        start = time.perf_counter()
        proc = _common.start_hpo(args, env, Path(tmp), python, stdout=subprocess.DEVNULL)
        hwm: dict[int, int] = {}

        def sample() -> None:
            while proc.poll() is None:
                for pid in process_tree(proc.pid):
                    try:
                        hwm[pid] = max(hwm.get(pid, 0), memory_kb(pid)["hwm"])
                    except OSError:  # ended between the listing and the read
                        continue
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        sampler.join()
        if proc.returncode:
            raise SystemExit(f"hpo optimize {STUDY.name} exited with {proc.returncode}")
    return {
        "epochs": epochs,
        "peak RSS MB": round(max(hwm.values()) / 1024),
        "seconds": round(time.perf_counter() - start, 1),
    }


def accuracy(study: Path, seed: int, opts: argparse.Namespace) -> dict:
    """`hpo optimize STUDY --trials N --seed S` then `hpo analyze STUDY`, as a user runs them,
    in a fresh folder and storage; the handed-over model's test accuracy (params.json)."""
    folder = Path(tempfile.mkdtemp(prefix=f"own-model-{seed}-"))
    env = _common.hpo_env(folder / "cache")
    common = ["--storage", f"sqlite:///{folder}/bench.db"]
    if opts.data_dir:
        common += ["--data-dir", str(Path(opts.data_dir).resolve())]
    optimize = ["optimize", str(study.resolve()), "--trials", str(opts.trials), "--seed", str(seed)]
    if opts.max_epochs:
        optimize += ["--max-epochs", str(opts.max_epochs)]
    search = _common.run_hpo([*optimize, *common], env, folder)
    analyze = ["analyze", str(study.resolve()), "--seeds", str(opts.analyze_seeds), *common]
    analysis = _common.run_hpo(analyze, env, folder)
    [report] = (folder / "storage" / "reports").iterdir()
    saved = json.loads((report / "params.json").read_text())
    ensemble = (saved.get("trial_ensemble") or {}).get("test") or {}
    handed = saved.get("handover")
    return {
        "seed": seed,
        "handover": handed,
        "handed over": ensemble.get("accuracy") if handed == "trial-ensemble" else None,
        "trial ensemble": ensemble.get("accuracy"),
        "best retrained": saved["test"]["accuracy"]["mean"],
        "best params": saved.get("params"),
        "search_s": round(search),
        "analyze_s": round(analysis),
        "folder": str(folder),
    }


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    parser.add_argument("--epochs", type=int, default=4, help="epochs a timed run trains")
    parser.add_argument("--rows", type=int, default=20000, help="training images timed")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each, in turn")
    parser.add_argument("--backends", default="tensorflow,jax", help='"": no epoch figures')
    parser.add_argument("--rss-epochs", type=int, default=1, help="0: no memory figure")
    parser.add_argument(
        "--accuracy-seeds", default="", help="search seeds of the accuracy search (hours)"
    )
    parser.add_argument("--trials", type=int, default=20, help="trials an accuracy search runs")
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="an accuracy search's (default: the file's)"
    )
    parser.add_argument("--analyze-seeds", type=int, default=1, help="hpo analyze --seeds")
    parser.add_argument(
        "--study", type=Path, default=STUDY, help="the accuracy search's study file"
    )
    _common.add_data_dir(parser)
    parser.add_argument(
        "--worker-python",
        default=sys.executable,
        help="the Python of the measured worker: one of a plain `pip install -e .`, as users "
        "run it (the dev extra adds JAX, which TensorFlow then imports)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = parser().parse_args()
    _common.needs(args.data_dir, "mnist.npz")
    if args.child:
        child(args.data_dir, args.epochs, args.rows, args.repeats)
        return
    epochs = []
    for backend in filter(None, args.backends.split(",")):
        cmd = [sys.executable, __file__, "--child", "--epochs", str(args.epochs)]
        cmd += ["--rows", str(args.rows), "--repeats", str(args.repeats)]
        cmd += ["--data-dir", str(args.data_dir)]
        env = {**os.environ, "KERAS_BACKEND": backend}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the {backend} child failed:\n{done.stderr[-3000:]}")
        epochs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if epochs:
        print(
            f"seconds per epoch of the book's convnet, the fastest (median) of {args.repeats} "
            f"runs of {args.epochs - 1} timed epochs each; the first {args.rows} images"
        )
        header = ("backend", "bare fit", "hpo fused", "hpo fit", "fused/bare")
        print("{:<11} {:>15} {:>15} {:>15} {:>13}".format(*header))
    for row in epochs:
        cells = [f"{row[w]['fastest']:.3f} ({row[w]['median']:.3f})" for w in WAYS]
        ratios = f"{row['ratio fastest']:.2f} ({row['ratio median']:.2f})"
        print(f"{row['backend']:<11} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {ratios:>13}")
    memory = None
    if args.rss_epochs:
        memory = peak_rss(args.rss_epochs, args.data_dir, args.worker_python)
        mb = memory["peak RSS MB"]
        print(f"one worker, one trial of {args.rss_epochs} epoch(s): peak RSS {mb} MB")
    seeds = [int(s) for s in args.accuracy_seeds.split(",") if s]
    searches = [accuracy(args.study, seed, args) for seed in seeds]
    for search in searches:
        print(
            f"search seed {search['seed']}: test accuracy handed over ({search['handover']}) "
            f"{search['handed over']}, best trial retrained {search['best retrained']:.4f}"
        )
    _common.emit({"per_epoch": epochs, "worker_memory": memory, "accuracy": searches})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
