"""``stackbook new AREA/NAME``: scaffold a runbook that passes the runbook contract.

The notebook has a title and purpose cell, one typed and commented
``parameters`` cell, steps (a markdown cell, then a short code cell calling
stackbook), a verification cell that asserts, a results cell, and
``metadata.stackbook`` filled in; it runs as written (``make test`` executes
every runbook with its defaults). Its entry is appended to ``_toc.yml``.
Nothing is overwritten.

AREA and NAME are lower-case snake_case and at most 63 bytes each: PostgreSQL's
identifier length, which is also the longest Kubernetes label value, and the
name is carried as both (the ledger's runbook, the ``stackbook.dev/runbook``
label of its CronJob and Jobs).
"""

from __future__ import annotations

import re
from pathlib import Path

from stackbook.book import BookUsageError, toc
from stackbook.core import catalog, project, scaffold

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_NAME_BYTES = 63  # PostgreSQL's identifier length (NAMEDATALEN - 1); also a Kubernetes label value's


def parse_spec(spec: str) -> tuple[str, str]:
    """``AREA/NAME`` -> (area, name); both lower-case snake_case words."""
    parts = spec.strip().removesuffix(".ipynb").split("/")
    if len(parts) != 2 or not all(parts):
        raise BookUsageError(f"{spec!r}: expected AREA/NAME, for example `stackbook new ingest/load_orders`")
    area, name = parts
    for what, value in (("area", area), ("name", name)):
        if not NAME_RE.match(value):
            raise BookUsageError(
                f"{spec!r}: the {what} {value!r} must be lower-case snake_case (a letter, then letters, digits or _)")
        size = len(value.encode("utf-8"))
        if size > MAX_NAME_BYTES:
            raise BookUsageError(
                f"the {what} {value[:20]!r}... is {size} bytes long; at most {MAX_NAME_BYTES} (PostgreSQL's "
                "identifier length, also the longest Kubernetes label value, which the runbook name becomes): "
                "shorten it")
    return area, name


def cells(name: str, title: str, area: str) -> list[tuple[str, str]]:
    return [
        ("md", f"""# {title}

What this runbook is for, in a sentence or two: the procedure it carries out and what it proves.

**When to use it:** the situation that calls for it (a schedule, an alert, a request).

**Blast radius:** none while `dry_run` is True: it only reads and reports. Say here what it changes
when `dry_run` is False, and how to undo it."""),
        ("params", """dry_run: bool = True  # only report what would change; False applies it
limit: int = 10  # at most this many items per step (keep defaults small: `make test` runs them)"""),
        ("setup", """import stackbook
from stackbook.core import environments"""),
        ("md", """## 1. Where it runs

The environment of this run (`-e ENV`; `dev` in JupyterLab unless `stackbook lab -e` says otherwise).
Replace the steps below with short calls into `stackbook`: logic lives in `src/stackbook/`, where it is
unit-tested, never in the runbook."""),
        ("code", """env = environments.current()
env.name, env.get("description")"""),
        ("md", """## 2. The work

One step per markdown cell and short code cell. Honour `dry_run`: plan first, apply only when it is False."""),
        ("code", """planned = list(range(limit))  # replace with a call such as `stackbook.<module>.plan(...)`
applied = [] if dry_run else planned
len(planned), len(applied)"""),
        ("md", """## Verification

The run fails unless every post-condition holds: a runbook that cannot prove it worked fails."""),
        ("code", """assert env.name in environments.available(), f"unknown environment {env.name!r}"
assert len(planned) <= limit, f"planned {len(planned)} items, more than limit={limit}"
assert dry_run or applied == planned, "not everything planned was applied\""""),
        ("md", """## Results

Recorded results reach the run ledger and the book."""),
        ("code", """stackbook.record("planned", len(planned))
stackbook.record("applied", len(applied))"""),
        ("md", f"""## Done

Stepping through this runbook in JupyterLab (`stackbook lab {name}`)? Run this last cell:
it finishes the session's run, recorded like a headless one. A headless run ends here by itself."""),
        ("code", "stackbook.finish()"),
    ]


def metadata(name: str, area: str, owner: str, description: str) -> dict:
    return {
        "owner": owner,
        "description": description,
        "schedule": None,
        "destructive": False,
        "exclusive": False,
        "timeout": 300,
        "freshness_hours": None,
        "secrets": [],
        "tags": [area],
    }


def create(spec: str, *, owner: str = "platform", title: str | None = None, description: str | None = None,
           root: Path | None = None) -> tuple[Path, bool]:
    """Write ``runbooks/AREA/NAME.ipynb`` and add it to ``_toc.yml``; (path, toc changed)."""
    area, name = parse_spec(spec)
    root = root or project.root()
    path = root / "runbooks" / area / f"{name}.ipynb"
    if path.exists():
        raise BookUsageError(f"{path} exists already; stackbook new never overwrites a runbook "
                             "(edit it, or pick another name)")
    clash = [p for p in catalog.paths() if p.stem == name]
    if clash:
        raise BookUsageError(f"a runbook named {name!r} exists already ({clash[0]}); runbook names are unique "
                             "across areas because `stackbook run NAME` finds them by name")
    if not owner.strip():
        raise BookUsageError("--owner must name who answers for the runbook")
    toc_data = toc.load(root)  # fails before anything is written when _toc.yml is unusable
    title = title or name.replace("_", " ").capitalize()
    description = description or f"{title}: describe in one line what it does"
    scaffold.write(path, cells(name, title, area), metadata(name, area, owner, description))
    changed = toc.add(toc_data, toc.runbook_entry(path, root))
    if changed:
        toc.save(toc_data, root)
    return path, changed
