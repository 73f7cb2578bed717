"""A local Airflow that runs the generated DAGs: ``stackbook schedule airflow-local up|down|status``.

Why it exists: ``airflow dags test`` runs a DAG inside one process and proves the DAG files
import and their tasks work, but not what a deployment does: a scheduler that creates DAG runs
(on schedule or when triggered), a DAG processor that parses the files, an executor that starts
each try as its own process, and an API server behind the UI. This module starts those four
(``airflow api-server``, ``scheduler``, ``dag-processor``, LocalExecutor) from ``.venv-airflow``
so that a user sees the DAGs in Airflow's UI and Airflow runs them, and stops them again.

What it sets up, all under ``AIRFLOW_HOME = <state folder>/airflow-local`` (``home()``):

- ``airflow.cfg`` (0600): the metadata database ``airflow`` on the project's PostgreSQL (the
  one ``DATABASE_URL`` or the project-local cluster gives; ``STACKBOOK_DATABASE=stackbook_test``
  gives ``airflow_test``, as it gives ``mlflow_test``), LocalExecutor with parallelism 2, the API
  server on 127.0.0.1 at a free port, short scheduler and parsing intervals, the Fernet key and
  JWT secret (kept across restarts); migrated once per Airflow lock (``.migrated``);
- ``logs/<component>.log`` (each process's output; task logs below ``logs/`` too),
  ``run/<component>.pid`` and ``airflow-local.json`` (port, URL, environment, DAGs folder);
- the login: Airflow's simple auth manager, user ``admin``, password in
  ``simple_auth_manager_passwords.json.generated`` (written by the API server on first start).

The three processes share one process group and carry ``STACKBOOK_AIRFLOW_LOCAL=<home>`` in
their environment, as does every process they start (LocalExecutor workers, each task's
``stackbook run`` and its kernel, which Airflow puts in groups of their own). ``down`` signals
every process carrying that mark, and their descendants, and checks that none is left.
Telemetry is off (``SCARF_ANALYTICS=false``, ``DO_NOT_TRACK=1`` and stackbook's ``TELEMETRY_OFF``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from stackbook.core import project
from stackbook.core.errors import LocalAirflowError, UsageError
from stackbook.core.files import atomic_write_text
from stackbook.core.privacy import TELEMETRY_OFF

COMPONENTS = ("api-server", "scheduler", "dag-processor")
MARK = "STACKBOOK_AIRFLOW_LOCAL"  # in the environment of every process this module starts
HOME_DIRNAME = "airflow-local"
DEFAULT_PORT = 8080
DEFAULT_ENV = "dev"
PARALLELISM = 2
START_TIMEOUT_S = float(os.environ.get("STACKBOOK_AIRFLOW_START_TIMEOUT", 300))
MIGRATE_TIMEOUT_S = 1200
STOP_TIMEOUT_S = 30
KILL_TIMEOUT_S = 10
AIRFLOW_OFF = {"SCARF_ANALYTICS": "false", "DO_NOT_TRACK": "1", "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}


@dataclass
class Component:
    name: str
    pid: int | None
    alive: bool
    log: str


@dataclass
class Status:
    running: bool
    home: str
    url: str | None = None
    port: int | None = None
    env: str | None = None
    dags_folder: str | None = None
    database: str | None = None
    schedules: bool | None = None
    health: dict | None = None
    password_file: str | None = None
    components: list[Component] = field(default_factory=list)

    def summary(self) -> dict:
        return asdict(self)


# --- where things are ---------------------------------------------------------------------------


def home() -> Path:
    """AIRFLOW_HOME of the local Airflow: ``<state folder>/airflow-local``."""
    return project.state_dir() / HOME_DIRNAME


def airflow_bin() -> Path:
    return project.root() / ".venv-airflow" / "bin" / "airflow"


def lock_file() -> Path:
    return project.root() / "infra" / "airflow" / "requirements.lock"


def _pidfile(base: Path, name: str) -> Path:
    return base / "run" / f"{name}.pid"


def _logfile(base: Path, name: str) -> Path:
    return base / "logs" / f"{name}.log"


def _state_file(base: Path) -> Path:
    return base / "airflow-local.json"


def metadata_database() -> str:
    """``airflow``, with the suffix ``$STACKBOOK_DATABASE`` gives MLflow's (``stackbook_test`` -> ``airflow_test``)."""
    from stackbook.run.pgcluster import database_name

    return "airflow" + database_name("mlflow")[len("mlflow"):]


