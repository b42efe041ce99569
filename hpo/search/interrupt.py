"""Ctrl-C during a study: the first press stops after the current epoch, a second at once.

A KeyboardInterrupt raised at an arbitrary point can land inside a weakref callback or a
finalizer of Keras' objects, where Python prints "Exception ignored" and carries on, so a
single Ctrl-C could be lost. Instead the first press only sets a flag, which the objective
checks after each epoch (raising KeyboardInterrupt at a known, safe point) and the worker loop
checks before starting a trial.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class GracefulInterrupt:
    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> GracefulInterrupt:
        # Only take over a default handler: a job started with SIGINT ignored stays so.
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second press is immediate

    def check(self) -> None:
        """Raise KeyboardInterrupt here if Ctrl-C was pressed."""
        if self.requested:
            raise KeyboardInterrupt
