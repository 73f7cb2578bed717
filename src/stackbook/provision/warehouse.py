"""Provisioning the warehouse: a database, its schemas, least-privilege roles.

The desired state is declared below (``SCHEMAS``, ``ROLES``, ``LEVELS``).
``plan(database)`` reads the live catalog (``pg_database``, ``pg_namespace``,
``pg_roles``, ``pg_authid``, ``pg_auth_members``, ``has_*_privilege``, ACLs and
``pg_default_acl``) and returns the statements that take what is to what should
be; an empty plan means nothing to change. ``apply(database)`` re-plans inside
one transaction under an advisory lock and runs exactly those statements, so
a second apply finds nothing to do.

Roles (cluster-wide, shared by every database they are provisioned into):

=========================  ================================================
``stackbook_loader``       writes ``raw`` (CREATE, DML on its tables)
``stackbook_transformer``  reads ``raw``; writes ``staging`` and ``marts``
``stackbook_reader``       reads ``marts``
=========================  ================================================

All three are ``LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
NOBYPASSRLS`` with a SCRAM-SHA-256 password, are members of no other role, and
hold no privilege on the managed schemas beyond the above (extra grants are
revoked). Default privileges make tables created later in a schema (by the
admin who runs provisioning, or by the role that writes the schema) readable or
writable by the right roles.

Passwords: ``STACKBOOK_LOADER_PASSWORD``, ``STACKBOOK_TRANSFORMER_PASSWORD``
and ``STACKBOOK_READER_PASSWORD`` (process environment, ``.env.<env>`` or
``.env``) when set; otherwise the password kept in
``.stackbook/credentials/<role>`` (mode 0600, git-ignored with ``.stackbook/``);
otherwise a new one is generated at apply time and written there. The password
is sent to the server only as a SCRAM verifier computed here (as ``psql
\\password`` does), so no plain password reaches the server or its logs, and
plans show the verifier masked. A role whose password was set outside
stackbook and for which no password is known here is left alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg.sql import Identifier, Literal

from stackbook.core import project
from stackbook.core.errors import ProvisionError, UsageError  # noqa: F401 (re-exported)

SCHEMAS = ("raw", "staging", "marts", "ml", "audit", "stackbook")


@dataclass(frozen=True)
class Level:
    """Privileges one access level grants on a schema, its tables and its sequences."""

    schema: tuple[str, ...]
    tables: tuple[str, ...]
    sequences: tuple[str, ...]


LEVELS = {
    "read": Level(schema=("USAGE",), tables=("SELECT",), sequences=("SELECT",)),
    "write": Level(schema=("USAGE", "CREATE"), tables=("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"),
                   sequences=("USAGE", "SELECT", "UPDATE")),
}


@dataclass(frozen=True)
class RoleSpec:
    name: str
    access: tuple[tuple[str, str], ...]  # (schema, level)
    purpose: str

    @property
    def secret(self) -> str:
        """The environment variable that may hold this role's password."""
        return f"{self.name.upper()}_PASSWORD"

    def level(self, schema: str) -> Level | None:
        for s, lvl in self.access:
            if s == schema:
                return LEVELS[lvl]
        return None


ROLES = (
    RoleSpec("stackbook_loader", (("raw", "write"),), "loads source data into raw"),
    RoleSpec("stackbook_transformer", (("raw", "read"), ("staging", "write"), ("marts", "write")),
             "dbt: reads raw, builds staging and marts"),
    RoleSpec("stackbook_reader", (("marts", "read"),), "dashboards and analysts: reads marts"),
)
ROLE_ATTRIBUTES = {  # pg_roles column: (wanted value, keyword when it must be switched on, off)
    "rolcanlogin": (True, "LOGIN", "NOLOGIN"),
    "rolsuper": (False, "SUPERUSER", "NOSUPERUSER"),
    "rolcreatedb": (False, "CREATEDB", "NOCREATEDB"),
    "rolcreaterole": (False, "CREATEROLE", "NOCREATEROLE"),
    "rolreplication": (False, "REPLICATION", "NOREPLICATION"),
    "rolbypassrls": (False, "BYPASSRLS", "NOBYPASSRLS"),
}
LOCK_KEY = "stackbook.provision"
SCRAM_ITERATIONS = 4096
MASK = "<scram-sha-256 verifier>"
NOTHING_TO_CHANGE = "nothing to change"


