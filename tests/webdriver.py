"""A small W3C WebDriver client for the browser tests: Debian's chromedriver driving Debian's Chromium.

Only what the tests use: open a page, find elements, type, click, read text, run a script, take a
screenshot, all with an `eventually` wait instead of sleeps. One `Driver` (one chromedriver process)
serves several `Browser`s, each a separate Chromium with its own profile: its own cookies, its own
person signed in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
T = TypeVar("T")


def available() -> str | None:
    """None when Chromium and chromedriver are installed, else why the browser tests cannot run."""
    missing = [name for name in (CHROMIUM, CHROMEDRIVER) if not Path(name).exists()]
    return f"not installed: {', '.join(missing)} (apt-get install chromium chromium-driver)" if missing else None


class WebDriverError(AssertionError):
    pass


class Browser:
    def __init__(self, http: aiohttp.ClientSession, base: str, session_id: str) -> None:
        self._http = http
        self._base = f"{base}/session/{session_id}"

    async def _cmd(self, method: str, path: str, body: Any = None) -> Any:
        async with self._http.request(method, self._base + path, json=body) as reply:
            payload = await reply.json()
        if reply.status >= 400:
            raise WebDriverError(f"{method} {path}: {payload['value'].get('message', payload)}")
        return payload["value"]

    async def open(self, url: str) -> None:
        await self._cmd("POST", "/url", {"url": url})

    async def find(self, css: str) -> str | None:
        found = await self._cmd("POST", "/elements", {"using": "css selector", "value": css})
        return found[0][_ELEMENT] if found else None

    async def element(self, css: str, timeout_s: float = 20.0) -> str:
        return await eventually(lambda: self.find(css), timeout_s, f"no element {css!r}")

    async def type(self, css: str, text: str) -> None:
        element = await self.element(css)
        await self._cmd("POST", f"/element/{element}/clear", {})
        await self._cmd("POST", f"/element/{element}/value", {"text": text})

    async def click(self, css: str) -> None:
        await self._cmd("POST", f"/element/{await self.element(css)}/click", {})

    async def select(self, css: str, value: str) -> None:
        await self.run("const s = document.querySelector(arguments[0]); s.value = arguments[1];"
                       " s.dispatchEvent(new Event('change'));", css, value)

    async def text(self, css: str) -> str:
        element = await self.element(css)
        return str(await self._cmd("GET", f"/element/{element}/text"))

    async def run(self, script: str, *args: Any) -> Any:
        return await self._cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    async def run_async(self, script: str, *args: Any) -> Any:
        """`script` gets a callback as its last argument and calls it with the result."""
        return await self._cmd("POST", "/execute/async", {"script": script, "args": list(args)})

    async def fetch(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> int:
        """A request from the page itself, with its cookies: the status the API answers."""
        return int(await self.run_async(
            "const [m, p, b, h, done] = arguments; fetch(p, {method: m, headers: Object.assign("
            "{'Content-Type': 'application/json'}, h), body: b === null ? undefined : JSON.stringify(b)})"
            ".then(r => done(r.status), e => done(-1));", method, path, body, headers or {}))

    async def wait_text(self, css: str, want: str, timeout_s: float = 20.0) -> str:
        async def check() -> str | None:
            element = await self.find(css)
            if element is None:
                return None
            try:
                text = str(await self._cmd("GET", f"/element/{element}/text"))
            except WebDriverError as exc:  # redrawn live between finding and reading it: look again
                if "stale element" in str(exc):
                    return None
                raise
            return text if want in text else None

        return await eventually(check, timeout_s, f"{css!r} never showed {want!r}")

    async def url(self) -> str:
        return str(await self._cmd("GET", "/url"))

    async def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(await self._cmd("GET", "/screenshot")))

    async def resize(self, *, phone: bool) -> None:
        """The viewport of a phone (360 x 740 CSS pixels) or a desktop (1280 x 800)."""
        width, height = (360, 740) if phone else (1280, 800)
        await self._cmd("POST", "/window/rect", {"width": width, "height": height})
        inner = await self.run("return [innerWidth, innerHeight]")
        await self._cmd("POST", "/window/rect", {"width": width + width - inner[0],
                                                 "height": height + height - inner[1]})

    async def fetch_text(self, path: str) -> tuple[int, str]:
        status, text = await self.run_async(
            "const [p, done] = arguments; fetch(p).then(async r => done([r.status, await r.text()]),"
            " e => done([-1, String(e)]));", path)
        return int(status), str(text)

    async def quit(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, WebDriverError):
            await self._cmd("DELETE", "")


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Driver:
    """A chromedriver process; `browser(phone=True)` starts a Chromium at 360 x 740 CSS pixels."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self._http = http
        self._base = base
        self._browsers: list[Browser] = []
        self._profiles: list[tempfile.TemporaryDirectory[str]] = []

    async def browser(self, *, phone: bool) -> Browser:
        """A new Chromium with its own profile, its viewport 360 x 740 (phone) or 1280 x 800."""
        profile = tempfile.TemporaryDirectory(prefix="hogx-chromium-", ignore_cleanup_errors=True)
        self._profiles.append(profile)
        options: dict[str, Any] = {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--user-data-dir={profile.name}", "--window-size=1280,900", "--lang=zh-CN"],
        }
        body = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        async with self._http.post(self._base + "/session", json=body) as reply:
            payload = await reply.json()
        if reply.status >= 400:
            raise WebDriverError(f"no browser session: {payload}")
        browser = Browser(self._http, self._base, payload["value"]["sessionId"])
        self._browsers.append(browser)
        await browser.resize(phone=phone)
        return browser

    async def close(self) -> None:
        await asyncio.gather(*(b.quit() for b in self._browsers))
        for profile in self._profiles:
            profile.cleanup()


@contextlib.asynccontextmanager
async def chromedriver() -> AsyncIterator[Driver]:
    """A chromedriver and the browsers it opens, all gone at the exit, a failed test's too: its browsers
    are closed while the HTTP session to the driver is still open, and the driver runs in a process
    group of its own, killed whole, so no orphaned Chromium keeps sockets to the exchange under test."""
    port = _free_port()
    process = subprocess.Popen([CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                try:
                    async with http.get(base + "/status") as reply:
                        return reply.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, 15.0, "chromedriver did not start")
            driver = Driver(http, base)
            try:
                yield driver
            finally:
                with contextlib.suppress(Exception):
                    await driver.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
