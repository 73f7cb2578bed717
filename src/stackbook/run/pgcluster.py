"""The project-local PostgreSQL cluster under ``.stackbook/pg``.

Binaries come from the system (``pg_ctl`` on PATH or ``/usr/lib/postgresql/*/bin``)
and otherwise from the ``pgserver`` wheel, which bundles a full PostgreSQL
(``pg_dump`` and ``pg_restore`` included). PostgreSQL refuses to run as root, so
when stackbook runs as root the cluster runs as the unprivileged OS user
``stackbook`` (created with ``useradd`` on first use); elsewhere it runs as the
invoking user. The cluster listens on 127.0.0.1 at a port chosen per checkout
(the next free one if that is taken) and on a unix socket, with SCRAM
passwords, TLS and connection logging switched on.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from stackbook.core import project
from stackbook.core.errors import ClusterError, DatabaseUnavailable

OS_USER = "stackbook"
SUPERUSER = "stackbook"
DATABASES = ("stackbook", "mlflow")
PORT_BASE = 54320
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
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"


def pg_dir() -> Path:
    return project.state_dir() / "pg"


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
    path = _info_path()
    path.write_text(json.dumps(asdict(info), indent=2))
    path.chmod(0o600)


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


def _check_reachable(info: ClusterInfo) -> None:
    """The unprivileged OS user must be able to reach the cluster's directory."""
    if not info.os_user:
        return
    base = Path(info.data_dir).parent
    done = _run_as(info.os_user, ["test", "-x", str(base)])
    if done.returncode != 0:
        raise ClusterError(
            f"PostgreSQL runs as the unprivileged OS user {info.os_user!r} (it refuses to run as root), and that "
            f"user cannot reach {base}: make its parent directories traversable (chmod o+x) or set STACKBOOK_HOME "
            "to a directory it can reach"
        )


def _initdb(info: ClusterInfo) -> None:
    base = pg_dir()
    _check_reachable(info)
    data = Path(info.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    _chown(data, info.os_user)
    pwfile = base / "initdb.pw"
    pwfile.write_text(info.password + "\n")
    pwfile.chmod(0o600)
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
            "log_connections = on\n"
            "log_disconnections = on\n"
            "max_connections = 200\n"
            f"ssl = {'on' if ssl else 'off'}\n"
        )
    (data / "pg_hba.conf").write_text(
        "# stackbook: every connection authenticates with SCRAM\n"
        "local   all   all                 scram-sha-256\n"
        "host    all   all   127.0.0.1/32  scram-sha-256\n"
        "host    all   all   ::1/128       scram-sha-256\n"
    )


def _new_info() -> ClusterInfo:
    base = pg_dir()
    base.mkdir(parents=True, exist_ok=True)
    user = _ensure_os_user()
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
    if is_running(info):
        return info, False
    if not _port_free(info.port):
        info.port = _pick_port(info.port)
        _save_info(info)
    sock = Path(info.socket_dir)
    sock.mkdir(parents=True, exist_ok=True)
    _chown(sock, info.os_user)
    log = Path(info.data_dir).parent / "postgres.log"
    log.touch()
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


def _ensure_databases(info: ClusterInfo) -> None:
    import psycopg

    with psycopg.connect(info.url("postgres"), autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("select datname from pg_database")}
        for name in DATABASES:
            if name not in existing:
                conn.execute(f'create database "{name}"')


def down() -> bool:
    """Stop the cluster. Returns False when it was not running."""
    info = load_info()
    if info is None or not is_running(info):
        return False
    done = _run_as(info.os_user, [str(Path(info.bindir) / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", info.data_dir])
    if done.returncode != 0:
        raise ClusterError(f"pg_ctl stop failed: {done.stderr.strip()}")
    return True


def database_url(dbname: str = "stackbook") -> str:
    """The URL every part of stackbook connects to: $DATABASE_URL, else the local cluster."""
    external = os.environ.get("DATABASE_URL")
    if external:
        if dbname == "stackbook":
            return external
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(external)
        return urlunsplit(parts._replace(path="/" + dbname))
    info = load_info()
    if info is None or not is_running(info):
        raise DatabaseUnavailable(
            "the project-local PostgreSQL is not running and DATABASE_URL is not set: "
            "start it with `stackbook up` (or `make up`)"
        )
    return info.url(dbname)


def status() -> dict:
    external = os.environ.get("DATABASE_URL")
    if external:
        return {"running": None, "mode": "external", "database_url": external}
    info = load_info()
    running = bool(info and is_running(info))
    return {
        "running": running,
        "mode": "local",
        "database_url": info.url() if info else None,
        "port": info.port if info else None,
        "data_dir": info.data_dir if info else str(pg_dir() / "data"),
        "socket_dir": info.socket_dir if info else None,
        "bindir": info.bindir if info else find_bindir(),
        "os_user": (info.os_user if info else None) or pwd.getpwuid(os.getuid()).pw_name,
    }
