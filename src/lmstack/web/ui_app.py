"""`lmstack ui`: the dashboard without a model -- the same router, error shape and API-key guard as
`lmstack serve`, minus the engine and /v1."""

from __future__ import annotations

from fastapi import FastAPI

from lmstack.serve.errors import install_error_handlers
from lmstack.serve.guard import RequestGuard
from lmstack.serve.metrics import ServerMetrics
from lmstack.web.api import dashboard_router
from lmstack.web.settings import DashboardSettings

MAX_BODY_BYTES = 4 * 2**20


def create_ui_app(settings: DashboardSettings, api_key: str | None) -> FastAPI:
    app = FastAPI(title="lmstack dashboard")
    install_error_handlers(app)
    app.include_router(dashboard_router(settings))
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=MAX_BODY_BYTES, metrics=ServerMetrics())
    return app
