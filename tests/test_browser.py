"""The browser helper (tests/browser.py) sees what a reader would, and says so when something is wrong.

Each check has a page that passes and one that fails it: an image that loads and one that does not, a page that
fits 375 pixels and one that scrolls sideways, a light and a dark rendering. Every test here takes the session's
`browser` and is therefore marked `integration` (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests import browser as helper
from tests.browser import (
    Chromium,
    ColorScheme,
    PageInspection,
    chromium_executable,
    inspect_page,
    screenshots_dir,
    serve_directory,
    write_png,
)

PHONE_WIDTH = 375
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def page(body: str, style: str = "") -> str:
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<style>body {{ margin: 0; font: 16px sans-serif; }} {style}</style></head><body>{body}</body></html>"
    )


def screenshot_for(request: pytest.FixtureRequest, name: str) -> Path:
    return screenshots_dir() / "test_browser" / f"{request.node.name}-{name}.png"


def inspect(
    browser: Chromium,
    folder: Path,
    html: str,
    request: pytest.FixtureRequest,
    name: str = "page",
    color_scheme: ColorScheme = "light",
) -> PageInspection:
    """`html` written into `folder` as `name`.html, served, and inspected at a phone's width."""
    (folder / f"{name}.html").write_text(html, encoding="utf-8")
    with serve_directory(folder) as base:
        return inspect_page(browser, f"{base}{name}.html", PHONE_WIDTH, screenshot_for(request, name), color_scheme)


def test_an_image_served_locally_loads_and_its_alt_is_read(
    browser: Chromium, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    write_png(tmp_path / "img" / "offer.png", 120, 80, (200, 40, 40))
    found = inspect(browser, tmp_path, page('<img src="img/offer.png" alt="Trail shoes, 20% off">'), request)

    (image,) = found.images
    assert image.src == "img/offer.png"
    assert image.alt == "Trail shoes, 20% off"
    assert (image.natural_width, image.natural_height) == (120, 80)
    assert image.complete and image.loaded


def test_an_image_pointing_at_a_missing_file_is_seen_broken(
    browser: Chromium, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    write_png(tmp_path / "present.png", 10, 10, (0, 0, 0))
    html = page('<img src="present.png" alt="here"><img src="missing.png" alt="gone"><img src="present.png">')
    found = inspect(browser, tmp_path, html, request)

    present, missing, no_alt = found.images
    assert present.loaded
    assert missing.complete, "a failed image is complete once `load` has fired"
    assert (missing.natural_width, missing.natural_height) == (0, 0)
    assert not missing.loaded
    assert missing.alt == "gone"
    assert no_alt.alt is None, "a missing alt reads as None, not as an empty (decorative) one"


def test_a_links_href_is_read_back_as_written_with_its_query_string(
    browser: Chromium, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    html = page(
        '<a href="https://shop.example/of-7?utm_source=email&amp;c=c-1">  Shop the\n  trail shoes </a>'
        '<a href="https://shop.example/unsubscribe?c=c-1&amp;t=tok">Unsubscribe</a><a name="top">anchor</a>'
    )
    found = inspect(browser, tmp_path, html, request)

    assert [(link.href, link.text) for link in found.links] == [
        ("https://shop.example/of-7?utm_source=email&c=c-1", "Shop the trail shoes"),
        ("https://shop.example/unsubscribe?c=c-1&t=tok", "Unsubscribe"),
        (None, "anchor"),
    ]


def test_a_page_wider_than_a_phone_is_caught_and_one_that_fits_is_not(
    browser: Chromium, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fluid = page('<table style="width:100%"><tr><td>Hello</td></tr></table>')
    fits = inspect(browser, tmp_path, fluid, request, "fits")
    assert fits.viewport_width == PHONE_WIDTH
    assert fits.scroll_width == PHONE_WIDTH
    assert not fits.scrolls_horizontally

    wide = inspect(browser, tmp_path, page('<table width="600"><tr><td>Hello</td></tr></table>'), request, "wide")
    assert wide.viewport_width == PHONE_WIDTH
    assert wide.scroll_width == 600
    assert wide.scrolls_horizontally


def test_screenshots_are_full_page_pngs_on_disk_in_the_colour_scheme_asked_for(
    browser: Chromium, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    style = "html { background: #ffffff; } @media (prefers-color-scheme: dark) { html { background: #000000; } }"
    html = page('<div style="height:2000px">Tall</div>', style)
    light = inspect(browser, tmp_path, html, request, "light")
    dark = inspect(browser, tmp_path, html, request, "dark", color_scheme="dark")
    light_pixel, light_size = _first_pixel_and_size(light.screenshot)
    dark_pixel, dark_size = _first_pixel_and_size(dark.screenshot)

    assert light.screenshot.is_relative_to(screenshots_dir())
    assert light_size == dark_size == (PHONE_WIDTH, 2000), "the whole page, not the 800-pixel viewport"
    assert light_pixel == (255, 255, 255)
    assert dark_pixel == (0, 0, 0)


def _first_pixel_and_size(path: Path) -> tuple[object, tuple[int, int]]:
    """The top-left pixel and the size of the PNG at `path`, which must be a non-empty PNG file."""
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[: len(PNG_SIGNATURE)] == PNG_SIGNATURE
    with Image.open(path) as picture:
        return picture.convert("RGB").getpixel((0, 0)), picture.size


def test_a_page_that_is_not_there_fails_the_inspection(
    browser: Chromium, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with serve_directory(tmp_path) as base, pytest.raises(AssertionError, match="HTTP 404"):
        inspect_page(browser, base + "never-written.html", PHONE_WIDTH, screenshot_for(request, "none"))


def test_an_event_loop_still_runs_on_this_thread_once_the_browser_has_worked(
    browser: Chromium, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The async tests run on the main thread after the browser tests: Playwright must not hold it."""
    inspect(browser, tmp_path, page("<p>Hello</p>"), request)
    assert browser.run(lambda chromium: chromium.is_connected())

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(answer()) == 42


def test_write_png_writes_a_picture_of_the_size_and_colour_asked_for(tmp_path: Path) -> None:
    path = write_png(tmp_path / "a.png", 7, 3, (10, 20, 30))
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.size == (7, 3)
        assert picture.convert("RGB").getpixel((6, 2)) == (10, 20, 30)


def test_the_served_folder_is_gone_once_the_block_ends(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello", encoding="utf-8")
    with serve_directory(tmp_path) as base:
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(base + "hello.txt", timeout=5) as answer:
            assert answer.read() == b"hello"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "hello.txt", timeout=5)


def test_screenshots_go_where_sendwise_artifacts_dir_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(helper.ARTIFACTS_ENV, raising=False)
    assert screenshots_dir() == helper.REPO_ROOT / "artifacts" / "screenshots"
    monkeypatch.setenv(helper.ARTIFACTS_ENV, str(tmp_path / "elsewhere"))
    assert screenshots_dir() == tmp_path / "elsewhere" / "screenshots"
    assert screenshots_dir().is_dir()


def test_a_missing_chromium_fails_the_test_and_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helper.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install chromium.*make test"):
        chromium_executable()