def role_names() -> list[str]:
    return [r.name for r in ROLES]


# Plan steps are text (shown to people, then run as they read), so identifiers and literals are
# quoted by psycopg's sql.Identifier / sql.Literal and kept as strings.
def _q(name: str) -> str:
    """NAME as a quoted SQL identifier."""
    return Identifier(name).as_string()


def _lit(value: str) -> str:
    """VALUE as a quoted SQL string literal."""
    return Literal(value).as_string()


# ---------------------------------------------------------------- passwords


def credentials_dir() -> Path:
    path = project.home_dir() / "credentials"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def known_password(role: RoleSpec, env: str | None = None) -> tuple[str | None, str]:
    """(password, where it came from) from the secret (looked up as every secret is: ``scrub``), else the
    credentials file; (None, "") if neither."""
    from stackbook.core import environments
    from stackbook.run import scrub

    value = scrub.collect_optional([role.secret], env or environments.current_name()).get(role.secret)
    if value:
        return value, f"secret {role.secret} (environment or .env)"
    path = project.home_dir() / "credentials" / role.name
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value, f"credentials file {path}"
    return None, ""


def password_for(role_name: str, env: str | None = None) -> str:
    """The password stackbook knows for a managed role; raises when it knows none."""
    spec = _spec(role_name)
    value, _ = known_password(spec, env)
    if value is None:
        raise ProvisionError(f"no password known for role {role_name!r}: set {spec.secret} or apply provisioning, "
                             f"which keeps a generated one in .stackbook/credentials/{role_name}")
    return value


def _store_password(role: str, value: str) -> Path:
    path = credentials_dir() / role
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    path.chmod(0o600)
    return path


def _spec(role_name: str) -> RoleSpec:
    for r in ROLES:
        if r.name == role_name:
            return r
    raise UsageError(f"{role_name!r} is not a role stackbook provisions (known: {', '.join(role_names())})")


def _check_password(role: RoleSpec, value: str) -> None:
    if not value.isascii() or not value.isprintable():
        raise ProvisionError(f"the password for role {role.name!r} ({role.secret}) must be printable ASCII "
                             "(the SCRAM verifier is computed without SASLprep)")


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802/7677)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def verifier_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored SCRAM verifier was made from this password."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        _, rest = verifier.split("$", 1)
        params, _keys = rest.split("$", 1)
        iterations, salt = params.split(":", 1)
        expected = scram_verifier(password, base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, verifier)


# ---------------------------------------------------------------- plan


@dataclass
class Step:
    """One statement of a plan: ``sql`` runs, ``shown`` is what people see (secrets masked)."""

    sql: str
    shown: str
    why: str
    on: str = "database"  # "database": the target database; "cluster": the maintenance database

    def to_dict(self) -> dict[str, str]:
        return {"sql": self.shown, "why": self.why, "on": self.on}


@dataclass
class Plan:
    """The statements that take the live catalog to the declared state."""

    database: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    admin: str = ""
    fingerprint: str = ""  # of what only provisioning changes: the database's existence, the managed roles

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def statements(self) -> list[str]:
        """The statements as shown (passwords masked)."""
        return [s.shown for s in self.steps]

    def script(self) -> str:
        if not self.steps:
            return f"-- database {self.database}: {NOTHING_TO_CHANGE}"
        lines = [f"-- database {self.database}: {len(self.steps)} statement(s)"]
        for s in self.steps:
            lines += [f"-- {s.why}", s.shown + ";"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.script()

    def _repr_markdown_(self) -> str:
        notes = "".join(f"\n- note: {n}" for n in self.notes)
        return f"```sql\n{self.script()}\n```{notes}"

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "steps": [s.to_dict() for s in self.steps], "notes": self.notes}


def _rows(conn, sql: str, params=None) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def _database_exists(database: str) -> bool:
    from stackbook.run import db

    with db.connect("postgres") as conn:
        return bool(_rows(conn, "select 1 from pg_database where datname = %s", (database,)))


