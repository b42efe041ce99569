"""Ctrl-C or SIGTERM during a study: the first stops after the current epoch, a second at once.

A KeyboardInterrupt raised at an arbitrary point can land inside a weakref callback or a
finalizer of Keras' objects, where Python prints "Exception ignored" and carries on, so a
single Ctrl-C could be lost. Instead the first signal only sets a flag, which the objective
checks after each epoch (raising KeyboardInterrupt at a known, safe point) and the worker loop
checks before starting a trial. SIGTERM (what `docker stop`, Kubernetes and systemd send) is
handled the same way; the process then exits 128 + the signal's number, as shells expect:
130 after SIGINT, 143 after SIGTERM.

A process that started worker processes (`--workers`, `--slots`) passes each stop signal on
to them as it came, SIGINT as SIGINT and SIGTERM as SIGTERM: `docker stop`, Kubernetes and
`kill PID` signal the parent alone, and its children run in their own process group
(hpo.search.local_workers.spawn), so a terminal's Ctrl-C does not reach them twice either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterable
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)

Child = subprocess.Popen | int  # a worker process started here, or a PID inherited by an exec


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
        self.children: list[Child] = []  # worker processes whose stop follows this one's
        self._told: set[int] = set()  # PIDs of the children already asked to stop

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

    def adopt(self, children: Iterable[Child]) -> None:
        """Pass this process's stop signals on to `children`, the worker processes it started
        (or inherited across a restart); one that already came is passed on now."""
        self.children.extend(children)
        if self.requested:
            self.tell_children()

    def tell_children(self, signum: int | None = None) -> None:
        """Ask each child not asked yet to stop, with `signum` (else the signal received, else
        SIGINT): after an error, or when this process stops without a signal of its own."""
        self._send(signum or self.signum or signal.SIGINT, again=False)

    def _send(self, signum: int, again: bool) -> None:
        for child in self.children:
            pid = child if isinstance(child, int) else child.pid
            if pid in self._told and not again:
                continue
            self._told.add(pid)
            if isinstance(child, int):  # not reaped before it is waited for: still this PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signum)
            else:
                child.send_signal(signum)  # nothing to one that ended

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        second = self.requested
        self.requested = True
        self.signum = self.signum or signum
        self._send(signum, again=True)  # every signal: a second one ends the children at once
        if second or not self.children:
            # A second signal is immediate: Ctrl-C raises KeyboardInterrupt, SIGTERM
            # terminates. Without children that needs no handler of ours, so none is kept.
            for each in SIGNALS:
                if each in self._previous:
                    signal.signal(each, self._previous[each])
        if second:
            signal.raise_signal(signum)  # handled as the previous handler would

    def check(self) -> None:
        """Raise KeyboardInterrupt here if Ctrl-C (or SIGTERM) was received."""
        if self.requested:
            raise KeyboardInterrupt
