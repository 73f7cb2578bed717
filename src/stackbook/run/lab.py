"""``stackbook lab``: JupyterLab with the environment a headless run would have."""

from __future__ import annotations

import os
import sys

from stackbook.core import catalog, environments, project
from stackbook.core.privacy import TELEMETRY_OFF
from stackbook.core.results import RESULTS_ENV
from stackbook.run import scrub


def lab_environment(env_name: str) -> dict[str, str]:
    """DATABASE_URL, STACKBOOK_* and every secret any runbook declares (those that are set)."""
    from stackbook.run import db

    env = environments.load(env_name)
    names = sorted({s for rb in catalog.all_runbooks()
                    for s in rb.metadata.get("secrets", []) + rb.metadata.get("optional_secrets", [])})
    # a runbook that needs a missing one says so when it runs
    found = scrub.collect_optional(names, env.name)
    lab_dir = project.state_dir() / "lab"
    lab_dir.mkdir(mode=0o700, exist_ok=True)
    return {
        **TELEMETRY_OFF,
        **found,
        "DATABASE_URL": db.url(),
        "STACKBOOK_PROJECT": str(project.root()),
        "STACKBOOK_ENV": env.name,
        RESULTS_ENV: str(lab_dir / f"results-{env.name}.jsonl"),
    }


def command(env_name: str, port: int = 8888, open_browser: bool = True) -> tuple[list[str], dict[str, str]]:
    env_vars = lab_environment(env_name)
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={project.root()}", "--ip=127.0.0.1",
           f"--port={port}"]
    if not open_browser:
        cmd.append("--no-browser")
    return cmd, env_vars


def exec_lab(cmd: list[str], env_vars: dict[str, str]) -> None:
    os.execve(cmd[0], cmd, {**os.environ, **env_vars})
