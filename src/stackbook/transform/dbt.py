"""dbt for stackbook: generated profiles, ``dbt build`` in-process, results people can read.

* ``write_profiles(env)`` writes ``.stackbook/dbt/<env>/profiles.yml`` from the environment
  file (``dbt_threads``) and ``stackbook.run.db.url()``; the password stays out of the file
  (``env_var('DBT_ENV_SECRET_STACKBOOK_PASSWORD')``, which dbt also scrubs from its logs).
  Nothing is read from or written to ``~/.dbt``.
* ``build(select=...)`` runs ``dbt build`` through ``dbt.cli.main.dbtRunner`` in this process.
  dbt's start-up (imports, adapter plugin, parsing) is paid by the first invocation of a
  process; later ones reuse it (and partial parsing in the target folder).
* The ``BuildResult`` it returns has a results table (node, status, rows affected, seconds),
  the failures with a sample of failing rows for data tests, the counts per status, and
  ``check()``, which raises ``DbtBuildFailed`` naming every failed model and test.
* ``run_results.json`` and ``manifest.json`` are copied next to the run's executed notebook
  (``<output>.dbt/``), or to ``.stackbook/dbt/artifacts/latest/`` outside ``stackbook run``.
* ``lineage(manifest)`` is the model graph (networkx); ``draw_lineage`` draws it with matplotlib.

Models build into the schemas ``staging`` and ``marts`` (``generate_schema_name`` in the
project uses a custom schema as it is). ``schema_prefix`` puts them into ``<prefix>staging``
and ``<prefix>marts`` instead, so tests and CI never touch the shared schemas.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from stackbook.run import db, runstore
from stackbook.core import environments, project
from stackbook.core.errors import StackbookError

PROFILE_NAME = "stackbook"
PASSWORD_ENV = "DBT_ENV_SECRET_STACKBOOK_PASSWORD"
ARTIFACTS = ("run_results.json", "manifest.json")
FAILED_STATUSES = ("error", "fail", "runtime error")
DEFAULT_THREADS = 4
SAMPLE_ROWS = 5
DBT_ENV = {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}

_runner = None
_lock = threading.Lock()


class DbtError(StackbookError):
    """dbt could not run: a broken project, profile or connection."""


class DbtBuildFailed(DbtError):
    """``dbt build`` ran and at least one model or test failed; ``result`` holds the details."""

    def __init__(self, message: str, result: "BuildResult | None" = None, **kw):
        super().__init__(message, **kw)
        self.result = result


PROJECT_ENV = "STACKBOOK_DBT_PROJECT"


def project_dir() -> Path:
    """The dbt project: ``$STACKBOOK_DBT_PROJECT`` (tests, forks), else the committed ``pipelines/dbt``."""
    explicit = os.environ.get(PROJECT_ENV)
    return Path(explicit) if explicit else project.root() / "pipelines" / "dbt"


def profiles_dir(env: str | None = None) -> Path:
    """Where the generated ``profiles.yml`` of an environment lives: ``.stackbook/dbt/<env>/``."""
    name = env or environments.current().name
    path = project.state_dir() / "dbt" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def connection_settings(database_url: str) -> dict[str, Any]:
    """dbt-postgres profile fields from a ``postgresql://`` URL (password excluded)."""
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise DbtError(f"cannot build a dbt profile from database URL scheme {parts.scheme!r}: "
                       "expected postgresql://user:password@host:port/dbname")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    settings: dict[str, Any] = {
        "type": "postgres",
        "host": parts.hostname,
        "port": parts.port or 5432,
        "user": unquote(parts.username or ""),
        "dbname": unquote(parts.path.lstrip("/")) or "stackbook",
        "sslmode": query.get("sslmode", "prefer"),
    }
    for key in ("sslrootcert", "sslcert", "sslkey"):
        if key in query:
            settings[key] = query[key]
    return settings


def write_profiles(env: str | None = None, database_url: str | None = None, threads: int | None = None,
                   schema: str = "public") -> Path:
    """Write ``profiles.yml`` for ``env`` (default: the current environment) and return its folder.

    ``threads`` defaults to the environment file's ``dbt_threads``. The password is read by dbt
    from ``$DBT_ENV_SECRET_STACKBOOK_PASSWORD`` at run time, never written to the file.
    """
    import yaml

    environment = environments.load(env) if env else environments.current()
    url = database_url or db.url()
    settings = connection_settings(url)
    settings["password"] = "{{ env_var('" + PASSWORD_ENV + "', '') }}"
    settings["schema"] = schema
    settings["threads"] = int(threads or environment.get("dbt_threads", DEFAULT_THREADS))
    profile = {PROFILE_NAME: {"target": environment.name, "outputs": {environment.name: settings}}}
    folder = profiles_dir(environment.name)
    text = "# generated by stackbook.transform.dbt.write_profiles from infra/environments; do not edit\n"
    text += yaml.safe_dump(profile, sort_keys=False)
    path = folder / "profiles.yml"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return folder


