"""The site's pages against WCAG 2.1 AA in a real headless Chromium, on real daphne.

Polish law (ustawa o dostępności cyfrowej) requires WCAG 2.1 AA of a public
body's website. axe-core (bundled by axe-playwright-python) checks what a
machine can; the rest of the file checks by hand what axe cannot: use by
keyboard alone, a visible focus everywhere, reflow at 320 CSS px and 200 %
text, the page's language, and the language switch by keyboard.

Needs Playwright for Python and Debian's Chromium (never ``playwright
install``): the tests fail, rather than skip, when either is missing. Set
A11Y_SCREENSHOTS=/some/dir to keep a full-page screenshot of every page axe
checked, to look at as a person would.
"""

from __future__ import annotations

import contextlib
import os

import pytest
from conftest import headless_chromium

pytestmark = [pytest.mark.integration, pytest.mark.browser]


WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
LANGUAGES = ["pl", "en"]
SIZES = {
    "phone": {
        "viewport": {"width": 360, "height": 740},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}

# What the active element is, where it is and how its focus is drawn. The
# ring's contrast (WCAG 1.4.11, 3:1) is taken against the first opaque
# background behind the element, which is what the ring is drawn on.
ACTIVE = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body || el === document.documentElement) return null;
  const style = getComputedStyle(el);
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const lin = (v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  };
  let behind = el.parentElement, background = [255, 255, 255];
  while (behind) {
    const c = rgb(getComputedStyle(behind).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0)) { background = c.slice(0, 3); break; }
    behind = behind.parentElement;
  }
  const [l1, l2] = [luminance(rgb(style.outlineColor)), luminance(background)];
  const r = el.getBoundingClientRect();
  return {
    key: Array.prototype.indexOf.call(document.querySelectorAll("*"), el),
    tag: el.tagName.toLowerCase(),
    id: el.id,
    href: el.getAttribute("href"),
    value: el.getAttribute("value"),
    text: el.textContent.trim().replace(/\\s+/g, " "),
    outlineStyle: style.outlineStyle,
    outlineWidth: parseFloat(style.outlineWidth),
    outlineContrast: (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05),
    boxShadow: style.boxShadow,
    box: { x: r.x, y: r.y, width: r.width, height: r.height },
    viewport: { width: innerWidth, height: innerHeight },
  };
}
"""

# Every element that the Tab key should reach, in document order.
FOCUSABLE = """
() => Array.from(document.querySelectorAll(
  "a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), " +
  "select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex='-1'])"
)).filter((el) => el.getClientRects().length > 0).map((el) => ({
  key: Array.prototype.indexOf.call(document.querySelectorAll("*"), el),
  tag: el.tagName.toLowerCase(),
  href: el.getAttribute("href"),
  value: el.getAttribute("value"),
  tabindex: el.getAttribute("tabindex"),
}))
"""

# Elements that stick out to the right of the viewport: they force horizontal
# scrolling, or get cut off where an ancestor hides the overflow.
OVERFLOW = """
() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect();
    if (r.width && r.height && (r.right > width + 0.5 || r.left < -0.5)) {
      out.push(`${el.tagName.toLowerCase()}.${el.className} [${r.left}, ${r.right}]`);
    }
  }
  return { scrollWidth: document.documentElement.scrollWidth, width, out };
}
"""


@pytest.fixture
async def site(hub_processes):
    """``(browser, base_url)``: a real daphne serving the site and a headless Chromium."""
    port = hub_processes.daphne()
    async with headless_chromium() as browser:
        yield browser, f"http://127.0.0.1:{port}"


async def open_page(browser, base: str, language: str, size: str = "desktop", **context):
    """``/`` as a resident sees it: a Polish browser, English chosen by the cookie
    that the language switch sets. Page errors and console errors fail the test."""
    options = {**SIZES[size], **context}
    browser_context = await browser.new_context(locale="pl-PL", **options)
    if language != "pl":
        await browser_context.add_cookies(
            [{"name": "django_language", "value": language, "url": base}]
        )
    page = await browser_context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in {"error", "warning"}
            else None
        ),
    )
    response = await page.goto(f"{base}/")
    assert response is not None and response.ok, response
    page.problems = problems
    return page


def axe_report(where: str, violations: list[dict]) -> str:
    lines = [f"{where}: {len(violations)} WCAG 2.1 AA violation(s)"]
    for violation in violations:
        lines.append(
            f"  {violation['id']} ({violation['impact']}): {violation['help']}"
            f" — {violation['helpUrl']}"
        )
        for node in violation["nodes"]:
            lines.append(f"    at {', '.join(map(str, node['target']))}: {node['html'][:160]}")
            lines.append(f"       {node.get('failureSummary', '').replace(chr(10), ' ')}")
    return "\n".join(lines)


async def axe_violations(page) -> list[dict]:
    try:
        from axe_playwright_python.async_playwright import Axe
    except ImportError:
        pytest.fail("axe-playwright-python is missing: pip install -c constraints.txt -e '.[dev]'")

    options = {"runOnly": {"type": "tag", "values": WCAG_21_AA}, "resultTypes": ["violations"]}
    results = await Axe().run(page, options=options)
    return results.response["violations"]


# The focused element is on screen. html has scroll-behavior: smooth, so the
# browser may still be scrolling it into view right after the key press.
IN_VIEW = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return true;
  const r = el.getBoundingClientRect();
  return r.bottom > 0 && r.top < innerHeight;
}
"""


