"""stackbook: an operations handbook that runs.

Runbooks call into this package: ``stackbook.record(name, value)`` sends a
result to the run's ledger row (a headless run's or a JupyterLab session's);
``stackbook.finish()``, a runbook's last cell, ends a session's run (it does
nothing in a headless run). Heavy modules are imported only where they are
used, so that ``import stackbook`` and the CLI start fast.
"""

from __future__ import annotations

from stackbook.core.results import finish, record, recorded

__all__ = ["finish", "record", "recorded", "__version__"]
__version__ = "0.1.0"
