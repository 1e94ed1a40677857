"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep, ModelsDep, SessionStoreDep
from service.errors import SessionStoreUnavailable
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (says nothing about Redis or the model)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(store: SessionStoreDep, models: ModelsDep) -> Response:
    """Ready when a bundle is loaded and Redis answers a PING."""
    version = models.current.model_version if models.loaded else None
    try:
        redis_ok = await store.ping()
    except SessionStoreUnavailable:
        redis_ok = False
    ready = redis_ok and version is not None
    health = Health(
        status="ready" if ready else "unavailable",
        model_version=version,
        redis="ok" if redis_ok else "unreachable",
    )
    return Response(
        health.model_dump_json(),
        status_code=200 if ready else 503,
        media_type="application/json",
        headers=None if ready else {"Retry-After": "1"},
    )


@router.get("/metrics", response_class=Response)
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
