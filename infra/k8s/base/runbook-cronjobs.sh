#!/bin/sh
# KRM exec function for real kustomize (`kustomize build --enable-alpha-plugins --enable-exec`):
# runs the RunbookCronJobs generator of runbook-cronjobs.yaml with the project's Python.
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
python="${STACKBOOK_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m stackbook.k8s.krm