def metadata_url() -> str:
    """The SQLAlchemy URL of the metadata database (psycopg 3), created on the project's PostgreSQL when missing."""
    import psycopg

    from stackbook.run.pgcluster import database_url

    name = metadata_database()
    try:
        with psycopg.connect(database_url(), autocommit=True) as conn:
            if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
                conn.execute(f'create database "{name}"')
    except psycopg.errors.DuplicateDatabase:
        pass  # created a moment ago by another caller: it exists, as wanted
    except psycopg.errors.InsufficientPrivilege:
        raise LocalAirflowError(f"cannot create Airflow's metadata database {name!r}: the role has no CREATEDB; "
                                f"ask the DBA for `CREATE DATABASE {name} OWNER <your role>`") from None
    parts = urlsplit(database_url(name))
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


# --- configuration ------------------------------------------------------------------------------


def _free_port(preferred: int) -> int:
    """PREFERRED if nothing listens on it at 127.0.0.1, else a port the kernel picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise LocalAirflowError("no free TCP port on 127.0.0.1 for Airflow's API server")


def _kept_secrets(cfg: Path) -> dict[str, str]:
    """The Fernet key and JWT secret of an existing airflow.cfg (so restarts keep them), or new ones."""
    import configparser

    parser = configparser.RawConfigParser()
    if cfg.exists():
        parser.read(cfg, encoding="utf-8")
    fernet = parser.get("core", "fernet_key", fallback="") or base64.urlsafe_b64encode(os.urandom(32)).decode()
    jwt = parser.get("api_auth", "jwt_secret", fallback="")
    if len(jwt) < 64:  # HS512 wants at least 64 bytes; a new secret only ends the tokens of the last start
        jwt = secrets.token_urlsafe(64)
    return {"fernet_key": fernet.replace("%%", "%"), "jwt_secret": jwt.replace("%%", "%")}


def config_text(base: Path, dags: Path, port: int, db_url: str, *, schedules: bool, keys: dict[str, str]) -> str:
    """airflow.cfg of the local Airflow."""
    url = f"http://127.0.0.1:{port}"
    sections = {
        "core": {"dags_folder": dags, "executor": "LocalExecutor", "load_examples": "False",
                 "parallelism": PARALLELISM, "max_active_tasks_per_dag": PARALLELISM,
                 "dags_are_paused_at_creation": "False", "fernet_key": keys["fernet_key"],
                 "execution_api_server_url": f"{url}/execution/", "simple_auth_manager_users": "admin:admin",
                 "dagbag_import_timeout": 120},
        "database": {"sql_alchemy_conn": db_url, "sql_alchemy_conn_async": db_url, "sql_alchemy_pool_size": 3,
                     "sql_alchemy_max_overflow": 5},
        "api": {"host": "127.0.0.1", "port": port, "base_url": url, "workers": 1, "expose_config": "False"},
        "api_auth": {"jwt_secret": keys["jwt_secret"]},
        "scheduler": {"use_job_schedule": str(schedules), "scheduler_idle_sleep_time": 0.5,
                      "scheduler_heartbeat_sec": 2, "job_heartbeat_sec": 2},
        "dag_processor": {"refresh_interval": 10, "min_file_process_interval": 30, "parsing_processes": 1,
                          "dag_bundle_storage_path": base / "dag_bundles"},
        "logging": {"base_log_folder": base / "logs", "logging_level": "INFO"},
    }
    lines = ["# Written by `stackbook schedule airflow-local up` on every start (changes here are lost):",
             "# override a setting with AIRFLOW__SECTION__KEY in the environment of `up`."]
    for section, values in sections.items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {str(value).replace('%', '%%')}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def process_env(base: Path) -> dict[str, str]:
    """The environment of the Airflow processes: this one's (so tasks use the same database and state
    folder), Airflow's home and config, telemetry off, and the mark ``down`` finds them by."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "AIRFLOW_HOME", "AIRFLOW_CONFIG"))}
    env.update(TELEMETRY_OFF)
    env.update(AIRFLOW_OFF)
    env.update({"AIRFLOW_HOME": str(base), "AIRFLOW_CONFIG": str(base / "airflow.cfg"), MARK: str(base),
                "STACKBOOK_PROJECT": str(project.root())})
    return env


