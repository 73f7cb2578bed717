"""The book: runbooks published with the evidence of their latest runs.

``stackbook book -e ENV`` generates a Jupyter Book source tree under
``.stackbook/book/src`` (``book/src`` of the state folder, git-ignored; ``--src``
puts it elsewhere) from the hand-written chapters in ``book/``, the root
``_config.yml`` and ``_toc.yml``, the runbooks and the run ledger, then builds it
with Jupyter Book 1.x into ``_build/html`` (``--out`` puts it elsewhere).

Modules, one concern each:

- ``toc``: the root ``_toc.yml`` (read, add a runbook, the effective toc of a build)
- ``evidence``: runs from the ledger (with their approvals and attestations), freshness of each runbook, and
  the evidence chain's state at build time
- ``charts``: static SVG charts of the run history (matplotlib, no JavaScript)
- ``pages``: the text of every generated page
- ``datadocs``: GX's Data Docs of the latest ``validate_raw`` run, copied in and linked from its chapter
- ``drift``: the model-drift page (``check_model_drift``'s figures over time)
- ``generate``: writes the source tree, each file only when its content changed
- ``build``: runs ``jupyter-book build`` (offline, warnings as errors), in a subprocess or in this process
- ``_jb``: the ``jupyter-book`` command without the imports a book that executes nothing never needs
- ``sphinx_cache``: a Sphinx extension that keeps the theme's compiled templates between builds
- ``watch``: ``stackbook book --watch``, rebuild after every change in one process
- ``new``: ``stackbook new AREA/NAME``

The ``book`` and ``new`` commands themselves are in ``stackbook.cli.book``.
"""

from __future__ import annotations

from stackbook.core.errors import BookError, BookUsageError  # noqa: F401 (re-exported)
