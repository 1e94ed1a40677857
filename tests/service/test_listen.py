"""One listening socket per worker (``service.listen``): the kernel spreads a pool of
connections over ``skiprec serve --workers 2`` instead of one worker taking them all.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import time
from collections import Counter

import psutil
import pytest

from benchmarks import processes
from service.listen import (
    ListenError,
    ReusePortSocket,
    balances_connections,
    check_free,
)

POOL = 64
pytestmark = pytest.mark.skipif(
    not balances_connections(), reason="SO_REUSEPORT spreads connections on Linux only"
)


def test_each_unpickled_socket_is_its_own_listener_on_the_one_port():
    port = processes.free_port()
    stand_in = ReusePortSocket(processes.HOST, port)
    first, second = (
        pickle.loads(pickle.dumps(stand_in)),
        pickle.loads(pickle.dumps(stand_in)),
    )
    try:
        for sock in (first, second):
            assert sock.getsockname() == (processes.HOST, port)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            sock.listen()
        assert first.fileno() != second.fileno()
        with pytest.raises(ListenError, match="already in use"):
            check_free(processes.HOST, port)  # what a second server would be told
    finally:
        first.close()
        second.close()
    check_free(processes.HOST, port)  # free again


def test_a_port_taken_without_reuse_port_or_port_0_is_refused():
    with pytest.raises(ListenError, match="fixed --port"):
        check_free(processes.HOST, 0)
    taken = socket.create_server((processes.HOST, 0))
    try:
        with pytest.raises(ListenError, match="already in use"):
            check_free(processes.HOST, taken.getsockname()[1])
    finally:
        taken.close()


def _listeners(pid: int, port: int) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(pid).children()
        if any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == port
            for c in child.net_connections(kind="tcp4")
        )
    ]


def _listening_socket(worker: psutil.Process, port: int) -> str:
    """The kernel's name of the worker's listening socket (``socket:[inode]``)."""
    (fd,) = (
        c.fd
        for c in worker.net_connections(kind="tcp4")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )
    return os.readlink(f"/proc/{worker.pid}/fd/{fd}")


def _serving_pid(workers: list[psutil.Process], client: socket.socket) -> int:
    """The worker holding the server side of ``client``'s connection."""
    mine = client.getsockname()
    for worker in workers:
        for conn in worker.net_connections(kind="tcp4"):
            if conn.raddr and tuple(conn.raddr) == mine:
                return worker.pid
    raise AssertionError(f"no worker holds the connection from {mine}")


def test_a_pool_opened_at_once_reaches_every_worker(
    tiny_bundle_dir, redis_url, tmp_path
):
    command = processes.serve_command(tiny_bundle_dir, workers=2)
    env = {"SKIPREC_REDIS_URL": redis_url}
    with processes.http_server(command, tmp_path / "serve.log", env=env) as serve:
        # The workers are the children listening on the port (each binds once its
        # bundle is loaded; multiprocessing's resource tracker is a child too).
        deadline = time.monotonic() + 30
        while len(workers := _listeners(serve.pid, serve.port)) < 2:
            assert time.monotonic() < deadline, "two workers never listened"
            time.sleep(0.1)
        # Each its own socket, not one shared by both.
        assert len({_listening_socket(w, serve.port) for w in workers}) == 2
        # 64 connections at once, as a client pool opens them: with one shared
        # socket the first worker to wake accepts all or most of them.
        pool = [
            socket.create_connection((processes.HOST, serve.port)) for _ in range(POOL)
        ]
        try:
            for client in pool:
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            for client in pool:
                assert client.recv(1024).startswith(b"HTTP/1.1 200")
            by_worker = [_serving_pid(workers, client) for client in pool]
        finally:
            for client in pool:
                client.close()
    shares = Counter(by_worker)
    # Hashing gives a worker fewer than a quarter with probability 4e-5.
    assert sorted(shares) == sorted(w.pid for w in workers), shares
    assert min(shares.values()) >= POOL // 4, shares


def test_several_workers_on_a_taken_port_exit_with_the_reason(
    tiny_bundle_dir, redis_url, tmp_path
):
    taken = socket.create_server((processes.HOST, 0))
    try:
        command = [
            part.replace("{port}", str(taken.getsockname()[1]))
            for part in processes.serve_command(tiny_bundle_dir, workers=2)
        ]
        done = subprocess.run(
            command,
            env={**os.environ, "SKIPREC_REDIS_URL": redis_url},
            cwd=processes.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert done.returncode == 3, done.stderr
    assert "already in use" in done.stderr
