"""Rendered emails checked in a real browser: Debian's chromium driven through Playwright.

The browser is the system's `chromium` (`make test` installs it), never one Playwright downloads. A test writes
its page into a folder, serves the folder over HTTP (`serve_directory`), and reads back what Chromium made of it
(`inspect_page`): the links, the images and whether they loaded, the page's width against the viewport's, and a
full-page screenshot kept under `artifacts/screenshots/` for a person to look at.

Playwright lives in a thread of its own (`Chromium`). Its sync API runs an asyncio loop in a greenlet and leaves
that loop marked as running in its thread between calls: on the main thread, every async (anyio) test run after
the first browser test would fail with "Cannot run the event loop while another loop is running".
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from PIL import Image
from playwright.sync_api import Browser, Playwright, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_ENV = "SENDWISE_ARTIFACTS_DIR"
VIEWPORT_HEIGHT = 800

ColorScheme = Literal["light", "dark", "no-preference"]
T = TypeVar("T")

# What the page holds once loaded: every link and image in document order, and the widths that tell whether the
# reader has to scroll sideways (documentElement's clientWidth is the viewport less any vertical scrollbar).
_READ_PAGE = """() => ({
    links: [...document.querySelectorAll("a")].map(a => ({
        href: a.getAttribute("href"),
        text: a.innerText.replace(/\\s+/g, " ").trim(),
    })),
    images: [...document.querySelectorAll("img")].map(img => ({
        src: img.getAttribute("src"),
        alt: img.getAttribute("alt"),
        naturalWidth: img.naturalWidth,
        naturalHeight: img.naturalHeight,
        complete: img.complete,
    })),
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
    scripts: document.scripts.length,
    handlers: [...document.querySelectorAll("*")].filter(
        e => [...e.attributes].some(a => a.name.startsWith("on"))).length,
})"""


@dataclass(frozen=True)
class Link:
    """An `<a>`: its href as written in the HTML (None when it has none) and the text a reader sees."""

    href: str | None
    text: str


@dataclass(frozen=True)
class PageImage:
    """An `<img>`: src and alt as written (alt None when missing, "" when decorative), and what loading gave.

    A broken image is `complete` with a natural size of 0 by 0.
    """

    src: str | None
    alt: str | None
    natural_width: int
    natural_height: int
    complete: bool

    @property
    def loaded(self) -> bool:
        return self.complete and self.natural_width > 0


@dataclass(frozen=True)
class PageInspection:
    """What Chromium made of a page at one viewport width."""

    url: str
    links: tuple[Link, ...]
    images: tuple[PageImage, ...]
    scroll_width: int
    viewport_width: int
    screenshot: Path
    scripts: int = 0
    """`<script>` elements in the document."""
    event_handlers: int = 0
    """Elements with an `on...` attribute (onerror, onclick, ...)."""

    @property
    def scrolls_horizontally(self) -> bool:
        return self.scroll_width > self.viewport_width


def chromium_executable() -> str:
    """The path of the system's chromium; the test fails (it is not skipped) when there is none."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not on PATH: the browser tests drive Debian's chromium package. "
            "Install it with `apt-get install chromium` (`make test` and `make test-fast` do so when it is missing).",
            pytrace=False,
        )
    return path


class Chromium:
    """One headless chromium, driven through Playwright from a thread that does nothing else.

    `run(job)` calls `job(browser)` on that thread and returns what it returns (or raises what it raised): the
    Playwright objects a job makes must stay inside the job.
    """

    def __init__(self, executable: str) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        try:
            self._playwright, self._browser = self._thread.submit(_start, executable).result()
        except BaseException:
            self._thread.shutdown()
            raise

    def run(self, job: Callable[[Browser], T]) -> T:
        return self._thread.submit(job, self._browser).result()

    def close(self) -> None:
        try:
            self._thread.submit(_stop, self._playwright, self._browser).result()
        finally:
            self._thread.shutdown()


