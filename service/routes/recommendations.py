"""GET /recommendations/{user_id}: rank the next tracks from the live session.

One Redis round trip reads the session (a script that cuts the current session
inside Redis and returns only the model's window and excluded tracks); inference goes
through the micro-batcher, which runs ONNX Runtime on its own thread (never on the
event loop) and coalesces concurrent requests into one call. No session, or no
reachable Redis, gets the popularity fallback, flagged in the body and the
``X-Skiprec-Fallback`` header.
"""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response

from service.deps import BatcherDep, MetricsDep, ModelsDep, SessionStoreDep, SettingsDep
from service.errors import SessionStoreUnavailable
from service.openapi import error_responses
from service.recommender import InferenceRequest, RankedItems
from service.schemas import ID_PATTERN, MAX_ID_LENGTH, MAX_K, Recommendations
from service.session_store import ModelInput

router = APIRouter(tags=["recommendations"])

UserIdPath = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
]
FALLBACK_HEADER = "X-Skiprec-Fallback"
EMPTY_SESSION = ModelInput((), (), ())


def _response(
    user_id: str, model_version: str, items: RankedItems, reason: str
) -> Response:
    body = {
        "user_id": user_id,
        "model_version": model_version,
        "items": [{"track_id": track_id, "score": score} for track_id, score in items],
        "fallback": reason != "none",
        "fallback_reason": reason,
    }
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={FALLBACK_HEADER: reason},
    )


@router.get(
    "/recommendations/{user_id}",
    response_model=Recommendations,
    responses=error_responses(422, 503),
)
async def get_recommendations(
    user_id: UserIdPath,
    settings: SettingsDep,
    store: SessionStoreDep,
    models: ModelsDep,
    batcher: BatcherDep,
    metrics: MetricsDep,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    exclude_played: Annotated[
        bool | None, Query(description="default: SKIPREC_EXCLUDE_PLAYED")
    ] = None,
) -> Response:
    """The next k tracks for the user's current session, best first."""
    reason = "none"
    model = models.current
    exclude = settings.exclude_played if exclude_played is None else exclude_played
    session = EMPTY_SESSION
    try:
        session = await store.read_model_input(
            user_id, time.time(), model.spec.max_seq_len, exclude
        )
    except SessionStoreUnavailable:
        reason = "store-unavailable"
    if not session.track_ids:
        reason = "cold-start" if reason == "none" else reason
        metrics.fallbacks.labels(reason=reason).inc()
        return _response(user_id, model.model_version, model.popular[:k], reason)
    request = InferenceRequest(
        track_ids=session.track_ids,
        skipped=session.skipped,
        k=k,
        exclude_played=exclude,
        excluded=session.excluded,
    )
    model_version, items = await batcher.rank(request)
    return _response(user_id, model_version, items, reason)
