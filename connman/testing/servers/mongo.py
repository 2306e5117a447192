"""A throwaway MongoDB-wire server (SecantusDB's ``secantusd-py``), checked with a hand-built
``OP_MSG`` ``ping``."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

from ._process import _find_binary
from .base import LocalServer, ServerError

__all__ = ["MongoWireServer"]


def _mongo_ping(host: str, port: int, timeout: float) -> str | None:
    """Send an ``OP_MSG`` ``{ping: 1, $db: "admin"}``; None when it answers ``ok: 1``."""
    elements = (b"\x10ping\x00" + struct.pack("<i", 1)
                + b"\x02$db\x00" + struct.pack("<i", 6) + b"admin\x00")
    doc = struct.pack("<i", 4 + len(elements) + 1) + elements + b"\x00"
    body = struct.pack("<I", 0) + b"\x00" + doc
    message = struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body

    def recv_exact(s: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed mid-reply")
            buf += chunk
        return buf

    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(message)
            length, _, _, opcode = struct.unpack("<iiii", recv_exact(s, 16))
            reply = recv_exact(s, length - 16)
    except (OSError, struct.error) as exc:
        return f"ping failed: {exc}"
    if opcode != 2013:
        return f"unexpected reply opcode {opcode}"
    if (b"\x01ok\x00" + struct.pack("<d", 1.0)) in reply or (
            b"\x10ok\x00" + struct.pack("<i", 1)) in reply:
        return None
    return "ping did not answer ok: 1"


class MongoWireServer(LocalServer):
    """A throwaway MongoDB-wire server (SecantusDB's ``secantusd-py``), test commands enabled."""

    name = "mongo"
    _scheme = "mongodb"
    _database = ""
    _query = {"directConnection": "true"}
    _driver_in_scheme = False  # the driver is chosen in code, not in a mongodb:// URL
    _kill_on_stop = True  # a graceful shutdown takes ~2 s (the accept thread's join timeout)

    def __init__(self, *, enable_test_commands: bool = True, options: Sequence[str] = (),
                 port: int | None = None, start_timeout: float = 30.0,
                 stop_timeout: float = 15.0) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.enable_test_commands = enable_test_commands
        self.options = list(options)

    def _initialize(self, deadline: float) -> None:
        assert self.tmpdir is not None
        # An explicit (empty) config file turns off the auto-discovery of ./secantusd.toml etc.
        (self.tmpdir / "secantusd.toml").write_text("")

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        assert self.data_dir is not None
        exe = _find_binary("secantusd-py", Path(sys.executable).parent / "secantusd-py")
        if exe is None:
            raise ServerError("secantusd-py not found (pip install secantusdb)")
        cmd = [exe, "--config", str(self.tmpdir / "secantusd.toml"), "--host", self.host,
               "--port", str(self.port), "--storage-path", str(self.data_dir),
               "--log-level", "WARNING"]
        if self.enable_test_commands:
            cmd.append("--enable-test-commands")
        return cmd + self.options

    def _probe(self, timeout: float) -> str | None:
        return _mongo_ping(self.host, self.port, timeout)
