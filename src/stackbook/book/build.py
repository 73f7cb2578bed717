"""Build the generated source tree with Jupyter Book 1.x: offline, nothing executed, warnings as errors.

``build`` runs ``jupyter-book build`` in a subprocess with ``-W -n`` (warnings
and broken references are errors) and without ``--keep-going``. Output goes to
``<out>/_build/html``. Sphinx's incremental build rereads only the sources whose
mtime changed; ``generate`` writes only the files whose content changed.

``build_in_process`` runs the same command in this process, for
``stackbook book --watch``: after the first build, Jupyter Book, Sphinx and the
theme are imported already, so a rebuild costs what Sphinx does for the changed
pages (0.5 to 1 s against about 2 s). Every build still makes a new Sphinx application that
reads its environment from ``_build/.doctrees`` and puts docutils' global
registries back afterwards; ``_config.yml`` gives ``templates_path`` a list of
its own, because the theme appends to it and Sphinx's shared default list would
grow with every build in one process (which marks every page outdated).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stackbook.book import BookError
from stackbook.core.privacy import TELEMETRY_OFF

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UPDATED = re.compile(r"updating environment: (?:\[[^\]]*\] )?(\d+) added, (\d+) changed, (\d+) removed")
_ITEM = re.compile(r"^(reading sources|writing output)\.\.\. \[\s*\d+%\] (\S+)")


@dataclass
class BuildResult:
    html: Path
    seconds: float
    added: int = 0
    changed: int = 0
    removed: int = 0
    read: list[str] = field(default_factory=list)  # docnames Sphinx read again
    wrote: list[str] = field(default_factory=list)  # docnames Sphinx wrote
    log: str = ""


def jupyter_book() -> list[str]:
    """The ``jupyter-book`` command of this environment (through ``stackbook.book._jb``: faster start)."""
    import importlib.util

    if importlib.util.find_spec("jupyter_book") is None:
        raise BookError("jupyter-book is not installed in this environment: run `make setup` "
                        "(it installs the locked jupyter-book 1.x)")
    return [sys.executable, "-m", "stackbook.book._jb"]


def parse_log(text: str, result: BuildResult) -> None:
    for line in re.split(r"[\r\n]+", text):
        line = line.strip()
        m = _UPDATED.search(line)
        if m:
            result.added, result.changed, result.removed = map(int, m.groups())
        m = _ITEM.match(line)
        if m:
            (result.read if m.group(1) == "reading sources" else result.wrote).append(m.group(2))


STAMP = ".stackbook-source"  # in <out>/_build: the source tree the html was last built from


def build(src: Path, out: Path, *, strict: bool = True, fresh: bool = False, changed: bool = True,
          timeout: float = 900) -> BuildResult:
    """``jupyter-book build SRC --path-output OUT``; raises BookError with Sphinx's warnings when it fails.

    With ``changed=False`` (the generator rewrote nothing) and html built from ``src`` already, Sphinx is
    not started at all.
    """
    stamp = out / "_build" / STAMP
    html = out / "_build" / "html"
    if not changed and not fresh and (html / "index.html").exists() and stamp.exists() \
            and stamp.read_text(encoding="utf-8") == str(src.resolve()):
        return BuildResult(html=html, seconds=0.0)
    env = {**os.environ, **TELEMETRY_OFF, "PYTHONWARNINGS": "ignore", "NO_COLOR": "1"}
    env.pop("PYTHONSTARTUP", None)
    t0 = time.monotonic()
    try:
        proc = subprocess.run([*jupyter_book(), *_arguments(src, out, strict, fresh)], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=str(src))
    except subprocess.TimeoutExpired as exc:
        raise BookError(f"the book build took longer than {timeout:.0f} s and was stopped") from exc
    return _finish(src, out, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0)


def build_in_process(src: Path, out: Path, *, strict: bool = True, fresh: bool = False) -> BuildResult:
    """``build`` without the subprocess: for a process that builds again and again (``stackbook book --watch``)."""
    import contextlib
    import io

    from stackbook.book import _jb

    jupyter_book()  # installed?
    _jb.prepare()
    from jupyter_book.cli.main import main

    os.environ.update(TELEMETRY_OFF)
    captured = io.StringIO()
    t0 = time.monotonic()
    code: object = 0
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        try:
            main(_arguments(src, out, strict, fresh), standalone_mode=False)
        except SystemExit as done:
            code = done.code
        except Exception as exc:  # jupyter-book raises RuntimeError with a message box when Sphinx fails
            print(exc, file=captured)
            code = 1
    return _finish(src, out, code if isinstance(code, int) else 1, captured.getvalue(), time.monotonic() - t0)


def _arguments(src: Path, out: Path, strict: bool, fresh: bool) -> list[str]:
    args = ["build", str(src), "--path-output", str(out), "--builder", "html", "-v"]
    if strict:
        args += ["-W", "-n"]
    if fresh:
        args.append("--all")
    return args


def _finish(src: Path, out: Path, returncode: int, log: str, seconds: float) -> BuildResult:
    """The result of a finished build, or BookError with Sphinx's warnings; the stamp says what html is of."""
    stamp = out / "_build" / STAMP
    result = BuildResult(html=out / "_build" / "html", seconds=seconds, log=_ANSI.sub("", log))
    parse_log(result.log, result)
    if returncode != 0 or not (result.html / "index.html").exists():
        lines = [ln.strip() for ln in result.log.splitlines()]
        problems = [ln for i, ln in enumerate(lines)
                    if ("WARNING:" in ln or "ERROR:" in ln or (i and "treated as error" in lines[i - 1]))]
        detail = "\n  ".join(problems[-15:]) or "\n  ".join(lines[-30:])
        stamp.unlink(missing_ok=True)
        raise BookError(f"the book build failed (warnings are errors; source tree {src}):\n  {detail}")
    stamp.write_text(str(src.resolve()), encoding="utf-8")
    return result