def _inspect(conn, database_exists: bool) -> dict[str, Any]:
    """What the catalog holds now, for the managed roles and schemas."""
    names = role_names()
    state: dict[str, Any] = {"admin": _rows(conn, "select current_user")[0][0]}
    state["roles"] = {r[0]: dict(zip(("rolname", *ROLE_ATTRIBUTES), r)) for r in _rows(
        conn, f"select rolname, {', '.join(ROLE_ATTRIBUTES)} from pg_roles where rolname = any(%s)", (names,))}
    import psycopg

    try:
        with conn.transaction():
            state["passwords"] = dict(_rows(conn, "select rolname, rolpassword from pg_authid where rolname = any(%s)",
                                            (names,)))
    except psycopg.errors.InsufficientPrivilege:  # not a superuser (a managed database): passwords unreadable
        state["passwords"] = None
    state["memberships"] = _rows(conn, """
        select m.rolname, g.rolname from pg_auth_members am
        join pg_roles m on m.oid = am.member join pg_roles g on g.oid = am.roleid
        where m.rolname = any(%s) order by 1, 2""", (names,))
    if not database_exists:
        state.update(schemas=set(), schema_acl=[], public_acl=[], objects={}, object_acl=[], default_acl=[],
                     public_create=False)
        return state
    state["schemas"] = {r[0] for r in _rows(conn, "select nspname from pg_namespace where nspname = any(%s)",
                                            (list(SCHEMAS),))}
    # direct schema grants to managed roles (grantee 0 is PUBLIC)
    state["schema_acl"] = _rows(conn, """
        select n.nspname, coalesce(g.rolname, 'PUBLIC'), a.privilege_type
        from pg_namespace n cross join lateral aclexplode(n.nspacl) a
        left join pg_roles g on g.oid = a.grantee
        where n.nspname = any(%s) and (a.grantee = 0 or g.rolname = any(%s)) and a.grantee <> n.nspowner
        order by 1, 2, 3""", (list(SCHEMAS), names))
    state["public_create"] = bool(_rows(conn, """
        select 1 from pg_namespace n cross join lateral aclexplode(n.nspacl) a
        where n.nspname = 'public' and a.grantee = 0 and a.privilege_type = 'CREATE'"""))
    # tables (relkind r p v m f) and sequences (S) of the managed schemas
    objects: dict[str, list[tuple[int, str, str]]] = {}
    for oid, schema, name, kind in _rows(conn, """
            select c.oid, n.nspname, c.oid::regclass::text, c.relkind from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = any(%s) and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')""", (list(SCHEMAS),)):
        objects.setdefault(schema, []).append((oid, name, "S" if kind == "S" else "r"))
    state["objects"] = objects
    state["object_acl"] = _rows(conn, """
        select n.nspname, c.oid::regclass::text, case when c.relkind = 'S' then 'S' else 'r' end,
               g.rolname, a.privilege_type
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        cross join lateral aclexplode(c.relacl) a join pg_roles g on g.oid = a.grantee
        where n.nspname = any(%s) and g.rolname = any(%s) and c.relowner <> g.oid
        order by 1, 2, 4, 5""", (list(SCHEMAS), names))
    state["default_acl"] = _rows(conn, """
        select cr.rolname, n.nspname, d.defaclobjtype, g.rolname, a.privilege_type
        from pg_default_acl d join pg_roles cr on cr.oid = d.defaclrole
        left join pg_namespace n on n.oid = d.defaclnamespace
        cross join lateral aclexplode(d.defaclacl) a join pg_roles g on g.oid = a.grantee
        where g.rolname = any(%s) and d.defaclobjtype in ('r', 'S')
          and (d.defaclnamespace = 0 or n.nspname = any(%s))
        order by 1, 2, 3, 4, 5""", (names, list(SCHEMAS)))
    return state


