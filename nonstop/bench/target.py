"""Where the load generator connects: an RTMP or HTTP-FLV URL taken apart, and its per-stream variants.

With several publishers, stream i of M is the URL's stream name with `_i` appended (`live/s` -> `live/s_0`,
`live/s_1`, ...; `/live/s.flv` -> `/live/s_0.flv`); a single stream keeps its name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlsplit

RTMP_DEFAULT_PORT = 1935
HTTP_DEFAULT_PORT = 80
FLV_SUFFIX = ".flv"


class TargetError(ValueError):
    """The URL is not one the load generator can use."""


@dataclass(frozen=True)
class Target:
    scheme: str       # 'rtmp' or 'http'
    host: str
    port: int
    app: str = ""     # RTMP: the app (first path segment)
    stream: str = ""  # RTMP: the stream name, with its query if any
    path: str = ""    # HTTP: the path with its query

    @property
    def is_rtmp(self) -> bool:
        return self.scheme == "rtmp"

    @property
    def tc_url(self) -> str:
        return f"rtmp://{self.host}:{self.port}/{self.app}"

    @property
    def url(self) -> str:
        if self.is_rtmp:
            return f"{self.tc_url}/{self.stream}"
        return f"http://{self.host}:{self.port}{self.path}"

    def for_stream(self, index: int, count: int) -> "Target":
        """Stream `index` of `count`: the same target when there is only one stream."""
        if count <= 1:
            return self
        suffix = f"_{index}"
        if self.is_rtmp:
            name, sep, query = self.stream.partition("?")
            return replace(self, stream=f"{name}{suffix}{sep}{query}")
        path, sep, query = self.path.partition("?")
        if path.endswith(FLV_SUFFIX):
            path = path[:-len(FLV_SUFFIX)] + suffix + FLV_SUFFIX
        else:
            path += suffix
        return replace(self, path=f"{path}{sep}{query}")


def parse_target(url: str) -> Target:
    """rtmp://HOST[:PORT]/APP/STREAM[?QUERY] or http://HOST[:PORT]/PATH. Raises TargetError."""
    parts = urlsplit(url)
    if parts.scheme not in ("rtmp", "http"):
        raise TargetError(f"{url}: only rtmp:// and http:// URLs are supported")
    if not parts.hostname:
        raise TargetError(f"{url}: no host")
    try:
        port = parts.port or (RTMP_DEFAULT_PORT if parts.scheme == "rtmp" else HTTP_DEFAULT_PORT)
    except ValueError as e:
        raise TargetError(f"{url}: {e}") from None
    query = f"?{parts.query}" if parts.query else ""
    if parts.scheme == "http":
        return Target("http", parts.hostname, port, path=(parts.path or "/") + query)
    app, _, stream = parts.path.lstrip("/").partition("/")
    if not app or not stream:
        raise TargetError(f"{url}: an RTMP URL needs /APP/STREAM")
    return Target("rtmp", parts.hostname, port, app=app, stream=stream + query)
