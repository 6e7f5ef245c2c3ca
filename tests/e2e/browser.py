"""Headless Debian Chromium driven by Playwright (never a downloaded browser): open a page, collect console errors."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--headless=new", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def browser_page(width: int = 1400, height: int = 2400):
    """(page, errors): errors collects console errors and uncaught page exceptions."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def chart_points(page, chart_id: str) -> int:
    """Data points Plotly drew in a chart (markers, line vertices, bars, heatmap cells)."""
    return page.evaluate(
        """(id) => { const el = document.getElementById(id);
                     if (!el || !el.data) return 0;
                     return el.data.reduce((n, t) => n + (t.type === 'heatmap' ? (t.z || []).flat()
                       .filter((v) => v !== null).length : (t.y || []).filter((v) => v !== null).length), 0); }""",
        chart_id)
