"""Operations audit rules (OPS-0NN), read from the run ledger of the audited environment.

* OPS-001 (high): every scheduled runbook (metadata ``schedule``) has succeeded
  within its freshness window in this environment.
* OPS-002 (medium): every scheduled runbook has run at all in this environment.
* OPS-003 (high): the last DR drill (runbook ``dr_drill``) passed, within its window.
* OPS-004 (medium): a DR drill exists and has run in this environment.
* OPS-005 (high): the evidence chain is intact (``stackbook.run.evidence.verify``: every entry's hash and
  link, no entry missing, each run of this environment equal to its entry; notebooks are re-hashed by
  ``stackbook verify``, not here) and, in an environment that requires approval (prod), every destructive
  run that was not a dry run consumed an approval for exactly that runbook, environment, code and parameters.

"Never ran" is its own, medium-severity rule (OPS-002, OPS-004) rather than a
failure of the freshness rule: on a fresh machine or a new environment nothing
has run yet, which an auditor must see, but which is not evidence that a
running schedule broke. OPS-001 and OPS-003 report ``skip`` for a runbook that
never ran, pointing at OPS-002 / OPS-004. With the default ``fail_on = high`` a
fresh environment therefore passes the audit, and a stale or failing schedule
does not. Environments without a scheduler (dev) can lower the severity of
OPS-001/OPS-003 in their environment file (``audit.severity``, see
``stackbook.audit.report``).

Freshness window of a runbook (``window_hours``): its metadata
``freshness_hours`` when set; else twice the longest interval between its next
cron fire times (so one missed run is tolerated, two are not) plus its timeout;
the DR drill without either falls back to ``DR_DEFAULT_WINDOW_HOURS`` (7 days).

Check functions are pure over a context dict (``context(env, conn)`` builds it
from the catalogue and the ledger), so the freshness logic is tested with
hand-made ledger statistics as well as real ledger rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from stackbook.audit import Finding, Rule, finding, register, run_checks

AREA = "operations"
DR_RUNBOOK = "dr_drill"
DR_DEFAULT_WINDOW_HOURS = 7 * 24.0
CRON_SAMPLES = 24


def _rule(id: str, title: str, severity: str, controls: Iterable[str], fix: str) -> Rule:
    return Rule(id=id, title=title, severity=severity, controls=tuple(controls), fix=fix, area=AREA)


# ---------------------------------------------------------------- windows


def cron_interval_hours(schedule: str, start: datetime | None = None) -> float:
    """The longest gap, in hours, between consecutive fire times of a cron expression (over a sample)."""
    from croniter import croniter

    if not croniter.is_valid(schedule):
        raise ValueError(f"invalid cron expression {schedule!r}")
    it = croniter(schedule, start or datetime(2026, 1, 1, tzinfo=UTC))
    times = [it.get_next(datetime) for _ in range(CRON_SAMPLES + 1)]
    return max((b - a).total_seconds() for a, b in zip(times, times[1:])) / 3600


def window_hours(meta: dict[str, Any], default: float | None = None) -> tuple[float | None, str]:
    """(hours, how it was derived) for a runbook's metadata."""
    if meta.get("freshness_hours"):
        return float(meta["freshness_hours"]), "metadata freshness_hours"
    schedule = meta.get("schedule")
    if schedule:
        try:
            interval = cron_interval_hours(schedule)
        except ValueError as exc:
            return default, f"{exc}; default window"
        timeout_h = float(meta.get("timeout") or 0) / 3600
        hours = 2 * interval + timeout_h
        return round(hours, 3), f"2 x cron interval ({interval:g} h) + timeout ({timeout_h:.2g} h) of {schedule!r}"
    return default, "default window"


def _age_hours(when: datetime | None, now: datetime) -> float | None:
    if when is None:
        return None
    return (now - when).total_seconds() / 3600


def _fmt_age(hours: float) -> str:
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


# ---------------------------------------------------------------- rules


def _resource(name: str, env: str) -> str:
    return f"runbook/{name}@{env}"


