"""The one exception root of stackbook and its subclasses.

Each subclass carries the exit code the CLI maps it to (``cli.py`` is the only
place where errors become exit codes and messages for people).
"""

from __future__ import annotations


class StackbookError(Exception):
    """Root of every error stackbook raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, runbook: str | None = None, env: str | None = None):
        super().__init__(message)
        self.runbook = runbook
        self.env = env


class UsageError(StackbookError):
    """Bad usage: nothing was executed (exit 2)."""

    exit_code = 2


class NotebookError(UsageError):
    """A notebook that cannot be read or has no valid parameters cell."""


class ParameterError(UsageError):
    """An unknown parameter or a value that does not convert to its type."""


class SecretError(UsageError):
    """A declared secret is missing. The message names it, never its value."""


class EnvironmentFileError(UsageError):
    """An environment file that is missing or malformed."""


class DatabaseUnavailable(UsageError):
    """No database to talk to (the local cluster is down and DATABASE_URL is unset)."""


class RefusedError(StackbookError):
    """The run was refused: an exclusive runbook is running, or approval is missing (exit 3)."""

    exit_code = 3


class RunFailed(StackbookError):
    """The runbook ran and failed, timed out or was cancelled (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, record: dict | None = None, **kw):
        super().__init__(message, **kw)
        self.record = record or {}


class ClusterError(StackbookError):
    """The project-local PostgreSQL could not be started or stopped."""

    exit_code = 1