def _fingerprint(state: dict[str, Any], database_exists: bool) -> str:
    """A digest of the database's existence and the managed roles (attributes, password verifiers, memberships).

    Other sessions create schemas and tables all the time; only provisioning
    touches these, so a dry run proves it changed nothing by leaving this equal.
    """
    doc = {"database_exists": database_exists, "roles": state["roles"], "passwords": state["passwords"],
           "memberships": state["memberships"]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _missing_object_privs(conn, state, role: str, schema: str, kind: str, wanted: tuple[str, ...]) -> list[str]:
    """Privileges of ``wanted`` that some existing table (kind r) or sequence (S) of the schema lacks for the role."""
    oids = [oid for oid, _, k in state["objects"].get(schema, []) if k == kind]
    if not oids or not wanted:
        return []
    if role not in state["roles"]:
        return list(wanted)
    fn = "has_sequence_privilege" if kind == "S" else "has_table_privilege"
    rows = _rows(conn, f"""select p from unnest(%s::text[]) p
                         where not (select bool_and({fn}(%s, o, p)) from unnest(%s::oid[]) o)""",
                 (list(wanted), role, oids))
    missing = {r[0] for r in rows}
    return [p for p in wanted if p in missing]


def _creators(schema: str, admin: str) -> list[str]:
    """Roles whose future tables in the schema need default privileges: the admin and the schema's writers."""
    writers = [r.name for r in ROLES if any(s == schema and lvl == "write" for s, lvl in r.access)]
    return [admin, *writers]


def _plan_on(conn, database: str, database_exists: bool, *, generate: bool, env: str | None) -> Plan:
    """The plan against the catalog ``conn`` sees; with ``generate``, missing passwords are generated and kept."""
    state = _inspect(conn, database_exists)
    plan = Plan(database=database, admin=state["admin"], fingerprint=_fingerprint(state, database_exists))
    generate = generate and _may_create_roles(conn)  # no password is generated for a plan that cannot apply
    if not database_exists:
        plan.steps.append(Step(f"CREATE DATABASE {_q(database)}", f"CREATE DATABASE {_q(database)}",
                               f"database {database} does not exist", on="cluster"))
    for spec in ROLES:
        _plan_role(plan, spec, state, generate=generate, env=env)
    _plan_memberships(plan, state)
    _plan_schemas(plan, state)
    _plan_schema_privileges(plan, conn, state)
    _plan_object_privileges(plan, conn, state)
    _plan_default_privileges(plan, state)
    missing = missing_createrole(conn, plan)
    if missing:
        plan.notes.append(missing)
    return plan


def _may_create_roles(conn) -> bool:
    return _rows(conn, "select rolsuper or rolcreaterole from pg_roles where rolname = current_user")[0][0]


def missing_createrole(conn, plan: Plan) -> str | None:
    """Why the connected role cannot run the plan's role statements (it lacks CREATEROLE), or None."""
    role_steps = [s for s in plan.steps if s.sql.startswith(("CREATE ROLE", "ALTER ROLE", "GRANT \"", "REVOKE \""))]
    if not role_steps:
        return None
    if _may_create_roles(conn):
        return None
    return (f"role {plan.admin!r} lacks the CREATEROLE privilege that {len(role_steps)} statement(s) of this plan "
            f"need (CREATE ROLE, ALTER ROLE, role memberships): a DBA runs the plan's script, or grants it with "
            f"ALTER ROLE {_q(plan.admin)} CREATEROLE")


def _generated_password(spec: RoleSpec) -> tuple[str, str]:
    """A new password for the role, kept under .stackbook/credentials, and where it is kept."""
    value = secrets.token_urlsafe(24)
    return value, f"generated, kept in {_store_password(spec.name, value)}"


def _plan_role(plan: Plan, spec: RoleSpec, state: dict[str, Any], *, generate: bool, env: str | None) -> None:
    """A role's existence, attributes and password."""
    current = state["roles"].get(spec.name)
    known, source = known_password(spec, env)
    if known is not None:
        _check_password(spec, known)
    if current is None:
        if known is None and generate:
            known, source = _generated_password(spec)
        where = source or f"generated at apply and kept in .stackbook/credentials/{spec.name}"
        verifier = scram_verifier(known) if known is not None else MASK
        attrs = " ".join(on if want else off for want, on, off in ROLE_ATTRIBUTES.values())
        plan.steps.append(Step(f"CREATE ROLE {_q(spec.name)} WITH {attrs} PASSWORD {_lit(verifier)}",
                               f"CREATE ROLE {_q(spec.name)} WITH {attrs} PASSWORD '{MASK}'",
                               f"role {spec.name} ({spec.purpose}) does not exist; password: {where}"))
        return
    drift = [on if want else off for col, (want, on, off) in ROLE_ATTRIBUTES.items() if current[col] != want]
    if drift:
        sql = f"ALTER ROLE {_q(spec.name)} WITH {' '.join(drift)}"
        plan.steps.append(Step(sql, sql, f"role {spec.name} has attributes that least privilege forbids "
                                         "or lacks LOGIN"))
    if state["passwords"] is None:
        plan.notes.append(f"cannot read pg_authid as {plan.admin}: the password of {spec.name} is not checked")
        return
    _plan_password(plan, spec, state["passwords"].get(spec.name), known, source, generate=generate)


def _password_problem(spec: RoleSpec, stored: str | None, known: str | None, source: str) -> str | None:
    """Why the role's stored password verifier must be replaced, or None."""
    if not stored:
        return f"role {spec.name} has no password"
    if not stored.startswith("SCRAM-SHA-256$"):
        return f"role {spec.name} has a password that is not a SCRAM-SHA-256 verifier"
    if known is not None and not verifier_matches(stored, known):
        return f"the password of role {spec.name} differs from the {source}"
    return None


def _plan_password(plan: Plan, spec: RoleSpec, stored: str | None, known: str | None, source: str, *,
                   generate: bool) -> None:
    """An existing role's password: set it when missing, not SCRAM, or not the known one."""
    reason = _password_problem(spec, stored, known, source)
    if reason is None:
        if known is None:
            plan.notes.append(f"role {spec.name} has a password stackbook does not know; set {spec.secret} "
                              "to manage it")
        return
    if known is None and generate:
        known, source = _generated_password(spec)
    verifier = scram_verifier(known) if known is not None else MASK
    plan.steps.append(Step(f"ALTER ROLE {_q(spec.name)} WITH PASSWORD {_lit(verifier)}",
                           f"ALTER ROLE {_q(spec.name)} WITH PASSWORD '{MASK}'",
                           f"{reason}; password: {source or 'generated at apply'}"))


def _plan_memberships(plan: Plan, state: dict[str, Any]) -> None:
    """Managed roles are members of no other role."""
    for member, group in state["memberships"]:
        sql = f"REVOKE {_q(group)} FROM {_q(member)}"
        plan.steps.append(Step(sql, sql, f"role {member} must be a member of no other role "
                                         f"(it inherits {group}'s privileges)"))


def _plan_schemas(plan: Plan, state: dict[str, Any]) -> None:
    """The managed schemas exist; nobody may create in schema public."""
    for schema in SCHEMAS:
        if schema not in state["schemas"]:
            sql = f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}"
            plan.steps.append(Step(sql, sql, f"schema {schema} does not exist"))
    if state["public_create"]:
        sql = "REVOKE CREATE ON SCHEMA public FROM PUBLIC"
        plan.steps.append(Step(sql, sql, "every role may create objects in schema public (CIS: revoke it)"))


