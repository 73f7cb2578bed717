"""``python -m stackbook.book._jb build ...``: the ``jupyter-book`` command, started faster.

Imports the book never needs are skipped, because start-up is most of a
rebuild after one runbook changed:

- jsonschema's optional ``rfc3987_syntax`` (compiles some forty lark grammars
  when nbformat loads jsonschema; nothing here validates IRI formats; the
  runner skips it too);
- ``jupyter_cache`` (SQLAlchemy), which MyST-NB imports for executing
  notebooks. The book never executes a notebook (``execute_notebooks: off`` is
  enforced by ``stackbook.book.generate``), so a placeholder stands in for it
  and fails loudly if anything ever tries to execute. For the same reason
  MyST-NB's inline executor (``nbclient``) and ``jupyter_client`` (which
  Jupyter Book imports only to list kernels for ``jupyter-book create``) are
  placeholders: about 0.2 s.

And the process ends without tearing its 1,200 modules down
(``stackbook.core.fastexit``): 0.4 to 0.6 s here, a quarter of a rebuild.
"""

import sys
import types

sys.modules.setdefault("rfc3987_syntax", None)


class _NoExecution(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def refuse(*args, **kwargs):
            raise RuntimeError(
                f"{self.__name__}.{name}: the stackbook book never executes notebooks (execute_notebooks: off); "
                "run runbooks with `stackbook run`")

        return refuse


def prepare() -> None:
    """Put the placeholders in place in this process (before Jupyter Book is imported)."""
    for name in ("jupyter_cache", "jupyter_cache.base", "jupyter_cache.cache", "jupyter_cache.cache.db",
                 "jupyter_cache.executors", "jupyter_cache.executors.utils", "myst_nb.core.execute.inline",
                 "jupyter_client", "jupyter_client.kernelspec"):
        if name not in sys.modules:
            module = _NoExecution(name)
            module.__path__ = []  # a package, so that submodules resolve to the placeholders above
            module.__version__ = "not loaded (execution is off)"
            sys.modules[name] = module


if __name__ == "__main__":
    prepare()
    from jupyter_book.cli.main import main

    from stackbook.core.fastexit import run_then_exit

    run_then_exit(main)
