"""Load shedding: a bound on the requests one worker has in flight.

An open loop offered more than the service can carry would otherwise queue without
bound (measured before this existed: p50 2.7 s at 1,500 req/s offered), and every
admitted request would wait behind the queue. Past ``limit`` requests in flight, this
middleware answers 503 + ``Retry-After`` itself, before routing, body parsing or any
Redis or model work, so a shed answer costs microseconds and the latency of what is
admitted stays bounded by ``limit`` times the cost of one request.

Probes and ``/metrics`` are never shed: an overloaded worker is alive and ready, and
saying otherwise would make a load balancer drop it and overload the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import RETRY_AFTER_S, Overloaded, error_response

NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})


class LoadShedder:
    """Answer 503 past ``limit()`` requests in flight (``limit() == 0``: no bound).

    The count is per process: each uvicorn worker has its own event loop, queue and
    CPU share, so each bounds its own. ``limit`` is read per request because the
    settings exist only once the lifespan has started.
    """

    def __init__(self, app: ASGIApp, limit: Callable[[], int], shed: Counter) -> None:
        self.app = app
        self.limit = limit
        self.shed = shed
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in NEVER_SHED:
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        if limit and self.in_flight >= limit:
            await self._refuse(limit, scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(
        self, limit: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.shed.inc()
        response = error_response(
            Overloaded.status_code,
            Overloaded.code,
            f"more than {limit} requests in flight in this worker "
            "(SKIPREC_MAX_IN_FLIGHT); retry",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
        await response(scope, receive, send)
