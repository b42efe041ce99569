"""`hpo analyze --mlflow URI`: the handed-over model in MLflow, where a team's runs live.

The analysis is a run nested under the study's parent run (hpo.search.tracking: the one its
trials are logged under), holding the model as `mlflow.keras` saves it (Keras 3's flavor: a
.keras file, with its signature and an input example of the test rows as the model takes
them), the handed-over model's test metrics, the best trial's parameters, and the report
folder as artifacts. The model is registered in the Model Registry under the study's name,
its version tagged `hpo.handover` (best, seeds or trial-ensemble).

MLflow failing (a server down, a store that refuses) is one warning line: the analysis, its
report and its model on disk stand.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import tempfile
from pathlib import Path

import optuna
from rich.console import Console

from hpo.data.arrays import Prepared
from hpo.optuna_private import rdb_storage_of, study_id
from hpo.results.analysis import AnalysisResult
from hpo.results.prediction import load_keras
from hpo.search import tracking
from hpo.study.studyfile import StudySpec

HANDOVER_TAG = "hpo.handover"  # the registered model version's kind: best, seeds, trial-ensemble
EXAMPLE_ROWS = 5  # test rows kept as the model's input example


def log_analysis(
    uri: str,
    study: optuna.Study,
    result: AnalysisResult,
    spec: StudySpec,
    data: Prepared,
    console: Console,
) -> str | None:
    """Log `study`'s analysis `result` to MLflow at `uri` and register its model; the
    registered version, or None when MLflow failed (one warning line)."""
    warner = tracking.Warner(uri, console, "the analysis")
    try:
        with tracking.quiet():
            claim = tracking.ParentClaim(rdb_storage_of(study), study_id(study), uri)
            version = log(uri, claim, result, spec, data)
    except Exception as exc:  # any error of MLflow or its transport: a warning
        warner.failed(exc, "the analysis stands")
        return None
    console.print(
        f"mlflow: model {result.study!r} version {version} registered "
        f"({HANDOVER_TAG}={result.handed.name})",
        highlight=False,
    )
    return version


def test_metrics(result: AnalysisResult) -> dict[str, float]:
    """The handed-over model's test metrics (test_*), and the best trial's retrained mean
    (best_trial_test_*) beside them."""
    best = result.best
    single = {m: best.mean(m) for m in (best.runs[0] if best.runs else {})}
    handed = {
        "best": single,
        "seeds": best.ensemble or single,
        "trial-ensemble": result.handed.trial_ensemble_test or single,
    }.get(result.handed.name, single)
    metrics = {f"test_{m}": float(v) for m, v in handed.items()}
    return metrics | {f"best_trial_test_{m}": float(v) for m, v in single.items()}


def requirements() -> list[str]:
    """The model's pip requirements: Keras and its backend at the versions here (given, so
    MLflow does not infer them in a subprocess)."""
    from hpo.backend import import_keras

    keras = import_keras()
    backend = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(
        keras.config.backend()
    )
    wanted = ["keras", "numpy", *([backend] if backend else [])]
    return [f"{name}=={importlib.metadata.version(name)}" for name in wanted]


def log(
    uri: str, claim: tracking.ParentClaim, result: AnalysisResult, spec: StudySpec, data: Prepared
) -> str:
    """The analysis run (under the parent run `claim` settles), its model logged and
    registered; the registered version."""
    import mlflow.exceptions
    import mlflow.keras
    from mlflow.entities import Metric
    from mlflow.models import infer_signature

    client = tracking.client(uri)
    name, kind = result.study, result.handed.name
    exp_id, parent = tracking.study_run(client, name, claim, tracking.study_params(spec))
    tags = {
        tracking.PARENT_TAG: parent,
        tracking.STUDY_TAG: name,
        tracking.ROLE_TAG: "analysis",
        HANDOVER_TAG: kind,
    }
    run_id = client.create_run(exp_id, tags=tags, run_name=f"analysis ({kind})").info.run_id
    best = result.best
    params = {
        "handover": kind,
        "best_trial": best.trial,
        "epochs": best.epochs,
        "seeds": len(best.seeds),
        **{f"param.{k}": v for k, v in best.params.items()},
    }
    stamp = tracking.ms(None)
    metrics = [Metric(k, v, stamp, 0) for k, v in test_metrics(result).items()]
    tracking.log_batch(client, run_id, metrics, params)
    client.log_artifacts(run_id, str(result.folder), "report")

    model = load_keras(result.model_path)  # the very file handed over
    example = data.x_test[:EXAMPLE_ROWS]
    signature = infer_signature(example, model.predict(example, verbose=0))
    # mlflow.keras.save_model, then the folder logged: mlflow.keras.log_model fails on any
    # input example (it writes the example before it makes the model's folder: mlflow#16183)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        mlflow.keras.save_model(
            model,
            str(folder),
            signature=signature,
            input_example=example,
            pip_requirements=requirements(),
        )
        client.log_artifacts(run_id, str(folder), "model")
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # registered before
        client.create_registered_model(name, tags={tracking.STUDY_TAG: name})
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/model",
        run_id=run_id,
        tags={HANDOVER_TAG: kind, tracking.STUDY_TAG: name},
    ).version
    client.set_terminated(run_id, "FINISHED")
    return str(version)
