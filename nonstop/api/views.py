"""The JSON of SRS's HTTP API (srs-reference.md §6), built from plain values: no aiohttp, no clock, no /proc.

Every builder takes what it shows as arguments (the objects that own the numbers, the time, the rates), so the
shapes can be checked field by field against SRS's samples with fake objects.

- Envelope: `{"code":0,"server":"vid-...","service":"...","pid":"12345"}`, `pid` a string.
- Lists: `"streams":[...]`, `"clients":[...]`, `"vhosts":[...]`; single items `"stream"`, `"client"`, `"vhost"`.
- Errors: HTTP 200 with only `{"code":N}`.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

from nonstop.api.stats import GroupTotals

ERROR_SUCCESS = 0
ERROR_RTMP_VHOST_NOT_FOUND = 2014
ERROR_RTMP_STREAM_NOT_FOUND = 2048
ERROR_RTMP_CLIENT_NOT_FOUND = 2049
ERROR_SYSTEM_CONFIG_RAW_DISABLED = 1061     # SRS: "RAW API is disabled"
# SRS answers `?count=` below 10 with 10 anyway (`srs_max(10, count)`); we honour any positive count, and
# keep SRS's 10 when it is missing or not a positive number.
DEFAULT_COUNT = 10
DEFAULT_VHOST = "__defaultVhost__"
# SRS's ids look like `vid-73e8263`: a prefix and 7 hex digits.
VHOST_ID_DIGITS = 7
# The value SRS prints for a profile or level it cannot name.
UNKNOWN = "Other"


class Ident:
    """Who answers: the envelope's server id (persistent), service id (per run of the master) and pid."""

    __slots__ = ("server", "service", "pid")

    def __init__(self, server: str, service: str, pid: int | str):
        self.server = server
        self.service = service
        self.pid = str(pid)


def envelope(ident: Ident, **payload) -> dict:
    out = {"code": ERROR_SUCCESS, "server": ident.server, "service": ident.service, "pid": ident.pid}
    out.update(payload)
    return out


def error(code: int) -> dict:
    return {"code": code}


def vhost_id(server_id: str, name: str) -> str:
    """A vhost's id: stable for a server id and a vhost name, so it survives reloads and upgrades.

    SRS draws a random id per vhost at first use; a random one would change in every new worker."""
    digest = hashlib.sha1(f"{server_id}/{name}".encode()).hexdigest()
    return "vid-" + digest[:VHOST_ID_DIGITS]


def stream_url(vhost: str, app: str, stream: str) -> str:
    """SRS's `srs_generate_stream_url`: `/app/stream`, prefixed with the vhost unless it is the default."""
    prefix = "" if vhost == DEFAULT_VHOST else vhost
    return f"{prefix}/{app}/{stream}"


def paging(query: Mapping[str, str]) -> tuple[int, int]:
    """`?start=&count=`: (start, count). Garbage reads as missing, as SRS's atoi() would."""
    start = max(0, _int(query.get("start"), 0))
    count = _int(query.get("count"), DEFAULT_COUNT)
    return start, count if count > 0 else DEFAULT_COUNT


def page(items: list, query: Mapping[str, str]) -> list:
    start, count = paging(query)
    return items[start:start + count]


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


# ----- versions and summaries ---------------------------------------------------------------------------------

def version_data(version: str) -> dict:
    """`{major, minor, revision, version}` from a `MAJOR.MINOR.REVISION` version string."""
    parts = [_int(p, 0) for p in (version.split(".") + ["0", "0", "0"])[:3]]
    return {"major": parts[0], "minor": parts[1], "revision": parts[2], "version": version}


UPGRADE_KEYS = ("state", "reason", "started_ms", "finished_ms", "handed_over", "failed", "drained", "total_ms",
                "worst_ms")


def upgrade_json(info: Mapping | None) -> dict:
    """nonstop's `data.upgrade`: the last upgrade as the master tells its workers (state `idle` before any)."""
    info = info or {}
    out = {key: info.get(key, 0) for key in UPGRADE_KEYS}
    out["state"] = info.get("state", "idle")
    out["reason"] = info.get("reason", "")
    return out


def summaries_data(*, ok: bool, now_ms: int, self_info: Mapping, system: Mapping,
                   upgrade: Mapping | None = None) -> dict:
    """`data` of /api/v1/summaries. `self_info` holds version, pid, ppid, argv, cwd, mem_kbyte, mem_percent,
    cpu_percent, srs_uptime (and nonstop's generation); `system` the system's numbers. Percentages are
    fractions (0.153 is 15.3%), as SRS prints them. `upgrade` (nonstop's) is the last upgrade."""
    return {"ok": ok, "now_ms": now_ms, "self": dict(self_info), "system": dict(system),
            "upgrade": upgrade_json(upgrade)}


