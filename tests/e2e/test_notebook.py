"""examples/quickstart.ipynb runs end to end (on tiny settings), so the notebook cannot rot."""

from __future__ import annotations

import shutil

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

EXAMPLES = REPO / "examples"


def test_quickstart_notebook_runs(workdir):
    for name in ("houses.toml", "houses.csv", "houses_test.csv", "houses_new.csv"):
        shutil.copy(EXAMPLES / name, workdir / name)
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = 'TRIALS = 2\nMAX_EPOCHS = 3\nSTORAGE = "sqlite:///quickstart.db"'
    try:
        NotebookClient(
            notebook, timeout=300, resources={"metadata": {"path": str(workdir)}}
        ).execute()
    except Exception as exc:  # the failing cell's error, not nbclient's page of context
        pytest.fail(f"the notebook failed: {str(exc)[-2000:]}")
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {})) for o in outputs)
    assert "test MAE" in text and "prediction" in text
    assert "trial ensemble" in text and "handed over: trial-ensemble" in text  # the default
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the learning curves
