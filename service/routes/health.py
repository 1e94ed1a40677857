"""Liveness, readiness and Prometheus metrics.

Readiness is "can serve": a bundle is loaded and the inference worker runs. Redis is
not part of it: Redis is shared by every replica, so a Redis outage would take all of
them out of the load balancer at once, and the popularity fallback (which answers
without Redis) would reach nobody. Its state is in the probes' bodies and in
``skiprec_redis_up``.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import StateDep
from service.errors import RETRY_AFTER_S, SessionStoreUnavailable
from service.lifespan import ServiceState
from service.schemas import Health

router = APIRouter(tags=["health"])


async def _redis_state(state: ServiceState) -> Literal["ok", "unreachable"]:
    """One PING under the read deadline; recorded in ``skiprec_redis_up``."""
    try:
        reachable = await state.store.ping()
    except SessionStoreUnavailable:
        reachable = False
    state.metrics.redis_up.set(1 if reachable else 0)
    return "ok" if reachable else "unreachable"


async def _health(state: ServiceState, ready: bool | None) -> Health:
    """The probes' body; ``ready`` None for liveness (always ``ok``)."""
    models = state.models
    return Health(
        status="ok" if ready is None else "ready" if ready else "unavailable",
        model_version=models.current.model_version if models.loaded else None,
        redis=await _redis_state(state),
        inference="ok" if state.batcher.alive else "restarting",
    )


@router.get("/healthz", response_model=Health)
async def healthz(state: StateDep) -> Health:
    """The process is alive: always 200 (restarting it cures neither Redis nor a
    bundle); the body says what it can reach."""
    return await _health(state, None)


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(state: StateDep) -> Response:
    """Ready when a bundle is loaded and the inference worker runs, whatever Redis
    does (see the module docstring)."""
    ready = state.models.loaded and state.batcher.alive
    health = await _health(state, ready)
    return Response(
        health.model_dump_json(),
        status_code=200 if ready else 503,
        media_type="application/json",
        headers=None if ready else {"Retry-After": str(RETRY_AFTER_S)},
    )


@router.get("/metrics", response_class=Response)
async def metrics_endpoint(state: StateDep) -> Response:
    """Prometheus text format (``skiprec_redis_up`` probed for this scrape); the
    experiment counters are read from Redis, shared by every worker."""
    counts = {}
    if await _redis_state(state) == "ok":
        with contextlib.suppress(SessionStoreUnavailable):  # this scrape goes without
            counts = await state.store.outcome_counts()
    return Response(state.metrics.render(counts), media_type=CONTENT_TYPE_LATEST)
