"""Provisioning: the warehouse's database, schemas and roles (``warehouse``), for ``runbooks/provision``.

``from stackbook import provision`` and ``provision.plan/apply/verify`` keep working. The
cluster runbook uses the Kubernetes adapter, ``stackbook.k8s``.
"""

from stackbook.provision.warehouse import apply, plan, verify

__all__ = ["apply", "plan", "verify"]
