"""`--workers auto`, GPU memory shares and what each trial records about its worker."""

import os

import pytest

from hpo import resources


def test_auto_workers_from_cores_and_gpus():
    assert resources.auto_workers(cpus=1, gpus=0) == 1
    assert resources.auto_workers(cpus=2, gpus=0) == 2
    assert resources.auto_workers(cpus=32, gpus=0) == 8
    assert resources.auto_workers(cpus=16, gpus=1) == 8
    assert resources.auto_workers(cpus=6, gpus=1) == 6  # a core per worker to dispatch from
    assert resources.auto_workers(cpus=64, gpus=2) == 16


def test_parse_workers():
    assert resources.parse_workers("auto", gpus=1) == min(8, os.cpu_count() or 1)
    assert resources.parse_workers("2", gpus=0) == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="positive number or auto"):
            resources.parse_workers(bad, gpus=0)


def test_gpu_count_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert resources.gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert resources.gpu_count() == 0


def test_memory_share_per_gpu_and_user_value_kept(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert resources.share_gpu_memory(4, gpus=1)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
    assert resources.share_gpu_memory(16, gpus=2)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.113"
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    assert resources.share_gpu_memory(4, gpus=1)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"
