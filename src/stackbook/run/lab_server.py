"""The Jupyter server of one session (``stackbook lab NAME``): its configuration and its save hooks.

``write_config`` writes, in the session's private folder, the server's
``jupyter_server_config.py`` (this module's hooks on the contents manager, no
automatic kernel restart: a kernel that dies ends the session, JupyterLab's
workspaces kept in the session) and the kernel's ``ipython_kernel_config.py``
(the extension ``stackbook.run.lab_kernel``, found through ``$IPYTHONDIR``).

The hooks run in the server, for every save, no browser extension needed:
``pre_save`` scrubs every secret from the notebook before it is written, so the
session copy on disk and the checkpoints JupyterLab copies from it never hold a
secret; ``post_save`` writes that copy to the run store (the run's executed
notebook, as saved last) and notes the save in the session folder (``saved.json``:
the supervisor waits for a save after ``stackbook.finish()``); it acts on the
session's notebook only (``$STACKBOOK_LAB_NOTEBOOK``), ``pre_save`` on every notebook.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

NOTEBOOK_ENV = "STACKBOOK_LAB_NOTEBOOK"
SAVED_ENV = "STACKBOOK_LAB_SAVED"
OUTPUT_ENV = "STACKBOOK_RUN_OUTPUT"

_SERVER_CONFIG = """# written by stackbook for session {run_id}
c = get_config()  # noqa: F821
c.ServerApp.contents_manager_class = "jupyter_server.services.contents.largefilemanager.AsyncLargeFileManager"
c.ServerApp.jpserver_extensions = {{name: False for name in {others!r}}}
c.ContentsManager.pre_save_hook = "stackbook.run.lab_server.pre_save"
c.ContentsManager.post_save_hook = "stackbook.run.lab_server.post_save"
c.KernelManager.autorestart = False
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.allow_remote_access = False
c.LabApp.workspaces_dir = {workspaces!r}
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
"""
#: server extensions of the environment a session's server leaves off: contents managers of their own (the hooks
#: above would not run, or would not be called the way they expect), terminals (a shell beside the recorded kernel)
OTHER_EXTENSIONS = ("jupytext", "jupyterlab_jupytext", "ploomber", "ploomber_extension", "nbclassic",
                    "jupyter_server_terminals", "jupyter_lsp")
_KERNEL_CONFIG = """# written by stackbook for session {run_id}
c = get_config()  # noqa: F821
c.IPKernelApp.extensions = ["stackbook.run.lab_kernel"]
c.HistoryManager.enabled = False  # the row records what ran; no history database beside the session copy
"""


def write_config(private: Path, run_id: str) -> tuple[Path, Path]:
    """(the server's config file, the kernel's IPYTHONDIR) under PRIVATE (0700)."""
    from stackbook.core.files import make_dirs

    make_dirs(private)
    workspaces = private / "workspaces"
    profile = private / "ipython" / "profile_default"
    for folder in (workspaces, profile):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = private / "jupyter_server_config.py"
    server.write_text(_SERVER_CONFIG.format(run_id=run_id, workspaces=str(workspaces), others=OTHER_EXTENSIONS),
                      encoding="utf-8")
    (profile / "ipython_kernel_config.py").write_text(_KERNEL_CONFIG.format(run_id=run_id), encoding="utf-8")
    return server, private / "ipython"


def scrubber():
    """The declared secrets (``$STACKBOOK_SECRET_NAMES``), the database password and the credential-looking
    variables of the server's environment, as a ``scrub.Scrubber``."""
    from stackbook.run import db, kernel, scrub
    from stackbook.run.lab_kernel import SECRET_NAMES_ENV

    names = [n for n in os.environ.get(SECRET_NAMES_ENV, "").split(",") if n]
    values = {**kernel.credential_values(dict(os.environ)), **{n: os.environ[n] for n in names if os.environ.get(n)}}
    password = db.password(os.environ.get("DATABASE_URL", ""))
    if password:
        values.setdefault("DATABASE_PASSWORD", password)
    return scrub.Scrubber(values)


def _is_session_notebook(os_path: str) -> bool:
    target = os.environ.get(NOTEBOOK_ENV)
    return bool(target) and os.path.realpath(os_path) == os.path.realpath(target)


def pre_save(model, path, contents_manager, **kwargs) -> None:
    """Every secret scrubbed from a notebook's content before the server writes it (any notebook of the session's
    folder: one the engineer adds has the kernel's secrets as well)."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    import nbformat

    model["content"] = nbformat.from_dict(scrubber().obj(model["content"]))


def post_save(model, os_path, contents_manager, **kwargs) -> None:
    """The saved (scrubbed) notebook to the run store; the save noted for the supervisor."""
    if not _is_session_notebook(os_path):
        return
    from stackbook.run import runstore

    text = scrubber().text(Path(os_path).read_text(encoding="utf-8"))
    if os.environ.get(OUTPUT_ENV):
        runstore.write_text(os.environ[OUTPUT_ENV], text)
    saved = os.environ.get(SAVED_ENV)
    if saved:
        tmp = f"{saved}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"at": time.time(), "sha256": hashlib.sha256(text.encode()).hexdigest()}, fh)
        os.replace(tmp, saved)