async def tab(page) -> dict | None:
    await page.keyboard.press("Tab")
    with contextlib.suppress(Exception):  # focus_problems() reports it if it never gets there
        await page.wait_for_function(IN_VIEW, timeout=2_000, polling=50)
    return await page.evaluate(ACTIVE)


def focus_problems(active: dict) -> list[str]:
    """What is wrong with how a focused element shows its focus (WCAG 2.4.7, 1.4.11)."""
    name = f"{active['tag']} {active['text']!r}"
    problems = []
    ring = active["outlineStyle"] != "none" and active["outlineWidth"] >= 2
    if ring and active["outlineContrast"] < 3:
        problems.append(f"{name}: focus ring contrast {active['outlineContrast']:.2f}:1 < 3:1")
    if not ring and active["boxShadow"] == "none":
        problems.append(
            f"{name}: no focus indicator (an outline of 2px or more, or a box-shadow): {active}"
        )
    box, viewport = active["box"], active["viewport"]
    if box["width"] <= 0 or box["height"] <= 0:
        problems.append(f"{name}: focused but has no size ({box})")
    if box["y"] + box["height"] <= 0 or box["y"] >= viewport["height"]:
        problems.append(f"{name}: focused but scrolled out of view ({box})")
    return problems


@pytest.mark.parametrize("language", LANGUAGES)
async def test_axe_finds_no_wcag_21_aa_violations(site, language):
    browser, base = site
    shots = os.environ.get("A11Y_SCREENSHOTS")
    reports = []
    for size in SIZES:
        page = await open_page(browser, base, language, size)
        violations = await axe_violations(page)
        if violations:
            reports.append(axe_report(f"/ in {language} at {size} size", violations))
        if shots:
            await page.screenshot(path=f"{shots}/landing-{language}-{size}.png", full_page=True)
        # The skip link is off screen until focused; check it as a keyboard user sees it.
        await page.keyboard.press("Tab")
        violations = await axe_violations(page)
        if violations:
            reports.append(
                axe_report(f"/ in {language} at {size} size, skip link focused", violations)
            )
        if shots:
            await page.screenshot(path=f"{shots}/landing-{language}-{size}-skip.png")
        if page.problems:
            reports.append(f"/ in {language} at {size} size: {page.problems}")
        await page.context.close()
    assert not reports, "\n\n".join(reports)


