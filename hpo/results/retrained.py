"""What retraining a configuration yields: its test metrics per seed and of their ensemble.

The type sits below the modules that use it: analysis makes these results, report and one_factor
write them up.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


def test_metrics(task: str) -> tuple[str, ...]:
    """The test-set figures reported: accuracy and loss, or MAE and MSE (as the book does)."""
    return ("mae", "mse") if task == "regression" else ("accuracy", "loss")


@dataclass
class Retrained:
    """One configuration retrained with each seed, and its test metrics."""

    trial: int | None  # the trial it came from (None for an experiment variant)
    params: dict[str, Any]
    epochs: int
    seeds: list[int]
    runs: list[dict[str, float]] = field(default_factory=list)  # test metrics per seed
    model: Any = None  # the first seed's model, kept for saving
    models: list[Any] = field(default_factory=list)  # every seed's model, for an ensemble
    ensemble: dict[str, float] | None = None  # test metrics of the seeds' mean prediction
    ensemble_model: Any = None

    def mean(self, metric: str) -> float:
        return statistics.fmean(run[metric] for run in self.runs)

    def std(self, metric: str) -> float:
        values = [run[metric] for run in self.runs]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what is written into the study's user attrs and the report."""
        metrics = sorted(self.runs[0]) if self.runs else []
        summary = {
            "trial": self.trial,
            "epochs": self.epochs,
            "seeds": self.seeds,
            "params": self.params,
            "test": {
                m: {"mean": self.mean(m), "std": self.std(m), "runs": [run[m] for run in self.runs]}
                for m in metrics
            },
        }
        if self.ensemble is not None:
            summary["seed_ensemble_test"] = self.ensemble
        return summary
