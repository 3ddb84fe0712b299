"""The study report in a real browser: headless Chromium loads it, every section and image renders,
no console errors, a screenshot is saved, and at a laptop's 1280-pixel window nothing is wider than
the window (wide tables scroll inside their own boxes).

Chromium comes from Debian's ``chromium`` package (`.ci/run` installs it). Without it the test is
skipped on a developer's machine, but fails where ``TUNELENS_REQUIRE_BROWSER=1`` (CI sets it).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SECTIONS = ("weights", "vectors", "subspace", "activations", "evaluation")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("TUNELENS_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required here (TUNELENS_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


def _run(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [_chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)


def _console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line and ("Uncaught" in line or "error" in line.lower() or "Failed" in line)
    ]


def _loaded(dom: str) -> tuple[int, int]:
    m = re.search(r'data-images="(\d+) loaded, (\d+) broken"', dom)
    assert m, "the page's load script did not run"
    return int(m[1]), int(m[2])


def test_report_renders_in_chromium(study: Path, tmp_path: Path) -> None:
    page = study / "report.html"
    dom = _run(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    images, broken = _loaded(dom.stdout)
    assert images >= 6 and broken == 0
    for key in SECTIONS:
        assert f'<section id="{key}">' in dom.stdout
    assert _console_errors(dom.stderr) == []
    # the evaluation section reads the tests: a comparison table and error-barred figures, as rendered
    comparisons = re.search(r'<table id="comparisons">(.*?)</table>', dom.stdout, re.S)
    assert comparisons, "no comparison table in the rendered page"
    head = re.findall(r"<th>(.*?)</th>", comparisons[1])
    assert {"a", "b", "b is", "diff (b − a)", "95% CI", "p adj (Holm)", "verdict"} <= set(head)
    rows = re.findall(r"<tr><td>", comparisons[1])
    assert len(rows) >= 8  # every pair of the tiny study, headline metrics
    assert re.search(r'alt="fig4_evaluation"', dom.stdout) and "Error bars: 95% intervals" in dom.stdout
    shot = tmp_path / "report.png"
    res = _run(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000")
    assert res.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_browser_check_catches_a_broken_page(study: Path, tmp_path: Path) -> None:
    """The same checks flag a missing image and a script error (so the test above can fail)."""
    html = (study / "report.html").read_text()
    bad = tmp_path / "bad.html"
    bad.write_text(
        html.replace('src="data:image/png;base64,', 'src="missing.png#', 1).replace(
            "</body>", "<script>undefinedFunction();</script></body>"
        )
    )
    res = _run(bad, tmp_path, "--dump-dom")
    images, broken = _loaded(res.stdout)
    assert broken == 1 and images >= 6
    assert _console_errors(res.stderr), res.stderr[-2000:]


# Run in the page after load: every element outside a horizontally scrolling box must lie inside the
# viewport; the result goes into a body attribute that --dump-dom prints.
LAYOUT_PROBE = """<script>
window.addEventListener("load", function () {
  var vw = document.documentElement.clientWidth;
  function insideScroller(el) {
    for (var a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      var o = getComputedStyle(a).overflowX;
      if (o === "auto" || o === "scroll" || o === "hidden") return true;
    }
    return false;
  }
  var out = [], boxes = 0, scrolling = 0, all = document.body.getElementsByTagName("*");
  for (var i = 0; i < all.length; i++) {
    var el = all[i];
    if (el.classList.contains("table-scroll")) { boxes++; if (el.scrollWidth > el.clientWidth) scrolling++; }
    if (insideScroller(el)) continue;
    var r = el.getBoundingClientRect();
    if (r.right > vw + 0.5 || r.left < -0.5) out.push(el.tagName + " " + Math.round(r.right));
  }
  document.body.setAttribute("data-layout", JSON.stringify({viewport: vw, page: document.documentElement.scrollWidth,
    boxes: boxes, scrolling: scrolling, outside: out.slice(0, 10), n_outside: out.length}));
});
</script></body>"""


def _layout(page: str, tmp: Path, name: str) -> dict[str, object]:
    probe = tmp / f"{name}.html"
    probe.write_text(page.replace("</body>", LAYOUT_PROBE))
    res = _run(probe, tmp, "--dump-dom", "--window-size=1280,900")
    m = re.search(r'data-layout="([^"]*)"', res.stdout)
    assert m, res.stderr[-2000:]
    layout: dict[str, object] = json.loads(html.unescape(m[1]))
    return layout


def test_report_fits_a_laptop_window(study: Path, tmp_path: Path) -> None:
    page = (study / "report.html").read_text()
    layout = _layout(page, tmp_path, "fit")
    assert 1200 <= int(str(layout["viewport"])) <= 1280  # the window less its scrollbar
    assert layout["n_outside"] == 0, layout["outside"]
    assert layout["page"] == layout["viewport"]  # no horizontal scrolling of the page itself
    assert int(str(layout["boxes"])) >= 5 and int(str(layout["scrolling"])) >= 1  # a wide table scrolls in its box
    # the same probe on the page with the scroll boxes switched off finds the wide table past the edge
    unboxed = _layout(
        page.replace("</style>", ".table-scroll { overflow: visible !important; }</style>"), tmp_path, "off"
    )
    assert int(str(unboxed["n_outside"])) > 0 and int(str(unboxed["page"])) > int(str(unboxed["viewport"]))
