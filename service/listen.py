"""One listening socket per worker process, so the kernel spreads connections evenly.

uvicorn's ``--workers`` shares one listening socket between the worker processes,
and the worker whose loop wakes first accepts every connection that is waiting. A
client that opens its pool at once (a load balancer, a closed-loop benchmark) lands
on one worker while the others idle (docs/BENCHMARKS.md measures it; Node's cluster
module documents the same skew). On Linux each worker instead binds its own socket
with ``SO_REUSEPORT`` and the kernel hashes each new connection to one of the
listening sockets, as gunicorn's ``--reuse-port`` does. A worker listens only once
its lifespan has loaded the bundle, so a restarting worker gets no connection
before it can answer it.

uvicorn's supervisor passes one socket list to every worker it starts or restarts;
``ReusePortSocket`` is that list's entry: it pickles as its address, and unpickling
it in the spawned worker binds that worker's own socket.
"""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass


class ListenError(Exception):
    """The address cannot be served by several workers (taken, or port 0)."""


def balances_connections() -> bool:
    """Whether this kernel spreads connections over ``SO_REUSEPORT`` sockets (Linux
    does; BSD's and macOS's option lets sockets share a port without spreading)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` in the port's ``SO_REUSEPORT`` group."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def check_free(host: str, port: int) -> None:
    """Refuse an address that several workers cannot share: port 0 (each worker
    would get its own port) or one already in use. The check binds without
    ``SO_REUSEPORT``, so a server already listening there with it (another
    instance of this one) also counts as in use instead of silently sharing the
    port's connections."""
    if port == 0:
        raise ListenError("several workers need a fixed --port, not 0")
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host.strip("[]"), port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"{host}:{port} is already in use") from exc
        raise ListenError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    finally:
        probe.close()


@dataclass(frozen=True, slots=True)
class ReusePortSocket:
    """Stands for the socket each worker binds for itself (see the module doc)."""

    host: str
    port: int

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return bind_reuse_port, (self.host, self.port)
