"""A headless Chromium driven by the DevTools protocol (CDP) over a websocket, for the browser tests.

Debian's `chromium` runs headless with a fresh profile; this module speaks just enough CDP for the tests:
open a page, evaluate JavaScript, wait for a condition, take a screenshot, and collect the page's console
errors and uncaught exceptions. It uses aiohttp (a dependency of nonstop) on a loop of its own, in a thread, so
the tests stay plain synchronous pytest functions. Nothing is downloaded: no browser build of its own.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from tests.helpers import stop_proc

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
         "--remote-debugging-port=0", "--remote-allow-origins=*")
DEVTOOLS_LINE = re.compile(r"DevTools listening on (ws://\S+)")
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 20.0


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process and its browser-level websocket. Use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 800):
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="nonstop-chromium-")
        self.proc: subprocess.Popen | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cdp", daemon=True)
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.listeners: dict[str, list] = {}      # sessionId -> [callback(method, params)]
        self.session = None
        self.ws = None
        self.pages: list[Page] = []
        self.reader = None

    # ----- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> "Browser":
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={self.width},{self.height}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        url = self._devtools_url()
        self.thread.start()
        self._run(self._connect(url), START_TIMEOUT_S)
        return self

    def _devtools_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            m = DEVTOOLS_LINE.search(line)
            if m:
                # Keep draining stderr so chromium never blocks on a full pipe.
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return m.group(1)
        self.proc.kill()
        raise CdpError("chromium did not print its DevTools address:\n" + "".join(seen[-20:]))

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.thread.is_alive():
            try:
                self._run(self._disconnect(), 5)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if self.proc is not None and self.proc.poll() is None:
            stop_proc(self.proc, sig=signal.SIGTERM)
        shutil.rmtree(self.profile, ignore_errors=True)

    # ----- the websocket ---------------------------------------------------------------------------------

    def _run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self, url: str) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=0)
        self.reader = asyncio.ensure_future(self._read())

    async def _disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self.pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(CdpError(f"{data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                for callback in self.listeners.get(data.get("sessionId", ""), []):
                    callback(data["method"], data.get("params", {}))
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(CdpError("the DevTools connection closed"))

    async def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        msg_id = next(self.ids)
        fut = self.loop.create_future()
        self.pending[msg_id] = fut
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        return await fut

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = CALL_TIMEOUT_S) -> dict:
        return self._run(self._call(method, params, session), timeout)

    # ----- pages -------------------------------------------------------------------------------------------

    def new_page(self) -> "Page":
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        self.pages.append(page)
        self.loop.call_soon_threadsafe(self.listeners.setdefault(session, []).append, page._on_event)
        for domain in ("Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return page


    def close_pages(self) -> None:
        """Close every tab (a tab left open would go on playing and polling in the background)."""
        while self.pages:
            self.pages.pop().close()


class Page:
    """One tab. `errors` collects console errors, uncaught exceptions and failed loads, as text."""

    def __init__(self, browser: Browser, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session
        self.errors: list[str] = []
        self.messages: list[str] = []

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.messages.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                self.errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.errors.append(f"uncaught: {exc.get('description') or details.get('text')}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())

    def call(self, method: str, params: dict | None = None, timeout: float = CALL_TIMEOUT_S) -> dict:
        return self.browser.call(method, params, self.session, timeout)

    def close(self) -> None:
        try:
            self.browser.call("Target.closeTarget", {"targetId": self.target}, timeout=5)
        except (CdpError, TimeoutError):
            pass

    def goto(self, url: str, timeout: float = CALL_TIMEOUT_S) -> None:
        self.call("Page.navigate", {"url": url}, timeout)
        self.wait_for("document.readyState === 'complete'", timeout, what=f"{url} to load")

    def eval(self, expression: str, timeout: float = CALL_TIMEOUT_S):
        """The value of a JavaScript expression (awaited if it is a promise), as JSON."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(f"{expression!r} threw: "
                           f"{details.get('exception', {}).get('description') or details.get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, interval: float = 0.1, what: str = ""):
        """Poll a JavaScript expression until it is truthy; its value, or AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or expression}; "
                                     f"page errors: {self.errors}")
            time.sleep(interval)

    def click(self, selector: str) -> None:
        found = self.eval(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                          f" if (!el) return false; el.click(); return true; }})()")
        if not found:
            raise AssertionError(f"no element {selector!r} to click")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
