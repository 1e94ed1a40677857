"""The service's Redis connections: commands packed in C say what redis-py says."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.utils import HIREDIS_AVAILABLE

from service.redis_client import open_redis, packing_in_c

COMMANDS = [
    ("CONFIG GET", "maxmemory"),  # a command name of two words
    ("EVALSHA", "a" * 40, 2, "skiprec:{u}:events", "k2", 200, 1764680000.125, ""),
    ("SET", b"raw\x00bytes", memoryview(b"view"), bytearray(b"array")),
    ("RPUSH", "k", "é|ünïcode|✓", "x" * 10_000),  # past redis-py's buffer cutoff
]


@pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_packed_in_c_equals_redis_py(command):
    python, in_c = Connection(), packing_in_c(Connection)()
    assert b"".join(in_c.pack_command(*command)) == b"".join(
        python.pack_command(*command)
    )
    assert b"".join(in_c.pack_commands([command, command])) == b"".join(
        python.pack_commands([command, command])
    )


@pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")
def test_the_service_pools_pack_in_c_whatever_the_url(make_settings, tmp_path):
    for settings in (make_settings(), make_settings(redis_url=None)):
        handle = open_redis(settings)
        try:
            for client in (handle.client, handle.read_client):
                cls = client.connection_pool.connection_class
                assert cls.pack_command is not Connection.pack_command
                if settings.redis_url is None:
                    assert issubclass(cls, UnixDomainSocketConnection)
        finally:
            if handle.embedded is not None:
                handle.embedded.stop()
