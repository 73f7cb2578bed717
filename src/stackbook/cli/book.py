"""``stackbook book`` and ``stackbook new``: thin click commands over ``stackbook.book``.

Errors are ``StackbookError`` subclasses; ``stackbook.cli.handle_errors`` turns
them into exit codes and messages.
"""

from __future__ import annotations

from pathlib import Path

import click

from stackbook.cli.common import emit_json, handle_errors, sigterm_as_interrupt
from stackbook.core.environments import DEFAULT_ENV


@click.command()
@click.option("-e", "--env", default=DEFAULT_ENV, show_default=True, help="Environment whose runs the book shows.")
@click.option("--open", "open_", is_flag=True, help="Open the built book in a web browser.")
@click.option("--all", "fresh", is_flag=True, help="Rebuild every page (default: only pages whose source changed).")
@click.option("--fix-toc", is_flag=True, help="Add runbooks missing from _toc.yml to it, then build.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder that receives _build/ (default: the project root).")
@click.option("--src", type=click.Path(file_okay=False), default=None,
              help="Folder for the generated source tree (default: .stackbook/book/src).")
@click.option("--runbook", "runbooks", multiple=True, metavar="NAME|PATH",
              help="Build only these runbooks (names, or paths to any .ipynb); repeatable. Default: all of runbooks/.")
@click.option("--json", "as_json", is_flag=True,
              help="Print what was generated and built as JSON (with --watch: one JSON document per line and build).")
@click.option("--watch", is_flag=True,
              help="Keep running: rebuild whenever a runbook, a chapter, the configuration or the ledger changes "
                   "(Ctrl-C stops).")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="With --watch: how often to look for changes.")
@handle_errors
def book(env: str, open_: bool, fresh: bool, fix_toc: bool, out: str | None, src: str | None,
         runbooks: tuple[str, ...], as_json: bool, watch: bool, interval: float) -> None:
    """Build the Jupyter Book into _build/html: every runbook with the evidence of its latest run in ENV.

    Offline, nothing executed, warnings as errors. Generated pages go to
    .stackbook/book/src; only files whose content changed are rewritten, so a
    rebuild redoes only what changed. With --watch, the book is rebuilt in one
    long-running process after every change (under a second for one runbook),
    and a failed build is reported without stopping the watch.
    """
    from stackbook.book import build as build_mod
    from stackbook.book import generate as gen
    from stackbook.book import toc
    from stackbook.core import catalog, environments, project

    environments.load(env)  # an unknown environment fails here, exit 2
    if fix_toc:
        data = toc.load()
        added = [e for e in toc.missing(data, catalog.paths()) if toc.add(data, e)]
        if added:
            toc.save(data)
            click.echo(f"stackbook: added to _toc.yml: {', '.join(added)}", err=True)
    paths = [catalog.find(name) for name in runbooks] if runbooks else None
    if watch:
        _watch(env, Path(src).resolve() if src else gen.default_src(), Path(out) if out else project.root(), paths,
               interval=interval, fresh=fresh, open_=open_, as_json=as_json)
        return
    generated = gen.generate(env, Path(src).resolve() if src else gen.default_src(), runbook_paths=paths)
    for entry in generated.toc_missing:
        click.echo(f"stackbook: warning: {entry} is not in _toc.yml (built anyway; `stackbook book --fix-toc` adds it)",
                   err=True)
    for entry in generated.toc_stale:
        click.echo(f"stackbook: warning: _toc.yml lists {entry}, which is not a runbook (left out of the book)", err=True)
    result = build_mod.build(generated.src, Path(out) if out else project.root(), fresh=fresh,
                             changed=bool(generated.written or generated.removed))
    index = result.html / "index.html"
    doc = {
        "env": env, "html": str(result.html), "index": str(index), "seconds": round(result.seconds, 2),
        "runbooks": generated.runbooks, "files_written": generated.written, "files_removed": generated.removed,
        "files_unchanged": generated.unchanged, "pages_read": result.read, "pages_written": result.wrote,
        "toc_missing": generated.toc_missing, "toc_stale": generated.toc_stale,
    }
    if as_json:
        emit_json(doc)
    else:
        if not result.log:
            click.echo(f"book for {env} is up to date (nothing changed since the last build): {index}")
        else:
            click.echo(f"book built for {env} in {result.seconds:.1f} s: {index}")
        click.echo(f"  {len(generated.runbooks)} runbooks; {len(generated.written)} generated files changed, "
                   f"{len(result.read)} pages re-read")
    if open_:
        import webbrowser

        webbrowser.open(index.as_uri())


def _watch(env: str, src: Path, out: Path, paths: list[Path] | None, *, interval: float, fresh: bool, open_: bool,
           as_json: bool) -> None:
    import json

    from stackbook.book import watch as watch_mod

    opened = False

    def report(outcome: watch_mod.Rebuild) -> None:
        nonlocal opened
        generated, result = outcome.generated, outcome.result
        if as_json:
            click.echo(json.dumps({
                "env": env, "ok": outcome.error is None, "error": outcome.error,
                "seconds": round(result.seconds, 2) if result else None,
                "files_written": generated.written if generated else [],
                "pages_read": result.read if result else [], "pages_written": result.wrote if result else [],
                "html": str(result.html) if result else None}), nl=True)
        elif outcome.error:
            click.echo(f"stackbook: {outcome.error}\n  watching for the next change", err=True)
        else:
            changed = ", ".join(result.read) or "nothing to re-read"
            click.echo(f"book built for {env} in {result.seconds:.1f} s ({changed}): {result.html / 'index.html'}")
        if open_ and result and not opened:
            import webbrowser

            webbrowser.open((result.html / "index.html").as_uri())
            opened = True

    click.echo(f"stackbook: watching runbooks, book/, _config.yml, _toc.yml and the ledger of {env} "
               f"every {interval:g} s; Ctrl-C stops", err=True)
    sigterm_as_interrupt()  # a service manager's stop ends the watch as Ctrl-C does
    try:
        watch_mod.watch(env, src, out, report=report, runbook_paths=paths, interval=interval, fresh=fresh)
    except KeyboardInterrupt:
        click.echo("stackbook: stopped watching", err=True)


@click.command()
@click.argument("spec", metavar="AREA/NAME")
@click.option("--owner", default="platform", show_default=True, help="Who answers for the runbook.")
@click.option("--title", default=None, help="Title (default: from NAME).")
@click.option("--description", default=None, help="One line on what it does (shown by `stackbook list` and the book).")
@click.option("--json", "as_json", is_flag=True, help="Print the path and toc entry as JSON.")
@handle_errors
def new(spec: str, owner: str, title: str | None, description: str | None, as_json: bool) -> None:
    """Scaffold runbooks/AREA/NAME.ipynb, a runbook that passes the runbook contract, and list it in _toc.yml.

    Never overwrites. Then: edit it in JupyterLab (`stackbook lab`), run it with
    `stackbook run NAME`, and see it in the book with `stackbook book`.
    """
    from stackbook.book import new as new_mod
    from stackbook.book import toc

    path, toc_changed = new_mod.create(spec, owner=owner, title=title, description=description)
    entry = toc.runbook_entry(path)
    if as_json:
        emit_json({"path": str(path), "name": path.stem, "toc_entry": entry, "toc_changed": toc_changed})
        return
    click.echo(f"created {path}")
    click.echo(f"  listed in _toc.yml as {entry}" if toc_changed else f"  {entry} was listed in _toc.yml already")
    click.echo(f"  next: stackbook lab, edit it, then stackbook run {path.stem}")


__all__ = ["book", "new"]
