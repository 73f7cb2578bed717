"""The project-local PostgreSQL cluster under ``.stackbook/pg``.

Binaries come from the system (``pg_ctl`` on PATH or ``/usr/lib/postgresql/*/bin``)
and otherwise from the ``pgserver`` wheel, which bundles a full PostgreSQL
(``pg_dump`` and ``pg_restore`` included). PostgreSQL refuses to run as root, so
when stackbook runs as root the cluster runs as the unprivileged OS user
``stackbook`` (created with ``useradd`` on first use); elsewhere it runs as the
invoking user. The cluster listens on 127.0.0.1 at a port chosen per checkout
(the next free one if that is taken) and on a unix socket, with SCRAM
passwords, TLS and connection logging switched on.

What the server log holds (``LOG_SETTINGS``, in ``postgresql.conf`` at initdb and applied to an
existing cluster by every ``up`` with ALTER SYSTEM and a reload): connections, disconnections and
fatal errors, never a statement's text nor an ERROR line, which quotes the value it rejected
(``invalid input syntax for type integer: "<a secret>"``). The log file is 0600, and the checkout's
``.stackbook`` and ``pg`` folders are the owner's only (0700), or 0710 with the cluster user's group
when that user keeps its data there and must traverse them; ``up`` also takes group and other
permissions off everything else under ``.stackbook`` (``core.files.make_private``).

Where the data lives: ``<home>/pg/data`` (``stackbook.core.project.home_dir()``), unless
the cluster runs as ``stackbook`` and that user cannot reach the checkout (a clone under
``/root``, mode 0700): then the data goes to ``/var/lib/stackbook/<key>/pg`` (owned by that
user, 0700; the key is a hash of the checkout's ``pg`` folder, so two checkouts stay apart)
and ``stackbook status`` says so. The info file (port, password; 0600) stays in the checkout's
``pg`` folder either way. An explicit ``$STACKBOOK_HOME`` is used as it is.

Which databases: ``stackbook`` (the ledger and the warehouse) and ``mlflow`` (tracking).
``$STACKBOOK_DATABASE`` picks another name for the first, and the second follows it
(``stackbook_test`` -> ``mlflow_test``); the cluster creates them on first use. Every caller
keeps asking for ``"stackbook"`` and ``"mlflow"``: ``database_name()`` maps them. The test
suite uses this so that its runs never reach a developer's ledger or MLflow.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import zlib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from stackbook.core import project
from stackbook.core.errors import ClusterError, DatabaseUnavailable, UsageError
from stackbook.core.files import atomic_write_text, make_private

OS_USER = "stackbook"
SUPERUSER = "stackbook"
DATABASES = ("stackbook", "mlflow")  # the names callers use; database_name() gives the one in the cluster
DATABASE_ENV = "STACKBOOK_DATABASE"
FALLBACK_ROOT = Path("/var/lib/stackbook")  # data of clusters whose OS user cannot reach their checkout
PORT_BASE = 54320
# The server log: connections (LOG) and worse (FATAL, PANIC), nothing of a statement. LOG ranks above ERROR in the
# server log's order, so ``log_min_messages = log`` drops ERROR lines (they quote the rejected value) and keeps the
# connection lines; ``log_min_error_statement = panic`` drops the STATEMENT line that follows an error.
LOG_SETTINGS = {
    "log_connections": "on",
    "log_disconnections": "on",
    "log_min_messages": "log",
    "log_min_error_statement": "panic",
    "log_statement": "none",
    "log_min_duration_statement": "-1",
    "log_file_mode": "0600",
}
PORT_SPAN = 600
START_TIMEOUT_S = 60


@dataclass
class ClusterInfo:
    port: int
    password: str
    bindir: str
    data_dir: str
    socket_dir: str
    os_user: str | None  # None: runs as the invoking user

    def url(self, dbname: str = "stackbook") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database_name(dbname)}"


def database_name(dbname: str = "stackbook") -> str:
    """The database in the cluster behind ``dbname``: "stackbook" is $STACKBOOK_DATABASE (default stackbook),
    "mlflow" takes the same suffix (``stackbook_test`` -> ``mlflow_test``), any other name is itself."""
    chosen = os.environ.get(DATABASE_ENV) or "stackbook"
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", chosen):
        raise UsageError(f"{DATABASE_ENV}={chosen!r} is not a database name stackbook creates: use lower-case "
                         "letters, digits and underscores (or unset it for the default, stackbook)")
    if dbname not in DATABASES or chosen == "stackbook":
        return dbname
    if dbname == "stackbook":
        return chosen
    suffix = chosen[len("stackbook"):] if chosen.startswith("stackbook") else f"_{chosen}"
    return dbname + suffix


def pg_dir() -> Path:
    """The cluster's folder in the checkout: its info file, and its data unless that has to live elsewhere."""
    return project.home_dir() / "pg"


