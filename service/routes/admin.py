"""Admin routes (API key: service/main.py).

- ``POST /admin/reload``: swap in a new bundle for one variant, or refuse it and
  keep the old one;
- ``GET /admin/experiments``: the outcome of the served lists per variant and model
  version, with 95% intervals (``service.outcomes``, ``skiprec.outcomes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.body import read_json, validate
from service.deps import MetricsDep, SessionStoreDep, SettingsDep, VariantsDep
from service.errors import BundleRejected, InvalidRequest
from service.openapi import RELOAD_BODY, error_responses
from service.outcomes import ArmSummary, summarize_arms
from service.schemas import (
    MAX_K,
    ExperimentArm,
    ExperimentDifference,
    ExperimentRate,
    Experiments,
    ReloadRequest,
    ReloadResult,
)
from service.settings import Settings
from service.variants import DEFAULT_VARIANT, Variant, Variants
from skiprec.outcomes import DEFAULT_K, Rate

router = APIRouter(prefix="/admin", tags=["admin"])


def bundle_path(settings: Settings, variant: Variant, requested: str | None) -> Path:
    """The directory to load: the variant's configured one, or ``requested`` under
    the root.

    A relative ``requested`` is taken from the root (``{"bundle_dir": "v2"}``).
    Symlinks are resolved before the check, so a link under the root that points
    elsewhere is refused too. The root is not named in the error: no server paths
    in responses.
    """
    if requested is None:
        assert variant.spec.bundle_dir is not None
        return variant.spec.bundle_dir
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


def reload_target(settings: Settings, variants: Variants, name: str | None) -> Variant:
    """The variant a reload names: required once several are configured."""
    if name is None:
        if settings.variants is not None:
            raise InvalidRequest(
                "variant: required when SKIPREC_VARIANTS is set (one of: "
                + ", ".join(v.name for v in variants)
                + ")",
                "variant",
            )
        name = DEFAULT_VARIANT
    variant = variants.get(name)
    if variant.models is None:
        raise InvalidRequest(
            f"variant: {name!r} is a holdout (no bundle to reload)", "variant"
        )
    return variant


@router.post(
    "/reload",
    response_model=ReloadResult,
    responses=error_responses(400, 408, 409, 413, 415, 422),
    openapi_extra=RELOAD_BODY,
)
async def reload_bundle(
    request: Request,
    settings: SettingsDep,
    variants: VariantsDep,
    metrics: MetricsDep,
) -> ReloadResult:
    """Validate a bundle (default: the variant's configured one) and swap it in for
    that variant alone."""
    payload = await read_json(request, settings.max_body_bytes, optional=True)
    body = validate(ReloadRequest, payload if payload is not None else {})
    variant = reload_target(settings, variants, body.variant)
    assert variant.models is not None
    path = bundle_path(settings, variant, body.bundle_dir or None)
    try:
        version, previous = await variant.models.reload(path)
    except BundleRejected:
        metrics.reloads.labels(outcome="rejected").inc()
        raise
    metrics.reloads.labels(outcome="ok").inc()
    metrics.set_model_version(version, variant.name)
    return ReloadResult(
        model_version=version, previous_version=previous, variant=variant.name
    )


def _rate(rate: Rate) -> ExperimentRate:
    return ExperimentRate(
        value=rate.value,
        low=rate.low,
        high=rate.high,
        successes=rate.successes,
        trials=rate.trials,
    )


def _arm(summary: ArmSummary) -> ExperimentArm:
    return ExperimentArm(
        variant=summary.variant,
        model_version=summary.model_version,
        served=summary.counts.served,
        fallbacks=summary.counts.fallbacks,
        answered=summary.counts.tally("model").lists,
        rates={name: _rate(rate) for name, rate in summary.rates.items()},
        fallback_rates={
            name: _rate(rate) for name, rate in summary.fallback_rates.items()
        },
        vs_control=None
        if summary.vs_control is None
        else {
            name: ExperimentDifference(value=d.value, low=d.low, high=d.high)
            for name, d in summary.vs_control.items()
        },
    )


@router.get(
    "/experiments", response_model=Experiments, responses=error_responses(422, 503)
)
async def experiments(
    store: SessionStoreDep,
    variants: VariantsDep,
    k: Annotated[
        int, Query(ge=1, le=MAX_K, description="cut-off of the hit rates")
    ] = DEFAULT_K,
    control: Annotated[
        str | None,
        Query(
            max_length=64,
            description="the variant to compare against (its current model "
            "version); default: the first configured",
        ),
    ] = None,
) -> Experiments:
    """Per variant and model version: lists served, fallbacks, and how the
    listeners' next events met the lists (hit@k, played, skipped), with 95%
    intervals; counted by every worker in Redis."""
    base = variants.get(control) if control is not None else next(iter(variants))
    arm = (base.name, variants.model(base).model_version)
    counts = await store.outcome_counts()
    arms = summarize_arms(counts, arm if arm in counts else None, k)
    return Experiments(
        k=k, control=base.name if arm in counts else None, arms=[_arm(a) for a in arms]
    )