def _migrate(base: Path, env: dict[str, str], db_url: str) -> bool:
    """``airflow db migrate`` unless this database was migrated by this Airflow lock; True when it ran."""
    stamp = base / ".migrated"
    parts = urlsplit(db_url)
    want = f"{hashlib.sha256(lock_file().read_bytes()).hexdigest()} {parts.hostname}:{parts.port}{parts.path}"
    if stamp.exists() and stamp.read_text().strip() == want:
        return False
    log = _logfile(base, "db-migrate")
    with log.open("w") as out:
        try:
            proc = subprocess.run([str(airflow_bin()), "db", "migrate"], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, cwd=base, timeout=MIGRATE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LocalAirflowError(f"`airflow db migrate` took over {MIGRATE_TIMEOUT_S} s; see {log}") from None
    if proc.returncode != 0:
        raise LocalAirflowError(f"`airflow db migrate` failed (exit {proc.returncode}):\n{_tail(log)}\n"
                                f"(whole log: {log})")
    stamp.write_text(want + "\n")
    return True


# --- processes ----------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _proc_alive(pid: int) -> bool:
    """PID exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
        return None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _starttime(pid: int) -> str | None:
    """When PID started (clock ticks since boot, /proc/PID/stat field 22): with the pid, names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None


def _same_process(pidfile: Path) -> bool:
    """The process PIDFILE names still runs (not a later process that got the same pid): its start time
    is the one written beside the pidfile (``NAME.start``)."""
    pid = _read_pid(pidfile)
    try:
        started = pidfile.with_suffix(".start").read_text().strip()
    except FileNotFoundError:
        return False
    return pid is not None and _proc_alive(pid) and _starttime(pid) == started


def _marked(pid: int, base: Path) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return f"{MARK}={base}".encode() in environ.split(b"\0")


def processes(base: Path | None = None) -> list[int]:
    """Every live process of the local Airflow at BASE: those carrying the mark, the members of the
    components' process group (setproctitle, which the API server and the LocalExecutor's workers use,
    overwrites the environment /proc shows), and their descendants (a kernel started with an
    environment of its own included); never this process or its parents."""
    base = base or home()
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    parents = {pid: _ppid(pid) for pid in pids}
    found = {pid for pid in pids if _marked(pid, base)}
    group = _read_pid(_pidfile(base, "api-server"))  # the group's leader, whose mark setproctitle hides
    if group and (any(_pgid(pid) == group for pid in found) or _same_process(_pidfile(base, "api-server"))):
        found |= {pid for pid in pids if _pgid(pid) == group}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found and pid not in found}
        found |= more
        grew = bool(more)
    mine, pid = set(), os.getpid()
    while pid:  # this process and its ancestors: a `down` run from a task must not kill itself
        mine.add(pid)
        pid = parents.get(pid) or _ppid(pid) or 0
    return sorted(p for p in found - mine if _proc_alive(p))


