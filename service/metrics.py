"""Prometheus metrics: one registry per app (so test apps never collide).

Per-route latency comes from ``MetricsMiddleware`` (a plain ASGI middleware: no
per-request task or body copy), labelled by the route template, not the raw path.
With ``--workers N`` each worker exports its own numbers, except the experiment
counters (``outcome_families``): those live in Redis, so every worker and replica
exports the same totals (sum them over one instance, not over all).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.outcomes import ArmCounts

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "skiprec_request_seconds",
            "HTTP request latency by route",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "skiprec_events_total",
            "Events accepted, by type",
            ["type"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "skiprec_duplicate_events_total",
            "Events ignored as retries of an accepted event id",
            registry=self.registry,
        )
        self.late_events = Counter(
            "skiprec_late_events_total",
            "Accepted events older than SKIPREC_MAX_LATENESS_S: logged, not live",
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "skiprec_fallbacks_total",
            "Recommendations answered by the popularity fallback, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.inference_batch = Histogram(
            "skiprec_inference_batch_size",
            "Requests coalesced into one ONNX call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "skiprec_model_info",
            "The serving model of each variant (value 1 for the current version)",
            ["model_version", "variant"],
            registry=self.registry,
        )
        self._versions: dict[str, str] = {}
        self.inference_shed = Counter(
            "skiprec_inference_shed_total",
            "Requests refused (503 overloaded): the inference queue was full",
            registry=self.registry,
        )
        self.requests_shed = Counter(
            "skiprec_requests_shed_total",
            "Requests refused (503 overloaded) by a worker's bound in flight: "
            "count (SKIPREC_MAX_IN_FLIGHT) or time (SKIPREC_SHED_LATENCY_MS)",
            ["bound"],
            registry=self.registry,
        )
        for bound in ("count", "time"):
            self.requests_shed.labels(bound=bound)
        self.inference_inline = Counter(
            "skiprec_inference_inline_total",
            "Rankings run on the event loop: alone in the worker, no batch to join",
            registry=self.registry,
        )
        self.inference_errors = Counter(
            "skiprec_inference_errors_total",
            "ONNX calls that raised; each request of the batch got the fallback",
            registry=self.registry,
        )
        self.inference_restarts = Counter(
            "skiprec_inference_worker_restarts_total",
            "Times the inference worker died and was restarted",
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "skiprec_redis_up",
            "1 when Redis answered the last probe (readyz, healthz, this scrape)",
            registry=self.registry,
        )
        self.reloads = Counter(
            "skiprec_model_reloads_total",
            "Bundle reload attempts by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.served_list_errors = Counter(
            "skiprec_served_list_errors_total",
            "Served lists not kept for their outcome (Redis unavailable)",
            registry=self.registry,
        )

    def set_model_version(self, version: str, variant: str) -> None:
        previous = self._versions.get(variant)
        if previous is not None:
            self.model_info.remove(previous, variant)
        self._versions[variant] = version
        self.model_info.labels(model_version=version, variant=variant).set(1)

    def render(
        self, counts: Mapping[tuple[str, str], ArmCounts] | None = None
    ) -> bytes:
        """This worker's metrics, then the shared experiment counters."""
        text = generate_latest(self.registry)
        if counts:
            registry = CollectorRegistry()
            registry.register(_Families(outcome_families(counts)))
            text += generate_latest(registry)
        return text


# The cut-offs exported as label k of skiprec_recommendation_hits_total; the
# counters hold every rank, GET /admin/experiments takes any k.
EXPORTED_K = (1, 5, 10, 20)


def outcome_families(counts: Mapping[tuple[str, str], ArmCounts]) -> list[Metric]:
    """The experiment counters (Redis) as Prometheus counters."""
    arm = ["variant", "model_version"]
    served = CounterMetricFamily(
        "skiprec_served_lists", "Recommendation lists served", labels=arm
    )
    fallbacks = CounterMetricFamily(
        "skiprec_served_fallbacks",
        "Served lists that were popularity fallbacks",
        labels=arm,
    )
    answered = CounterMetricFamily(
        "skiprec_answered_lists",
        "Served lists followed by the listener's next event, by what it was",
        labels=[*arm, "answer", "next"],
    )
    hits = CounterMetricFamily(
        "skiprec_recommendation_hits",
        "Served lists whose next track was in their top k, by what it was",
        labels=[*arm, "answer", "next", "k"],
    )
    for (variant, version), arm_counts in counts.items():
        served.add_metric([variant, version], arm_counts.served)
        fallbacks.add_metric([variant, version], arm_counts.fallbacks)
        for answer, tally in sorted(arm_counts.tallies.items()):
            for next_event, skipped in (("played", False), ("skipped", True)):
                labels = [variant, version, answer, next_event]
                answered.add_metric(labels, tally.skipped if skipped else tally.played)
                for k in EXPORTED_K:
                    hits.add_metric(
                        [*labels, str(k)], tally.hits_within(k, skipped=skipped)
                    )
    return [served, fallbacks, answered, hits]


class _Families(Collector):
    """Metric families read beforehand (from Redis) for one scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class MetricsMiddleware:
    """Time every HTTP request and label it with its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(
                scope["method"], template, str(status[0])
            ).observe(time.perf_counter() - start)
