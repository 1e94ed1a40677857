"""Typed dependencies: handlers get the lifespan's resources through these aliases.

Every dependency is ``async def``: none of them blocks, and FastAPI runs a plain
``def`` dependency through the thread pool on every request (a thread hop and two GIL
hand-offs each; docs/BENCHMARKS.md has what that cost on ``POST /events``). The hot
routes take one domain object each (``IngestDep``, ``RecommenderDep``) and the API
key check reads the state itself: every dependency FastAPI solves costs each
request several microseconds (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Unauthorized
from service.inference import ModelHolder
from service.ingest import Ingest
from service.lifespan import ServiceState
from service.metrics import Metrics
from service.recommend import Recommender
from service.session_store import SessionStore
from service.settings import Settings
from service.variants import Variants


def state_of(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.skiprec
    return state


async def get_state(request: Request) -> ServiceState:
    return state_of(request)


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings_dep(state: StateDep) -> Settings:
    return state.settings


async def get_store(state: StateDep) -> SessionStore:
    return state.store


async def get_models(state: StateDep) -> ModelHolder:
    return state.models


async def get_recommender(request: Request) -> Recommender:
    return state_of(request).recommender


async def get_ingest(request: Request) -> Ingest:
    return state_of(request).ingest


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


async def get_variants(state: StateDep) -> Variants:
    return state.variants


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionStoreDep = Annotated[SessionStore, Depends(get_store)]
ModelsDep = Annotated[ModelHolder, Depends(get_models)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
IngestDep = Annotated[Ingest, Depends(get_ingest)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
VariantsDep = Annotated[Variants, Depends(get_variants)]


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key is not None:
        return key
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


async def require_api_key(request: Request) -> None:
    """Writes and admin calls need ``X-API-Key`` (or a Bearer token) when one is set."""
    settings = state_of(request).settings
    if settings.api_key is None:
        return
    presented = presented_key(request)
    expected = settings.api_key.get_secret_value().encode()
    if presented is None or not hmac.compare_digest(presented.encode(), expected):
        raise Unauthorized("X-API-Key: missing or invalid API key", field="X-API-Key")


ApiKeyDep = Depends(require_api_key)