def _start(name: str, args: list[str], base: Path, env: dict[str, str], group: int) -> subprocess.Popen:
    """Start one component in process group GROUP (0: a new group led by it), output to its log."""
    with _logfile(base, name).open("ab") as log:
        proc = subprocess.Popen([str(airflow_bin()), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=base, process_group=group)
    _pidfile(base, name).write_text(f"{proc.pid}\n")
    _pidfile(base, name).with_suffix(".start").write_text(f"{_starttime(proc.pid)}\n")  # see _same_process
    return proc


def health(port: int, timeout: float = 5) -> dict | None:
    """Airflow's /api/v2/monitor/health document, or None when the API server does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthy(doc: dict | None) -> bool:
    return bool(doc) and all((doc.get(part) or {}).get("status") == "healthy"
                             for part in ("metadatabase", "scheduler", "dag_processor"))


def _wait_healthy(procs: dict[str, subprocess.Popen], base: Path, port: int) -> dict:
    """Wait until the API server reports the database, scheduler and DAG processor healthy; a component
    that exits, or a start slower than START_TIMEOUT_S, is an error naming its log."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                log = _logfile(base, name)
                raise LocalAirflowError(f"`airflow {name}` exited at start (code {proc.returncode}):\n"
                                        f"{_tail(log)}\n(whole log: {log})")
        doc = health(port, timeout=3)
        if _healthy(doc):
            return doc
        if time.monotonic() > deadline:
            raise LocalAirflowError(f"the local Airflow was not healthy after {START_TIMEOUT_S:.0f} s "
                                    f"(last health: {doc}); see the logs in {base / 'logs'} "
                                    "(STACKBOOK_AIRFLOW_START_TIMEOUT allows longer)")
        time.sleep(1)


# --- up, down, status ---------------------------------------------------------------------------


def _check_installed() -> None:
    if not airflow_bin().exists():
        raise UsageError(f"{airflow_bin()} not found: create Airflow's virtual environment with `make airflow` "
                         "(infra/airflow/setup.sh)")


def _dags_folder(dags: Path | str | None, env: str) -> Path:
    """DAGS as given (it must exist), or infra/airflow/dags/ regenerated for ENV."""
    if dags is not None:
        folder = Path(dags).resolve()
        if not folder.is_dir():
            raise UsageError(f"DAGs folder {folder} does not exist: write the DAG files there with "
                             f"`stackbook schedule airflow --out {folder}`, or leave --dags out")
        return folder
    from stackbook.core.environments import load
    from stackbook.schedules import airflow as airflow_mod

    load(env)  # an unknown environment is an error before anything starts
    files = airflow_mod.write(None, env=env)
    return files[0].parent if files else (project.root() / airflow_mod.DEFAULT_OUT).resolve()


def _check_same(current: Status, dags: Path | str | None, schedules: bool) -> None:
    """A running local Airflow is reused only when it is what was asked for."""
    asked = str(Path(dags).resolve()) if dags is not None else current.dags_folder
    if asked != current.dags_folder or schedules != current.schedules:
        raise LocalAirflowError(
            f"the local Airflow already runs ({current.url}) with DAGs folder {current.dags_folder} and schedules "
            f"{'on' if current.schedules else 'off'}, not what was asked; stop it first: "
            "stackbook schedule airflow-local down")


def up(env: str = DEFAULT_ENV, dags: Path | str | None = None, port: int | None = None,
       schedules: bool = True) -> Status:
    """Start the local Airflow (idempotent: a running one is left as it is and its status returned).

    DAGS: the folder of DAG files (default: infra/airflow/dags/, written now for ENV). SCHEDULES
    False: Airflow creates no scheduled runs, only the ones triggered (UI, API, ``airflow dags trigger``).
    """
    _check_installed()
    base = home()
    current = status(base)
    if current.running:
        _check_same(current, dags, schedules)
        return current
    if processes(base):
        down(base)  # a half-started or half-stopped one: start clean
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o700)  # the config holds the database password, the API server's log the admin's
    for sub in ("logs", "run"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    folder = _dags_folder(dags, env)
    db_url = metadata_url()
    state = json.loads(_state_file(base).read_text()) if _state_file(base).exists() else {}
    chosen = _free_port(port if port is not None else state.get("port") or DEFAULT_PORT)
    cfg = base / "airflow.cfg"
    atomic_write_text(cfg, config_text(base, folder, chosen, db_url, schedules=schedules, keys=_kept_secrets(cfg)))
    proc_env = process_env(base)
    _migrate(base, proc_env, db_url)
    atomic_write_text(_state_file(base), json.dumps({
        "port": chosen, "url": f"http://127.0.0.1:{chosen}", "env": env, "dags_folder": str(folder),
        "database": metadata_database(), "schedules": schedules}, indent=1) + "\n")
    procs = {}
    try:
        leader = procs["api-server"] = _start("api-server", ["api-server", "-H", "127.0.0.1", "-p", str(chosen),
                                                             "-w", "1"], base, proc_env, 0)
        procs["scheduler"] = _start("scheduler", ["scheduler", "--skip-serve-logs"], base, proc_env, leader.pid)
        procs["dag-processor"] = _start("dag-processor", ["dag-processor"], base, proc_env, leader.pid)
        _wait_healthy(procs, base, chosen)
    except BaseException:
        down(base)
        raise
    return status(base)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # gone already, or never ours to signal (PermissionError: another user's pid reused)


def _wait_gone(base: Path, pids: set[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = sorted({p for p in pids if _proc_alive(p)} | set(processes(base)))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.3)


def down(base: Path | None = None) -> list[int]:
    """Stop every process of the local Airflow (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and check that
    none is left; returns the pids stopped. Nothing running is not an error."""
    base = base or home()
    pids = set(processes(base))
    group = _read_pid(_pidfile(base, "api-server"))
    if group and any(_pgid(p) == group for p in pids):
        os.killpg(group, signal.SIGTERM)  # the components and the LocalExecutor's workers, at once
    _signal(sorted(pids), signal.SIGTERM)  # tasks, in process groups of their own
    left = _wait_gone(base, pids, STOP_TIMEOUT_S)
    if left:
        _signal(left, signal.SIGKILL)
        pids |= set(left)
        left = _wait_gone(base, pids, KILL_TIMEOUT_S)
    if left:
        raise LocalAirflowError(f"processes of the local Airflow ({base}) are still running after SIGKILL: "
                                f"{left}; look at them with `ps -o pid,stat,cmd -p {','.join(map(str, left))}`")
    for name in COMPONENTS:
        _pidfile(base, name).unlink(missing_ok=True)
        _pidfile(base, name).with_suffix(".start").unlink(missing_ok=True)
    return sorted(pids)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def status(base: Path | None = None) -> Status:
    """Whether the local Airflow runs: its components (pid, alive, log), URL and health."""
    base = base or home()
    state = {}
    if _state_file(base).exists():
        state = json.loads(_state_file(base).read_text())
    components, live = [], set(processes(base))
    for name in COMPONENTS:
        pid = _read_pid(_pidfile(base, name))
        components.append(Component(name, pid, pid in live, str(_logfile(base, name))))
    if not any(c.pid for c in components):
        components = []
    running = bool(components) and all(c.alive for c in components)
    doc = health(state["port"]) if running and state.get("port") else None
    password = base / "simple_auth_manager_passwords.json.generated"
    return Status(running=running, home=str(base), url=state.get("url"), port=state.get("port"),
                  env=state.get("env"), dags_folder=state.get("dags_folder"), database=state.get("database"),
                  schedules=state.get("schedules"), health=doc,
                  password_file=str(password) if password.exists() else None, components=components)
