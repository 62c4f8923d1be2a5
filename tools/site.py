"""Build the course website from the notebooks' stored outputs (nothing is executed).

Usage (what ``make site`` runs)::

    python tools/site.py [--out build/site]

It writes a static site that any web server (or a browser opening ``index.html``) shows:

- ``index.html``: the course map (every chapter with its goal, time, GPU needs and launch links);
- ``NN_name.html``: one page per chapter of ``lora_edu.course.CHAPTERS`` whose notebook exists, made by
  nbconvert with the template in ``tools/site_theme/`` (JupyterLab's look): a table of contents, links
  to the previous and next chapter, launch links (Colab, Binder, the notebook on the repository), the
  figures as files in ``figures/NN_name/``; exercise solutions folded in a ``<details>`` element,
  hidden tests and nbgrader's markers left out, the install cell left out, each interactive widget
  replaced by a static note (a progress bar by its final count);
- ``references.html``: the *References* section of every chapter, in one page;
- ``_static/``: the site's stylesheet and MathJax 2.7 (from the ``jupyter-server-mathjax`` package), so
  the maths renders with no network at all.

Links are relative and nothing on a page comes from another host. The repository URL comes from
pyproject.toml (``[project.urls] Repository``), read by ``tools/install_cell.py``.
"""
from __future__ import annotations

import argparse
import copy
import html
import importlib.util
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import jinja2
import nbformat
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune
from nbconvert.preprocessors import ExtractOutputPreprocessor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import install_cell  # noqa: E402
from lora_edu.course import CHAPTERS, Chapter  # noqa: E402

THEME = Path(__file__).resolve().parent / "site_theme"
TEMPLATE = "rank_to_lora_site"
BRANCH = "main"
COURSE = "Rank to LoRA"
# MathJax 2.7 as jupyter-server-mathjax ships it: HTML-CSS output with the STIX-Web fonts (it has no TeX
# fonts). Its placeholder font "MathJax_Blank" is url('about:blank') by default, which Chromium reports as a
# failed cross-origin load on every page; a local() source that does not exist fails the same way, silently.
MATHJAX = """<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]],
            processEscapes: true, processEnvironments: true},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
               styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}}},
  messageStyle: "none",
  showMathMenu: false
});
</script>
<script src="_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"></script>"""
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SOLUTION_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)
HIDDEN_TESTS = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[ \t]*\n?", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r'<h([23])[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.DOTALL)
ANCHOR_LINK = re.compile(r'<a class="anchor-link"[^>]*>.*?</a>', re.DOTALL)
NOTEBOOK_LINK = re.compile(r'href="(\d\d_[\w-]+)\.ipynb(#[^"]*)?"')


# ---------------------------------------------------------------------------------------------- links
def launch_links(url: str, notebook: str) -> dict[str, str]:
    """Where a chapter opens: a hosted notebook service with a GPU, Binder, and the file itself."""
    owner_repo = url.split("://", 1)[1].split("/", 1)[1]
    return {
        "colab": f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/notebooks/{notebook}",
        "binder": f"https://mybinder.org/v2/gh/{owner_repo}/{BRANCH}?labpath={quote('notebooks/' + notebook, safe='')}",
        "source": f"{url}/blob/{BRANCH}/notebooks/{notebook}",
    }


def page_name(chapter: Chapter) -> str:
    return Path(chapter.notebook).stem + ".html"


def rewrite_notebook_links(text: str, built: set[str], url: str) -> str:
    """``href="NN_x.ipynb#y"`` -> the chapter's page (or the repository's file where there is no page)."""
    def repl(m: re.Match) -> str:
        stem, anchor = m.group(1), m.group(2) or ""
        if f"{stem}.ipynb" in built:
            return f'href="{stem}.html{anchor}"'
        return f'href="{url}/blob/{BRANCH}/notebooks/{stem}.ipynb{anchor}"'
    return NOTEBOOK_LINK.sub(repl, text)


