"""The installed command's own entry point, as a process (the rest of the command and docs
checks run in this process: tests/unit/test_docs.py)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

import hpo
from hpo.cli import app


def test_help_and_version():
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    assert result.output.strip().splitlines()[-1].strip().startswith("Example: hpo optimize")
    # Through the real entry point: the installed distribution's version.
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    from importlib.metadata import version

    assert proc.stdout.strip() == f"hpo {version('hpo')}" == f"hpo {hpo.__version__}"
