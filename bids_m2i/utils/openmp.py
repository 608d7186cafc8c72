"""How idle OpenMP threads wait: set before torch (and its OpenMP runtime) loads.

OpenMP's default lets a thread that waits for its team spin before it sleeps. When the cores are shared (other
jobs on an HPC node, nipype's other workers, more threads than the job's CPUs) a spinning thread takes the CPU from
the peer it waits for. Measured on this project's 2-core VM at load ~6 (2026-12-03, `fithrf-denoise-rr`,
``dg-nsd`` V = 4,000): 2 torch threads took 85.7 s wall / 44.1 CPU s with the default policy, 21.4 s / 10.0 s with
``PASSIVE`` (1 thread: 18.2 s / 9.0 s). The price on a quiet machine (load < 1, same fit, two alternating runs
each): 2 threads took 7.5–8.2 s wall / 8.4–9.1 CPU s with ``PASSIVE`` against 6.7–7.5 s / 10.4–11.7 s unset
(``ACTIVE``: 6.9–7.3 s / 13.4–14.1 s; 1 thread: 8.1–8.7 s): about 10 % more wall time where the cores are free,
4x less where they are not, and less CPU either way. libgomp (torch's OpenMP, and MKL's threading layer in torch's wheels)
reads ``OMP_WAIT_POLICY`` once, when it loads; ``KMP_BLOCKTIME`` is Intel OpenMP's equivalent, for builds that
use it. No import here: benchmarks run in other environments read it too.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

OPENMP_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def set_openmp_wait(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sleep rather than spin while waiting; a value the user set is kept."""
    for name, value in OPENMP_WAIT.items():
        environ.setdefault(name, value)
