"""Sphinx extension: keep the compiled HTML templates between builds.

Every ``jupyter-book build`` is a fresh process, and Jinja compiles the theme's
templates (sphinx-book-theme on pydata-sphinx-theme, some forty files) from
source in each one: about half a second, a fifth of a rebuild after one
runbook changed. Jinja's bytecode cache keeps the compiled code on disk, keyed
by template name and checked against each template's source, so a changed
theme or template is compiled again and nothing stale is used.

The cache sits beside the doctrees in ``_build/`` (``_build/.jinja-cache``),
so removing ``_build`` removes it.
"""

from __future__ import annotations

from pathlib import Path

CACHE_DIR = ".jinja-cache"


def _use_bytecode_cache(app) -> None:
    from jinja2 import FileSystemBytecodeCache

    templates = getattr(app.builder, "templates", None)
    environment = getattr(templates, "environment", None)
    if environment is None:  # a builder without Jinja templates (latex, linkcheck...)
        return
    cache = Path(app.doctreedir).parent / CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    environment.bytecode_cache = FileSystemBytecodeCache(str(cache))


def setup(app) -> dict:
    app.connect("builder-inited", _use_bytecode_cache)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