def _dbt_runner():
    """The process's one dbtRunner: dbt's imports and plugin loading are paid once."""
    global _runner
    if _runner is None:
        for key, value in DBT_ENV.items():
            os.environ.setdefault(key, value)
        from dbt.cli.main import dbtRunner

        _runner = dbtRunner()
    return _runner


def target_dir(env: str, project_path: Path, schema_prefix: str) -> Path:
    """Where dbt writes its target (manifest, run results, partial-parse state) and logs.

    For the committed project: ``.stackbook/dbt/<env>/target/<hash of prefix>``, one per schema prefix, so
    partial parsing survives between runs. Any other project (a temp copy in a test, a fork) keeps its
    own ``target/`` folder.
    """
    if project_path.resolve() != (project.root() / "pipelines" / "dbt").resolve():
        path = project_path / "target" / (schema_prefix or "default")
    else:
        key = hashlib.sha1(f"{project_path.resolve()}|{schema_prefix}".encode()).hexdigest()[:10]
        path = project.state_dir() / "dbt" / env / "target" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Failure:
    """A model or test that did not succeed."""

    node: str  # unique id, e.g. test.stackbook_warehouse.unique_orders_order_id.fed3
    name: str
    resource_type: str  # model, test, unit_test, seed, snapshot
    status: str  # error, fail
    message: str
    failing_rows: int | None = None
    model: str | None = None  # for a test: the model it tests
    sample: Any = None  # pandas DataFrame of failing rows (data tests), else None
    compiled_sql: str | None = None

    def describe(self) -> str:
        what = {"test": "test", "unit_test": "unit test"}.get(self.resource_type, self.resource_type)
        on = f" of model {self.model}" if self.model and self.resource_type in ("test", "unit_test") else ""
        rows = f" ({self.failing_rows} failing rows)" if self.failing_rows else ""
        lines = [line.strip() for line in (self.message or "").splitlines() if line.strip()]
        detail = " / ".join(lines[:4]) if lines else "no message"
        return f"{what} {self.name}{on} {self.status}{rows}: {detail[:500]}"


