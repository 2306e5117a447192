"""What every server shares: the `Server` interface (host, port, lifecycle, connection URLs),
`ServerError`, and `LocalServer`, the lifecycle of a server process run here (temp dir, launch,
readiness polling, graceful stop then SIGKILL of the whole tree, the ``atexit`` stop of every
server still running). One module per kind of server subclasses it."""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self
from urllib.parse import quote, urlencode

from ._process import (
    LOOPBACK,
    _die_with_parent,
    _kill_tree,
    _killpg,
    _port_accepts,
    _port_is_free,
    free_port,
)

__all__ = ["LocalServer", "Server", "ServerError"]

_LOG_TAIL_LINES = 20
_PROBE_TIMEOUT = 5.0


class ServerError(RuntimeError):
    """A throwaway server could not be started; says which and why (with the tail of its log)."""


def _log_tail(path: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


# Every LocalServer that has a temp dir; stopped at interpreter exit.
_live: set[LocalServer] = set()
_live_lock = threading.Lock()


def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        server.stop()


atexit.register(_stop_all)


class Server(abc.ABC):
    """A database server the tests talk to: host, port, lifecycle and connection URLs."""

    name: str
    host: str
    port: int

    # URL parts, set by subclasses.
    _scheme: str = ""
    _database: str = ""
    _query: Mapping[str, str] = {}
    _driver_in_scheme: bool = True

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the server (idempotent) and wait until it answers; raise ServerError if not."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server and remove its temp dir (idempotent, never raises)."""

    @abc.abstractmethod
    def restart(self) -> None:
        """Stop the process and start it again on the same port with the same data."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL the server process, keeping its data dir (for fault tests)."""

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """Whether the server process is up."""

    @abc.abstractmethod
    def _netloc(self) -> str:
        """The ``user@host:port`` part of the URL."""

    def url(self, driver: str | None = None, database: str | None = None, **query: str) -> str:
        """A connection URL; ``driver`` goes in the scheme (``postgresql+asyncpg``), ``query`` adds
        URL parameters."""
        scheme = self._scheme
        if driver and self._driver_in_scheme:
            scheme = f"{scheme}+{driver}"
        db = self._database if database is None else database
        params = {**self._query, **query}
        out = f"{scheme}://{self._netloc()}/{quote(db, safe='')}"
        if params:
            out += "?" + urlencode(params, safe=":,")
        return out

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {self.host}:{self.port} {state}>"


class LocalServer(Server):
    """A server process run by this library in its own temp dir, on a random loopback port."""

    _user_name: ClassVar[str] = ""  # the OS user to run as when we are root ("" = ourselves)
    _stop_signal: ClassVar[int] = signal.SIGTERM
    # stop() discards the data anyway: True skips the graceful shutdown when that is slow.
    _kill_on_stop: ClassVar[bool] = False

    def __init__(self, *, port: int | None = None, start_timeout: float = 30.0,
                 stop_timeout: float = 10.0) -> None:
        self.host = LOOPBACK
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.forced_stop = False
        """Whether the last stop or restart had to SIGKILL a server that did not stop in time."""
        self.tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._initialized = False
        self._lock = threading.RLock()

    # -- hooks -----------------------------------------------------------------------------------

    def _initialize(self, deadline: float) -> None:
        """Create the data dir / config in ``self.tmpdir`` once, before the first launch."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The foreground server command line."""

    @abc.abstractmethod
    def _probe(self, timeout: float) -> str | None:
        """Ask the server to answer a request: None when it did, else why not."""

    # -- state -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group id), or None when not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The file the server's stdout/stderr (and setup commands' output) go to."""
        return self.tmpdir / "server.log" if self.tmpdir is not None else None

    @property
    def data_dir(self) -> Path | None:
        """The server's data directory inside the temp dir."""
        return self.tmpdir / "data" if self.tmpdir is not None else None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server (idempotent) and wait until it answers; raise ServerError if not."""
        with self._lock:
            if self.running:
                return self
            deadline = time.monotonic() + self.start_timeout
            fresh = self.tmpdir is None
            try:
                if fresh:
                    if not self._fixed_port and not _port_is_free(self.port):
                        self.port = free_port()
                    self.tmpdir = Path(tempfile.mkdtemp(prefix=f"connman-{self.name}-"))
                    with _live_lock:
                        _live.add(self)
                    self._chown(self.tmpdir)
                if not self._initialized:
                    self._initialize(deadline)
                    self._initialized = True
                self._launch(deadline)
            except Exception as exc:
                err = exc if isinstance(exc, ServerError) else self._error(
                    f"{type(exc).__name__}: {exc}")
                self._abort(fresh)
                raise err from (None if err is exc else exc)
            except BaseException:
                self._abort(fresh)
                raise
            return self

    def _abort(self, fresh: bool) -> None:
        with contextlib.suppress(Exception):
            self._terminate()
        if fresh:
            self.stop()

    def stop(self) -> None:
        """Stop the server and remove its temp dir (idempotent, never raises)."""
        with self._lock:
            with contextlib.suppress(Exception):
                if self._kill_on_stop:
                    self.kill()
                self._terminate()
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
            self._initialized = False
            with _live_lock:
                _live.discard(self)

    def restart(self) -> None:
        """Stop the process and start it again on the same port with the same data."""
        with self._lock:
            if self.tmpdir is not None:
                self._terminate()
            self.start()

    def kill(self) -> None:
        """SIGKILL the server's whole process group, keeping its data dir (for fault tests)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            _kill_tree(proc, self.stop_timeout)
            self._proc = None
            self._close_log()

    # -- internals -------------------------------------------------------------------------------

    def _error(self, why: str) -> ServerError:
        return ServerError(
            f"{self.name} server on {self.host}:{self.port} did not start: {why}\n"
            f"--- last {_LOG_TAIL_LINES} lines of {self.log_path} ---\n{_log_tail(self.log_path)}")

    def _switch_user(self) -> pwd.struct_passwd | None:
        if not self._user_name or os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(self._user_name)
        except KeyError:
            raise ServerError(f"{self.name}: running as root, but there is no "
                              f"{self._user_name!r} user to run the server as") from None

    def _chown(self, path: Path) -> None:
        user = self._switch_user()
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        user = self._switch_user()
        if user is not None and self.tmpdir is not None:
            env.update(HOME=str(self.tmpdir), USER=user.pw_name, LOGNAME=user.pw_name)
        return env

    def _open_log(self) -> IO[bytes]:
        if self._log is None or self._log.closed:
            assert self.log_path is not None
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close_log
        return self._log

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def _popen(self, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        log = self._open_log()
        log.write(f"--- connman: {' '.join(cmd)}\n".encode())
        log.flush()
        user = self._switch_user()
        return subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.tmpdir, env=self._env(), start_new_session=True,
            preexec_fn=_die_with_parent(),
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None)

    def _run(self, cmd: Sequence[str], deadline: float) -> None:
        """Run a setup command to completion (as the server's user), raising ServerError."""
        proc = self._popen(cmd)
        try:
            rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait()
            raise self._error(f"{Path(cmd[0]).name} did not finish within "
                              f"{self.start_timeout:g}s") from None
        if rc != 0:
            raise self._error(f"{Path(cmd[0]).name} exited with code {rc}")

    def _launch(self, deadline: float) -> None:
        self._terminate()
        proc = self._proc = self._popen(self._command())
        delay = 0.02
        why = "no answer yet"
        while True:
            rc = proc.poll()
            if rc is not None:
                raise self._error(f"the server process exited with code {rc} during startup")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error(f"not answering after {self.start_timeout:g}s ({why})")
            if _port_accepts(self.host, self.port, timeout=min(1.0, remaining)):
                answer = self._probe(timeout=min(_PROBE_TIMEOUT, max(0.1, remaining)))
                if answer is None:
                    return
                why = answer
            else:
                why = f"port {self.port} refuses connections"
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.2)

    def _terminate(self) -> None:
        """Stop the process gracefully, SIGKILL what is left of its group, keep the temp dir."""
        proc = self._proc
        self.forced_stop = False
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self._stop_signal)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.stop_timeout)
                # Still running after stop_timeout: what follows is a crash, not a clean stop.
                self.forced_stop = proc.poll() is None
            _kill_tree(proc, self.stop_timeout)  # what is left, if anything
            self._proc = None
        self._close_log()

    def _check(self, cmd: Sequence[str], timeout: float,
               env: Mapping[str, str] | None = None) -> str | None:
        """Run a client command; None when it exits 0, else its last output line."""
        try:
            done = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, env={**os.environ, **(env or {})},
                                  check=False)
        except subprocess.TimeoutExpired:
            return f"{Path(cmd[0]).name} timed out"
        except OSError as exc:
            return f"{Path(cmd[0]).name}: {exc}"
        if done.returncode == 0:
            return None
        out = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        return f"{Path(cmd[0]).name}: {out[-1] if out else f'exit code {done.returncode}'}"

    def _netloc(self) -> str:
        return f"{self.host}:{self.port}"