@register(_rule("OPS-001", "Every scheduled runbook succeeded within its freshness window", "high",
                ("SOC2 CC7.1", "SOC2 CC7.2", "ISO27001 A.5.37", "ISO27001 A.8.16"),
                "Find why the schedule stopped or fails (`stackbook runs RUNBOOK -e ENV`, the executed notebook in "
                "the run store), fix it and run the runbook; if the window is wrong, set freshness_hours in the "
                "runbook's metadata."))
def scheduled_fresh(ctx: dict) -> Iterator[Finding]:
    env, now = ctx["env"], ctx["now"]
    scheduled = [rb for rb in ctx["runbooks"] if rb.get("schedule")]
    if not scheduled:
        yield finding("OPS-001", "pass", f"catalogue@{env}", "no runbook in the catalogue has a schedule")
        return
    for rb in scheduled:
        name = rb["name"]
        stats = ctx["ledger"].get(name)
        hours, how = window_hours(rb)
        resource = _resource(name, env)
        if not stats or not stats.get("runs"):
            yield finding("OPS-001", "skip", resource, f"never ran in {env} (reported by OPS-002)")
            continue
        if not stats.get("finished"):
            yield finding("OPS-001", "skip", resource, f"its first run in {env} is still in progress")
            continue
        age = _age_hours(stats.get("last_success"), now)
        last = f"last run {stats.get('last_id')} {stats.get('last_status')}"
        if age is None:
            yield finding("OPS-001", "fail", resource,
                          f"{stats['runs']} runs in {env}, none succeeded; {last}; schedule {rb['schedule']!r}")
        elif hours is None or age <= hours:
            yield finding("OPS-001", "pass", resource,
                          f"last success {_fmt_age(age)} ago ({stats['last_success'].isoformat(timespec='seconds')}) "
                          f"within {hours:g} h ({how}); {last}")
        else:
            yield finding("OPS-001", "fail", resource,
                          f"last success {_fmt_age(age)} ago ({stats['last_success'].isoformat(timespec='seconds')}), "
                          f"older than its window of {hours:g} h ({how}); {last}")


@register(_rule("OPS-002", "Every scheduled runbook has run in this environment", "medium",
                ("SOC2 CC7.2", "SOC2 CC8.1", "ISO27001 A.5.37", "ISO27001 A.8.16"),
                "Deploy the schedule (`stackbook schedule`: crontab, Airflow DAG or CronJob) for this environment, or "
                "run the runbook once by hand: `stackbook run RUNBOOK -e ENV`."))
def scheduled_ran(ctx: dict) -> Iterator[Finding]:
    env = ctx["env"]
    for path, error in ctx.get("broken") or []:
        yield finding("OPS-002", "error", f"notebook/{path}", f"cannot read the runbook's schedule: {error}")
    scheduled = [rb for rb in ctx["runbooks"] if rb.get("schedule")]
    if not scheduled:
        yield finding("OPS-002", "pass", f"catalogue@{env}", "no runbook in the catalogue has a schedule")
        return
    for rb in scheduled:
        stats = ctx["ledger"].get(rb["name"])
        if not stats or not stats.get("runs"):
            yield finding("OPS-002", "fail", _resource(rb["name"], env),
                          f"scheduled {rb['schedule']!r} but no run recorded in environment {env}")
        else:
            first = stats["first_started"].isoformat(timespec="seconds")
            yield finding("OPS-002", "pass", _resource(rb["name"], env),
                          f"{stats['runs']} runs recorded in {env} ({stats.get('finished', stats['runs'])} finished), "
                          f"first {first}")


def _dr(ctx: dict) -> dict | None:
    name = ctx.get("dr_runbook", DR_RUNBOOK)
    return next((rb for rb in ctx["runbooks"] if rb["name"] == name), None)


@register(_rule("OPS-003", "The last DR drill passed within its window", "high",
                ("SOC2 CC7.4", "SOC2 CC7.5", "ISO27001 A.5.29", "ISO27001 A.5.30", "ISO27001 A.8.13"),
                "Run the drill (`stackbook run dr_drill -e ENV`), fix what it finds (a table that differs, an RTO or "
                "RPO target missed) until it passes, and keep it on its schedule."))
