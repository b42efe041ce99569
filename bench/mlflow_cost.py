"""What `--mlflow` costs a trial, an epoch and an IMDB search, against a local tracking server.

    python bench/mlflow_cost.py [--trials 8] [--repeats 3] [--logged 30] [--epochs 20]
        [--data-dir DIR]

Question: what does logging each trial to MLflow cost, per trial and per epoch of its curve,
and is it measurable in an IMDB search's wall time?
Goal: not measurable within the searches' own noise (issue #38).
Machine: any; needs the real imdb.npz (--data-dir) and mlflow (pip install 'hpo[mlflow]').

Starts `mlflow server` (SQLite, a free loopback port, one worker), then:
1. logs `--logged` finished trials through hpo's callback (hpo.search.tracking.TrialRuns), each
   with an IMDB-like curve of 4 metrics over `--epochs` epochs, and as many with a 1-epoch
   curve: the median milliseconds a trial, and the difference over the extra epochs (hpo logs
   the curve when the trial ends, in one request with its parameters);
2. runs `hpo optimize imdb --trials N --seed 0` `--repeats` times with and without `--mlflow`,
   in turn, each in a fresh storage and cache: the wall times, their medians and spread.
Prints the rows, then one JSON line.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import _common
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState


def parser():
    p = _common.parser(__doc__)
    p.add_argument("--trials", type=int, default=8, help="trials of each IMDB search")
    p.add_argument("--repeats", type=int, default=3, help="searches with and without --mlflow")
    p.add_argument("--logged", type=int, default=30, help="trials logged for the per-trial cost")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each logged trial's curve")
    _common.add_data_dir(p)
    return p


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(cli), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--default-artifact-root", (folder / "artifacts").as_uri(), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    sys.exit("mlflow server did not start in 300 s")


def trial(number: int, epochs: int) -> FrozenTrial:
    """A finished trial as hpo leaves it: 8 parameters, a curve of 4 metrics, its best epoch."""
    curve = [0.5 + 0.4 * e / epochs for e in range(epochs)]
    history = {k: list(curve) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    dists = {f"p{i}": FloatDistribution(0.0, 1.0) for i in range(7)}
    dists["layers"] = IntDistribution(1, 3)
    now = dt.datetime.now()
    return FrozenTrial(
        number=number, state=TrialState.COMPLETE, value=curve[-1], datetime_start=now,
        datetime_complete=now, params={f"p{i}": 0.1 * i for i in range(7)} | {"layers": 2},
        distributions=dists, user_attrs={"history": history, "best_epoch": epochs},
        system_attrs={}, intermediate_values=dict(enumerate(curve, 1)), trial_id=number,
    )  # fmt: skip


def logging_cost(url: str, logged: int, epochs: int) -> dict:
    """Median ms to log a trial with a `epochs`-epoch curve and with a 1-epoch one."""
    from rich.console import Console

    from hpo.search.tracking import TrialRuns

    runs = TrialRuns(url, Console(quiet=True))
    start = time.perf_counter()
    runs.log("bench-cost", trial(0, epochs))  # the study's parent run made here
    first = time.perf_counter() - start
    times: dict[int, list[float]] = {epochs: [], 1: []}
    for n in range(1, logged + 1):
        for length in (epochs, 1):
            start = time.perf_counter()
            runs.log("bench-cost", trial(n, length))
            times[length].append(time.perf_counter() - start)
    long, short = (statistics.median(times[k]) * 1000 for k in (epochs, 1))
    return {
        "first_trial_ms": round(first * 1000, 1),
        "trial_ms": round(long, 2),
        "trial_1_epoch_ms": round(short, 2),
        "epoch_ms": round((long - short) / max(epochs - 1, 1), 3),
        "epochs": epochs,
    }


def searches(args, url: str, tmp: Path) -> dict:
    times: dict[str, list[float]] = {"without": [], "with": []}
    for r in range(args.repeats):
        for variant in ("without", "with"):
            folder = Path(tempfile.mkdtemp(dir=tmp))
            env = _common.hpo_env(folder / "cache", HPO_DATA_DIR=str(Path(args.data_dir).resolve()))
            argv = ["optimize", "imdb", "--trials", str(args.trials), "--seed", "0"]
            argv += ["--storage", f"sqlite:///{folder}/hpo.db", "--study", f"bench-{variant}-{r}"]
            argv += ["--mlflow", url] if variant == "with" else []
            seconds = _common.run_hpo(argv, env, cwd=folder)
            times[variant].append(seconds)
            print(f"search {r} {variant:>7} --mlflow: {seconds:7.2f} s", flush=True)
    out = {}
    for variant, values in times.items():
        out[variant] = {
            "seconds": [round(v, 2) for v in values],
            "median": round(statistics.median(values), 2),
            "spread": round(max(values) - min(values), 2),
        }
    return out


def main() -> None:
    args = parser().parse_args()
    _common.needs(args.data_dir, "imdb.npz")
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp))
        try:
            cost = logging_cost(url, args.logged, args.epochs)
            print(
                f"a trial logged: {cost['trial_ms']} ms ({args.epochs} epochs), "
                f"{cost['trial_1_epoch_ms']} ms (1 epoch): {cost['epoch_ms']} ms an epoch; "
                f"the first (its study's run made): {cost['first_trial_ms']} ms",
                flush=True,
            )
            wall = searches(args, url, Path(tmp))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    difference = wall["with"]["median"] - wall["without"]["median"]
    noise = max(wall["with"]["spread"], wall["without"]["spread"])
    print(
        f"IMDB {args.trials} trials: median {wall['without']['median']} s without, "
        f"{wall['with']['median']} s with --mlflow ({difference:+.2f} s; spread up to {noise} s)"
    )
    _common.emit(
        {
            "bench": "mlflow_cost",
            "logging": cost,
            "imdb_trials": args.trials,
            "searches": wall,
            "difference_s": round(difference, 2),
            "noise_s": noise,
            "within_noise": abs(difference) <= noise,
        }
    )


if __name__ == "__main__":
    main()
