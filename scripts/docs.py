"""Render the generated docs: `python scripts/docs.py` rewrites docs/mapping.md and configuration.md.

A repository tool, not part of the installed package: it writes into the checkout's docs/.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's connman, whatever is installed

from connman._mapping import render_configuration, render_markdown  # noqa: E402

DOCS = ROOT / "docs"
GENERATED = {"mapping.md": render_markdown, "configuration.md": render_configuration}


def main() -> int:
    """Write the generated pages into docs/."""
    for name, render in GENERATED.items():
        (DOCS / name).write_text(render())
        print(f"wrote {DOCS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
