"""The built book, as a reader sees it: links, launch buttons, and a real headless Chromium.

Run:  python -m pytest tests/test_browser.py -v
      DSM_BOOK_HTML=_build/html python -m pytest tests/test_browser.py   (reuse a build)

Static checks (no browser): every local link and anchor of the built site resolves, every notebook
page has its Binder and Colab launch links (derived from the ``repository:`` section of
_config.yml), and the CDN versions the pages load match the pinned copies of package.json.

Browser checks, per page of _toc.yml, in headless Chromium driven over the DevTools protocol
(a small client on tornado's websocket, which Jupyter already depends on): math is typeset by
MathJax with no raw TeX left, every image loaded, no JavaScript error or failed request, every
saved widget view rendered, launch buttons present; on pages with a matplotlib ``to_jshtml``
animation, clicking its "next frame" button and moving its slider change the frame.
Screenshots of every page go to test-artifacts/ (gitignored).

The machine is offline, so the page copy served to the browser has its CDN URLs
(cdn.jsdelivr.net/npm/<pkg>@<version>/..., and matplotlib's Font Awesome stylesheet) rewritten to
local copies installed by ``npm ci`` into node_modules/. Chromium comes from Debian
(``apt-get install chromium``). Both are required under CI (``CI`` set); locally their absence
skips the browser checks with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import html.parser
import json
import mimetypes
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from booktoc import ROOT, load_yaml, toc_docnames, toc_notebooks

pytestmark = [pytest.mark.book]

CHROMIUM = os.environ.get("DSM_CHROMIUM", "/usr/bin/chromium")
NODE_MODULES = ROOT / "node_modules"
ARTIFACTS = ROOT / "test-artifacts"
IN_CI = bool(os.environ.get("CI"))
PAGE_TIMEOUT = 45  # seconds allowed for one page to load, typeset and render its widgets

DOCNAMES = toc_docnames()
NOTEBOOK_DOCS = [p.relative_to(ROOT).with_suffix("").as_posix() for p in toc_notebooks()]
PLAYGROUND = "book/10_playground"

# --------------------------------------------------------------------------- CDN -> local copies

JSDELIVR = re.compile(
    r"https://cdn\.jsdelivr\.net/npm/(?P<pkg>(?:@[\w.-]+/)?[\w.-]+)@(?P<ver>[\w.-]+)/(?P<path>[^\"'\s)]*)"
)
FONT_AWESOME = re.compile(
    r"https://maxcdn\.bootstrapcdn\.com/font-awesome/(?P<ver>[\w.-]+)/(?P<path>[^\"'\s)]*)"
)


def cdn_references(text: str) -> set[tuple[str, str]]:
    """(package, version) pairs of the CDN URLs in a page."""
    refs = {(m["pkg"], m["ver"]) for m in JSDELIVR.finditer(text)}
    refs |= {("font-awesome", m["ver"]) for m in FONT_AWESOME.finditer(text)}
    return refs


def localize(text: str) -> str:
    """The page as served to the offline browser: CDN URLs point at /__npm__/<pkg>/<path>."""
    text = JSDELIVR.sub(lambda m: f"/__npm__/{m['pkg']}/{m['path']}", text)
    text = FONT_AWESOME.sub(lambda m: f"/__npm__/font-awesome/{m['path']}", text)
    text = text.replace('"https://cdn.jsdelivr.net/npm/"', '"/__npm__/"')
    # Subresource-integrity hashes name the CDN's bytes, not those of the npm copies.
    return re.sub(r'\sintegrity="[^"]*"', "", text)


def pinned_packages() -> dict[str, str]:
    package = json.loads((ROOT / "package.json").read_text())
    return {**package.get("dependencies", {}), **package.get("devDependencies", {})}


# --------------------------------------------------------------------------- static checks


class _Links(html.parser.HTMLParser):
    """Collects ids/names (anchors) and local href/src references of one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[str] = []
        self._skip = 0  # inside <script>/<template>: not part of the page's link graph

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "template") and "src" not in a:
            self._skip += 1
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key) and not self._skip and tag in ("a", "link", "img", "script", "iframe",
                                                        "source", "area"):
                self.refs.append(a[key])

    def handle_endtag(self, tag):
        if tag in ("script", "template") and self._skip:
            self._skip -= 1


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def test_no_broken_internal_links(book_html):
    """Every relative href/src of every built page points at an existing file and anchor."""
    # Pages of the site; _static/ holds theme templates (Jinja source), not pages.
    pages = sorted(p for p in book_html.rglob("*.html")
                   if p.relative_to(book_html).parts[0] not in ("_static", "_sources"))
    parsed = {p.resolve(): _parse(p) for p in pages}
    broken = []
    for page, links in parsed.items():
        for ref in links.refs:
            parts = urllib.parse.urlsplit(ref)
            if parts.scheme or ref.startswith("//"):
                continue  # external (http, https, mailto, data, javascript ...)
            target = page if not parts.path else (page.parent / urllib.parse.unquote(parts.path))
            target = target.resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(book_html.resolve())}: {ref} (no file)")
                continue
            fragment = urllib.parse.unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if fragment not in ids:
                    broken.append(f"{page.relative_to(book_html.resolve())}: {ref} (no anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(sorted(set(broken)))


def _repository():
    config = load_yaml("_config.yml")
    repo, launch = config["repository"], config["launch_buttons"]
    url = repo["url"].rstrip("/")
    org_repo = "/".join(url.split("/")[-2:])
    prefix = (repo.get("path_to_book") or "").strip("/")
    return config, url, org_repo, repo["branch"], (prefix + "/" if prefix else ""), launch


@pytest.mark.parametrize("docname", NOTEBOOK_DOCS)
def test_launch_buttons_in_html(book_html, docname):
    """Each notebook page links to Binder and Colab for *its* notebook, on the configured branch."""
    config, url, org_repo, branch, prefix, launch = _repository()
    text = (book_html / f"{docname}.html").read_text(encoding="utf-8")
    hrefs = set(re.findall(r'href="([^"]+)"', text))
    nb = f"{prefix}{docname}.ipynb"
    binder = f"{launch['binderhub_url'].rstrip('/')}/v2/gh/{org_repo}/{branch}?urlpath="
    colab = f"{launch['colab_url'].rstrip('/')}/github/{org_repo}/blob/{branch}/{nb}"
    assert any(h.startswith(binder) and h.endswith(nb) for h in hrefs), \
        f"{docname}: no Binder link {binder}...{nb}"
    assert colab in hrefs, f"{docname}: no Colab link {colab}"
    assert url in hrefs, f"{docname}: no repository button {url}"


def test_cdn_versions_match_package_json(book_html):
    """The CDN scripts the pages load are exactly the versions pinned in package.json."""
    pinned = pinned_packages()
    refs = set()
    for page in book_html.rglob("*.html"):
        refs |= cdn_references(page.read_text(encoding="utf-8", errors="replace"))
    assert any(pkg == "mathjax" for pkg, _ in refs), "no page loads MathJax"
    wrong = {f"{pkg}@{ver} (package.json: {pinned.get(pkg)})" for pkg, ver in refs
             if pinned.get(pkg) != ver}
    assert not wrong, "CDN versions differ from package.json: " + ", ".join(sorted(wrong))


# --------------------------------------------------------------------------- local web server


class _Server:
    """Serves the built book on 127.0.0.1 (HTML localized) and node_modules under /__npm__/."""

    def __init__(self, html_root: Path):
        self.root = html_root.resolve()
        self.missing: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                if path.startswith("/__npm__/"):
                    base, rel = NODE_MODULES.resolve(), path[len("/__npm__/"):]
                else:
                    base, rel = server.root, path.lstrip("/")
                target = (base / rel).resolve()
                if target.is_dir():
                    target = target / "index.html"
                if base not in target.parents or not target.is_file():
                    server.missing.append(path)
                    body = b"not found"
                    self.send_response(HTTPStatus.NOT_FOUND)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                body = target.read_bytes()
                ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if target.suffix == ".html":
                    body = localize(body.decode("utf-8")).encode("utf-8")
                    ctype = "text/html; charset=utf-8"
                elif target.suffix in (".js", ".mjs"):
                    ctype = "application/javascript"
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- DevTools client


class CDPError(RuntimeError):
    pass


class DevTools:
    """A minimal synchronous Chrome DevTools Protocol client (flat sessions) over tornado."""

    def __init__(self, ws_url: str):
        from tornado.websocket import websocket_connect

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.ws = self.loop.run_until_complete(
            asyncio.wait_for(websocket_connect(ws_url, max_message_size=1 << 28), 30))
        self.next_id = 0
        self.events: list[dict] = []

    def _receive(self, timeout: float) -> dict:
        msg = self.loop.run_until_complete(asyncio.wait_for(self.ws.read_message(), timeout))
        if msg is None:
            raise CDPError("the DevTools connection closed (did Chromium crash?)")
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        self.next_id += 1
        mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.loop.run_until_complete(self.ws.write_message(json.dumps(msg)))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {method} within {timeout} s")
            data = self._receive(remaining)
            if data.get("id") == mid:
                if "error" in data:
                    raise CDPError(f"{method}: {data['error']}")
                return data.get("result", {})
            if "method" in data:
                self.events.append(data)

    def wait_event(self, method: str, session: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["method"] == method and ev.get("sessionId") == session:
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} within {timeout} s")
            data = self._receive(remaining)
            if "method" in data:
                self.events.append(data)

    def drain(self) -> None:
        """Read the events already sent by the browser (non-blocking, best effort)."""
        while True:
            try:
                data = self._receive(0.05)
            except (asyncio.TimeoutError, TimeoutError):
                return
            if "method" in data:
                self.events.append(data)

    def close(self):
        try:
            self.ws.close()
        finally:
            self.loop.close()
            asyncio.set_event_loop(None)


class Page:
    """One browser tab: navigate, evaluate JavaScript, click, screenshot, collect problems."""

    WIDTH, HEIGHT = 1280, 900

    def __init__(self, cdp: DevTools):
        self.cdp = cdp
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = cdp.call("Target.attachToTarget",
                                {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")
        self._viewport(self.HEIGHT)

    def call(self, method, params=None, timeout=30):
        return self.cdp.call(method, params, self.session, timeout)

    def goto(self, url: str, timeout: float = PAGE_TIMEOUT) -> None:
        self.cdp.drain()
        self.cdp.events = [e for e in self.cdp.events if e.get("sessionId") != self.session]
        self.call("Page.navigate", {"url": url})
        self.cdp.wait_event("Page.loadEventFired", self.session, timeout)

    def js(self, expression: str, await_promise: bool = False, timeout: float = 30):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": await_promise}, timeout)
        if "exceptionDetails" in result:
            detail = result["exceptionDetails"]
            raise CDPError(f"JavaScript error: {detail.get('exception', {}).get('description')}"
                           f" in {expression[:200]}")
        return result["result"].get("value")

    def wait_until(self, predicate: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(f"Boolean({predicate})"):
                return True
            time.sleep(0.2)
        return False

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the first element matching ``selector``."""
        box = self.js(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            el.scrollIntoView({{block: 'center'}});
            const r = el.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2, w: r.width, h: r.height}};
        }})()""")
        assert box["w"] > 0 and box["h"] > 0, f"{selector} is not visible"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent",
                      {"type": kind, "x": box["x"], "y": box["y"], "button": "left",
                       "clickCount": 1})

    def _viewport(self, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.WIDTH, "height": height, "deviceScaleFactor": 1,
                   "mobile": False})

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        """PNG of the viewport, or of the whole page (the viewport is stretched, then restored)."""
        if full_page:
            height = int(self.call("Page.getLayoutMetrics")["cssContentSize"]["height"])
            self._viewport(min(max(height, self.HEIGHT), 16000))
            time.sleep(0.3)  # let the theme re-layout
        try:
            data = self.call("Page.captureScreenshot", {"format": "png"}, timeout=60)["data"]
        finally:
            if full_page:
                self._viewport(self.HEIGHT)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def problems(self, origin: str) -> dict[str, list[str]]:
        """JavaScript exceptions, console errors, failed local requests, external requests."""
        self.cdp.drain()
        out = {"exceptions": [], "console": [], "failed": [], "external": []}
        requests = {}
        for ev in self.cdp.events:
            if ev.get("sessionId") != self.session:
                continue
            m, p = ev["method"], ev["params"]
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out["exceptions"].append(d.get("exception", {}).get("description") or d.get("text"))
            elif m == "Runtime.consoleAPICalled" and p["type"] == "error":
                out["console"].append(" ".join(str(a.get("value", a.get("description", "")))
                                               for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out["console"].append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent":
                url = p["request"]["url"]
                requests[p["requestId"]] = url
                if not url.startswith((origin, "data:", "blob:", "about:")):
                    out["external"].append(url)
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
                out["failed"].append(f"{p['response']['status']} {p['response']['url']}")
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out["failed"].append(f"{p.get('errorText')} {requests.get(p['requestId'], '?')}")
        return out


# --------------------------------------------------------------------------- browser fixtures


def _require(condition: bool, reason: str) -> None:
    if not condition:
        (pytest.fail if IN_CI else pytest.skip)(reason)


@pytest.fixture(scope="module")
def site(book_html):
    _require(Path(CHROMIUM).exists(),
             f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    _require((NODE_MODULES / "mathjax").is_dir()
             and (NODE_MODULES / "@jupyter-widgets" / "html-manager").is_dir(),
             "node_modules/ lacks the local MathJax / widget manager: run `npm ci`")
    server = _Server(book_html)
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser(site):
    profile = Path(tempfile.mkdtemp(prefix="dsm-chromium-"))
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--remote-debugging-port=0", f"--user-data-dir={profile}", "--no-first-run",
           "--no-default-browser-check", "--disable-extensions", "--disable-sync",
           "--disable-background-networking", "--disable-component-update", "--mute-audio",
           "--hide-scrollbars", "--window-size=1280,900",
           # hermetic: every host but the local server fails at once (the machine is offline)
           "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cdp = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        cdp = DevTools(f"ws://127.0.0.1:{port}{path}")
        yield Page(cdp)
    finally:
        if cdp is not None:
            try:
                cdp.call("Browser.close", timeout=5)
            except Exception:
                pass
            cdp.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the process group this fixture started
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


# What one visit records about a page (evaluated in the page once it has settled).
REPORT_JS = r"""(() => {
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight, .MathJax';
  const texLeft = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const rawTex = /\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\n]*[\\^_{}][^$\n]*\$/;
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.parentElement || node.parentElement.closest(skip)) continue;
    if (rawTex.test(node.textContent)) texLeft.push(node.textContent.trim().slice(0, 120));
  }
  const views = Array.from(document.querySelectorAll(
      'script[type="application/vnd.jupyter.widget-view+json"]')).map(s => {
    const sub = s.previousElementSibling;
    const ok = !!sub && sub.classList.contains('widget-subarea');
    return {model: JSON.parse(s.textContent).model_id, rendered: ok && sub.childElementCount > 0,
            height: ok ? sub.getBoundingClientRect().height : 0};
  });
  return {
    title: document.title,
    mathNodes: document.querySelectorAll('.math').length,
    mjx: document.querySelectorAll('mjx-container').length,
    untypeset: Array.from(document.querySelectorAll('.math:not(:has(mjx-container))'))
                    .map(e => e.textContent.slice(0, 80)),
    texErrors: Array.from(document.querySelectorAll('mjx-merror'))
                    .map(e => e.getAttribute('data-mjx-error') || e.textContent.slice(0, 80)),
    texLeft: texLeft.slice(0, 10),
    images: Array.from(document.images).map(i => ({src: i.getAttribute('src') ? 
        i.getAttribute('src').slice(0, 100) : '(no src)', complete: i.complete,
        width: i.naturalWidth})),
    widgetState: document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-state+json"]').length,
    views: views,
    animations: document.querySelectorAll('.animation').length,
    binder: Array.from(document.querySelectorAll('a[href*="mybinder.org/v2/"]')).map(a => a.href),
    colab: Array.from(document.querySelectorAll('a[href*="colab.research.google.com/github/"]'))
                .map(a => a.href),
  };
})()"""

VIEWS_RENDERED = """Array.from(document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"]')).every(s =>
    s.previousElementSibling && s.previousElementSibling.classList.contains('widget-subarea')
    && s.previousElementSibling.childElementCount > 0)"""


@pytest.fixture(scope="module")
def visit(browser, site):
    """``visit(docname)`` loads a page once, lets it settle, and returns (cached) its report."""
    reports: dict[str, dict] = {}

    def _visit(docname: str) -> dict:
        if docname in reports:
            return reports[docname]
        start = time.monotonic()
        browser.goto(f"{site.url}/{docname}.html")
        mathjax = browser.js(
            "window.MathJax && MathJax.startup && MathJax.startup.promise ? "
            "MathJax.startup.promise.then(() => 'typeset') : 'no MathJax on this page'",
            await_promise=True, timeout=PAGE_TIMEOUT)
        widgets_ok = browser.wait_until(VIEWS_RENDERED, PAGE_TIMEOUT)
        browser.js("document.querySelectorAll('img[loading=lazy]')"
                   ".forEach(i => i.loading = 'eager')")
        images_ok = browser.wait_until("Array.from(document.images).every(i => i.complete)", 15)
        time.sleep(0.3)  # let late console errors arrive
        report = browser.js(REPORT_JS)
        report.update(mathjax=mathjax, widgets_settled=widgets_ok, images_settled=images_ok,
                      seconds=round(time.monotonic() - start, 2),
                      **browser.problems(site.url))
        browser.screenshot(ARTIFACTS / f"{docname.replace('/', '__')}.png")
        reports[docname] = report
        return report

    return _visit


# --------------------------------------------------------------------------- browser tests


@pytest.mark.browser
@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_renders(visit, docname):
    """Math typeset, images loaded, no JS error, no failed or external request."""
    r = visit(docname)
    assert not r["exceptions"], f"JavaScript exceptions: {r['exceptions']}"
    assert not r["console"], f"console errors: {r['console']}"
    assert not r["failed"], f"failed requests: {r['failed']}"
    assert not r["external"], (f"requests leaving the local server (add the package to "
                               f"package.json and map it in localize()): {r['external']}")
    if r["mathNodes"]:
        assert r["mathjax"] == "typeset", f"MathJax did not run: {r['mathjax']}"
        assert r["mjx"] >= r["mathNodes"], f"{r['mjx']} typeset of {r['mathNodes']} math nodes"
    assert not r["untypeset"], f"math left untypeset: {r['untypeset']}"
    assert not r["texErrors"], f"TeX errors: {r['texErrors']}"
    assert not r["texLeft"], f"raw TeX left in the text: {r['texLeft']}"
    bad = [i for i in r["images"] if not (i["complete"] and i["width"] > 0)]
    assert not bad, f"images that did not load: {bad}"


@pytest.mark.browser
@pytest.mark.parametrize("docname", NOTEBOOK_DOCS)
def test_launch_buttons_in_browser(visit, docname):
    r = visit(docname)
    nb = f"{docname}.ipynb"
    assert any(h.endswith(nb) for h in r["binder"]), f"no Binder button for {nb}: {r['binder']}"
    assert any(h.endswith(nb) for h in r["colab"]), f"no Colab button for {nb}: {r['colab']}"


@pytest.mark.browser
@pytest.mark.parametrize("docname", DOCNAMES)
def test_saved_widgets_render(visit, book_html, docname):
    """Every saved widget view on the page is replaced by a rendered, non-empty widget."""
    if "widget-view+json" not in (book_html / f"{docname}.html").read_text(encoding="utf-8"):
        pytest.skip("no widget on this page")
    r = visit(docname)
    assert r["widgetState"] >= 1, "widget views but no saved widget state on the page"
    empty = [v for v in r["views"] if not (v["rendered"] and v["height"] > 0)]
    assert not empty and r["widgets_settled"], f"widget views not rendered: {empty}"


def test_playground_has_widgets_and_animation(book_html):
    """Chapter 10 keeps at least one saved widget and one kernel-free to_jshtml scrubber."""
    text = (book_html / f"{PLAYGROUND}.html").read_text(encoding="utf-8")
    assert "application/vnd.jupyter.widget-view+json" in text, \
        "the playground has no saved widget: execute it with tools/execute_notebooks.py"
    assert 'class="animation"' in text, "the playground has no to_jshtml animation"


@pytest.mark.browser
def test_animation_scrubber_changes_frame(visit, browser, site, book_html):
    """On every page with a to_jshtml animation, its controls change the displayed frame."""
    pages = [d for d in DOCNAMES
             if 'class="animation"' in (book_html / f"{d}.html").read_text(encoding="utf-8")]
    assert PLAYGROUND in pages, "no animation in the playground"
    for docname in pages:
        report = visit(docname)
        browser.goto(f"{site.url}/{docname}.html")  # a fresh load: every animation at frame 0
        assert browser.wait_until("Array.from(document.querySelectorAll('.animation img'))"
                                  ".every(i => i.src.startsWith('data:image'))", 15)
        count = browser.js("document.querySelectorAll('.animation').length")
        assert count == report["animations"]
        for k in range(count):
            root = f"document.querySelectorAll('.animation')[{k}]"
            state = (f"(() => {{ const a = {root}; const s = a.querySelector('input.anim-slider');"
                     f" return {{src: a.querySelector('img').src, value: s.value, max: s.max}}; }})()")
            before = browser.js(state)
            assert before["src"].startswith("data:image"), f"{docname}: frame not shown"
            assert int(before["max"]) >= 1, f"{docname}: animation {k} has a single frame"
            browser.js(f"{root}.id = 'anim-under-test'")
            browser.click("#anim-under-test button[title='Next frame']")
            assert browser.wait_until(f"{root}.querySelector('img').src !== "
                                      f"{json.dumps(before['src'])}", 5), \
                f"{docname}: clicking 'Next frame' did not change the frame"
            after = browser.js(state)
            assert after["value"] != before["value"], "the slider did not follow the click"
            # Drag the slider to the last frame (what a reader does with the scrubber).
            browser.js(f"(() => {{ const s = {root}.querySelector('input.anim-slider');"
                       f" s.value = s.max; s.dispatchEvent(new Event('input')); }})()")
            last = browser.js(state)
            assert last["src"] != after["src"], f"{docname}: moving the slider changed nothing"
            browser.js(f"{root}.removeAttribute('id')")
        if docname == PLAYGROUND:
            browser.screenshot(ARTIFACTS / "playground-scrubbed.png")
            browser.screenshot(ARTIFACTS / "playground-full.png", full_page=True)
