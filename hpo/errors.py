"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class HpoError(Exception):
    """A problem the user can fix: bad input, missing data, unreachable storage."""
