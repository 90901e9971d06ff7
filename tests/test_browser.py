"""The built book, as a reader sees it: links, launch buttons, layout, and a real headless Chromium.

Run:  python -m pytest tests/test_browser.py -v
      DSM_BOOK_HTML=_build/html python -m pytest tests/test_browser.py   (reuse a build)

Static checks (no browser): every local link and anchor of the built site resolves, every notebook
page has its Binder and Colab launch links (derived from the ``repository:`` section of
_config.yml), and no page loads a script, stylesheet, font or image from another site: MathJax,
RequireJS, the widget manager and Font Awesome are served from ``_static/npm/`` of the site
(copied from node_modules/ by tools/sphinx_fixes.py at build time).

Browser checks, per page of _toc.yml, in headless Chromium driven over the DevTools protocol
(a small client on tornado's websocket, which Jupyter already depends on), with the network off:
the site is served as built, from 127.0.0.1, and every other host fails at once, so what renders
here renders offline. Math is typeset by MathJax with no raw TeX left, every image loaded, no
JavaScript error or failed request, every saved widget view rendered, the animations' icon font
loaded, launch buttons present; on pages with a matplotlib ``to_jshtml`` animation, clicking its
"next frame" button and moving its slider change the frame. The layout check measures every page
at 1280 px: no figure is shrunk below 0.65 of its width (unless its 10 pt text still measures
9 px or more), and no table, display equation or output block is wider than the text column
(scrolls or sticks out); a failure names the page and the element. Screenshots of every page go to
test-artifacts/ (gitignored).

Chromium comes from Debian (``apt-get install chromium``); it is required under CI (``CI`` set),
and locally its absence skips the browser checks with the reason.
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
import sphinx_fixes

pytestmark = [pytest.mark.book]

CHROMIUM = os.environ.get("DSM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
IN_CI = bool(os.environ.get("CI"))
PAGE_TIMEOUT = 45  # seconds allowed for one page to load, typeset and render its widgets

DOCNAMES = toc_docnames()
NOTEBOOK_DOCS = [p.relative_to(ROOT).with_suffix("").as_posix() for p in toc_notebooks()]
PLAYGROUND = "book/10_playground"

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


class _Resources(html.parser.HTMLParser):
    """What a page makes the browser fetch: script/img/iframe/source src, stylesheet/icon/preload
    href, and url(...) in inline styles (``<a href>`` is a link, not a resource)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "embed", "audio", "video") and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href") and (a.get("rel") or "").split()[:1] != ["canonical"]:
            self.urls.append(a["href"])
        self.urls += re.findall(r"url\(['\"]?([^'\")]+)", a.get("style") or "")
        self._style = tag == "style"

    def handle_data(self, data):
        if self._style:
            self.urls += re.findall(r"url\(['\"]?([^'\")]+)", data)
            self.urls += re.findall(r"@import\s+['\"]([^'\"]+)", data)

    def handle_endtag(self, tag):
        self._style = False


def test_site_loads_nothing_from_other_sites(book_html):
    """No built page fetches a script, stylesheet, font or image from another host (so it works
    offline), and the vendored packages are in _static/npm/, as package.json pins them."""
    external = set()
    for page in sorted(book_html.rglob("*.html")):
        if page.relative_to(book_html).parts[0] in ("_static", "_sources"):
            continue
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for url in parser.urls:
            if urllib.parse.urlsplit(url).scheme not in ("", "data", "blob") or url.startswith("//"):
                external.add(f"{page.relative_to(book_html)}: {url[:120]}")
    assert not external, "pages load resources from other sites:\n" + "\n".join(sorted(external))
    vendor = book_html / "_static" / sphinx_fixes.VENDOR_DIR
    missing = [str(rel) for src, rel in sphinx_fixes.vendor_files()
               if not (vendor / rel).is_file() or (vendor / rel).stat().st_size != src.stat().st_size]
    assert not missing, f"not vendored into {vendor}: {missing[:10]}"
    pinned = sphinx_fixes.pinned_versions()
    for pkg in sphinx_fixes.VENDOR:
        assert sphinx_fixes._installed_version(pkg) == pinned[pkg], pkg


# --------------------------------------------------------------------------- local web server


class _Server:
    """Serves the built book, as built, on 127.0.0.1 (nothing else: the site must be complete)."""

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
                base = server.root
                target = (base / path.lstrip("/")).resolve()
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
            el.scrollIntoView({{block: 'center', behavior: 'instant'}});  // the theme scrolls smoothly
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

# The layout check (evaluated once the page has settled; a promise of a report). Thresholds: a
# figure may be shrunk to MIN_SCALE of its width, or further if its 10 pt text still measures
# MIN_TEXT_PX (the PNG's pHYs chunk gives its dpi; matplotlib writes it); anything wider than its
# box by more than SLACK_PX counts as scrolling / sticking out.
MIN_SCALE, MIN_TEXT_PX, SLACK_PX = 0.65, 9.0, 2

