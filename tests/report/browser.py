"""A report page opened in a real browser: Debian's headless Chromium, driven by Playwright
(its own browser downloads are never used), every request but the page's own file
aborted, so a chart that needs the network fails to draw here as it would offline."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM_ENV = "FOLDRUNNER_CHROMIUM"
"""Path of the browser to use instead of ``chromium`` on PATH."""
RENDER_TIMEOUT_MS = 60_000


def chromium() -> str:
    """The browser's path; fails the test (never skips it) when there is none."""
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not path:
        pytest.fail("the report's browser tests need Chromium and found none: install Debian's "
                    "`chromium` package (apt-get install chromium; `./dev test` does so when run as "
                    f"root) or point {CHROMIUM_ENV} at a Chromium binary")
    return path


@dataclass
class Page:
    """What the browser saw of one report."""

    charts: list[dict[str, object]]
    """Per chart div: ``id``, ``svg`` (plotly's ``.main-svg`` count), ``canvas`` (WebGL
    canvases), ``gl`` (whether a trace needs WebGL), ``traces`` (traces drawn)."""
    drawn: str
    """``drawn`` once every chart's ``Plotly.newPlot`` resolved, ``failed`` if one failed."""
    errors: list[str] = field(default_factory=list)
    """Console errors and uncaught page errors."""
    blocked: list[str] = field(default_factory=list)
    """Requests that were aborted (anything but the page's own file)."""
    visible: str = ""
    """The text a reader sees (closed ``<details>`` left out)."""
    text: str = ""
    """All the page's text, closed ``<details>`` (log tails) included."""


class Browser:
    """One headless Chromium for many pages: ``with Browser() as b: b.open(path)``."""

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        path = chromium()
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        except BaseException:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._browser.close()
        finally:
            self._pw.stop()

    def open(self, path: Path) -> Page:
        """Load ``path`` with the network blocked; wait until its charts are drawn."""
        url = path.resolve().as_uri()
        errors: list[str] = []
        blocked: list[str] = []

        def route(r) -> None:  # type: ignore[no-untyped-def]
            if r.request.url == url:
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        page = self._browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.route("**/*", route)
            page.goto(url)
            page.wait_for_function("() => document.body && document.body.dataset.charts",
                                   timeout=RENDER_TIMEOUT_MS)
            charts = page.evaluate("""() => [...document.querySelectorAll('div.chart')].map(d => ({
                id: d.id,
                svg: d.querySelectorAll('.main-svg').length,
                canvas: d.querySelectorAll('canvas').length,
                gl: (d._fullData || []).some(t => /gl$|parcoords/.test(t.type)),
                traces: (d._fullData || []).length,
            }))""")
            return Page(
                charts=charts, drawn=page.evaluate("() => document.body.dataset.charts"),
                errors=errors, blocked=blocked, visible=page.inner_text("body"),
                text=page.evaluate("() => document.body.textContent"),
            )
        finally:
            page.close()


def assert_rendered(page: Page, expect: set[str] | None = None) -> None:
    """Every chart drew (SVG, plus a WebGL canvas where a trace needs one), nothing was
    fetched, no JavaScript error; ``expect``: chart ids that must be among them."""
    assert page.drawn == "drawn", page.errors
    assert page.errors == [], page.errors
    assert page.blocked == [], page.blocked
    assert page.charts, "no chart on the page"
    for c in page.charts:
        assert c["svg"] and c["traces"], c
        if c["gl"]:
            assert c["canvas"], c
    if expect is not None:
        missing = expect - {str(c["id"]) for c in page.charts}
        assert not missing, (missing, [c["id"] for c in page.charts])
