"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class HpoError(Exception):
    """A problem the user can fix: bad input, missing data, unreachable storage."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's message cut to one line, for a one-line error (its type if empty)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