LAYOUT_JS = r"""(async () => {
  const MIN_SCALE = %(scale)s, MIN_TEXT_PX = %(text)s, SLACK = %(slack)s;
  const article = document.querySelector('article.bd-article') || document.querySelector('main')
                  || document.body;
  const colRight = article.getBoundingClientRect().right;
  const cells = Array.from(article.querySelectorAll('div.cell'));
  const heads = Array.from(article.querySelectorAll('h1, h2, h3'));
  const where = el => {
    let head = '';
    for (const h of heads) {
      if (h.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) {
        head = h.textContent.replace(/[#¶]/g, '').trim();
      }
    }
    const cell = cells.findIndex(c => c.contains(el));
    return (cell >= 0 ? `code cell ${cell + 1} of the page, ` : '') + `after "${head.slice(0, 60)}"`;
  };
  const shown = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  const wide = el => {
    // wider than its own box (it scrolls, or its content spills) or than the text column
    const over = el.scrollWidth - el.clientWidth;
    const stick = el.getBoundingClientRect().right - colRight;
    return over > SLACK || stick > SLACK ? Math.round(Math.max(over, stick)) : 0;
  };
  async function dpiOf(img) {
    try {
      const bytes = new Uint8Array(await (await fetch(img.currentSrc || img.src)).arrayBuffer());
      for (let i = 8; i + 12 <= bytes.length; ) {        // PNG chunks after the signature
        const len = (bytes[i] << 24 | bytes[i + 1] << 16 | bytes[i + 2] << 8 | bytes[i + 3]) >>> 0;
        const type = String.fromCharCode(...bytes.slice(i + 4, i + 8));
        if (type === 'pHYs') {
          const d = i + 8;
          const ppu = (bytes[d] << 24 | bytes[d + 1] << 16 | bytes[d + 2] << 8 | bytes[d + 3]) >>> 0;
          return bytes[d + 8] === 1 ? ppu * 0.0254 : null;  // unit 1: pixels per metre
        }
        if (type === 'IDAT' || type === 'IEND') return null;
        i += 12 + len;
      }
    } catch (e) { }
    return null;
  }
  const problems = [];
  let images = 0;
  for (const img of article.querySelectorAll('img')) {
    if (!shown(img) || !img.naturalWidth) continue;
    images += 1;
    const scale = img.getBoundingClientRect().width / img.naturalWidth;
    if (scale >= MIN_SCALE - 1e-3) continue;
    const dpi = await dpiOf(img) || 100;
    const textPx = 10 * dpi / 72 * scale;
    if (textPx >= MIN_TEXT_PX) continue;
    problems.push(`image (${where(img)}): ${img.naturalWidth} px wide at ${Math.round(dpi)} dpi,` +
                  ` shown at ${scale.toFixed(2)} of its width, so 10 pt text is ` +
                  `${textPx.toFixed(1)} px (want a scale >= ${MIN_SCALE} or text >= ` +
                  `${MIN_TEXT_PX} px: figure width <= 7.5 in at dpi 100, stack the panels)`);
  }
  for (const t of article.querySelectorAll('table')) {
    if (!shown(t)) continue;
    let box = t;                                   // the table, or the element that scrolls it
    for (let e = t.parentElement; e && e !== article; e = e.parentElement) {
      if (/(auto|scroll|hidden)/.test(getComputedStyle(e).overflowX)) { box = e; break; }
    }
    const px = Math.max(wide(box), wide(t));
    if (px) {
      const cols = t.rows.length ? t.rows[0].cells.length : 0;
      problems.push(`table (${where(t)}), ${cols} columns: ${px} px too wide for the column ` +
                    `(transpose or split it, fewer columns, 3 significant digits)`);
    }
  }
  const tex = new Map();
  if (window.MathJax && MathJax.startup && MathJax.startup.document) {
    for (const item of MathJax.startup.document.math) tex.set(item.typesetRoot, item.math);
  }
  for (const m of article.querySelectorAll('mjx-container[display="true"]')) {
    if (!shown(m)) continue;
    const inner = m.querySelector('mjx-math') || m;
    const box = m.parentElement;
    const over = Math.round(Math.max(inner.getBoundingClientRect().width - box.clientWidth,
                                     inner.getBoundingClientRect().right - colRight, wide(m)));
    if (over > SLACK) {
      const src = (tex.get(m) || m.textContent || '').replace(/\s+/g, ' ').trim();
      problems.push(`display equation (${where(m)}) "${src.slice(0, 90)}": ${over} px wider ` +
                    `than the column (split it with aligned, or over two lines)`);
    }
  }
  const outputs = Array.from(article.querySelectorAll('div.cell_output, div.output'))
                       .filter(o => !o.parentElement.closest('div.cell_output, div.output'));
  for (const out of outputs) {
    for (const el of [out, ...out.querySelectorAll('pre, div.output, .jupyter-widgets, .animation')]) {
      if (!shown(el) || el.closest('table')) continue;
      const px = wide(el);
      if (px) {
        const text = (el.textContent || '').split('\n').reduce((a, b) => a.length > b.length ? a : b, '');
        problems.push(`output block (${where(el)}), ${el.tagName.toLowerCase()}: ${px} px wider ` +
                      `than the column; longest line "${text.trim().slice(0, 70)}" ` +
                      `(print lines <= ~80 characters, tables as DataFrames)`);
        break;                                     // one report per output
      }
    }
  }
  for (const pre of article.querySelectorAll('div.cell_input pre')) {
    if (!shown(pre)) continue;
    const px = wide(pre);
    if (px) {
      problems.push(`code cell (${where(pre)}): ${px} px wider than the column (long lines must ` +
                    `wrap: book/_static/page.css)`);
      break;                                       // one report per page
    }
  }
  return {problems: problems, images: images, columnWidth: Math.round(article.clientWidth)};
})()""" % {"scale": MIN_SCALE, "text": MIN_TEXT_PX, "slack": SLACK_PX}

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
        report["layout"] = browser.js(LAYOUT_JS, await_promise=True, timeout=PAGE_TIMEOUT)
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
    assert not r["external"], (f"requests leaving the site (vendor the package: package.json "
                               f"and VENDOR in tools/sphinx_fixes.py): {r['external']}")
    if r["mathNodes"]:
        assert r["mathjax"] == "typeset", f"MathJax did not run: {r['mathjax']}"
        assert r["mjx"] >= r["mathNodes"], f"{r['mjx']} typeset of {r['mathNodes']} math nodes"
    assert not r["untypeset"], f"math left untypeset: {r['untypeset']}"
    assert not r["texErrors"], f"TeX errors: {r['texErrors']}"
    assert not r["texLeft"], f"raw TeX left in the text: {r['texLeft']}"
    bad = [i for i in r["images"] if not (i["complete"] and i["width"] > 0)]
    assert not bad, f"images that did not load: {bad}"


