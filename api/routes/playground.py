"""The web playground: a static page at `/` that talks to this API like any other client.

Plain HTML, CSS and JS shipped inside the package (api/static/), so `pip install` is all it needs. The page
itself needs no key (it holds none): it asks for one when the API answers 401, and sends it on every call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS_PATH = "/playground"

# The page keeps an API key in localStorage: only its own files may run or be fetched, nothing inline, and no
# other site may frame it.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(tags=["playground"])


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    """The playground page."""
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}
    return FileResponse(STATIC / "index.html", headers=headers)


def assets() -> StaticFiles:
    """The page's script and stylesheet (a mount: no key, no route dependencies)."""
    return StaticFiles(directory=STATIC)
