"""Transforms: dbt for the ``runbooks/transform`` runbooks (``stackbook.transform.dbt``)."""
