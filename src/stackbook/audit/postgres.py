"""PostgreSQL audit rules (PG-0NN), checked against the live database.

Two steps, so that every rule can be proved with fixtures as well as live:

* ``observe(conn)`` reads what the rules need from the server into a plain
  dict (settings, roles, ``pg_hba_file_rules``, ``pg_authid`` and the ACL of
  the ``public`` schema of every database);
* each rule is a pure function over that dict, registered with
  ``stackbook.audit.register`` and yielding one ``Finding`` per resource.

``check_all(observation)`` runs every PostgreSQL rule. ``audit(conn)`` does both.

Application roles: the bootstrap superuser (oid 10, created by ``initdb``, the
owner of the cluster) is an administrative role, not an application role; it is
reported as ``pass`` with the exception explained. Managed services have other
administrative roles (``rds_superuser``, ``azure_pg_admin`` ...): name them in
``admin_roles`` (the environment file's ``audit.admin_roles`` list) and they are
treated the same way. Predefined ``pg_*`` roles are never application roles.

Reading ``pg_authid`` (password hashes) and ``pg_hba_file_rules`` needs a
superuser (or, for the second, an explicit grant on the view and its function).
Without it those rules report ``skip`` with the reason and the GRANT, never a
false ``pass``; everything else reads what an ordinary login can read
(``pg_settings`` with ``pg_read_all_settings``, ``pg_roles``, ``pg_namespace``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from stackbook.audit import Finding, Rule, finding, register, run_checks
from stackbook.audit import rule_ids as audit_rule_ids

AREA = "postgres"
BOOTSTRAP_OID = 10
SETTINGS = ("ssl", "password_encryption", "log_connections", "log_disconnections")
WEAK_HBA_METHODS = ("password", "md5")


def _rule(id: str, title: str, severity: str, controls: Iterable[str], fix: str) -> Rule:
    return Rule(id=id, title=title, severity=severity, controls=tuple(controls), fix=fix, area=AREA)


# ---------------------------------------------------------------- observation


def _rows(conn, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args or None)
        return cur.fetchall()


def _try_rows(conn, sql: str) -> tuple[list[dict] | None, str | None]:
    """Rows, or (None, reason) when the connected role may not read them."""
    import psycopg

    try:
        with conn.transaction():
            return _rows(conn, sql), None
    except psycopg.errors.InsufficientPrivilege as exc:
        return None, f"permission denied: {str(exc).strip().splitlines()[0]}"


PUBLIC_CREATE_SQL = """
select n.nspname as schema,
       exists (select 1 from aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                where a.grantee = 0 and a.privilege_type = 'CREATE') as public_create,
       coalesce(n.nspacl::text, 'default ACL of owner ' || pg_get_userbyid(n.nspowner)) as acl
  from pg_namespace n where n.nspname = 'public'
"""


def _public_schema(conn) -> dict[str, Any]:
    rows = _rows(conn, PUBLIC_CREATE_SQL)
    return rows[0] if rows else {"schema": None, "public_create": False, "acl": "no public schema"}


def _other_databases(conn, url: str | None, skip: str) -> list[dict[str, Any]]:
    """The public-schema ACL of every other database that accepts connections."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    out = []
    names = [r["datname"] for r in _rows(conn, "select datname from pg_database where datallowconn and "
                                               "not datistemplate order by datname")]
    for name in names:
        if name == skip:
            continue
        try:
            with psycopg.connect(make_conninfo(url, dbname=name), autocommit=True, connect_timeout=10) as other:
                out.append({"database": name, **_public_schema(other)})
        except psycopg.OperationalError as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "does not exist" in text:
                continue  # dropped while we looked (a drill's scratch database)
            key = "skip" if "permission denied" in text or "not permitted" in text else "error"
            out.append({"database": name, "schema": "public", "public_create": None, "acl": None,
                        key: f"cannot connect: {text}"})
    return out


