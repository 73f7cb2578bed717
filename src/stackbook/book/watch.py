"""``stackbook book --watch``: rebuild the book whenever what it shows changes.

Every ``interval`` seconds the source tree is generated again. ``generate``
rewrites only the files whose content changed, so a runbook or chapter edited,
``_config.yml`` or ``_toc.yml`` changed, a run recorded in the ledger or a
freshness window passed all show up as written files, and nothing else does.
When something was written, the book is built in this process
(``build.build_in_process``): Jupyter Book, Sphinx and the theme are imported
once, and a rebuild after one runbook changed costs 0.5 to 1 s instead of about 2 s.

A failed generation or build (a broken reference, the database down) is
reported and watching goes on; the next change builds again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stackbook.book import build, generate
from stackbook.core.errors import StackbookError


@dataclass
class Rebuild:
    """One pass: what was generated, and the build it led to (None when nothing changed or it failed)."""

    generated: generate.Generated | None
    result: build.BuildResult | None = None
    error: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.generated and (self.generated.written or self.generated.removed))


def rebuild(env: str, src: Path, out: Path, *, runbook_paths: list[Path] | None = None, force: bool = False,
            fresh: bool = False) -> Rebuild:
    """Generate; build in this process when a file changed (or ``force``). Errors are returned, not raised."""
    try:
        generated = generate.generate(env, src, runbook_paths=runbook_paths)
    except StackbookError as exc:
        return Rebuild(None, error=str(exc))
    outcome = Rebuild(generated)
    if not (force or outcome.changed):
        return outcome
    try:
        outcome.result = build.build_in_process(generated.src, out, fresh=fresh)
    except StackbookError as exc:
        outcome.error = str(exc)
    return outcome


def watch(env: str, src: Path, out: Path, *, report: Callable[[Rebuild], None], runbook_paths: list[Path] | None = None,
          interval: float = 2.0, fresh: bool = False, stop: Callable[[], bool] = lambda: False) -> None:
    """Build once, then rebuild after every change until ``stop()`` is true or the process is interrupted.

    ``report`` is called for the first build, for every pass that built, and for a failure unless it is the
    same as the previous pass's (a database that stays down is reported once).
    """
    first, last_error, pending = True, None, True  # pending: build on the next pass that generates
    while not stop():
        started = time.monotonic()
        outcome = rebuild(env, src, out, runbook_paths=runbook_paths, force=pending, fresh=fresh and first)
        if first or outcome.result is not None or (outcome.error and outcome.error != last_error):
            report(outcome)
        # a generation that failed (the database down) may have written part of the tree: build once it works;
        # a build that failed on the content waits for the next change
        pending = outcome.generated is None
        first, last_error = False, outcome.error
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
