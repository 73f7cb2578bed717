"""The kernel a runbook asks for must exist before anything is recorded.

A notebook's ``metadata.kernelspec.name`` picks the Jupyter kernel a run starts.
A name no kernelspec on this machine has (a notebook written elsewhere, a kernel
uninstalled since) used to fail only once the ledger row was written; ``check``
runs in ``prepare``, so such a run is a usage error (exit 2) naming the kernels
that are installed, and nothing is recorded.
"""

from __future__ import annotations

from stackbook.core.errors import NotebookError


def available() -> dict[str, str]:
    """Installed kernelspecs: name -> the folder holding its kernel.json."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KernelSpecManager().find_kernel_specs()


def check(name: str, *, runbook: str | None = None) -> None:
    """Raise NotebookError (exit 2) unless a kernelspec called NAME is installed (names compare as Jupyter does)."""
    found = available()
    if name.lower() in {k.lower() for k in found}:
        return
    known = ", ".join(sorted(found)) or "none"
    raise NotebookError(
        f"runbook {runbook!r} asks for the Jupyter kernel {name!r} (metadata.kernelspec.name), which is not "
        f"installed here (kernels: {known}); install it or set the notebook's kernel to one of these",
        runbook=runbook)
