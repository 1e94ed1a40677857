"""The process launcher itself: a redis-server on a free port starts, answers, stops
and gives its port back; a failing HTTP server reports its log."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import redis

from benchmarks import processes

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="needs the redis-server binary on PATH (apt-get install redis-server)",
)


def test_free_port_is_bindable() -> None:
    assert processes.port_is_free(processes.free_port())


@needs_redis
def test_redis_server_starts_answers_and_releases_its_port(tmp_path) -> None:
    with processes.redis_server(tmp_path / "redis") as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert not processes.port_is_free(server.port)
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
        pid = server.pid
    assert server.process is None
    assert processes.port_is_free(server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@needs_redis
def test_redis_server_restarts_on_the_same_port_with_its_data(tmp_path) -> None:
    with processes.redis_server(tmp_path / "redis", appendonly=True) as server:
        with server.client() as client:
            client.set("kept", "yes")
        server.terminate()
        server.start()
        with server.client() as client:
            assert client.get("kept") == "yes"


def test_http_server_that_exits_reports_its_log(tmp_path) -> None:
    command = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with (
        pytest.raises(RuntimeError, match=r"(?s)exited \(3\).*boom"),
        processes.http_server(command, tmp_path / "x.log", timeout_s=10),
    ):
        pass