def observe(conn, *, all_databases: bool = True, admin_roles: Iterable[str] = ()) -> dict[str, Any]:
    """Everything the PostgreSQL rules look at, read from a live connection.

    With ``all_databases`` the ``public`` schema of every database that accepts
    connections is checked (connecting with the same credentials), otherwise
    only the connected one's.
    """
    settings = {r["name"]: r["setting"] for r in _rows(
        conn, "select name, setting from pg_settings where name = any(%s)", (list(SETTINGS),))}
    me = _rows(conn, "select current_user as user, current_database() as database, "
                     "(select rolsuper from pg_roles where rolname = current_user) as superuser, "
                     "current_setting('server_version') as server_version")[0]
    roles = _rows(conn, "select oid::bigint as oid, rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin "
                        "from pg_roles order by rolname")
    hba, hba_error = _try_rows(conn, "select * from pg_hba_file_rules order by line_number")
    authid, authid_error = _try_rows(
        conn,
        "select rolname, rolcanlogin, rolpassword is null as no_password, "
        "case when rolpassword like 'SCRAM-SHA-256$%' then 'scram-sha-256' "
        "     when rolpassword like 'md5%' then 'md5' when rolpassword is null then null else 'plain' end as hash, "
        "rolvaliduntil from pg_authid order by rolname",
    )
    databases = [{"database": me["database"], **_public_schema(conn)}]
    if all_databases:
        url = conn.info.dsn
        password = conn.info.password
        if password and "password=" not in url:
            from psycopg.conninfo import make_conninfo

            url = make_conninfo(url, password=password)
        databases += _other_databases(conn, url, me["database"])
    return {
        "server": {"host": conn.info.host, "port": conn.info.port, **me},
        "settings": settings,
        "roles": roles,
        "admin_roles": sorted(set(admin_roles)),
        "hba": hba,
        "hba_error": hba_error,
        "authid": authid,
        "authid_error": authid_error,
        "databases": databases,
    }


# ---------------------------------------------------------------- settings


def _setting_rule(obs: dict, rule_id: str, name: str, want: str) -> Iterator[Finding]:
    value = obs.get("settings", {}).get(name)
    resource = f"postgres/setting/{name}"
    if value is None:
        yield finding(rule_id, "error", resource, f"setting {name} not readable from pg_settings")
    elif str(value).lower() == want:
        yield finding(rule_id, "pass", resource, f"{name} = {value}")
    else:
        yield finding(rule_id, "fail", resource, f"{name} = {value} (expected {want})")


@register(_rule("PG-001", "TLS is enabled (ssl = on)", "high", ("SOC2 CC6.1", "SOC2 CC6.7", "ISO27001 A.8.20",
                "ISO27001 A.8.24"),
                "Set ssl = on with ssl_cert_file and ssl_key_file in postgresql.conf (or the managed service's "
                "TLS option), reload, and use hostssl lines in pg_hba.conf."))
def ssl_on(obs: dict) -> Iterator[Finding]:
    yield from _setting_rule(obs, "PG-001", "ssl", "on")


@register(_rule("PG-002", "Passwords are stored as SCRAM-SHA-256 (password_encryption)", "high",
                ("SOC2 CC6.1", "ISO27001 A.5.17", "ISO27001 A.8.5", "ISO27001 A.8.24"),
                "ALTER SYSTEM SET password_encryption = 'scram-sha-256'; SELECT pg_reload_conf(); then reset "
                "every password stored as md5 (\\password ROLE)."))
def password_encryption(obs: dict) -> Iterator[Finding]:
    yield from _setting_rule(obs, "PG-002", "password_encryption", "scram-sha-256")


@register(_rule("PG-003", "Connections are logged (log_connections = on)", "medium",
                ("SOC2 CC7.2", "ISO27001 A.8.15", "ISO27001 A.8.16"),
                "ALTER SYSTEM SET log_connections = on; (takes effect for new sessions after a reload)."))
