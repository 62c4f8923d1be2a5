"""The course website (`make site`, tools/site.py): built from the stored outputs, opened in headless Chromium.

The site is built once into a temporary folder exactly as ``make site`` builds it, then checked twice:

- as files: a home page with the course map, one page per chapter, a references page; every internal
  link and image resolves (anchors included); nothing is loaded from another host; no absolute path of
  this machine; exercise solutions only inside ``<details>``, hidden tests and nbgrader's markers absent;
- in Chromium (served by a local HTTP server on 127.0.0.1): every page loads with no console error, no
  page error and no failed request, every ``<img>`` has loaded, the maths has been typeset by the
  site's own MathJax, and solutions are folded (not visible) until their ``<summary>`` is clicked; the
  pager leads from the first chapter through every chapter. A screenshot of each page goes to
  ``tests/artifacts/site/<page>.png``.

Needs Debian's chromium and the Python ``playwright`` package, like tests/test_browser.py (whose
launch flags and skip/fail rule it shares: skipped with advice where they are missing, a failure
under ``CI=true``). ``LORA_EDU_SITE=<folder>`` checks a site built before (``make site``) instead
of building one.
"""
from __future__ import annotations

import functools
import html
import http.server
import os
import re
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import install_cell  # noqa: E402

from lora_edu.course import CHAPTERS  # noqa: E402

ARTIFACTS = ROOT / "tests" / "artifacts" / "site"
CHAPTER_PAGES = [Path(c.notebook).stem + ".html" for c in CHAPTERS if (ROOT / "notebooks" / c.notebook).is_file()]
PAGES = ["index.html", *CHAPTER_PAGES, "references.html"]
MAX_SCREENSHOT_HEIGHT = 20000
MACHINE_PATHS = re.compile(r"(/home/[^/\s\"']+/|/root/|/tmp/|/work/|/Users/[^/\s\"']+/|[A-Za-z]:\\\\Users)")


class Links(HTMLParser):
    """Every id, link target and resource of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []       # <a href>
        self.resources: list[str] = []   # <img src>, <script src>, <link href>

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("img", "script") and a.get("src"):
            self.resources.append(a["src"])
        if tag == "link" and a.get("href"):
            self.resources.append(a["href"])


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if os.environ.get("LORA_EDU_SITE"):  # check a site built before (e.g. by `make site`) instead
        return Path(os.environ["LORA_EDU_SITE"]).resolve()
    out = tmp_path_factory.mktemp("site") / "site"
    subprocess.run([sys.executable, str(ROOT / "tools" / "site.py"), "--out", str(out)], check=True, cwd=ROOT)
    return out


def test_site_has_the_course_map_every_chapter_and_the_references(site):
    assert sorted(p.name for p in site.glob("*.html")) == sorted(PAGES)
    home = parse(site / "index.html")
    for page in CHAPTER_PAGES:
        assert page in home.links, f"the course map does not link {page}"
    refs = (site / "references.html").read_text()
    assert "Hu" in refs and "LoRA" in refs


@pytest.mark.parametrize("page", CHAPTER_PAGES)
def test_chapter_page_has_toc_pager_and_launch_links(site, page):
    text = (site / page).read_text()
    links = parse(site / page)
    toc = re.search(r"<nav[^>]*class=\"site-toc\"[^>]*>.*?</nav>", text, re.DOTALL).group(0)
    assert toc.count("<li") >= 3, "the table of contents lists the chapter's sections"
    assert "index.html" in links.links and "references.html" in links.links
    url = install_cell.repository_url()
    notebook = page.replace(".html", ".ipynb")
    assert f"https://colab.research.google.com/github/{url.split('/', 3)[3]}/blob/main/notebooks/{notebook}" in links.links
    assert any(link.startswith("https://mybinder.org/v2/gh/") and notebook in link for link in links.links)
    i = CHAPTER_PAGES.index(page)
    if i + 1 < len(CHAPTER_PAGES):
        assert CHAPTER_PAGES[i + 1] in links.links, "a chapter links the next one"
    if i:
        assert CHAPTER_PAGES[i - 1] in links.links, "a chapter links the previous one"


def test_the_pager_walks_the_whole_course(site):
    """From the course map's first chapter, each page's last pager link leads to the next chapter."""
    visited, page = [], CHAPTER_PAGES[0]
    while page != "references.html":
        assert page not in visited, f"the pager loops at {page}"
        visited.append(page)
        pager = re.search(r"<nav[^>]*class=\"site-pager\"[^>]*>(.*?)</nav>", (site / page).read_text(), re.DOTALL)
        page = re.findall(r'href="([^"]+)"', pager.group(1))[-1]
    assert visited == CHAPTER_PAGES


def _resolve(site: Path, page: str, target: str) -> tuple[Path, str] | None:
    """(file, fragment) for a link inside the site; None for another host."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    joined = urlsplit(urljoin(f"http://site/{page}", target))
    return site / unquote(joined.path.lstrip("/")), parts.fragment


@pytest.mark.parametrize("page", PAGES)
def test_every_internal_link_and_resource_resolves(site, page):
    links = parse(site / page)
    for target in links.resources:
        parts = urlsplit(target)
        assert not (parts.scheme or parts.netloc), f"{page} loads {target} from another host"
        path, _ = _resolve(site, page, target)
        assert path.is_file(), f"{page}: missing resource {target}"
    for target in links.links:
        resolved = _resolve(site, page, target)
        if resolved is None:
            assert target.startswith(("https://", "mailto:")), f"{page}: odd link {target}"
            continue
        path, fragment = resolved
        assert path.is_file(), f"{page}: broken link {target}"
        if fragment and path.suffix == ".html":
            ids = parse(path).ids
            assert fragment in ids or unquote(fragment) in ids, f"{page}: no anchor #{fragment} in {path.name}"


