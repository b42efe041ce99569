"""TensorFlow's compiled programs kept on disk (hpo.xla_cache), shared by processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from hpo import xla_cache

# One XLA program (a trial long enough for engine.use_xla) trained for 2 epochs in a fresh
# process, which prints its weights and what TensorFlow was told.
SCRIPT = textwrap.dedent(
    """
    import json, os
    import numpy as np
    from hpo.backend import import_keras, set_random_seed
    from hpo.data.prepared import Prepared
    from hpo.train import engine
    from hpo.train import model as model_lib

    import_keras()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5)).astype(np.float32)
    data = Prepared("synthetic", "regression", 1, 1.0, 5, False, x, y, x[:5], y[:5])
    params = {"layers": 2, "units": 16, "activation": "relu", "loss": "mse",
              "optimizer": "adam", "learning_rate": 0.01, "batch_size": 16, "dropout": 0.0}
    set_random_seed(3)
    model = model_lib.build(params, data)
    trainer = engine.FusedTrainer(
        model, loss="mse", task="regression", train=(x[:70], y[:70, None]),
        validation=(x[70:], y[70:, None]), batch_size=16, validation_batch_size=256, seed=0,
        epochs=10**6)
    trainer.fit(2)
    print(json.dumps({"xla": trainer.xla, "flags": os.environ.get("TF_XLA_FLAGS", ""),
                      "weights": [w.tolist() for w in model.get_weights()]}))
    """
)


def train_in_a_new_process(cache, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_XLA_FLAGS",)}
    environment.update({"HPO_CACHE_DIR": str(cache), "KERAS_BACKEND": "tensorflow", **env})
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def entries(cache) -> dict[str, int]:
    """The shared folders' compiled programs: name → modification time."""
    return {p.name: p.stat().st_mtime_ns for p in (cache / "xla").glob("*/*.pb")}


def test_a_new_process_loads_the_programs_an_earlier_one_compiled(tmp_path):
    cache = tmp_path / "cache"
    first = train_in_a_new_process(cache)
    assert first["xla"]
    assert "--tf_xla_persistent_cache_directory=" in first["flags"]
    compiled = entries(cache)
    assert compiled, "no compiled program was published to the shared folder"
    # Each process's private folder is gone at its exit; the published entries stay.
    assert [p.name for p in (cache / "xla").iterdir()] == [xla_cache.shared_folder().name]

    second = train_in_a_new_process(cache)
    assert entries(cache) == compiled, "the second process compiled (and wrote) anew"
    assert second["weights"] == first["weights"]  # the loaded program trains the same


def test_the_cache_stays_off_when_asked_or_when_the_user_chose_a_folder(tmp_path):
    off = train_in_a_new_process(tmp_path / "off", HPO_XLA_CACHE="0")
    assert "persistent_cache" not in off["flags"]
    assert not (tmp_path / "off" / "xla").exists()

    mine = tmp_path / "mine"
    chosen = f"--tf_xla_persistent_cache_directory={mine}"
    used = train_in_a_new_process(tmp_path / "other", TF_XLA_FLAGS=chosen)
    assert used["flags"] == chosen
    assert list(mine.glob("*.pb")), "TensorFlow did not use the user's folder"
    assert not (tmp_path / "other" / "xla").exists()


def test_entries_are_linked_whole_and_stale_private_folders_removed(tmp_path):
    shared, private = tmp_path / "shared", tmp_path / ".private"
    shared.mkdir()
    private.mkdir()
    (private / "a.pb").write_bytes(b"program a")
    (private / ".a.pb.123.tmp").write_bytes(b"half")  # not an entry
    (shared / "b.pb").write_bytes(b"program b")
    xla_cache._link_new(private, shared)
    xla_cache._link_new(shared, private)
    assert sorted(p.name for p in shared.glob("*.pb")) == ["a.pb", "b.pb"]
    assert (private / "b.pb").read_bytes() == b"program b"
    assert (shared / "a.pb").stat().st_ino == (private / "a.pb").stat().st_ino  # a hard link

    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f".{host}-{gone.pid}-x1"
    alive = tmp_path / f".{host}-{os.getpid()}-x2"
    elsewhere = tmp_path / f".another-host-{gone.pid}-x3"
    for folder in (dead, alive, elsewhere):
        folder.mkdir()
    xla_cache._remove_stale(tmp_path)
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists()


@pytest.mark.parametrize("flags", ["", "--tf_xla_auto_jit=0"])
def test_configure_keeps_the_users_other_flags(tmp_path, monkeypatch, flags):
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TF_XLA_FLAGS", flags)
    monkeypatch.delenv("HPO_XLA_CACHE", raising=False)
    monkeypatch.setattr(xla_cache, "_folders", None)
    monkeypatch.setattr(xla_cache.atexit, "register", lambda fn: None)
    xla_cache.configure()
    shared, private = xla_cache._folders
    assert os.environ["TF_XLA_FLAGS"] == f"{flags} {xla_cache.FLAG}={private}".strip()
    assert shared == xla_cache.shared_folder() and private.parent == shared.parent
    xla_cache._close()
    assert not private.exists()
