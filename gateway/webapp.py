"""The web app for people: static files under `gateway/web/`, served by this same process.

`/` is the one HTML page; `/static/...` its CSS and ES modules. There is no build step and nothing is
fetched from another origin, so the app works with no internet. Every response carries a Content
Security Policy without `unsafe-inline` (no inline script or style can run, even if text were ever
injected), and the page holds no secret: it signs in with a cookie the script cannot read, and reads
its CSRF token from `GET /v1/session`.

The files are read once at start-up into memory (a few hundred kB), so a request never touches the
file system and no path from a URL ever becomes a file name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ["CSP", "ROUTE_NAMES", "WEB_ROOT", "install"]

WEB_ROOT: Final = Path(__file__).with_name("web")
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_TYPES: Final = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml",
                 ".json": "application/json", ".png": "image/png", ".ico": "image/x-icon"}
ROUTE_NAMES: Final = ("web_index", "web_static")  # pages and files, not part of the JSON API's document
_SECURITY_HEADERS: Final = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


class _File:
    __slots__ = ("body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _load(root: Path) -> dict[str, _File]:
    files: dict[str, _File] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in _TYPES:
            files[path.relative_to(root).as_posix()] = _File(path.read_bytes(), _TYPES[path.suffix])
    return files


def install(app: web.Application, root: Path = WEB_ROOT) -> None:
    """Serve the web app at `/` and `/static/{name}` (not part of the JSON API's OpenAPI document)."""
    files = _load(root)

    def respond(request: web.Request, name: str) -> web.Response:
        found = files.get(name)
        if found is None:
            raise web.HTTPNotFound(text=f"no file {name}")
        headers = {**_SECURITY_HEADERS, "ETag": found.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == found.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, content_type=found.content_type, charset="utf-8"
                            if found.content_type.startswith("text/") else None, headers=headers)

    async def index(request: web.Request) -> web.Response:
        return respond(request, "index.html")

    async def static(request: web.Request) -> web.Response:
        return respond(request, request.match_info["name"])

    app.router.add_get("/", index, name="web_index")
    app.router.add_get("/static/{name:.+}", static, name="web_static")
