"""The one exception the harness raises for bad input: its message says what to do."""


class HarnessError(Exception):
    """A user-facing error (bad option, missing file, offline hub...): printed without a trace."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an experiment; `message` says truly what was kept and where."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
