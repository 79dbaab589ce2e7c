"""The dashboard as one FastAPI router: the page at `/`, its static files under /web/, and the JSON
API under /api/ (protected by the server's API key, like /v1; documented in /openapi.json).

`lmstack serve` passes `dashboard_router(...)` to `create_app(extra_routers=...)`; `lmstack ui`
serves it alone (lmstack.web.ui_app).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from lmstack.serve.errors import APIError
from lmstack.web.routes_chat import chat_router
from lmstack.web.routes_data import data_router
from lmstack.web.settings import DashboardSettings
from lmstack.web.sources import DataSources

STATIC_DIR = Path(__file__).parent / "static"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def dashboard_router(settings: DashboardSettings) -> APIRouter:
    router = APIRouter()
    router.include_router(data_router(DataSources(settings)))
    router.include_router(chat_router(settings))
    # Only files that ship with the page are served: a fixed table, so no path can reach outside it.
    files = {p.relative_to(STATIC_DIR).as_posix(): p for p in STATIC_DIR.rglob("*") if p.suffix in MEDIA_TYPES}

    @router.get("/", include_in_schema=False)
    def index():
        return FileResponse(files["index.html"], media_type="text/html", headers={"cache-control": "no-cache"})

    @router.get("/web/{path:path}", include_in_schema=False)
    def static(path: str):
        if path not in files:
            raise APIError(f"no dashboard file '{path}'", status=404, code="not_found")
        return FileResponse(files[path], media_type=MEDIA_TYPES[files[path].suffix], headers={"cache-control": "no-cache"})

    return router
