"""POST /admin/reload: swap in a new bundle, or refuse it and keep the old one."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request

from service.body import read_json, validate
from service.deps import MetricsDep, ModelsDep, SettingsDep
from service.errors import BundleRejected, InvalidRequest
from service.openapi import RELOAD_BODY, error_responses
from service.schemas import ReloadRequest, ReloadResult
from service.settings import Settings

router = APIRouter(prefix="/admin", tags=["admin"])


def bundle_path(settings: Settings, requested: str | None) -> Path:
    """The directory to load: the configured one, or ``requested`` under the root.

    A relative ``requested`` is taken from the root (``{"bundle_dir": "v2"}``).
    Symlinks are resolved before the check, so a link under the root that points
    elsewhere is refused too. The root is not named in the error: no server paths
    in responses.
    """
    if requested is None:
        return settings.bundle_dir
    root = (settings.bundle_root or settings.bundle_dir.parent).resolve()
    path = (root / requested).resolve()
    if not path.is_relative_to(root):
        raise InvalidRequest(
            "bundle_dir: must be a directory under the bundle root "
            "(SKIPREC_BUNDLE_ROOT; default: the folder that holds SKIPREC_BUNDLE_DIR); "
            "give its name, e.g. a sibling of the served bundle",
            "bundle_dir",
        )
    return path


@router.post(
    "/reload",
    response_model=ReloadResult,
    responses=error_responses(400, 408, 409, 413, 415, 422),
    openapi_extra=RELOAD_BODY,
)
async def reload_bundle(
    request: Request, settings: SettingsDep, models: ModelsDep, metrics: MetricsDep
) -> ReloadResult:
    """Validate a bundle (default: SKIPREC_BUNDLE_DIR again) and swap it in."""
    payload = await read_json(request, settings.max_body_bytes, optional=True)
    body = validate(ReloadRequest, payload if payload is not None else {})
    path = bundle_path(settings, body.bundle_dir or None)
    try:
        version, previous = await models.reload(path)
    except BundleRejected:
        metrics.reloads.labels(outcome="rejected").inc()
        raise
    metrics.reloads.labels(outcome="ok").inc()
    metrics.set_model_version(version)
    return ReloadResult(model_version=version, previous_version=previous)
