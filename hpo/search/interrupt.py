"""Ctrl-C or SIGTERM during a study: the first stops after the current epoch, a second at once.

A KeyboardInterrupt raised at an arbitrary point can land inside a weakref callback or a
finalizer of Keras' objects, where Python prints "Exception ignored" and carries on, so a
single Ctrl-C could be lost. Instead the first signal only sets a flag, which the objective
checks after each epoch (raising KeyboardInterrupt at a known, safe point) and the worker loop
checks before starting a trial. SIGTERM (what `docker stop`, Kubernetes and systemd send) is
handled the same way; the process then exits 128 + the signal's number, as shells expect:
130 after SIGINT, 143 after SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int | None) -> int:
    """The Unix exit status after `signum` (130 when none was recorded: an interrupt)."""
    return 128 + (signum or signal.SIGINT)


class GracefulInterrupt:
    """Entered once around a whole command (start-up included: a signal while TensorFlow is
    imported is not lost), and again by the loops inside it, which then share the outer one."""

    _active: GracefulInterrupt | None = None

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the signal that asked to stop
        self._previous: dict[int, object] = {}
        self._outer = False

    def __enter__(self) -> GracefulInterrupt:
        if GracefulInterrupt._active is not None:
            return GracefulInterrupt._active
        # Only take over a default handler: a job started with SIGINT ignored stays so.
        if threading.current_thread() is not threading.main_thread():
            return self
        GracefulInterrupt._active, self._outer = self, True
        for signum in SIGNALS:
            default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            if signal.getsignal(signum) is default:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._outer:
            return
        GracefulInterrupt._active = None
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signum = self.signum or signum
        # A second signal is immediate: Ctrl-C raises KeyboardInterrupt, SIGTERM terminates.
        for each in SIGNALS:
            if each in self._previous:
                signal.signal(each, self._previous[each])

    def check(self) -> None:
        """Raise KeyboardInterrupt here if Ctrl-C (or SIGTERM) was received."""
        if self.requested:
            raise KeyboardInterrupt
