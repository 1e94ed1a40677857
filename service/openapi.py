"""OpenAPI details the routes cannot express through their signatures.

Bodies are parsed by ``service.body`` (for limits and error messages), so their
schemas are declared here and the models are added to ``components/schemas``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import (
    ErrorBody,
    EventBatch,
    PlaybackEvent,
    RankCandidates,
    ReloadRequest,
)

REF = "#/components/schemas/{model}"
BODY_MODELS = (PlaybackEvent, EventBatch, ReloadRequest, RankCandidates)


def _ref(model: type[Any]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


EVENTS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"anyOf": [_ref(PlaybackEvent), _ref(EventBatch)]}
            }
        },
    }
}
RANK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _ref(RankCandidates)}},
    }
}
RELOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": _ref(ReloadRequest)}},
    }
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


def install_openapi(app: FastAPI) -> None:
    """Generate the schema once, with the body models in its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in BODY_MODELS:
            model_schema = model.model_json_schema(ref_template=REF)
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
