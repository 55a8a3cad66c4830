"""Answers for the console's and the player's files: `answer(method, path, config)` gives the whole HTTP
response (bytes) for a path under /console/ or /players/ (and `/` when http_server.dir has no index.html), or
None when the path is not the console's.

Only the files shipped in the package are served (the list is read once from disk): a path is looked up in
that list, never joined onto a directory, so no request can name another file. The console's index.html gets
the API's address: the API port when it listens apart from the HTTP server, nothing when they share a port.
"""

from __future__ import annotations

import os
from pathlib import Path

from nonstop import SERVER_NAME

HERE = Path(__file__).resolve().parent
# URL prefix -> directory, the longest prefix first.
ROOTS = (("/console/vendor/", HERE / "vendor"), ("/console/", HERE / "www" / "console"),
         ("/players/", HERE / "www" / "players"))
CONSOLE_INDEX = "/console/index.html"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
         ".txt": "text/plain; charset=utf-8", ".json": "application/json"}
# Where index.html says which API to read; filled per answer (see api_address).
API_PLACEHOLDER = b"{{NONSTOP_API}}"

_files: dict[str, bytes] | None = None


def files() -> dict[str, bytes]:
    """URL path -> content of every shipped file (read once; the package does not change under a worker)."""
    global _files
    if _files is None:
        found = {}
        for prefix, root in ROOTS:
            for path in sorted(root.rglob("*")):
                url = prefix + path.relative_to(root).as_posix()
                if path.is_file() and url not in found:
                    found[url] = path.read_bytes()
        _files = found
    return _files


def api_address(config) -> str:
    """What the console fetches the API from: `:PORT` (this host, the API's port) or "" (this origin)."""
    api, http = config.http_api, config.http_server
    if not api.enabled:
        return "none"
    if http.enabled and api.listen.port == http.listen.port:
        return ""
    return f":{api.listen.port}"


def dir_has_index(config) -> bool:
    """Whether http_server.dir provides its own `/` (an index.html), which then wins over the console."""
    directory = getattr(config.http_server, "dir", "")
    return bool(directory) and os.path.isfile(os.path.join(directory, "index.html"))


def resolve(path: str, config) -> str | None:
    """The shipped file's URL path a request path names, or None."""
    if path == "/" and not dir_has_index(config):
        return CONSOLE_INDEX
    if path in ("/console", "/players"):
        path += "/"
    if path.endswith("/"):
        path += "index.html"
    return path if path in files() else None


def answer(method: str, path: str, config) -> bytes | None:
    """The whole response for a console or player path, or None when the path is not theirs."""
    if not (path == "/" or path.startswith(("/console", "/players"))):
        return None
    url = resolve(path, config)
    if url is None:
        return None
    if method not in ("GET", "HEAD"):
        body = b"405 Method Not Allowed\n"
        return _response(405, "Method Not Allowed", "text/plain", body, "Allow: GET, HEAD\r\n")
    body = files()[url]
    if url == CONSOLE_INDEX:
        body = body.replace(API_PLACEHOLDER, api_address(config).encode())
    kind = TYPES.get(os.path.splitext(url)[1], "application/octet-stream")
    # The vendored libraries change only with the package; the console's own files are small: revalidate.
    cache = "max-age=86400" if url.startswith("/console/vendor/") else "no-cache"
    head = _response(200, "OK", kind, body, f"Cache-Control: {cache}\r\n")
    return head[:-len(body)] if method == "HEAD" and body else head


def _response(status: int, reason: str, kind: str, body: bytes, headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n").encode() + body
