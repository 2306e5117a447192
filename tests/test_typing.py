"""connman ships `py.typed`: a user's app type-checks against it with `mypy --strict`.

mypy runs as a subprocess in a temporary directory, with connman on `PYTHONPATH` only, so it reads
connman the way it reads an installed package (where a missing marker is the error
"module is installed, but missing library stubs or py.typed marker").
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import connman

ROOT = Path(connman.__file__).resolve().parent.parent

USER_APP = '''
from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from connman import ConnectionManager, PoolConfig, PoolNotOpen, PoolTimeout, SessionProvider

manager = ConnectionManager.from_settings()
other = ConnectionManager({"main": PoolConfig(url="sqlite+aiosqlite:///app.db", size=2)})
late = ConnectionManager(lambda: {"main": {"url": make_url("sqlite+aiosqlite:///app.db"),
                                           "session_class": AsyncSession, "commit": "manual"}})
app = FastAPI(lifespan=manager.lifespan)
app.include_router(manager.health_router())
provider: SessionProvider = manager.session("main")


@app.get("/one")
async def one(db: AsyncSession = Depends(manager.session("main"))) -> dict[str, Any]:
    value = (await db.execute(text("SELECT 1"))).scalar_one()
    return {"value": value}


async def job() -> int:
    try:
        async with manager.session("main") as db:
            await db.execute(text("SELECT 1"))
    except (PoolTimeout, PoolNotOpen) as exc:
        print(exc.pool)
    names: tuple[str, ...] = manager.names
    return len(names) + other.pool("main").config.max_size
'''

# Each line is an error only if mypy really reads connman's annotations (Any would pass them all).
WRONG = '''
from connman import ConnectionManager, PoolConfig

manager = ConnectionManager({"main": "sqlite+aiosqlite:///app.db"})
names: str = manager.names
size: str = PoolConfig(url="sqlite+aiosqlite:///app.db").max_size
'''


def test_py_typed_ships_with_the_package() -> None:
    assert (ROOT / "connman" / "py.typed").is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["connman"]


def test_a_user_app_type_checks_strictly_against_connman(tmp_path: Path) -> None:
    (tmp_path / "user_app.py").write_text(USER_APP)
    (tmp_path / "wrong.py").write_text(WRONG)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MYPYPATH", None)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull,
         "--python-executable", sys.executable, "user_app.py", "wrong.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    out = result.stdout + result.stderr
    assert "py.typed" not in out, out
    assert "user_app.py" not in out, out  # the app itself is clean under --strict
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 2, out
    assert 'wrong.py:5: error: Incompatible types in assignment (expression has type ' \
           '"tuple[str, ...]", variable has type "str")' in out
    assert 'wrong.py:6: error: Incompatible types in assignment (expression has type "int"' in out
