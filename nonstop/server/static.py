"""Static files from `http_server.dir`, as SRS's HTTP server serves them (its console and players, a
crossdomain.xml, test pages). The HTTP-FLV mounts are matched first, so a stream always wins over a file.

Safety: the URL path is percent-decoded once, split on `/`, and any `..`, `.` or empty segment, any NUL or
backslash makes it "not found"; then the real path (symlinks resolved) must still lie inside the real `dir`,
so a symlink that points out of `dir` is not followed. Everything outside answers 404, the same as a missing
file, so nothing outside `dir` can even be probed for existence. Only regular files are served; a directory
serves its index.html, there are no listings.

HTTP: `Content-Type` from the file's extension (SRS's table where it has one), `Last-Modified` with
`If-Modified-Since` (304), `Accept-Ranges: bytes` with one `Range` (206, or 416 when it does not fit; several
ranges get the whole file, which RFC 9110 allows). Each response closes its connection, as the FLV ones do.
The body goes out in blocks while the transport has room (uvloop has no `loop.sendfile`), never read whole
into memory. A download in flight is not handed over by an upgrade: it finishes on the old worker.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import stat
import urllib.parse

from nonstop import SERVER_NAME
from nonstop.log import log

INDEX = "index.html"
DEFAULT_TYPE = "application/octet-stream"
MIME_TYPES = {
    ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8", ".js": "text/javascript",
    ".mjs": "text/javascript", ".css": "text/css", ".json": "application/json", ".xml": "text/xml",
    ".txt": "text/plain; charset=utf-8", ".map": "application/json", ".svg": "image/svg+xml",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".ico": "image/x-icon",
    ".webp": "image/webp", ".wasm": "application/wasm", ".woff": "font/woff", ".woff2": "font/woff2",
    ".flv": "video/x-flv", ".mp4": "video/mp4", ".m4s": "video/iso.segment", ".ts": "video/MP2T",
    ".m3u8": "application/vnd.apple.mpegurl", ".mp3": "audio/mpeg", ".aac": "audio/aac",
    ".swf": "application/x-shockwave-flash",
}
# A download reads BLOCK bytes at a time and waits (polling every UNSENT_POLL_S) while its transport holds
# more than MAX_UNSENT unsent bytes.
BLOCK = 64 * 1024
MAX_UNSENT = 256 * 1024
UNSENT_POLL_S = 0.01
# Paths the API owns when it shares the HTTP server's port: never looked up as files.
API_PREFIXES = ("/api/", "/api")
API_PATHS = ("/metrics", "/healthz", "/readyz")


class Plan:
    """What to answer: status, headers, and the byte range of the file to send (length 0: no body)."""

    __slots__ = ("status", "reason", "headers", "path", "offset", "length")

    def __init__(self, status: int, reason: str, headers: dict, path: str = "", offset: int = 0, length: int = 0):
        self.status, self.reason, self.headers = status, reason, headers
        self.path, self.offset, self.length = path, offset, length


def is_api_path(path: str) -> bool:
    return path in API_PATHS or path == "/api" or path.startswith("/api/")


def resolve(root: str, url_path: str) -> str | None:
    """The file under `root` that `url_path` (as it came, percent-encoded) names, or None (not found)."""
    try:
        decoded = urllib.parse.unquote(url_path, errors="strict") if "%" in url_path else url_path
    except UnicodeDecodeError:
        return None
    if "\x00" in decoded or "\\" in decoded or not decoded.startswith("/"):
        return None
    parts = decoded.split("/")[1:]
    wants_dir = parts[-1] == "" if parts else True
    if wants_dir:
        parts = parts[:-1]
    if any(part in ("", ".", "..") for part in parts):
        return None
    try:
        real_root = os.path.realpath(root)
        candidate = os.path.realpath(os.path.join(real_root, *parts)) if parts else real_root
    except (OSError, ValueError):
        return None
    if candidate != real_root and not candidate.startswith(real_root + os.sep):
        return None         # a symlink out of dir
    if os.path.isdir(candidate):
        candidate = os.path.realpath(os.path.join(candidate, INDEX))
        if not candidate.startswith(real_root + os.sep):
            return None     # an index.html that is a symlink out of dir
    elif wants_dir:
        return None
    return candidate


def plan(file_path: str, method: str, headers: dict) -> Plan:
    """The answer for a resolved file: 200, 206, 304, 404 or 416, from its stat and the request headers."""
    try:
        st = os.stat(file_path)
    except (OSError, ValueError):
        return not_found()
    if not stat.S_ISREG(st.st_mode):
        return not_found()
    size = st.st_size
    mtime = int(st.st_mtime)
    base = {"Content-Type": MIME_TYPES.get(os.path.splitext(file_path)[1].lower(), DEFAULT_TYPE),
            "Last-Modified": email.utils.formatdate(mtime, usegmt=True), "Accept-Ranges": "bytes"}
    since = _http_date(headers.get("if-modified-since", ""))
    if since is not None and "range" not in headers and mtime <= since:
        return Plan(304, "Not Modified", {k: v for k, v in base.items() if k != "Content-Type"})
    wanted = _range(headers.get("range", ""), size)
    if wanted == "unsatisfiable":
        return Plan(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
    if wanted is not None:
        start, end = wanted
        base.update({"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)})
        return Plan(206, "Partial Content", base, file_path, start, 0 if method == "HEAD" else end - start + 1)
    base["Content-Length"] = str(size)
    return Plan(200, "OK", base, file_path, 0, 0 if method == "HEAD" else size)


def not_found() -> Plan:
    return Plan(404, "Not Found", {"Content-Type": "text/plain", "Content-Length": "14"})


def _http_date(value: str) -> int | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return int(parsed.timestamp()) if parsed is not None else None


def _range(value: str, size: int):
    """One `bytes=` range as (first, last) inclusive; None to send the whole file; "unsatisfiable" for 416."""
    if not value:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None         # another unit, or several ranges: the whole file
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:                   # the last N bytes
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1) if size else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return "unsatisfiable"
    if start < 0 or end < start:
        return None
    return start, min(end, size - 1)


def serve(conn, method: str, url_path: str, headers: dict, root: str) -> bool:
    """Answer a GET or HEAD from `root` on `conn` (an HttpConnection), if a file is there: True when
    answered (the connection closes after the body), False to let the caller go on (API, or 404)."""
    file_path = resolve(root, url_path)
    if file_path is None:
        if ".." in url_path or "%" in url_path or "\\" in url_path:
            log.warn(conn.cid, f"static: refused {url_path!r} from {conn.ip} (outside http_server.dir)")
        return False
    answer = plan(file_path, method, headers)
    if answer.status == 404:
        return False
    head = [f"HTTP/1.1 {answer.status} {answer.reason}", f"Server: {SERVER_NAME}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in answer.headers.items()]
    conn.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    log.trace(conn.cid, f"static {method} {url_path} {answer.status} {answer.length} bytes ip={conn.ip}")
    if not answer.length:
        conn.close(f"static {answer.status}")
        return True
    asyncio.get_running_loop().create_task(_send_body(conn, answer))
    return True


async def _send_body(conn, answer: Plan) -> None:
    """Blocks of BLOCK bytes while the transport holds less than MAX_UNSENT: memory per download is bounded
    whatever the file's size and the client's speed."""
    reason = f"static {answer.status} sent"
    transport = conn.transport
    try:
        with open(answer.path, "rb") as f:
            f.seek(answer.offset)
            remaining = answer.length
            while remaining > 0:
                while transport.get_write_buffer_size() > MAX_UNSENT:
                    if transport.is_closing():
                        return
                    await asyncio.sleep(UNSENT_POLL_S)
                if transport.is_closing():
                    return
                block = f.read(min(BLOCK, remaining))
                if not block:
                    reason = "static file shrank while being sent"
                    break
                transport.write(block)
                remaining -= len(block)
    except OSError as e:
        reason = f"static body failed: {e}"
    finally:
        conn.close(reason)