def log_connections(obs: dict) -> Iterator[Finding]:
    yield from _setting_rule(obs, "PG-003", "log_connections", "on")


@register(_rule("PG-004", "Disconnections are logged (log_disconnections = on)", "medium",
                ("SOC2 CC7.2", "ISO27001 A.8.15", "ISO27001 A.8.16"),
                "ALTER SYSTEM SET log_disconnections = on; (takes effect for new sessions after a reload)."))
def log_disconnections(obs: dict) -> Iterator[Finding]:
    yield from _setting_rule(obs, "PG-004", "log_disconnections", "on")


# ---------------------------------------------------------------- roles


def admin_exception(role: dict, admin_roles: Iterable[str]) -> str | None:
    """Why a role is administrative rather than an application role, or None."""
    if int(role.get("oid") or 0) == BOOTSTRAP_OID:
        return ("bootstrap superuser (oid 10) created by initdb; it owns the cluster and is the administrative "
                "role, not an application role")
    if role["rolname"] in set(admin_roles):
        return ("named in the administrative allow-list (admin_roles: runbook parameter or environment file "
                "audit.admin_roles)")
    return None


def _attribute_rule(obs: dict, rule_id: str, column: str, label: str) -> Iterator[Finding]:
    admins = obs.get("admin_roles") or ()
    for role in obs.get("roles", []):
        name = role["rolname"]
        if name.startswith("pg_"):
            continue  # predefined roles
        resource = f"postgres/role/{name}"
        has = bool(role.get(column))
        why = admin_exception(role, admins)
        if why is not None and has:
            yield finding(rule_id, "pass", resource, f"role {name} has {label}: allowed, {why}")
        elif has:
            yield finding(rule_id, "fail", resource, f"application role {name} has {label}")
    bad = [r["rolname"] for r in obs.get("roles", []) if r.get(column) and not r["rolname"].startswith("pg_")
           and admin_exception(r, admins) is None]
    if not bad:
        apps = sorted(r["rolname"] for r in obs.get("roles", []) if not r["rolname"].startswith("pg_")
                      and admin_exception(r, admins) is None)
        yield finding(rule_id, "pass", "postgres/roles",
                      f"no application role has {label} ({len(apps)} application roles checked"
                      + (f": {', '.join(apps[:20])}{' ...' if len(apps) > 20 else ''})" if apps else ")"))


@register(_rule("PG-005", "No application role is a superuser", "critical",
                ("SOC2 CC6.1", "SOC2 CC6.3", "ISO27001 A.8.2", "ISO27001 A.5.15"),
                "ALTER ROLE <name> NOSUPERUSER; grant the role only the privileges it needs "
                "(runbooks/provision/provision_warehouse.ipynb sets up least-privilege roles)."))
def no_superuser(obs: dict) -> Iterator[Finding]:
    yield from _attribute_rule(obs, "PG-005", "rolsuper", "SUPERUSER")


@register(_rule("PG-006", "No application role can create roles (CREATEROLE)", "high",
                ("SOC2 CC6.2", "SOC2 CC6.3", "ISO27001 A.8.2", "ISO27001 A.5.18"),
                "ALTER ROLE <name> NOCREATEROLE; role administration belongs to the administrative role."))
def no_createrole(obs: dict) -> Iterator[Finding]:
    yield from _attribute_rule(obs, "PG-006", "rolcreaterole", "CREATEROLE")


@register(_rule("PG-007", "No application role can create databases (CREATEDB)", "high",
                ("SOC2 CC6.3", "SOC2 CC8.1", "ISO27001 A.8.2"),
                "ALTER ROLE <name> NOCREATEDB; databases are created by provisioning, not by applications."))
def no_createdb(obs: dict) -> Iterator[Finding]:
    yield from _attribute_rule(obs, "PG-007", "rolcreatedb", "CREATEDB")


# ---------------------------------------------------------------- pg_hba.conf