@dataclass
class BuildResult:
    """What ``dbt build`` did: one row per node, the failures, the artifacts' location."""

    command: list[str]
    success: bool
    seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    artifacts_dir: str | None = None
    target_dir: str | None = None

    @property
    def results(self):
        """The results table: node, resource type, status, rows affected, seconds, message."""
        import pandas as pd

        columns = ["node", "resource_type", "status", "rows_affected", "seconds", "message"]
        return pd.DataFrame(self.rows, columns=columns)

    def counts(self) -> dict[str, int]:
        """Nodes per status, e.g. ``{"success": 12, "pass": 40}``."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["status"]] = out.get(row["status"], 0) + 1
        return dict(sorted(out.items()))

    def counts_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["resource_type"]] = out.get(row["resource_type"], 0) + 1
        return dict(sorted(out.items()))

    @property
    def failed_nodes(self) -> list[str]:
        return [f.name for f in self.failures]

    def statuses(self) -> dict[str, str]:
        """Node name to status, for ``draw_lineage``."""
        return {row["node"]: row["status"] for row in self.rows}

    def failures_html(self) -> str:
        """The failures as HTML: what failed and why, with a sample of the failing rows of data tests."""
        import html

        if not self.failures:
            return "<p>No model or test failed.</p>"
        parts = []
        for f in self.failures:
            parts.append(f"<h4>{html.escape(f.describe())}</h4><pre>{html.escape(f.message[:4000])}</pre>")
            if f.sample is not None:
                parts.append(f"<p>First {len(f.sample)} failing rows:</p>" + f.sample.to_html(index=False))
        return "\n".join(parts)

    def manifest_path(self) -> Path | None:
        for folder in (self.target_dir, self.artifacts_dir):
            if folder and Path(folder, "manifest.json").exists():
                return Path(folder, "manifest.json")
        return None

    def message(self) -> str:
        lines = [f"dbt build failed: {len(self.failures)} node(s) did not succeed"]
        lines += [f"  - {f.describe()}" for f in self.failures]
        return "\n".join(lines)

    def check(self) -> "BuildResult":
        """Raise ``DbtBuildFailed`` naming each failed model and test; return self when all passed."""
        if self.failures or not self.success:
            raise DbtBuildFailed(self.message(), result=self)
        return self


def _status(value: Any) -> str:
    return str(getattr(value, "value", value)).lower()


def _sample_failing_rows(compiled_sql: str, database_url: str, limit: int = SAMPLE_ROWS):
    """The first rows a failing data test returns (its compiled SQL with a limit)."""
    import pandas as pd
    import psycopg

    sql = compiled_sql.strip().rstrip(";")
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(f"select * from ({sql}) as failing_rows limit {int(limit)}")
        names = [d.name for d in cur.description or []]
        return pd.DataFrame(cur.fetchall(), columns=names)


def _tested_model(node) -> str | None:
    """The model a data test or unit test is attached to, by name."""
    for attr in ("tested_node_unique_id", "attached_node"):
        value = getattr(node, attr, None)
        if isinstance(value, str) and value:
            return value.split(".")[-1]
    value = getattr(node, "model", None)
    return value if isinstance(value, str) else None


def _rows_and_failures(run_result, database_url: str) -> tuple[list[dict], list[Failure]]:
    rows, failures = [], []
    for r in getattr(run_result, "results", None) or []:
        node = r.node
        resource_type = _status(node.resource_type)
        status = _status(r.status)
        affected = (r.adapter_response or {}).get("rows_affected") if isinstance(r.adapter_response, dict) else None
        if resource_type in ("test", "unit_test"):
            affected = r.failures if r.failures is not None else affected
        if affected is not None and affected < 0:  # views and DDL report -1
            affected = None
        message = (r.message or "").strip()
        rows.append({"node": node.name, "resource_type": resource_type, "status": status,
                     "rows_affected": affected, "seconds": round(float(r.execution_time or 0.0), 3),
                     "message": message.splitlines()[0] if message else ""})
        if status in FAILED_STATUSES:
            compiled = getattr(node, "compiled_code", None)
            failure = Failure(node=node.unique_id, name=node.name, resource_type=resource_type, status=status,
                              message=message, failing_rows=r.failures, compiled_sql=compiled,
                              model=_tested_model(node))
            if resource_type == "test" and status == "fail" and compiled:
                try:
                    failure.sample = _sample_failing_rows(compiled, database_url)
                except Exception as exc:  # the sample is a courtesy; the failure itself is what matters
                    failure.message += f"\n(could not sample failing rows: {exc})"
            failures.append(failure)
    return rows, failures


def artifacts_destination() -> str:
    """Where a run's dbt artifacts go: beside the executed notebook, else ``.stackbook/dbt/artifacts/latest``."""
    output = os.environ.get("STACKBOOK_RUN_OUTPUT")
    if output:
        base = output[: -len(".ipynb")] if output.endswith(".ipynb") else output
        return base + ".dbt"
    return str(project.state_dir() / "dbt" / "artifacts" / "latest")


def keep_artifacts(source_dir: Path, destination: str | None = None) -> str:
    """Copy ``run_results.json`` and ``manifest.json`` from a target folder to the run's artifact folder."""
    dest = destination or artifacts_destination()
    for name in ARTIFACTS:
        src = Path(source_dir) / name
        if not src.exists():
            continue
        if runstore.is_remote(dest):
            runstore.write_text(f"{dest.rstrip('/')}/{name}", src.read_text(encoding="utf-8"))
        else:
            folder = Path(dest.removeprefix("file://"))
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / name)
    return dest


