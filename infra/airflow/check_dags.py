"""DAG integrity check, run with .venv-airflow/bin/python: import every DAG file of a folder.

    .venv-airflow/bin/python infra/airflow/check_dags.py DAGS_FOLDER [OUT.json]

Prints (or writes to OUT.json: Airflow logs to standard output too) one JSON document: import errors by file, and per DAG its schedule,
tasks (operator, retries, retry delay, timeout) and dependencies. Exit 1 on
any import error. Used by tests/test_airflow.py; handy before a deployment.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def main(folder: str, out: str | None = None) -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=folder, safe_mode=False)
    dags = {}
    for dag_id, dag in sorted(bag.dags.items()):
        tasks = {}
        for task in dag.tasks:
            timeout = task.execution_timeout.total_seconds() if task.execution_timeout else None
            tasks[task.task_id] = {
                "operator": type(task).__name__,
                "retries": task.retries,
                "retry_delay_s": task.retry_delay.total_seconds() if task.retry_delay else None,
                "exponential_backoff": bool(getattr(task, "retry_exponential_backoff", False)),
                "timeout_s": timeout,
                "upstream": sorted(task.upstream_task_ids),
                "command": getattr(task, "bash_command", None) or getattr(task, "arguments", None),
                "image": getattr(task, "image", None),
            }
            if hasattr(task, "build_pod_request_obj"):  # KubernetesPodOperator: the pod it would create
                from kubernetes.client import ApiClient

                tasks[task.task_id]["pod"] = ApiClient().sanitize_for_serialization(
                    task.build_pod_request_obj(dry_run=True))
        dags[dag_id] = {"file": dag.fileloc, "schedule": str(getattr(dag, "schedule", None) or dag.timetable.summary),
                        "catchup": dag.catchup, "max_active_runs": dag.max_active_runs, "tags": sorted(dag.tags),
                        "tasks": tasks}
    doc = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags}
    text = json.dumps(doc, indent=1, default=str)
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        print(text)
    return 1 if bag.import_errors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
