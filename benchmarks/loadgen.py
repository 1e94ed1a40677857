"""The load generator: a separate process that drives one HTTP workload and times it.

``benchmarks/phases.py`` runs it once per phase as ``python -m benchmarks.loadgen``
with a JSON :class:`LoadSpec` on stdin; it prints one JSON result object on stdout.

Two disciplines:

- **open loop** (``mode="open"``): request ``i`` is due at ``start + i / rate`` whatever
  the server is doing. Latency is measured from that *scheduled* time, not from the
  moment the bytes left, so a stalled server is charged for the requests it delayed
  (the "coordinated omission" correction of Gil Tene's *How NOT to measure latency*,
  the same rule as wrk2). Requests are spread over a keep-alive connection pool that
  grows up to ``max_connections``; a due request with no free connection waits in a
  queue and that wait is part of its latency.
- **closed loop** (``mode="closed"``): ``concurrency`` connections each send the next
  request as soon as the previous answer arrives; this finds the saturation throughput.

HTTP/1.1 is spoken directly over asyncio protocols (uvloop when installed) with
callbacks rather than an HTTP client library, so the generator costs far less CPU per
request than the server it drives and stays away from being the bottleneck on a small
machine. Its own CPU use is measured (``benchmarks/probes.py``) and reported next to
the server's (``cpu_percent``; 100 = one core busy), so a saturated generator is
visible.

Long because the request builder, the connection protocol and the scheduler are one
engine around one clock and one set of counters, and the HTTP framing they speak is
short enough to read beside them; the process-tree CPU probe, the part that stands
alone, lives in ``benchmarks/probes.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import numpy as np
import orjson

from benchmarks.probes import CpuProbe

Scenario = Literal["recommendations", "events", "noop"]
DEGRADED_FALLBACK = "store-unavailable"  # X-Skiprec-Fallback value of a degraded 200
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


@dataclass(frozen=True)
class LoadSpec:
    """One benchmark phase: what to send, how fast, for how long, and what to watch."""

    host: str
    port: int
    scenario: Scenario
    mode: Literal["open", "closed"]
    rate: float = 0.0  # open loop: requests per second
    concurrency: int = 1  # closed loop: connections, each with one request in flight
    duration: float = 10.0  # measured seconds
    warmup: float = 1.0  # seconds of load before measuring starts
    users: tuple[str, ...] = ()  # user ids to draw from (uniformly)
    track_ids: tuple[str, ...] = ()  # track ids events draw from (uniformly)
    batch_size: int = 1  # events per POST /events (1 = a bare event object)
    skip_fraction: float = 0.3  # share of posted events that are skips
    k: int = 10  # GET /recommendations ?k=
    path: str = "/noop"  # noop scenario: the path to GET
    max_connections: int = 256  # open loop: connection pool ceiling
    drain_timeout: float = 5.0  # after the window, wait this long for answers
    watch_pids: dict[str, int] = field(default_factory=dict)  # name -> pid (+children)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode == "open" and self.rate <= 0:
            raise ValueError("open loop needs rate > 0")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError("closed loop needs concurrency >= 1")
        if self.scenario in ("recommendations", "events") and not self.users:
            raise ValueError(f"scenario {self.scenario!r} needs users")
        if self.scenario == "events" and not self.track_ids:
            raise ValueError("scenario 'events' needs track_ids")
        if not 1 <= self.batch_size <= 1000:
            raise ValueError("batch_size must be in 1..1000")

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> LoadSpec:
        payload = dict(payload)
        for key in ("users", "track_ids"):
            payload[key] = tuple(payload.get(key, ()))
        return cls(**payload)


def summarize_latencies(seconds: Sequence[float]) -> dict[str, float]:
    """Latency samples in seconds -> ``{p50_ms, ..., p999_ms, max_ms, mean_ms}``.

    Percentiles use numpy's default linear interpolation; an empty sample gives NaN
    everywhere so that a phase with no answers cannot pass for a fast one.
    """
    if len(seconds) == 0:
        keys = [*PERCENTILES, "max", "mean"]
        return {f"{key}_ms": float("nan") for key in keys}
    values = np.asarray(seconds, dtype=np.float64) * 1e3
    out = {
        f"{name}_ms": float(np.percentile(values, q)) for name, q in PERCENTILES.items()
    }
    out["max_ms"] = float(values.max())
    out["mean_ms"] = float(values.mean())
    return out


class RequestFactory:
    """Builds the raw bytes of the next request of a scenario."""

    def __init__(self, spec: LoadSpec) -> None:
        self._spec = spec
        self._rng = random.Random(spec.seed)
        # Unique per process so repeated phases never replay an event id (a duplicate
        # takes the cheaper dedup path and would flatter the figures).
        self._nonce = f"lg{os.getpid():x}{time.time_ns() % 10**9:x}"
        self._counter = 0
        self._host = f"Host: {spec.host}:{spec.port}\r\n".encode()
        self._gets = [
            (
                f"GET /recommendations/{user}?k={spec.k} HTTP/1.1\r\n".encode()
                + self._host
                + b"\r\n"
            )
            for user in spec.users
        ]

    def __call__(self) -> bytes:
        scenario = self._spec.scenario
        if scenario == "recommendations":
            return self._rng.choice(self._gets)
        if scenario == "noop":
            return f"GET {self._spec.path} HTTP/1.1\r\n".encode() + self._host + b"\r\n"
        if self._spec.batch_size == 1:
            body = orjson.dumps(self._event())
        else:
            body = orjson.dumps(
                {"events": [self._event() for _ in range(self._spec.batch_size)]}
            )
        return (
            b"POST /events HTTP/1.1\r\n"
            + self._host
            + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    def _event(self) -> dict[str, str]:
        self._counter += 1
        rng = self._rng
        return {
            "event_id": f"{self._nonce}-{self._counter}",
            "user_id": rng.choice(self._spec.users),
            "track_id": rng.choice(self._spec.track_ids),
            "type": "skip" if rng.random() < self._spec.skip_fraction else "play",
        }


@dataclass
class _InFlight:
    scheduled: float  # open loop: the due time; closed loop: the send time
    sent: float
    measured: bool


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.in_flight: _InFlight | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: _InFlight, payload: bytes) -> None:
        assert self.transport is not None
        self.in_flight = request
        request.sent = time.perf_counter()
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while self.in_flight is not None:
            parsed = parse_response(self._buf)
            if parsed is None:
                return
            status, fallback, consumed = parsed
            del self._buf[:consumed]
            request, self.in_flight = self.in_flight, None
            self._driver.on_response(self, request, status, fallback)

    def connection_lost(self, exc: Exception | None) -> None:
        request, self.in_flight = self.in_flight, None
        self._driver.on_connection_lost(self, request)


def parse_response(buf: bytearray) -> tuple[int, str, int] | None:
    """``(status, X-Skiprec-Fallback value, bytes consumed)`` of one complete response
    at the start of ``buf``, or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    fallback = ""
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"x-skiprec-fallback":
            fallback = value.strip().decode()
    pos = end + 4
    if not chunked:
        return (status, fallback, pos + length) if len(buf) >= pos + length else None
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        if size == 0:
            done = line_end + 4  # the last chunk is followed by an empty trailer
            return (status, fallback, done) if len(buf) >= done else None
        pos = line_end + 2 + size + 2
        if pos > len(buf):
            return None


