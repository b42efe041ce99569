"""Import Keras without the native start-up chatter of its backend.

TensorFlow's C++ runtime writes notices (oneDNN, a failed cuInit on machines without a GPU)
straight to file descriptor 2 before any logging setting applies, so the import runs with
stderr pointed at a temporary file, which is replayed only if the import fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # share a GPU instead of taking it


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
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
        # TensorFlow's Python logger warns about tf.function retracing, which hpo does on
        # purpose (one model per trial); keep real errors.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        with silenced_stderr():
            import keras

            keras.backend.backend()  # the backend module is loaded by now
            keras.ops.zeros(1)  # first op: some runtimes print their notices here
    import keras

    return keras