def fallback_dir() -> Path:
    """Where the cluster goes when its OS user cannot reach ``pg_dir()``: one folder per checkout."""
    key = hashlib.sha256(str(pg_dir().resolve()).encode()).hexdigest()[:12]
    return FALLBACK_ROOT / key / "pg"


def _info_path() -> Path:
    return pg_dir() / "cluster.json"


def find_bindir() -> str:
    """Directory of the PostgreSQL server binaries: $STACKBOOK_PG_BIN, the system's, or pgserver's."""
    explicit = os.environ.get("STACKBOOK_PG_BIN")
    if explicit:
        return explicit
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return str(Path(os.path.realpath(on_path)).parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if debian:
        return str(Path(debian[-1]).parent)
    try:
        import pgserver  # noqa: F401  (bundled binaries)
    except ImportError as exc:  # pragma: no cover - pgserver is a locked dependency
        raise ClusterError(
            "no PostgreSQL binaries found: install PostgreSQL (apt-get install postgresql) "
            "or the pgserver package (pip install pgserver)"
        ) from exc
    return str(Path(pgserver.__file__).parent / "pginstall" / "bin")


def _pg_tool(name: str) -> str:
    """A client tool (pg_dump, pg_restore, psql) matching the cluster's binaries."""
    info = load_info()
    bindir = info.bindir if info else find_bindir()
    path = Path(bindir) / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise ClusterError(f"{name} not found next to the PostgreSQL binaries in {bindir} nor on PATH")
    return found


pg_tool = _pg_tool


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def preferred_port() -> int:
    """A port derived from the checkout's path, so two checkouts differ."""
    return PORT_BASE + zlib.crc32(str(project.root()).encode()) % PORT_SPAN


def _pick_port(start: int) -> int:
    for offset in range(PORT_SPAN):
        port = PORT_BASE + (start - PORT_BASE + offset) % PORT_SPAN
        if _port_free(port):
            return port
    raise ClusterError(f"no free port in {PORT_BASE}-{PORT_BASE + PORT_SPAN - 1} for PostgreSQL")


def load_info() -> ClusterInfo | None:
    path = _info_path()
    if not path.exists():
        return None
    return ClusterInfo(**json.loads(path.read_text()))


def _save_info(info: ClusterInfo) -> None:
    atomic_write_text(_info_path(), json.dumps(asdict(info), indent=2))  # 0600: it holds the password


def _ensure_os_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            check=True,
            capture_output=True,
        )
    return OS_USER


def _run_as(info_user: str | None, args: list[str], **kw) -> subprocess.CompletedProcess:
    if info_user:
        entry = pwd.getpwnam(info_user)
        kw.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        kw.setdefault("cwd", "/")
    return subprocess.run(args, capture_output=True, text=True, **kw)


