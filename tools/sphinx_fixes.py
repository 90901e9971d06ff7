"""Local Sphinx extension of the book (loaded through ``sphinx.local_extensions`` in _config.yml).

Two fixes to what the stock toolchain writes into every page, both caught by
tests/test_browser.py (which fails on any JavaScript error or failed request):

``dedupe_scripts``
    With Sphinx 7.4, inline scripts that extensions register after the HTML builder is
    initialised (sphinx-thebe's ``const THEBE_JS_URL = ...``, sphinx-togglebutton's
    ``var togglebuttonSelector``) are written twice; the second ``const`` throws "SyntaxError:
    Identifier 'THEBE_JS_URL' has already been declared". Keep the first copy of each script.

``widget_manager_paths``
    The widget HTML manager (``embed-amd.js``) derives the URL of its bundled fonts from its
    RequireJS module id, which without configuration resolves against the *page* (e.g.
    ``book/@jupyter-widgets/html-manager/dist/<hash>.woff2``, a 404). A RequireJS configuration,
    set before RequireJS loads, maps that id to the CDN folder of the ``embed-amd.js`` configured
    in ``nb_ipywidgets_js`` (the single place where its version is written).
"""

from __future__ import annotations

import json
import re


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


_EMBED = re.compile(r"^(?P<dist>.*/@jupyter-widgets/html-manager@[^/]+/dist)/embed-amd\.js$")


def widget_manager_paths(app, config):
    for url in getattr(config, "nb_ipywidgets_js", None) or {}:
        match = _EMBED.match(url)
        if match:
            paths = {"@jupyter-widgets/html-manager/dist": match["dist"]}
            # A global `require` object defined before require.js loads is its configuration.
            app.add_js_file(None, body=f"var require = {json.dumps({'paths': paths})};",
                            priority=200)
            return


def setup(app):
    # 'html-page-context' stops at the first handler returning a value, so run before the
    # theme's handlers (priority 500); the duplicates are already in the list at that point.
    app.connect("html-page-context", dedupe_scripts, priority=400)
    app.connect("config-inited", widget_manager_paths)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
