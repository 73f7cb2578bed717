"""Run dbt Labs' jafgen with every source of randomness seeded: the same years give the same files.

jafgen seeds Faker but draws from ``random``, ``numpy.random`` and ``uuid.uuid4``
unseeded, so two runs differ (other order and customer ids). Loaded by key,
two different runs would pile up in ``raw`` as two shops. Here ``random`` and
numpy are seeded and ``uuid.uuid4`` draws from a seeded generator (still
version-4 UUIDs); ``PYTHONHASHSEED`` is fixed by the caller.

    python -m stackbook.ingest.jafgen_seeded YEARS [SEED]   (writes ./jaffle-data/)
"""

from __future__ import annotations

import random
import sys
import uuid


def main(years: int, seed: int = 0) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    ids = random.Random(seed + 1)
    uuid.uuid4 = lambda: uuid.UUID(int=ids.getrandbits(128), version=4)
    from jafgen.simulation import Simulation

    sim = Simulation(years, "raw")
    sim.run_simulation()
    sim.save_results()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
