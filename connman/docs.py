"""Render the generated docs: `python -m connman.docs` rewrites docs/mapping.md from the code."""

from __future__ import annotations

import sys
from pathlib import Path

from ._mapping import render_markdown


def main(argv: list[str] | None = None) -> int:
    """Write docs/mapping.md (or the path given) from the mapping table in code."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "docs" / "mapping.md"
    target.write_text(render_markdown())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
