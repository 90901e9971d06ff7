"""Local Sphinx extension of the book (loaded through ``sphinx.local_extensions`` in _config.yml).

It makes the built site self-contained and fixes two slips of the stock toolchain; all of it is
checked by tests/test_browser.py, which serves the site with the network off and fails on any
JavaScript error, failed request or request that leaves the site.

Self-contained site (``vendor_assets``, ``localize_outputs``)
    The pages need four third-party front-end packages: MathJax 3 (all math), RequireJS and the
    Jupyter widget HTML manager (the saved ipywidgets of the playground) and Font Awesome 4 (the
    buttons of matplotlib's ``to_jshtml`` animations). Their versions are pinned once, in
    package.json / package-lock.json, and ``npm ci`` installs them into node_modules/. When the
    HTML builder finishes, the files the pages use are copied from node_modules/ into
    ``_static/npm/<package>/`` of the built site (``VENDOR`` below lists them, about 25 MB;
    nothing is vendored into the repository), so ``jupyter-book build .`` stays the one build
    command and the site works offline and on GitHub Pages alike. _config.yml points
    ``mathjax_path`` and ``nb_ipywidgets_js`` at those copies; the Font Awesome stylesheet that
    matplotlib writes into each animation's HTML output (a CDN link) is rewritten to the local
    copy on every page. A missing or stale node_modules/ stops the build with the command to run.

``dedupe_scripts``
    With Sphinx 7.4, inline scripts that extensions register after the HTML builder is
    initialised (sphinx-thebe's ``const THEBE_JS_URL = ...``, sphinx-togglebutton's
    ``var togglebuttonSelector``) are written twice; the second ``const`` throws "SyntaxError:
    Identifier 'THEBE_JS_URL' has already been declared". Keep the first copy of each script.

Author-year bibliography (``AuthorYearStyle``)
    The chapters cite author-year ("Anderson (1982)", "(Wu et al., 2025)"); the stock ``plain``
    style would label the bibliography [1], [2], ... A pybtex style ``authoryear`` (``plain``'s
    entries and sorting, labels "Anderson, 1982", "Wu et al., 2025") makes the references page
    read the way the citations do; _config.yml selects it as ``bibtex_default_style``.

``widget_manager_paths``
    The widget HTML manager (``embed-amd.js``) derives the URL of its bundled fonts from its
    RequireJS module id, which without configuration resolves against the *page* (e.g.
    ``book/@jupyter-widgets/html-manager/dist/<hash>.woff2``, a 404). A RequireJS configuration,
    set before RequireJS loads, maps that id to the vendored ``dist`` folder (resolved against
    the page's ``data-content_root``, so it works at every depth of the site).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sphinx.errors import ExtensionError

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "node_modules"
VENDOR_DIR = "npm"             # under _static/ of the built site (the theme has its own vendor/)

# npm package -> what the pages load from it (files or folders, relative to the package).
VENDOR = {
    "mathjax": [
        "es5/tex-mml-chtml.js",     # the component _config.yml loads (TeX + MathML in, CHTML out)
        "es5/input", "es5/output/chtml", "es5/adaptors",   # extensions (autoload) and fonts
        "es5/ui", "es5/a11y", "es5/sre",                   # the right-click menu's options
    ],
    "requirejs": ["require.js"],
    "@jupyter-widgets/html-manager": ["dist/embed-amd.js", "dist/*.woff2", "dist/*.woff",
                                      "dist/*.ttf", "dist/*.eot", "dist/*.svg"],
    "font-awesome": ["css/font-awesome.min.css", "fonts"],
}

# The stylesheet matplotlib's to_jshtml links to (matplotlib/_animation_data.py).
_FONT_AWESOME_CDN = re.compile(
    r"https://maxcdn\.bootstrapcdn\.com/font-awesome/(?P<ver>[\w.-]+)/css/font-awesome\.min\.css")


def pinned_versions(root: Path = ROOT) -> dict[str, str]:
    """package -> version pinned in package.json (dependencies and devDependencies)."""
    package = json.loads((root / "package.json").read_text(encoding="utf-8"))
    return {**package.get("dependencies", {}), **package.get("devDependencies", {})}


def _installed_version(pkg: str, node_modules: Path = NODE_MODULES) -> str | None:
    meta = node_modules / pkg / "package.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text(encoding="utf-8")).get("version")


def check_node_modules(node_modules: Path = NODE_MODULES, root: Path = ROOT) -> None:
    """Raise ExtensionError naming the fix if a vendored package is missing or not the pinned one."""
    pinned = pinned_versions(root)
    problems = []
    for pkg in VENDOR:
        want, have = pinned.get(pkg), _installed_version(pkg, node_modules)
        if want is None:
            problems.append(f"{pkg} is not pinned in package.json")
        elif have is None:
            problems.append(f"{pkg} is not installed in {node_modules}")
        elif have != want:
            problems.append(f"{pkg} {have} is installed but package.json pins {want}")
    if problems:
        raise ExtensionError("the built site serves MathJax, the widget manager and the fonts "
                             "itself, from node_modules/: " + "; ".join(problems)
                             + ". Run `npm ci` in the repository root (see README).")


def vendor_files(node_modules: Path = NODE_MODULES):
    """Yield (source file, path relative to _static/npm/) for every vendored file."""
    for pkg, entries in VENDOR.items():
        base = node_modules / pkg
        for entry in entries:
            matches = sorted(base.glob(entry)) if "*" in entry else [base / entry]
            if not matches or not all(m.exists() for m in matches):
                raise ExtensionError(f"node_modules/{pkg}/{entry} is missing: run `npm ci`")
            for match in matches:
                files = sorted(p for p in match.rglob("*") if p.is_file()) if match.is_dir() \
                    else [match]
                for f in files:
                    yield f, Path(pkg) / f.relative_to(base)


def vendor_assets(app, exception):
    """Copy the vendored files into ``<outdir>/_static/npm/`` after an HTML build."""
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / VENDOR_DIR
    for src, rel in vendor_files():
        dst = target / rel
        if dst.exists() and dst.stat().st_size == src.stat().st_size \
                and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def localize_outputs(app, pagename, templatename, context, doctree):
    """Point the Font Awesome links of ``to_jshtml`` outputs at the vendored copy."""
    body = context.get("body")
    if not body or "font-awesome" not in body:
        return
    pinned = pinned_versions().get("font-awesome")
    local = context["pathto"](f"_static/{VENDOR_DIR}/font-awesome/css/font-awesome.min.css", 1)

    def swap(match):
        if match["ver"] != pinned:
            raise ExtensionError(f"{pagename}: an output links Font Awesome {match['ver']}, but "
                                 f"package.json pins {pinned}: update package.json and `npm ci`")
        return local

    context["body"] = _FONT_AWESOME_CDN.sub(swap, body)


class _AuthorYearLabels:
    """Labels "Last, year", "Last and Other, year", "Last et al., year" (a, b, ... on ties)."""

    def format_labels(self, sorted_entries):
        from pybtex.richtext import Text

        labels = []
        for entry in sorted_entries:
            persons = entry.persons.get("author") or entry.persons.get("editor") or []
            last = [Text.from_latex(" ".join(p.prelast_names + p.last_names)).render_as("text")
                    for p in persons]
            who = (last[0] if len(last) == 1 else f"{last[0]} and {last[1]}" if len(last) == 2
                   else f"{last[0]} et al." if last else entry.fields.get("title", entry.key))
            labels.append(f"{who}, {entry.fields.get('year', 'n.d.')}")
        counts = {lab: labels.count(lab) for lab in labels}
        seen: dict[str, int] = {}
        for label in labels:
            if counts[label] == 1:
                yield label
            else:
                seen[label] = seen.get(label, 0) + 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]


def _register_author_year_style():
    import pybtex.plugin
    from pybtex.style.formatting.plain import Style as Plain

    class AuthorYearStyle(Plain):
        """pybtex's plain style with author-year labels (see the module docstring)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.label_style = _AuthorYearLabels()
            self.format_labels = self.label_style.format_labels

    pybtex.plugin.register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)


