"""`python -m hpo`: the hpo command, and how a worker that restarts itself (exec) starts again.

A Ctrl-C or SIGTERM that arrives while the process imports (seconds: TensorFlow) is held, not
raised: a KeyboardInterrupt raised inside an import can be swallowed by code that catches
everything or by a finalizer ("Exception ignored"), and the process would go on as if never
asked to stop. Once the imports are done a held signal ends the process with the resume line,
not a traceback or silence. A worker restarting itself blocks both signals across the exec
(hpo.search.workers); here they are let through, and one held then ends it before the imports.
"""

import re
import shlex
import signal
import sys

_held: list[int] = []  # the signals received while starting


def _hold(signum: int, frame: object) -> None:
    _held.append(signum)


def _stop_if_asked() -> None:
    if not _held:
        return
    # Stopping now: a signal repeated (or delivered again) while exiting changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The database password is hidden, as in every resume line (hpo.search.launch).
    shown = [re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", arg) for arg in sys.argv[1:]]
    print(
        f"interrupted while starting: resume with: {shlex.join(['hpo', *shown])}",
        file=sys.stderr,
    )
    sys.exit(128 + _held[0])


# Only a default Ctrl-C handler is taken over: a job started with SIGINT ignored stays so.
_interruptible = signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _interruptible:
    signal.signal(signal.SIGINT, _hold)
signal.signal(signal.SIGTERM, _hold)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
_stop_if_asked()  # a signal held across a worker's restart: no need to import first
try:
    from hpo.cli import main
except KeyboardInterrupt:  # a library put the default handler back while importing
    _held.append(signal.SIGINT)
# The command takes the signals over (hpo.search.interrupt) from their defaults.
if _interruptible:
    signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
_stop_if_asked()

main()
