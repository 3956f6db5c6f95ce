"""The latent-space explorer: GET / (service/static/index.html) and its assets under /static
(app.js, the entry module, imports the panels' modules from static/js/)."""

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
JAVASCRIPT = "text/javascript; charset=utf-8"


class _Assets(StaticFiles):
    """StaticFiles with .js always served as JavaScript: browsers refuse a module script of any
    other type, and the platform's mime table (mimetypes, /etc/mime.types, the Windows
    registry) does not always say text/javascript."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if str(full_path).endswith((".js", ".mjs")):
            response.headers["content-type"] = JAVASCRIPT
        return response


def router() -> APIRouter:
    api = APIRouter()

    @api.get("/", include_in_schema=False)
    async def root() -> Response:
        # The explorer page when service/static/index.html exists; the API docs otherwise.
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return RedirectResponse("/docs")

    return api


def mount_static(app: FastAPI) -> None:
    # check_dir off: the folder is optional, and a missing file is a plain 404.
    app.mount("/static", _Assets(directory=STATIC_DIR, check_dir=False), name="static")
