"""GET /recommendations/{user_id}: the next tracks for the live session.

Parse, one call into ``service.recommend.Recommender``, answer. A fallback (no
session, or no reachable Redis) is flagged in the body and the
``X-Skiprec-Fallback`` header.
"""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response

from service.deps import RecommenderDep
from service.openapi import error_responses
from service.recommend import Recommendation, RecommendRequest
from service.schemas import MAX_ID_LENGTH, MAX_K, Recommendations
from skiprec.events import ID_PATTERN

router = APIRouter(tags=["recommendations"])

UserIdPath = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
]
FALLBACK_HEADER = "X-Skiprec-Fallback"


def _response(answer: Recommendation) -> Response:
    # Serialised by orjson, not through response_model (which documents the schema).
    body = {
        "user_id": answer.user_id,
        "model_version": answer.model_version,
        "items": [{"track_id": t, "score": score} for t, score in answer.items],
        "fallback": answer.fallback_reason != "none",
        "fallback_reason": answer.fallback_reason,
    }
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={FALLBACK_HEADER: answer.fallback_reason},
    )


@router.get(
    "/recommendations/{user_id}",
    response_model=Recommendations,
    responses=error_responses(422, 503),
)
async def get_recommendations(
    user_id: UserIdPath,
    recommender: RecommenderDep,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    exclude_played: Annotated[
        bool | None, Query(description="default: SKIPREC_EXCLUDE_PLAYED")
    ] = None,
) -> Response:
    """The next k tracks for the user's current session, best first."""
    request = RecommendRequest(user_id, k, time.time(), exclude_played)
    return _response(await recommender.recommend(request))
