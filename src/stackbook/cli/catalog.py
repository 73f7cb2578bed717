"""`stackbook list` and `show`: the runbook catalogue."""

from __future__ import annotations

import click

from stackbook.cli.common import emit_json, handle_errors, table


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
@handle_errors
def list_(as_json: bool) -> None:
    """The runbooks under runbooks/: name, area, title, tags, schedule, destructive."""
    from stackbook.core import catalog

    items = [rb.summary() for rb in catalog.all_runbooks()]
    if as_json:
        emit_json(items)
        return
    rows = [{**i, "tags": ",".join(i["tags"]), "destructive": "yes" if i["destructive"] else ""} for i in items]
    click.echo(table(rows, ["name", "area", "title", "schedule", "destructive", "tags"]))


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