def invoke(command: str, *, select: str = "", exclude: str = "", full_refresh: bool = False, env: str | None = None,
           schema_prefix: str = "", raw_schema: str | None = None, project_path: Path | str | None = None,
           threads: int | None = None, extra_vars: dict | None = None, quiet: bool = True,
           database_url: str | None = None, extra_args: list[str] | None = None):
    """Run one dbt command in this process; returns (dbtRunnerResult, args, target folder).

    Raises ``DbtError`` when dbt could not run at all (unparseable project, bad profile,
    no connection); node failures are left to the caller.
    """
    environment = environments.load(env) if env else environments.current()
    path = Path(project_path) if project_path else project_dir()
    if not (path / "dbt_project.yml").exists():
        raise DbtError(f"no dbt project at {path}: expected {path / 'dbt_project.yml'}")
    url = database_url or db.url()
    folder = write_profiles(environment.name, url, threads)
    target = target_dir(environment.name, path, schema_prefix)
    variables = {"schema_prefix": schema_prefix, **({"raw_schema": raw_schema} if raw_schema else {}),
                 **(extra_vars or {})}
    args = [*command.split(), "--project-dir", str(path), "--profiles-dir", str(folder), "--target", environment.name,
            "--target-path", str(target), "--log-path", str(target), "--vars", json.dumps(variables),
            "--no-use-colors", "--no-version-check"]
    if quiet:
        args.append("--quiet")
    if select.strip():
        args += ["--select", *select.split()]
    if exclude.strip():
        args += ["--exclude", *exclude.split()]
    if full_refresh:
        args.append("--full-refresh")
    args += list(extra_args or [])
    password = unquote(urlsplit(url).password or "")
    with _lock:  # dbt keeps global state: one invocation at a time per process
        previous = os.environ.get(PASSWORD_ENV)
        os.environ[PASSWORD_ENV] = password
        try:
            res = _dbt_runner().invoke(args)
        finally:
            if previous is None:
                os.environ.pop(PASSWORD_ENV, None)
            else:
                os.environ[PASSWORD_ENV] = previous
    if res.exception is not None:
        text = str(res.exception).replace(password, "***") if password else str(res.exception)
        raise DbtError(f"dbt {command} could not run ({type(res.exception).__name__}): {text}")
    return res, args, target


def build(select: str = "", *, exclude: str = "", full_refresh: bool = False, env: str | None = None,
          schema_prefix: str = "", raw_schema: str | None = None, project_path: Path | str | None = None,
          threads: int | None = None, check: bool = True, keep: bool = True, quiet: bool = True,
          database_url: str | None = None) -> BuildResult:
    """``dbt build`` (models, unit tests, data tests) in this process.

    ``select``/``exclude`` take dbt selection syntax separated by spaces (``"+customers tag:x"``).
    With ``check`` (the default) a failed model or test raises ``DbtBuildFailed`` naming it; with
    ``check=False`` the result is returned either way and ``result.check()`` raises later.
    ``keep`` copies run_results.json and manifest.json to ``artifacts_destination()``.
    """
    url = database_url or db.url()
    started = time.perf_counter()
    res, args, target = invoke("build", select=select, exclude=exclude, full_refresh=full_refresh, env=env,
                               schema_prefix=schema_prefix, raw_schema=raw_schema, project_path=project_path,
                               threads=threads, quiet=quiet, database_url=url)
    seconds = time.perf_counter() - started
    rows, failures = _rows_and_failures(res.result, url)
    result = BuildResult(command=["dbt", *args], success=bool(res.success), seconds=round(seconds, 3), rows=rows,
                         failures=failures, target_dir=str(target))
    if keep:
        result.artifacts_dir = keep_artifacts(target)
    if check:
        result.check()
    return result


def mart_row_counts(schema_prefix: str = "", schema: str = "marts", database_url: str | None = None) -> dict[str, int]:
    """Rows in each table of the marts schema (``<prefix>marts``); empty when the schema does not exist."""
    import psycopg
    from psycopg import sql

    name = f"{schema_prefix}{schema}"
    with psycopg.connect(database_url or db.url(), autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "select table_name from information_schema.tables where table_schema = %s and table_type = 'BASE TABLE' "
            "order by table_name", (name,))]
        return {t: conn.execute(sql.SQL("select count(*) from {}.{}").format(sql.Identifier(name),
                                                                             sql.Identifier(t))).fetchone()[0]
                for t in tables}


def freshness(*, select: str = "", env: str | None = None, schema_prefix: str = "", raw_schema: str | None = None,
              project_path: Path | str | None = None, database_url: str | None = None):
    """``dbt source freshness``: a table (source, status, max loaded at, age in hours).

    Statuses are dbt's: pass, warn, error (stale beyond the source's ``error_after``) or
    runtime error (the freshness query failed).
    """
    import pandas as pd

    res, _, target = invoke("source freshness", select=select, env=env, schema_prefix=schema_prefix,
                            raw_schema=raw_schema, project_path=project_path, database_url=database_url)
    rows = []
    for r in getattr(res.result, "results", None) or []:
        node = r.node
        age = getattr(r, "age", None)
        rows.append({"source": f"{node.source_name}.{node.name}", "status": _status(r.status),
                     "max_loaded_at": getattr(r, "max_loaded_at", None),
                     "age_hours": round(age / 3600, 1) if age is not None else None,
                     "message": (getattr(r, "message", "") or "").strip()})
    return pd.DataFrame(rows, columns=["source", "status", "max_loaded_at", "age_hours", "message"])


