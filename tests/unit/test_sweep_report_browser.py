"""The sweep report in a real browser: headless Chromium (Debian's `chromium` package, which
scripts/run-tests.sh installs) opens report.html from disk, with no network, and draws the plots.

Two looks at the page: the DOM after its scripts ran (`--dump-dom`: plotly's SVG, with the
sweep's axis titles, tick labels and run names), and a screenshot measured with Pillow (the
plots' background and the pruned run's red line are there). The same page with plotly.js cut
out is measured too, so the measures are shown to tell a drawn page from a blank one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from infra.sweep.report import PRUNED_COLOUR
from infra.workflows.sweep_report import find_sweep, write_report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1280, 3400)
PLOT_BACKGROUND = (229, 236, 246)  # plotly's default plot area colour (#E5ECF6)
SCRIPT_BUDGET_MS = 15_000  # virtual time the page's scripts get before the browser looks

CSV = """\
index,id,lr,layers,optimizer,status,exit_code,seconds,host,attempts,val_loss,accuracy,log
1,r1,0.3,1,sgd,ok,0,2.1,h1,1,0.62,0.71,output/sweep-look/logs/0001-r1.log
2,r2,0.1,2,adam,ok,0,3.4,h2,1,0.35,0.88,output/sweep-look/logs/0002-r2.log
3,r3,0.03,3,sgd,pruned,,0.9,h1,1,0.91,0.52,output/sweep-look/logs/0003-r3.log
4,r4,0.01,1,adam,ok,0,4.2,local,1,0.48,0.80,output/sweep-look/logs/0004-r4.log
5,r5,0.003,2,sgd,failed,1,0.4,h2,1,,,output/sweep-look/logs/0005-r5.log
6,r6,0.001,3,adam,ok,0,5.0,local,1,0.55,0.76,output/sweep-look/logs/0006-r6.log
"""
EPOCH_LOSSES = {"0001-r1": [1.2, 0.9, 0.7, 0.62], "0002-r2": [1.1, 0.6, 0.42, 0.35],
                "0003-r3": [1.4, 1.3], "0004-r4": [1.0, 0.7, 0.55, 0.48], "0006-r6": [1.3, 0.9, 0.6, 0.55]}

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium fonts-liberation)")


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", f"--user-data-dir={profile}", f"--virtual-time-budget={SCRIPT_BUDGET_MS}",
         *args, page.as_uri()],
        capture_output=True, text=True, timeout=180)


def screenshot(page: Path, tmp_path: Path, name: str):
    from PIL import Image

    shot = tmp_path / f"{name}.png"
    result = chromium(page, tmp_path / f"profile-{name}", f"--screenshot={shot}",
                      f"--window-size={WINDOW[0]},{WINDOW[1]}")
    assert shot.is_file(), result.stderr[-2000:]
    return Image.open(shot).convert("RGB")


def share_near(image, colour: tuple[int, int, int], tolerance: int = 6) -> float:
    """The fraction of the image's pixels within `tolerance` of `colour` on every channel."""
    bands = image.split()
    masks = [band.point(lambda v, c=c: 255 if abs(v - c) <= tolerance else 0) for band, c in zip(bands, colour)]
    from PIL import ImageChops

    both = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2])
    return both.histogram()[255] / (image.width * image.height)


def non_white_share(image) -> float:
    grey = image.convert("L")
    return sum(grey.histogram()[:245]) / (image.width * image.height)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """The report of a small sweep, and the same page without plotly.js."""
    from plotly.offline import get_plotlyjs

    folder = tmp_path_factory.mktemp("report")
    output = folder / "output"
    logs = output / "sweep-look" / "logs"
    logs.mkdir(parents=True)
    (output / "sweep-look.csv").write_text(CSV)
    for name, losses in EPOCH_LOSSES.items():
        end = "pruned" if name.endswith("r3") else "ok"
        lines = [f"epoch={epoch} val_loss={loss}" for epoch, loss in enumerate(losses, start=1)]
        (logs / f"{name}.log").write_text("\n".join(["# infra sweep look", *lines, f"# end: {end}, exit 0"]) + "\n")
    good = write_report(find_sweep("look", [output]))
    broken = folder / "broken.html"
    page = good.read_text()
    assert get_plotlyjs() in page
    broken.write_text(page.replace(get_plotlyjs(), "/* plotly.js left out */"))
    return {"good": good, "broken": broken, "folder": folder}


@needs_chromium
def test_the_page_chromium_builds_holds_plotlys_svg_with_the_sweeps_axes_and_runs(pages, tmp_path):
    started = time.monotonic()
    dom = chromium(pages["good"], tmp_path / "profile", "--dump-dom").stdout
    took = time.monotonic() - started
    assert "6 runs: 4 ok, 1 failed, 1 pruned; best val_loss 0.35" in dom
    assert len(re.findall(r"<svg class=\"main-svg\"", dom)) >= 6  # at least one per plot
    assert 'class="parcoords"' in dom
    titles = set(re.findall(r'class="[a-z]*title"[^>]*>([^<]+)<', dom))
    assert {"lr", "layers", "optimizer", "val_loss", "epoch", "seconds per run"} <= titles, titles
    for run in ("#2 (best)", "#3 pruned", "#1", "#6"):
        assert f">{run}<" in dom, run  # legend entries of the learning curves
    for tick in ("sgd", "adam", "local (2)", "h1 (2)"):
        assert f">{tick}<" in dom, tick
    print(f"chromium --dump-dom of the report: {took:.1f} s")

    broken = chromium(pages["broken"], tmp_path / "profile-broken", "--dump-dom").stdout
    assert "6 runs: 4 ok" in broken and 'class="main-svg"' not in broken


@needs_chromium
def test_the_screenshot_shows_the_plots_drawn_and_a_page_without_plotly_shows_none(pages, tmp_path):
    started = time.monotonic()
    good = screenshot(pages["good"], tmp_path, "good")
    took = time.monotonic() - started
    broken = screenshot(pages["broken"], tmp_path, "broken")
    red = tuple(int(PRUNED_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    measures = {name: (share_near(image, PLOT_BACKGROUND), non_white_share(image), share_near(image, red, 30))
                for name, image in (("good", good), ("broken", broken))}
    print(f"screenshot {WINDOW[0]}x{WINDOW[1]} in {took:.1f} s; plot background, non-white, pruned red: {measures}")
    background, ink, pruned_red = measures["good"]
    assert background > 0.20, measures  # six plot areas of plotly's blue-grey
    assert ink > 0.25, measures
    assert pruned_red * good.width * good.height > 50, measures  # the pruned run's dotted line and its cross
    background, ink, pruned_red = measures["broken"]
    assert background < 0.01 and ink < 0.05 and pruned_red == 0, measures
