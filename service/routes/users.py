"""The user's live session: inspect it, or erase it (API key: service/main.py)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from service.deps import SessionStoreDep, VariantsDep
from service.openapi import error_responses
from service.routes.recommendations import UserIdPath
from service.schemas import SessionEvent, UserSession
from skiprec.events import event_type

router = APIRouter(prefix="/users", tags=["users"])


@router.get(
    "/{user_id}/session",
    response_model=UserSession,
    responses=error_responses(422, 503),
)
async def get_session(
    user_id: UserIdPath, store: SessionStoreDep, variants: VariantsDep
) -> UserSession:
    """The current session (events after the last inactivity gap), oldest first."""
    session = await store.read_session(user_id, time.time())
    vocab = variants.model(variants.for_user(user_id)).vocab
    events = [
        SessionEvent(
            event_id=event.event_id,
            track_id=event.track_id,
            type=event_type(event.skipped),
            skip_level=event.level,
            timestamp=event.timestamp,
            known=event.track_id in vocab,
        )
        for event in session
    ]
    skips = sum(event.skipped for event in session)
    return UserSession(
        user_id=user_id,
        events=events,
        skip_rate=skips / len(events) if events else 0.0,
    )


@router.delete(
    "/{user_id}/session",
    status_code=204,
    responses=error_responses(422, 503),
)
async def delete_session(user_id: UserIdPath, store: SessionStoreDep) -> Response:
    """Erase the user's session, dedup state and served lists (the event stream
    keeps its copy)."""
    await store.reset(user_id)
    return Response(status_code=204)
