"""`python -m hpo`: the hpo command, and how a worker that restarts itself (exec) starts again.

A worker restarting itself holds Ctrl-C and SIGTERM across the exec (hpo.search.local_workers); here
they are let through, and one that arrived then or lands while the new process is still
importing (seconds: TensorFlow) ends it with the resume line, not a traceback or silence.
"""

import contextlib
import os
import shlex
import signal
import sys

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signum)


def _shown(arg: str) -> str:
    """`arg` safe to print: a URL's password and secret query values hidden, as in every resume
    line (hpo.search.storage.redact, imported only now: the signals are ignored by then)."""
    if "://" not in arg:
        return arg
    try:
        from hpo.search.storage import redact_arg
    except Exception:  # an import cut short: show nothing of the URL
        return "***"
    return redact_arg(arg)


def _as_a_child_worker() -> None:
    """A worker started by `--workers`/`--slots` (hpo.search.local_workers.spawn): Ctrl-C back
    to Python's default, whatever it inherited (a pool started with `&` from a script has it
    ignored), and SIGTERM when its parent dies without passing a stop on (SIGKILL, OOM); a
    parent already gone by now is a stop too."""
    parent = os.environ.pop("HPO_PARENT_PID", None)  # internal
    if parent is None:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if str(os.getppid()) != parent:
        raise KeyboardInterrupt(signal.SIGTERM)


signal.signal(signal.SIGTERM, _stop)
try:
    _as_a_child_worker()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    from hpo.cli import main
except KeyboardInterrupt as exc:
    # Stopping now: a signal repeated (or delivered again) while exiting changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signum = exc.args[0] if exc.args else signal.SIGINT
    shown = [_shown(arg) for arg in sys.argv[1:]]
    print(
        f"interrupted while starting: resume with: {shlex.join(['hpo', *shown])}",
        file=sys.stderr,
    )
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command takes it over (hpo.search.interrupt)

main()