def _plan_schema_privileges(plan: Plan, conn, state: dict[str, Any]) -> None:
    """Schema privileges: grant what is missing, revoke direct grants beyond the level (and PUBLIC's)."""
    direct: dict[tuple[str, str], set[str]] = {}
    for schema, grantee, priv in state["schema_acl"]:
        direct.setdefault((schema, grantee), set()).add(priv)
    for schema in SCHEMAS:
        for spec in ROLES:
            level = spec.level(schema)
            wanted = level.schema if level else ()
            missing = _missing_schema_privs(conn, state, spec.name, schema, wanted)
            if missing:
                sql = f"GRANT {', '.join(missing)} ON SCHEMA {_q(schema)} TO {_q(spec.name)}"
                plan.steps.append(Step(sql, sql, f"{spec.name} needs {'/'.join(missing)} on schema {schema}"))
            extra = sorted(direct.get((schema, spec.name), set()) - set(wanted))
            if extra:
                sql = f"REVOKE {', '.join(extra)} ON SCHEMA {_q(schema)} FROM {_q(spec.name)}"
                plan.steps.append(Step(sql, sql, f"{spec.name} holds {'/'.join(extra)} on schema {schema} "
                                                 "beyond its access"))
        public_extra = sorted(direct.get((schema, "PUBLIC"), set()))
        if public_extra:
            sql = f"REVOKE {', '.join(public_extra)} ON SCHEMA {_q(schema)} FROM PUBLIC"
            plan.steps.append(Step(sql, sql, f"every role holds {'/'.join(public_extra)} on schema {schema}"))


def _missing_schema_privs(conn, state: dict[str, Any], role: str, schema: str, wanted: tuple[str, ...]) -> list[str]:
    """Privileges of ``wanted`` the role lacks on the schema (all of them when the role or schema is new)."""
    if not wanted:
        return []
    if role in state["roles"] and schema in state["schemas"]:
        have = {p for p in wanted if _rows(conn, "select has_schema_privilege(%s, %s, %s)", (role, schema, p))[0][0]}
    else:
        have = set()
    return [p for p in wanted if p not in have]


