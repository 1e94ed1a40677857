"""OpenAPI details the routes cannot express through their signatures.

Bodies are parsed by ``service.body`` (for limits and error messages), so their
schemas are declared here and the models are added to ``components/schemas``.
Recommendation answers are built as raw responses carrying the
``X-Skiprec-Fallback`` header, which FastAPI cannot see, so it is added here to the
success response of every route tagged ``recommendations``.
"""

from __future__ import annotations

from typing import Any, get_args

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import (
    ErrorBody,
    EventBatch,
    FallbackReason,
    PlaybackEvent,
    RankCandidates,
    ReloadRequest,
)

REF = "#/components/schemas/{model}"
BODY_MODELS = (PlaybackEvent, EventBatch, ReloadRequest, RankCandidates)
FALLBACK_HEADER = "X-Skiprec-Fallback"
FALLBACK_TAG = "recommendations"
FALLBACK_HEADER_SPEC: dict[str, Any] = {
    "description": "why the answer is not the model's: none (it is), cold-start "
    "(no session yet: popularity), store-unavailable (Redis did not answer in "
    "time: popularity), model-error (the ONNX call failed: popularity); the same as "
    "the body's fallback_reason",
    "schema": {"type": "string", "enum": list(get_args(FallbackReason))},
}


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
        _document_fallback_header(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_fallback_header(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if FALLBACK_TAG in operation.get("tags", ()):
                success = operation["responses"]["200"]
                success.setdefault("headers", {})[FALLBACK_HEADER] = (
                    FALLBACK_HEADER_SPEC
                )
