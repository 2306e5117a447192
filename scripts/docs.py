"""Render the generated docs: `python scripts/docs.py` rewrites docs/mapping.md and configuration.md.

A repository tool, not part of the installed package: it writes into the checkout's docs/.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's connman, whatever is installed

from connman._mapping import render_markdown  # noqa: E402
from connman.config import PRESETS, PoolConfig  # noqa: E402


def render_configuration() -> str:
    """The schema's fields as Markdown: name, default and what it is for, from the code."""

    lines = [
        "# Pool configuration",
        "",
        "Generated from `connman/_poolconfig.py` (`python scripts/docs.py`); a test keeps this file and "
        "the code equal.",
        "",
        "Every pool is one `PoolConfig`. In the environment: `CONNMAN_POOLS__<NAME>__<FIELD>`, "
        "e.g. `CONNMAN_POOLS__MAIN__SIZE=10`; `options` and `session_options` take JSON, "
        "`session_class` and `credentials` a dotted path.",
        "",
        "| field | default | what it is for |",
        "| --- | --- | --- |",
    ]
    for name, info in PoolConfig.model_fields.items():
        default = "required" if info.is_required() else (
            "[]" if name == "replicas" else "{}" if name in ("options", "session_options")
            else repr(info.default))
        # A table row is one line: a docstring that wraps must not break it.
        lines.append(f"| `{name}` | `{default}` | {' '.join((info.description or '').split())} |")
    lines += ["", "## Overflow: bursts without reconnect storms", "",
              "`size` connections are opened at startup and kept. Under load the pool opens more, "
              "up to `size + overflow`, the hard maximum. Those stay open while they keep being "
              "used, so a burst that follows another finds its connections ready instead of "
              "reconnecting (a TCP handshake, authentication, TLS and a new server process each). "
              "Once one has been unused for `overflow_idle` seconds (at most `idle`) it is closed, "
              "the longest unused first and one after another, until `size` remain. SQLAlchemy "
              "alone closes a connection above `pool_size` the moment it comes back; HikariCP "
              "(`idleTimeout`) and psycopg_pool (`max_idle`) keep it 10 minutes, asyncpg's pool "
              "(`max_inactive_connection_lifetime`) 5 minutes.",
              "",
              "The default, 300 s, is asyncpg's: bursts minutes apart (a cron job, a batch, a "
              "traffic peak) keep their connections, while a one-off spike gives its surplus back "
              "to the server within minutes. It is shorter than HikariCP's and psycopg_pool's 10 "
              "minutes because connman's `idle` (600 s) already plays that role for every "
              "connection. The connection budget (`connman check`) counts `size + overflow` per "
              "worker either way. Lower it when many workers share a server whose connections are "
              "scarce; raise it (up to `idle`) when bursts come further apart.",
              "", "## Presets", "",
              "`preset=` fills the fields a pool does not set; fields set explicitly win.", "",
              "| preset | " + " | ".join(sorted({k for p in PRESETS.values() for k in p})) + " |",
              "| --- |" + " --- |" * len({k for p in PRESETS.values() for k in p})]
    keys = sorted({k for p in PRESETS.values() for k in p})
    for preset, values in PRESETS.items():
        lines.append(f"| `{preset}` | " + " | ".join(
            f"`{values[k]}`" if k in values else "-" for k in keys) + " |")
    lines += ["", "- **development**: few connections, short waits and leak warnings, so "
              "problems show on a laptop, not in production.",
              "- **production**: a steady pool with HikariCP's lifetimes (30 min recycle, 10 min "
              "idle) and pre-ping so a database restart costs no request; `statement_timeout` "
              "30 s, so a frozen server or a silent network holds a request at most that long, "
              "about when front proxies give up on it anyway (Heroku's router at 30 s, nginx's "
              "and AWS ALB's defaults at 60 s): finishing it later helps no one.",
              "- **high_traffic**: a bigger pool that fails fast (2 s) and sheds load with "
              "`max_waiting` instead of queueing into timeouts; `statement_timeout` 5 s, since "
              "a statement that long is already an outage for a service of short requests.",
              "- **development** sets no `statement_timeout`: a debugger paused at a breakpoint "
              "stops the event loop, and the deadline would kill the connection on resume."]
    return "\n".join(lines) + "\n"


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
