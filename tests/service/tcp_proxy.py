"""A TCP proxy of the tests' own between the service and Redis, that loses replies.

``cut(marker, times)``: the next ``times`` client->server chunks containing
``marker`` are delivered to Redis, and once Redis has had time to run them the
connection is closed with the reply unread: the fault a service cannot tell from
"not run" (a network drop, a proxy or LB idle cut, a failover mid-command).
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

SETTLE_S = 0.05  # time Redis gets to run the command before its reply is lost


class LossyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._marker = b""
        self._cuts_left = 0
        self.cuts_done = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self, marker: bytes, times: int) -> None:
        with self._lock:
            self._marker, self._cuts_left = marker, times

    def _take_cut(self, chunk: bytes) -> bool:
        with self._lock:
            if self._cuts_left > 0 and self._marker and self._marker in chunk:
                self._cuts_left -= 1
                self.cuts_done += 1
                return True
            return False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            lost = threading.Event()  # set: replies on this connection are dropped
            threading.Thread(
                target=self._pump_requests, args=(client, upstream, lost), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_replies, args=(upstream, client, lost), daemon=True
            ).start()

    def _pump_requests(
        self, client: socket.socket, upstream: socket.socket, lost: threading.Event
    ) -> None:
        try:
            while chunk := client.recv(1 << 16):
                if self._take_cut(chunk):
                    lost.set()
                    upstream.sendall(chunk)
                    time.sleep(SETTLE_S)
                    break
                upstream.sendall(chunk)
        except OSError:
            pass
        _close(client, upstream)

    def _pump_replies(
        self, upstream: socket.socket, client: socket.socket, lost: threading.Event
    ) -> None:
        try:
            while chunk := upstream.recv(1 << 16):
                if lost.is_set():
                    continue
                client.sendall(chunk)
        except OSError:
            pass
        _close(client, upstream)

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
