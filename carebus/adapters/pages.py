"""A service's own page for people (the inbox's, the audit service's): its strict headers and its
static files (script, styles, icon), served with an ETag."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import Response

from carebus.adapters.http import ApiError

# Nothing inline and nothing from elsewhere: an injected <script> or style= attribute does not
# run, the page cannot be framed, and no URL the page holds (or a token in it) leaves as a
# Referer.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The page's script, styles and icon (no personal data): cached, but revalidated on every use by
# their ETag, so a new release is picked up at once.
ASSET_HEADERS: Final = {"Cache-Control": "public, no-cache", "Referrer-Policy": "no-referrer"}


@dataclass(frozen=True)
class StaticAsset:
    """One of the page's files, read once: its bytes, content type and ETag."""

    body: bytes
    media_type: str
    etag: str

    @classmethod
    def read(cls, path: Path, media_type: str) -> StaticAsset:
        body = path.read_bytes()
        return cls(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def response(self, if_none_match: str | None) -> Response:
        headers = {**ASSET_HEADERS, "ETag": self.etag}
        if if_none_match is not None and self.etag in if_none_match:
            return Response(status_code=304, headers=headers)
        media_type = f"{self.media_type}; charset=utf-8"
        return Response(self.body, media_type=media_type, headers=headers)


def add_page_routes(app: FastAPI, static: Path, assets: dict[str, str]) -> None:
    """`GET /`: `static`/index.html with PAGE_HEADERS; `GET /static/{name}`: the `assets`
    (file name -> content type), nothing else."""
    page = static / "index.html"
    files = {name: StaticAsset.read(static / name, kind) for name, kind in assets.items()}

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page.read_bytes(), media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str, request: Request) -> Response:
        found = files.get(name)
        if found is None:
            raise ApiError(404, "no such file", [("name", "unknown")])
        return found.response(request.headers.get("if-none-match"))
