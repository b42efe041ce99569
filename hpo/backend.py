"""Import Keras without the native start-up chatter of its backend.

TensorFlow's C++ runtime writes notices (oneDNN, a failed cuInit on machines without a GPU)
straight to file descriptor 2 before any logging setting applies, so the import runs with
stderr pointed at a temporary file, which is replayed only if the import fails.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

from hpo import cache

os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # share a GPU instead of taking it


def use_jax_compilation_cache() -> None:
    """Point JAX's persistent compilation cache at hpo's cache folder, unless the user chose.

    Under KERAS_BACKEND=jax a trial's first epoch is mostly XLA compilation; with the cache a
    later trial (or a new worker) of the same shapes loads the compiled program from disk
    instead (shared/gpu/README.md: 2.6–2.9 s instead of 3.7–4.4 s a 10-epoch trial on an H100;
    README: figures on this CPU). The variables are read when jax is imported, so this runs
    before keras is. Other backends ignore them.
    """
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache.root() / "jax"))
    # JAX caches only compilations slower than 1 s by default; a small model compiles faster.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except KeyboardInterrupt:  # the user's Ctrl-C: the notices would only hide it
            raise
        except BaseException:  # a real error: show what the backend said
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read()[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_keras():
    """keras, imported once, with the backend's native start-up output suppressed."""
    if "keras" not in sys.modules:
        use_jax_compilation_cache()
        # TensorFlow's Python logger warns about tf.function retracing, which hpo does on
        # purpose (one model per trial); keep real errors.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        with silenced_stderr():
            import keras

            keras.backend.backend()  # the backend module is loaded by now
            keras.ops.zeros(1)  # first op: some runtimes print their notices here
        if _without_tensorflow:
            _hide_tensorflow(keras)
    import keras

    return keras


_without_tensorflow = False  # set by hpo's own commands: without_tensorflow()


def without_tensorflow() -> None:
    """In this process, let Keras on JAX or torch run without TensorFlow, unless something
    imported it already. For hpo's own commands (hpo.cli), not for a user's process (a
    notebook), whose Keras may need TensorFlow for what hpo never uses (TextVectorization).

    Whatever the backend, Keras imports TensorFlow when it is installed (hpo depends on it)
    the first time it serializes a layer (hpo.train.programs keys and copies models so) or
    seeds its generators, only to ask whether an object is a tf.TensorShape and to seed
    TensorFlow too. That import is 5 s of CPU and 470 MB of memory in every JAX worker on this
    project's machine, for nothing a JAX or torch trial uses. The GPU image, which has no
    TensorFlow, runs Keras this way already."""
    global _without_tensorflow
    _without_tensorflow = True
    if "keras" in sys.modules:  # imported before: else import_keras does it, once
        _hide_tensorflow(sys.modules["keras"])


def _hide_tensorflow(keras) -> None:
    """Under another backend, tell Keras that TensorFlow is not installed. Keras' lazy module
    is private: if it moves, this does nothing, and TensorFlow is imported as before."""
    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        return
    from keras.src.utils import module_utils

    lazy = getattr(module_utils, "tensorflow", None)
    if isinstance(lazy, module_utils.LazyModule) and lazy.module is None:
        lazy._available = False


def set_random_seed(seed: int) -> None:
    """keras.utils.set_random_seed, with TensorFlow's start-up notices kept off the terminal:
    Keras seeds TensorFlow too whenever it is installed, whatever the backend, so under JAX or
    torch the first call imports it (a few seconds, once per process), except in hpo's own
    commands (without_tensorflow)."""
    keras = import_keras()
    quiet = contextlib.nullcontext() if "tensorflow" in sys.modules else silenced_stderr()
    with quiet:
        keras.utils.set_random_seed(seed)


def freeze_heap() -> None:
    """Keep every object alive now out of the garbage collector's full collections.

    A worker holds hundreds of thousands of objects once TensorFlow and Keras are imported, and
    a full collection, which Optuna runs after every trial (gc_after_trial), walked them all, a
    noticeable part of a Boston search's time (docs/lab/performance.md). Frozen, they
    are not walked again; a trial's own garbage is still collected, and frozen objects are
    still freed by reference counting (only cycles among them are not: the modules and data
    of a worker's life). Called by a worker once the backend and the data are loaded."""
    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()
