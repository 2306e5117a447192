"""Processes, ports and executables on this machine: free loopback ports, the process tree below a
server (from ``/proc``), killing it all, and finding a server's binaries. Standard library only."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

LOOPBACK = "127.0.0.1"
"""The address every throwaway server listens on."""


def free_port() -> int:
    """Return a TCP port on the loopback interface that is free right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _port_accepts(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that ties a server's life to this process (Linux `PR_SET_PDEATHSIG`): if the
    test run is killed (SIGKILL, a CI timeout), the kernel kills the server too, which `atexit`
    cannot do. Only from the main thread: the signal follows the thread that started the child.
    None elsewhere (another OS, another thread)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: do not outlive it
            os._exit(1)

    return preexec


def _killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _parent_pids() -> dict[int, list[int]]:
    """Map each pid to its children's pids, from ``/proc`` (empty where there is none)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid ...
            if len(fields) > 1 and fields[1].isdigit():
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (PostgreSQL's children leave its process group)."""
    tree = _parent_pids()
    found: list[int] = []
    stack = [pid]
    while stack:
        kids = tree.get(stack.pop(), [])
        found += kids
        stack += kids
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rsplit(")", 1)[-1].split()
    return not fields or fields[0] not in ("Z", "X")


def _kill_tree(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGKILL a process, its process group and all its descendants; wait until they are gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        proc.send_signal(signal.SIGSTOP)  # no new children while we look
    victims = _descendants(proc.pid) if proc.poll() is None else []
    _killpg(proc.pid)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in victims) and time.monotonic() < deadline:
        time.sleep(0.01)


def _find_binary(name: str, *fallbacks: str | Path) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None
