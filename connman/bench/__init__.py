"""The connman benchmark suite: connman vs hand-written vs raw driver pools, on real servers.

Run it with `connman bench` or `python -m connman.bench [--quick]`; see benchmarks/README.md.
Needs the `bench` extra (`pip install 'connman[bench]'`) and the drivers of the chosen backends.
"""

from __future__ import annotations

from .deps import require_bench

require_bench()  # before anything imports matplotlib, uvicorn or httpx: name the extra instead

from .runner import arun, run  # noqa: E402
from .targets import BACKENDS, QUICK_BACKENDS  # noqa: E402
from .variants import VARIANTS  # noqa: E402

__all__ = ["BACKENDS", "QUICK_BACKENDS", "VARIANTS", "arun", "run"]
