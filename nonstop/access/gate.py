"""Access: the worker's one entry point for access control. Connections ask it once per publish or play;
it answers at once (no rule, or a rule that decides without I/O) or holds the request while the hook server is
asked, without blocking anyone else.

The checks, in order, for a publish or play request (the first refusal wins):
  1. refer (`refer.all`, then `refer.publish|play`) on the RTMP pageUrl or the HTTP Referer;
  2. security allow/deny rules on the client's IP;
  3. signed URL (`signed_url`), when required for this action;
  4. http_hooks: on_connect (RTMP, once per connection), then on_publish or on_play, each URL in order.
SRS asks on_connect before its security check; nonstop runs every check that needs no I/O first, so a client
refused by a rule costs the hook server nothing.

HLS viewers (hls_ctx sessions) are checked once per session, not per connection: see the HLS section below and
README's "HLS viewers".

Who waits (the invariant): only the asking connection. An RTMP connection stops reading while its verdict is
pending, so its media waits (a player is not attached to its source until allowed); the request and anything
the client sent with it are held and replayed when allowed. An HTTP-FLV play gets its 200 only when allowed.

Notifications (on_unpublish, on_stop, on_close) are owed once per grant (state.py) and sent when the client
stops or leaves, to the URLs of the vhost's *current* config; their failures are logged and ignored, as SRS
does. A connection that leaves while its question is in flight is settled when the answer comes, so the hook
server always hears on_publish before on_unpublish and on_close last.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from nonstop.access import hooks as wire
from nonstop.access import signed
from nonstop.access.hooks import HookClient
from nonstop.access.rules import refer_check, security_check
from nonstop.access.state import ConnAccess
from nonstop.log import log
from nonstop.protocol import rtmp

PUBLISH = "publish"
PLAY = "play"
# A quit waits this much longer than the longest hook timeout for the last notifications, then goes.
STOP_GRACE_S = 0.2
# An answer that comes while its connection is being handed over waits for the handover to end, checking this
# often (the handover itself is bounded: transfer.py).
HANDOVER_POLL_S = 0.01


def _query_param(query: str, name: str) -> str | None:
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return None


class Access:
    def __init__(self, worker):
        self.worker = worker
        self.hooks = HookClient()
        self.clock = time.time          # for signed URLs' expiry
        self._cleared: dict[str, object] = {}       # cid -> the RTMP request that was allowed
        self._asking: dict[str, asyncio.Task] = {}  # cid -> its question in flight
        self._decided: dict[str, tuple] = {}        # cid -> (request, refusal) answered on the old worker
        self._tasks: set[asyncio.Task] = set()      # notifications in flight
        self._hls_asking: dict[str, asyncio.Task] = {}  # HTTP cid -> an HLS session's question in flight
        self.allowed_total = 0
        self.refused_total = 0

    # ----- the checks that need no I/O ------------------------------------------------------------------

    def _rules(self, vhost, action: str, who, queries: list[str]) -> str | None:
        ref = vhost.refer
        if ref.enabled:
            for name, domains in (("all", ref.all), (action, getattr(ref, action))):
                if not refer_check(who.page_url, domains):
                    return f"refer: page URL {who.page_url!r} matches no refer.{name} domain {domains}"
        if vhost.security.enabled:
            reason = security_check(vhost.security.rules, action, who.ip)
            if reason is not None:
                return reason
        sig = vhost.signed_url
        if sig.enabled and getattr(sig, action):
            token = next((t for t in (_query_param(q, signed.PARAM) for q in queries if q) if t is not None), None)
            return signed.check(sig.keys, token, action, vhost.name, who.app, who.stream, who.ip, self.clock())
        return None

    # ----- RTMP -------------------------------------------------------------------------------------------

    def rtmp_request(self, conn, action: str, event) -> bool:
        """A publish or play request. False: go on now. True: held here (asking) or refused."""
        if self._cleared.get(conn.cid) is event:
            return False        # allowed already (asked again by a cluster's routing, which replays it)
        decided = self._decided.pop(conn.cid, None)
        if decided is not None and decided[0] is event:
            self._refuse(conn, action, event, decided[1])      # refused on the old worker, as it was handed over
            return True
        vhost, who, session = conn.vhost, conn.access, conn.session
        query = event.query or session.query
        if who.stream != event.name:
            who.stream_id = ""
        who.cid, who.ip, who.vhost, who.app, who.tc_url = conn.cid, conn.ip, vhost.name, session.app, session.tc_url
        who.stream, who.param, who.page_url = event.name, f"?{query}" if query else "", conn.page_url
        reason = self._rules(vhost, action, who, [event.query, session.query])
        if reason is not None:
            self._refuse(conn, action, event, reason)
            return True
        hooks = vhost.http_hooks
        if not hooks.enabled:
            who.granted = action
            return False
        connect_urls = None if who.connected else hooks.on_connect
        urls = hooks.on_publish if action == PUBLISH else hooks.on_play
        if not connect_urls and not urls:
            self._grant(who, action, connection=True)
            return False
        who.pending = {"action": action, "event": asdict(event)}
        conn.hold_for_access()
        self._ask(conn, action, event, vhost, connect_urls, urls)
        return True

    def pending_request(self, conn):
        """The request a handed-over connection was waiting on, for the new worker to replay: with the verdict
        if the old worker got it before the snapshot, else to be asked again (the old one's answer is lost)."""
        pending, conn.access.pending = conn.access.pending, None
        if not pending:
            return None
        cls = rtmp.PublishRequest if pending["action"] == PUBLISH else rtmp.PlayRequest
        event = cls(**pending["event"])
        verdict = pending.get("verdict")
        if verdict == "allowed":
            self._cleared[conn.cid] = event
            log.trace(conn.cid, f"{pending['action']} was allowed as it was handed over: going on")
        elif verdict:
            self._decided[conn.cid] = (event, verdict)
        else:
            log.trace(conn.cid, f"{pending['action']} was waiting for its verdict when handed over: asking again")
        return event

    # ----- HTTP-FLV ---------------------------------------------------------------------------------------

    def flv_request(self, conn, method: str, vhost, app: str, stream: str) -> bool:
        """An HTTP-FLV play. False: go on now. True: held here (asking) or refused (403)."""
        who = conn.access
        if who.granted == PLAY:
            return False        # a play allowed once (replayed after an upgrade's wait or a cluster's check)
        if conn.cid in self._asking:
            return True         # a pipelined second request while the first is asked: it gets nothing
        who.cid, who.ip, who.vhost, who.app, who.stream = conn.cid, conn.ip, vhost.name, app, stream
        # SRS's HTTP request as a hook sees it (SrsHttpMessage::to_request).
        who.tc_url, who.param = f"rtmp://{vhost.name}/{app}", f"?{conn.query}" if conn.query else ""
        who.page_url = conn.headers.get("referer", "")
        request = (method, vhost, app, stream)
        reason = self._rules(vhost, PLAY, who, [conn.query])
        if reason is not None:
            self._refuse(conn, PLAY, request, reason)
            return True
        hooks = vhost.http_hooks
        if not hooks.enabled:
            who.granted = PLAY
            return False
        if not hooks.on_play:
            self._grant(who, PLAY)
            return False
        self._ask(conn, PLAY, request, vhost, None, hooks.on_play)
        return True

    # ----- HLS (nonstop/server/hls_http.py) -------------------------------------------------------------
    # A viewer is a session (hls_ctx), not a connection: a new session is checked like a play, once, and its
    # verdict lives in the session's own ConnAccess (client_id = the session id, as SRS's hls_ctx), never in
    # the HTTP connection's, which may carry many sessions' requests. The session owes one on_stop, sent when
    # it ends (expiry, kick, or a request allowed after its connection left).

    @staticmethod
    def hls_guarded(vhost) -> bool:
        """Whether access control applies to HLS requests of this vhost (then an hls_ctx is no bearer:
        an unknown one is checked like a new session)."""
        sig = vhost.signed_url
        return bool(vhost.refer.enabled or vhost.security.enabled or (sig.enabled and sig.play)
                    or vhost.http_hooks.enabled)

    def _hls_who(self, conn, vhost, app: str, stream: str, session_id: str, query: str):
        who = ConnAccess()
        who.cid, who.ip, who.vhost, who.app, who.stream = session_id, conn.ip, vhost.name, app, stream
        who.tc_url, who.param = f"rtmp://{vhost.name}/{app}", f"?{query}" if query else ""
        who.page_url = conn.headers.get("referer", "")
        return who

    def hls_rules(self, conn, vhost, app: str, stream: str, query: str) -> bool:
        """An HLS request checked on its own (hls_ctx off, or a segment not tied to a session): the rules
        that need no I/O. With on_play hooks it is refused: a hook is asked once per viewer, which needs a
        session (hls_ctx and hls_ts_ctx on). True: refused (403 sent)."""
        who = self._hls_who(conn, vhost, app, stream, conn.cid, query)
        reason = self._rules(vhost, PLAY, who, [query])
        if reason is None and vhost.http_hooks.enabled and vhost.http_hooks.on_play:
            reason = "http_hooks on_play: an HLS viewer is asked once per session, which needs hls_ctx on " \
                     "(and hls_ts_ctx on for its segments)"
        if reason is not None:
            self._refuse(conn, "hls play", None, reason)
            return True
        return False

    def asking(self, cid: str) -> bool:
        """Whether connection `cid` waits for a verdict (an HLS one included): not an idle connection."""
        return cid in self._asking or cid in self._hls_asking

    def hls_refuse(self, conn, reason: str) -> None:
        self._refuse(conn, "hls play", None, reason)

    def hls_request(self, conn, vhost, app: str, stream: str, session_id: str, query: str, resume):
        """A new HLS session `session_id`: checked like a play. Returns its ConnAccess when allowed now;
        None when refused (403 sent) or asked (the connection waits; `resume(who)` is called once allowed)."""
        if conn.cid in self._hls_asking:
            return None     # a pipelined request while the first is asked: it gets nothing
        who = self._hls_who(conn, vhost, app, stream, session_id, query)
        reason = self._rules(vhost, PLAY, who, [query])
        if reason is not None:
            self._refuse(conn, "hls play", None, reason)
            return None
        hooks = vhost.http_hooks
        if not hooks.enabled:
            return who
        if not hooks.on_play:
            self._grant(who, PLAY)
            return who
        task = asyncio.get_running_loop().create_task(self._hls_question(conn, who, vhost, resume))
        self._hls_asking[conn.cid] = task
        return None

    async def _hls_question(self, conn, who, vhost, resume) -> None:
        hooks = vhost.http_hooks
        try:
            reason = await self.hooks.post_all(who.cid, "on_play", list(hooks.on_play), self._body("on_play", who),
                                               hooks.timeout, vhost.name, hooks.max_inflight)
            if reason is None:
                self._grant(who, PLAY)
            if conn.closed:
                log.trace(who.cid, f"hls play answered after the client left: "
                                   f"{'allowed' if reason is None else 'refused'}")
                self.hls_ended(who)
                return
            if reason is not None:
                self._refuse(conn, "hls play", None, reason)
                return
            self.allowed_total += 1
            resume(who)
        except Exception as e:  # a bug here must cost one client, not the worker
            log.error(conn.cid, f"hls play verdict failed: {e!r}")
            conn.close("access check failed")
            self.hls_ended(who)
        finally:
            self._hls_asking.pop(conn.cid, None)

    def hls_ended(self, who) -> None:
        """An HLS session ended (expired, kicked, or never served): its on_stop, once."""
        if who is not None and who.playing:
            who.playing = False
            self._notify(who, "on_stop")

    # ----- asking -----------------------------------------------------------------------------------------

    @staticmethod
    def _grant(who, action: str, connection: bool = False) -> None:
        """Allowed with hooks on: what the hook server is now owed (`connection`: an RTMP on_close too)."""
        who.granted = action
        setattr(who, "publishing" if action == PUBLISH else "playing", True)
        if connection:
            who.connected = True

    def _ask(self, conn, action, request, vhost, connect_urls, urls) -> None:
        task = asyncio.get_running_loop().create_task(self._question(conn, action, request, vhost, connect_urls,
                                                                     urls))
        self._asking[conn.cid] = task

    async def _question(self, conn, action, request, vhost, connect_urls, urls) -> None:
        who, timeout, bound = conn.access, vhost.http_hooks.timeout, vhost.http_hooks.max_inflight
        try:
            reason = None
            if connect_urls is not None:
                if connect_urls:
                    reason = await self.hooks.post_all(conn.cid, "on_connect", connect_urls,
                                                       self._body("on_connect", who), timeout, vhost.name, bound)
                who.connected = True        # asked: one on_close is owed, whatever the answer
            hook = "on_publish" if action == PUBLISH else "on_play"
            gone = conn.closed or getattr(conn, "handed_over", False)
            if reason is None and urls and not gone:
                if conn.kind == "rtmp":     # SRS's statistics know the stream before the hook: so does nonstop
                    self.worker.fetch_source(vhost, who.app, who.stream, time.monotonic())
                reason = await self.hooks.post_all(conn.cid, hook, urls, self._body(hook, who), timeout,
                                                   vhost.name, bound)
            if reason is None and not gone:
                self._grant(who, action)
            if conn.handing_over and not conn.closed and who.pending is not None:
                # Mid-handover: a snapshot taken from now on carries the verdict, and the new worker goes on
                # with it; if the handover is cancelled, it is acted on here.
                who.pending["verdict"] = "allowed" if reason is None else reason
                while conn.handing_over and not conn.closed:
                    await asyncio.sleep(HANDOVER_POLL_S)
            if getattr(conn, "handed_over", False):
                return      # the new worker has the connection, its owed notifications and the question
            who.pending = None
            if conn.closed:
                log.trace(conn.cid, f"{action} answered after the client left: "
                                    f"{'allowed' if reason is None else 'refused'}")
                self._settle(conn)
                return
            if reason is not None:
                self._refuse(conn, action, request, reason)
                return
            self.allowed_total += 1
            self._cleared[conn.cid] = request
            conn.resume_access(request)
        except Exception as e:  # a bug here must cost one client, not the worker
            log.error(conn.cid, f"{action} verdict failed: {e!r}")
            self._asking.pop(conn.cid, None)    # so that the close settles what is owed
            conn.close("access check failed")
        finally:
            self._asking.pop(conn.cid, None)

    def _refuse(self, conn, action: str, request, reason: str) -> None:
        self.refused_total += 1
        log.warn(conn.cid, f"{action} refused for {conn.ip}: {reason}")
        conn.refuse_access(action, request, reason)

    # ----- notifications ----------------------------------------------------------------------------------

    def left(self, conn, action: str) -> None:
        """An RTMP client stopped publishing or playing (it may go on with another stream)."""
        who = conn.access
        if action == PUBLISH and who.publishing:
            who.publishing = False
            self._notify(who, "on_unpublish")
        elif action == PLAY and who.playing:
            who.playing = False
            self._notify(who, "on_stop")

    def closed(self, conn) -> None:
        """The client is gone (a connection handed over never gets here): send what it is owed, once."""
        self._cleared.pop(conn.cid, None)
        self._decided.pop(conn.cid, None)
        if conn.cid in self._asking:
            return      # its question settles it when answered
        self._settle(conn)

    def _settle(self, conn) -> None:
        who = conn.access
        self.left(conn, PUBLISH)
        self.left(conn, PLAY)
        if who.connected:
            who.connected = False
            self._notify(who, "on_close", send_bytes=conn.send_bytes, recv_bytes=conn.recv_bytes)

    def _body(self, action: str, who, **extra) -> dict:
        source = self.worker.registry.get(who.vhost, who.app, who.stream) if who.stream and not who.stream_id \
            else None
        if source is not None:
            who.stream_id = source.id       # the first one known stays, as the client's other ids do
        if not who.server_id:
            who.server_id, who.service_id = self.worker.server_id, self.worker.service_id
        return wire.body(action, who, who.server_id, who.service_id, stream_id=who.stream_id, **extra)

    def _notify(self, who, action: str, **extra) -> None:
        vhost = self.worker.config.vhosts.get(who.vhost)
        if vhost is None or not vhost.http_hooks.enabled or not getattr(vhost.http_hooks, action):
            return
        hooks = vhost.http_hooks
        task = asyncio.get_running_loop().create_task(
            self._tell(who.cid, action, list(getattr(hooks, action)), self._body(action, who, **extra), hooks.timeout,
                       vhost.name, hooks.max_inflight))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell(self, cid: str, action: str, urls: list[str], data: dict, timeout: int, vhost: str,
                    bound: int) -> None:
        for url in urls:        # every URL is told, whatever the others answer (SRS ignores these failures)
            reason = await self.hooks.post(url, data, timeout, vhost, bound)
            if reason is not None:
                log.warn(cid, f"http hook {action} {url} failed (ignored): {reason}")
            else:
                log.verbose(cid, f"http hook {action} ok, url={url}")

    # ----- quitting ---------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Wait for the notifications in flight, at most the longest hook timeout, then close the client."""
        tasks = [*self._tasks, *self._asking.values(), *self._hls_asking.values()]
        if tasks:
            longest = max((v.http_hooks.timeout for v in self.worker.config.vhosts.values()), default=0)
            done, pending = await asyncio.wait(tasks, timeout=longest / 1000 + STOP_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                log.warn("access", f"{len(pending)} hook calls still unanswered at quit; abandoned")
        await self.hooks.close()
