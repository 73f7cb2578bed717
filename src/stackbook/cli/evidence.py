"""`stackbook evidence export` and `stackbook evidence verify`: a period's evidence in one file, checked offline.

The work is in ``stackbook.run.bundle``; which runbooks map to a control is the audit's
(``stackbook.audit.operations.control_runbooks``: the rules' controls and each runbook's ``controls:``).
"""

from __future__ import annotations

import sys

import click

from stackbook.cli.common import emit_json, handle_errors
from stackbook.core.environments import DEFAULT_ENV
from stackbook.core.errors import UsageError


@click.group()
def evidence() -> None:
    """Evidence bundles: export a period's evidence of one environment, verify a bundle offline."""


def _control_runbooks(control: str) -> set[str]:
    from stackbook.audit import operations

    runbooks, _ = operations.catalogue()
    mapping = operations.control_runbooks(runbooks)
    if control not in mapping:
        raise UsageError(f"--control {control!r} is not a control any runbook or audit rule maps to; known: "
                         f"{', '.join(sorted(mapping))}; nothing was exported")
    return mapping[control]


@evidence.command("export", short_help="Write a period's evidence of one environment to a zip.")
@click.option("-e", "--env", default=DEFAULT_ENV, show_default=True, help="Environment whose runs are exported.")
@click.option("--since", default=None, metavar="DATE", help="Runs started at or after DATE (YYYY-MM-DD or ISO time).")
@click.option("--until", default=None, metavar="DATE",
              help="Runs started before DATE ends (a date: that day included).")
@click.option("--control", default=None, metavar="ID",
              help="Only runs of the runbooks mapped to this control, e.g. 'SOC2 CC7.5' (unknown: exit 2, "
                   "listing them).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), metavar="FILE.zip",
              help="The bundle to write (atomically: never half a bundle).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON (only it, on stdout).")
@handle_errors
def export(env: str, since: str | None, until: str | None, control: str | None, out: str, as_json: bool) -> None:
    """Write the evidence of ENV's runs to FILE.zip: ledger rows, chain segment and head, executed notebooks,
    audit and DR reports, approvals, attestations and a manifest with the SHA-256 of every file.

    Prints the file count, the size, the chain head and the bundle digest (the SHA-256 of manifest.json):
    give the digest to the auditor with the file. Nothing selected: exit 2, nothing written.
    """
    from stackbook.core import environments
    from stackbook.run import bundle, ledger

    environments.load(env)  # an unknown environment: exit 2
    start, end = bundle.parse_time(since, "--since"), bundle.parse_time(until, "--until", end_of_day=True)
    runbooks = _control_runbooks(control) if control is not None else None
    selection = {"env": env, "since": since, "until": until, "control": control,
                 "runbooks": sorted(runbooks) if runbooks is not None else None}
    with ledger.session(reap_stale=False) as conn:
        done = bundle.export(conn, env, out, since=start, until=end, runbooks=runbooks, selection=selection)
    for warning in done.warnings:
        click.echo(f"stackbook: warning: {warning}", err=True)
    if as_json:
        emit_json(done.to_json())
        return
    click.echo(f"bundle {done.path}: {done.runs} run(s), {done.files} files, {done.size} bytes")
    click.echo(f"  chain head: entry {done.head_seq} {done.head}")
    click.echo(f"  bundle digest (sha256 of manifest.json): {done.digest}")
    click.echo(f"  check it anywhere, without a database: stackbook evidence verify {done.path} --head {done.head}")


@evidence.command("verify", short_help="Check an evidence bundle offline (no database).")
@click.argument("bundle_path", metavar="FILE.zip", type=click.Path(dir_okay=True))
@click.option("--head", "published_head", default=None, metavar="HASH",
              help="A chain head published earlier: the bundle's chain segment must end at or contain it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (only it, on stdout).")
@handle_errors
def verify(bundle_path: str, published_head: str | None, as_json: bool) -> None:
    """Check an evidence bundle offline, with no database: every file against the manifest, the chain
    segment's links, each ledger row against its chain entry, each executed notebook against its hash.

    Exit 0 with a summary; exit 1 naming every file edited, added or removed and every entry that does not
    hold; exit 2 when the file is not a bundle.
    """
    from stackbook.run import bundle

    checked = bundle.verify(bundle_path, published_head=published_head)
    if as_json:
        emit_json(checked.to_json())
    else:
        for problem in checked.problems:
            click.echo(f"stackbook: {problem}", err=True)
        state = "holds" if checked.ok else f"does NOT hold ({len(checked.problems)} problem(s))"
        click.echo(f"bundle {checked.path} {state}: {checked.files} files, {checked.runs} run(s), "
                   f"{checked.entries} chain entries ending at entry {checked.head_seq} {checked.head}")
        click.echo(f"  bundle digest (sha256 of manifest.json): {checked.digest}")
    sys.exit(0 if checked.ok else 1)


__all__ = ["evidence"]