def _hba_resource(row: dict) -> str:
    where = row.get("file_name") or "pg_hba.conf"
    return f"postgres/{where.rsplit('/', 1)[-1]}/line/{row.get('line_number')}"


def _hba_line(row: dict) -> str:
    db = ",".join(row.get("database") or [])
    users = ",".join(row.get("user_name") or [])
    addr = row.get("address") or ""
    if row.get("netmask"):
        addr += "/" + row["netmask"]
    return " ".join(x for x in (row.get("type"), db, users, addr, row.get("auth_method")) if x)


def _hba_rule(obs: dict, rule_id: str, methods: tuple[str, ...]) -> Iterator[Finding]:
    rows = obs.get("hba")
    if rows is None:
        role = _audit_role(obs)
        yield finding(rule_id, "skip", "postgres/pg_hba.conf",
                      f"pg_hba_file_rules is not readable by role {role} ({obs.get('hba_error') or 'no data'}); "
                      f"run the audit as a superuser, or a DBA grants it: GRANT SELECT ON pg_hba_file_rules TO "
                      f"{role}; GRANT EXECUTE ON FUNCTION pg_hba_file_rules() TO {role}; (a managed service may "
                      "allow neither: check its authentication settings in its console)")
        return
    bad = 0
    for row in rows:
        if row.get("error"):
            yield finding(rule_id, "error", _hba_resource(row), f"pg_hba.conf line cannot be parsed: {row['error']}")
            bad += 1
        elif (row.get("auth_method") or "").lower() in methods:
            yield finding(rule_id, "fail", _hba_resource(row), f"line {row.get('line_number')}: {_hba_line(row)}")
            bad += 1
    if not bad:
        used = sorted({(r.get("auth_method") or "?") for r in rows})
        yield finding(rule_id, "pass", "postgres/pg_hba.conf",
                      f"{len(rows)} rules, none using {' or '.join(methods)} "
                      f"(methods in use: {', '.join(used) or 'none'})")


@register(_rule("PG-008", "No pg_hba.conf line uses trust", "critical",
                ("SOC2 CC6.1", "ISO27001 A.8.5", "ISO27001 A.5.17"),
                "Replace trust with scram-sha-256 (or peer for local maintenance sockets) in pg_hba.conf and "
                "reload (SELECT pg_reload_conf())."))
def hba_no_trust(obs: dict) -> Iterator[Finding]:
    yield from _hba_rule(obs, "PG-008", ("trust",))


@register(_rule("PG-009", "No pg_hba.conf line uses password or md5", "high",
                ("SOC2 CC6.1", "SOC2 CC6.7", "ISO27001 A.8.5", "ISO27001 A.8.24"),
                "Use scram-sha-256 instead of password (clear text) or md5 in pg_hba.conf, reset md5-hashed "
                "passwords, and reload."))
def hba_no_weak_password(obs: dict) -> Iterator[Finding]:
    yield from _hba_rule(obs, "PG-009", WEAK_HBA_METHODS)


# ---------------------------------------------------------------- passwords


def _audit_role(obs: dict) -> str:
    """The role the audit connected as, quoted for SQL (\"the audit role\" for an observation without it)."""
    name = (obs.get("server") or {}).get("user")
    return '"' + name.replace('"', '""') + '"' if name else "the audit role"


def _authid_skip(obs: dict, rule_id: str) -> Finding:
    return finding(rule_id, "skip", "postgres/pg_authid",
                   f"pg_authid is not readable by role {_audit_role(obs)} "
                   f"({obs.get('authid_error') or 'no data'}); password state can only be verified by a "
                   "superuser: run the audit as one (a managed service reports it in its own console)")


@register(_rule("PG-010", "Every login role has a password", "medium",
                ("SOC2 CC6.1", "SOC2 CC6.2", "ISO27001 A.5.17", "ISO27001 A.8.5"),
                "ALTER ROLE <name> PASSWORD '...' (from a secret store), or ALTER ROLE <name> NOLOGIN when it "
                "is a group role."))