def dr_drill_passed(ctx: dict) -> Iterator[Finding]:
    env, now = ctx["env"], ctx["now"]
    name = ctx.get("dr_runbook", DR_RUNBOOK)
    rb = _dr(ctx)
    resource = _resource(name, env)
    if rb is None:
        yield finding("OPS-003", "skip", resource, f"no runbook {name!r} in the catalogue (reported by OPS-004)")
        return
    stats = ctx["ledger"].get(name)
    if not stats or not stats.get("last_finished"):
        yield finding("OPS-003", "skip", resource, f"no finished drill in {env} (reported by OPS-004)")
        return
    hours, how = window_hours(rb, DR_DEFAULT_WINDOW_HOURS)
    age = _age_hours(stats["last_finished"], now)
    when = f"{stats['last_id']} finished {_fmt_age(age)} ago ({stats['last_finished'].isoformat(timespec='seconds')})"
    results = stats.get("last_results") or {}
    measured = ", ".join(f"{k}={results[k]}" for k in ("rto_seconds", "rpo_seconds", "tables_verified",
                                                        "checksums_match") if k in results)
    if stats.get("last_status") != "succeeded":
        yield finding("OPS-003", "fail", resource, f"last drill {when} {stats.get('last_status')}"
                      + (f": {stats['last_reason']}" if stats.get("last_reason") else ""))
    elif age > hours:
        yield finding("OPS-003", "fail", resource, f"last drill {when} passed, but is older than its window of "
                      f"{hours:g} h ({how})")
    else:
        yield finding("OPS-003", "pass", resource, f"last drill {when} passed, within {hours:g} h ({how})"
                      + (f"; {measured}" if measured else ""))


@register(_rule("OPS-004", "A DR drill exists and has run in this environment", "medium",
                ("SOC2 CC7.5", "ISO27001 A.5.30", "ISO27001 A.8.13"),
                "Add runbooks/dr/dr_drill.ipynb if missing and run it in this environment: "
                "`stackbook run dr_drill -e ENV`."))
def dr_drill_ran(ctx: dict) -> Iterator[Finding]:
    env = ctx["env"]
    name = ctx.get("dr_runbook", DR_RUNBOOK)
    resource = _resource(name, env)
    if _dr(ctx) is None:
        yield finding("OPS-004", "fail", resource, f"no runbook {name!r} in the catalogue: no DR drill is defined")
        return
    stats = ctx["ledger"].get(name)
    if not stats or not stats.get("last_finished"):
        yield finding("OPS-004", "fail", resource, f"the DR drill has never finished a run in environment {env}")
    else:
        yield finding("OPS-004", "pass", resource, f"{stats['runs']} drills recorded in {env}")


@register(_rule("OPS-005", "The evidence chain is intact and destructive production runs carry a matching approval",
                "high", ("SOC2 CC6.1", "SOC2 CC7.2", "SOC2 CC8.1", "ISO27001 A.5.3", "ISO27001 A.5.28",
                         "ISO27001 A.8.15", "ISO27001 A.8.32"),
                "A broken chain: `stackbook verify -e ENV` names each entry; find who changed the ledger (the "
                "server log) and restore it from a backup, then compare with the head published earlier. A run "
                "without a matching approval: record why it ran unapproved, and keep `approval:` in the "
                "environment file so that `stackbook run` refuses the next one."))
