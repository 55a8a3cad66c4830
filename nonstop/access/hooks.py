"""SRS's http_hooks on the wire (srs_app_http_hooks.cpp): the JSON bodies, the rule that reads an answer, and
the aiohttp client that posts them without blocking the worker.

Bodies, field for field as SRS 7 sends them (`stream_id` only when the stream exists, as SRS's statistics
have it; nonstop creates an RTMP client's source before asking, so RTMP bodies always carry it):
  on_connect    server_id service_id action client_id ip vhost app stream param tcUrl pageUrl
  on_close      server_id service_id action client_id ip vhost app send_bytes recv_bytes
  on_publish    server_id service_id action client_id ip vhost app tcUrl stream param stream_url stream_id
  on_unpublish  the same as on_publish
  on_play       server_id service_id action client_id ip vhost app stream tcUrl param pageUrl stream_url
                stream_id
  on_stop       server_id service_id action client_id ip vhost app tcUrl stream param stream_url stream_id

The answer (SrsHttpHooks::do_post): HTTP 200 (or 201) whose body is the JSON number 0, or a JSON object whose
integer `code` is 0, allows. Anything else refuses: another code, another status, an empty or non-JSON body, a
timeout, a refused connection. There is no "fail open".
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from nonstop import SERVER_NAME
from nonstop.log import log

# SRS reads at most this much of an answer (SRS_HTTP_BODY_BUFFER); an answer is "0" or a small object.
MAX_ANSWER = 32 * 1024
ALLOW_STATUSES = (200, 201)


def stream_url(vhost: str, app: str, stream: str) -> str:
    """srs_generate_stream_url: `/app/stream` for the default vhost, `vhost/app/stream` otherwise."""
    return ("" if vhost == "__defaultVhost__" else vhost) + f"/{app}/{stream}"


def body(action: str, who, server_id: str, service_id: str, *, stream_id: str = "", send_bytes: int = 0,
         recv_bytes: int = 0) -> dict:
    """The JSON object SRS posts for `action`; `who` is a ConnAccess (state.py)."""
    b = {"server_id": server_id, "service_id": service_id, "action": action, "client_id": who.cid,
         "ip": who.ip, "vhost": who.vhost, "app": who.app}
    if action == "on_connect":
        b.update(stream=who.stream, param=who.param, tcUrl=who.tc_url, pageUrl=who.page_url)
    elif action == "on_close":
        b.update(send_bytes=int(send_bytes), recv_bytes=int(recv_bytes))
    elif action == "on_play":
        b.update(stream=who.stream, tcUrl=who.tc_url, param=who.param, pageUrl=who.page_url)
    else:       # on_publish, on_unpublish, on_stop
        b.update(tcUrl=who.tc_url, stream=who.stream, param=who.param)
    if action not in ("on_connect", "on_close"):
        b["stream_url"] = stream_url(who.vhost, who.app, who.stream)
        if stream_id:
            b["stream_id"] = stream_id
    return b


def judge(status: int, text: str) -> str | None:
    """None if SRS would take this answer as "allowed", else why not."""
    if status not in ALLOW_STATUSES:
        return f"HTTP status {status}"
    if not text:
        return "empty response"
    try:
        answer = json.loads(text)
    except ValueError:
        return f"not JSON: {text[:80]!r}"
    if not isinstance(answer, dict):
        if text.strip() == "0":
            return None
        return f"response number code {text[:80]!r}"
    code = answer.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        return f"response object has no integer code: {text[:80]!r}"
    if code != 0:
        return f"response code {code}"
    return None


class HookClient:
    """Posts hook bodies with aiohttp. One session per worker, opened at the first call (in the loop).

    Calls in flight are bounded per vhost (`http_hooks.max_inflight`, notifications included): a call waiting
    for a slot counts against its own timeout, so a flood of clients makes no one wait longer than that."""

    def __init__(self):
        self._session: aiohttp.ClientSession | None = None
        self._slots: dict[str, tuple[int, asyncio.Semaphore]] = {}     # vhost -> (its bound, its slots)
        self.in_flight = 0
        self.calls_total = 0
        self.refused_total = 0      # answers that refused, and failures (timeouts, errors)
        self.worst_ms = 0.0

    def _open(self) -> None:
        if self._session is None:
            # No pool-wide cap: the vhosts' slots bound the calls, hence the sockets.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                headers={"User-Agent": SERVER_NAME, "Content-Type": "application/json"})

    def _slots_for(self, vhost: str, bound: int) -> asyncio.Semaphore:
        """A reload that changes the bound gets new slots; the calls holding old ones finish on them."""
        held = self._slots.get(vhost)
        if held is None or held[0] != bound:
            held = self._slots[vhost] = (bound, asyncio.Semaphore(bound))
        return held[1]

    async def post(self, url: str, data: dict, timeout_ms: int, vhost: str = "", bound: int = 256) -> str | None:
        """Post one hook; None if the answer allows, else why not (never raises for the network's sake)."""
        self._open()
        slots = self._slots_for(vhost, bound)
        started = time.monotonic()
        self.calls_total += 1
        self.in_flight += 1
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                async with slots:
                    async with self._session.post(url, data=json.dumps(data)) as resp:
                        raw = await resp.content.read(MAX_ANSWER)
                        reason = judge(resp.status, raw.decode("utf-8", "replace"))
        except TimeoutError:
            reason = f"no answer within {timeout_ms} ms"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            reason = f"{type(e).__name__}: {e}".rstrip(": ")
        finally:
            self.in_flight -= 1
            self.worst_ms = max(self.worst_ms, (time.monotonic() - started) * 1000)
        if reason is not None:
            self.refused_total += 1
        return reason

    async def post_all(self, cid: str, action: str, urls: list[str], data: dict, timeout_ms: int,
                       vhost: str = "", bound: int = 256) -> str | None:
        """Each URL in order; the first refusal stops and refuses (SRS: `any refusal refuses`)."""
        for url in urls:
            reason = await self.post(url, data, timeout_ms, vhost, bound)
            if reason is not None:
                return f"http hook {action} {url} refused: {reason}"
            log.verbose(cid, f"http hook {action} ok, url={url}")
        return None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
