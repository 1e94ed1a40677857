"""POST /admin/reload: swap in a new bundle, or refuse it and keep the old one."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request

from service.body import read_json, validate
from service.deps import ApiKeyDep, MetricsDep, ModelsDep, SettingsDep
from service.errors import BundleRejected
from service.openapi import RELOAD_BODY, error_responses
from service.schemas import ReloadRequest, ReloadResult

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/reload",
    dependencies=[ApiKeyDep],
    response_model=ReloadResult,
    responses=error_responses(400, 401, 409, 413, 415, 422),
    openapi_extra=RELOAD_BODY,
)
async def reload_bundle(
    request: Request, settings: SettingsDep, models: ModelsDep, metrics: MetricsDep
) -> ReloadResult:
    """Validate a bundle (default: SKIPREC_BUNDLE_DIR again) and swap it in."""
    payload = await read_json(request, settings.max_body_bytes, optional=True)
    body = validate(ReloadRequest, payload if payload is not None else {})
    path = Path(body.bundle_dir) if body.bundle_dir else settings.bundle_dir
    try:
        version, previous = await models.reload(path)
    except BundleRejected:
        metrics.reloads.labels(outcome="rejected").inc()
        raise
    metrics.reloads.labels(outcome="ok").inc()
    metrics.set_model_version(version)
    return ReloadResult(model_version=version, previous_version=previous)