def _start(executable: str) -> tuple[Playwright, Browser]:
    """`--no-sandbox`: the tests run as root in containers, where Chromium's sandbox cannot start."""
    playwright = sync_playwright().start()
    try:
        return playwright, playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
    except BaseException:
        playwright.stop()
        raise


def _stop(playwright: Playwright, browser: Browser) -> None:
    try:
        browser.close()
    finally:
        playwright.stop()


@contextmanager
def launch_chromium() -> Iterator[Chromium]:
    """The system's chromium, headless, closed (with Playwright) on exit."""
    chromium = Chromium(chromium_executable())
    try:
        yield chromium
    finally:
        chromium.close()


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serves files without a log line per request (a missing image's 404 included)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(path: Path) -> Iterator[str]:
    """Serve `path` over HTTP on 127.0.0.1 on a free port, for as long as the block lasts; yields the base URL
    (with its trailing slash, so that `base + "page.html"` is a file in `path`)."""
    handler = functools.partial(_QuietHandler, directory=str(path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll: shutdown() waits for the serving loop to look up, half a second at the default.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name=f"serve {path}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def artifacts_dir() -> Path:
    """Where tests leave files for a person to look at: `$SENDWISE_ARTIFACTS_DIR`, else `artifacts/` at the
    repository root (ignored by git)."""
    configured = os.environ.get(ARTIFACTS_ENV)
    return Path(configured) if configured else REPO_ROOT / "artifacts"


def screenshots_dir() -> Path:
    """`screenshots/` under the artifacts folder, created when asked for."""
    folder = artifacts_dir() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def inspect_page(
    browser: Chromium, url: str, width: int, screenshot_path: Path, color_scheme: ColorScheme = "light"
) -> PageInspection:
    """Load `url` in a fresh context `width` CSS pixels wide, wait for `load` (every image loaded or failed),
    read its links, images and widths, and save a full-page PNG at `screenshot_path`.

    Any screenshot already at `screenshot_path` is removed first: the file there afterwards is this page's.
    """
    screenshot_path.parent.mkdir(parents=True, exist_ok=True)
    screenshot_path.unlink(missing_ok=True)
    found = browser.run(functools.partial(_read_page, url, width, screenshot_path, color_scheme))
    return PageInspection(
        url=url,
        links=tuple(Link(href=link["href"], text=link["text"]) for link in found["links"]),
        images=tuple(
            PageImage(
                src=image["src"],
                alt=image["alt"],
                natural_width=image["naturalWidth"],
                natural_height=image["naturalHeight"],
                complete=image["complete"],
            )
            for image in found["images"]
        ),
        scroll_width=found["scrollWidth"],
        viewport_width=found["clientWidth"],
        screenshot=screenshot_path,
        scripts=found["scripts"],
        event_handlers=found["handlers"],
    )


def _read_page(
    url: str, width: int, screenshot_path: Path, color_scheme: ColorScheme, browser: Browser
) -> dict[str, Any]:
    """`inspect_page`'s part on the browser's thread: what `_READ_PAGE` finds, once the screenshot is saved."""
    context = browser.new_context(viewport={"width": width, "height": VIEWPORT_HEIGHT}, color_scheme=color_scheme)
    try:
        page = context.new_page()
        response = page.goto(url, wait_until="load")
        if response is None or not response.ok:
            status = "no response" if response is None else f"HTTP {response.status}"
            raise AssertionError(f"{url} did not load ({status}): is the page written into the served folder?")
        found: dict[str, Any] = page.evaluate(_READ_PAGE)
        page.screenshot(path=screenshot_path, full_page=True)
    finally:
        context.close()
    return found


def write_png(path: Path, width: int, height: int, rgb: tuple[int, int, int]) -> Path:
    """A real PNG of one colour, `width` by `height` pixels, at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), rgb).save(path, format="PNG")
    return path
