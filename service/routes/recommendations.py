"""The next tracks for a listener's live session.

- ``GET /recommendations/{user_id}``: the catalogue's top k;
- ``POST /recommendations/{user_id}/rank``: the client's candidate tracks re-ranked
  (another system's candidates, as Metarank does).

Each is parse, one call into ``service.recommend.Recommender``, answer. A fallback
(no session, no reachable Redis, or a failed ONNX call) is flagged in the body and
the ``X-Skiprec-Fallback`` header. ``GET`` answers carry a ``request_id``; the list
is kept for its outcome by a background task that runs after the response is sent
(``Recommender.keep``), so keeping it adds nothing to the answer's latency.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from starlette.background import BackgroundTask

from service.body import read_json, validate
from service.deps import RecommenderDep, SettingsDep
from service.inference import RankedItems
from service.openapi import RANK_BODY, error_responses
from service.recommend import (
    RankedCandidates,
    RankRequest,
    Recommendation,
    RecommendRequest,
)
from service.schemas import MAX_ID_LENGTH, MAX_K, RankCandidates, Recommendations
from service.schemas import RankedCandidates as RankedCandidatesBody
from skiprec.events import ID_PATTERN

router = APIRouter(tags=["recommendations"])

UserIdPath = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
]
FALLBACK_HEADER = "X-Skiprec-Fallback"


def _items(items: RankedItems) -> list[dict[str, Any]]:
    return [
        {"track_id": i.track_id, "score": i.score, "p_skip": i.p_skip} for i in items
    ]


def _response(
    answer: Recommendation | RankedCandidates, background: BackgroundTask | None = None
) -> Response:
    # Serialised by orjson, not through response_model (which documents the schema).
    body: dict[str, Any] = {
        "user_id": answer.user_id,
        "model_version": answer.model_version,
    }
    if isinstance(answer, Recommendation):
        body["request_id"] = answer.request_id
    body["variant"] = answer.variant
    body["items"] = _items(answer.items)
    if isinstance(answer, RankedCandidates):
        body["unranked"] = [
            {"track_id": u.track_id, "reason": u.reason} for u in answer.unranked
        ]
    body["fallback"] = answer.fallback_reason != "none"
    body["fallback_reason"] = answer.fallback_reason
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={FALLBACK_HEADER: answer.fallback_reason},
        background=background,
    )


@router.get(
    "/recommendations/{user_id}",
    response_model=Recommendations,
    responses=error_responses(422, 503),
)
async def get_recommendations(
    user_id: UserIdPath,
    recommender: RecommenderDep,
    k: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_K,
            description="at most the serving bundle's top_k (default export: "
            f"{MAX_K}); more is a 422 whether the model or the fallback answers",
        ),
    ] = 10,
    exclude_played: Annotated[
        bool | None,
        Query(
            description="true: exclude played-earlier tracks; false: never; "
            "default: the served policy"
        ),
    ] = None,
) -> Response:
    """The next k tracks for the user's current session, best first."""
    request = RecommendRequest(user_id, k, time.time(), exclude_played)
    answer = await recommender.recommend(request)
    return _response(answer, BackgroundTask(recommender.keep, answer))


@router.post(
    "/recommendations/{user_id}/rank",
    response_model=RankedCandidatesBody,
    responses=error_responses(400, 413, 415, 422, 503),
    openapi_extra=RANK_BODY,
)
async def rank_candidates(
    user_id: UserIdPath,
    request: Request,
    settings: SettingsDep,
    recommender: RecommenderDep,
) -> Response:
    """The given candidate tracks for the user's current session, best first."""
    body = validate(RankCandidates, await read_json(request, settings.max_body_bytes))
    rank = RankRequest(
        user_id, tuple(body.candidates), time.time(), body.exclude_played
    )
    return _response(await recommender.rank_candidates(rank))
