"""Real processes for reliability tests: a restartable redis-server, the API (uvicorn).

``RedisProcess``  one ``redis-server`` on a fixed loopback port and data directory,
                  so it can be stopped (SIGTERM, SHUTDOWN, SIGKILL), frozen (SIGSTOP)
                  and started again on the same port with the same files.
``ApiProcess``    ``uvicorn service.main:app`` in a subprocess (the real HTTP stack),
                  configured through ``SKIPREC_*`` environment variables.
``redis_cluster`` the three-master Cluster of ``scripts/redis_cluster.sh``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.service.conftest import free_port, wait_for_ping

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "redis_cluster.sh"


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs the redis-server binary (apt-get install redis-server)")
    return binary


class RedisProcess:
    """A redis-server whose lifetime the test controls, AOF on by default."""

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec") -> None:
        self.binary = redis_binary()
        self.data_dir = data_dir
        self.port = free_port()
        self.appendfsync = appendfsync
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The compose file's persistence: AOF, fsync policy as given; no RDB snapshots.
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.data_dir), "--save", "", "--appendonly", "yes"]
        command += ["--appendfsync", self.appendfsync]
        command += ["--logfile", str(self.data_dir / "redis.log")]
        self.process = subprocess.Popen(command)
        wait_for_ping(self.url)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def _wait_exit(self) -> None:
        assert self.process is not None
        self.process.wait(timeout=30)
        self.process = None

    def terminate(self) -> None:
        """SIGTERM: Redis's graceful shutdown (AOF written and fsynced)."""
        assert self.process is not None
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
        assert self.process is not None
        self.process.kill()
        self._wait_exit()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing ever answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        self._wait_exit()


@contextlib.contextmanager
def redis_process(data_dir: Path, **kwargs: str) -> Iterator[RedisProcess]:
    server = RedisProcess(data_dir, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ApiProcess:
    """The service under uvicorn in its own process, on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "uvicorn", "service.main:app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--no-access-log", "--log-level", "warning"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"API not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def api_process(
    bundle_dir: Path, redis_url: str, log: Path, **settings: str
) -> Iterator[ApiProcess]:
    env = {"SKIPREC_BUNDLE_DIR": str(bundle_dir), "SKIPREC_REDIS_URL": redis_url}
    env.update({f"SKIPREC_{name.upper()}": value for name, value in settings.items()})
    api = ApiProcess(env, log)
    try:
        yield api
    finally:
        api.stop()


@contextlib.contextmanager
def redis_cluster(work_dir: Path) -> Iterator[str]:
    """A three-master Cluster on free loopback ports -> its ``redis+cluster://`` URL."""
    redis_binary()
    if shutil.which("redis-cli") is None:
        pytest.skip("needs redis-cli to create the cluster")
    base = _free_port_run(3)
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


def _free_port_run(count: int) -> int:
    """A base port with ``count`` free ports in a row (and their +10000 bus ports)."""
    for _ in range(100):
        base = free_port()
        if base + count + 10000 >= 65535:
            continue
        ports = [base + i for i in range(count)] + [
            base + 10000 + i for i in range(count)
        ]
        if all(_is_free(port) for port in ports):
            return base
    raise RuntimeError("no run of free ports")


def _is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
