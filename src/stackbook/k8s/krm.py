"""The ``RunbookCronJobs`` generator as a KRM exec function, for real kustomize.

``stackbook.k8s.render`` runs the generator itself; this entry point lets
``kustomize build --enable-alpha-plugins --enable-exec infra/k8s/overlays/dev``
(or ``kubectl kustomize`` with the same flags) produce the same manifests, via
``infra/k8s/base/runbook-cronjobs.sh``. It reads a ``ResourceList`` on stdin
(``functionConfig`` is the generator's YAML), appends one CronJob per
scheduled runbook of the catalogue and writes the ``ResourceList`` to stdout.
"""

from __future__ import annotations

import sys


def main(stdin=None, stdout=None) -> int:
    import yaml

    from stackbook.core.errors import StackbookError
    from stackbook.k8s.render import runbook_cronjobs

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    resource_list = yaml.safe_load(stdin.read()) or {}
    config = resource_list.get("functionConfig") or {}
    try:
        from stackbook.core import catalog

        generated = runbook_cronjobs(config, catalog.all_runbooks(), "RunbookCronJobs")
    except StackbookError as exc:
        print(f"RunbookCronJobs: {exc}", file=sys.stderr)
        return 1
    resource_list["items"] = list(resource_list.get("items") or []) + generated
    stdout.write(yaml.safe_dump(resource_list, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
