"""Open an HTML page in a real headless browser (Debian's chromium) and report which images decoded.

Shared by the report tests: a page passes when every <img> has loaded with a non-zero natural width. Where no
browser is installed the calling test is skipped with a message saying what to install.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Appended before </body>: after load, records the number of images and the alt text of every broken one.
_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  document.body.setAttribute('data-check', JSON.stringify({n: imgs.length, broken: broken}));
});
</script></body>"""


def images_in_browser(page: str, tmp_dir: Path) -> dict:
    """{"n": number of images, "broken": alt texts of those that did not decode} for the HTML `page`."""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium to run this test)")
    probe = tmp_dir / "probe.html"  # the page plus the script that records which images decoded
    probe.write_text(page.replace("</body>", _CHECK))
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
        + ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r"data-check=\"([^\"]+)\"", dom)
    assert found, f"the page did not finish loading in {browser}: {dom[:300]!r}"
    return json.loads(found[1].replace("&quot;", '"'))
