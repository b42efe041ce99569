"""How many programs a finished search's trials compiled, and would with other program keys.

    python bench/archive/program_replay.py STORAGE.db [...] [--study bench] [--keep 8]

Replays each storage's trials, in order, through a worker's program cache (the last `--keep`
structures, least recently used out, as hpo.train.programs.DeviceCache keeps them) and counts
the new programs under each key: what hpo compiles a program for (layers, units, activation,
loss, optimizer, batch size), and the same with a parameter left out, as if the program took it
as an input (the loss, the activation) or padded every width to one. Storages come from
`bench/whole_search.py --keep DIR` (study "bench"). One worker's order: with several workers
each keeps its own cache.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import optuna

KEY = ("layers", "units", "activation", "loss", "optimizer", "batch_size")
VARIANTS = {
    "hpo's key": KEY,
    "without the loss": tuple(k for k in KEY if k != "loss"),
    "nor the activation": tuple(k for k in KEY if k not in ("loss", "activation")),
    "without the width": tuple(k for k in KEY if k != "units"),
}


def new_programs(
    trials: list[optuna.trial.FrozenTrial], fields: tuple[str, ...], keep: int
) -> list[bool]:
    """For each trial, in order, whether it compiled a new program: its `fields` were not among
    the last `keep` structures a worker's cache holds (least recently used out)."""
    cache: OrderedDict[tuple, None] = OrderedDict()
    flags = []
    for trial in trials:
        key = tuple(trial.params.get(field) for field in fields)
        flags.append(key not in cache)
        cache[key] = None
        cache.move_to_end(key)
        if len(cache) > keep:
            cache.popitem(last=False)
    return flags


def kept_searches(description: str) -> tuple[argparse.Namespace, list[tuple[str, list]]]:
    """The command line's arguments, and each storage it names with its trials in order."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("storages", nargs="+", help="SQLite files of finished searches")
    parser.add_argument("--study", default="bench")
    parser.add_argument("--keep", type=int, default=8, help="programs a worker keeps")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searches = []
    for path in args.storages:
        study = optuna.load_study(study_name=args.study, storage=f"sqlite:///{path}")
        searches.append((path, sorted(study.trials, key=lambda t: t.number)))
    return args, searches


def main() -> None:
    args, searches = kept_searches(__doc__.splitlines()[0])
    print("storage  trials  " + "  ".join(VARIANTS))
    for path, trials in searches:
        counts = [sum(new_programs(trials, fields, args.keep)) for fields in VARIANTS.values()]
        print(f"{path}  {len(trials)}  " + "  ".join(str(n) for n in counts))


if __name__ == "__main__":
    main()
