"""The `connman` console script: the CLI, or the one line naming the extra it needs."""

from __future__ import annotations

import sys

from .errors import MissingDependency


def main() -> None:
    """Run `connman.cli`; without its extra (typer, rich), print what to install and exit 2."""
    try:
        from .cli import main as cli_main
    except MissingDependency as exc:
        print(f"connman: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    cli_main()


if __name__ == "__main__":
    main()