# ----------------------------------------------------------------------------------- notebook → page
def _widget_note(model_id: str, state: dict) -> str:
    """Static HTML for a widget view: a finished progress bar, or a note about the interactive controls."""
    model = state.get(model_id, {})
    children = [state.get(c.removeprefix("IPY_MODEL_"), {}) for c in model.get("state", {}).get("children", [])]
    bars = [c for c in children if c.get("model_name") in ("FloatProgressModel", "IntProgressModel")]
    if bars:  # tqdm.auto: [label, bar, "150/150 [time, rate]"]
        texts = [html.unescape(c["state"].get("value", "")) for c in children if c.get("model_name") == "HTMLModel"]
        label = texts[0].strip() if texts else ""
        count = texts[-1].split("[")[0].strip() if len(texts) > 1 else ""
        bar = bars[0]["state"]
        return (f'<div class="site-progress"><span>{html.escape(label)}</span>'
                f'<progress value="{bar.get("value", 0)}" max="{bar.get("max", 1)}"></progress>'
                f"<span>{html.escape(count)}</span></div>")
    controls = [c["state"].get("description", "") for c in children
                if c.get("model_name", "").endswith(("SliderModel", "DropdownModel", "ToggleButtonsModel"))]
    named = [html.escape(d.rstrip(": ")) for d in controls if d]
    what = ("the controls " + ", ".join(named)) if len(named) > 1 else \
        (f"the control {named[0]}" if named else "its controls")
    return ('<div class="site-widget-note"><strong>Interactive in the notebook:</strong> move ' + what +
            " to redraw this figure. Open the chapter in Colab or on Binder (links at the top) to try it; "
            "the figure above shows the default setting.</div>")