def evidence_intact(ctx: dict) -> Iterator[Finding]:
    env, ev = ctx["env"], ctx.get("evidence") or {}
    if ev.get("chain") is None:
        yield finding("OPS-005", "skip", "chain/stackbook.chain", "no evidence chain in this database yet")
    elif ev["chain"]["problems"]:
        problems = ev["chain"]["problems"]
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        yield finding("OPS-005", "fail", "chain/stackbook.chain",
                      f"the evidence chain is broken: {len(problems)} problem(s): {shown}")
    else:
        yield finding("OPS-005", "pass", "chain/stackbook.chain",
                      f"chain intact: {ev['chain']['entries']} entries, head {ev['chain']['head']}; runs of {env} "
                      "equal their entries (executed notebooks: `stackbook verify`)")
    if not ev.get("approval_required"):
        yield finding("OPS-005", "pass", f"approvals@{env}",
                      f"environment {env} does not require approval of destructive runs")
        return
    unapproved = ev.get("unapproved") or []
    for run in unapproved:
        yield finding("OPS-005", "fail", f"run/{run['id']}@{env}",
                      f"destructive run of {run['runbook']} with dry_run false {run['status']} "
                      f"({run['started_at']}): {run['why']}")
    if not unapproved:
        yield finding("OPS-005", "pass", f"approvals@{env}",
                      f"{ev.get('destructive_runs', 0)} destructive run(s) that were not dry runs in {env}, each "
                      "with a matching approval")


# ---------------------------------------------------------------- context


LEDGER_SQL = """
select runbook,
       count(*) as runs,
       count(*) filter (where status <> 'running') as finished,
       min(started_at) as first_started,
       max(finished_at) filter (where status = 'succeeded') as last_success,
       (array_agg(id order by started_at desc) filter (where status <> 'running'))[1] as last_id,
       (array_agg(status order by started_at desc) filter (where status <> 'running'))[1] as last_status,
       (array_agg(finished_at order by started_at desc) filter (where status <> 'running'))[1] as last_finished,
       (array_agg(reason order by started_at desc) filter (where status <> 'running'))[1] as last_reason,
       (array_agg(results order by started_at desc) filter (where status <> 'running'))[1] as last_results
  from stackbook.runs
 where env = %s and runbook = any(%s)
   and status not in ('skipped', 'upstream_failed', 'refused')  -- rows of runs that never started
 group by runbook
"""


def ledger_stats(conn, env: str, runbooks: Iterable[str]) -> tuple[dict[str, dict], datetime]:
    """Per runbook: runs, first start, last success, last finished run (id, status, time, reason, results);
    and the database's clock (``now``), so ages are measured against the clock that stamped the rows."""
    from psycopg.rows import dict_row

    now = conn.execute("select now()").fetchone()[0]
    if not conn.execute("select to_regclass('stackbook.runs') is not null").fetchone()[0]:
        return {}, now
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(LEDGER_SQL, (env, list(runbooks)))
        return {r["runbook"]: r for r in cur.fetchall()}, now


_UNAPPROVED_SQL = """
select r.id, r.runbook, r.status, r.started_at, r.code_sha256, r.params_sha256, r.approval_id, r.approved_by,
       a.id as found,
       a.runbook as a_runbook, a.env as a_env, a.code_sha256 as a_code, a.params_sha256 as a_params
  from stackbook.runs r left join stackbook.approvals a on a.id = r.approval_id
 where r.env = %s and r.runbook = any(%s) and r.params->'dry_run' = 'false'::jsonb
   and r.status not in ('skipped', 'upstream_failed', 'refused')
 order by r.started_at
"""


def _approval_mismatch(row: dict) -> str | None:
    """Why a destructive run's approval does not match it, or None when it does."""
    if not row["approval_id"]:
        given = (f"; approved_by {row['approved_by']!r} is a name typed on the command line, not a recorded "
                 "approval" if row.get("approved_by") else "")
        return f"it consumed no approval (approval_id is empty){given}"
    if row["found"] is None:
        return f"its approval {row['approval_id']} is not in stackbook.approvals"
    differ = [what for what, a, r in (("runbook", row["a_runbook"], row["runbook"]),
                                      ("code sha256", row["a_code"], row["code_sha256"]),
                                      ("parameters sha256", row["a_params"], row["params_sha256"])) if a != r]
    if row["a_env"] != row["env"]:
        differ.append("environment")
    return f"its approval {row['approval_id']} is for another {', '.join(differ)}" if differ else None


