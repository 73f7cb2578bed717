"""Disaster recovery: the drill (``stackbook.dr.drill``), for ``runbooks/dr``.

``from stackbook import dr`` and ``dr.Drill(...)`` keep working.
"""

from stackbook.dr.drill import Drill

__all__ = ["Drill"]