@pytest.mark.parametrize("page", PAGES)
def test_no_machine_paths(site, page):
    text = (site / page).read_text()
    assert str(ROOT) not in text
    found = MACHINE_PATHS.search(text)
    assert not found, f"{page} shows a path of this machine: {found.group(0)}"


def _text(fragment: str) -> str:
    """What a reader sees of some HTML: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def _distinct_lines(block: str, elsewhere: str) -> list[str]:
    """The lines of ``block`` long enough to be telling and found nowhere in ``elsewhere``."""
    lines = [" ".join(line.split()) for line in block.splitlines()]
    return [line for line in lines if len(line) > 25 and line not in elsewhere]


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if (ROOT / "notebooks" / c.notebook).is_file()],
                         ids=lambda c: c.number)
def test_solutions_are_folded_and_hidden_tests_left_out(site, chapter):
    text = (site / (Path(chapter.notebook).stem + ".html")).read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
        assert marker not in text, f"nbgrader's marker {marker!r} is on the page"
    nb = nbformat.read(ROOT / "notebooks" / chapter.notebook, as_version=4)
    solutions = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    folded = re.findall(r'<details class="site-solution">.*?</details>', text, re.DOTALL)
    assert len(folded) == len(solutions), "every solution cell is in its own <details>"
    outside = _text(re.sub(r'<details class="site-solution">.*?</details>', "", text, flags=re.DOTALL))
    for cell in solutions:
        answer = cell.source.split("### BEGIN SOLUTION", 1)[-1].split("### END SOLUTION", 1)[0]
        others = " ".join(" ".join(c.source.split()) for c in nb.cells if c is not cell)
        for line in _distinct_lines(answer, others):
            assert line not in outside, f"a solution's line is visible outside <details>: {line}"
    for cell in nb.cells:
        if "### BEGIN HIDDEN TESTS" in cell.source:
            hidden = cell.source.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS", 1)[0]
            shown = " ".join(cell.source.split("### BEGIN HIDDEN TESTS", 1)[0].split())
            for line in _distinct_lines(hidden, shown):
                assert line not in _text(text), f"a hidden test's line is on the page: {line}"


# ------------------------------------------------------------------------------------- in Chromium
@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def browser(chromium):
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


def _open(context, url: str):
    """A page at ``url`` with its console errors, page errors, failed and off-site requests recorded."""
    page = context.new_page()
    problems: list[str] = []
    host = urlsplit(url).netloc
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    def off_site(route):
        problems.append(f"request to another host: {route.request.url}")
        route.abort()

    page.route(lambda u: urlsplit(u).netloc != host and not u.startswith("data:"), off_site)
    page.goto(url, wait_until="load")
    return page, problems


def _mathjax_done(page) -> None:
    page.evaluate("""() => new Promise(resolve => {
        if (!window.MathJax || !MathJax.Hub) { resolve(); return; }
        MathJax.Hub.Queue(() => resolve());
    })""")


@pytest.mark.browser
@pytest.mark.parametrize("name", PAGES)
def test_page_in_chromium(site, server, browser, name):
    page, problems = _open(browser, server + name)
    try:
        _mathjax_done(page)
        images = page.evaluate("""() => Array.from(document.images).map(
            img => ({src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0}))""")
        broken = [i["src"] for i in images if not i["ok"]]
        assert not broken, f"{name}: figures that did not load: {broken}"
        if name in CHAPTER_PAGES:
            nb = nbformat.read(ROOT / "notebooks" / name.replace(".html", ".ipynb"), as_version=4)
            figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                          if {"image/png", "image/jpeg", "image/svg+xml"} & set(o.get("data", {})))
            assert len(images) >= figures, f"{name}: {len(images)} images on the page, {figures} in the notebook"
        math_in_source = "$" in (site / name).read_text().split("<main>", 1)[-1]
        if math_in_source:
            typeset = page.evaluate("() => document.querySelectorAll('.MathJax, .MathJax_Display').length")
            errors = page.evaluate("() => document.querySelectorAll('.MathJax_Error, merror').length")
            assert typeset > 0 and errors == 0, f"{name}: {typeset} formulas typeset, {errors} MathJax errors"
        solutions = page.locator("details.site-solution")
        for i in range(solutions.count()):
            details = solutions.nth(i)
            body = details.locator(".jp-Cell").first
            assert not details.evaluate("d => d.open") and not body.is_visible(), f"{name}: solution {i} is open"
        if solutions.count():
            solutions.first.locator("summary").click()
            assert solutions.first.locator(".jp-Cell").first.is_visible(), f"{name}: a solution does not unfold"
            solutions.first.locator("summary").click()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.evaluate("() => window.scrollTo(0, 0)")  # the sticky header and contents belong at the top
        height = page.evaluate("() => document.documentElement.scrollHeight")
        page.screenshot(path=str(ARTIFACTS / name.replace(".html", ".png")), full_page=True,
                        clip=None if height <= MAX_SCREENSHOT_HEIGHT else
                        {"x": 0, "y": 0, "width": 1280, "height": MAX_SCREENSHOT_HEIGHT})
        assert not problems, f"{name}:\n" + "\n".join(problems)
    finally:
        page.close()