def prepare(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` as the site shows it (see the module docstring)."""
    nb = copy.deepcopy(nb)
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    cells = []
    for cell in nb.cells:
        if install_cell.is_install_cell(cell):
            continue
        grading = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code":
            if grading.get("solution"):
                cell.source = SOLUTION_MARKERS.sub("", cell.source)
            if grading.get("grade"):
                cell.source = HIDDEN_TESTS.sub("", cell.source).rstrip()
            outputs = []
            for out in cell.get("outputs", []):
                view = out.get("data", {}).get(WIDGET_VIEW)
                if view:
                    out = nbformat.v4.new_output("display_data",
                                                 data={"text/html": _widget_note(view["model_id"], state)})
                outputs.append(out)
            cell.outputs = outputs
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    return nb


def table_of_contents(page: str) -> str:
    """The ``<h2>``/``<h3>`` headings of a rendered page as a nested list of links."""
    items = []
    for level, anchor, inner in HEADING.findall(page):
        text = ANCHOR_LINK.sub("", inner).strip()
        items.append(f'<li class="site-toc-h{level}"><a href="#{anchor}">{text}</a></li>')
    return '<h2>On this page</h2><ul>' + "".join(items) + "</ul>" if items else ""


def header(current: str, chapters: list[Chapter]) -> str:
    links = [f'<a class="site-brand" href="index.html">{COURSE}</a>']
    for target, label in [("index.html", "Course map")] + [(page_name(c), c.number) for c in chapters] + \
            [("references.html", "References")]:
        title = next((f' title="{html.escape(c.title)}"' for c in chapters if page_name(c) == target), "")
        cls = ' class="site-current"' if target == current else ""
        links.append(f'<a href="{target}"{title}{cls}>{label}</a>')
    return '<header class="site-header">' + "".join(links) + "</header>"


def footer(url: str) -> str:
    return (f'<footer class="site-footer">{COURSE}: code under the <a href="{url}/blob/{BRANCH}/LICENSE">MIT '
            f'licence</a>, course content under <a href="{url}/blob/{BRANCH}/LICENSE-CONTENT">CC BY 4.0</a>. '
            f'Cite it with <a href="{url}/blob/{BRANCH}/CITATION.cff">CITATION.cff</a>. '
            f'Source: <a href="{url}">{html.escape(url)}</a>. This site shows the notebooks as they were last '
            "executed; open one to run it.</footer>")


def pager(prev: Chapter | None, nxt: Chapter | None) -> str:
    left = f'<a class="site-button" href="{page_name(prev)}">← {prev.number} · {html.escape(prev.title)}</a>' \
        if prev else '<a class="site-button" href="index.html">← Course map</a>'
    right = f'<a class="site-button" href="{page_name(nxt)}">{nxt.number} · {html.escape(nxt.title)} →</a>' \
        if nxt else '<a class="site-button" href="references.html">References →</a>'
    return f'<nav class="site-pager" aria-label="Chapters">{left}{right}</nav>'


def launch_bar(url: str, chapter: Chapter) -> str:
    links = launch_links(url, chapter.notebook)
    return ('<nav class="site-launch" aria-label="Run this chapter">'
            f'<a class="site-button" href="{links["colab"]}">▶ Open in Colab (GPU)</a>'
            f'<a class="site-button" href="{links["binder"]}">▶ Launch on Binder</a>'
            f'<a class="site-button" href="{links["source"]}">The notebook on the repository</a>'
            f"</nav>")


def chapter_exporter() -> HTMLExporter:
    """nbconvert's HTML exporter with the site's template, no prompts, figures written as files."""
    exporter = HTMLExporter(template_name=TEMPLATE, extra_template_basedirs=[str(THEME / "templates")],
                            exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(ExtractOutputPreprocessor(
        output_filename_template="{unique_key}_{cell_index}_{index}{extension}"), enabled=True)
    return exporter


def convert_chapter(chapter: Chapter, chapters: list[Chapter], out: Path, url: str,
                    exporter: HTMLExporter | None = None) -> str:
    """Write ``out/NN_name.html`` and its figures; returns the page's HTML."""
    nb = prepare(nbformat.read(ROOT / "notebooks" / chapter.notebook, as_version=4))
    nb.metadata["title"] = f"{chapter.number} · {chapter.title} — {COURSE}"
    i = chapters.index(chapter)
    stem = Path(chapter.notebook).stem
    exporter = exporter or chapter_exporter()
    resources = {
        "output_files_dir": f"figures/{stem}",
        "unique_key": stem,
        "site": {
            "mathjax": MATHJAX,
            "header": header(page_name(chapter), chapters),
            "footer": footer(url),
            "launch": launch_bar(url, chapter),
            "pager": pager(chapters[i - 1] if i else None, chapters[i + 1] if i + 1 < len(chapters) else None),
        },
    }
    page, resources = exporter.from_notebook_node(nb, resources=resources)
    for name, data in resources.get("outputs", {}).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    page = page.replace("<!-- site-toc -->", table_of_contents(page), 1)
    page = rewrite_notebook_links(page, {c.notebook for c in chapters}, url)
    (out / page_name(chapter)).write_text(page, encoding="utf-8")
    return page


# -------------------------------------------------------------------------------- the other pages
def render_page(out: Path, name: str, title: str, body: str, current: str, chapters: list[Chapter], url: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(THEME / "templates")), autoescape=False)
    page = env.get_template("page.html.j2").render(title=title, mathjax=MATHJAX, header=header(current, chapters),
                                                   footer=footer(url), body=body, toc="")
    page = page.replace('<nav class="site-toc" aria-label="On this page"></nav>',
                        f'<nav class="site-toc" aria-label="On this page">{table_of_contents(page)}</nav>', 1)
    page = rewrite_notebook_links(page, {c.notebook for c in chapters}, url)
    (out / name).write_text(page, encoding="utf-8")
    return page


def _md(text: str) -> str:
    return markdown2html_mistune(text)


def home(chapters: list[Chapter], url: str) -> str:
    rows = []
    for c in chapters:
        links = launch_links(url, c.notebook)
        rows.append(f'<tr><td>{c.number}</td><td><a href="{page_name(c)}">{html.escape(c.title)}</a></td>'
                    f"<td>{html.escape(c.goal)}</td><td>{c.minutes} min</td><td>{html.escape(c.gpu)}</td>"
                    f'<td class="site-launches"><a href="{links["colab"]}">Colab</a> · '
                    f'<a href="{links["binder"]}">Binder</a></td></tr>')
    minutes = sum(c.minutes for c in chapters)
    intro = _md(f"""# {COURSE}

An interactive notebook course that starts with a question you can answer on paper — *what is the rank of
a matrix?* — and ends with a LoRA layer that you train, merge and profile yourself. Each chapter is a
Jupyter notebook: short explanations, code you run, pictures, and exercises that check your answer. The
reference code lives in `lora_edu`, a small Python package tested against SymPy, NumPy and PEFT.

These pages show every chapter as it was last executed, so you can read the course without installing
anything. To run it, open a chapter in a hosted notebook service (Colab: its first cell installs
`lora_edu`) or on Binder, or install it on your computer ([the README]({url}#readme) has the routes,
Windows included).
""")
    table = ('<h2 id="course-map">The course map</h2>'
             f"<p>{len(chapters)} chapters, about {minutes // 60} h {minutes % 60} min in all. "
             "Every chapter runs on a laptop CPU; the last ones use a GPU when there is one.</p>"
             '<table class="site-map"><thead><tr><th>#</th><th>chapter</th><th>after it you can…</th>'
             "<th>time</th><th>GPU</th><th>run it</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    cite = _md(f"""## Reuse and cite

The code is under the MIT licence and the course content (notebooks, text, figures) under CC BY 4.0:
teach with it, adapt it, translate it — and say where it came from. To cite the course, use
[CITATION.cff]({url}/blob/{BRANCH}/CITATION.cff). The papers each chapter builds on are listed on the
[references](references.html) page.
""")
    return intro + table + cite


def references(chapters: list[Chapter]) -> str:
    """Every chapter's *References* section, under the chapter's title."""
    parts = [_md("# References\n\nThe papers, books and documentation each chapter cites, as the chapter lists them.")]
    for c in chapters:
        nb = nbformat.read(ROOT / "notebooks" / c.notebook, as_version=4)
        texts, inside = [], False
        for cell in nb.cells:
            if cell.cell_type != "markdown":
                continue
            for block in re.split(r"(?m)^(?=#{1,2} )", cell.source):
                if re.match(r"#{1,2} ", block):
                    inside = bool(re.match(r"#{1,2} References\s*$", block.splitlines()[0]))
                    block = "\n".join(block.splitlines()[1:])
                if inside and block.strip():
                    texts.append(block.strip())
        body = "\n\n".join(texts) or "*This chapter lists no references.*"
        parts.append(f'<h2 id="ch{c.number}"><a href="{page_name(c)}">{c.number} · {html.escape(c.title)}</a></h2>')
        parts.append(_md(body))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ build
def mathjax_files() -> Path:
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("tools/site.py needs the jupyter-server-mathjax package (in the [test] extra): "
                         "make venv, or pip install -c constraints.txt jupyter-server-mathjax")
    return Path(spec.submodule_search_locations[0]) / "static"


def build(out: Path, chapters: list[Chapter] | None = None) -> list[Path]:
    """Build the whole site in ``out`` (emptied first); returns the pages written."""
    url = install_cell.repository_url()
    chapters = chapters if chapters is not None else \
        [c for c in CHAPTERS if (ROOT / "notebooks" / c.notebook).is_file()]
    if out.exists():
        shutil.rmtree(out)
    (out / "_static").mkdir(parents=True)
    shutil.copy2(THEME / "static" / "site.css", out / "_static" / "site.css")
    shutil.copytree(mathjax_files(), out / "_static" / "mathjax")
    pages = [out / "index.html"]
    render_page(out, "index.html", f"{COURSE}: from the rank of a matrix to LoRA", home(chapters, url),
                "index.html", chapters, url)
    exporter = chapter_exporter()
    for chapter in chapters:
        convert_chapter(chapter, chapters, out, url, exporter)
        pages.append(out / page_name(chapter))
    render_page(out, "references.html", f"References — {COURSE}", references(chapters), "references.html",
                chapters, url)
    pages.append(out / "references.html")
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the course website from the stored notebook outputs.")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site", help="output folder (emptied first)")
    args = parser.parse_args(argv)
    pages = build(args.out)
    print(f"site: {len(pages)} pages in {args.out} (open {args.out / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
