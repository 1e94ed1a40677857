"""Load shedding: bounds on the requests one worker has in flight, in count and in time.

An open loop offered more than the service can carry would otherwise queue without
bound (measured before this existed: p50 2.7 s at 1,500 req/s offered), and every
admitted request would wait behind the queue. This middleware answers 503 +
``Retry-After`` itself, before routing, body parsing or any Redis or model work, so a
shed answer costs microseconds:

- **In count**, every route: past ``limit`` requests in flight
  (``SKIPREC_MAX_IN_FLIGHT``).
- **In time**, the recommendation routes (the latency-bound ones, of a similar cost
  each; an event batch may hold 1 or 1,000 events and is bounded in count only):
  when a queue stands, admit only as many as the worker finishes within
  ``target_s`` (``SKIPREC_SHED_LATENCY_MS``). A queue stands when even the fastest
  recommendation that finished in the last ``INTERVAL_S`` took longer than the
  target while more than one is in flight: CoDel's test (Nichols & Jacobson,
  "Controlling Queue Delay", ACM Queue 2012) on request latency. A burst the worker
  drains leaves fast requests in the window and is not shed; one slow request (a
  Redis timeout) is not a queue. The bound is then the worker's measured
  throughput over that interval (saturated, so its capacity) times the target
  (Little's law), and it grows back by half per interval without a standing queue
  (additive-increase/multiplicative-decrease, as TCP does), until it no longer
  binds. A count bound alone must be chosen for one cost per request; this one
  follows the cost.

Probes and ``/metrics`` are never shed: an overloaded worker is alive and ready, and
saying otherwise would make a load balancer drop it and overload the rest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RETRY_AFTER_S, Overloaded, error_response

NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})
TIMED_PREFIX = "/recommendations/"
# CoDel's interval: long enough to hold a drained burst's fast requests, short
# enough that shedding adapts within a tenth of a second.
INTERVAL_S = 0.1
GROWTH = 1.5  # the time bound's growth per interval without a standing queue
UNBOUNDED = 1024  # a time bound this large (with no count bound) binds nothing


class LoadShedder:
    """Answer 503 past ``limit()`` requests in flight (``limit() == 0``: no count
    bound), or past the time bound while a queue stands (``target_s() == 0``: no
    time bound).

    The state is per process: each uvicorn worker has its own event loop, queue and
    CPU share, so each bounds its own. The settings are read per request because
    they exist only once the lifespan has started.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: Callable[[], int],
        target_s: Callable[[], float],
        shed: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limit = limit
        self.target_s = target_s
        self.shed = shed
        self.clock = clock
        self.in_flight = 0
        self.timed_in_flight = 0
        self.time_bound = math.inf  # recommendations admitted in flight
        self._window_start = -math.inf
        self._window_min = math.inf  # fastest timed request finished in it
        self._window_done = 0  # timed requests finished in it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in NEVER_SHED:
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        if limit and self.in_flight >= limit:
            reason = f"more than {limit} requests in flight (SKIPREC_MAX_IN_FLIGHT)"
            await self._refuse("count", reason, scope, receive, send)
            return
        forward, finished = send, None
        if self.target_s() and scope["path"].startswith(TIMED_PREFIX):
            started = self.clock()
            self._roll(started)
            if self.timed_in_flight >= self.time_bound:
                reason = (
                    "recommendations wait longer than "
                    f"{self.target_s() * 1e3:g} ms (SKIPREC_SHED_LATENCY_MS)"
                )
                await self._refuse("time", reason, scope, receive, send)
                return
            forward, finished = self._timed(send, started)
        self.in_flight += 1
        try:
            await self.app(scope, receive, forward)
        finally:
            self.in_flight -= 1
            if finished is not None:
                finished()

    def _timed(self, send: Send, started: float) -> tuple[Send, Callable[[], None]]:
        """Count a recommendation in the time bound until its answer is sent: the
        ``send`` that ends it there, and the call that ends it if it never is."""
        self.timed_in_flight += 1
        answered = False

        def done() -> None:
            nonlocal answered
            if not answered:
                answered = True
                self.timed_in_flight -= 1
                self._window_min = min(self._window_min, self.clock() - started)
                self._window_done += 1

        async def send_and_time(message: Message) -> None:
            await send(message)
            # The answer is out: what runs after it (the served list's background
            # write) is not the client's wait, so it is neither latency nor queue.
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done()

        return send_and_time, done

    def _roll(self, now: float) -> None:
        """At the end of an interval, set the time bound from what it measured."""
        elapsed = now - self._window_start
        if elapsed < INTERVAL_S:
            return
        target = self.target_s()
        if not self._window_done and not self.timed_in_flight:
            self.time_bound = math.inf  # idle
        elif self.timed_in_flight > 1 and self._window_min > target:
            # (no request finished at all in the interval counts as slower)
            throughput = self._window_done / elapsed
            self.time_bound = max(1.0, throughput * target)
        elif self._window_done:
            grown = self.time_bound * GROWTH
            self.time_bound = math.inf if grown >= UNBOUNDED else grown
        self._window_start = now
        self._window_min = math.inf
        self._window_done = 0

    async def _refuse(
        self, bound: str, reason: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.shed.labels(bound=bound).inc()
        response = error_response(
            Overloaded.status_code,
            Overloaded.code,
            f"{reason} in this worker; retry",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
        await response(scope, receive, send)