def _key(script):
    attributes = getattr(script, "attributes", {}) or {}
    # Inline scripts appear with filename None and again with filename "".
    return (str(getattr(script, "filename", script) or ""),
            tuple(sorted((str(k), str(v)) for k, v in attributes.items())))


def dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # In place: the list is the builder's, to which later handlers (myst-nb's widget scripts)
    # still append.
    scripts[:] = unique


_EMBED = re.compile(r"^(?P<dist>(?:.*/)?@jupyter-widgets/html-manager/dist)/embed-amd\.js$")


def widget_manager_paths(app, config):
    for url in getattr(config, "nb_ipywidgets_js", None) or {}:
        match = _EMBED.match(url)
        if match:
            dist = json.dumps(f"_static/{match['dist']}")
            # A global `require` object defined before require.js loads is its configuration.
            body = ("var require = {paths: {'@jupyter-widgets/html-manager/dist': new URL("
                    f"(document.documentElement.dataset.content_root || '') + {dist}, "
                    "document.baseURI).href}};")
            app.add_js_file(None, body=body, priority=200)
            return


def setup(app):
    _register_author_year_style()
    app.connect("config-inited", lambda app, config: check_node_modules())
    app.connect("config-inited", widget_manager_paths)
    # 'html-page-context' stops at the first handler returning a value, so run before the
    # theme's handlers (priority 500); the duplicates are already in the list at that point.
    app.connect("html-page-context", dedupe_scripts, priority=400)
    app.connect("html-page-context", localize_outputs, priority=400)
    app.connect("build-finished", vendor_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
