"""The one exception the harness raises for bad input: its message says what to do."""


class HarnessError(Exception):
    """A user-facing error (bad option, missing file, offline hub...): printed without a trace."""
