"""Open an HTML page in a real headless browser (Debian's chromium) and read back what it rendered.

Shared by the report tests: `images_in_browser` says which images decoded (a page passes when every <img> has
loaded with a non-zero natural width); `render_in_browser` also returns the text the page shows and where given
elements sit on the first screen, so a test can assert what a person sees, not what the HTML source contains.
Where no browser is installed the calling test is skipped with a message saying what to install.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Appended before </body>: after load, records the images (count and the alt text of every broken one), the
# viewport, the rendered text of the page (innerText: what is laid out and visible, not closed <details>) and, for
# each selector, the element's rendered text and its top/bottom in CSS pixels from the top of the first screen.
_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  const box = s => {
    const e = document.querySelector(s);
    if (!e) return null;
    const r = e.getBoundingClientRect();
    return {text: e.innerText, top: r.top, bottom: r.bottom};
  };
  const check = {n: imgs.length, broken: broken, viewport: [window.innerWidth, window.innerHeight],
                 text: document.body.innerText, elements: Object.fromEntries(SELECTORS.map(s => [s, box(s)]))};
  document.body.setAttribute('data-check', JSON.stringify(check));
});
</script></body>"""


def render_in_browser(page: str, tmp_dir: Path, selectors: tuple[str, ...] = (), window=(1280, 800)) -> dict:
    """What headless chromium shows of the HTML `page` in a `window` (width, height) in CSS pixels:
    {"n": number of images, "broken": alt texts of those that did not decode, "viewport": [width, height],
    "text": the page's rendered text, "elements": {selector: {"text", "top", "bottom"} or None}}."""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium to run this test)")
    probe = tmp_dir / "probe.html"  # the page plus the script that records what rendered
    probe.write_text(page.replace("</body>", _CHECK.replace("SELECTORS", json.dumps(list(selectors)))))
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
        + [f"--window-size={window[0]},{window[1]}", "--hide-scrollbars"]
        + ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    ).stdout
    found = re.search(r"data-check=\"([^\"]+)\"", dom)
    assert found, f"the page did not finish loading in {browser}: {dom[:300]!r}"
    return json.loads(
        html.unescape(found[1])
    )  # the serialised attribute escapes &, " and non-breaking spaces


def images_in_browser(page: str, tmp_dir: Path) -> dict:
    """{"n": number of images, "broken": alt texts of those that did not decode} for the HTML `page`."""
    check = render_in_browser(page, tmp_dir)
    return {"n": check["n"], "broken": check["broken"]}