@pytest.mark.browser
@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_layout_fits_the_column(visit, docname):
    """At 1280 px: figures readable (not shrunk below 0.65 of their width unless their 10 pt
    text stays >= 9 px), and no table, display equation or output block wider than the column."""
    layout = visit(docname)["layout"]
    assert not layout["problems"], (
        f"{docname} (text column {layout['columnWidth']} px):\n  "
        + "\n  ".join(layout["problems"]))


# Each animation button shows its icon: an SVG (the theme's Font Awesome script replaces the
# <i class="fa ..."> tags) or a glyph of the Font Awesome 4 font that matplotlib's HTML asks for.
ICONS_JS = """document.fonts.ready.then(() => Array.from(
    document.querySelectorAll('.animation button')).map(b => {
  const svg = b.querySelector('svg'), i = b.querySelector('i');
  if (svg) return svg.getBoundingClientRect().width > 0 ? 'svg' : 'empty svg';
  if (!i) return 'no icon';
  return /FontAwesome/.test(getComputedStyle(i).fontFamily) && document.fonts.check('14px FontAwesome')
      ? 'font' : 'font not loaded';
}))"""


@pytest.mark.browser
def test_offline_site_typesets_math_renders_widgets_and_icons(visit, browser, site):
    """With every host but the local server unreachable, the pages still typeset their math
    (MathJax from the site), render the playground's saved widgets (RequireJS and the widget
    manager from the site) and draw the animation buttons (Font Awesome from the site)."""
    math_pages = [d for d in DOCNAMES if visit(d)["mathNodes"]]
    assert len(math_pages) >= len(DOCNAMES) // 2, f"only {math_pages} have math"
    for d in math_pages:
        r = visit(d)
        assert r["mathjax"] == "typeset" and r["mjx"] >= r["mathNodes"] > 0, d
        assert not r["external"] and not r["failed"], (d, r["external"], r["failed"])
    r = visit(PLAYGROUND)
    assert r["views"] and all(v["rendered"] and v["height"] > 0 for v in r["views"]), r["views"]
    assert r["animations"] >= 1
    browser.goto(f"{site.url}/{PLAYGROUND}.html")
    icons = browser.js(ICONS_JS, await_promise=True)
    assert icons and all(i in ("svg", "font") for i in icons), f"animation buttons: {icons}"


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
    """The playground chapter keeps at least one saved widget and one kernel-free to_jshtml
    scrubber."""
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
