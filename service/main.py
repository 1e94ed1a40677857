"""The skiprec HTTP service: ``create_app()`` and the ``app`` uvicorn imports.

Run it with ``skiprec serve --bundle DIR`` (see ``service/serve.py``) or
``SKIPREC_BUNDLE_DIR=DIR uvicorn service.main:app``. Settings are read at startup,
not at import, so importing this module has no side effects.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from service.admission import LoadShedder
from service.body import BodyDeadline
from service.deps import ApiKeyDep
from service.errors import register_error_handlers
from service.lifespan import ServiceState, lifespan
from service.metrics import Metrics, MetricsMiddleware
from service.openapi import error_responses, install_openapi
from service.routes import admin, events, health, recommendations, users
from service.settings import CorsSettings, Settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Assemble routers, middleware and error handlers; settings default to the env."""
    app = FastAPI(
        title="skiprec",
        version=VERSION,
        description="Skip-aware next-track recommendations from live sessions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    # One rule for the API key: every route that reads or writes a listener's data
    # (recommendations are derived from the session, so they reveal it) or changes
    # the served model needs it. Probes, metrics and the docs stay open.
    for router in (events.router, recommendations.router, users.router, admin.router):
        app.include_router(
            router, dependencies=[ApiKeyDep], responses=error_responses(401)
        )
    app.include_router(health.router)
    register_error_handlers(app)
    install_openapi(app)
    _mount_demo_page(app)
    # Middleware is fixed before startup, so CORS reads its one setting here.
    cors_origins = settings.cors_origins if settings else CorsSettings().cors_origins
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
            expose_headers=["X-Skiprec-Fallback", "Retry-After"],
        )
    app.add_middleware(BodyDeadline, timeout_s=lambda: _settings(app).body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Outermost: a shed request costs no routing, metrics or body handling.
    app.add_middleware(
        LoadShedder,
        limit=lambda: _settings(app).max_in_flight,
        target_s=lambda: _settings(app).shed_latency_ms / 1e3,
        shed=app.state.metrics.requests_shed,
    )
    return app


def _settings(app: FastAPI) -> Settings:
    """The settings the lifespan started with (requests only arrive after it)."""
    state: ServiceState = app.state.skiprec
    return state.settings


def _mount_demo_page(app: FastAPI) -> None:
    """Serve ``service/static`` (the demo page) at ``/`` when it is there."""
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        return

    @app.get("/", include_in_schema=False)
    async def demo_page() -> Response:
        return FileResponse(index)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


app = create_app()
