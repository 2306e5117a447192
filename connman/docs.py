"""Render the generated docs: `python -m connman.docs` rewrites docs/mapping.md and configuration.md."""

from __future__ import annotations

from pathlib import Path

from ._mapping import render_configuration, render_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"
GENERATED = {"mapping.md": render_markdown, "configuration.md": render_configuration}


def main() -> int:
    """Write the generated pages into docs/."""
    for name, render in GENERATED.items():
        (DOCS / name).write_text(render())
        print(f"wrote {DOCS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