def _plan_object_privileges(plan: Plan, conn, state: dict[str, Any]) -> None:
    """Existing tables and sequences: grant what the level needs, revoke direct grants beyond it."""
    for schema in SCHEMAS:
        for spec in ROLES:
            level = spec.level(schema)
            if not level:
                continue
            for kind, wanted, noun in (("r", level.tables, "TABLES"), ("S", level.sequences, "SEQUENCES")):
                missing = _missing_object_privs(conn, state, spec.name, schema, kind, wanted)
                if missing:
                    sql = f"GRANT {', '.join(missing)} ON ALL {noun} IN SCHEMA {_q(schema)} TO {_q(spec.name)}"
                    plan.steps.append(Step(sql, sql, f"existing {noun.lower()} of {schema} lack "
                                                     f"{'/'.join(missing)} for {spec.name}"))
    extra_objects: dict[tuple[str, str, str], set[str]] = {}
    for schema, obj, kind, grantee, priv in state["object_acl"]:
        level = _spec(grantee).level(schema)
        allowed = (level.sequences if kind == "S" else level.tables) if level else ()
        if priv not in allowed:
            extra_objects.setdefault((obj, kind, grantee), set()).add(priv)
    for (obj, kind, grantee), privs in sorted(extra_objects.items()):
        noun = "SEQUENCE" if kind == "S" else "TABLE"
        sql = f"REVOKE {', '.join(sorted(privs))} ON {noun} {obj} FROM {_q(grantee)}"
        plan.steps.append(Step(sql, sql, f"{grantee} holds {'/'.join(sorted(privs))} on {obj} beyond its access"))


_DefaultKey = tuple[str, str | None, str, str]  # (creator, schema or None for every schema, kind r|S, grantee)


def _wanted_default_privileges(admin: str) -> dict[_DefaultKey, tuple[str, ...]]:
    """The default privileges every creator of a managed schema must grant on its future tables and sequences."""
    wanted: dict[_DefaultKey, tuple[str, ...]] = {}
    for schema in SCHEMAS:
        for creator in _creators(schema, admin):
            for spec in ROLES:
                level = spec.level(schema)
                if level and spec.name != creator:
                    wanted[(creator, schema, "r", spec.name)] = level.tables
                    wanted[(creator, schema, "S", spec.name)] = level.sequences
    return wanted


def _plan_default_privileges(plan: Plan, state: dict[str, Any]) -> None:
    """Default privileges for future tables and sequences: grant what is wanted, revoke the rest."""
    have_default: dict[_DefaultKey, set[str]] = {}
    for creator, schema, kind, grantee, priv in state["default_acl"]:
        have_default.setdefault((creator, schema, kind, grantee), set()).add(priv)
    wanted_default = _wanted_default_privileges(plan.admin)
    for key in sorted(set(wanted_default) | set(have_default), key=lambda k: tuple(str(x) for x in k)):
        creator, schema, kind, grantee = key
        wanted, have = wanted_default.get(key, ()), have_default.get(key, set())
        noun = "SEQUENCES" if kind == "S" else "TABLES"
        scope = f" IN SCHEMA {_q(schema)}" if schema else ""
        missing = [p for p in wanted if p not in have]
        extra = sorted(have - set(wanted))
        if missing:
            sql = (f"ALTER DEFAULT PRIVILEGES FOR ROLE {_q(creator)}{scope} "
                   f"GRANT {', '.join(missing)} ON {noun} TO {_q(grantee)}")
            plan.steps.append(Step(sql, sql, f"{noun.lower()} {creator} creates in {schema} later must grant "
                                             f"{'/'.join(missing)} to {grantee}"))
        if extra:
            sql = (f"ALTER DEFAULT PRIVILEGES FOR ROLE {_q(creator)}{scope} "
                   f"REVOKE {', '.join(extra)} ON {noun} FROM {_q(grantee)}")
            plan.steps.append(Step(sql, sql, f"{noun.lower()} {creator} creates"
                                             f"{' in ' + schema if schema else ''} would grant "
                                             f"{'/'.join(extra)} to {grantee} beyond its access"))


