"""`/api/v1/clusters`: an origin's answer to a coworker asking whether it has a stream, in SRS's exact shape
(srs-reference §4, SrsGoApiClusters and SrsCoWorkers::dumps):

    {"code":0,"data":{"query":{"ip":..,"vhost":..,"app":..,"stream":..},
                      "origin":{"ip":..,"port":..,"vhost":..,"api":..,"routers":[..]} | null}}

Extra keys, which SRS nodes ignore: `server`, `service` and `pid` at the top (as in every other API answer;
`server` lets a node recognise its own answer), and `origin.http`, the HTTP-FLV address for the 302 an
HTTP-FLV player gets.

The advertised address follows SRS: `ip` is the host of the first `listen` unless that is a wildcard or a
loopback address, then the host part of the `coworker` parameter (the name the asker used for us, which
works behind NAT, SRS #1501). `port` is the first RTMP listen port. `api` is the HTTP API listen address,
with the service ip in front of a bare port. nonstop adds `advertise HOST;` in `cluster {}` (or
`NONSTOP_VHOST_CLUSTER_ADVERTISE`): when set it is the host of `ip`, `api` and `http`, for Kubernetes
StatefulSets, where a pod's stable name is its DNS name.
"""

from __future__ import annotations

import ipaddress
import json
import os

from aiohttp import web

from nonstop.cluster.coworkers import CLUSTERS_PATH
from nonstop.cluster.edge import EdgeIngester
from nonstop.cluster.urls import split_host_port

# SRS checks 127.0.0.1, 0.0.0.0 and :: (SRS_CONSTS_LOCALHOST, _LOOPBACK, _LOOPBACK6); nonstop takes any
# loopback or unspecified address, which no other node could reach either.
SRS_UNROUTABLE = ("127.0.0.1", "0.0.0.0", "::")
# When nothing else names this node (wildcard listen, no coworker parameter, no advertise), the address the
# question arrived on is the best guess; SRS takes its first public interface address instead.
FALLBACK_IP = "127.0.0.1"


def unroutable(host: str) -> bool:
    """An address another node cannot use to reach this one."""
    if not host or host in SRS_UNROUTABLE or host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def service_ip(config, advertise: str, coworker: str, local_ip: str = "") -> str:
    """origin.ip by SRS's rules, with `advertise` first."""
    if advertise:
        return advertise
    listen_host = config.listen[0].host if config.listen else ""
    if not unroutable(listen_host):
        return listen_host
    if coworker:
        host, _ = split_host_port(coworker, 0)
        if host:
            return host
    return local_ip or FALLBACK_IP


def api_address(config, ip: str, advertise: str) -> str:
    """origin.api: SRS keeps the listen address as written and puts the service ip before a bare port
    (which our config reads as the wildcard)."""
    listen = config.http_api.listen
    if advertise or listen.is_wildcard:
        return _join(ip, listen.port)
    return str(listen)


def http_address(config, ip: str, advertise: str) -> str:
    """origin.http (an extra key): where this node's HTTP-FLV players go, "" without an HTTP server."""
    if not config.http_server.enabled:
        return ""
    listen = config.http_server.listen
    host = ip if advertise or unroutable(listen.host) else listen.host
    return _join(host, listen.port)


def has_stream(source) -> bool:
    """Only a stream published *here* counts: an edge's pulled copy is not an origin's stream."""
    return source is not None and source.publisher is not None and not isinstance(source.publisher, EdgeIngester)


def build_clusters_answer(worker, params, local_ip: str = "") -> dict:
    """The answer to `/api/v1/clusters?vhost=&ip=&app=&stream=&coworker=` (GET or POST)."""
    get = lambda name: str(params.get(name, "") or "")   # noqa: E731
    vhost, app, stream, coworker = get("vhost"), get("app"), get("stream"), get("coworker")
    query = {"ip": get("ip"), "vhost": vhost, "app": app, "stream": stream}
    config = worker.config
    origin = None
    conf = config.vhost_for(vhost)    # SRS: get_vhost(vhost, true), the default vhost when not found
    if conf is not None and conf.cluster.mode == "local":
        source = worker.registry.get(conf.name, app, stream)
        if has_stream(source):
            advertise = conf.cluster.advertise
            ip = service_ip(config, advertise, coworker, local_ip)
            api = api_address(config, ip, advertise)
            port = config.listen[0].port if config.listen else 1935
            origin = {"ip": ip, "port": port, "vhost": source.vhost, "api": api, "routers": [api]}
            http = http_address(config, ip, advertise)
            if http:
                origin["http"] = http
    return {"code": 0, "data": {"query": query, "origin": origin},
            "server": worker.server_id, "service": worker.service_id, "pid": str(service_pid(worker))}


def service_pid(worker) -> int:
    """The pid every API answer names: the master's (it never changes across upgrades), else our own."""
    return getattr(worker, "master_pid", None) or os.getpid()


def dumps(answer: dict) -> str:
    """Compact JSON, as SRS writes it."""
    return json.dumps(answer, separators=(",", ":"))


def make_clusters_handler(worker):
    async def clusters_handler(request: web.Request) -> web.Response:
        params = {key: request.query.get(key, "") for key in request.query.keys()}
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        local_ip = sockname[0] if sockname else ""
        answer = build_clusters_answer(worker, params, local_ip)
        return web.Response(text=dumps(answer), content_type="application/json")
    return clusters_handler


def add_clusters_routes(app: web.Application, worker) -> None:
    """Register GET and POST `/api/v1/clusters` (and with a trailing slash) on the API application."""
    handler = make_clusters_handler(worker)
    for path in (CLUSTERS_PATH, CLUSTERS_PATH + "/"):
        app.router.add_route("GET", path, handler)
        app.router.add_route("POST", path, handler)