def evidence_stats(conn, env: str, destructive: list[str]) -> dict[str, Any]:
    """OPS-005's evidence: the chain verified (without re-hashing notebooks) and the destructive runs of ENV
    that were not dry runs and lack a matching approval (when the environment requires approval)."""
    from psycopg.rows import dict_row

    from stackbook.core import environments
    from stackbook.run import evidence

    out: dict[str, Any] = {"chain": None, "approval_required": False, "unapproved": [], "destructive_runs": 0}
    if not conn.execute("select to_regclass('stackbook.chain') is not null").fetchone()[0]:
        return out
    report = evidence.verify(conn, env=env, notebooks_too=False)
    out["chain"] = {"entries": report.entries, "head": report.head, "problems": [str(p) for p in report.problems]}
    out["approval_required"] = env in environments.available() and environments.load(env).require_approval
    if not out["approval_required"] or not destructive:
        return out
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_UNAPPROVED_SQL, (env, destructive)).fetchall()
    out["destructive_runs"] = len(rows)
    for row in rows:
        why = _approval_mismatch({**row, "env": env})
        if why:
            out["unapproved"].append({"id": row["id"], "runbook": row["runbook"], "status": row["status"],
                                      "started_at": row["started_at"].isoformat(timespec="seconds"), "why": why})
    return out


def control_runbooks(runbooks: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Control id -> the runbooks whose runs give evidence for it: each runbook's ``controls:`` metadata, the
    compliance audit for every control of a registered rule (its report covers them), the DR drill for OPS-003
    and OPS-004's, every scheduled runbook for OPS-001 and OPS-002's."""
    from stackbook.audit import RULES, kubernetes, postgres, report, secrets_scan  # noqa: F401 (their rules)

    out: dict[str, set[str]] = {}
    for rb in runbooks:
        for control in rb.get("controls") or []:
            out.setdefault(control, set()).add(rb["name"])
    for rule in RULES.values():
        for control in rule.controls:
            out.setdefault(control, set()).add("compliance_audit")
            if rule.id in ("OPS-003", "OPS-004"):
                out[control].add(DR_RUNBOOK)
            if rule.id in ("OPS-001", "OPS-002"):
                out[control].update(rb["name"] for rb in runbooks if rb.get("schedule"))
    return out


def catalogue() -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Runbook metadata from the catalogue, and (path, error) for notebooks that cannot be read."""
    from stackbook.core import catalog, notebooks, project
    from stackbook.core.errors import NotebookError

    runbooks, broken = [], []
    for path in catalog.paths():
        try:
            rb = notebooks.load(path, project.runbooks_dir())
        except (NotebookError, OSError) as exc:  # a broken notebook must not hide the others: OPS-002 reports it
            broken.append((str(path), str(exc)))
            continue
        runbooks.append({"name": rb.name, **{k: rb.metadata.get(k) for k in
                                             ("schedule", "freshness_hours", "timeout", "destructive",
                                              "controls")}})
    return runbooks, broken


def context(env: str, conn=None, *, runbooks: list[dict] | None = None, dr_runbook: str = DR_RUNBOOK) -> dict:
    """What the operations rules need: the environment, the runbooks, ledger statistics and the clock."""
    broken: list[tuple[str, str]] = []
    if runbooks is None:
        runbooks, broken = catalogue()
    names = [rb["name"] for rb in runbooks]
    destructive = [rb["name"] for rb in runbooks if rb.get("destructive")]
    if conn is None:
        from stackbook.run import db

        with db.connect() as own:
            stats, now = ledger_stats(own, env, names)
            evidence = evidence_stats(own, env, destructive)
    else:
        stats, now = ledger_stats(conn, env, names)
        evidence = evidence_stats(conn, env, destructive)
    return {"env": env, "runbooks": runbooks, "ledger": stats, "now": now, "dr_runbook": dr_runbook,
            "broken": broken, "evidence": evidence}


def check_all(ctx: dict, rules: Iterable[str] | None = None) -> list[Finding]:
    return run_checks(AREA, ctx, rules)


def audit(env: str, conn=None) -> list[Finding]:
    return check_all(context(env, conn))
