"""`stackbook list` and `show`: the runbook catalogue."""

from __future__ import annotations

import click

from stackbook.cli.common import emit_json, exit_if_broken, handle_errors, table


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
@handle_errors
def list_(as_json: bool) -> None:
    """The runbooks under runbooks/: name, area, title, tags, schedule, destructive.

    A runbook file that cannot be read is listed too, with its error (in JSON: an entry with
    name, path and error), the others as usual; the command then exits 1.
    """
    from stackbook.core import catalog

    runbooks, broken = catalog.scan()
    items = [rb.summary() for rb in runbooks]
    if as_json:
        emit_json(items + [b.summary() for b in broken])
    else:
        rows = [{**i, "tags": ",".join(i["tags"]), "destructive": "yes" if i["destructive"] else ""} for i in items]
        rows += [{"name": b.name, "title": "(cannot be read: see the error below)"} for b in broken]
        click.echo(table(rows, ["name", "area", "title", "schedule", "destructive", "tags"]))
    exit_if_broken(broken)


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print parameters and metadata as JSON.")
@handle_errors
def show(name: str, as_json: bool) -> None:
    """Parameters (name, type, default, help) and metadata of runbook NAME."""
    from stackbook.core import catalog

    rb = catalog.load(name)
    if as_json:
        emit_json(rb.to_dict())
        return
    click.echo(f"{rb.name}: {rb.title}")
    click.echo(f"  path: {rb.path}")
    for key in ("owner", "schedule", "destructive", "exclusive", "timeout", "freshness_hours", "retries", "secrets",
                "tags", "inputs"):
        click.echo(f"  {key}: {rb.metadata.get(key)}")
    click.echo("\nparameters:")
    rows = [{"name": p.name, "type": p.describe_type(), "default": repr(p.default), "help": p.help}
            for p in rb.parameters]
    click.echo(table(rows, ["name", "type", "default", "help"]))
