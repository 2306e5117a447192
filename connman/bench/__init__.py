"""The connman benchmark suite: connman vs hand-written vs raw driver pools, on real servers.

Run it with `connman bench` or `python -m connman.bench [--quick]`; see benchmarks/README.md.
"""

from __future__ import annotations

from .runner import arun, run
from .targets import BACKENDS, QUICK_BACKENDS
from .variants import VARIANTS

__all__ = ["BACKENDS", "QUICK_BACKENDS", "VARIANTS", "arun", "run"]
