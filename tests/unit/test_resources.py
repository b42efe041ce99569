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


def test_recycle_settings():
    from hpo.errors import HpoError
    from hpo.search.local_workers import RECYCLE_GROWTH_MB, Recycler

    assert (Recycler("auto").trials, Recycler("auto").growth_mb) == (None, RECYCLE_GROWTH_MB)
    assert (Recycler("3").trials, Recycler(3).growth_mb) == (3, None)
    assert Recycler("0").due() is None and Recycler(None).trials is None
    for bad, says in (("-1", "at least 0"), ("often", "auto or a number")):
        with pytest.raises(HpoError, match=says):
            Recycler(bad)
    every_two = Recycler(2)
    every_two.add_trials()
    assert every_two.due() is None
    every_two.add_trials()
    assert every_two.due() == "after 2 trials"


def test_auto_recycles_once_memory_grew_after_the_first_trial(monkeypatch):
    """The baseline is the memory after the first trial (its data, its first programs); only
    what later trials add counts."""
    from hpo.search import local_workers

    memory = iter([900.0, 1_500.0, 2_000.0])
    monkeypatch.setattr(local_workers, "resident_mb", lambda: next(memory))
    recycler = local_workers.Recycler("auto")
    assert recycler.due() is None  # no trial yet: no baseline, memory not read
    recycler.add_trials()  # baseline 900 MB
    assert recycler.due() is None  # 1,500: grew 600 MB
    recycler.add_trials()
    assert recycler.due() == "after 2 trials: its memory grew by 1,100 MB"  # 2,000


def test_a_frozen_heap_still_collects_what_trials_make_later():
    """backend.freeze_heap: what lives at the freeze is left out of full collections (a
    worker's 430,000 imported objects), while a cycle made afterwards is still collected."""
    import gc
    import weakref

    from hpo.backend import freeze_heap

    class Node:
        pass

    try:
        tracked = len(gc.get_objects())  # what a full collection walks
        freeze_heap()
        assert gc.get_freeze_count() > tracked // 2
        assert len(gc.get_objects()) < tracked // 10
        cycle = Node()
        cycle.self = cycle
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
