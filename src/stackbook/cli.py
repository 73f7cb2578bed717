"""The ``stackbook`` command: a thin layer over the library.

This is the only place where errors become exit codes and messages for people:
0 succeeded; 1 the runbook failed or timed out; 2 bad usage, bad parameters,
missing secret, malformed notebook (nothing was executed); 3 refused (an
exclusive runbook is already running, or approval is missing); 130 cancelled.
With ``--json`` standard output carries only the JSON document; progress and
logs go to standard error.
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

from stackbook.errors import StackbookError

EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer stopped by SIGPIPE (`git log | head`)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def handle_errors(fn):
    """Map StackbookError to its exit code and message (and a JSON error document with --json)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StackbookError as exc:
            if kwargs.get("as_json"):
                _emit_json({"error": str(exc), "exit_code": exc.exit_code, "kind": type(exc).__name__})
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
                _emit_json({"error": message, "exit_code": 1, "kind": type(exc).__name__})
            click.echo(f"stackbook: error: {message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("stackbook: cancelled", err=True)
            sys.exit(EXIT_CANCELLED)

    return wrapper


def _sigterm_as_interrupt() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


class LazyGroup(click.Group):
    """Subcommands that live in their own modules, imported only when invoked (fast start-up)."""

    lazy: dict[str, tuple[str, str, str]] = {
        # name: (module, attribute, one-line help shown by `stackbook --help`)
        "pipeline": ("stackbook.pipelines.cli", "pipeline", "Pipelines of runbooks: list, show, run."),
        "schedule": ("stackbook.schedules.cli", "schedule", "Schedules: crontab lines, Airflow DAGs, CronJobs."),
        "metrics": ("stackbook.metrics", "metrics", "Prometheus metrics of the run ledger."),
        "book": ("stackbook.book.cli", "book", "Build the Jupyter Book with the evidence of the latest runs."),
        "new": ("stackbook.book.cli", "new", "Scaffold a runbook that passes the runbook contract."),
    }

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr, _ = self.lazy[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise click.ClickException(f"command {name!r} is not available: {exc}") from exc
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy and name not in self.commands:
                rows.append((name, self.lazy[name][2]))
            else:
                cmd = self.commands.get(name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stackbook")
def main() -> None:
    """stackbook: an operations handbook that runs.

    Runbooks are parameterised Jupyter notebooks under runbooks/. Start the
    project-local PostgreSQL with `stackbook up`, list runbooks with
    `stackbook list`, run one with `stackbook run NAME -e ENV -p KEY=VALUE`.
    """
    _setup_logging()


# ---------------------------------------------------------------- database


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@handle_errors
def up(as_json: bool) -> None:
    """Start the project-local PostgreSQL under .stackbook/ (initdb on first use).

    With DATABASE_URL set, nothing is started: that database is used.
    """
    import os

    from stackbook import pgcluster

    if os.environ.get("DATABASE_URL"):
        msg = "DATABASE_URL is set: using that database, nothing started"
        _emit_json(pgcluster.status()) if as_json else click.echo(msg, err=True)
        return
    info, started = pgcluster.up()
    if as_json:
        _emit_json({**pgcluster.status(), "started": started})
        return
    state = "started" if started else "already running"
    click.echo(f"PostgreSQL {state} on 127.0.0.1:{info.port} (socket in {info.socket_dir})")
    click.echo(f"database_url: {info.url()}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def down(as_json: bool) -> None:
    """Stop the project-local PostgreSQL (data is kept under .stackbook/pg)."""
    from stackbook import pgcluster

    stopped = pgcluster.down()
    if as_json:
        _emit_json({"stopped": stopped})
    else:
        click.echo("PostgreSQL stopped" if stopped else "PostgreSQL was not running")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (database_url, running, port ...).")
@handle_errors
def status(as_json: bool) -> None:
    """Whether the database runs, and its connection URL."""
    from stackbook import pgcluster

    st = pgcluster.status()
    if as_json:
        _emit_json(st)
        return
    if st["mode"] == "external":
        click.echo(f"external database (DATABASE_URL): {st['database_url']}")
        return
    click.echo(f"PostgreSQL: {'running' if st['running'] else 'stopped'}")
    for key in ("database_url", "port", "data_dir", "socket_dir", "bindir", "os_user"):
        click.echo(f"  {key}: {st[key]}")
    if not st["running"]:
        sys.exit(1)


# ---------------------------------------------------------------- catalogue


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
@handle_errors
def list_(as_json: bool) -> None:
    """The runbooks under runbooks/: name, area, title, tags, schedule, destructive."""
    from stackbook import catalog

    items = [rb.summary() for rb in catalog.all_runbooks()]
    if as_json:
        _emit_json(items)
        return
    rows = [{**i, "tags": ",".join(i["tags"]), "destructive": "yes" if i["destructive"] else ""} for i in items]
    click.echo(_table(rows, ["name", "area", "title", "schedule", "destructive", "tags"]))


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print parameters and metadata as JSON.")
@handle_errors
def show(name: str, as_json: bool) -> None:
    """Parameters (name, type, default, help) and metadata of runbook NAME."""
    from stackbook import catalog

    rb = catalog.load(name)
    if as_json:
        _emit_json(rb.to_dict())
        return
    click.echo(f"{rb.name}: {rb.title}")
    click.echo(f"  path: {rb.path}")
    for key in ("owner", "schedule", "destructive", "exclusive", "timeout", "freshness_hours", "retries", "secrets",
                "tags", "inputs"):
        click.echo(f"  {key}: {rb.metadata.get(key)}")
    click.echo("\nparameters:")
    rows = [{"name": p.name, "type": p.describe_type(), "default": repr(p.default), "help": p.help}
            for p in rb.parameters]
    click.echo(_table(rows, ["name", "type", "default", "help"]))


# ---------------------------------------------------------------- running


def _print_record(rec: dict) -> None:
    took = f" in {rec['duration_s']:.1f} s" if rec.get("duration_s") is not None else ""
    click.echo(f"run {rec['id']}: {rec['runbook']} on {rec['env']}: {rec['status']}{took}")
    for key in ("output", "reason", "approved_by", "pipeline_run_id", "git_commit", "host"):
        if rec.get(key):
            click.echo(f"  {key}: {rec[key]}")
    if rec.get("error"):
        err = rec["error"]
        click.echo(f"  error: cell {err.get('cell_index')}: {err.get('ename')}: {err.get('evalue')}")
    if rec.get("params"):
        click.echo(f"  params: {json.dumps(rec['params'], default=str)}")
    for key, value in (rec.get("results") or {}).items():
        click.echo(f"  result {key}: {json.dumps(value, default=str)}")


def public_record(rec: dict) -> dict:
    """The run record as documented: error without the traceback."""
    out = dict(rec)
    if out.get("error"):
        out["error"] = {k: out["error"].get(k) for k in ("cell_index", "ename", "evalue")}
    return out


@main.command()
@click.argument("name")
@click.option("-e", "--env", default="dev", show_default=True, help="Environment (infra/environments/ENV.yml).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter value; repeatable.")
@click.option("-f", "--params-file", type=click.Path(dir_okay=False), help="YAML file of parameter values.")
@click.option("--cell-timeout", type=float, default=None, help="Seconds one cell may run; default: no limit.")
@click.option("--timeout", type=float, default=None,
              help="Seconds the whole run may take; default: the runbook's metadata timeout, else no limit.")
@click.option("--log-output", is_flag=True, help="Stream cell output to standard error as it arrives.")
@click.option("--approved-by", default=None, metavar="NAME",
              help="Approver of a destructive, non-dry run in an environment that requires approval.")
@click.option("--pipeline-run", "pipeline_run", default=None, metavar="ID",
              help="Record the run as part of pipeline run ID (set by schedulers, e.g. the generated Airflow DAGs; "
                   "`stackbook runs --pipeline-run ID` lists them).")
@click.option("--attempt", type=click.IntRange(min=1), default=1, show_default=True,
              help="Attempt number of this run (set by schedulers that retry, e.g. Airflow's try number).")
@click.option("--on", "on", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="Where the kernel runs: here, or as a Kubernetes Job of the platform image "
                   "(needs kube_context in the environment file and an s3:// run store).")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON (only it, on stdout).")
@handle_errors
def run(name, env, params, params_file, cell_timeout, timeout, log_output, approved_by, pipeline_run, attempt, on,
        as_json) -> None:
    """Run runbook NAME headlessly: parameters are checked before any kernel starts.

    NAME is a runbook's file stem or a path to any .ipynb file. Precedence of
    values: -p over -f over the environment file over the notebook's defaults.
    Exit codes: 0 succeeded, 1 failed or timed out, 2 bad input (nothing ran),
    3 refused (exclusive runbook already running, or approval missing).
    """
    from stackbook import runner

    _sigterm_as_interrupt()
    options = runner.RunOptions(env=env, cli_params=list(params), params_file=params_file, cell_timeout=cell_timeout,
                                timeout=timeout, log_output=log_output, approved_by=approved_by,
                                pipeline_run_id=pipeline_run, attempt=attempt)
    announce = lambda rid: click.echo(f"stackbook: run {rid} started", err=True)  # noqa: E731
    if on == "kubernetes":
        from stackbook import k8s_run

        rec = k8s_run.run(name, options, on_start=announce)
    else:
        rec = runner.execute(runner.prepare(name, options), on_start=announce)
    if as_json:
        _emit_json(public_record(rec))
    else:
        _print_record(rec)
    if rec["status"] != "succeeded":
        click.echo(f"stackbook: {runner.describe_failure(rec)}", err=True)
    sys.exit(runner.exit_code(rec))


@main.group(invoke_without_command=True)
@click.option("--runbook", default=None, help="Only runs of this runbook.")
@click.option("--status", "status_", default=None,
              type=click.Choice(["running", "succeeded", "failed", "timed_out", "cancelled", "upstream_failed",
                                 "skipped"]), help="Only runs in this state.")
@click.option("-e", "--env", default=None, help="Only runs in this environment.")
@click.option("--pipeline-run", default=None, metavar="ID", help="Only the runs of this pipeline run.")
@click.option("--limit", default=20, show_default=True, type=int, help="At most this many runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.pass_context
@handle_errors
def runs(ctx, runbook, status_, env, pipeline_run, limit, as_json) -> None:
    """Recent runs from the ledger (stale `running` rows are reaped first)."""
    if ctx.invoked_subcommand:
        return
    from stackbook import db, ledger

    with db.connect() as conn:
        ledger.ensure_schema(conn)
        ledger.reap(conn)
        rows = ledger.list_runs(conn, runbook=runbook, status=status_, env=env, pipeline_run_id=pipeline_run,
                                limit=limit)
    if as_json:
        _emit_json([public_record(r) for r in rows])
        return
    for r in rows:
        r["duration"] = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else ""
        r["started"] = (r.get("started_at") or "")[:19]
    click.echo(_table(rows, ["id", "runbook", "env", "status", "started", "duration", "reason"]))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
@handle_errors
def runs_show(run_id: str, as_json: bool) -> None:
    """One run: status, parameters, results, error and where its notebook is."""
    from stackbook import db, ledger
    from stackbook.errors import UsageError

    with db.connect() as conn:
        ledger.ensure_schema(conn)
        ledger.reap(conn)
        rec = ledger.get_run(conn, run_id)
    if rec is None:
        raise UsageError(f"no run with id {run_id!r} in the ledger (see `stackbook runs`)")
    if as_json:
        _emit_json(public_record(rec))
    else:
        _print_record(rec)


# ---------------------------------------------------------------- JupyterLab


@main.command()
@click.option("-e", "--env", default="dev", show_default=True, help="Environment whose secrets and values to load.")
@click.option("--port", default=8888, show_default=True, help="Port JupyterLab listens on (127.0.0.1).")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@click.option("--dry-run", is_flag=True, help="Print the command and environment names instead of starting.")
@handle_errors
def lab(env: str, port: int, no_browser: bool, dry_run: bool) -> None:
    """Start JupyterLab on the project with the environment and secrets loaded.

    Stepping through a runbook by hand then behaves as a headless run does:
    DATABASE_URL, STACKBOOK_ENV and the secrets of every runbook are set, and
    stackbook.record() writes to .stackbook/lab/.
    """
    from stackbook import lab as lab_mod

    cmd, env_vars = lab_mod.command(env, port=port, open_browser=not no_browser)
    if dry_run:
        click.echo(" ".join(cmd))
        click.echo("environment: " + ", ".join(sorted(env_vars)))
        return
    lab_mod.exec_lab(cmd, env_vars)


def entry() -> None:
    """The ``stackbook`` console script: ``main``, then an exit without the module teardown."""
    from stackbook.fastexit import run_then_exit

    run_then_exit(main)


if __name__ == "__main__":  # pragma: no cover
    entry()
