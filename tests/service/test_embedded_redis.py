"""The embedded Redis shared by real processes: the last user stops it, whoever
started it, and a killed user's lease does not keep it up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from benchmarks import processes
from service.redis_client import SERVER_FILE, USERS_DIR, EmbeddedRedis

pytestmark = pytest.mark.reliability

# An export-like user: opens the embedded Redis, prints its URL, writes a key,
# holds it until its stdin closes, then stops.
USER = """
import sys
from pathlib import Path
import redis
from service.redis_client import EmbeddedRedis
embedded = EmbeddedRedis(Path(sys.argv[1]))
client = redis.Redis.from_url(embedded.url)
client.incr("users")
client.close()
print(embedded.url, flush=True)
sys.stdin.read()
embedded.stop()
"""


class User:
    """One process using the embedded Redis of ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", USER, str(data_dir)],
            cwd=processes.REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        assert self.url.startswith("unix://"), "the user failed to start"

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0
        self.process.stdout.close()

    def kill(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


def server_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / SERVER_FILE).read_text())["pid"])


def exited(pid):
    """Gone, or a zombie its parent (init, here) has not reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def get(url, key):
    client = redis.Redis.from_url(url)
    try:
        return client.get(key)
    finally:
        client.close()


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, OSError):
        return False
    finally:
        client.close()


def test_the_last_user_stops_the_server_whoever_started_it(tmp_path):
    data_dir = tmp_path / "var"
    first = User(data_dir)
    pid = server_pid(data_dir)
    second = User(data_dir)
    assert second.url == first.url and server_pid(data_dir) == pid  # attached
    first.stop()  # the one that started it
    assert answers(second.url)
    assert get(second.url, "users") == b"2"
    second.stop()
    assert exited(pid)
    assert not answers(first.url)
    assert list((data_dir / USERS_DIR).iterdir()) == []


def test_a_killed_users_lease_does_not_keep_the_server_up(tmp_path):
    data_dir = tmp_path / "var"
    killed = User(data_dir)
    pid = server_pid(data_dir)
    survivor = User(data_dir)
    killed.kill()  # its lease stays behind
    assert answers(survivor.url)
    survivor.stop()
    assert exited(pid)


def test_a_server_left_by_a_killed_lone_user_goes_with_the_next_one(tmp_path):
    data_dir = tmp_path / "var"
    orphaned = User(data_dir)
    pid = server_pid(data_dir)
    orphaned.kill()
    assert not exited(pid)  # nobody left to stop it yet
    embedded = EmbeddedRedis(data_dir)  # attaches: the data is all there
    assert get(embedded.url, "users") == b"1"
    embedded.stop()
    assert exited(pid)


def test_a_stopped_server_restarts_with_its_data_at_the_same_url(tmp_path):
    data_dir = tmp_path / "var"
    first = EmbeddedRedis(data_dir)
    client = redis.Redis.from_url(first.url)
    client.set("kept", "yes")
    client.close()
    first.stop()
    again = EmbeddedRedis(data_dir)
    assert again.url == first.url
    assert get(again.url, "kept") == b"yes"  # from the AOF
    again.stop()


def test_an_export_neither_kills_serve_nor_is_killed_by_it(tiny_bundle_dir, tmp_path):
    data_dir = tmp_path / "var"
    env = {"SKIPREC_DATA_DIR": str(data_dir)}
    remove = ["SKIPREC_REDIS_URL"]
    export = [sys.executable, "-m", "skiprec_cli", "events", "export"]
    export += ["--data-dir", str(data_dir)]
    early = User(data_dir)  # an export-like user started before serve
    pid = server_pid(data_dir)
    command = processes.serve_command(tiny_bundle_dir, workers=2)
    with processes.http_server(
        command, tmp_path / "serve.log", env=env, env_remove=remove
    ) as serve:
        event = {"event_id": "a", "user_id": "ann", "track_id": "t1", "type": "play"}
        assert httpx.post(f"{serve.base_url}/events", json=event).status_code == 202
        early.stop()  # serve still uses the server
        done = subprocess.run(
            [*export, "--out", str(tmp_path / "events.csv")],
            cwd=processes.REPO_ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "exported 1 events" in done.stderr
        event["event_id"] = "b"
        assert httpx.post(f"{serve.base_url}/events", json=event).status_code == 202
        assert server_pid(data_dir) == pid
    assert exited(pid)  # serve was the last user
