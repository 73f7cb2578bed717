"""What every command module shares: error handling, JSON output, tables, signals.

``handle_errors`` is the one place where a ``StackbookError`` becomes its exit code
and a one-line message (and, with ``--json``, a JSON error document on stdout).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from typing import Any

import click

from stackbook.core.errors import StackbookError

EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer stopped by SIGPIPE (`git log | head`)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def handle_errors(fn):
    """Map StackbookError to its exit code and message (and a JSON error document with --json)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StackbookError as exc:
            if kwargs.get("as_json"):
                emit_json({"error": str(exc), "exit_code": exc.exit_code, "kind": type(exc).__name__})
            click.echo(f"stackbook: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except BrokenPipeError:  # the reader went away (`stackbook runs | head`): stop quietly, as cat does
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush into the closed pipe at exit
            sys.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:  # a path that cannot be read or written, a full disk: no traceback, exit 1
            where = f": {exc.filename}" if exc.filename else ""
            message = f"{exc.strerror or exc}{where}"
            if kwargs.get("as_json"):
                emit_json({"error": message, "exit_code": 1, "kind": type(exc).__name__})
            click.echo(f"stackbook: error: {message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("stackbook: cancelled", err=True)
            sys.exit(EXIT_CANCELLED)

    return wrapper


def sigterm_as_interrupt() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")



def exit_if_broken(broken: list) -> None:
    """After a listing: one error line per file that could not be read (``catalog.Broken``), then exit 1."""
    if not broken:
        return
    for item in broken:
        click.echo(f"stackbook: error: {item.line()}", err=True)
    click.echo(f"stackbook: {len(broken)} file(s) could not be read; the others are listed", err=True)
    sys.exit(1)


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