# ---------------------------------------------------------------------------------------------- lineage

LAYER_COLOURS = {"source": "#8fbc8f", "staging": "#87ceeb", "marts": "#f4a460", "other": "#d3d3d3"}


def load_manifest(manifest: Path | str | dict | BuildResult) -> dict:
    if isinstance(manifest, BuildResult):
        path = manifest.manifest_path()
        if path is None:
            raise DbtError("this build left no manifest.json: run it with keep=True")
        manifest = path
    if isinstance(manifest, dict):
        return manifest
    path = Path(manifest)
    if not path.exists():
        raise DbtError(f"no dbt manifest at {path}: run `dbt build` (build_warehouse) first")
    return json.loads(path.read_text(encoding="utf-8"))


def _layer(node: dict) -> str:
    if node.get("resource_type") == "source":
        return "source"
    fqn = node.get("fqn") or []
    for layer in ("staging", "marts"):
        if layer in fqn:
            return layer
    return "other"


def lineage(manifest: Path | str | dict | BuildResult):
    """The model graph: sources, seeds, snapshots and models, edges from parent to child (tests left out)."""
    import networkx as nx

    data = load_manifest(manifest)
    graph = nx.DiGraph()
    kinds = ("model", "seed", "snapshot")
    for uid, node in data.get("sources", {}).items():
        graph.add_node(uid, name=f"{node['source_name']}.{node['name']}", layer="source")
    for uid, node in data.get("nodes", {}).items():
        if node.get("resource_type") in kinds:
            graph.add_node(uid, name=node["name"], layer=_layer(node))
    for uid, node in data.get("nodes", {}).items():
        if uid not in graph:
            continue
        for parent in (node.get("depends_on") or {}).get("nodes", []):
            if parent in graph:
                graph.add_edge(parent, uid)
    return graph


def draw_lineage(graph, statuses: dict[str, str] | None = None, title: str = "dbt lineage"):
    """A matplotlib figure of the graph, layered left to right (sources, staging, marts).

    ``statuses`` maps node names to a run status; failed nodes are drawn in red.
    """
    import matplotlib.patches
    import matplotlib.pyplot as plt
    import networkx as nx

    statuses = statuses or {}
    generations = [sorted(g, key=lambda n: graph.nodes[n]["name"], reverse=True)
                   for g in nx.topological_generations(graph)]
    ordered = nx.DiGraph()
    for index, generation in enumerate(generations):
        for uid in generation:
            ordered.add_node(uid, **graph.nodes[uid], generation=index)
    ordered.add_edges_from(graph.edges)
    pos = nx.multipartite_layout(ordered, subset_key="generation", align="vertical", scale=1.0) if ordered else {}
    tallest = max((len(g) for g in generations), default=1)
    fig, ax = plt.subplots(figsize=(max(8.0, 2.6 * len(generations)), max(3.5, 0.6 * tallest)))
    nx.draw_networkx_edges(ordered, pos, ax=ax, arrows=True, arrowsize=10, edge_color="#999999", node_size=2600,
                           connectionstyle="arc3,rad=0.04")
    for uid, (x, y) in pos.items():
        node = ordered.nodes[uid]
        label = node["name"].replace("stg_jaffle_shop__", "stg_").replace("jaffle_shop.", "")
        failed = statuses.get(node["name"]) in FAILED_STATUSES
        ax.text(x, y, label, ha="center", va="center", fontsize=8, color="white" if failed else "black",
                bbox={"boxstyle": "round,pad=0.35", "facecolor": "#d62728" if failed else LAYER_COLOURS[node["layer"]],
                      "edgecolor": "#444444"})
    handles = [matplotlib.patches.Patch(color=c, label=layer) for layer, c in LAYER_COLOURS.items()
               if any(ordered.nodes[n]["layer"] == layer for n in ordered)]
    if statuses:
        handles.append(matplotlib.patches.Patch(color="#d62728", label="failed"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=len(handles), fontsize=8,
              frameon=False)
    ax.set_title(title)
    ax.axis("off")
    ax.margins(x=0.12, y=0.08)
    fig.tight_layout()
    plt.close(fig)  # the caller displays it; no second copy from the inline backend
    return fig
