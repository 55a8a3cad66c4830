"""The URLs a cluster passes around, built and parsed the way SRS does, so nonstop and SRS nodes understand
each other: the tcUrl and stream an edge plays upstream, the RTMP 302 target an origin sends, and the
`host[:port]` of an `origin` directive.

Pure functions on strings; no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_VHOST = "__defaultVhost__"
DEFAULT_RTMP_PORT = 1935


@dataclass(frozen=True, slots=True)
class RtmpTarget:
    """Where one upstream attempt goes: a TCP address, and what to say there."""
    host: str
    port: int
    tc_url: str
    app: str
    stream: str          # with its query string, as `play`/`publish` carry it


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """`h`, `h:p`, `[v6]`, `[v6]:p` -> (host, port). The config already validated the text."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = text.partition(":")
    return host, int(port) if sep and port.isdigit() else default_port


def is_ipv4(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False


def host_of_url(url: str) -> str:
    """`rtmp://host:1935/live?x` -> 'host' (`[::1]` -> '::1'); '' when there is none."""
    rest = url.partition("://")[2] or url
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


def host_of_header(value: str) -> str:
    """A Host header's host: `a.b:8080` -> 'a.b', `[::1]:8080` -> '::1'."""
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def tc_url_for(server: str, port: int, vhost: str, app: str) -> str:
    """SRS's srs_generate_tc_url: the vhost names the host unless it is the default one; the port is left out
    when it is 1935. An SRS origin picks the vhost from this host."""
    host = server if vhost == DEFAULT_VHOST else vhost
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port_part = f":{port}" if port != DEFAULT_RTMP_PORT else ""
    return f"rtmp://{host}{port_part}/{app}"


def stream_with_query(host: str, vhost: str, stream: str, param: str) -> str:
    """SRS's srs_generate_stream_with_query: the query goes along, and `vhost=` is added when the vhost is
    not the default one, or when the client's host was a name (not an IPv4 address), so that the far end
    finds the same vhost. `param` has no leading '?'."""
    query = param.lstrip("?")
    if "vhost=" not in query:
        guess = vhost if vhost != DEFAULT_VHOST else (host if host and not is_ipv4(host) else "")
        if guess:
            query += "&vhost=" + guess
    query = query.lstrip("&")
    return f"{stream}?{query}" if query else stream


def rtmp_url(server: str, port: int, host: str, vhost: str, app: str, stream: str, param: str) -> str:
    """SRS's srs_generate_rtmp_url, the `redirect2` of an RTMP 302: `rtmp://server:port/app/stream?query`."""
    server_part = f"[{server}]" if ":" in server else server
    return f"rtmp://{server_part}:{port}/{app}/{stream_with_query(host, vhost, stream, param)}"


def redirect_tc_url(url: str) -> str:
    """The `redirect` of an RTMP 302: the tcUrl, i.e. the URL without its last path segment (SRS's
    srs_path_dirname of redirect2)."""
    return url.partition("?")[0].rpartition("/")[0]


def parse_rtmp_url(url: str) -> RtmpTarget | None:
    """`rtmp://host[:port]/app[/more]/stream[?query]` -> the target to connect to and play or publish, or
    None when it is not an RTMP URL with an app and a stream. A redirect's `redirect` (a tcUrl without a
    stream) is not enough to play anything, which is why an edge prefers `redirect2`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "rtmp":
        return None
    path_part, _, query = rest.partition("?")
    authority, slash, path = path_part.partition("/")
    if not slash or not authority:
        return None
    app, _, stream = path.rpartition("/")
    if not app or not stream:
        return None
    host, port = split_host_port(authority, DEFAULT_RTMP_PORT)
    if not host:
        return None
    tc_url = f"rtmp://{authority}/{app}"
    return RtmpTarget(host, port, tc_url, app, f"{stream}?{query}" if query else stream)


def parse_tc_url(url: str) -> tuple[str, int, str] | None:
    """`rtmp://host[:port]/app[?query]` -> (host, port, app): an RTMP 302 with only `ex.redirect` names the
    server and app; the stream stays the one asked for."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "rtmp":
        return None
    authority, slash, app = rest.partition("?")[0].partition("/")
    if not slash or not authority or not app.strip("/"):
        return None
    host, port = split_host_port(authority, DEFAULT_RTMP_PORT)
    return (host, port, app.strip("/")) if host else None


def flv_location(ip: str, port: int, path: str, query: str) -> str:
    """The `Location` of an HTTP-FLV 302 to the origin that has the stream: same path, same query."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}" + (f"?{query}" if query else "")