def _check_name(database: str) -> None:
    if not database or not isinstance(database, str) or len(database) > 63:
        raise UsageError(f"database name {database!r} is not valid (1 to 63 characters)")
    if database in ("template0", "template1", "postgres"):
        raise UsageError(f"database {database!r} is a system database: provision an application database")


def plan(database: str = "stackbook", env: str | None = None) -> Plan:
    """The statements ``apply`` would run now. Reads the catalog; changes nothing (no file, no row)."""
    from stackbook.run import db

    _check_name(database)
    exists = _database_exists(database)
    with db.connect(database if exists else "postgres") as conn:
        return _plan_on(conn, database, exists, generate=False, env=env)


@dataclass
class Outcome:
    """What ``apply`` did: the statements it ran (none for a dry run or when nothing was to change)."""

    database: str
    dry_run: bool
    planned: list[Step] = field(default_factory=list)
    applied: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    @property
    def message(self) -> str:
        if not self.planned:
            return f"database {self.database}: {NOTHING_TO_CHANGE}"
        if self.dry_run:
            return f"database {self.database}: dry run, {len(self.planned)} statement(s) planned, none applied"
        return f"database {self.database}: applied {len(self.applied)} statement(s)"

    def __str__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        lines = [f"**{self.message}**"] + [f"- `{s.shown}`" for s in self.applied]
        return "\n".join(lines)