# ----- vhosts, streams, clients -------------------------------------------------------------------------------

def vhost_json(name: str, *, enabled: bool, server_id: str, totals: GroupTotals | None, kbps: dict) -> dict:
    totals = totals or GroupTotals()
    return {"id": vhost_id(server_id, name), "name": name, "enabled": enabled,
            "clients": totals.clients, "streams": totals.streams,
            "send_bytes": totals.send_bytes, "recv_bytes": totals.recv_bytes, "kbps": dict(kbps),
            "hls": {"enabled": False}}      # nonstop has no HLS; SRS consoles read the key


def stream_json(source, *, server_id: str, now_ms: int, totals: GroupTotals | None, kbps: dict) -> dict:
    """One stream as SRS shows it. `totals` gives the clients now and the bytes ever; `live_ms` is the time
    of the answer, as in SRS (SrsStatisticStream::dumps prints the current time)."""
    totals = totals or GroupTotals()
    publisher = source.publisher
    publish: dict = {"active": publisher is not None}
    if publisher is not None:
        publish["cid"] = publisher.cid
    tc_url = totals.tc_url
    session = getattr(publisher, "session", None)
    if session is not None:
        tc_url = session.tc_url
    return {
        "id": source.id, "name": source.stream, "vhost": vhost_id(server_id, source.vhost), "app": source.app,
        "tcUrl": tc_url, "url": stream_url(source.vhost, source.app, source.stream), "live_ms": now_ms,
        "clients": totals.clients, "frames": source.frames,
        "send_bytes": totals.send_bytes, "recv_bytes": totals.recv_bytes, "kbps": dict(kbps),
        "publish": publish, "video": video_json(source.info), "audio": audio_json(source.info),
    }


def video_json(info) -> dict | None:
    if not info.video_codec:
        return None
    details = info.video or {}
    return {"codec": info.video_codec, "profile": details.get("profile") or UNKNOWN,
            "level": details.get("level") or UNKNOWN, "width": details.get("width", 0),
            "height": details.get("height", 0)}


def audio_json(info) -> dict | None:
    if not info.audio_codec:
        return None
    details = info.audio or {}
    return {"codec": info.audio_codec, "sample_rate": details.get("sample_rate", 0),
            "channel": details.get("channel", 0), "profile": details.get("profile") or UNKNOWN}


def client_json(conn, ctype: str, *, server_id: str, now_wall: float, kbps: dict) -> dict:
    """One client as SRS shows it. `ctype` is its type (stats.client_type). `alive` is seconds."""
    source = conn.source
    session = getattr(conn, "session", None)
    if session is not None:                                  # RTMP
        tc_url, name = session.tc_url, session.stream_name or source.stream
        page_url, swf_url = getattr(conn, "page_url", ""), getattr(conn, "swf_url", "")
    else:                                                    # HTTP-FLV: what the request said
        headers = getattr(conn, "headers", {}) or {}
        host = headers.get("host", "")
        tc_url = f"http://{host}/{source.app}" if host else ""
        name, page_url, swf_url = source.stream, headers.get("referer", ""), ""
    return {
        "id": conn.cid, "vhost": vhost_id(server_id, source.vhost), "stream": source.id, "ip": conn.ip,
        "pageUrl": page_url, "swfUrl": swf_url, "tcUrl": tc_url,
        "url": stream_url(source.vhost, source.app, source.stream), "name": name, "type": ctype,
        "publish": ctype.endswith("-publish"), "alive": round(max(0.0, now_wall - conn.created_wall), 2),
        "send_bytes": conn.send_bytes, "recv_bytes": conn.recv_bytes, "kbps": dict(kbps),
    }


def raw_json(*, api_enabled: bool, api_listen: str, crossdomain: bool, rpc: str) -> dict:
    """`/api/v1/raw?rpc=...`: nonstop has no raw API (config over HTTP). `rpc=raw` describes it as SRS does,
    disabled (SrsConfig::raw_to_json), which is what the SRS console's config pages read; every other rpc gets
    SRS's code for a disabled raw API."""
    if rpc != "raw":
        return error(ERROR_SYSTEM_CONFIG_RAW_DISABLED)
    return {"code": ERROR_SUCCESS,
            "http_api": {"enabled": api_enabled, "listen": api_listen, "crossdomain": crossdomain,
                         "raw_api": {"enabled": False, "allow_reload": False, "allow_query": False,
                                     "allow_update": False}}}
