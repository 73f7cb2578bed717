"""Running the compliance audit and writing its evidence report.

``run(env, areas=..., manifests_dir=..., fail_on=...)`` runs the rules of every
area (``kubernetes``, ``postgres``, ``secrets``, ``operations``) or a selection,
and returns a ``Report``: one finding per check and resource, written as JSON
to ``.stackbook/audit/<env>/<timestamp>.json`` and, under the runner, next to
the executed notebook (``<run id>.audit.json`` beside ``$STACKBOOK_RUN_OUTPUT``).
``Report.check()`` raises ``AuditFailed`` listing the failing rule ids when a
check at or above ``fail_on`` failed.

Statuses: ``pass``; ``fail``; ``error`` (the check could not be made: counted
as failed, since an unproved control is not a passed one); ``skip`` (not
applicable, or not verifiable with the audit's privileges, with the reason in
the evidence; never counted as failed).

An area that cannot run at all yields one ``AUDIT-001`` finding: ``skip`` when
it has nothing to check (no Kubernetes overlay for the environment), ``error``
when it raised (a broken overlay, an unreachable database). An audit that cannot
read the secret values its evidence must never show (a declared secret or an
``.env`` file that cannot be read) stops with ``AuditRedactionError`` and writes
no report: evidence it could not redact is not written anywhere.

Per-environment settings, from the environment file's ``audit`` mapping::

    audit:
      severity: {OPS-001: low}       # severity overrides per rule id, with the reason in a comment
      admin_roles: [rds_superuser]   # administrative PostgreSQL roles (not application roles)
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackbook.audit import RULES, SEVERITIES, Finding, Rule, at_or_above, finding, register
from stackbook.core.errors import (
    AuditFailed,
    AuditRedactionError,
    DatabaseUnavailable,
    ManifestError,
    StackbookError,
    UsageError,
)

AREAS = ("kubernetes", "postgres", "secrets", "operations")
FAILED = ("fail", "error")
REPORT_VERSION = 1


@register(Rule(id="AUDIT-001", title="Every audit area could be checked", severity="high",
               controls=("SOC2 CC7.1", "ISO27001 A.5.35", "ISO27001 A.5.36"),
               fix="Read the evidence: give the audit the access it needs (database, manifests), or fix the "
                   "error it names, then run the audit again.",
               area="audit"))
def _area_status(_ctx: Any = None):  # findings are made by ``run``; the rule exists for its metadata
    return []


# ---------------------------------------------------------------- areas


def _area_kubernetes(env: str, opts: dict) -> list[Finding]:
    from stackbook.audit import kubernetes as rules

    manifests_dir = opts.get("manifests_dir") or ""
    if manifests_dir:
        path = _manifests_path(manifests_dir)
        manifests, where = rules.load_manifests(path), str(path)
    else:
        nothing = _nothing_to_render(env)
        if nothing:
            return [finding("AUDIT-001", "skip", "area/kubernetes", nothing)]
        from stackbook.k8s import render

        try:
            manifests = render.render(env)
        except ManifestError as exc:  # a broken overlay is a finding, not a crash of the whole audit
            return [finding("AUDIT-001", "error", "area/kubernetes", f"rendering infra/k8s for {env} failed: {exc}")]
        where = f"infra/k8s rendered for {env}"
    findings = list(rules.check_all(manifests))
    if not findings:
        return [finding("AUDIT-001", "skip", "area/kubernetes", f"no workload found in {where}")]
    return findings


def _manifests_path(manifests_dir: str) -> Path:
    """``manifests_dir`` as given, else relative to the project root; a UsageError when it does not exist."""
    from stackbook.core import project

    path = Path(manifests_dir)
    if not path.is_absolute() and not path.exists():
        path = project.root() / manifests_dir
    if not path.exists():
        raise UsageError(f"manifests_dir {manifests_dir!r}: no such file or folder")
    return path


def _nothing_to_render(env: str) -> str | None:
    """Why the project has no Kubernetes manifests for ``env`` to check, or None when it has an overlay."""
    from stackbook.core import project
    from stackbook.k8s import render

    base = project.root() / "infra" / "k8s"
    if not base.exists():
        return f"no Kubernetes manifests in this project ({base} does not exist): nothing to check"
    overlay = render.overlay_dir(env)
    if not overlay.exists():
        return f"no Kubernetes overlay for environment {env} ({overlay}): nothing to check"
    return None


def _area_postgres(env: str, opts: dict) -> list[Finding]:
    from stackbook.audit import postgres

    return postgres.audit(opts.get("conn"), admin_roles=opts.get("admin_roles") or ())


def _area_secrets(env: str, opts: dict) -> list[Finding]:
    from stackbook.audit import secrets_scan

    return secrets_scan.audit(env, known=opts.get("known_secrets"))


def _area_operations(env: str, opts: dict) -> list[Finding]:
    from stackbook.audit import operations

    return operations.audit(env, opts.get("conn"))


AREA_RUNNERS: dict[str, Callable[[str, dict], list[Finding]]] = {
    "kubernetes": _area_kubernetes,
    "postgres": _area_postgres,
    "secrets": _area_secrets,
    "operations": _area_operations,
}


# ---------------------------------------------------------------- report


@dataclass
class Report:
    env: str
    fail_on: str
    areas: list[str]
    findings: list[Finding]
    generated_at: str
    overrides: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    run_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # --- numbers
    @property
    def checks_total(self) -> int:
        return len(self.findings)

    @property
    def checks_failed(self) -> int:
        return sum(f.status in FAILED for f in self.findings)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("pass", "fail", "error", "skip")}
        for f in self.findings:
            out[f.status] = out.get(f.status, 0) + 1
        return out

    def failing(self, threshold: str | None = None) -> list[Finding]:
        """Failed or errored findings at or above ``threshold`` (default: this report's fail_on)."""
        threshold = threshold or self.fail_on
        return [f for f in self.findings if f.status in FAILED and at_or_above(f.severity, threshold)]

    @property
    def failing_ids(self) -> list[str]:
        return sorted({f.id for f in self.failing()})

    @property
    def passed(self) -> bool:
        return not self.failing()

    # --- output
    def to_dict(self) -> dict[str, Any]:
        used = sorted({f.id for f in self.findings})
        return {
            "version": REPORT_VERSION,
            "env": self.env,
            "generated_at": self.generated_at,
            "fail_on": self.fail_on,
            "areas": self.areas,
            "passed": self.passed,
            "summary": {"checks_total": self.checks_total, "checks_failed": self.checks_failed, **self.counts(),
                        "failing_at_or_above_fail_on": self.failing_ids},
            "severity_overrides": self.overrides,
            **self.meta,
            "rules": {rid: _rule_dict(RULES[rid]) for rid in used if rid in RULES},
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str) + "\n"

    def frame(self, statuses: Iterable[str] | None = None):
        """The findings as a pandas DataFrame (failing first, then by severity and id)."""
        import pandas as pd

        rows = [f.to_dict() for f in self.findings if statuses is None or f.status in set(statuses)]
        cols = ["id", "severity", "status", "resource", "evidence", "title", "controls", "fix"]
        df = pd.DataFrame(rows, columns=cols)
        if df.empty:
            return df
        df["controls"] = df["controls"].map(", ".join)
        order = {"error": 0, "fail": 1, "skip": 2, "pass": 3}
        df["_s"] = df["status"].map(order)
        df["_v"] = df["severity"].map(lambda s: -SEVERITIES.index(s))
        return df.sort_values(["_s", "_v", "id", "resource"]).drop(columns=["_s", "_v"]).reset_index(drop=True)

    def summary(self):
        """Counts by area, rule and status, as a pandas DataFrame."""
        import pandas as pd

        rows = []
        for f in self.findings:
            rule = RULES.get(f.id)
            rows.append({"area": rule.area if rule else "?", "id": f.id, "title": f.title, "severity": f.severity,
                         "status": f.status})
        df = pd.DataFrame(rows, columns=["area", "id", "title", "severity", "status"])
        if df.empty:
            return df
        table = df.pivot_table(index=["area", "id", "title", "severity"], columns="status", aggfunc="size",
                               fill_value=0)
        for s in ("pass", "fail", "error", "skip"):
            if s not in table.columns:
                table[s] = 0
        return table[["pass", "fail", "error", "skip"]].reset_index()

    def controls(self):
        """Per control (SOC 2, ISO 27001): the rules that serve it and how many checks pass and fail."""
        import pandas as pd

        acc: dict[str, dict[str, Any]] = {}
        for f in self.findings:
            for control in f.controls:
                row = acc.setdefault(control, {"control": control, "rules": set(), "pass": 0, "fail": 0,
                                               "error": 0, "skip": 0})
                row["rules"].add(f.id)
                row[f.status] += 1
        rows = [{**r, "rules": ", ".join(sorted(r["rules"]))} for r in acc.values()]
        return pd.DataFrame(sorted(rows, key=lambda r: r["control"]),
                            columns=["control", "rules", "pass", "fail", "error", "skip"])

    def html(self) -> str:
        """A short HTML summary: verdict, counts, and the failing checks."""
        import html as _html

        counts = self.counts()
        verdict = "PASSED" if self.passed else f"FAILED ({', '.join(self.failing_ids)})"
        colour = "#1a7f37" if self.passed else "#cf222e"
        head = (f"<p><b style='color:{colour}'>Audit {_html.escape(verdict)}</b> &mdash; environment "
                f"<code>{_html.escape(self.env)}</code>, fail_on <code>{self.fail_on}</code>, "
                f"{self.checks_total} checks: {counts['pass']} pass, {counts['fail']} fail, {counts['error']} error, "
                f"{counts['skip']} skip.</p>")
        bad = self.frame(statuses=FAILED)
        if bad.empty:
            return head + "<p>No check failed.</p>"
        return head + bad[["id", "severity", "status", "resource", "evidence", "fix"]].to_html(index=False)

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        c = self.counts()
        verdict = "passed" if self.passed else f"failed ({', '.join(self.failing_ids)})"
        return (f"<audit report {self.env}: {verdict} at fail_on={self.fail_on}; {self.checks_total} checks, "
                f"{c['pass']} pass, {c['fail']} fail, {c['error']} error, {c['skip']} skip; {self.path}>")

    def check(self, fail_on: str | None = None) -> Report:
        """Raise ``AuditFailed`` when a check at or above ``fail_on`` failed; return self otherwise."""
        bad = self.failing(fail_on)
        if bad:
            ids = sorted({f.id for f in bad})
            lines = "; ".join(f"{f.id} {f.status} {f.resource}: {f.evidence}" for f in bad[:10])
            more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
            raise AuditFailed(
                f"compliance audit of {self.env} failed: {len(bad)} checks at or above {fail_on or self.fail_on} "
                f"failed ({', '.join(ids)}): {lines}{more}; report {self.path}",
                ids, self.path, env=self.env)
        return self

    def write(self, folder: Path | None = None) -> str:
        """Write the JSON report under ``.stackbook/audit/<env>/`` (and next to the run under the runner)."""
        from stackbook.core import project
        from stackbook.core.files import atomic_write_text
        from stackbook.run import runstore

        folder = Path(folder) if folder else project.state_dir() / "audit" / self.env
        folder.mkdir(parents=True, exist_ok=True)
        stamp = self.generated_at.replace("-", "").replace(":", "").replace("+0000", "Z")
        path = folder / f"{stamp}.json"
        if path.exists():
            path = folder / f"{stamp}-{secrets.token_hex(2)}.json"
        atomic_write_text(path, self.to_json())
        self.path = str(path)
        run_output = os.environ.get("STACKBOOK_RUN_OUTPUT")
        if run_output:
            loc = run_output[: -len(".ipynb")] if run_output.endswith(".ipynb") else run_output
            self.run_path = loc + ".audit.json"
            runstore.write_text(self.run_path, self.to_json())
        return self.path


def _rule_dict(rule: Rule) -> dict[str, Any]:
    return {"title": rule.title, "severity": rule.severity, "controls": list(rule.controls), "fix": rule.fix,
            "area": rule.area}


def environment_settings(env: str) -> dict[str, Any]:
    """The environment file's ``audit`` mapping: empty when the environment has no file or no such key;
    an ``EnvironmentFileError`` when its file is malformed (the audit does not guess its settings)."""
    from stackbook.core import environments

    if env not in environments.available():
        return {}
    data = environments.load(env).get("audit") or {}
    if not isinstance(data, dict):
        raise UsageError(f"environment {env!r}: audit must be a mapping (severity, admin_roles)", env=env)
    return data


def apply_overrides(findings: list[Finding], overrides: dict[str, str]) -> None:
    for f in findings:
        sev = overrides.get(f.id)
        if sev and sev != f.severity:
            f.evidence += f" [severity {f.severity} lowered to {sev} for this environment]" \
                if SEVERITIES.index(sev) < SEVERITIES.index(f.severity) else \
                f" [severity {f.severity} raised to {sev} for this environment]"
            f.severity = sev


def _database_label(conn=None) -> str | None:
    """user@host:port/dbname of the audited database (never the password); None without a database."""
    if conn is not None:
        i = conn.info
        return f"{i.user}@{i.host}:{i.port}/{i.dbname}"
    from urllib.parse import urlsplit

    from stackbook.run import db

    try:
        u = urlsplit(db.url())
    except DatabaseUnavailable:
        return None
    return f"{u.username}@{u.hostname}:{u.port}{u.path}"


def _git_commit() -> str | None:
    from stackbook.core import project

    return project.git_commit()


def run(env: str | None = None, *, areas: Iterable[str] | None = None, manifests_dir: str = "",
        fail_on: str = "high", write: bool = True, conn=None, admin_roles: Iterable[str] | None = None,
        severity: dict[str, str] | None = None, known_secrets: dict[str, str] | None = None) -> Report:
    """Run the audit of ``env`` (default: the current environment) and return its report.

    ``areas``: a subset of ``AREAS`` (default all). ``severity`` defaults to the environment file's
    ``audit.severity``; ``admin_roles`` adds to its ``audit.admin_roles``. Nothing raises for a failing
    check: call ``Report.check()``. ``AuditRedactionError`` when the secret values the evidence must
    never show cannot be read (nothing is checked or written then).
    """
    from stackbook.core import environments
    from stackbook.run.scrub import Scrubber

    env = env or environments.current().name
    selected = _selected_areas(areas, fail_on)
    settings = environment_settings(env)
    overrides = _severity_overrides(env, settings, severity)
    known = _known_secrets(env) if known_secrets is None else known_secrets  # first: no redaction, no audit
    opts = {"manifests_dir": manifests_dir, "conn": conn,
            "admin_roles": sorted(set(settings.get("admin_roles") or []) | set(admin_roles or [])),
            "known_secrets": known}
    generated = datetime.now(UTC)
    findings, timings = _run_areas(env, selected, opts)
    apply_overrides(findings, overrides)
    scrub = Scrubber(known)  # last line of defence: no known secret value in the evidence
    for f in findings:
        f.evidence = scrub.text(f.evidence)
        f.resource = scrub.text(f.resource)
    report = Report(env=env, fail_on=fail_on, areas=selected, findings=findings,
                    generated_at=generated.strftime("%Y-%m-%dT%H:%M:%S.%f+0000"), overrides=overrides,
                    meta={"git_commit": _git_commit(), "run_id": os.environ.get("STACKBOOK_RUN_ID"),
                          "database": _database_label(conn),
                          "manifests_dir": manifests_dir or None, "seconds_by_area": timings})
    if write:
        report.write()
        report.meta["run_report_path"] = report.run_path
    return report


def _selected_areas(areas: Iterable[str] | None, fail_on: str) -> list[str]:
    """The areas to audit (default all); a UsageError for an unknown one or an unknown fail_on."""
    if fail_on not in SEVERITIES:
        raise UsageError(f"fail_on must be one of {', '.join(SEVERITIES)}, got {fail_on!r}")
    selected = list(areas) if areas else list(AREAS)
    unknown = [a for a in selected if a not in AREA_RUNNERS]
    if unknown:
        raise UsageError(f"unknown audit area {', '.join(map(repr, unknown))}: choose from {', '.join(AREAS)}")
    return selected


def _severity_overrides(env: str, settings: dict[str, Any], severity: dict[str, str] | None) -> dict[str, str]:
    overrides = dict(settings.get("severity") or {}) if severity is None else dict(severity)
    bad = {k: v for k, v in overrides.items() if v not in SEVERITIES}
    if bad:
        raise UsageError(f"environment {env!r}: audit.severity values must be one of {SEVERITIES}: {bad}", env=env)
    return overrides


def _known_secrets(env: str) -> dict[str, str]:
    """The values the report must never show; ``AuditRedactionError`` when they cannot be read."""
    from stackbook.audit.secrets_scan import known_secrets
    from stackbook.core import project

    try:
        return known_secrets(env)
    except (OSError, ValueError, StackbookError) as exc:  # an unreadable .env, a broken cluster file ...
        root = project.root()
        raise AuditRedactionError(
            f"audit of {env}: cannot read the secret values its evidence must never show "
            f"({type(exc).__name__}: {exc}); the audit stopped before checking anything and wrote no report. "
            f"Fix what the error names (declared secrets are read from the process environment, "
            f"{root / f'.env.{env}'} and {root / '.env'}), then run the audit again", env=env) from exc


def _run_areas(env: str, selected: list[str], opts: dict) -> tuple[list[Finding], dict[str, float]]:
    """The findings of every selected area and the seconds each took; an area that raised is an
    ``AUDIT-001`` error finding (the other areas still run), except for bad usage, which stops the audit."""
    findings: list[Finding] = []
    timings: dict[str, float] = {}
    for area in selected:
        started = datetime.now(UTC)
        try:
            findings.extend(AREA_RUNNERS[area](env, opts))
        except UsageError:
            raise
        except Exception as exc:  # recorded: the error is a finding, counted as failed
            findings.append(finding("AUDIT-001", "error", f"area/{area}", f"{type(exc).__name__}: {exc}"))
        timings[area] = round((datetime.now(UTC) - started).total_seconds(), 3)
    return findings, timings


def load(path: str | Path) -> dict[str, Any]:
    """A written report, as a dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


__all__ = ["AREAS", "AuditFailed", "AuditRedactionError", "Report", "run", "load", "environment_settings",
           "apply_overrides"]