class _Driver:
    """Schedules requests over a connection pool and records every answer."""

    def __init__(self, spec: LoadSpec, make_request: Callable[[], bytes]) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self._make_request = make_request
        self._idle: list[_Connection] = []
        self._pending: deque[_InFlight] = deque()
        self._connections: set[_Connection] = set()
        self._connecting = 0
        self._window = (0.0, 0.0)
        self._sending = True
        self.latencies: list[float] = []  # from the scheduled time
        self.response_times: list[float] = []  # from the moment the bytes left
        self.send_lags: list[float] = []
        self.completed_in_window = 0
        self.status_counts: Counter[int] = Counter()
        # Answers split by whether the service admitted the request: a 503 is a
        # shed one (SKIPREC_MAX_IN_FLIGHT, the inference queue), whose own time from
        # send says how fast shedding is.
        self.admitted: list[float] = []
        self.shed: list[float] = []
        self.fallbacks: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._drained = asyncio.Event()

    # --- connections ---
    async def _open(self) -> None:
        """Connect one more connection; the caller has counted it in _connecting."""
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self), self.spec.host, self.spec.port
            )
        except OSError:
            self.errors["connect"] += 1
            await asyncio.sleep(0.05)
            return
        finally:
            self._connecting -= 1
        self._connections.add(conn)
        self._on_free(conn)

    def _grow(self) -> None:
        if len(self._connections) + self._connecting < self.spec.max_connections:
            self._connecting += 1
            self.loop.create_task(self._open())

    def _on_free(self, conn: _Connection) -> None:
        if self.spec.mode == "closed":
            if self._sending:
                conn.send(self._new_request(time.perf_counter()), self._make_request())
            else:
                self._idle.append(conn)
        elif self._pending:
            conn.send(self._pending.popleft(), self._make_request())
        else:
            self._idle.append(conn)
        self._check_drained()

    def _new_request(self, scheduled: float) -> _InFlight:
        start, end = self._window
        return _InFlight(scheduled, scheduled, start <= scheduled < end)

    def on_response(
        self, conn: _Connection, request: _InFlight, status: int, fallback: str
    ) -> None:
        now = time.perf_counter()
        start, end = self._window
        if start <= now < end:
            self.completed_in_window += 1
        if request.measured:
            self.latencies.append(now - request.scheduled)
            self.response_times.append(now - request.sent)
            self.send_lags.append(request.sent - request.scheduled)
            self.status_counts[status] += 1
            if status == 503:
                self.shed.append(now - request.sent)
            else:
                self.admitted.append(now - request.scheduled)
            if fallback:
                self.fallbacks[fallback] += 1
            if status >= 400:
                self.errors[f"http_{status}"] += 1
            elif fallback == DEGRADED_FALLBACK:
                # A 200 with the popularity list because Redis timed out is not
                # the answer that was asked for: it counts as an error.
                self.errors[DEGRADED_FALLBACK] += 1
        self._on_free(conn)

    def on_connection_lost(self, conn: _Connection, request: _InFlight | None) -> None:
        self._connections.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if request is not None and request.measured:
            self.errors["connection_lost"] += 1
        if self._sending or self._pending:
            self._grow()
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._sending and not self._pending and not self._busy():
            self._drained.set()

    def _busy(self) -> int:
        return sum(1 for c in self._connections if c.in_flight is not None)

    # --- the run ---
    async def run(self) -> dict[str, Any]:
        spec = self.spec
        initial = (
            spec.concurrency
            if spec.mode == "closed"
            else min(spec.max_connections, max(4, int(spec.rate * 0.01)))
        )
        # Every timestamp is time.perf_counter(): uvloop's loop.time() has 1 ms steps.
        begin = time.perf_counter() + 0.2
        self._window = (begin + spec.warmup, begin + spec.warmup + spec.duration)
        self._connecting += initial
        await asyncio.gather(*(self._open() for _ in range(initial)))
        if not self._connections:
            raise ConnectionError(f"cannot connect to {spec.host}:{spec.port}")
        probe = CpuProbe(spec.watch_pids)
        self.loop.call_later(self._window[0] - time.perf_counter(), probe.start)
        self.loop.call_later(self._window[1] - time.perf_counter(), probe.stop)
        if spec.mode == "open":
            await self._schedule_open(begin)
        # The window closes on time even when the answers stop earlier; the probe's
        # stop callback runs before the drain below can finish.
        await asyncio.sleep(max(0.0, self._window[1] - time.perf_counter()) + 0.002)
        self._sending = False
        self._check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), spec.drain_timeout)
        except TimeoutError:
            stuck = sum(1 for r in self._pending if r.measured) + sum(
                1
                for c in self._connections
                if c.in_flight is not None and c.in_flight.measured
            )
            self.errors["timeout"] += stuck
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.close()
        return self._result(probe)

    async def _schedule_open(self, begin: float) -> None:
        interval = 1.0 / self.spec.rate
        end = self._window[1]
        n = 0
        while True:
            due = begin + n * interval
            if due >= end:
                return
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
                continue
            request = self._new_request(due)
            if self._idle:
                self._idle.pop().send(request, self._make_request())
            else:
                self._pending.append(request)
                self._grow()
            n += 1
            if n % 64 == 0:  # never starve the callbacks when behind schedule
                await asyncio.sleep(0)

    def _result(self, probe: CpuProbe) -> dict[str, Any]:
        spec = self.spec
        requests = len(self.latencies) + self.errors["timeout"]
        requests += self.errors["connection_lost"]
        throughput = self.completed_in_window / spec.duration
        result: dict[str, Any] = {
            "scenario": spec.scenario,
            "mode": spec.mode,
            "offered_rps": spec.rate if spec.mode == "open" else None,
            "concurrency": spec.concurrency if spec.mode == "closed" else None,
            "batch_size": spec.batch_size,
            "duration_s": spec.duration,
            "requests": requests,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "fallbacks": dict(self.fallbacks),
            "throughput_rps": throughput,
            "events_per_s": throughput * spec.batch_size
            if spec.scenario == "events"
            else None,
            "connections": len(self._connections),
            "cpu_percent": probe.percent(),
        }
        # CPU milliseconds per answered request: unlike throughput, this barely moves
        # when other tenants of a shared machine take cores away from the service.
        service_cpu = result["cpu_percent"].get("service")
        result["service_cpu_ms_per_request"] = (
            10.0 * service_cpu / throughput
            if service_cpu is not None and throughput > 0
            else None
        )
        result.update(summarize_latencies(self.latencies))
        keys = ("p50_ms", "p99_ms", "max_ms")
        lags = summarize_latencies(self.send_lags)
        result["send_lag_ms"] = {k: lags[k] for k in keys}
        admitted = summarize_latencies(self.admitted)
        result["admitted"] = {"count": len(self.admitted)} | {
            k: admitted[k] for k in ("p50_ms", "p99_ms", "max_ms")
        }
        shed = summarize_latencies(self.shed)
        result["shed_from_send_ms"] = {"count": len(self.shed)} | {
            k: shed[k] for k in ("p50_ms", "p99_ms", "max_ms")
        }
        response = summarize_latencies(self.response_times)
        result["from_send_ms"] = {
            k: response[k] for k in ("p50_ms", "p95_ms", *keys[1:])
        }
        return result


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Drive one phase in this process (the CLI below runs it in its own process)."""
    driver = _Driver(spec, RequestFactory(spec))
    return await driver.run()


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(argv: Sequence[str] | None = None) -> int:
    """Read a LoadSpec as JSON on stdin, run it, print the result as JSON on stdout."""
    del argv
    spec = LoadSpec.from_json(json.loads(sys.stdin.read()))
    result = _event_loop_runner()(run_load(spec))
    result["spec"] = {
        k: v for k, v in asdict(spec).items() if k not in ("users", "track_ids")
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