def apply(database: str = "stackbook", dry_run: bool = False, env: str | None = None) -> Outcome:
    """Bring the database to the declared state; with ``dry_run`` only plan. Idempotent.

    ``CREATE DATABASE`` runs first on its own (it cannot run in a transaction);
    everything else runs in one transaction, re-planned under an advisory lock,
    so the statements run are the ones planned against the state they change.
    """
    import psycopg

    from stackbook.run import db

    if dry_run:
        p = plan(database, env)
        return Outcome(database, True, planned=p.steps, notes=p.notes)
    _check_name(database)
    applied: list[Step] = []
    if not _database_exists(database):
        with db.connect("postgres") as conn:
            try:
                conn.execute(f"CREATE DATABASE {_q(database)}")
            except psycopg.errors.DuplicateDatabase:
                pass  # created concurrently: the plan below sees it
            else:
                applied.append(Step(f"CREATE DATABASE {_q(database)}", f"CREATE DATABASE {_q(database)}",
                                    f"database {database} did not exist", on="cluster"))
    for attempt in (1, 2):
        try:
            with db.connect(database, autocommit=False) as conn, conn.transaction():
                conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (LOCK_KEY,))
                p = _plan_on(conn, database, True, generate=True, env=env)
                missing = missing_createrole(conn, p)
                if missing:
                    raise ProvisionError(f"provisioning database {database!r} refused: {missing}; nothing "
                                         "was applied")
                for step in p.steps:
                    try:
                        conn.execute(step.sql)
                    except psycopg.Error as exc:
                        raise _StepFailed(step, exc) from exc
            applied += p.steps
            return Outcome(database, False, planned=applied, applied=applied, notes=p.notes)
        except _StepFailed as failed:
            exc = failed.__cause__
            # roles are cluster-wide: a concurrent apply on another database may have just created one
            if attempt == 1 and isinstance(exc, (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation)):
                continue
            raise ProvisionError(
                f"provisioning database {database!r} failed at `{failed.step.shown}` ({failed.step.why}): "
                f"{str(exc).strip()}; the transaction was rolled back, nothing of it was applied"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


class _StepFailed(Exception):
    def __init__(self, step: Step, exc: Exception):
        super().__init__(str(exc))
        self.step = step


# ---------------------------------------------------------------- verification


def role_report() -> list[dict[str, Any]]:
    """The managed roles as the catalog has them: exists, attributes, SCRAM password."""
    from stackbook.run import db

    with db.connect("postgres") as conn:
        state = _inspect(conn, False)
    out = []
    for spec in ROLES:
        row = state["roles"].get(spec.name)
        pw = (state["passwords"] or {}).get(spec.name) if state["passwords"] is not None else None
        entry: dict[str, Any] = {"role": spec.name, "exists": row is not None}
        if row:
            entry.update({col.removeprefix("rol"): row[col] for col in ROLE_ATTRIBUTES})
            entry["scram_password"] = None if state["passwords"] is None else bool(pw and pw.startswith("SCRAM-"))
        out.append(entry)
    return out


def role_problems(report: list[dict[str, Any]] | None = None) -> list[str]:
    problems = []
    for entry in report if report is not None else role_report():
        if not entry["exists"]:
            problems.append(f"role {entry['role']} does not exist")
            continue
        for col, (want, on, off) in ROLE_ATTRIBUTES.items():
            if entry[col.removeprefix("rol")] != want:
                problems.append(f"role {entry['role']} is {on if entry[col.removeprefix('rol')] else off}")
        if entry.get("scram_password") is False:
            problems.append(f"role {entry['role']} has no SCRAM password")
    return problems


@dataclass
class WriteProbe:
    role: str
    schema: str
    denied: bool
    evidence: list[str]


def probe_write(database: str = "stackbook", role: str = "stackbook_reader", schema: str = "raw",
                env: str | None = None) -> WriteProbe:
    """Log in as ``role`` over TCP with its password and try to create a table in, and insert into, ``schema``.

    Every attempt runs in a transaction that is rolled back. ``denied`` is True
    when each attempt failed with insufficient privilege.
    """
    import psycopg
    from psycopg.conninfo import make_conninfo

    from stackbook.run import db

    conninfo = make_conninfo(db.url(database), user=role, password=password_for(role, env))
    evidence, denied = [], True
    with psycopg.connect(conninfo, autocommit=False, connect_timeout=10) as conn:
        host = conn.info.host
        evidence.append(f"logged in as {conn.info.user} to {host}:{conn.info.port}/{database}")
        table = conn.execute("""select c.oid::regclass::text from pg_class c join pg_namespace n
                                on n.oid = c.relnamespace where n.nspname = %s and c.relkind in ('r', 'p')
                                order by 1 limit 1""", (schema,)).fetchone()
        conn.rollback()
        attempts = [f"CREATE TABLE {_q(schema)}.{_q('stackbook_write_probe')} (x int)"]
        if table:
            attempts.append(f"INSERT INTO {table[0]} SELECT * FROM {table[0]} WHERE false")
        for sql in attempts:
            try:
                conn.execute(sql)
                evidence.append(f"ALLOWED: {sql}")
                denied = False
            except psycopg.errors.InsufficientPrivilege as exc:
                evidence.append(f"denied: {sql}: {str(exc).strip()}")
            except psycopg.Error as exc:
                evidence.append(f"failed otherwise: {sql}: {type(exc).__name__}: {str(exc).strip()}")
                denied = False
            finally:
                conn.rollback()
    return WriteProbe(role=role, schema=schema, denied=denied, evidence=evidence)


@dataclass
class Verification:
    problems: list[str]
    roles: list[dict[str, Any]]
    reader_write_denied: bool | None
    evidence: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def _repr_markdown_(self) -> str:
        cols = ["role", "exists", "canlogin", "super", "createrole", "createdb", "scram_password"]
        lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in self.roles]
        if self.reader_write_denied is not None:
            lines += ["", f"reader cannot write raw: **{self.reader_write_denied}**"]
            lines += [f"- {e}" for e in self.evidence]
        lines += ["", "**verified**" if self.ok else "**problems:**"] + [f"- {p}" for p in self.problems]
        return "\n".join(lines)


def verify(database: str, before: Plan, dry_run: bool, env: str | None = None) -> Verification:
    """Post-conditions. Dry run: the database's existence and the managed roles are unchanged.
    Applied: a new plan is empty, the roles have the right attributes and a SCRAM
    password, and the reader, logged in with its password, cannot write ``raw``."""
    after = plan(database, env)
    problems: list[str] = []
    roles, denied, evidence = role_report(), None, []
    if dry_run:
        # not a comparison of whole plans: other sessions may create schemas or tables meanwhile
        if after.fingerprint != before.fingerprint:
            problems.append("the dry run changed the database's existence or the managed roles")
    else:
        if after:
            problems.append(f"a second plan is not empty: {after.statements}")
        problems += role_problems(roles)
        probe = probe_write(database, "stackbook_reader", "raw", env)
        denied, evidence = probe.denied, probe.evidence
        if not probe.denied:
            problems.append("stackbook_reader can write schema raw: " + "; ".join(probe.evidence))
    return Verification(problems=problems, roles=roles, reader_write_denied=denied, evidence=evidence)