@pytest.mark.parametrize("size", list(SIZES))
async def test_keyboard_alone_reaches_everything_with_a_visible_focus(site, size):
    browser, base = site
    page = await open_page(browser, base, "pl", size)

    # 1. The first Tab lands on the skip link, which then shows inside the viewport.
    first = await tab(page)
    assert first is not None and first["href"] == "#main", first
    assert first["text"] == "Przejdź do treści"
    skip = await page.locator("a.skip-link").bounding_box()
    viewport = page.viewport_size
    assert skip is not None and skip["width"] > 0 and skip["height"] > 0, skip
    assert skip["x"] >= 0 and skip["y"] >= 0, skip
    assert skip["x"] + skip["width"] <= viewport["width"], (skip, viewport)
    assert skip["y"] + skip["height"] <= viewport["height"], (skip, viewport)
    assert focus_problems(first) == []

    # 2. Enter moves focus to the main region; the next Tab continues inside it.
    await page.keyboard.press("Enter")
    await page.wait_for_function("document.activeElement.matches('main#main')", timeout=5_000)
    after = await tab(page)
    assert after is not None
    inside_main = await page.evaluate("document.activeElement.closest('main') !== null")
    assert inside_main, f"Tab after the skip link went to {after}, outside <main>"
    await page.context.close()

    # 3. From a fresh load, Tab walks every focusable element in document order,
    # and each one shows where the focus is.
    page = await open_page(browser, base, "pl", size)
    expected = await page.evaluate(FOCUSABLE)
    assert not [e for e in expected if e["tabindex"] not in {None, "0"}], expected
    walked, problems = [], []
    for _ in range(len(expected) + 3):
        active = await tab(page)
        if active is None or (walked and active["key"] == walked[0]["key"]):
            break  # past the last element: focus left the document, or wrapped
        walked.append(active)
        problems += focus_problems(active)
    assert [a["key"] for a in walked] == [e["key"] for e in expected], (walked, expected)
    values = {a["value"] for a in walked if a["tag"] == "button"}
    assert {"pl", "en"} <= values, walked
    links = await page.evaluate("Array.from(document.links, (a) => a.getAttribute('href'))")
    assert sorted(a["href"] for a in walked if a["tag"] == "a") == sorted(links)
    assert problems == [], "\n".join(problems)
    assert page.problems == [], page.problems


async def test_reflow_at_320_px_and_200_percent_text(site):
    """WCAG 1.4.10 (no two-dimensional scrolling at 320 CSS px) and 1.4.4 (text
    resized to 200 % loses nothing): nothing sticks out to the right."""
    browser, base = site
    failures = []
    for language in LANGUAGES:
        for width, font_size in ((320, None), (640, "200%"), (1280, "200%")):
            page = await open_page(
                browser, base, language, "desktop", viewport={"width": width, "height": 800}
            )
            if font_size:
                await page.evaluate(
                    "s => { document.documentElement.style.fontSize = s; }", font_size
                )
            layout = await page.evaluate(OVERFLOW)
            if layout["scrollWidth"] > width or layout["out"]:
                failures.append(f"{language} at {width} px, root font {font_size}: {layout}")
            await page.context.close()
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize("language", LANGUAGES)
async def test_page_language_and_language_names_are_marked(site, language):
    """WCAG 3.1.1 (language of page) and 3.1.2 (language of parts)."""
    browser, base = site
    page = await open_page(browser, base, language)

    assert await page.get_attribute("html", "lang") == language
    buttons = await page.eval_on_selector_all(
        "form.language-switch button",
        "els => els.map((b) => [b.value, b.lang, b.textContent.trim(),"
        " b.getAttribute('aria-current')])",
    )
    current = {"pl": None, "en": None, language: "true"}
    assert buttons == [
        ["pl", "pl", "Polski", current["pl"]],
        ["en", "en", "English", current["en"]],
    ]
    heading = await page.text_content("h1")
    assert (
        heading
        == {
            "pl": "E-usługi Gminy Głogów Małopolski",
            "en": "E-services of Gmina Głogów Małopolski",
        }[language]
    )


async def test_language_switch_works_by_keyboard(site):
    browser, base = site
    page = await open_page(browser, base, "pl")
    assert await page.get_attribute("html", "lang") == "pl"

    async def tab_to_language(value: str) -> None:
        for _ in range(10):
            active = await tab(page)
            if active and active["tag"] == "button" and active["value"] == value:
                return
        pytest.fail(f"ten Tabs did not reach the {value!r} language button")

    await tab_to_language("en")
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert page.url == f"{base}/"
    assert await page.get_attribute("html", "lang") == "en"
    assert await page.text_content("a.skip-link") == "Skip to content"
    assert await page.get_attribute("button[value=en]", "aria-current") == "true"

    # And back to Polish the same way.
    await tab_to_language("pl")
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert await page.get_attribute("html", "lang") == "pl"
    assert await page.text_content("a.skip-link") == "Przejdź do treści"
    assert page.problems == [], page.problems
