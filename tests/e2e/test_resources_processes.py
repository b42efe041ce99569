"""A process' resident memory as hpo's recycling reads it, of this process and of another
(the rest of hpo.resources: tests/unit/test_resources.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpo import resources


def test_resident_memory_follows_what_the_process_touches():
    import numpy as np

    before = resources.resident_mb()
    assert 10 < before < 64_000
    block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MB, every page written
    assert resources.resident_mb() - before > 150
    del block
    assert resources.resident_mb(os.getpid()) == pytest.approx(resources.resident_mb(), rel=0.05)
    holds_60_mb = "b = b'x' * 60 * 2**20; print('ready', flush=True); import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", holds_60_mb], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert 60 < resources.resident_mb(child.pid) < 200  # that process, not this one
    finally:
        child.kill()
        child.wait()
    assert resources.resident_mb(child.pid) is None  # ended
