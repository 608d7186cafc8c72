"""The demo run's report renders in headless Chromium with its image grid and metrics table, and no link or
image is broken."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files"]

CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var broken = [];
  document.querySelectorAll('img').forEach(function (img) {
    if (!img.complete || img.naturalWidth === 0) { broken.push('img:' + (img.alt || img.src.slice(0, 40))); }
  });
  document.querySelectorAll('a[href]').forEach(function (a) {
    var href = a.getAttribute('href');
    if (href.startsWith('#') && !document.getElementById(href.slice(1))) { broken.push('link:' + href); }
  });
  var out = document.createElement('pre');
  out.id = 'm2i-check';
  out.textContent = 'IMAGES=' + document.images.length + ';GRID=' +
    document.querySelectorAll('.image-grid .pair').length + ';METRICS=' +
    document.querySelectorAll('#metrics-table tr').length + ';BROKEN=' + broken.join(',') + ';END';
  document.body.appendChild(out);
});
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install-system-deps.sh)")
def test_report_renders_in_chromium(tiny_full_run, tmp_path):
    assert tiny_full_run["code"] == 0
    report = tiny_full_run["out"] / "sub-01.html"
    # the report is self-contained: a copy elsewhere (as after copying the output folder) must render the same
    copy = tmp_path / "copied" / "sub-01.html"
    copy.parent.mkdir()
    html = report.read_text()
    assert "file://" not in html and "http://" not in html.replace("http://www.w3.org", "")
    copy.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                          "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r"IMAGES=(\d+);GRID=(\d+);METRICS=(\d+);BROKEN=(.*?);END", dom.stdout)
    assert match, dom.stderr[-2000:]
    n_images, n_pairs, n_metric_rows, broken = int(match[1]), int(match[2]), int(match[3]), match[4]
    assert broken == ""
    assert n_pairs > 0 and n_images >= 2 * n_pairs
    assert n_metric_rows > 1  # header + rows
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,2400",
                    f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[0] >= 2000 and pixels.std() > 10  # something was drawn, not a blank page