def _chown(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _socket_dir(base: Path) -> Path:
    # Unix socket paths are limited to 107 bytes; fall back to /tmp for deep checkouts.
    candidate = base / "sock"
    if len(str(candidate / ".s.PGSQL.65535")) < 100:
        return candidate
    return Path("/tmp") / f"stackbook-{zlib.crc32(str(base).encode()):08x}"


def _supports_ssl(bindir: str) -> bool:
    """Whether these server binaries were built with OpenSSL (pgserver's wheel is not)."""
    pg_config = Path(bindir) / "pg_config"
    if not pg_config.exists():
        pg_config = Path(shutil.which("pg_config") or "/nonexistent")
    try:
        out = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "openssl" in out


def _make_certificate(data_dir: Path, user: str | None, bindir: str) -> bool:
    openssl = shutil.which("openssl")
    if not openssl or not _supports_ssl(bindir):
        return False
    key, crt = data_dir / "server.key", data_dir / "server.crt"
    done = subprocess.run(
        [openssl, "req", "-new", "-x509", "-days", "3650", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(crt)],
        capture_output=True,
    )
    if done.returncode != 0:
        return False
    key.chmod(0o600)
    _chown(key, user)
    _chown(crt, user)
    return True


def _reachable(user: str, path: Path) -> bool:
    """Whether OS user ``user`` can traverse every directory down to ``path``."""
    return _run_as(user, ["test", "-x", str(path)]).returncode == 0


def _owned_dir(path: Path, user: str) -> None:
    """``path`` and its parents up to FALLBACK_ROOT, created 0700 and owned by ``user``."""
    for folder in (*reversed(path.relative_to(FALLBACK_ROOT).parents), path.relative_to(FALLBACK_ROOT)):
        target = FALLBACK_ROOT / folder
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.chmod(0o700)
        _chown(target, user)


def _guard_home(user: str | None) -> None:
    """The home (``.stackbook``) and ``pg`` folders: 0700, or 0710 with USER's group when the cluster runs as USER
    with its data inside (it must traverse them; it cannot list them). Folders of another owner are left alone."""
    gid = pwd.getpwnam(user).pw_gid if user else None
    for folder in (project.home_dir(), pg_dir()):
        st = folder.stat()
        if st.st_uid != os.geteuid():
            continue
        if gid is not None and st.st_gid != gid:
            os.chown(folder, -1, gid)
        folder.chmod(0o710 if gid is not None else 0o700)


def _data_base(user: str | None) -> Path:
    """The folder that holds the data, log and socket: ``pg_dir()``, or ``fallback_dir()`` when ``user`` (the
    unprivileged OS user the cluster runs as) cannot reach the checkout and STACKBOOK_HOME does not say where."""
    base = pg_dir()
    _guard_home(user)  # the cluster user may traverse the home: whether it reaches pg_dir() is up to the parents
    if not user or _reachable(user, base) or os.environ.get("STACKBOOK_HOME"):
        return base
    _guard_home(None)
    outside = fallback_dir()
    _owned_dir(outside, user)
    return outside


def _check_reachable(info: ClusterInfo) -> None:
    """The unprivileged OS user must be able to reach the cluster's directory."""
    if not info.os_user:
        return
    base = Path(info.data_dir).parent
    if not _reachable(info.os_user, base):
        raise ClusterError(
            f"PostgreSQL runs as the unprivileged OS user {info.os_user!r} (it refuses to run as root), and that "
            f"user cannot reach {base}: make its parent directories traversable (chmod o+x) or set STACKBOOK_HOME "
            "to a directory it can reach"
        )


def _initdb(info: ClusterInfo) -> None:
    base = Path(info.data_dir).parent
    _check_reachable(info)
    data = Path(info.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    _chown(data, info.os_user)
    pwfile = base / "initdb.pw"
    atomic_write_text(pwfile, info.password + "\n")
    _chown(pwfile, info.os_user)
    try:
        done = _run_as(
            info.os_user,
            [str(Path(info.bindir) / "initdb"), "-D", str(data), "-U", SUPERUSER,
             "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"],
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise ClusterError(f"initdb failed in {data}:\n{done.stderr.strip()}")
    ssl = _make_certificate(data, info.os_user, info.bindir)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            "\n# stackbook: project-local cluster\n"
            "listen_addresses = '127.0.0.1'\n"
            "password_encryption = 'scram-sha-256'\n"
            + "".join(f"{name} = '{value}'\n" for name, value in LOG_SETTINGS.items())
            + "max_connections = 200\n"
            f"ssl = {'on' if ssl else 'off'}\n"
        )
    (data / "pg_hba.conf").write_text(
        "# stackbook: every connection authenticates with SCRAM\n"
        "local   all   all                 scram-sha-256\n"
        "host    all   all   127.0.0.1/32  scram-sha-256\n"
        "host    all   all   ::1/128       scram-sha-256\n"
    )


def _new_info() -> ClusterInfo:
    pg_dir().mkdir(parents=True, exist_ok=True)
    user = _ensure_os_user()
    base = _data_base(user)
    return ClusterInfo(
        port=_pick_port(preferred_port()),
        password=secrets.token_hex(16),
        bindir=find_bindir(),
        data_dir=str(base / "data"),
        socket_dir=str(_socket_dir(base)),
        os_user=user,
    )


def is_running(info: ClusterInfo | None = None) -> bool:
    info = info or load_info()
    if info is None or not (Path(info.data_dir) / "PG_VERSION").exists():
        return False
    done = _run_as(info.os_user, [str(Path(info.bindir) / "pg_ctl"), "status", "-D", info.data_dir])
    return done.returncode == 0


def up() -> tuple[ClusterInfo, bool]:
    """Start the cluster (initdb on first use). Returns (info, started_now)."""
    info = load_info()
    if info is None or not (Path(info.data_dir) / "PG_VERSION").exists():
        info = _new_info()
        _save_info(info)
        _initdb(info)
    _guard_files(info)
    if is_running(info):
        _ensure_databases(info)
        return info, False
    if not _port_free(info.port):
        info.port = _pick_port(info.port)
        _save_info(info)
    sock = Path(info.socket_dir)
    sock.mkdir(parents=True, exist_ok=True)
    _chown(sock, info.os_user)
    log = log_path(info)
    log.touch(mode=0o600)
    log.chmod(0o600)
    _chown(log, info.os_user)
    done = _run_as(
        info.os_user,
        [str(Path(info.bindir) / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT_S), "-D", info.data_dir,
         "-l", str(log), "-o", f"-p {info.port} -k {info.socket_dir}"],
    )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise ClusterError("PostgreSQL did not start:\n" + "\n".join([done.stderr.strip(), *tail]))
    _ensure_databases(info)
    return info, True


def log_path(info: ClusterInfo) -> Path:
    """The server log (``pg_ctl -l``): beside the data folder."""
    return Path(info.data_dir).parent / "postgres.log"


def _guard_files(info: ClusterInfo) -> None:
    """Owner-only modes: the home and ``pg`` folders (``_guard_home``), the server log, the socket folder, and
    everything else under the home but the cluster's own folder (PostgreSQL keeps its data 0700/0600 itself)."""
    make_private(project.home_dir(), skip=(pg_dir(),))
    inside = Path(info.data_dir).parent == pg_dir()
    _guard_home(info.os_user if inside else None)
    log = log_path(info)
    if log.exists():
        log.chmod(0o600)
    sock = Path(info.socket_dir)
    if sock.is_dir():
        sock.chmod(0o700)


def _apply_log_settings(conn) -> list[str]:
    """``LOG_SETTINGS`` on a running cluster (one made before they existed): ALTER SYSTEM for each setting that
    differs, then a reload. Returns the names it changed."""
    from psycopg import sql

    current = dict(conn.execute("select name, setting from pg_settings where name = any(%s)",
                                (list(LOG_SETTINGS),)).fetchall())
    changed = [name for name, value in LOG_SETTINGS.items() if current.get(name) != value]
    for name in changed:
        conn.execute(sql.SQL("alter system set {} = {}").format(sql.Identifier(name),
                                                               sql.Literal(LOG_SETTINGS[name])))
    if changed:
        conn.execute("select pg_reload_conf()")
    return changed


def _ensure_databases(info: ClusterInfo) -> None:
    """Create the databases (as ``database_name()`` names them) that the cluster lacks; apply ``LOG_SETTINGS``."""
    import psycopg

    with psycopg.connect(info.url("postgres"), autocommit=True) as conn:
        _apply_log_settings(conn)
        existing = {row[0] for row in conn.execute("select datname from pg_database")}
        for name in (database_name(n) for n in DATABASES):
            if name not in existing:
                try:
                    conn.execute(f'create database "{name}"')
                except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    pass  # another process created it a moment ago: it exists, as wanted


@cache
def _ensured(port: int, names: tuple[str, ...]) -> bool:
    """``_ensure_databases`` once per process and choice of names (a chosen name is created on first use)."""
    _ensure_databases(load_info())
    return True


def down() -> bool:
    """Stop the cluster. Returns False when it was not running."""
    info = load_info()
    if info is None or not is_running(info):
        return False
    done = _run_as(info.os_user, [str(Path(info.bindir) / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", info.data_dir])
    if done.returncode != 0:
        raise ClusterError(f"pg_ctl stop failed: {done.stderr.strip()}")
    return True


def check_url(value: str, variable: str = "DATABASE_URL") -> None:
    """DatabaseUnavailable (exit 2) unless VALUE is a postgresql:// URL; the message never shows the value."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("postgresql", "postgres"):
        scheme = f" (its scheme is {parts.scheme!r})" if parts is not None and parts.scheme else ""
        raise DatabaseUnavailable(
            f"{variable} is not a PostgreSQL URL{scheme}; its value is not shown, as it may hold a password. "
            f"Set it to postgresql://USER:PASSWORD@HOST:PORT/DBNAME, or unset it to use the project-local cluster")


def database_url(dbname: str = "stackbook") -> str:
    """The URL every part of stackbook connects to: $DATABASE_URL, else the local cluster.

    For another database of $DATABASE_URL's server only the path changes: user, host and the query
    (``sslmode``, ``sslrootcert`` ...) are kept, so MLflow and the drill connect as verified as the ledger."""
    external = os.environ.get("DATABASE_URL")
    if external:
        check_url(external)
        if dbname == "stackbook":
            return external
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(external)
        return urlunsplit(parts._replace(path="/" + database_name(dbname)))
    info = load_info()
    if info is None or not is_running(info):
        raise DatabaseUnavailable(
            "the project-local PostgreSQL is not running and DATABASE_URL is not set: "
            "start it with `stackbook up` (or `make up`)"
        )
    if database_name() != "stackbook":
        _ensured(info.port, tuple(database_name(n) for n in DATABASES))
    return info.url(dbname)


def status() -> dict:
    external = os.environ.get("DATABASE_URL")
    if external:
        return {"running": None, "mode": "external", "database_url": external}
    info = load_info()
    running = bool(info and is_running(info))
    data_dir = Path(info.data_dir) if info else pg_dir() / "data"
    outside = data_dir.parent != pg_dir()
    return {
        "running": running,
        "mode": "local",
        "database_url": info.url() if info else None,
        "database": database_name(),
        "port": info.port if info else None,
        "data_dir": str(data_dir),
        "data_dir_note": (f"outside the checkout: the OS user {info.os_user!r} cannot reach {pg_dir()}"
                          if outside and info and info.os_user else None),
        "socket_dir": info.socket_dir if info else None,
        "bindir": info.bindir if info else find_bindir(),
        "os_user": (info.os_user if info else None) or pwd.getpwuid(os.getuid()).pw_name,
    }
