"""The HTML reports as a reader sees them: rendered by headless Chromium (installed by .ci/run), at a
desktop and at a phone width. A page that needs its folder, or whose plots or thumbnails are missing,
renders without them: the screenshots are checked for the plot and the thumbnails (and kept in the test's
temporary folder for a person to look at)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.conftest import LFW_ZIP, needs_lfw

pytestmark = needs_lfw
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(page, out, width: int, height: int = 2400) -> np.ndarray:
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.exists(), r.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB"))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs it)")
def test_the_identify_report_renders_alone_with_its_plot_and_faces(tmp_path):
    from facesearch.evaluation import report
    from facesearch.evaluation.identify import evaluate_identify

    r = evaluate_identify(LFW_ZIP, model="lfw-mobilenet", device="cpu", max_identities=60)
    paths = report.write_identify_report(r, tmp_path / "rep")
    alone = tmp_path / "moved" / "report.html"  # moved away from its folder: it must still be whole
    alone.parent.mkdir()
    shutil.move(paths["html"], alone)
    shutil.rmtree(tmp_path / "rep")
    for width in (1200, 420):
        px = screenshot(alone, tmp_path / f"shot-{width}.png", width)
        colourful = (px.max(axis=2).astype(int) - px.min(axis=2)) > 60  # plot lines, warning box, face photos
        rows = np.flatnonzero(colourful.any(axis=1))
        assert rows.size > 200, "no plot or thumbnails rendered"
        # nothing is drawn past the right edge: the page fits the window (the right margin stays empty)
        assert not colourful[:, -4:].any()
