"""stackbook: an operations handbook that runs.

Runbooks call into this package; ``stackbook.record(name, value)`` sends a
result to the run ledger (headless runs) or keeps it for the session
(JupyterLab). Heavy modules are imported only where they are used, so that
``import stackbook`` and the CLI start fast.
"""

from __future__ import annotations

from stackbook.core.results import record, recorded

__all__ = ["record", "recorded", "__version__"]
__version__ = "0.1.0"
