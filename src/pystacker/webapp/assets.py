"""A fixed set of files served under one documented route, e.g. `GET /web/{asset}`.

The names are listed when the route is installed (the folder's files, or the ones given), so the
OpenAPI document can enumerate them and anything else is a 404 envelope: no path is ever joined from
the request, so nothing outside the folder can be asked for. Each file is read once, on its first
request, and answered with an ETag; a browser revalidates (`Cache-Control: no-cache`) and gets 304
while the file is unchanged, so a new version after an upgrade is picked up at once.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from pystacker.web.envelope import ApiError
from pystacker.web.openapi import Param, Reply, Route

# mimetypes reads the system's tables, which differ between machines; these are the types we serve.
CONTENT_TYPES = {
    ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png",
    ".svg": "image/svg+xml", ".ts": "text/plain", ".json": "application/json", ".ico": "image/x-icon",
}
TEXT_SUFFIXES = {".html", ".js", ".css", ".svg", ".ts", ".json"}


def content_type_of(name: str) -> str:
    suffix = Path(name).suffix
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


@dataclass(frozen=True, slots=True)
class _Loaded:
    body: bytes
    etag: str


def _matches(if_none_match: str, etag: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


class AssetFolder:
    """The files of `folder` (its direct children, or only `names`), answered by name."""

    def __init__(self, folder: Path, names: Iterable[str] | None = None) -> None:
        self.folder = folder
        listed = sorted(names) if names is not None else sorted(p.name for p in folder.iterdir() if p.is_file())
        missing = [name for name in listed if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (is the package installed whole?)")
        self.names = tuple(listed)
        self._loaded: dict[str, _Loaded] = {}

    def load(self, name: str) -> _Loaded:
        loaded = self._loaded.get(name)
        if loaded is None:
            body = (self.folder / name).read_bytes()
            loaded = _Loaded(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
            self._loaded[name] = loaded
        return loaded

    def response(self, request: web.Request, name: str) -> web.Response:
        if name not in self.names:
            raise ApiError(404, f"no such file: {name[:64]}")
        loaded = self.load(name)
        headers = {"ETag": loaded.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if _matches(request.headers.get("If-None-Match", ""), loaded.etag):
            return web.Response(status=304, headers=headers)
        content_type = content_type_of(name)
        return web.Response(body=loaded.body, headers=headers, content_type=content_type,
                            charset="utf-8" if Path(name).suffix in TEXT_SUFFIXES else None)

    def route(self, prefix: str, summary: str, tags: tuple[str, ...]) -> Route:
        """`GET <prefix>/{asset}` for these files, described with their names."""

        async def serve(request: web.Request) -> web.Response:
            return self.response(request, request.match_info["asset"])

        return Route("GET", f"{prefix}/{{asset}}", serve, summary,
                     params=[Param("asset", {"type": "string", "enum": list(self.names)}, "The file's name",
                                   location="path")],
                     reply=FILE_REPLY, errors=(304, 404), error_bodies={304: None},
                     error_text={304: "Not Modified: the `If-None-Match` ETag is current", 404: "No such file"},
                     tags=tags)


# The body is the file itself; its type is in Content-Type (HTML, JavaScript, CSS or an image).
FILE_REPLY = Reply({"type": "string", "description": "the file's bytes"}, media_type="*/*",
                   description="The file, with its ETag")
HTML_REPLY = Reply({"type": "string", "description": "an HTML page"}, media_type="text/html",
                   description="An HTML page")
