"""The evaluation report opens in a real headless Chromium and every image in it loads."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CHECK = """<script>
window.addEventListener('load', () => {
  const marks = Array.from(document.images).map(i => (i.complete && i.naturalWidth > 0) ? '1' : '0').join('');
  document.body.setAttribute('data-images-loaded', marks);
});
</script>"""


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)


def test_report_images_load_in_chromium(trained_detection_run, tmp_path):
    from cvengine.evaluate import evaluate_run

    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium)")
    _, run_dir = evaluate_run(str(trained_detection_run), "best", "val")
    html = (run_dir / "report" / "report.html").read_text()
    assert "Per-class AP" in html and "Confusion matrix" in html and "Worst images" in html
    # Self-contained: no image comes from a file or the network.
    assert not re.search(r'<img[^>]+src="(?!data:)', html)
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", CHECK + "</body>"))
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    marks = re.search(r'data-images-loaded="([01]*)"', result.stdout)
    assert marks, f"the page did not load in chromium: {result.stderr[-500:]}"
    # Precision-recall, confusion matrix and a gallery of the 8 validation images.
    assert len(marks.group(1)) >= 2 + 8
    assert set(marks.group(1)) == {"1"}