def login_roles_have_password(obs: dict) -> Iterator[Finding]:
    rows = obs.get("authid")
    if rows is None:
        yield _authid_skip(obs, "PG-010")
        return
    logins = [r for r in rows if r.get("rolcanlogin")]
    bad = [r for r in logins if r.get("no_password")]
    for r in bad:
        yield finding("PG-010", "fail", f"postgres/role/{r['rolname']}", f"login role {r['rolname']} has no password")
    if not bad:
        yield finding("PG-010", "pass", "postgres/roles",
                      f"all {len(logins)} login roles have a password ({', '.join(r['rolname'] for r in logins[:20])})")


@register(_rule("PG-011", "Stored passwords are SCRAM-SHA-256 hashes", "medium",
                ("SOC2 CC6.1", "ISO27001 A.5.17", "ISO27001 A.8.24"),
                "With password_encryption = scram-sha-256, set the role's password again (\\password ROLE) so it "
                "is stored as a SCRAM verifier."))
def passwords_are_scram(obs: dict) -> Iterator[Finding]:
    rows = obs.get("authid")
    if rows is None:
        yield _authid_skip(obs, "PG-011")
        return
    with_pw = [r for r in rows if not r.get("no_password")]
    bad = [r for r in with_pw if r.get("hash") != "scram-sha-256"]
    for r in bad:
        yield finding("PG-011", "fail", f"postgres/role/{r['rolname']}",
                      f"role {r['rolname']} has a password stored as {r.get('hash')}")
    if not bad:
        yield finding("PG-011", "pass", "postgres/roles", f"all {len(with_pw)} stored passwords are SCRAM-SHA-256")


# ---------------------------------------------------------------- public schema


@register(_rule("PG-012", "CREATE on the public schema is revoked from PUBLIC", "high",
                ("SOC2 CC6.3", "SOC2 CC8.1", "ISO27001 A.5.15", "ISO27001 A.8.9"),
                "In each database: REVOKE CREATE ON SCHEMA public FROM PUBLIC; (the default since PostgreSQL 15; "
                "databases created from an old template or dump may still grant it)."))
def public_schema_create_revoked(obs: dict) -> Iterator[Finding]:
    for db in obs.get("databases", []):
        resource = f"postgres/database/{db['database']}/schema/public"
        if db.get("error"):
            yield finding("PG-012", "error", resource, db["error"])
        elif db.get("skip"):
            yield finding("PG-012", "skip", resource, f"{db['skip']} (the audit role may not connect to it)")
        elif db.get("schema") is None:
            yield finding("PG-012", "pass", resource, f"database {db['database']} has no public schema")
        elif db.get("public_create"):
            yield finding("PG-012", "fail", resource,
                          f"PUBLIC may CREATE in schema public of database {db['database']} (acl {db.get('acl')})")
        else:
            yield finding("PG-012", "pass", resource,
                          f"PUBLIC has no CREATE in schema public of database {db['database']} (acl {db.get('acl')})")


# ---------------------------------------------------------------- entry points


def rule_ids() -> list[str]:
    return audit_rule_ids(AREA)


def check_all(obs: dict, rules: Iterable[str] | None = None) -> list[Finding]:
    """Run the PostgreSQL rules (all, or those named) over an observation."""
    return run_checks(AREA, obs, rules)


def audit(conn=None, *, admin_roles: Iterable[str] = (), all_databases: bool = True) -> list[Finding]:
    """Observe the live database (``stackbook.run.db.connect()`` unless a connection is given) and check it."""
    if conn is None:
        from stackbook.run import db

        with db.connect() as own:
            return check_all(observe(own, admin_roles=admin_roles, all_databases=all_databases))
    return check_all(observe(conn, admin_roles=admin_roles, all_databases=all_databases))
