"""The latent-space explorer: GET / (service/static/index.html) and its assets under /static."""

from pathlib import Path

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


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
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
