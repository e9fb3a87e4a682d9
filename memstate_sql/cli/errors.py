"""Exit codes and the one error type the commands raise for the command line."""

from __future__ import annotations

OK = 0
#: The operation failed (not found, conflict, a hook or the database refused, aborted).
FAILED = 1
#: Bad input: arguments, filters, files (click's own usage errors exit 2 as well).
USAGE = 2
#: The database cannot be reached (server down, wrong credentials, missing file or driver).
UNREACHABLE = 3
#: The database's schema is missing, older or newer than this memstate-sql (or `check` failed).
SCHEMA = 4
#: Interrupted (Ctrl-C).
INTERRUPTED = 130


class CliError(Exception):
    """A failure reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code
